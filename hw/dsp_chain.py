"""One DSP chain, standalone, for synthesis estimates (yosys synth_xilinx) and block tests.

Same stage structure as the chains inside hw/mpe.py: per stage two (weight, activation) products summed in the
DSP's M register, the cascade adder into the P register (PCIN from the previous stage, cut to zero at a
reduction node), inputs skewed by the stage index, reduction-node outputs de-skewed to one cycle.
"""
from __future__ import annotations

from amaranth import Elaboratable, Module, Mux, Signal, signed

from flightllm.hw.mpe import ACC_BITS, W_BITS, X_BITS, delay


class DspChain(Elaboratable):
    def __init__(self, length: int = 16):
        self.L = length
        self.w = [Signal(signed(W_BITS), name=f"w{i}") for i in range(2 * length)]
        self.x = [Signal(signed(X_BITS), name=f"x{i}") for i in range(2 * length)]
        self.half = Signal(5)            # stages per segment (P/2): 16, 8, 4, 2
        self.out = [Signal(signed(ACC_BITS), name=f"acc{i}") for i in range(length // 2)]

    def ports(self):
        return self.w + self.x + [self.half] + self.out

    def elaborate(self, platform):
        m = Module()
        L = self.L
        prev = None
        for l in range(L):
            w0, w1 = delay(m, self.w[2 * l], l, f"sw0_{l}"), delay(m, self.w[2 * l + 1], l, f"sw1_{l}")
            x0, x1 = delay(m, self.x[2 * l], l, f"sx0_{l}"), delay(m, self.x[2 * l + 1], l, f"sx1_{l}")
            start = delay(m, (l & (self.half - 1)) == 0, l, f"ss_{l}") if l else None
            mreg = Signal(signed(ACC_BITS), name=f"m_{l}")
            m.d.sync += mreg.eq(w0 * x0 + w1 * x1)
            preg = Signal(signed(ACC_BITS), name=f"p_{l}")
            if l == 0:
                m.d.sync += preg.eq(mreg)
            else:
                st = Signal(name=f"st_{l}")
                m.d.sync += st.eq(start)
                m.d.sync += preg.eq(mreg + Mux(st, 0, prev))
            prev = preg
            if l % 2 == 1:
                m.d.comb += self.out[l // 2].eq(delay(m, preg, L - 1 - l, f"dk_{l}"))
        return m
