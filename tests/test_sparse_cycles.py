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
    # a chain holds B = 16 / 2N blocks, so ceil(lanes / B) chains: Q4_1 8/4, 6/2, 4/1; Q8_0 8/4, 5/2, 3/1
    assert [P.chains_used(b, f, n) for f in (WFmt.Q4_1, WFmt.Q8_0) for n in (2, 4, 8)] == [2, 3, 4, 2, 3, 3]
    assert P.max_lanes(b) == 8 and P.n_chains(b) == 4          # 8 block slots (QBUF ports, dequantisers), 4 chains
    # taps = the most blocks a mode puts on the chain (slot k on chain k // B): chains 0, 1 hold 2:16's 4 blocks
    # each; chain 2 Q4_1 4:16's slots 4, 5 (B = 2); chain 3 only 8:16's slot 3 (B = 1)
    assert [P.chain_taps(b, c) for c in range(4)] == [4, 4, 2, 1]
    # slots 0..3 serve dense Q4_1 (4 lanes: 32 products); 4, 5 at most 4:16 (lanes 6 / 5: 2N = 8); 6, 7 only 2:16
    assert [P.slot_products(b, k) for k in range(8)] == [32] * 4 + [8, 8, 4, 4]


@pytest.mark.parametrize("rows,cols", [(1536, 576), (49152, 576)])
@pytest.mark.parametrize("wbits", [4, 8])
@pytest.mark.parametrize("sp", [2, 4])
def test_sparse_mv_memory_bound(rows, cols, wbits, sp):
    from flightllm.host.kernel import run

    r = run("mv", "fsim", "sim", rows, cols, wbits, sp, 11, 1)
    assert r["bit_exact"], r
    assert r["efficiency"] >= 0.90, r          # before the taps: 0.48-0.86 (docs/rtl.md)
