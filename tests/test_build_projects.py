"""Generated vendor projects, parsed back and checked against the board files (no vendor tools needed)."""
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from flightllm import boards
from flightllm.hw.flow import master_channels, vitis, vivado, write_project
from flightllm.hw.flow.ports import FlowError, interfaces, interfaces_of_top, parse_ports
from flightllm.hw.regs import REGS

HW_BOARDS = ["u280", "vhk158", "zcu104", "kv260", "pynq-z2"]


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    out = {}
    for n in HW_BOARDS:
        b = boards.load(n)
        tp = interfaces_of_top(b)
        d = tmp_path_factory.mktemp(n)
        out[n] = (b, tp, write_project(b, None, d, tp))
    return out


def _wrapper_ports(path, module):
    return {p.name: p for p in parse_ports(path.read_text(), module)}


def test_u280_vitis_kernel_is_consistent(projects):
    b, tp, prj = projects["u280"]
    d = prj.out
    # kernel.xml: one addressable master per engine master, at the engine's data width; args in free CSR space
    k = ET.parse(d / "kernel.xml").getroot().find("kernel")
    assert k.get("hwControlProtocol") == "user_managed"
    ports = {p.get("name"): p for p in k.find("ports")}
    masters = [p for p in ports.values() if p.get("mode") == "master"]
    assert len(masters) == len(tp.masters) >= 1
    assert all(int(p.get("dataWidth")) == 8 * b.memory.port_bytes for p in masters)
    used = {off for off, _, _ in REGS.values()}
    args = {a.get("name"): a for a in k.find("args")}
    for a in args.values():
        assert a.get("port") in ports and int(a.get("offset"), 16) not in used and 0x100 <= int(a.get("offset"), 16) < 0x200
    # wrapper: exactly the kernel.xml interfaces, ap_clk/ap_rst_n, widths from the top
    w = _wrapper_ports(d / "rtl" / "flightllm_kernel.v", "flightllm_kernel")
    assert {"ap_clk", "ap_rst_n", "interrupt"} <= set(w)
    for p in masters:
        assert w[p.get("name") + "_rdata"].width == int(p.get("dataWidth"))
        assert w[p.get("name") + "_araddr"].width == 64
    assert w["s_axi_control_awaddr"].width == tp.control.addr_width
    assert int(ports["s_axi_control"].get("range"), 16) == 1 << tp.control.addr_width
    # packaging: the board's part, every bus interface tied to ap_clk, the xo named as v++ expects
    tcl = (d / "package_kernel.tcl").read_text()
    assert f"set part {b.part}" in tcl
    assert set(re.findall(r"-busif (\S+) -clock ap_clk", tcl)) == set(ports)
    assert "package_xo -force -xo_path flightllm.xo -kernel_name flightllm" in tcl
    # link.cfg: platform, clock, every master bound to every HBM pseudo-channel (one address space), by argument
    cfg = (d / "link.cfg").read_text()
    assert f"platform={b.platform}" in cfg and b.platform == "xilinx_u280_gen3x16_xdma_1_202211_1"
    assert re.search(r"^freqHz=(\d+):flightllm_1\.ap_clk$", cfg, re.M).group(1) == str(int(b.clock_mhz * 1e6))
    bound = {}
    for arg, lo, hi in re.findall(r"^sp=flightllm_1\.(\w+):HBM\[(\d+)(?::(\d+))?\]$", cfg, re.M):
        assert arg in args
        bound[arg] = list(range(int(lo), int(hi or lo) + 1))
    assert set(bound) == set(args) and b.memory.channels == 32
    assert all(v == list(range(b.memory.channels)) for v in bound.values())
    assert prj.commands[-1][:2] == ["v++", "-l"] and "flightllm.xclbin" in prj.commands[-1]


@pytest.mark.parametrize("name", ["zcu104", "kv260", "pynq-z2"])
def test_zynq_block_design_is_consistent(projects, name):
    b, tp, prj = projects[name]
    ps = vivado.PS[b.family]
    tcl = (prj.out / "create_project.tcl").read_text()
    assert f"set part {b.part}" in tcl and b.board_part in tcl
    assert f"create_bd_cell -type ip -vlnv {ps['vlnv']} ps" in tcl
    # the PL clock is the board clock, in the PS config and in the wrapper's FREQ_HZ
    key = "PCW_FPGA0_PERIPHERAL_FREQMHZ" if b.family == "zynq" else "PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ"
    assert float(re.search(rf"CONFIG\.{key} {{([\d.]+)}}", tcl).group(1)) == b.clock_mhz
    w = (prj.out / "rtl" / "flightllm_bd.v").read_text()
    assert f"FREQ_HZ {int(b.clock_mhz * 1e6)}" in w
    wp = {p.name: p for p in parse_ports(w, "flightllm_bd")}
    # each engine master -> its own SmartConnect -> a distinct enabled HP port of the right width
    hps = []
    for i, m in enumerate(tp.masters):
        assert wp[f"{m.prefix}_wdata"].width == 8 * b.memory.port_bytes
        assert f"[get_bd_intf_pins accel/{m.prefix}] [get_bd_intf_pins mem_ic{i}/S00_AXI]" in tcl
        hp = re.search(rf"\[get_bd_intf_pins mem_ic{i}/M00_AXI\] \[get_bd_intf_pins ps/(\w+)\]", tcl).group(1)
        hps.append(hp)
        j = ps["hp"].index(hp)
        if b.family == "zynq":
            assert f"CONFIG.PCW_USE_S_AXI_HP{j} {{1}}" in tcl and f"CONFIG.PCW_S_AXI_HP{j}_DATA_WIDTH {{64}}" in tcl
        else:
            assert f"CONFIG.PSU__USE__S_AXI_GP{j + 2} {{1}}" in tcl and f"SAXIGP{j + 2}__DATA_WIDTH {{128}}" in tcl
        assert f"ps/{ps['hp_clk'][j]}" in tcl
    assert len(set(hps)) == len(hps) <= b.memory.channels
    # registers from the PS control master, irq to the PS, one clock net, one reset net
    assert f"[get_bd_intf_pins ctrl_ic/M00_AXI] [get_bd_intf_pins accel/{tp.control.prefix}]" in tcl
    assert f"[get_bd_pins accel/irq] [get_bd_pins ps/{ps['irq']}]" in tcl
    clk = re.search(rf"connect_bd_net \[get_bd_pins ps/{ps['clk']}\](.*)", tcl).group(1)
    assert "accel/aclk" in clk and ps["ctrl_clk"] in clk
    assert prj.outputs == ["flightllm.bit", "flightllm.hwh"] and "flightllm.hwh" in tcl and "*.bit" in tcl


def test_vhk158_versal_routes_every_hbm_channel(projects):
    b, tp, prj = projects["vhk158"]
    tcl = (prj.out / "create_project.tcl").read_text()
    assert "xilinx.com:ip:versal_cips" in tcl and "xilinx.com:ip:axi_noc hbm_noc" in tcl
    assert f"PMC_CRP_PL0_REF_CTRL_FREQMHZ {b.clock_mhz:g}" in tcl
    every = sorted(vivado.hbm_pc(i) for i in range(b.memory.channels))
    assert len(every) == 32
    for i, m in enumerate(tp.masters):      # every master reaches every pseudo-channel (one address space)
        assert f"[get_bd_intf_pins accel/{m.prefix}] [get_bd_intf_pins hbm_noc/S{i:02d}_AXI]" in tcl
        conns = re.search(rf"CONFIG.CONNECTIONS \{{(.*)\}}\] \[get_bd_intf_pins hbm_noc/S{i:02d}_AXI\]", tcl).group(1)
        assert sorted(re.findall(r"(HBM\d+_PC[01]) \{read_bw", conns)) == every
    assert "flightllm.pdi" in prj.outputs and "write_hw_platform" in tcl


def test_manifest_matches_board(projects):
    for b, tp, prj in projects.values():
        m = json.loads((prj.out / "manifest.json").read_text())
        assert m["board"] == b.name and m["part"] == b.part and m["clock_mhz"] == b.clock_mhz
        assert [x["data_bits"] for x in m["masters"]] == [8 * b.memory.port_bytes] * len(tp.masters)
        for f in m["files"]:
            if f != "manifest.json":
                assert (prj.out / f).is_file()


def test_master_channels_covers_every_channel():
    assert master_channels(32, 1) == [(0, 31)]
    assert master_channels(32, 3) == [(0, 31)] * 3          # one address space: every master reaches every channel
    with pytest.raises(FlowError):
        master_channels(4, 5)


def test_port_parser_rejects_an_incomplete_master():
    v = ("module flightllm_top(clk, rst, m_axi_araddr);\n input clk;\n input rst;\n output [63:0] m_axi_araddr;\n"
         "endmodule\n")
    with pytest.raises(FlowError, match="lacks m_axi_arvalid"):
        interfaces(v)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "flightllm", *args], capture_output=True, text=True)


def test_cli_run_without_vendor_tools_is_a_clear_error(tmp_path):
    r = _cli("build", "--board", "u280", "-o", str(tmp_path / "u280"), "--run")
    assert r.returncode == 2 and "--run needs vivado and v++ on PATH" in r.stderr and "Traceback" not in r.stderr


def test_cli_devices_and_flash_without_a_board(tmp_path):
    r = _cli("devices")
    assert r.returncode == 1 and "no FPGA devices found" in r.stderr
    bit = tmp_path / "f.bit"
    bit.write_bytes(b"\0" * 16)
    (tmp_path / "f.hwh").write_text("<xml/>")
    r = _cli("flash", "--board", "pynq-z2", str(bit))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no FPGA devices found" in r.stderr
    r = _cli("flash", "--board", "u280", str(bit))
    assert r.returncode == 2 and "loads a .xclbin" in r.stderr


def test_cli_build_of_a_multi_master_board_from_its_generated_verilog(tmp_path):
    """`flightllm build` reads the masters back from the generated Verilog (not the port list the other tests use):
    every master of a two-channel board must be a whole AXI4 master there, the read-only weight channels' write
    channels driven idle rather than left as top inputs."""
    b = boards.load("kv260")
    r = _cli("build", "--board", "kv260", "-o", str(tmp_path / "p"))     # the Verilog from the cache if it is there
    assert r.returncode == 0, r.stderr
    v = (tmp_path / "p" / "rtl" / "flightllm_top.v").read_text()
    got = interfaces(v)
    want = interfaces_of_top(b)
    assert [i.prefix for i in got.masters] == [i.prefix for i in want.masters] == ["m_axi", "m1_axi"]
    assert {(p.name, p.dir, p.width) for p in got.ports} == {(p.name, p.dir, p.width) for p in want.ports}
