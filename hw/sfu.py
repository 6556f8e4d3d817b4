"""Special function unit: the MISC instruction sequencer around the datapath cores (docs/sfu.md).

One MISC instruction at a time (start/busy/done). The unit streams each row through its passes in chunks of
``W`` consecutive ABUF words (one read request per cycle, 1-cycle read latency), feeds the fixed-latency cores
of :mod:`flightllm.hw.sfu_cores`, reduces or writes their results, and runs the per-row scalar steps (integer
division by n, square root, reciprocals) on bit-serial units. Results are bit-exact with
``flightllm.sim.sfu_model`` as used by ``sim/fsim.py::_x_MISC``; the cycle count of every instruction is
``flightllm.sim.cycles.CycleModel.misc`` exactly.
"""
from __future__ import annotations

from amaranth import Array, Cat, Const, Elaboratable, Module, Mux, Signal, signed

from flightllm.formats import BLOCK
from flightllm.hw.sfu_arith import SerialDiv, SerialIsqrt
from flightllm.hw.sfu_cores import (ArgmaxCore, EltCore, ExpCore, QuantCore, RmsCore, RopeCore, SiluMulCore,
                                    SumSqCore)
from flightllm.isa import MiscOp
from flightllm.hw.params import sfu_width as _width

ABITS = 24            # ABUF word / QBUF byte addresses (FIELDS[Op.MISC])
NBITS = 25            # resolved n (n field + POS)
DRAIN = 3             # cycles from the last read of a pass until its last result is written / accumulated
# bit-serial scalar units (quotient / root bits)
DIV_N_BITS, ISQRT_BITS, RINV_RMS_BITS, RINV_SM_BITS = 63, 44, 51, 32


def sfu_width(board) -> int:
    """Elements per cycle: hw/params.py ``sfu_width`` (sfu_lanes, capped by the ABUF banks, so that W consecutive
    words are always in W distinct banks, and by a block), checked here for what the generator builds."""
    w = _width(board)
    assert 2 <= w <= BLOCK and w & (w - 1) == 0, "SFU width must be a power of two in [2, 32]"
    return w


class Sfu(Elaboratable):
    def __init__(self, lanes: int):
        W = self.W = lanes
        assert 2 <= W <= BLOCK and W & (W - 1) == 0
        S = lambda w, nm: Signal(w, name=nm)        # noqa: E731  (explicit names: these are top-level ports)
        # control
        self.start, self.busy, self.done = S(1, "start"), S(1, "busy"), S(1, "done")
        # decoded MISC fields (sampled in the start cycle)
        self.fn = S(4, "fn")
        self.src, self.src2, self.dst = S(ABITS, "src"), S(ABITS, "src2"), S(ABITS, "dst")
        self.n = S(NBITS, "n")
        self.rows = S(16, "rows")
        self.src_stride, self.src2_stride = S(ABITS, "src_stride"), S(ABITS, "src2_stride")
        self.dst_stride = S(ABITS, "dst_stride")
        self.imm = S(32, "imm")
        self.causal = S(1, "causal")
        # ABUF read: W consecutive words from rd_addr, data in the next cycle
        self.rd_en, self.rd_addr, self.rd_mask = S(1, "rd_en"), S(ABITS, "rd_addr"), S(W, "rd_mask")
        self.rd_data = S(32 * W, "rd_data")
        # ABUF write: W consecutive words from wr_addr, lanes in wr_mask
        self.wr_en, self.wr_addr, self.wr_mask = S(1, "wr_en"), S(ABITS, "wr_addr"), S(W, "wr_mask")
        self.wr_data = S(32 * W, "wr_data")
        # QBUF block write: block index (byte address / 32), 32 int8, scale m (u16), e (i8)
        self.q_en, self.q_addr = S(1, "q_en"), S(ABITS - 5, "q_addr")
        self.q_data, self.q_m, self.q_e = S(8 * BLOCK, "q_data"), S(16, "q_m"), S(8, "q_e")

    def ports(self):
        return [self.start, self.busy, self.done, self.fn, self.src, self.src2, self.dst, self.n, self.rows,
                self.src_stride, self.src2_stride, self.dst_stride, self.imm, self.causal,
                self.rd_en, self.rd_addr, self.rd_mask, self.rd_data, self.wr_en, self.wr_addr, self.wr_mask,
                self.wr_data, self.q_en, self.q_addr, self.q_data, self.q_m, self.q_e]

    def elaborate(self, platform):
        m = Module()
        W = self.W
        LW = (W - 1).bit_length()
        # ---- latched fields ---------------------------------------------------------------------------
        fn = Signal(4)
        src, src2, dst = Signal(ABITS), Signal(ABITS), Signal(ABITS)
        n = Signal(NBITS)
        rows = Signal(16)
        ss_, s2s, ds = Signal(ABITS), Signal(ABITS), Signal(ABITS)
        imm = Signal(32)
        causal = Signal()
        with m.If(self.start & ~self.busy):
            m.d.sync += [fn.eq(self.fn), src.eq(self.src), src2.eq(self.src2), dst.eq(self.dst), n.eq(self.n),
                         rows.eq(self.rows), ss_.eq(self.src_stride), s2s.eq(self.src2_stride),
                         ds.eq(self.dst_stride), imm.eq(self.imm), causal.eq(self.causal)]
        is_ = {op: Signal(name=f"is_{op.name.lower()}") for op in MiscOp}
        for op, s in is_.items():
            m.d.comb += s.eq(fn == op)
        # ---- derived per instruction ------------------------------------------------------------------
        L = Signal(NBITS + 1)           # elements per row this instruction walks
        width = Signal(NBITS + 1)
        m.d.comb += width.eq(n + Mux(causal, rows - 1, 0))
        m.d.comb += L.eq(Mux(is_[MiscOp.SOFTMAX], width,
                             Mux(is_[MiscOp.QUANT], ((n + BLOCK - 1) >> 5) << 5, n)))
        SEG = Signal(33)                # segment (head) length: ROPE walks head by head
        m.d.comb += SEG.eq(Mux(is_[MiscOp.ROPE], imm, L))
        npass = Signal(2)
        m.d.comb += npass.eq(Mux(is_[MiscOp.SOFTMAX], 3, Mux(is_[MiscOp.RMSNORM], 2, 1)))
        # ---- row / pass state -------------------------------------------------------------------------
        r = Signal(16)
        p = Signal(2)
        sub = Signal(2)
        seg_base = Signal(NBITS + 1)
        off = Signal(33)
        row_src, row_src2, row_dst = Signal(ABITS), Signal(ABITS), Signal(ABITS)
        nsub = Signal(2)
        m.d.comb += nsub.eq(Mux(is_[MiscOp.ROPE], 3,
                                Mux(is_[MiscOp.ADD] | is_[MiscOp.SILU_MUL] | (is_[MiscOp.RMSNORM] & (p == 1)), 2, 1)))
        livelen = Signal(NBITS + 1)
        m.d.comb += livelen.eq(Mux(is_[MiscOp.SOFTMAX] & causal, n + r, n))
        # ---- cores and scalar units -------------------------------------------------------------------
        m.submodules.elt = elt = EltCore(W)
        m.submodules.silu = silu = SiluMulCore(W)
        m.submodules.rope = rope = RopeCore(W)
        m.submodules.sumsq = sumsq = SumSqCore(W)
        m.submodules.rms = rms = RmsCore(W)
        m.submodules.exp = exp = ExpCore(W)
        m.submodules.amax = am = ArgmaxCore(W)
        m.submodules.quant = qc = QuantCore(W)
        m.submodules.div_n = div_n = SerialDiv(64 + 24, NBITS, DIV_N_BITS)
        m.submodules.isqrt = isq = SerialIsqrt(ISQRT_BITS)
        m.submodules.div_r = div_r = SerialDiv(63, ISQRT_BITS, RINV_RMS_BITS)
        m.submodules.div_s = div_s = SerialDiv(62, 56, RINV_SM_BITS)
        # accumulators
        ss = Signal(64 + 24)
        mx = Signal(signed(32))         # SOFTMAX row max = the first-maximum scan's value
        tot = Signal(56)
        best, bidx, have = Signal(signed(32)), Signal(NBITS + 1), Signal()
        rinv_rms = Signal(RINV_RMS_BITS)
        rinv_sm = Signal(RINV_SM_BITS + 1)
        sq = Signal(ISQRT_BITS)

        # ---- issue (cycle t) --------------------------------------------------------------------------
        issuing = Signal()
        elem0 = Signal(NBITS + 1)
        m.d.comb += elem0.eq(seg_base + off)
        wm0, live0 = Signal(W), Signal(W)
        for i in range(W):
            m.d.comb += [wm0[i].eq((off + i < SEG) & (elem0 + i < L)), live0[i].eq(wm0[i] & (elem0 + i < livelen))]
        half = SEG >> 1
        with m.Switch(sub):
            with m.Case(0):
                m.d.comb += self.rd_addr.eq(row_src + elem0)
            with m.Case(1):
                m.d.comb += self.rd_addr.eq(Mux(is_[MiscOp.ROPE], row_src2 + (off >> 1),
                                                Mux(is_[MiscOp.RMSNORM], src2, row_src2) + elem0))
            with m.Default():
                m.d.comb += self.rd_addr.eq(row_src2 + half + (off >> 1))
        m.d.comb += [self.rd_en.eq(issuing), self.rd_mask.eq(wm0)]

        class Tag:
            def __init__(self, nm):
                self.valid, self.last = Signal(name=f"{nm}_valid"), Signal(name=f"{nm}_last")
                self.sub = Signal(2, name=f"{nm}_sub")
                self.elem0 = Signal(NBITS + 1, name=f"{nm}_elem0")
                self.wm, self.live = Signal(W, name=f"{nm}_wm"), Signal(W, name=f"{nm}_live")
                self.waddr = Signal(ABITS, name=f"{nm}_waddr")
                self.qaddr = Signal(ABITS - 5, name=f"{nm}_qaddr")
                self.bend = Signal(name=f"{nm}_bend")

            def fields(self):
                return [self.valid, self.last, self.sub, self.elem0, self.wm, self.live, self.waddr, self.qaddr,
                        self.bend]

        t0, t1, t2, t3 = Tag("t0"), Tag("t1"), Tag("t2"), Tag("t3")
        m.d.comb += [t0.valid.eq(issuing), t0.last.eq(sub == nsub - 1), t0.sub.eq(sub), t0.elem0.eq(elem0),
                     t0.wm.eq(wm0), t0.live.eq(live0), t0.waddr.eq(row_dst + elem0),
                     t0.qaddr.eq((row_dst >> 5) + (elem0 >> 5)), t0.bend.eq(elem0[:5] == BLOCK - W)]
        for a, b in ((t1, t0), (t2, t1), (t3, t2)):
            m.d.sync += [x.eq(y) for x, y in zip(a.fields(), b.fields())]

        # ---- operand assembly (cycle t+1) -------------------------------------------------------------
        rd = [self.rd_data[32 * i: 32 * i + 32].as_signed() for i in range(W)]
        opA = [Signal(signed(32), name=f"opA{i}") for i in range(W)]
        opB = [Signal(signed(32), name=f"opB{i}") for i in range(W)]
        with m.If(t1.valid & (t1.sub == 0)):
            m.d.sync += [opA[i].eq(rd[i]) for i in range(W)]
        with m.If(t1.valid & (t1.sub == 1)):
            m.d.sync += [opB[i].eq(rd[i]) for i in range(W)]
        fire = Signal()
        m.d.comb += fire.eq(t1.valid & t1.last)
        for core in (elt, silu, rope, sumsq, rms, exp, am):
            m.d.comb += core.valid_i.eq(fire)
        for i in range(W):
            m.d.comb += [elt.a[i].eq(Mux(is_[MiscOp.ADD], opA[i], rd[i])), elt.b[i].eq(rd[i]),
                         silu.a[i].eq(opA[i]), silu.b[i].eq(rd[i]), rope.x[i].eq(opA[i]),
                         sumsq.x[i].eq(rd[i]), rms.x[i].eq(opA[i]), rms.g[i].eq(rd[i]),
                         exp.x[i].eq(rd[i]), am.x[i].eq(rd[i])]
        for i in range(W // 2):
            m.d.comb += [rope.c[i].eq(opB[i]), rope.s[i].eq(rd[i])]
        m.d.comb += [elt.add.eq(is_[MiscOp.ADD]), sumsq.live.eq(t1.live), exp.live.eq(t1.live),
                     am.live.eq(t1.live), exp.mx.eq(mx), exp.mult.eq(imm), exp.rinv.eq(rinv_sm),
                     rms.rinv.eq(rinv_rms)]
        # quantiser: the chunks of each 32-block in order (W elements a cycle, W dividers: hw/sfu_cores.QuantCore)
        m.d.comb += [qc.valid_i.eq(t1.valid & is_[MiscOp.QUANT]), qc.first.eq(t1.elem0[:5] == 0),
                     qc.last.eq(t1.bend), qc.frac.eq(imm), qc.addr_i.eq(t1.qaddr)]
        m.d.comb += [qc.x[i].eq(Mux(t1.live[i], rd[i], 0)) for i in range(W)]

        # ---- results (cycle t+3) ----------------------------------------------------------------------
        done3 = Signal()
        m.d.comb += done3.eq(t3.valid & t3.last)
        writes = Signal()
        m.d.comb += writes.eq(is_[MiscOp.COPY] | is_[MiscOp.ADD] | is_[MiscOp.SILU_MUL] | is_[MiscOp.ROPE] |
                              (is_[MiscOp.RMSNORM] & (p == 1)) | (is_[MiscOp.SOFTMAX] & (p == 2)))
        ysel = Signal(32 * W)
        with m.Switch(fn):
            for op, core in ((MiscOp.COPY, elt), (MiscOp.ADD, elt), (MiscOp.SILU_MUL, silu), (MiscOp.ROPE, rope),
                             (MiscOp.RMSNORM, rms), (MiscOp.SOFTMAX, exp)):
                with m.Case(op):
                    m.d.comb += ysel.eq(Cat(*core.y))
        argmax_wr = Signal()
        m.d.comb += [self.wr_en.eq((done3 & writes) | argmax_wr),
                     self.wr_addr.eq(Mux(argmax_wr, row_dst, t3.waddr)),
                     self.wr_mask.eq(Mux(argmax_wr, 1, t3.wm)),
                     self.wr_data.eq(Mux(argmax_wr, bidx, ysel))]
        m.d.comb += [self.q_en.eq(qc.valid_o), self.q_addr.eq(qc.addr_o), self.q_data.eq(Cat(*qc.q)),
                     self.q_m.eq(qc.m), self.q_e.eq(qc.e)]
        with m.If(done3):
            with m.If(is_[MiscOp.RMSNORM] & (p == 0)):
                m.d.sync += ss.eq(ss + sumsq.ss)
            with m.If((is_[MiscOp.SOFTMAX] & (p == 0)) | is_[MiscOp.ARGMAX]):
                with m.If(am.any & (~have | (am.val > best))):
                    m.d.sync += [best.eq(am.val), bidx.eq(t3.elem0 + am.lane), have.eq(1)]
            with m.If(is_[MiscOp.SOFTMAX] & (p == 1)):
                m.d.sync += tot.eq(tot + sum(exp.e))
        m.d.comb += mx.eq(best)

        # ---- sequencing -------------------------------------------------------------------------------
        dcnt = Signal(2)
        for u in (div_n, isq, div_r, div_s):
            m.d.comb += u.start.eq(0)
        m.d.comb += [div_n.num.eq(ss), div_n.den.eq(n),
                     isq.x.eq((div_n.q + imm) << 24),
                     div_r.num.eq(1 << 62), div_r.den.eq(Mux(isq.r == 0, 1, isq.r)),
                     div_s.num.eq(1 << 61), div_s.den.eq(tot)]

        def next_row_or_finish():
            m.d.sync += [r.eq(r + 1), row_src.eq(row_src + ss_), row_src2.eq(row_src2 + s2s),
                         row_dst.eq(row_dst + ds), p.eq(0), sub.eq(0), seg_base.eq(0), off.eq(0),
                         ss.eq(0), tot.eq(0), have.eq(0)]
            with m.If(r + 1 == rows):
                m.next = "FIN"
            with m.Else():
                m.next = "PASS"

        def next_pass():
            m.d.sync += [p.eq(p + 1), sub.eq(0), seg_base.eq(0), off.eq(0)]
            m.next = "PASS"

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += self.busy.eq(1)
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.sync += [r.eq(0), p.eq(0), sub.eq(0), seg_base.eq(0), off.eq(0), row_src.eq(src),
                             row_src2.eq(src2), row_dst.eq(dst), ss.eq(0), tot.eq(0), have.eq(0)]
                with m.If((rows == 0) | (L == 0) | (SEG == 0)):
                    m.next = "FIN"
                with m.Else():
                    m.next = "PASS"
            with m.State("PASS"):
                m.d.comb += issuing.eq(1)
                with m.If(sub == nsub - 1):
                    m.d.sync += sub.eq(0)
                    with m.If(off + W >= SEG):
                        m.d.sync += [off.eq(0), seg_base.eq(seg_base + SEG)]
                        with m.If(seg_base + SEG >= L):
                            m.d.sync += dcnt.eq(DRAIN - 1)
                            m.next = "DRAIN"
                    with m.Else():
                        m.d.sync += off.eq(off + W)
                with m.Else():
                    m.d.sync += sub.eq(sub + 1)
            with m.State("DRAIN"):
                m.d.sync += dcnt.eq(dcnt - 1)
                with m.If(dcnt == 0):
                    m.next = "POST"
            with m.State("POST"):
                with m.If(is_[MiscOp.RMSNORM] & (p == 0)):
                    m.d.comb += div_n.start.eq(1)
                    m.next = "DIV_N"
                with m.Elif(is_[MiscOp.SOFTMAX] & (p == 1)):
                    m.d.comb += div_s.start.eq(1)
                    m.next = "DIV_S"
                with m.Elif(is_[MiscOp.ARGMAX]):
                    m.d.comb += argmax_wr.eq(1)
                    next_row_or_finish()
                with m.Elif(p + 1 < npass):
                    next_pass()
                with m.Else():
                    next_row_or_finish()
            with m.State("DIV_N"):
                with m.If(div_n.done):
                    m.d.comb += isq.start.eq(1)
                    m.next = "ISQRT"
            with m.State("ISQRT"):
                with m.If(isq.done):
                    m.d.comb += div_r.start.eq(1)
                    m.d.sync += sq.eq(isq.r)
                    m.next = "DIV_R"
            with m.State("DIV_R"):
                with m.If(div_r.done):
                    m.d.sync += rinv_rms.eq(Mux(sq == 0, 0, div_r.q))
                    next_pass()
            with m.State("DIV_S"):
                with m.If(div_s.done):
                    m.d.sync += rinv_sm.eq(div_s.q)
                    next_pass()
            with m.State("FIN"):
                # QUANT: the last block's q are written (valid_o) in this cycle at the latest
                with m.If(~qc.busy | qc.valid_o):
                    m.d.comb += self.done.eq(1)
                    m.d.sync += self.busy.eq(0)
                    m.next = "IDLE"
        return m


class SfuAbufPorts(Elaboratable):
    """Glue between the SFU's W-word ABUF ports and ``NL`` single-word banks (hw/top.py's ABUF: word a in bank
    a % NL at row a // NL), W <= NL, NL a power of two. Bank side: one read and one write port per bank
    (``raddr/ren/rdata``, ``waddr/wen/wdata``; synchronous read, data the cycle after ``ren``). The SFU side is
    the Sfu's rd_*/wr_* ports: connect ``sfu_*`` to them. W consecutive words never share a bank."""

    def __init__(self, W: int, NL: int, rows_bits: int = ABITS):
        assert W <= NL and NL & (NL - 1) == 0
        self.W, self.NL = W, NL
        S = lambda w, nm: Signal(w, name=nm)        # noqa: E731
        self.sfu_rd_en, self.sfu_rd_addr, self.sfu_rd_mask = S(1, "sfu_rd_en"), S(ABITS, "sfu_rd_addr"), S(W, "sfu_rd_mask")
        self.sfu_rd_data = S(32 * W, "sfu_rd_data")
        self.sfu_wr_en, self.sfu_wr_addr, self.sfu_wr_mask = S(1, "sfu_wr_en"), S(ABITS, "sfu_wr_addr"), S(W, "sfu_wr_mask")
        self.sfu_wr_data = S(32 * W, "sfu_wr_data")
        self.raddr = [Signal(rows_bits, name=f"raddr{b}") for b in range(NL)]
        self.ren = S(NL, "ren")
        self.rdata = [Signal(32, name=f"rdata{b}") for b in range(NL)]
        self.waddr = [Signal(rows_bits, name=f"waddr{b}") for b in range(NL)]
        self.wen = S(NL, "wen")
        self.wdata = [Signal(32, name=f"wdata{b}") for b in range(NL)]

    def elaborate(self, platform):
        m = Module()
        W, NL = self.W, self.NL
        lg = (NL - 1).bit_length()

        def spread(tag, addr, en, mask, row_out, en_out):
            off = addr[:lg] if lg else Const(0, 1)
            row = addr >> lg
            lanes = []
            for b in range(NL):
                lane = Signal(max(lg, 1), name=f"{tag}_lane{b}")    # a fixed name: the same Verilog every run
                m.d.comb += lane.eq((b - off)[:max(lg, 1)] if lg else 0)
                m.d.comb += row_out[b].eq(row + (Const(b, lg + 1) < off))
                m.d.comb += en_out[b].eq(en & (lane < W) & Array(mask)[lane[:max((W - 1).bit_length(), 1)]])
                lanes.append(lane)
            return lanes

        spread("rd", self.sfu_rd_addr, self.sfu_rd_en, list(self.sfu_rd_mask), self.raddr, self.ren)
        wl = spread("wr", self.sfu_wr_addr, self.sfu_wr_en, list(self.sfu_wr_mask), self.waddr, self.wen)
        wlanes = [self.sfu_wr_data[32 * i: 32 * i + 32] for i in range(W)]
        for b in range(NL):
            m.d.comb += self.wdata[b].eq(Array(wlanes)[wl[b][:max((W - 1).bit_length(), 1)]])
        off_r = Signal(max(lg, 1))
        m.d.sync += off_r.eq(self.sfu_rd_addr[:lg] if lg else 0)
        for i in range(W):
            m.d.comb += self.sfu_rd_data[32 * i: 32 * i + 32].eq(Array(self.rdata)[(off_r + i)[:max(lg, 1)]])
        return m
