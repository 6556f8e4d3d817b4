"""Resource estimate: the yosys path on a small real design, the cell accounting, the chain cut, the cache."""
import dataclasses
import json
import os

import pytest

from flightllm import boards
from flightllm.hw import params as P
from flightllm.hw.flow import estimate as E

MAC = """module flightllm_top(input clk, input signed [16:0] w, input signed [7:0] x, output reg signed [31:0] acc,
                         input [8:0] a, input [35:0] d, output reg [35:0] q);
  reg [35:0] mem [0:511];
  always @(posedge clk) begin
    acc <= acc + w * x;
    mem[a] <= d;
    q <= mem[a];
  end
endmodule
"""


def test_synth_xilinx_counts_a_dsp_and_a_bram(tmp_path):
    v = tmp_path / "t.v"
    v.write_text(MAC)
    cells = E.synth(v, "xcup", tmp_path, E.yosys_cmd())
    c = E.count(cells)
    assert c["dsp"] == 1 and cells.get("DSP48E2") == 1
    assert c["bram"] in (0.5, 1) and c["uram"] == 0 and c["ff"] > 0
    cells7 = E.synth(v, "xc7", tmp_path, E.yosys_cmd())
    assert cells7.get("DSP48E1") == 1


def test_cell_accounting():
    c = E.count({"DSP48E2": 3, "LUT6": 10, "LUT2": 5, "RAM64M": 2, "SRLC32E": 1, "FDRE": 7, "FDSE": 1,
                 "RAMB36E2": 2, "RAMB18E2": 3, "URAM288": 4, "CARRY8": 9, "MUXF7": 4})
    assert c == {"dsp": 3, "lut": 24, "ff": 8, "bram": 3.5, "uram": 4}


def test_fits_uses_the_shell_reservation():
    b = boards.load("u280")
    av = E.available(b)
    assert av["lut"] == b.resources["lut"] - b.shell["lut"] and av["bram"] == b.resources["bram36"] - 196
    assert E.available(boards.load("sim")) is None


@pytest.mark.parametrize("name", ["sim", "u280", "vhk158", "zcu104", "kv260", "pynq-z2"])
def test_chain_cut_keeps_every_lane(name):
    b = boards.load(name)
    r = E.reduced(b)
    assert r.accel.chains <= b.accel.chains
    for f, n in P.MODES:
        assert P.lanes(r, f, n) == P.lanes(b, f, n)
        assert P.lanes(r, f, n) * P.products(f, n) <= P.slots(r)
    assert (r.accel.abuf_words, r.accel.qbuf_bytes, P.token_tile(r)) == \
        (b.accel.abuf_words, b.accel.qbuf_bytes, P.token_tile(b))


@pytest.mark.skipif(not os.environ.get("FLIGHTLLM_ESTIMATE"),
                    reason="full-engine synthesis of the sim board takes longer than the CI budget here; "
                           "set FLIGHTLLM_ESTIMATE=1")
def test_sim_board_estimate_and_cache():
    b = boards.load("sim")
    r = E.estimate(b)
    assert r["dsp"] > 0 and r["lut"] > 0 and r["ff"] > 0 and r["fits"] is None
    assert r["chains_synthesised"] == b.accel.chains and "synth_xilinx" in r["method"]
    again = E.estimate(b)
    assert again["cached"] and {k: again[k] for k in ("dsp", "lut", "ff")} == {k: r[k] for k in ("dsp", "lut", "ff")}
    json.dumps(r)
