"""Datapath cores of the special function unit: W lanes each, fixed latency 2 (docs/sfu.md).

Every core takes its operands and ``valid_i`` in cycle t and presents its results with ``valid_o`` in cycle
t + 2 (two register stages, fully pipelined: one chunk per cycle). The arithmetic is exactly that of
``flightllm.sim.sfu_model``; ROM contents come from ``sfu_model.exp2_table()`` / ``sigmoid_table()``.

Vectors are lists of Signals (``x[i]`` is lane i).
"""
from __future__ import annotations

from amaranth import Array, Cat, Const, Elaboratable, Module, Mux, Signal, signed, unsigned
from amaranth.lib.memory import Memory

from flightllm.formats import ACT_FRAC, BLOCK, GAMMA_FRAC, ROPE_FRAC, SCALE_MANT_BITS
from flightllm.hw.sfu_arith import div_const_floor, sat32
from flightllm.sim import sfu_model as sm

LATENCY = 2


def _vec(n, shape, name):
    return [Signal(shape, name=f"{name}{i}") for i in range(n)]


_uid = [0]


def restart_names() -> None:
    """Restart wire()'s numbering (hw/top.py, before each generation): the same design then gets the same names,
    not numbers that depend on what the process generated before."""
    _uid[0] = 0


def wire(m, expr, shape=None, name="w"):
    """Materialise an expression as a comb Signal (keeps the generated netlist a DAG, not a tree)."""
    _uid[0] += 1
    s = Signal(shape if shape is not None else expr.shape(), name=f"{name}_{_uid[0]}")
    m.d.comb += s.eq(expr)
    return s


def rom_ports(m, shape, init, n):
    """``n`` read ports of one ROM, from ceil(n / 2) copies of two ports each: what a block RAM gives (two ports),
    written out so that synthesis maps each copy on its own (yosys ran out of 24 GB mapping one 16-port ROM)."""
    ports = []
    for c in range(-(-n // 2)):
        rom = Memory(shape=shape, depth=len(init), init=init)
        m.submodules["rom" if c == 0 else f"rom{c}"] = rom
        for _ in range(min(2, n - 2 * c)):
            rp = rom.read_port()
            ports.append(rp)
    return ports


def _tree(items, f):
    while len(items) > 1:
        nxt = [f(items[i], items[i + 1]) for i in range(0, len(items) - 1, 2)]
        if len(items) % 2:
            nxt.append(items[-1])
        items = nxt
    return items[0]


class EltCore(Elaboratable):
    """COPY (add=0) and ADD (add=1): y = sat32(a + b)."""

    def __init__(self, W):
        self.W = W
        self.valid_i, self.add = Signal(), Signal()
        self.a, self.b = _vec(W, signed(32), "a"), _vec(W, signed(32), "b")
        self.valid_o = Signal()
        self.y = _vec(W, signed(32), "y")

    def elaborate(self, platform):
        m = Module()
        v1 = Signal()
        s1 = _vec(self.W, signed(33), "s1_")
        m.d.sync += [v1.eq(self.valid_i), self.valid_o.eq(v1)]
        for i in range(self.W):
            m.d.sync += [s1[i].eq(self.a[i] + Mux(self.add, self.b[i], 0)), self.y[i].eq(sat32(s1[i]))]
        return m


class SiluMulCore(Elaboratable):
    """y = sat32(silu(a) * b) with the 4097-entry sigmoid ROM and 5-bit linear interpolation.

    The ROM holds pairs (SIG[i], SIG[i+1]) so that one read per lane gives both interpolation points.
    """

    def __init__(self, W):
        self.W = W
        self.valid_i = Signal()
        self.a, self.b = _vec(W, signed(32), "a"), _vec(W, signed(32), "b")
        self.valid_o = Signal()
        self.y = _vec(W, signed(32), "y")

    def elaborate(self, platform):
        m = Module()
        tab = [int(v) for v in sm.sigmoid_table()]
        top = len(tab) - 1
        tb = max(tab).bit_length()
        rps = rom_ports(m, unsigned(2 * tb), [tab[i] | (tab[i + 1] << tb) for i in range(top)], self.W)
        SB = sm.SIG_STEP_BITS
        v1 = Signal()
        m.d.sync += [v1.eq(self.valid_i), self.valid_o.eq(v1)]
        for i in range(self.W):
            rp = rps[i]
            v = Signal(signed(34), name=f"v{i}")
            m.d.comb += v.eq(self.a[i] + (sm.SIG_RANGE << ACT_FRAC))
            idx = v >> SB
            m.d.comb += rp.addr.eq(Mux(v < 0, 0, Mux(idx > top - 1, top - 1, idx)))
            a1, b1 = Signal(signed(32), name=f"a1_{i}"), Signal(signed(32), name=f"b1_{i}")
            fr, lo, hi = Signal(SB, name=f"fr{i}"), Signal(name=f"lo{i}"), Signal(name=f"hi{i}")
            m.d.sync += [a1.eq(self.a[i]), b1.eq(self.b[i]), fr.eq(v[:SB]), lo.eq(v < 0),
                         hi.eq(v >= (top << SB))]
            t0 = Cat(rp.data[:tb], Const(0, 1)).as_signed()
            t1 = Cat(rp.data[tb:], Const(0, 1)).as_signed()
            s = Signal(signed(tb + 2), name=f"s{i}")
            m.d.comb += s.eq(Mux(lo, 0, Mux(hi, 1 << sm.SIG_FRAC,
                                           t0 + (((t1 - t0) * fr + (1 << (SB - 1))) >> SB))))
            silu = Signal(signed(52), name=f"silu{i}")
            m.d.comb += silu.eq((a1 * s + (1 << (sm.SIG_FRAC - 1))) >> sm.SIG_FRAC)
            m.d.sync += self.y[i].eq(sat32((silu * b1 + (1 << (ACT_FRAC - 1))) >> ACT_FRAC))
        return m


class RopeCore(Elaboratable):
    """Rotate W/2 adjacent pairs (x[2i], x[2i+1]) by (c[i], s[i]) in Q.ROPE_FRAC."""

    def __init__(self, W):
        assert W % 2 == 0
        self.W = W
        self.valid_i = Signal()
        self.x = _vec(W, signed(32), "x")
        self.c, self.s = _vec(W // 2, signed(32), "c"), _vec(W // 2, signed(32), "s")
        self.valid_o = Signal()
        self.y = _vec(W, signed(32), "y")

    def elaborate(self, platform):
        m = Module()
        v1 = Signal()
        m.d.sync += [v1.eq(self.valid_i), self.valid_o.eq(v1)]
        r = 1 << (ROPE_FRAC - 1)
        for i in range(self.W // 2):
            x0, x1, c, s = self.x[2 * i], self.x[2 * i + 1], self.c[i], self.s[i]
            p = [Signal(signed(64), name=f"p{i}_{k}") for k in range(4)]
            m.d.sync += [p[0].eq(x0 * c), p[1].eq(x1 * s), p[2].eq(x0 * s), p[3].eq(x1 * c)]
            m.d.sync += [self.y[2 * i].eq(sat32((p[0] - p[1] + r) >> ROPE_FRAC)),
                         self.y[2 * i + 1].eq(sat32((p[2] + p[3] + r) >> ROPE_FRAC))]
        return m


class SumSqCore(Elaboratable):
    """RMSNorm pass 1: sum of x^2 over the live lanes (exact, 62 + log2(W) bits)."""

    def __init__(self, W):
        self.W = W
        self.valid_i = Signal()
        self.x = _vec(W, signed(32), "x")
        self.live = Signal(W)
        self.valid_o = Signal()
        self.ss = Signal(64 + (W - 1).bit_length())

    def elaborate(self, platform):
        m = Module()
        v1 = Signal()
        m.d.sync += [v1.eq(self.valid_i), self.valid_o.eq(v1)]
        sq = _vec(self.W, unsigned(64), "sq")
        for i in range(self.W):
            m.d.sync += sq[i].eq(Mux(self.live[i], self.x[i] * self.x[i], 0))
        m.d.sync += self.ss.eq(_tree(list(sq), lambda a, b: a + b))
        return m


class RmsCore(Elaboratable):
    """RMSNorm pass 2: u = (x*rinv + 2^29) >> 30; y = sat32((u*g + 2^23) >> 24)."""

    RINV_BITS = 51                       # rinv = 2^62 // s with s >= 2^12 (or 0)

    def __init__(self, W):
        self.W = W
        self.valid_i = Signal()
        self.x, self.g = _vec(W, signed(32), "x"), _vec(W, signed(32), "g")
        self.rinv = Signal(self.RINV_BITS)
        self.valid_o = Signal()
        self.y = _vec(W, signed(32), "y")

    def elaborate(self, platform):
        m = Module()
        v1 = Signal()
        m.d.sync += [v1.eq(self.valid_i), self.valid_o.eq(v1)]
        sh = GAMMA_FRAC + 20 - ACT_FRAC
        for i in range(self.W):
            u = Signal(signed(32 + self.RINV_BITS - 29), name=f"u{i}")
            g1 = Signal(signed(32), name=f"g1_{i}")
            m.d.sync += [u.eq((self.x[i] * self.rinv + (1 << 29)) >> 30), g1.eq(self.g[i])]
            m.d.sync += self.y[i].eq(sat32((u * g1 + (1 << (sh - 1))) >> sh))
        return m


class ExpCore(Elaboratable):
    """Softmax passes 2 and 3: e = EXP2[w mod 4096] >> min(w >> 12, 62), w = ((mx - x) * mult) >> 16
    (0 on dead lanes), and the normalised y = (e * rinv + 2^30) >> 31. Both outputs at latency 2."""

    def __init__(self, W):
        self.W = W
        self.valid_i = Signal()
        self.x = _vec(W, signed(32), "x")
        self.live = Signal(W)
        self.mx = Signal(signed(32))
        self.mult = Signal(32)
        self.rinv = Signal(33)
        self.valid_o = Signal()
        self.e = _vec(W, unsigned(31), "e")
        self.y = _vec(W, signed(32), "y")

    def elaborate(self, platform):
        m = Module()
        EB = sm.EXP_FRAC_BITS
        tab = [int(v) for v in sm.exp2_table()]
        rps = rom_ports(m, unsigned(max(tab).bit_length()), tab, self.W)
        v1 = Signal()
        m.d.sync += [v1.eq(self.valid_i), self.valid_o.eq(v1)]
        dsh = 16 + ACT_FRAC - EB
        rinv1 = Signal(len(self.rinv))
        m.d.sync += rinv1.eq(self.rinv)             # sampled with the chunk
        for i in range(self.W):
            rp = rps[i]
            z = Signal(33, name=f"z{i}")
            m.d.comb += z.eq((self.mx - self.x[i])[:33])
            w = Signal(65 - dsh, name=f"w{i}")
            m.d.comb += [w.eq((z * self.mult) >> dsh), rp.addr.eq(w[:EB])]
            ni, live1 = Signal(6, name=f"ni{i}"), Signal(name=f"live1_{i}")
            m.d.sync += [ni.eq(Mux((w >> EB) > 62, 62, w >> EB)), live1.eq(self.live[i])]
            e = Signal(31, name=f"ec{i}")
            m.d.comb += e.eq(Mux(live1, rp.data >> ni, 0))
            m.d.sync += [self.e[i].eq(e), self.y[i].eq(((e * rinv1 + (1 << 30)) >> 31)[:32].as_signed())]
        return m


class ArgmaxCore(Elaboratable):
    """First maximum over the live lanes of a chunk: (val, lane, any). Ties go to the lower lane."""

    def __init__(self, W):
        self.W = W
        self.valid_i = Signal()
        self.x = _vec(W, signed(32), "x")
        self.live = Signal(W)
        self.valid_o = Signal()
        self.val = Signal(signed(32))
        self.lane = Signal(range(max(W, 2)))
        self.any = Signal()

    def elaborate(self, platform):
        m = Module()
        v1 = Signal()
        m.d.sync += [v1.eq(self.valid_i), self.valid_o.eq(v1)]
        x1 = _vec(self.W, signed(32), "x1_")
        l1 = Signal(self.W)
        m.d.sync += [x1[i].eq(self.x[i]) for i in range(self.W)]
        m.d.sync += l1.eq(self.live)
        lb = len(self.lane)

        def pick(p, q):           # p = (live, val, idx) is the lower-index candidate: wins ties
            take_q = wire(m, q[0] & (~p[0] | (q[1] > p[1])), 1, "tq")
            return (wire(m, p[0] | q[0], 1, "an"), wire(m, Mux(take_q, q[1], p[1]), signed(32), "bv"),
                    wire(m, Mux(take_q, q[2], p[2]), lb, "bi"))

        best = _tree([(l1[i], x1[i], Const(i, lb)) for i in range(self.W)], pick)
        m.d.sync += [self.any.eq(best[0]), self.val.eq(best[1]), self.lane.eq(best[2])]
        return m


class QuantCore(Elaboratable):
    """32-element blocks arriving as ``BLOCK / W`` chunks of W elements -> 32 int8 q, scale mantissa m (u16) and
    exponent e (i8) per block, as sfu_model.quant; W dividers (not 32), so a block takes ``BLOCK / W`` cycles to
    quantise, overlapped with the next block's chunks.

    Chunks: ``valid_i`` with ``x`` (W lanes), ``first`` (chunk 0 of a block), ``last`` (its last chunk; both on a
    single-chunk block) and ``addr_i`` (the block's QBUF address, sampled with ``last``). A block's chunks arrive
    in order, not necessarily back to back; the next block's last chunk comes at least BLOCK / W cycles after
    this block's (one chunk a cycle at most).
    Cycle T (the last chunk): amax (a running maximum of |x| over the chunks), S = amax + ceil(amax / 127)
    (= ceil(128 amax / 127)), its 11-bit mantissa m * 2^k (rounded up, renormalised) -> registers, with the
    block's |x| and signs. Cycles T+1 .. T+C (C = BLOCK / W): W elements a cycle, q = floor(((256|x| + m 2^k) >>
    (k + 1)) / m) by an unrolled 8-step restoring division, with the sign of x. ``valid_o`` (with q, m, e,
    ``addr_o``) in cycle T + C + 1 (``latency``); ``busy`` from T + 1 until then.
    """

    def __init__(self, W: int = BLOCK):
        assert 1 <= W <= BLOCK and BLOCK % W == 0
        self.W = W
        self.C = BLOCK // W
        self.latency = self.C + 1
        self.valid_i = Signal()
        self.first = Signal()
        self.last = Signal()
        self.x = _vec(W, signed(32), "x")
        self.frac = Signal(32)
        self.addr_i = Signal(24)
        self.valid_o = Signal()
        self.busy = Signal()
        self.q = _vec(BLOCK, signed(8), "q")
        self.m = Signal(16)
        self.e = Signal(8)
        self.addr_o = Signal(24)

    def elaborate(self, platform):
        m = Module()
        MB = SCALE_MANT_BITS
        W, C = self.W, self.C
        # |x| and sign of the chunk, running amax over the block's chunks
        ax = [wire(m, Mux(self.x[i] < 0, -self.x[i], self.x[i]), 32, "ax") for i in range(W)]
        cmax = _tree(list(ax), lambda a, b: wire(m, Mux(a >= b, a, b), 32, "mx"))
        racc = Signal(32)
        amax = Signal(32)
        m.d.comb += amax.eq(Mux(self.first | (racc >= cmax), Mux(self.first, cmax, racc), cmax))
        with m.If(self.valid_i):
            m.d.sync += racc.eq(amax)
        # the block's earlier chunks (C - 1 of them)
        col = [Signal(32, name=f"col{j}") for j in range(BLOCK - W)]
        csg = Signal(max(1, BLOCK - W))
        if C > 1:
            ci = Signal(range(C))
            with m.If(self.valid_i):
                m.d.sync += ci.eq(Mux(self.first, 1, ci + 1))
            pos = Mux(self.first, 0, ci)
            with m.If(self.valid_i & ~self.last):
                for c in range(C - 1):
                    with m.If(pos == c):
                        m.d.sync += [col[c * W + i].eq(ax[i]) for i in range(W)]
                        m.d.sync += csg[c * W: (c + 1) * W].eq(Cat(self.x[i] < 0 for i in range(W)))
        S = Signal(33)
        m.d.comb += S.eq(amax + div_const_floor(amax + 126, 127, 33))
        bl = Signal(6)                       # bit length of S
        for b in range(33):
            with m.If(S[b]):
                m.d.comb += bl.eq(b + 1)
        k0 = Signal(6)
        m.d.comb += k0.eq(Mux(bl > MB, bl - MB, 0))
        m0 = Signal(MB + 1)
        m.d.comb += m0.eq((S + (Const(1, 34) << k0) - 1) >> k0)
        carry = m0[MB]
        mm, kk = Signal(MB + 1), Signal(6)
        m.d.comb += [mm.eq(Mux(carry, m0 >> 1, m0)), kk.eq(k0 + carry)]
        # stage 1 registers (loaded in cycle T)
        ax1 = [Signal(32, name=f"ax1_{i}") for i in range(BLOCK)]
        sg1 = Signal(BLOCK)
        m1, k1, e1 = Signal(MB + 1), Signal(6), Signal(8)
        a1 = Signal(24)
        cnt = Signal(range(C + 1))           # divisions left of the loaded block
        load = Signal()
        m.d.comb += load.eq(self.valid_i & self.last)
        with m.If(load):
            m.d.sync += [ax1[j].eq(col[j]) for j in range(BLOCK - W)]
            m.d.sync += [ax1[BLOCK - W + i].eq(ax[i]) for i in range(W)]
            m.d.sync += [sg1.eq(Cat(csg[:BLOCK - W] if BLOCK > W else Const(0, 0),
                                    *[self.x[i] < 0 for i in range(W)])),
                         m1.eq(mm), k1.eq(kk), a1.eq(self.addr_i),
                         e1.eq(Mux(amax != 0, (kk - 7 - self.frac)[:8], 0)), cnt.eq(C)]
        with m.Elif(cnt != 0):
            m.d.sync += cnt.eq(cnt - 1)
        # stage 2: group g = C - cnt, W elements: q = floor(N' / m), N' = (256|x| + (m << k)) >> (k + 1) < 256 m
        g = Signal(range(C))
        m.d.comb += g.eq(C - cnt)
        qg = []
        for i in range(W):
            xs = wire(m, Array([ax1[c * W + i] for c in range(C)])[g] if C > 1 else ax1[i], 32, "xs")
            sn = wire(m, Array([sg1[c * W + i] for c in range(C)])[g] if C > 1 else sg1[i], 1, "sn")
            n1 = Signal(41, name=f"n1_{i}")
            m.d.comb += n1.eq(((xs << 8) + (m1 << k1)) >> (k1 + 1))
            rem = wire(m, n1 >> 8, MB + 1, "rem")
            qb = []
            for b in reversed(range(8)):
                t = wire(m, Cat(n1[b], rem), MB + 2, "t")
                ge = wire(m, t >= m1, 1, "ge")
                rem = wire(m, Mux(ge, t - m1, t), MB + 1, "rem")
                qb.append(ge)
            q = Signal(8, name=f"qq{i}")
            m.d.comb += q.eq(Cat(*reversed(qb)))
            qg.append(wire(m, Mux(m1 == 0, 0, Mux(sn, -q, q))[:8], 8, "qs"))
        with m.If(cnt != 0):
            for c in range(C):
                with m.If(g == c):
                    m.d.sync += [self.q[c * W + i].eq(qg[i]) for i in range(W)]
        with m.If(cnt == 1):
            m.d.sync += [self.m.eq(m1), self.e.eq(e1), self.addr_o.eq(a1)]
        m.d.sync += self.valid_o.eq(cnt == 1)
        m.d.comb += self.busy.eq((cnt != 0) | self.valid_o)
        return m
