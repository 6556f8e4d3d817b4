"""Sparse N:16 MV on the sim board is memory-bound: the reduction taps (hw/mpe.py ``dsp_chain``, params.chain_blocks)
put 2 (N = 4) or 4 (N = 2) blocks in one chain, so a group holds what the 64-byte port brings (params.lanes).
Cycles from the cycle model (fsim's counters, sim/cycles.py), no timing; tests/hw/test_rtl_engine.py checks that the
RTL takes exactly these cycles."""
from __future__ import annotations

import pytest

from flightllm import boards
from flightllm.hw import params as P
from flightllm.isa import WFmt


def test_blocks_per_cycle_fill_the_port():
    b = boards.load("sim")
    # block bytes: Q4_1 2:16 8, 4:16 12; Q8_0 2:16 8, 4:16 14 -> ceil(64 / bytes) blocks a cycle
    assert [P.lanes(b, f, n) for f in (WFmt.Q4_1, WFmt.Q8_0) for n in (2, 4, 8)] == [8, 6, 4, 8, 5, 3]
    assert [P.chains_used(b, f, n) for f in (WFmt.Q4_1, WFmt.Q8_0) for n in (2, 4, 8)] == [2, 3, 4, 2, 3, 3]
    assert P.max_lanes(b) == 8 and P.n_chains(b) == 4          # 8 block slots (QBUF ports, dequantisers), 4 chains
    assert [P.chain_taps(b, c) for c in range(4)] == [4, 4, 2, 1]
    assert [P.slot_products(b, k) for k in range(8)] == [32] * 4 + [8, 8, 4, 4]


@pytest.mark.parametrize("rows,cols", [(1536, 576), (49152, 576)])
@pytest.mark.parametrize("wbits", [4, 8])
@pytest.mark.parametrize("sp", [2, 4])
def test_sparse_mv_memory_bound(rows, cols, wbits, sp):
    from flightllm.host.kernel import run

    r = run("mv", "fsim", "sim", rows, cols, wbits, sp, 11, 1)
    assert r["bit_exact"], r
    assert r["efficiency"] >= 0.90, r          # before the taps: 0.48-0.86 (docs/rtl.md)
