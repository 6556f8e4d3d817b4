"""One 16-stage DSP chain as a module: the engine (hw/mpe.py) instantiates one per chain, the block tests drive one
alone, and the hierarchical estimate synthesises each distinct one once (chains with equal taps are the same).

Built by ``mpe.dsp_chain``: per stage ONE multiplier, a 27-bit weight operand times an 8-bit activation (M
register), the cascade adder into the P register (PCIN from the previous stage), as two cascades of ``mpe.SEG``
stages with inputs skewed by the stage index. With ``pair`` the operand holds two rows' weights (w_odd * 2^18 +
w_even) and the chain returns both rows' dot products (``even``, ``odd``); without, ``even`` is the plain dot
product. ``qs``: the sum of the activations. Reduction taps (``taps`` 1, 2 or 4): ``tp[i]`` the P of the last stage
of run i (len / taps stages), ``tq[i]`` that run's activation sum; with 4 taps ``cut`` (with the operands) cuts each
cascade in the middle, so every run's tap is its own dot product (4 sparse 2:16 blocks in one chain).
"""
from __future__ import annotations

from amaranth import Elaboratable, Module, Signal, signed

from flightllm.hw.mpe import ACC_BITS, PK_BITS, QS_BITS, SEG, X_BITS, delay, dsp_chain


class DspChain(Elaboratable):
    def __init__(self, length: int = 16, taps: int = 4):
        self.L = length
        self.T = taps
        self.a = [Signal(signed(PK_BITS), name=f"a{i}") for i in range(length)]
        self.x = [Signal(signed(X_BITS), name=f"x{i}") for i in range(length)]
        self.pair = Signal()
        self.even = Signal(signed(ACC_BITS))
        self.odd = Signal(signed(ACC_BITS))
        self.qs = Signal(signed(QS_BITS))
        self.cut = Signal()
        self.tp = [Signal(signed(ACC_BITS), name=f"tp{i}") for i in range(taps if taps > 1 else 0)]
        self.tq = [Signal(signed(QS_BITS), name=f"tq{i}") for i in range(taps if taps > 1 else 0)]

    def ports(self):
        return self.a + self.x + [self.pair, self.even, self.odd, self.qs, self.cut] + self.tp + self.tq

    def elaborate(self, platform):
        m = Module()
        # ``pair`` comes with the operands (as the engine's mode does) and travels with them to the split
        e, o, q, tp, tq = dsp_chain(m, self.a, self.x, delay(m, self.pair, SEG + 1, "pairq"), "ch", self.T,
                                    self.cut if self.T == 4 else None)
        m.d.comb += [self.even.eq(e), self.odd.eq(o), self.qs.eq(q)]
        m.d.comb += [d.eq(v) for d, v in zip(self.tp + self.tq, tp + tq)]
        return m
