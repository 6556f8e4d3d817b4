"""SFU sequencer in Verilator (cocotb): whole MISC instructions vs sim/fsim.py's _x_MISC, cycles vs the model.

Generated 4 lanes wide (the KV260 / ZCU104 width; quick build, many chunks per row) and 32 wide (the U280 and VHK158:
one chunk per QUANT block). The sim board's 16 lanes run every MISC function in the top-level RTL tests (test_rtl_misc,
test_rtl_model), bit- and cycle-exact with fsim."""
from __future__ import annotations

import pytest

from sfu_rtl_util import build, have_verilator, run

pytestmark = [pytest.mark.rtl, pytest.mark.skipif(not have_verilator(), reason="needs amaranth, cocotb, verilator")]


@pytest.mark.parametrize("W", [4, 32])
def test_misc_instructions(W):
    from flightllm.hw.sfu import Sfu

    sfu = Sfu(W)
    name = f"sfu_w{W}"
    runner, bdir = build(sfu, sfu.ports(), name)
    run(runner, bdir, name, "sfu_cocotb_seq", "misc_ops", {"SFU_BOARD": "sim", "SFU_W": W})


@pytest.mark.parametrize("W,NL", [(4, 16)])
def test_abuf_ports(W, NL):
    from flightllm.hw.sfu import SfuAbufPorts

    a = SfuAbufPorts(W, NL, rows_bits=12)
    ports = [a.sfu_rd_en, a.sfu_rd_addr, a.sfu_rd_mask, a.sfu_rd_data, a.sfu_wr_en, a.sfu_wr_addr, a.sfu_wr_mask,
             a.sfu_wr_data, a.ren, a.wen] + a.raddr + a.rdata + a.waddr + a.wdata
    name = f"sfu_abuf_w{W}_nl{NL}"
    runner, bdir = build(a, ports, name)
    run(runner, bdir, name, "sfu_cocotb_seq", "abuf_ports", {"SFU_W": W, "SFU_NL": NL})
