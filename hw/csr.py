"""AXI4-Lite slave with the control/status registers of hw/regs.py."""
from __future__ import annotations

from amaranth import Elaboratable, Module, Signal

from flightllm.hw.regs import ADDR_BITS, CTRL_RESET, CTRL_START, ID_VALUE, REGS


class Csr(Elaboratable):
    def __init__(self):
        A = ADDR_BITS
        for n, w in [("awvalid", 1), ("awready", 1), ("awaddr", A), ("wvalid", 1), ("wready", 1), ("wdata", 32),
                     ("wstrb", 4), ("bvalid", 1), ("bready", 1), ("bresp", 2), ("arvalid", 1), ("arready", 1),
                     ("araddr", A), ("rvalid", 1), ("rready", 1), ("rdata", 32), ("rresp", 2)]:
            setattr(self, n, Signal(w, name=f"s_axil_{n}"))
        # engine side
        self.start = Signal()                         # one-cycle pulse the cycle after a CTRL write with bit 0 set
        self.reset = Signal()                         # the same for bit 1 (soft reset)
        self.rw = {n: Signal(32, name=f"csr_{n.lower()}") for n, (_, acc, _) in REGS.items() if acc == "rw"}
        self.ro = {n: Signal(32, name=f"csr_{n.lower()}") for n, (_, acc, _) in REGS.items() if acc == "r"}

    def elaborate(self, platform):
        m = Module()
        # write: accept AW and W together
        m.d.comb += [self.awready.eq(self.awvalid & self.wvalid & ~self.bvalid),
                     self.wready.eq(self.awvalid & self.wvalid & ~self.bvalid)]
        # START and RESET leave a register (one cycle after the CTRL write): combinational from the AXI4-Lite
        # inputs they would put the next-state logic of every register they reset in the cone of the inputs, which
        # Verilator evaluates again at each eval() (docs/rtl.md "Simulation speed"). CYCLES counts from the cycle
        # the engine leaves IDLE, so the run's cycle count does not change.
        start, reset = Signal(), Signal()
        m.d.sync += [self.start.eq(start), self.reset.eq(reset)]
        with m.If(self.awready):
            m.d.sync += [self.bvalid.eq(1), self.bresp.eq(0)]
            with m.Switch(self.awaddr):
                for n, s in self.rw.items():
                    with m.Case(REGS[n][0]):
                        m.d.sync += s.eq(self.wdata)
                with m.Case(REGS["CTRL"][0]):
                    m.d.comb += [start.eq((self.wdata & CTRL_START).any() & ~(self.wdata & CTRL_RESET).any()),
                                 reset.eq((self.wdata & CTRL_RESET).any())]
        with m.Elif(self.bvalid & self.bready):
            m.d.sync += self.bvalid.eq(0)
        m.d.comb += self.arready.eq(~self.rvalid)
        with m.If(self.arvalid & self.arready):
            m.d.sync += [self.rvalid.eq(1), self.rresp.eq(0), self.rdata.eq(0)]
            with m.Switch(self.araddr):
                for n, s in {**self.rw, **self.ro}.items():
                    with m.Case(REGS[n][0]):
                        m.d.sync += self.rdata.eq(s if n != "ID" else ID_VALUE)
        with m.Elif(self.rvalid & self.rready):
            m.d.sync += self.rvalid.eq(0)
        return m
