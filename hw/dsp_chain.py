"""One lane's DSP cascade, standalone, for synthesis estimates (yosys synth_xilinx) and block tests.

The same structure as every lane of hw/mpe.py (``mpe.dsp_cascade``): per stage two (weight, activation) products
summed in the DSP's M register, the cascade adder into the P register (PCIN from the previous stage), inputs
skewed by the stage index; the block's dot product and activation sum leave the last stage.
"""
from __future__ import annotations

from amaranth import Elaboratable, Module, Signal, signed

from flightllm.hw.mpe import ACC_BITS, QS_BITS, W_BITS, X_BITS, dsp_cascade


class DspChain(Elaboratable):
    def __init__(self, length: int = 16):
        self.L = length
        self.w = [Signal(signed(W_BITS), name=f"w{i}") for i in range(2 * length)]
        self.x = [Signal(signed(X_BITS), name=f"x{i}") for i in range(2 * length)]
        self.acc = Signal(signed(ACC_BITS))
        self.qs = Signal(signed(QS_BITS))

    def ports(self):
        return self.w + self.x + [self.acc, self.qs]

    def elaborate(self, platform):
        m = Module()
        a, q = dsp_cascade(m, self.w, self.x, "ch")
        m.d.comb += [self.acc.eq(a), self.qs.eq(q)]
        return m
