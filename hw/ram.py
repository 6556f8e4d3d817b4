"""On-chip RAMs (QBUF, ABUF banks) as instances of one small Verilog module.

Amaranth's ``lib.memory.Memory`` writes an initialiser line per word and spends tens of seconds emitting them for
the ABUF/QBUF; ``Ram`` instead instantiates ``flightllm_ram`` (``VERILOG``, appended to the generated top by
``hw/top.py``): ``NR`` synchronous read ports with enables (read-before-write, as Memory's default read ports),
one write port, zero-initialised by a loop. The port objects have Memory's ``addr``/``en``/``data`` names, so
hw/mpe.py works with either (its Amaranth-simulator tests use Memory).

``VERILOG_SIM`` is the same RAM for Verilator: each read register is clocked by its own gated clock (enable
sampled on the falling edge, as hw/clock_gate.py) instead of a clock enable. The behaviour is identical cycle for
cycle; Verilator then evaluates the logic behind a read port (e.g. the SFU's lanes behind the ABUF banks) only in
cycles that read. Synthesis uses ``VERILOG``: a clock enable is what the RAM primitives have.

``Ram(..., ultra=True)`` instantiates ``flightllm_ram_ultra`` instead: the same RAM with ``(* ram_style = "ultra" *)``
on its array, which Vivado and yosys' ``synth_xilinx -family xcup`` (memory_libmap) both map to URAM288. hw/top.py
asks for it for the ABUF banks on a device that has UltraRAM (the board's [resources] uram). Its synthesis text has
no zero-initialisation loop: UltraRAM has no INIT, it powers up zeroed (UG901), so there is nothing to ask for.
"""
from __future__ import annotations

from amaranth import Cat, ClockSignal, Elaboratable, Instance, Module, Signal

MODULE = "flightllm_ram"
MODULE_ULTRA = "flightllm_ram_ultra"

_READ_CE = """    always @(posedge clk) if (ren[g]) q <= mem[raddr[g*AW +: AW]];"""
_READ_GATED = """    reg ren_l = 1'b0;
    always @(negedge clk) ren_l <= ren[g];
    wire rclk = clk & ren_l;
    always @(posedge rclk) q <= mem[raddr[g*AW +: AW]];"""


_ZERO_INIT = """  integer i;
  initial for (i = 0; i < D; i = i + 1) mem[i] = {W{1'b0}};
"""


def _verilog(read: str, name: str = MODULE, attr: str = "", zero_init: bool = True) -> str:
    return f"""
module {name} #(parameter W = 32, parameter D = 1024, parameter AW = 10, parameter NR = 1) (
  input clk,
  input [NR*AW-1:0] raddr,
  input [NR-1:0] ren,
  output [NR*W-1:0] rdata,
  input [AW-1:0] waddr,
  input [W-1:0] wdata,
  input wen
);
  {attr}reg [W-1:0] mem [0:D-1];
{_ZERO_INIT if zero_init else ""}  genvar g;
  generate for (g = 0; g < NR; g = g + 1) begin : rd
    reg [W-1:0] q = {{W{{1'b0}}}};
{read}
    assign rdata[g*W +: W] = q;
  end endgenerate
  always @(posedge clk) if (wen) mem[waddr] <= wdata;
endmodule
"""


VERILOG = _verilog(_READ_CE)
VERILOG_SIM = _verilog(_READ_GATED)
_ULTRA = '(* ram_style = "ultra" *) '
VERILOG_ULTRA = _verilog(_READ_CE, MODULE_ULTRA, _ULTRA, zero_init=False)
VERILOG_ULTRA_SIM = _verilog(_READ_GATED, MODULE_ULTRA, _ULTRA)     # Verilator: zeroed as the URAM powers up


def verilog(design: str, sim: bool) -> str:
    """The RAM modules ``design`` (generated Verilog) instantiates: flightllm_ram, and flightllm_ram_ultra if used."""
    text = VERILOG_SIM if sim else VERILOG
    if MODULE_ULTRA in design:
        text += VERILOG_ULTRA_SIM if sim else VERILOG_ULTRA
    return text


class _Port:
    def __init__(self, aw: int, w: int, name: str):
        self.addr = Signal(aw, name=f"{name}_addr")
        self.en = Signal(name=f"{name}_en")
        self.data = Signal(w, name=f"{name}_data")


class Ram(Elaboratable):
    def __init__(self, width: int, depth: int, name: str = "ram", ultra: bool = False):
        self.W, self.D = width, depth
        self.ultra = ultra          # UltraRAM (see the module docstring)
        self.AW = max(1, (depth - 1).bit_length())
        self.name = name
        self._rd: list[_Port] = []
        self._wr: _Port | None = None

    def read_port(self) -> _Port:
        p = _Port(self.AW, self.W, f"{self.name}_r{len(self._rd)}")
        self._rd.append(p)
        return p

    def write_port(self) -> _Port:
        assert self._wr is None, "one write port"
        self._wr = _Port(self.AW, self.W, f"{self.name}_w")
        return self._wr

    def elaborate(self, platform):
        m = Module()
        rd = self._rd or [self.read_port()]
        wr = self._wr or self.write_port()
        rdata = Signal(self.W * len(rd), name=f"{self.name}_rdata")
        m.submodules.ram = Instance(
            MODULE_ULTRA if self.ultra else MODULE, p_W=self.W, p_D=self.D, p_AW=self.AW, p_NR=len(rd),
            i_clk=ClockSignal(), i_raddr=Cat(p.addr for p in rd), i_ren=Cat(p.en for p in rd), o_rdata=rdata,
            i_waddr=wr.addr, i_wdata=wr.data, i_wen=wr.en)
        for i, p in enumerate(rd):
            m.d.comb += p.data.eq(rdata[i * self.W:(i + 1) * self.W])
        return m
