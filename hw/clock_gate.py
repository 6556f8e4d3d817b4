"""Clock gate for units that idle most of the time (the SFU while the MPE streams weights).

``gclk`` runs only in cycles whose ``en`` is high, so the gated unit's registers behave exactly as if ``en`` were
their clock enable: no behaviour or cycle changes. ``en`` is sampled on the falling edge, so a change right after
the rising edge cannot glitch ``gclk`` (the latch of a standard clock-gating cell). On Xilinx parts the same
module is a ``BUFGCE`` with ``CE_TYPE = "SYNC"`` (``VERILOG_BUFGCE``, chosen by the build flow), which samples CE
the same way.

Why gate at all: Verilator evaluates every register and its logic on every edge of its clock. The SFU is about
half of the engine's logic and idle in ~95% of decode cycles; on its own clock it costs nothing while idle, which
doubles the RTL simulation speed of a decode step. On a board it saves the SFU's dynamic power for the same reason.
"""
from __future__ import annotations

from amaranth import ClockSignal, Elaboratable, Instance, Module, Signal

MODULE = "flightllm_clkgate"

VERILOG = """
module flightllm_clkgate (
  input clk,
  input en,
  output gclk
);
  reg en_l = 1'b1;
  always @(negedge clk) en_l <= en;
  assign gclk = clk & en_l;
endmodule
"""

VERILOG_BUFGCE = """
module flightllm_clkgate (
  input clk,
  input en,
  output gclk
);
  BUFGCE #(.CE_TYPE("SYNC")) u_bufgce (.I(clk), .CE(en), .O(gclk));
endmodule
"""


class ClockGate(Elaboratable):
    """``gclk`` = the ``sync`` clock in the cycles where ``en`` is high."""

    def __init__(self):
        self.en = Signal()
        self.gclk = Signal()

    def elaborate(self, platform):
        m = Module()
        m.submodules.gate = Instance(MODULE, i_clk=ClockSignal("sync"), i_en=self.en, o_gclk=self.gclk)
        return m
