"""hw/decoder.py in Verilator (cocotb, tests/hw/decoder_cocotb.py): fields and the illegal flag vs flightllm/isa.py."""
from __future__ import annotations

import pytest

from sfu_rtl_util import build, have_verilator, run

pytestmark = [pytest.mark.rtl, pytest.mark.skipif(not have_verilator(), reason="needs amaranth, cocotb, verilator")]

NAME = "blk_decoder"


@pytest.fixture(scope="module")
def bench():
    from block_benches import decoder_bench

    return build(*decoder_bench(), NAME)


@pytest.mark.parametrize("case", ["valid", "illegal"])
def test_decoder(bench, case):
    runner, bdir = bench
    run(runner, bdir, NAME, "decoder_cocotb", case)
