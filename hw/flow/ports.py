"""The generated top's port list, read back from its Verilog, grouped into the interfaces the vendor flows wire.

Nothing here restates the RTL's ports: the build reads the module header Amaranth wrote, so a top that grows a
second memory master (``m1_axi_*``) or renames a signal changes the generated projects with it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from flightllm.errors import FlightLLMError


class FlowError(FlightLLMError):
    """A design or board the build flow cannot turn into a vendor project."""


@dataclass(frozen=True)
class Port:
    name: str
    dir: str        # "input" / "output"
    width: int


# AXI4 master signals the engine must drive / accept, with direction from the master's side
AXI4_MASTER = {"arvalid": "output", "arready": "input", "araddr": "output", "arlen": "output",
               "arsize": "output", "arburst": "output", "rvalid": "input", "rready": "output", "rdata": "input",
               "rresp": "input", "rlast": "input", "awvalid": "output", "awready": "input", "awaddr": "output",
               "awlen": "output", "awsize": "output", "awburst": "output", "wvalid": "output", "wready": "input",
               "wdata": "output", "wstrb": "output", "wlast": "output", "bvalid": "input", "bready": "output",
               "bresp": "input"}
AXIL_SLAVE = {"awvalid": "input", "awready": "output", "awaddr": "input", "wvalid": "input", "wready": "output",
              "wdata": "input", "wstrb": "input", "bvalid": "output", "bready": "input", "bresp": "output",
              "arvalid": "input", "arready": "output", "araddr": "input", "rvalid": "output", "rready": "input",
              "rdata": "output", "rresp": "output"}


@dataclass
class AxiIf:
    prefix: str                      # e.g. "m_axi", "m1_axi", "s_axil"
    signals: dict[str, Port] = field(default_factory=dict)

    @property
    def data_width(self) -> int:
        s = self.signals.get("rdata") or self.signals.get("wdata")
        return s.width

    @property
    def addr_width(self) -> int:
        return self.signals["araddr"].width


@dataclass
class TopPorts:
    module: str
    ports: list[Port]
    clock: str
    reset: str
    irq: str | None
    masters: list[AxiIf]
    control: AxiIf

    def by_name(self) -> dict[str, Port]:
        return {p.name: p for p in self.ports}


_DECL = re.compile(r"^\s*(input|output|inout)\s+(?:wire\s+|reg\s+|signed\s+)*(?:\[(\d+):(\d+)\]\s*)?([A-Za-z_][\w$]*)\s*(?:[;,)]|$)",
                   re.M)


def parse_ports(verilog: str, module: str) -> list[Port]:
    """Ports of ``module`` in header order, from Verilog as Amaranth/yosys writes it (non-ANSI or ANSI)."""
    verilog = re.sub(r"\(\*.*?\*\)", "", verilog, flags=re.S)     # attributes
    m = re.search(rf"^\s*module\s+\\?{re.escape(module)}\s*\((.*?)\)\s*;", verilog, re.M | re.S)
    if not m:
        raise FlowError(f"module '{module}' not found in the generated Verilog")
    end = verilog.find("endmodule", m.end())
    body = verilog[m.start(): end if end >= 0 else len(verilog)]
    decl = {}
    for d in _DECL.finditer(body):
        hi, lo = d.group(2), d.group(3)
        decl[d.group(4)] = Port(d.group(4), d.group(1), abs(int(hi) - int(lo)) + 1 if hi is not None else 1)
    order = [n.strip().split()[-1].strip("\\") for n in m.group(1).split(",") if n.strip()]
    order = [re.sub(r"\[.*\]", "", n) for n in order]
    missing = [n for n in order if n not in decl]
    if missing:
        raise FlowError(f"module '{module}': no direction found for port(s) {', '.join(missing[:5])}")
    return [decl[n] for n in order]


def _group(ports: list[Port], pattern: str) -> dict[str, AxiIf]:
    out: dict[str, AxiIf] = {}
    rx = re.compile(pattern)
    for p in ports:
        m = rx.match(p.name)
        if m:
            out.setdefault(m.group(1), AxiIf(m.group(1))).signals[m.group(2)] = p
    return out


def _check_if(i: AxiIf, spec: dict[str, str], what: str) -> None:
    for sig, d in spec.items():
        p = i.signals.get(sig)
        if p is None:
            raise FlowError(f"{what} '{i.prefix}' lacks {i.prefix}_{sig}")
        if p.dir != d:
            raise FlowError(f"{what} '{i.prefix}': {p.name} is an {p.dir}, expected {d}")
    dw = i.data_width
    if dw not in (32, 64, 128, 256, 512, 1024):
        raise FlowError(f"{what} '{i.prefix}': data width {dw} is not an AXI width")
    if "wstrb" in i.signals and i.signals["wstrb"].width * 8 != dw:
        raise FlowError(f"{what} '{i.prefix}': wstrb is {i.signals['wstrb'].width} bits for {dw}-bit data")


def interfaces(verilog: str, module: str = "flightllm_top") -> TopPorts:
    """Parse and classify the top's ports: clock, reset, irq, AXI4 masters ``m[N]_axi_*``, AXI4-Lite ``s_axil_*``."""
    ports = parse_ports(verilog, module)
    names = {p.name: p for p in ports}
    masters = _group(ports, r"^(m\d*_axi)_(\w+)$")
    slaves = _group(ports, r"^(s_axil)_(\w+)$")
    if not masters:
        raise FlowError(f"module '{module}' has no AXI4 master (m_axi_*): nothing to connect to memory")
    ms = sorted(masters.values(), key=lambda i: (len(i.prefix), i.prefix))
    for i in ms:
        _check_if(i, AXI4_MASTER, "AXI4 master")
    if "s_axil" not in slaves:
        raise FlowError(f"module '{module}' has no AXI4-Lite slave (s_axil_*) for its registers")
    _check_if(slaves["s_axil"], AXIL_SLAVE, "AXI4-Lite slave")
    if "clk" not in names or "rst" not in names:
        raise FlowError(f"module '{module}' lacks its clk/rst ports")
    grouped = {p.name for i in [*ms, slaves["s_axil"]] for p in i.signals.values()} | {"clk", "rst"}
    irq = "irq" if "irq" in names else None
    extra = [p.name for p in ports if p.name not in grouped and p.name != irq]
    if extra:
        raise FlowError(f"module '{module}': ports the build flow does not know how to wire: {', '.join(extra)}")
    return TopPorts(module, ports, "clk", "rst", irq, ms, slaves["s_axil"])


def interfaces_of_top(board) -> TopPorts:
    """The same classification from the Amaranth Elaboratable's port list (no elaboration: instant). Directions
    are the AXI roles' (master / AXI4-Lite slave); ``build`` re-reads them from the generated Verilog header."""
    from flightllm.hw.top import build_top

    top, sigs = build_top(board)
    # only the port list is wanted: mark the never-elaborated top (and the Csr it builds) as used, or Amaranth
    # warns UnusedElaboratable when they are collected
    for e in (top, top.csr):
        e._MustUse__used = True
    ports = [Port("clk", "input", 1), Port("rst", "input", 1)]
    for s in sigs:
        n = s.name
        m = re.match(r"^(m\d*_axi)_(\w+)$", n)
        if m:
            d = AXI4_MASTER.get(m.group(2))
        elif n.startswith("s_axil_"):
            d = AXIL_SLAVE.get(n[len("s_axil_"):])
        else:
            d = "output" if n == "irq" else "input"
        if d is None:
            raise FlowError(f"top port {n}: not an AXI signal the flow knows")
        ports.append(Port(n, d, len(s)))
    names = {p.name for p in ports}
    text = "module flightllm_top(" + ", ".join(p.name for p in ports) + ");\n" + "".join(
        f"  {p.dir} {'[' + str(p.width - 1) + ':0] ' if p.width > 1 else ''}{p.name};\n" for p in ports) + "endmodule\n"
    assert len(names) == len(ports)
    return interfaces(text, "flightllm_top")
