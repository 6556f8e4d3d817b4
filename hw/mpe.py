"""Matrix processing engine datapath: block lanes -> sparse MUX -> DSP cascades -> dequant -> row accumulators.

One *group* (up to ``K = params.max_lanes`` consecutive 32-weight blocks of one or two consecutive rows, all for
one token) enters per cycle. Every lane owns one 32-product block datapath: 16 DSP48-style stages of two products
(M register = w0*x0 + w1*x1, P register = M + PCIN), inputs skewed by the stage index, the block's dot product
leaving the last stage. The weight decoder and the sparse MUX are shared by all formats: per product a 4-way
weight pick (Q4_1 dense nibble, Q4_1 sparse nibble, int8, int16) and a 32:1 activation pick (dense: its own
position; N:16: the stored 4-bit index within its group of 16).

Timeline (S0 = the cycle ``go`` is high):
  S0      QBUF reads issued (one read port per lane: activation block b0+k of token t)
  S1      window + QBUF data registered; comb: lane block select, weight decode, sparse MUX
  A=S2    product registers (weight, activation) per lane and product
  A+l     stage l of each lane sees its skewed inputs; M_l at A+l+1, P_l at A+l+2
  C=A+L+1 acc (block dot product) and qs (sum of the kept activations) of every lane
  C+1..4  dequant per lane: D*acc, M*qs | T = sum | U = T*m_x | V = U shifted by e_x (floor), all mod 2^64
  C+5     lane sums split at the row boundary (cur / nxt)
  C+6     64-bit row accumulator per token; a finished row is latched (``out``) and its ABUF word read (acc)
          round-shift to ACT, saturate, optional saturating add, ABUF write (comb from the latched row)
Arithmetic equals sim/mpe_model.py bit for bit.
"""
from __future__ import annotations

from amaranth import Cat, Const, Elaboratable, Module, Mux, Signal, signed, unsigned

from flightllm.formats import ACC_FRAC, ACT_FRAC, BLOCK, SCALE_FIX, block_bytes
from flightllm.isa import WFmt
from flightllm.hw import params as P

W_BITS = 17          # stored weight: Q4 0..15, int8, int16 -> signed 17
X_BITS = 8
ACC_BITS = 32
QS_BITS = 16
FIX_BITS = 43        # fp16 * 2^24 as an exact signed integer (finite and inf/nan patterns alike)
QWORD = 256 + 16 + 8  # QBUF word: 32 x int8, m (u16), e (i8)
STAGES = BLOCK // 2   # DSP stages per lane (two products per stage)

# weight kinds (how a product's stored weight is read from the block body)
WK_Q4D, WK_Q4S, WK_Q8, WK_I16 = 0, 1, 2, 3


def fp16_fixed(m, h, name):
    """Comb: fp16 bit pattern -> signed d * 2^24 (exact), as formats.fp16_to_fixed."""
    out = Signal(signed(FIX_BITS), name=name)
    exp = h[10:15]
    frac = h[:10]
    mant = Mux(exp == 0, frac, Cat(frac, Const(1, 1)))
    sh = Signal(5, name=name + "_sh")
    m.d.comb += sh.eq(Mux(exp == 0, 0, exp - 1))
    mag = Signal(unsigned(FIX_BITS - 1), name=name + "_mag")
    m.d.comb += mag.eq(mant << sh)
    m.d.comb += out.eq(Mux(h[15], -mag.as_signed(), mag.as_signed()))
    return out


def delay(m, sig, n, name):
    cur = sig
    for i in range(n):
        r = Signal.like(cur, name=f"{name}_d{i}")
        m.d.sync += r.eq(cur)
        cur = r
    return cur


def dsp_cascade(m, w, x, name):
    """DSP48-style cascade over len(w)//2 stages; w, x: product inputs valid at the same cycle A.

    Stage l: inputs delayed l cycles, M_l <= w[2l]*x[2l] + w[2l+1]*x[2l+1], P_l <= M_l + P_(l-1). Returns
    (acc, qs) valid at A + stages + 1 (P of the last stage), qs being the cascade sum of the activations.
    """
    L = len(w) // 2
    prev_p = prev_q = None
    for l in range(L):
        pk = Cat(w[2 * l], w[2 * l + 1], x[2 * l], x[2 * l + 1])
        pkd = delay(m, pk, l, f"{name}_sk{l}")
        w0, w1 = pkd[0:W_BITS].as_signed(), pkd[W_BITS:2 * W_BITS].as_signed()
        x0 = pkd[2 * W_BITS:2 * W_BITS + X_BITS].as_signed()
        x1 = pkd[2 * W_BITS + X_BITS:2 * W_BITS + 2 * X_BITS].as_signed()
        mreg = Signal(signed(ACC_BITS), name=f"{name}_m{l}")
        mq = Signal(signed(QS_BITS), name=f"{name}_mq{l}")
        m.d.sync += [mreg.eq(w0 * x0 + w1 * x1), mq.eq(x0 + x1)]
        preg = Signal(signed(ACC_BITS), name=f"{name}_p{l}")
        pq = Signal(signed(QS_BITS), name=f"{name}_pq{l}")
        if prev_p is None:
            m.d.sync += [preg.eq(mreg), pq.eq(mq)]
        else:
            m.d.sync += [preg.eq(mreg + prev_p), pq.eq(mq + prev_q)]
        prev_p, prev_q = preg, pq
    return prev_p, prev_q


def lane_select(m, body, idx, qx, wk, nsp, sparse, on, k):
    """Comb: one lane's weight decode and sparse MUX; returns the 32 (weight, activation) product inputs.

    ``body``: the block's value bytes (512 bits), ``idx``: its index bytes (N:16 formats), ``qx``: the lane's 32
    activations (256 bits), ``wk``: the weight kind (WK_*), ``nsp``: N (16 when dense), ``sparse``: N:16 index
    mode, ``on``: the lane takes part. Product j: weight j of the kind's layout; activation j (dense) or, sparse,
    the one at the stored 4-bit index within group j // N (j < 2N; products past 2N and off lanes are zero).
    """
    ws, xs = [], []
    for j in range(BLOCK):
        w_c = Signal(signed(W_BITS), name=f"wc_{k}_{j}")
        with m.Switch(wk):
            with m.Case(WK_Q4D):
                b_ = body[8 * (j % 16): 8 * (j % 16) + 8]
                m.d.comb += w_c.eq(b_[4:8] if j >= 16 else b_[0:4])
            with m.Case(WK_Q4S):
                b_ = body[8 * (j // 2): 8 * (j // 2) + 8]
                m.d.comb += w_c.eq(b_[4:8] if j % 2 else b_[0:4])
            with m.Case(WK_Q8):
                m.d.comb += w_c.eq(body[8 * j: 8 * j + 8].as_signed())
            with m.Case(WK_I16):
                m.d.comb += w_c.eq(body[16 * j: 16 * j + 16].as_signed())
        ib = idx[8 * (j // 2): 8 * (j // 2) + 8]
        nib = ib[4:8] if j % 2 else ib[0:4]
        pos = Signal(5, name=f"pos_{k}_{j}")
        m.d.comb += pos.eq(Mux(sparse, Cat(nib, Const(j, 6) >= nsp), j))
        ok = on & (~sparse | (Const(j, 6) < (nsp << 1)))
        # the sparse MUX as a case over the 32 activations (a variable shift of the 256-bit block costs
        # Verilator a wide shift per product and cycle)
        x_c = Signal(signed(X_BITS), name=f"xc_{k}_{j}")
        with m.Switch(pos):
            for i in range(BLOCK):
                with m.Case(i):
                    m.d.comb += x_c.eq(qx[8 * i: 8 * i + 8])
        ws.append(Mux(ok, w_c, 0))
        xs.append(Mux(ok, x_c, 0))
    return ws, xs


def dequant(m, s, acc, qs, c_q4, c_i16, c_wfrac, k):
    """One lane's block dequantisation, all mod 2^64; inputs valid at cycle C, V registered at C + 4.

    ``s`` = Cat(d fp16, m fp16, m_x u16, e_x i8) of the block; C+1: D*acc, M*qs | C+2: T = sum | C+3: U = T*m_x |
    C+4: V = U shifted by e_x (floor). D = fp16 d * 2^24 (I16: 2^(24 - wfrac)), M = fp16 m * 2^24 (Q4_1 only).
    Returns (V, (Dk, Mk, Dsel, Msel, p1, p2, T, U, ex3, mxex)).
    """
    Dk = fp16_fixed(m, s[0:16], f"dfix_{k}")
    Mk = fp16_fixed(m, s[16:32], f"mfix_{k}")
    i16sh = Signal(5, name=f"i16sh_{k}")
    m.d.comb += i16sh.eq(SCALE_FIX - c_wfrac)
    Dsel = Signal(signed(FIX_BITS), name=f"Dsel_{k}")
    Msel = Signal(signed(FIX_BITS), name=f"Msel_{k}")
    m.d.comb += [Dsel.eq(Mux(c_i16, Const(1, FIX_BITS) << i16sh, Dk)), Msel.eq(Mux(c_q4, Mk, 0))]
    p1 = Signal(signed(64), name=f"p1_{k}")
    p2 = Signal(signed(64), name=f"p2_{k}")
    # assignment truncates to 64 bits / sign-extends (a [:64] slice of a narrower product would zero-extend)
    m.d.sync += [p1.eq(Dsel * acc), p2.eq(Msel * qs)]
    mxex = delay(m, s[32:56], 2, f"mxex_{k}")
    T = Signal(signed(64), name=f"T_{k}")
    m.d.sync += T.eq(p1 + p2)
    U = Signal(signed(64), name=f"U_{k}")
    m.d.sync += U.eq(T * mxex[0:16])
    ex3 = delay(m, mxex[16:24], 1, f"ex3_{k}").as_signed()
    v = Signal(signed(64), name=f"V_{k}")
    neg = Signal(7, name=f"nsh_{k}")
    m.d.comb += neg.eq(Mux(ex3 < -63, 63, -ex3))
    lsh = Signal(signed(64), name=f"lsh_{k}")
    m.d.comb += lsh.eq(Mux(ex3 >= 64, 0, (U << ex3.as_unsigned()[:6])[:64]))
    m.d.sync += v.eq(Mux(ex3 >= 0, lsh, U >> neg))
    return v, (Dk, Mk, Dsel, Msel, p1, p2, T, U, ex3, mxex)


def act_out(m, out, oacc, prev):
    """Comb: a finished 64-bit row sum (2^-ACC_FRAC) -> ACT int32: round half up to ACT_FRAC, saturate; with
    ``oacc`` also saturating-add ``prev`` (the ABUF word already there)."""
    sh = ACC_FRAC - ACT_FRAC
    r = Signal(signed(64), name="rnd")
    m.d.comb += r.eq((out + (1 << (sh - 1)))[:64].as_signed() >> sh)
    y32 = Signal(signed(32), name="y32")
    lo, hi = -(1 << 31), (1 << 31) - 1
    m.d.comb += y32.eq(Mux(r > hi, hi, Mux(r < lo, lo, r[:32].as_signed())))
    s33 = Signal(signed(34), name="yacc")
    m.d.comb += s33.eq(y32 + prev.as_signed())
    yfin = Signal(signed(32), name="yfin")
    m.d.comb += yfin.eq(Mux(oacc, Mux(s33 > hi, hi, Mux(s33 < lo, lo, s33[:32].as_signed())), y32))
    return yfin


class Mpe(Elaboratable):
    def __init__(self, board, qbuf_ports, abuf_words: int):
        self.board = board
        a = board.accel
        self.L = STAGES
        assert a.macs_per_dsp == 2, "the DSP stage holds two products"
        self.K = P.max_lanes(board)
        self.WB = P.window_bytes(board)
        self.TT = P.token_tile(board)
        self.qports = qbuf_ports
        assert len(qbuf_ports) >= self.K
        self.abuf_bits = max(1, (abuf_words - 1).bit_length())
        # inputs (valid in S0)
        self.go = Signal()
        self.win = Signal(8 * self.WB)
        self.mode = Signal(4)
        self.kp = Signal(range(self.K + 1))
        self.rem = Signal(16)           # lanes < rem belong to the current row
        self.rowend = Signal()          # the group completes the current row
        self.t = Signal(range(self.TT))
        self.row = Signal(24)
        self.b0 = Signal(16)
        self.nb = Signal(16)
        self.xrow = Signal(24)          # QBUF block address of token t's activations
        self.ybase = Signal(24)         # ABUF word address of token t's output row 0
        self.wfrac = Signal(5)
        self.acc = Signal()
        self.clear = Signal()           # zero the row accumulators (instruction start)
        # ABUF access (one word)
        self.ab_raddr = Signal(self.abuf_bits + 1)
        self.ab_ren = Signal()
        self.ab_rdata = Signal(32)
        self.ab_waddr = Signal(self.abuf_bits + 1)
        self.ab_wdata = Signal(32)
        self.ab_wen = Signal()
        self.depth = self.L + 9        # S0 -> ABUF write

    def elaborate(self, platform):
        m = Module()
        K, L, WB = self.K, self.L, self.WB

        # ---- S0: QBUF reads, lane masks -----------------------------------------------------------------
        cur_m = Signal(K)
        nxt_m = Signal(K)
        for k in range(K):
            bk = Signal(17, name=f"b_{k}")
            m.d.comb += bk.eq(self.b0 + k)
            bw = Mux(bk >= self.nb, bk - self.nb, bk)
            rp = self.qports[k]
            m.d.comb += [rp.addr.eq(self.xrow + bw), rp.en.eq(1)]
            m.d.comb += [cur_m[k].eq(self.go & (k < self.kp) & (k < self.rem)),
                         nxt_m[k].eq(self.go & (k < self.kp) & (k >= self.rem))]

        # ---- S1 registers -------------------------------------------------------------------------------
        win = Signal.like(self.win, name="win_s1")
        mode = Signal(4, name="mode_s1")
        wfrac = Signal(5, name="wfrac_s1")
        lane_on = Signal(K, name="lane_on_s1")
        m.d.sync += [win.eq(self.win), mode.eq(self.mode), wfrac.eq(self.wfrac), lane_on.eq(cur_m | nxt_m)]
        meta_in = Cat(self.go, cur_m, nxt_m, self.rowend, self.t, self.row, self.ybase, self.acc)
        qd = [self.qports[k].data for k in range(K)]

        # mode -> shared decode controls
        wk = Signal(2, name="wkind")
        nsp = Signal(6, name="nsp")        # products per group half: N (sparse), 16 dense
        sparse = Signal(name="sparse")
        isq4 = Signal(name="isq4")
        isi16 = Signal(name="isi16")
        with m.Switch(mode):
            for mi, (fmt, sp) in enumerate(P.MODES):
                with m.Case(mi):
                    kind = (WK_I16 if fmt == WFmt.I16 else WK_Q8 if fmt == WFmt.Q8_0
                            else WK_Q4D if sp == 16 else WK_Q4S)
                    m.d.comb += [wk.eq(kind), nsp.eq(sp), sparse.eq(sp != 16 and fmt != WFmt.I16),
                                 isq4.eq(fmt == WFmt.Q4_1), isi16.eq(fmt == WFmt.I16)]

        # ---- S1: per lane block select (body, indices, scales) ------------------------------------------
        sw = [[Signal(signed(W_BITS), name=f"sw_{k}_{j}") for j in range(BLOCK)] for k in range(K)]
        sx = [[Signal(signed(X_BITS), name=f"sx_{k}_{j}") for j in range(BLOCK)] for k in range(K)]
        scl = []
        for k in range(K):
            body = Signal(8 * 64, name=f"body_{k}")
            idx = Signal(8 * 16, name=f"idx_{k}")
            d16 = Signal(16, name=f"d16_{k}")
            m16 = Signal(16, name=f"m16_{k}")
            with m.Switch(mode):
                for mi, (fmt, sp) in enumerate(P.MODES):
                    if k >= P.lanes(self.board, fmt, sp):
                        continue
                    bb = block_bytes(fmt, sp)
                    base = k * bb
                    hdr = 0 if fmt == WFmt.I16 else 4 if fmt == WFmt.Q4_1 else 2
                    with m.Case(mi):
                        m.d.comb += body.eq(win[8 * (base + hdr): 8 * (base + bb)])
                        if hdr:
                            m.d.comb += d16.eq(win[8 * base: 8 * base + 16])
                        if fmt == WFmt.Q4_1:
                            m.d.comb += m16.eq(win[8 * base + 16: 8 * base + 32])
                        if sp != 16 and fmt != WFmt.I16:
                            vb = sp if fmt == WFmt.Q4_1 else 2 * sp
                            m.d.comb += idx.eq(win[8 * (base + hdr + vb): 8 * (base + bb)])
            wsel, xsel = lane_select(m, body, idx, qd[k][:256], wk, nsp, sparse, lane_on[k], k)
            for j in range(BLOCK):
                m.d.sync += [sw[k][j].eq(wsel[j]), sx[k][j].eq(xsel[j])]
            # scales, raw, registered with the products then delayed to C
            sc = Signal(16 + 16 + 16 + 8, name=f"scl_{k}")
            m.d.sync += sc.eq(Cat(d16, m16, qd[k][256:272], qd[k][272:280]))
            scl.append(sc)
        ctl = Signal(2 + 5, name="ctl_s2")
        m.d.sync += ctl.eq(Cat(isq4, isi16, wfrac))

        # ---- A..C: DSP cascades, one per lane -----------------------------------------------------------
        accC, qsC = [], []
        for k in range(K):
            a_, q_ = dsp_cascade(m, sw[k], sx[k], f"ch{k}")
            accC.append(a_)
            qsC.append(q_)
        # P of the last stage is visible at C = A + L + 1; the scales (visible at A) travel L + 1 cycles to C
        sclC = [delay(m, s, L + 1, f"sclC_{k}") for k, s in enumerate(scl)]
        ctlC = delay(m, ctl, L + 1, "ctlC")
        c_q4, c_i16, c_wfrac = ctlC[0], ctlC[1], ctlC[2:7]

        # ---- dequant (per lane), all mod 2^64 -------------------------------------------------------------
        V = []
        dbgT = []
        for k in range(K):
            v, dbg = dequant(m, sclC[k], accC[k], qsC[k], c_q4, c_i16, c_wfrac, k)
            V.append(v)
            dbgT.append(dbg[2:])
        self.dbg = dict(acc=accC, qs=qsC, V=V, T=dbgT, sw=sw, sx=sx)
        # meta: S0 -> C+4 (V visible): 1 (S1) + 1 (A) + L + 1 (C) + 4
        metaV = delay(m, meta_in, L + 7, "metaV")
        fields = [("go", 1), ("cur", K), ("nxt", K), ("rowend", 1), ("t", len(self.t)), ("row", 24),
                  ("ybase", 24), ("acc", 1)]

        def unpack(sig):
            d, o = {}, 0
            for n_, b_ in fields:
                d[n_] = sig[o: o + b_]
                o += b_
            return d
        mv = unpack(metaV)
        cur = Signal(signed(64), name="cur")
        nxt = Signal(signed(64), name="nxt")
        cs = ns = Const(0, signed(64))
        for k in range(K):
            cs = (cs + Mux(mv["cur"][k], V[k], 0))[:64].as_signed()
            ns = (ns + Mux(mv["nxt"][k], V[k], 0))[:64].as_signed()
        m.d.sync += [cur.eq(cs), nxt.eq(ns)]
        metaS = Signal.like(metaV, name="metaS")
        m.d.sync += metaS.eq(metaV)
        ms = unpack(metaS)
        # ---- row accumulators per token -----------------------------------------------------------------
        ACC = [Signal(signed(64), name=f"racc_{t}") for t in range(self.TT)]
        out = Signal(signed(64), name="rowsum")
        outv = Signal(name="rowsum_v")
        oaddr = Signal(self.abuf_bits + 1, name="oaddr")
        oacc = Signal(name="oacc")
        m.d.sync += outv.eq(0)
        accsel = Signal(signed(64), name="racc_sel")
        with m.Switch(ms["t"]):
            for t in range(self.TT):
                with m.Case(t):
                    m.d.comb += accsel.eq(ACC[t])
        with m.If(self.clear):
            for t in range(self.TT):
                m.d.sync += ACC[t].eq(0)
        with m.Elif(ms["go"]):
            with m.Switch(ms["t"]):
                for t in range(self.TT):
                    with m.Case(t):
                        with m.If(ms["rowend"]):
                            m.d.sync += ACC[t].eq(nxt)
                        with m.Else():
                            m.d.sync += ACC[t].eq((accsel + cur)[:64])
            with m.If(ms["rowend"]):
                m.d.sync += [out.eq((accsel + cur)[:64]), outv.eq(1)]
        wa = (ms["ybase"] + ms["row"])[: self.abuf_bits + 1]
        m.d.sync += [oaddr.eq(wa), oacc.eq(ms["acc"])]
        m.d.comb += [self.ab_raddr.eq(wa), self.ab_ren.eq(ms["go"] & ms["rowend"] & ms["acc"])]
        # ---- round, saturate, optional saturating accumulate, write -----------------------------------
        yfin = act_out(m, out, oacc, self.ab_rdata)
        m.d.comb += [self.ab_waddr.eq(oaddr), self.ab_wdata.eq(yfin), self.ab_wen.eq(outv)]
        return m


class LaneSelect(Elaboratable):
    """One lane's weight decode + sparse MUX (:func:`lane_select`) standalone, for block tests (comb)."""

    def __init__(self):
        self.body = Signal(8 * 64)
        self.idx = Signal(8 * 16)
        self.qx = Signal(8 * BLOCK)
        self.wk = Signal(2)
        self.nsp = Signal(6)
        self.sparse = Signal()
        self.on = Signal()
        self.w = [Signal(signed(W_BITS), name=f"w{j}") for j in range(BLOCK)]
        self.x = [Signal(signed(X_BITS), name=f"x{j}") for j in range(BLOCK)]

    def elaborate(self, platform):
        m = Module()
        ws, xs = lane_select(m, self.body, self.idx, self.qx, self.wk, self.nsp, self.sparse, self.on, 0)
        m.d.comb += [o.eq(e) for o, e in zip(self.w, ws)] + [o.eq(e) for o, e in zip(self.x, xs)]
        return m


class DequantAcc(Elaboratable):
    """One lane's :func:`dequant` followed by a 64-bit accumulation across blocks and :func:`act_out`, for block
    tests. Per cycle one block enters (``valid``, with ``first``/``last`` of its row): its ``acc``/``qs`` and
    scales as the lane presents them at C. ``v`` (V of the block) is valid 4 cycles later (``v_valid``); the
    row's ACT result ``y`` (with ``yacc``: saturating add of ``yadd``, as MM with acc=1 adds the ABUF word)
    5 cycles after its last block (``y_valid``). ``dfix``/``mfix``: the fp16 scales as exact integers (x 2^24).
    The accumulator here is a plain wrapping adder; the engine's (hw/mpe.py Mpe) splits lane sums at row
    boundaries and keeps one per token.
    """

    def __init__(self):
        self.valid, self.first, self.last = Signal(), Signal(), Signal()
        self.acc = Signal(signed(ACC_BITS))
        self.qs = Signal(signed(QS_BITS))
        self.d16, self.m16, self.mx = Signal(16), Signal(16), Signal(16)
        self.ex = Signal(signed(8))
        self.q4, self.i16 = Signal(), Signal()
        self.wfrac = Signal(5)
        self.yacc = Signal()
        self.yadd = Signal(signed(32))
        self.dfix = Signal(signed(FIX_BITS))
        self.mfix = Signal(signed(FIX_BITS))
        self.v = Signal(signed(64))
        self.v_valid = Signal()
        self.y = Signal(signed(32))
        self.y_valid = Signal()

    def elaborate(self, platform):
        m = Module()
        scl = Cat(self.d16, self.m16, self.mx, self.ex)
        v, dbg = dequant(m, scl, self.acc, self.qs, self.q4, self.i16, self.wfrac, 0)
        m.d.comb += [self.dfix.eq(dbg[0]), self.mfix.eq(dbg[1]), self.v.eq(v)]
        ctl = delay(m, Cat(self.valid, self.first, self.last, self.yacc, self.yadd), 4, "ctlV")
        vv, first, last, yacc, yadd = ctl[0], ctl[1], ctl[2], ctl[3], ctl[4:36]
        m.d.comb += self.v_valid.eq(vv)
        racc = Signal(signed(64), name="racc")
        out = Signal(signed(64), name="rowsum")
        oacc = Signal()
        oadd = Signal(signed(32))
        s = Signal(signed(64), name="racc_next")
        m.d.comb += s.eq((Mux(first, 0, racc) + v)[:64])
        m.d.sync += self.y_valid.eq(vv & last)
        with m.If(vv):
            m.d.sync += racc.eq(s)
            with m.If(last):
                m.d.sync += [out.eq(s), oacc.eq(yacc), oadd.eq(yadd)]
        m.d.comb += self.y.eq(act_out(m, out, oacc, oadd))
        return m
