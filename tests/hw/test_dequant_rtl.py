"""The dequantisation path (hw/mpe.py DequantAcc: fp16 scales, per-block term, accumulation, ACT rounding) in
Verilator (cocotb, tests/hw/dequant_cocotb.py) vs formats.py and sim/mpe_model.py."""
from __future__ import annotations

import pytest

from sfu_rtl_util import build, have_verilator, run

pytestmark = [pytest.mark.rtl, pytest.mark.skipif(not have_verilator(), reason="needs amaranth, cocotb, verilator")]

NAME = "blk_dequant"


@pytest.fixture(scope="module")
def bench():
    from block_benches import dequant_bench

    return build(*dequant_bench(), NAME)


@pytest.mark.parametrize("case", ["fp16", "rows"])
def test_dequant(bench, case):
    runner, bdir = bench
    run(runner, bdir, NAME, "dequant_cocotb", case)
