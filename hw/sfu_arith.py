"""Small exact-integer building blocks of the special function unit (docs/sfu.md).

- :class:`SerialDiv`: restoring division, one quotient bit per cycle (the per-row reciprocals).
- :class:`SerialIsqrt`: digit-by-digit integer square root, one root bit per cycle (RMSNorm).
- :func:`sat32`, :func:`div_const_floor`: combinational helpers.

All of them are plain integer algorithms: they agree with Python's ``//`` and ``math.isqrt`` bit for bit.
"""
from __future__ import annotations

from amaranth import Cat, Const, Elaboratable, Module, Mux, Signal, signed

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def sat32(v):
    """Clamp a signed value to int32 (returns a signed(32) expression)."""
    return Mux(v > INT32_MAX, Const(INT32_MAX, signed(32)), Mux(v < INT32_MIN, Const(INT32_MIN, signed(32)), v[:32].as_signed()))


def div_const_params(d: int, nbits: int) -> tuple[int, int]:
    """(M, s) with floor(x / d) == (x * M) >> s for every 0 <= x < 2^nbits (Granlund-Montgomery round-up)."""
    l = (d - 1).bit_length()
    s = nbits + l
    M = -(-(1 << s) // d)
    assert M * d - (1 << s) <= (1 << l), "no exact multiplier"  # error term < 1/d for all x < 2^nbits
    return M, s


def div_const_floor(x, d: int, nbits: int):
    """floor(x / d) for unsigned x < 2^nbits, by one multiplication."""
    M, s = div_const_params(d, nbits)
    return (x * M) >> s


class SerialDiv(Elaboratable):
    """q = num // den for unsigned operands whose quotient is known to be < 2^qbits.

    ``start`` (one cycle) samples num/den; ``done`` pulses ``qbits`` cycles later with ``q`` valid (q stays
    until the next start). den = 0 gives q = 2^qbits - 1 (callers exclude it). Latency: qbits + 1 cycles from
    start to the done cycle.
    """

    def __init__(self, nbits: int, dbits: int, qbits: int):
        self.nbits, self.dbits, self.qbits = nbits, dbits, qbits
        self.start = Signal()
        self.num = Signal(nbits)
        self.den = Signal(dbits)
        self.q = Signal(qbits)
        self.busy = Signal()
        self.done = Signal()

    LATENCY = property(lambda self: self.qbits + 1)

    def elaborate(self, platform):
        m = Module()
        qb = self.qbits
        rem = Signal(self.dbits + 1)
        low = Signal(qb)            # numerator bits still to bring down (MSB first)
        den = Signal(self.dbits)
        cnt = Signal(range(qb + 1))
        trial = Signal(self.dbits + 2)
        m.d.comb += trial.eq(Cat(low[qb - 1], rem))          # (rem << 1) | next numerator bit
        m.d.sync += self.done.eq(0)
        with m.If(self.start):
            m.d.sync += [rem.eq(self.num >> qb), low.eq(self.num[:qb]), den.eq(self.den), cnt.eq(qb),
                         self.busy.eq(1)]
        with m.Elif(self.busy):
            ge = trial >= den
            m.d.sync += [rem.eq(Mux(ge, trial - den, trial)), low.eq(low << 1), self.q.eq((self.q << 1) | ge),
                         cnt.eq(cnt - 1)]
            with m.If(cnt == 1):
                m.d.sync += [self.busy.eq(0), self.done.eq(1)]
        return m


class SerialIsqrt(Elaboratable):
    """r = isqrt(x) for unsigned x < 2^(2*rbits), one root bit per cycle; done pulses rbits + 1 cycles after start."""

    def __init__(self, rbits: int):
        self.rbits = rbits
        self.start = Signal()
        self.x = Signal(2 * rbits)
        self.r = Signal(rbits)
        self.busy = Signal()
        self.done = Signal()

    LATENCY = property(lambda self: self.rbits + 1)

    def elaborate(self, platform):
        m = Module()
        rb = self.rbits
        rem = Signal(rb + 2)
        xs = Signal(2 * rb)
        cnt = Signal(range(rb + 1))
        cur = Signal(rb + 4)
        trial = Signal(rb + 4)
        m.d.comb += [cur.eq(Cat(xs[2 * rb - 2:], rem)), trial.eq(Cat(Const(1, 2), self.r))]
        m.d.sync += self.done.eq(0)
        with m.If(self.start):
            m.d.sync += [rem.eq(0), xs.eq(self.x), self.r.eq(0), cnt.eq(rb), self.busy.eq(1)]
        with m.Elif(self.busy):
            ge = cur >= trial
            m.d.sync += [rem.eq(Mux(ge, cur - trial, cur)), xs.eq(xs << 2), self.r.eq((self.r << 1) | ge),
                         cnt.eq(cnt - 1)]
            with m.If(cnt == 1):
                m.d.sync += [self.busy.eq(0), self.done.eq(1)]
        return m
