"""SFU datapath cores in Verilator (cocotb), bit-exact against flightllm.sim.sfu_model."""
from __future__ import annotations

import pytest

from sfu_rtl_util import build, core_bench, have_verilator, run

pytestmark = [pytest.mark.rtl, pytest.mark.skipif(not have_verilator(), reason="needs amaranth, cocotb, verilator")]

W = 4
NAME = "sfu_cores"


@pytest.fixture(scope="module")
def bench():
    elab, ports = core_bench(W)
    return build(elab, ports, NAME)


@pytest.mark.parametrize("case", ["elt", "silu", "rope", "argmax", "quant", "sumsq_rms", "exp_softmax"])
def test_core(bench, case):
    runner, bdir = bench
    run(runner, bdir, NAME, "sfu_cocotb_cores", case, {"SFU_W": W})
