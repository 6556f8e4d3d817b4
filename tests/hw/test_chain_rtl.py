"""One DSP chain (hw/dsp_chain.py) in Verilator (cocotb, tests/hw/chain_cocotb.py): packed and plain dot products,
activation sum, latency and stage skew vs tests/hw/mpe_blocks_model.py."""
from __future__ import annotations

import pytest

from sfu_rtl_util import build, have_verilator, run

pytestmark = [pytest.mark.rtl, pytest.mark.skipif(not have_verilator(), reason="needs amaranth, cocotb, verilator")]


@pytest.mark.parametrize("L", [16])     # the engine's chains: mpe.STAGES stages
def test_chain(L):
    from block_benches import chain_bench

    name = f"blk_chain{L}"
    runner, bdir = build(*chain_bench(L), name)
    run(runner, bdir, name, "chain_cocotb", "cascade", {"CHAIN_L": L})
