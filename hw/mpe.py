"""Matrix processing engine datapath: block lanes -> sparse MUX -> DSP chains with reduction nodes -> dequant.

One *group* (up to ``lanes`` 32-weight blocks of one or two consecutive rows, all for one token) enters per
cycle. Timeline (S0 = the cycle ``go`` is high):
  S0  QBUF reads issued (one read port per lane: the activation block b_k of token t)
  S1  window + QBUF data registered; slot MUX: every product slot picks its stored weight and, through the
      sparse MUX, the activation its 4-bit index names; registered into the slot registers (S2)
  S2+l  DSP stage l of a chain gets its (skewed) inputs; M register, then P = M + PCIN (cascade), DSP-style
  C = S2+L+1  reduction-node taps, de-skewed: integer block dot product ``acc`` and activation sum ``qs``
  C+1..C+4  dequant per lane: D*acc + M*qs, x m_x, shift by e_x (floor), all mod 2^64
  C+5  lane sums split at the row boundary, 64-bit row accumulators per token
  C+6  round-shift to ACT, saturate, optional saturating add to the ABUF word (``acc``), ABUF write
Arithmetic equals sim/mpe_model.py bit for bit.
"""
from __future__ import annotations

from amaranth import Cat, Const, Elaboratable, Module, Mux, Signal, signed, unsigned
from amaranth.hdl import Array

from flightllm.formats import ACC_FRAC, ACT_FRAC, BLOCK, GROUP, SCALE_FIX, block_bytes
from flightllm.isa import WFmt
from flightllm.hw import params as P

W_BITS = 17          # stored weight: Q4 0..15, int8, int16 -> signed 17
X_BITS = 8
ACC_BITS = 32
QS_BITS = 16
FIX_BITS = 43        # fp16 * 2^24 as an exact signed integer (finite and inf/nan patterns alike)
QWORD = 256 + 16 + 8  # QBUF word: 32 x int8, m (u16), e (i8)


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


class Mpe(Elaboratable):
    def __init__(self, board, qbuf_ports, abuf_words: int):
        self.board = board
        a = board.accel
        self.L = a.chain_length
        self.chains = a.chains
        self.S = P.slots(board)
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
        K, S, L, WB = self.K, self.S, self.L, self.WB
        nmodes = len(P.MODES)

        # ---- S0: QBUF reads ---------------------------------------------------------------------------
        for k in range(K):
            bk = Signal(17, name=f"b_{k}")
            m.d.comb += bk.eq(self.b0 + k)
            bw = Mux(bk >= self.nb, bk - self.nb, bk)
            rp = self.qports[k]
            m.d.comb += [rp.addr.eq(self.xrow + bw), rp.en.eq(1)]

        # ---- S1 registers -----------------------------------------------------------------------------
        win = Signal.like(self.win, name="win_s1")
        mode = Signal(4, name="mode_s1")
        wfrac = Signal(5, name="wfrac_s1")
        meta_in = Cat(self.go, self.kp, self.rem, self.rowend, self.t, self.row, self.ybase, self.acc)
        meta1 = Signal(len(meta_in), name="meta_s1")
        m.d.sync += [win.eq(self.win), mode.eq(self.mode), wfrac.eq(self.wfrac), meta1.eq(meta_in)]
        kp1 = meta1[1:1 + len(self.kp)]
        qd = [self.qports[k].data for k in range(K)]
        byte = lambda i: win[8 * i: 8 * i + 8]       # noqa: E731

        # ---- S1: slot MUX (stored weight + position) and sparse MUX (activation) ------------------------
        slot_w = [Signal(signed(W_BITS), name=f"sw_{s}") for s in range(S)]
        slot_x = [Signal(signed(X_BITS), name=f"sx_{s}") for s in range(S)]
        slot_v = [Signal(name=f"sv_{s}") for s in range(S)]
        for s in range(S):
            w_c = Signal(signed(W_BITS), name=f"wc_{s}")
            pos_c = Signal(5, name=f"pc_{s}")
            lane_c = Signal(range(K + 1), name=f"lc_{s}")
            ok_c = Signal(name=f"okc_{s}")
            with m.Switch(mode):
                for mi, (fmt, sp) in enumerate(P.MODES):
                    pr = P.products(fmt, sp)
                    k, j = s // pr, s % pr
                    kl = P.lanes(self.board, fmt, sp)
                    with m.Case(mi):
                        if k >= kl:
                            m.d.comb += [w_c.eq(0), pos_c.eq(0), lane_c.eq(0), ok_c.eq(0)]
                            continue
                        bb = block_bytes(fmt, sp)
                        base = k * bb
                        m.d.comb += [lane_c.eq(k), ok_c.eq(1)]
                        if fmt == WFmt.I16:
                            m.d.comb += [w_c.eq(win[8 * (base + 2 * j): 8 * (base + 2 * j) + 16].as_signed()),
                                         pos_c.eq(j)]
                        elif sp == 16:
                            if fmt == WFmt.Q4_1:    # byte i: weight i (low nibble), weight i+16 (high nibble)
                                b = byte(base + 4 + (j % 16))
                                m.d.comb += w_c.eq(b[4:8] if j >= 16 else b[0:4])
                            else:
                                m.d.comb += w_c.eq(byte(base + 2 + j).as_signed())
                            m.d.comb += pos_c.eq(j)
                        else:
                            n = sp
                            if fmt == WFmt.Q4_1:
                                b = byte(base + 4 + j // 2)
                                ib = byte(base + 4 + n + j // 2)
                                m.d.comb += w_c.eq(b[4:8] if j % 2 else b[0:4])
                            else:
                                m.d.comb += w_c.eq(byte(base + 2 + j).as_signed())
                                ib = byte(base + 2 + 2 * n + j // 2)
                            idx = ib[4:8] if j % 2 else ib[0:4]
                            m.d.comb += pos_c.eq(Cat(idx, Const(1 if j >= n else 0, 1)))
                with m.Default():
                    m.d.comb += [w_c.eq(0), pos_c.eq(0), lane_c.eq(0), ok_c.eq(0)]
            xblk = Array([qd[k][:256] for k in range(K)])[lane_c]
            xsel = Array([xblk[8 * i: 8 * i + 8] for i in range(BLOCK)])[pos_c]
            v = ok_c & (lane_c < kp1) & meta1[0]
            m.d.sync += [slot_w[s].eq(Mux(v, w_c, 0)), slot_x[s].eq(Mux(v, xsel.as_signed(), 0)),
                         slot_v[s].eq(v)]

        # ---- S1: per-lane scales ------------------------------------------------------------------------
        lane_D, lane_M, lane_mx, lane_ex = [], [], [], []
        for k in range(K):
            Dk = Signal(signed(FIX_BITS), name=f"D_{k}")
            Mk = Signal(signed(FIX_BITS), name=f"M_{k}")
            with m.Switch(mode):
                for mi, (fmt, sp) in enumerate(P.MODES):
                    with m.Case(mi):
                        if k >= P.lanes(self.board, fmt, sp):
                            m.d.comb += [Dk.eq(0), Mk.eq(0)]
                            continue
                        base = k * block_bytes(fmt, sp)
                        if fmt == WFmt.I16:
                            i16sh = Signal(5, name=f"i16sh_{k}_{mi}")
                            m.d.comb += i16sh.eq(SCALE_FIX - wfrac)
                            m.d.comb += [Dk.eq(Const(1, FIX_BITS) << i16sh), Mk.eq(0)]
                        else:
                            d16 = win[8 * base: 8 * base + 16]
                            m.d.comb += Dk.eq(fp16_fixed(m, d16, f"dfix_{k}_{mi}"))
                            if fmt == WFmt.Q4_1:
                                m16 = win[8 * base + 16: 8 * base + 32]
                                m.d.comb += Mk.eq(fp16_fixed(m, m16, f"mfix_{k}_{mi}"))
                            else:
                                m.d.comb += Mk.eq(0)
                with m.Default():
                    m.d.comb += [Dk.eq(0), Mk.eq(0)]
            r = [Signal(signed(FIX_BITS), name=f"D2_{k}"), Signal(signed(FIX_BITS), name=f"M2_{k}"),
                 Signal(16, name=f"mx2_{k}"), Signal(signed(8), name=f"ex2_{k}")]
            m.d.sync += [r[0].eq(Dk), r[1].eq(Mk), r[2].eq(qd[k][256:272]), r[3].eq(qd[k][272:280].as_signed())]
            lane_D.append(r[0]); lane_M.append(r[1]); lane_mx.append(r[2]); lane_ex.append(r[3])
        meta2 = Signal.like(meta1, name="meta_s2")
        mode2 = Signal(4, name="mode_s2")
        m.d.sync += [meta2.eq(meta1), mode2.eq(mode)]

        # ---- S2..C: DSP chains with reduction nodes -----------------------------------------------------
        # segment (block) size in stages per mode: P/2; a stage starts a segment when l % (P/2) == 0
        half = Signal(5, name="seg_stages")
        with m.Switch(mode2):
            for mi, (fmt, sp) in enumerate(P.MODES):
                with m.Case(mi):
                    m.d.comb += half.eq(P.products(fmt, sp) // 2)
            with m.Default():
                m.d.comb += half.eq(16)
        nst = self.chains * L
        taps_acc, taps_qs = {}, {}
        prev_p = prev_q = None
        for g in range(nst):
            l = g % L
            w0, w1 = delay(m, slot_w[2 * g], l, f"skw0_{g}"), delay(m, slot_w[2 * g + 1], l, f"skw1_{g}")
            x0, x1 = delay(m, slot_x[2 * g], l, f"skx0_{g}"), delay(m, slot_x[2 * g + 1], l, f"skx1_{g}")
            # segment start flag travels with the data (mode is static within an instruction; delay anyway)
            start = delay(m, (Const(l, 5) & (half - 1)) == 0, l, f"sks_{g}") if l else Const(1)
            mreg = Signal(signed(ACC_BITS), name=f"M_{g}")
            qreg = Signal(signed(QS_BITS), name=f"Mq_{g}")
            m.d.sync += [mreg.eq(w0 * x0 + w1 * x1), qreg.eq(x0 + x1)]
            start_m = Signal(name=f"stm_{g}")
            m.d.sync += start_m.eq(start)
            preg = Signal(signed(ACC_BITS), name=f"P_{g}")
            pq = Signal(signed(QS_BITS), name=f"Pq_{g}")
            if l == 0:
                m.d.sync += [preg.eq(mreg), pq.eq(qreg)]
            else:
                m.d.sync += [preg.eq(mreg + Mux(start_m, 0, prev_p)), pq.eq(qreg + Mux(start_m, 0, prev_q))]
            prev_p, prev_q = preg, pq
            if l % 2 == 1:     # a possible reduction-node output: de-skew to C
                taps_acc[g] = delay(m, preg, L - 1 - l, f"dsk_{g}")
                taps_qs[g] = delay(m, pq, L - 1 - l, f"dskq_{g}")
        metaC = delay(m, meta2, L + 1, "metaC")
        modeC = delay(m, mode2, L + 1, "modeC")
        DC = [delay(m, x, L + 1, f"DC_{k}") for k, x in enumerate(lane_D)]
        MC = [delay(m, x, L + 1, f"MC_{k}") for k, x in enumerate(lane_M)]
        mxC = [delay(m, x, L + 1, f"mxC_{k}") for k, x in enumerate(lane_mx)]
        exC = [delay(m, x, L + 1, f"exC_{k}") for k, x in enumerate(lane_ex)]
        accC, qsC = [], []
        for k in range(K):
            a_ = Signal(signed(ACC_BITS), name=f"accC_{k}")
            q_ = Signal(signed(QS_BITS), name=f"qsC_{k}")
            with m.Switch(modeC):
                for mi, (fmt, sp) in enumerate(P.MODES):
                    with m.Case(mi):
                        hs = P.products(fmt, sp) // 2
                        g = (k + 1) * hs - 1
                        if k < P.lanes(self.board, fmt, sp) and g in taps_acc:
                            m.d.comb += [a_.eq(taps_acc[g]), q_.eq(taps_qs[g])]
                        else:
                            m.d.comb += [a_.eq(0), q_.eq(0)]
                with m.Default():
                    m.d.comb += [a_.eq(0), q_.eq(0)]
            accC.append(a_); qsC.append(q_)

        # ---- dequant (per lane), all mod 2^64 ----------------------------------------------------------
        V = []
        for k in range(K):
            p1 = Signal(signed(64), name=f"p1_{k}")
            p2 = Signal(signed(64), name=f"p2_{k}")
            m.d.sync += [p1.eq((DC[k] * accC[k])[:64]), p2.eq((MC[k] * qsC[k])[:64])]
            mx1, ex1 = delay(m, mxC[k], 1, f"mx1_{k}"), delay(m, exC[k], 1, f"ex1_{k}")
            T = Signal(signed(64), name=f"T_{k}")
            m.d.sync += T.eq((p1 + p2)[:64])
            mx2, ex2 = delay(m, mx1, 1, f"mx2b_{k}"), delay(m, ex1, 1, f"ex2b_{k}")
            U = Signal(signed(64), name=f"U_{k}")
            m.d.sync += U.eq((T * mx2)[:64])
            ex3 = delay(m, ex2, 1, f"ex3_{k}")
            v = Signal(signed(64), name=f"V_{k}")
            neg = Signal(7, name=f"nsh_{k}")
            m.d.comb += neg.eq(Mux(ex3 < -63, 63, -ex3))
            lsh = Signal(signed(64), name=f"lsh_{k}")
            m.d.comb += lsh.eq(Mux(ex3 >= 64, 0, (U << ex3.as_unsigned()[:6])[:64]))
            m.d.sync += v.eq(Mux(ex3 >= 0, lsh, U >> neg))
            V.append(v)
        metaV = delay(m, metaC, 4, "metaV")
        # unpack meta
        fields = [("go", 1), ("kp", len(self.kp)), ("rem", 16), ("rowend", 1), ("t", len(self.t)), ("row", 24),
                  ("ybase", 24), ("acc", 1)]
        mv, o = {}, 0
        for n_, b_ in fields:
            mv[n_] = metaV[o: o + b_]
            o += b_
        cur = Signal(signed(64), name="cur")
        nxt = Signal(signed(64), name="nxt")
        cur_terms = [Mux((k < mv["kp"]) & (k < mv["rem"]), V[k], 0) for k in range(K)]
        nxt_terms = [Mux((k < mv["kp"]) & (k >= mv["rem"]), V[k], 0) for k in range(K)]
        cs, ns = cur_terms[0], nxt_terms[0]
        for k in range(1, K):
            cs = (cs + cur_terms[k])[:64].as_signed()
            ns = (ns + nxt_terms[k])[:64].as_signed()
        m.d.sync += [cur.eq(cs), nxt.eq(ns)]
        metaS = delay(m, metaV, 1, "metaS")
        ms, o = {}, 0
        for n_, b_ in fields:
            ms[n_] = metaS[o: o + b_]
            o += b_
        # ---- row accumulators per token -----------------------------------------------------------------
        ACC = Array([Signal(signed(64), name=f"racc_{t}") for t in range(self.TT)])
        out = Signal(signed(64), name="rowsum")
        outv = Signal(name="rowsum_v")
        oaddr = Signal(self.abuf_bits + 1, name="oaddr")
        oacc = Signal(name="oacc")
        m.d.sync += outv.eq(0)
        with m.If(self.clear):
            for t in range(self.TT):
                m.d.sync += ACC[t].eq(0)
        with m.Elif(ms["go"]):
            with m.If(ms["rowend"]):
                m.d.sync += [out.eq((ACC[ms["t"]] + cur)[:64]), ACC[ms["t"]].eq(nxt), outv.eq(1)]
            with m.Else():
                m.d.sync += ACC[ms["t"]].eq((ACC[ms["t"]] + cur)[:64])
        wa = (ms["ybase"] + ms["row"])[: self.abuf_bits + 1]
        m.d.sync += [oaddr.eq(wa), oacc.eq(ms["acc"])]
        m.d.comb += [self.ab_raddr.eq(wa), self.ab_ren.eq(ms["go"] & ms["rowend"] & ms["acc"])]
        # ---- round, saturate, optional saturating accumulate, write -----------------------------------
        sh = ACC_FRAC - ACT_FRAC
        r = Signal(signed(64), name="rnd")
        m.d.comb += r.eq((out + (1 << (sh - 1)))[:64].as_signed() >> sh)
        y32 = Signal(signed(32), name="y32")
        lo, hi = -(1 << 31), (1 << 31) - 1
        m.d.comb += y32.eq(Mux(r > hi, hi, Mux(r < lo, lo, r[:32])))
        s33 = Signal(signed(34), name="yacc")
        m.d.comb += s33.eq(y32 + self.ab_rdata.as_signed())
        yfin = Mux(oacc, Mux(s33 > hi, hi, Mux(s33 < lo, lo, s33[:32])), y32)
        m.d.comb += [self.ab_waddr.eq(oaddr), self.ab_wdata.eq(yfin), self.ab_wen.eq(outv)]
        return m
