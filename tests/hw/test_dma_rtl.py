"""hw/dma.py (ReadStream, WriteStream) in Verilator against a cocotbext-axi AxiRam (tests/hw/dma_cocotb.py).

Two geometries: a 16-byte port (a small build; its 64-beat bursts are 1 KiB, so bursts split at every 64 beats
inside a page) and the `sim` board's 64-byte port with its stream buffer and window."""
from __future__ import annotations

import pytest

from sfu_rtl_util import build, have_verilator, run

pytestmark = [pytest.mark.rtl, pytest.mark.skipif(not have_verilator(), reason="needs amaranth, cocotb, verilator")]

try:
    import cocotbext.axi  # noqa: F401
    HAVE_AXI = True
except ImportError:      # pragma: no cover - part of the hw extra
    HAVE_AXI = False


_BUILDS = {}


def geometry(which):
    if which == "pb16":
        return 16, 64, 32, 1024
    from flightllm import boards
    from flightllm.hw import params as P

    b = boards.load("sim")
    return b.memory.port_bytes, P.stream_buffer_bytes(b), P.window_bytes(b), 4096


@pytest.mark.skipif(not HAVE_AXI, reason="needs cocotbext-axi")
@pytest.mark.parametrize("which", ["pb16", "sim"])
@pytest.mark.parametrize("case", ["read_stream", "write_stream"])
def test_dma(which, case):
    from block_benches import dma_bench

    pb, bb, wb, abuf = geometry(which)
    name = f"blk_dma_{which}"
    if name not in _BUILDS:
        elab, ports, _, _ = dma_bench(pb, bb, wb, abuf)
        _BUILDS[name] = build(elab, ports, name)
    runner, bdir = _BUILDS[name]
    run(runner, bdir, name, "dma_cocotb", case, {"DMA_PB": pb, "DMA_BB": bb, "DMA_WB": wb, "DMA_ABUF": abuf})
