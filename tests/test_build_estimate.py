"""Resource estimate: the yosys path on a small real design, the cell accounting, the chain cut, the cache."""
import dataclasses
import re

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


def _ram_top(module):
    return f"""module flightllm_top(input clk, input [12:0] ra, input re, output [31:0] q, input [12:0] wa,
                             input [31:0] wd, input we);
  {module} #(.W(32), .D(8192), .AW(13), .NR(1)) r(.clk(clk), .raddr(ra), .ren(re), .rdata(q), .waddr(wa),
    .wdata(wd), .wen(we));
endmodule
"""


def test_ultra_ram_maps_to_uram288(tmp_path):
    """hw/ram.py's flightllm_ram_ultra (ram_style "ultra") becomes URAM288 in synth_xilinx -family xcup, the plain
    flightllm_ram block RAM: the estimate counts the ABUF banks where Vivado puts them."""
    from flightllm.hw import ram

    got = {}
    for name, lib in ((ram.MODULE_ULTRA, ram.VERILOG_ULTRA), (ram.MODULE, ram.VERILOG)):
        (tmp_path / name).mkdir()
        v = tmp_path / name / "t.v"
        v.write_text(_ram_top(name) + lib)
        got[name] = E.count(E.synth(v, "xcup", tmp_path / name, E.yosys_cmd()))
    assert got[ram.MODULE_ULTRA]["uram"] >= 1 and got[ram.MODULE_ULTRA]["bram"] == 0
    assert got[ram.MODULE]["uram"] == 0 and got[ram.MODULE]["bram"] >= 7


def test_abuf_banks_in_ultraram_where_the_device_has_it():
    from flightllm.hw.flow import verilog_for

    for name in ("kv260", "pynq-z2"):
        b = boards.load(name)
        text = verilog_for(b, "xilinx").read_text()     # cached: `flightllm build` tests reuse it
        banks = text.count("  flightllm_ram_ultra #(")
        assert banks == (P.abuf_banks(b) if b.resources["uram"] else 0), name
        assert ('ram_style = "ultra"' in text) == bool(banks)


def test_synth_and_xilinx_verilog_differ_only_in_the_clock_gate(tmp_path):
    """hw/top.py ``retarget``: the `xilinx` text with its clock gate swapped is the `synth` text generate_verilog
    writes (so hw/flow derives one from the other's cache entry instead of elaborating the design again)."""
    from flightllm.hw.flow import TOP, verilog_for
    from flightllm.hw.top import generate_verilog, retarget

    b = boards.load("pynq-z2")
    x = verilog_for(b, "xilinx").read_text()         # cached: the tests above use it
    synth = generate_verilog(b, tmp_path / "s.v", TOP, "synth").read_text()
    assert retarget(x, "xilinx", "synth") == synth and retarget(synth, "synth", "xilinx") == x != synth
    assert retarget(x, "xilinx", "sim") is None and retarget(synth[:-10], "synth", "xilinx") is None


def test_verilog_for_derives_a_target_from_its_cached_twin(tmp_path, monkeypatch):
    from flightllm.hw import flow, top

    monkeypatch.setenv("FLIGHTLLM_CACHE", str(tmp_path))
    monkeypatch.setattr(top, "generate_verilog", lambda *a: pytest.fail("elaborated again"))
    b = boards.load("pynq-z2")
    twin = tmp_path / "verilog" / f"{b.name}-synth-{flow.design_key(b)}" / f"{flow.TOP}.v"
    twin.parent.mkdir(parents=True)
    twin.write_text("module m; endmodule\n" + top.CLKGATE_VERILOG)
    assert flow.verilog_for(b, "xilinx").read_text() == "module m; endmodule\n" + top.CLKGATE_BUFGCE


HIER = """module child(input clk, input [7:0] a, output reg [7:0] q); always @(posedge clk) q <= a + 1; endmodule
module sq #(parameter W = 8) (input clk, input [W-1:0] d, output reg [W-1:0] q); always @(posedge clk) q <= d * d;
endmodule
module flightllm_top(input clk, input [7:0] a, output [7:0] q, output [7:0] r, output [15:0] s, output [15:0] u);
  child c1(.clk(clk), .a(a), .q(q));
  child c2(.clk(clk), .a(q), .q(r));
  sq #(.W(16)) m1(.clk(clk), .d({a, a}), .q(s));
  sq #(.W(16)) m2(.clk(clk), .d({r, a}), .q(u));
endmodule
"""


def test_hierarchical_synthesis_counts_every_instance(tmp_path):
    v = tmp_path / "h.v"
    v.write_text(HIER)
    (tmp_path / "h").mkdir()
    (tmp_path / "f").mkdir()
    h = E.synth_hier(v, "xc7", tmp_path / "h", E.yosys_cmd())
    mods = {k.lstrip("\\"): r for k, r in h["modules"].items()}
    assert mods["child"]["instances"] == 2 and mods["flightllm_top"]["instances"] == 1
    (sq,) = [r for k, r in mods.items() if "sq" in k]           # one parameter set: one module, two instances
    assert sq["instances"] == 2 and sq["cells"].get("DSP48E1") == 1
    flat = E.count(E.synth(v, "xc7", tmp_path / "f", E.yosys_cmd()))
    assert E.count(h["cells"]) == flat and flat["dsp"] == 2 and flat["ff"] == 16


def test_parallel_module_synthesis_gives_the_serial_result(tmp_path, monkeypatch):
    v = tmp_path / "h.v"
    v.write_text(HIER)
    res = {}
    for j in ("1", "3"):
        monkeypatch.setenv("FLIGHTLLM_ESTIMATE_JOBS", j)
        (tmp_path / j).mkdir()
        res[j] = E.synth_hier(v, "xc7", tmp_path / j, E.yosys_cmd(), use_cache=False)
        assert not any(r["cached"] for r in res[j]["modules"].values())
    assert res["1"]["cells"] == res["3"]["cells"]
    assert list(res["1"]["modules"]) == list(res["3"]["modules"])       # same order: largest module first
    monkeypatch.setenv("FLIGHTLLM_ESTIMATE_JOBS", "0")
    with pytest.raises(E.FlowError, match="FLIGHTLLM_ESTIMATE_JOBS"):
        E.jobs()


def test_a_killed_yosys_is_one_clear_error(tmp_path):
    with pytest.raises(E.FlowError, match=r"killed by signal 9 \(out of memory\?\).*FLIGHTLLM_ESTIMATE_JOBS=1"):
        E._run_yosys(["sh", "-c", "kill -9 $$", "--"], "", tmp_path, "k")


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


def test_normalised_text_ignores_position():
    a = 'attribute \\src "design.v:10.1-12.3"\n  cell $add $add$design.v:11$7\n  cell $paramod$ab12\\r u\n'
    b = 'attribute \\src "design.v:90.1-92.3"\n  cell $add $add$design.v:91$3\n  cell $paramod$ab12\\r u\n'
    assert E.normalise(a) == E.normalise(b) and "design.v" not in E.normalise(a)
    assert E.normalise(a) != E.normalise(a.replace("$add $add", "$sub $add"))


def test_normalised_text_ranks_memory_write_priorities():
    """yosys numbers memory write ports' PRIORITY over the whole file, so two instances of one module with a memory
    (the weight channels' engines, their stream buffers) differed only there and were each synthesised on their own
    (16 engine syntheses on the U280 instead of 2): only the order within the module counts."""
    a = "  cell $memwr_v2 $n\n    parameter \\PRIORITY 127942\n  cell $memwr_v2 $m\n    parameter \\PRIORITY 127950\n"
    b = "  cell $memwr_v2 $n\n    parameter \\PRIORITY 136048\n  cell $memwr_v2 $m\n    parameter \\PRIORITY 136051\n"
    assert E.normalise(a) == E.normalise(b) and "PRIORITY 0" in E.normalise(a) and "PRIORITY 1" in E.normalise(a)
    swapped = b.replace("136048", "x").replace("136051", "136048").replace("x", "136051")
    assert E.normalise(a) != E.normalise(swapped)


def test_equal_subtrees_under_different_paths_are_one_module():
    """The U280's engines mpe1 .. mpe15 each have their own chain and dequantiser modules (mpe1.ch0, mpe2.ch0, ..):
    children are referred to by a name from their own text, so the engines are one synthesis, not 15. Equal
    children of one parent share a stub; their port names may differ by a file-wide counter (``p$q$7``)."""
    def leaf(name, op, k):
        return (f"module {name}\n  wire input 1 \\a$x${k}\n  wire output 1 \\y\n  cell {op} $x\n"
                f"    connect \\A \\a$x${k}\n    connect \\Y \\y\n  end\nend\n")

    def mid(name, kids):
        return (f"module {name}\n  wire input 1 \\a\n  wire output {len(kids)} \\y\n" + "".join(
            f"  cell {kid} \\u{i}\n    connect \\a$x${k} \\a\n    connect \\y \\y [{i}]\n  end\n"
            for i, (kid, k) in enumerate(kids)) + "end\n")

    top = "module \\top\n  wire input 1 \\a\n  wire output 6 \\y\n" + "".join(
        f"  cell \\top.m{i} \\m{i}\n    connect \\a \\a\n    connect \\y \\y [{2 * i + 1}:{2 * i}]\n  end\n"
        for i in range(3)) + "end\n"
    text = top
    for i in range(3):
        text += mid(f"\\top.m{i}", [(f"\\top.m{i}.l{j}", 10 * i + j) for j in range(2)])
        for j in range(2):
            text += leaf(f"\\top.m{i}.l{j}", "$neg" if (i, j) == (2, 1) else "$not", 10 * i + j)
    mods = E.split_rtlil(text)
    kids, count = E.instance_tree(mods, "\\top")
    texts, canon = E.module_texts(mods, kids, count)
    assert canon["\\top.m0.l0"] == canon["\\top.m0.l1"] == canon["\\top.m1.l0"] != canon["\\top.m2.l1"]
    assert texts["\\top.m0"] == texts["\\top.m1"] != texts["\\top.m2"]
    assert "top.m0" not in texts["\\top.m0"] and texts["\\top"].count("attribute \\blackbox") == 2
    assert texts["\\top.m0"].count("attribute \\blackbox") == 1 and texts["\\top.m2"].count("attribute \\blackbox") == 2
    # every port a cell connects is a port of the stub it instantiates (l1's a$x$1 is mapped onto l0's a$x$0)
    for mn, t in texts.items():
        stubs = {m.split("\n", 1)[0].strip(): E._ports(m) for m in t.split("module ")[1:]}
        for typ, conns in re.findall(r"^  cell (\S+) \S+\n((?:    .*\n)*)", t, re.M):
            if typ in stubs:
                assert {ln.split()[1] for ln in conns.splitlines()} <= set(stubs[typ]), (mn, typ)


def test_cache_key_follows_the_synthesised_design():
    b = boards.load("u280")
    y = ["/bin/false"]
    assert E._key(b, y) != E._key(b, y, flat=True)
    wider = dataclasses.replace(b, accel=dataclasses.replace(b.accel, sfu_lanes=8))
    assert E._key(wider, y) != E._key(b, y)
    # chains past what the port feeds leave the synthesised design, and so the key, as they are
    more = dataclasses.replace(b, accel=dataclasses.replace(b.accel, chains=b.accel.chains + 8))
    assert E.reduced(more).accel.chains == E.reduced(b).accel.chains and E._key(more, y) == E._key(b, y)


# CI runs the sim board's full estimate: tests/conftest.py starts it in the background at collection (one yosys on
# one core, ~22 minutes cold, beside the other tests) and runs this test last
def test_sim_board_estimate_and_cache(sim_estimate):
    b = boards.load("sim")
    r = sim_estimate
    assert r["dsp"] > 0 and r["lut"] > 0 and r["ff"] > 0 and r["bram"] + r["uram"] > 0 and r["fits"] is None
    assert r["chains_synthesised"] == b.accel.chains and "hierarchical" in r["method"] and r["hierarchical"]
    assert sum(m["dsp"] * m["instances"] for m in r["modules"].values()) == r["dsp"]
    assert sum(m["lut"] * m["instances"] for m in r["modules"].values()) == r["lut"]
    again = E.estimate(b)          # the same $FLIGHTLLM_CACHE: answered from the board's cached result
    assert again["cached"] and {k: again[k] for k in ("dsp", "lut", "ff")} == {k: r[k] for k in ("dsp", "lut", "ff")}


def test_initialised_memories_are_read_from_hex_files(tmp_path):
    """The SFU's tables reach yosys as $readmemh files (hw/flow/estimate.py _rom_files: minutes -> seconds of
    elaboration): yosys must see the same words as from Amaranth's one-statement-per-word Verilog."""
    import re
    import subprocess

    import numpy as np
    from amaranth import Module, Signal
    from amaranth.back import verilog
    from amaranth.lib.memory import Memory

    words = [int(v) for v in np.random.default_rng(3).integers(0, 1 << 13, 100)] + [0, (1 << 13) - 1]
    m = Module()
    m.submodules.rom = rom = Memory(shape=13, depth=len(words), init=words)
    rp = rom.read_port()
    a, q = Signal(7), Signal(13)
    m.d.comb += [rp.addr.eq(a), q.eq(rp.data)]
    text = verilog.convert(m, ports=[a, q], name="flightllm_top", emit_src=False)
    assert text.count("] = 13'h") == len(words)
    hexed = E.for_synthesis(text, tmp_path)
    inits = {}
    for name, src in (("plain", text), ("hex", hexed)):
        (tmp_path / f"{name}.v").write_text(src)
        subprocess.run(E.yosys_cmd() + ["-q", "-p", f"read_verilog -sv {name}.v; proc; memory_collect; "
                                        f"write_rtlil {name}.il"], cwd=tmp_path, check=True)
        inits[name] = re.findall(r"parameter \\INIT (\S+)", (tmp_path / f"{name}.il").read_text())
    assert "$readmemh" in hexed and "13'h" not in hexed
    assert len(inits["hex"]) == 1 and inits["hex"] == inits["plain"]


def test_equal_modules_either_side_of_a_line_number_digit_are_one_text(tmp_path):
    """yosys names a module's processes after their source lines and writes them sorted as strings, so a module
    across line 100,000 (VHK158's mpe10) listed them in another order than its equal siblings. for_synthesis
    gives every line number the same digit count: the two equal modules below normalise to one text."""
    body = "".join(f"  reg [7:0] r{i} = 8'h0;\n  always @(posedge clk) r{i} <= d + 8'd{i};\n" for i in range(8))
    mod = ("module {n}(input clk, input [7:0] d, output [7:0] q);\n" + body
           + "  assign q = " + " ^ ".join(f"r{i}" for i in range(8)) + ";\nendmodule\n")
    first = mod.format(n="m0")
    pad = 99_995 - first.count("\n")            # m1 starts a few lines before line 100,000 and ends after it
    top = ("module top(input clk, input [7:0] d, output [7:0] q0, output [7:0] q1);\n"
           "  m0 u0(.clk(clk), .d(d), .q(q0));\n  m1 u1(.clk(clk), .d(d), .q(q1));\nendmodule\n")
    text = first + "// pad\n" * pad + mod.format(n="m1") + top
    mods = E.elaborate(text, tmp_path, E.yosys_cmd(), "top")
    kids, count = E.instance_tree(mods, "\\top")
    texts, canon = E.module_texts(mods, kids, count)
    assert canon["\\m0"] == canon["\\m1"]
