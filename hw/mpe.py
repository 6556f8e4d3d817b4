"""Matrix processing engine datapath: block lanes -> sparse MUX -> packed DSP chains -> dequant -> row accumulators.

One *group* (up to ``params.units`` units of one or two consecutive stream rows, all for one token) enters per
cycle. A unit is one 32-weight block, or, for the paired formats (dense Q4_1 / Q8_0, stored row-pair interleaved,
``formats.interleave_rows``), block b of rows 2p and 2p+1. The group's blocks sit in ``K = params.max_lanes``
block slots; every slot has its weight decode and sparse MUX (shared by all formats: per product a 4-way weight
pick and a 32:1 activation pick). The products go to ``params.n_chains`` chains of 16 DSP stages; each stage is
ONE DSP48E2-style multiplier (27 x 8 signed, M register; P register = M + PCIN):
- paired: unit u takes chains 2u (activations 0..15) and 2u+1 (16..31); stage j multiplies activation x_j by the
  packed operand w_odd * 2^18 + w_even (27 bits), so one multiplier yields both rows' products;
- sparse N:16 (2N <= 16 products), one product per stage: B = params.chain_blocks = 16 / 2N blocks side by side
  in a chain (FlightLLM's reduction nodes): slot k on chain k // B, stages 16 / B * (k % B) onwards, each block
  read at its own reduction tap (``dsp_chain``: N = 4 each cascade's P; N = 2 the P of stages 3, 7, 11, 15 with
  each cascade cut in the middle); a chain builds the taps its most-packed mode needs (params.chain_taps);
- I16 (32 products of 17-bit weights): chains 0 and 1, one product per stage.
Each chain is two cascades of 8 stages: 8 packed products keep the low field inside an 18-bit window
[-PK_BIAS, 2^18 - 1 - PK_BIAS] (Q8_0: 8 x [-16256, 16384]; Q4_1: 8 x [-1920, 1905]), so low = ((P + PK_BIAS) mod
2^18) - PK_BIAS and high = (P + PK_BIAS) >> 18 exactly.

Timeline (S0 = the cycle ``go`` is high):
  S0      QBUF reads issued (one read port per unit: activation block b0+u of token t)
  S1      window + QBUF data registered; comb: slot block select, weight decode, sparse MUX, chain operands
  A=S2    chain operand registers (27-bit weight operand, 8-bit activation) per chain and stage
  A+l     stage l of each 8-stage cascade sees its skewed inputs; M_l at A+l+1, P_l at A+l+2
  A+10    both cascades' P split (packed) or taken whole, summed per chain; activation sum per chain; the
          reduction taps (delayed to here) and their activation sums
  A+11    per slot (a case on the mode): the block's acc (dot product) and qs (sum of the kept activations)
  C=A+L+1 acc and qs of every slot (delayed to keep the engine's depth)
  C+1..4  dequant per slot: D*acc, M*qs | T = sum | U = T*m_x | V = U shifted by e_x (floor), all mod 2^64
  C+5     slot sums split at the stream-row boundary (cur / nxt) and by row of the pair (even / odd)
  C+6     64-bit row accumulators per token and row of the pair; a finished stream row is latched (``out``, one
          or two rows) and its ABUF words read (acc)
          round-shift to ACT, saturate, optional saturating add, ABUF writes (two ports: rows 2p, 2p+1)
Modules: a DspChain per chain (hw/dsp_chain.py) and a Dequant per block slot; equal ones are one module, which the
hierarchical estimate synthesises once. The slots' decode and sparse MUX stay in Mpe: as modules of their own, yosys
could no longer trim them against the chain operand multiplexers (sim engine: 37k -> 63k LUT in the estimate).
Arithmetic equals sim/mpe_model.py bit for bit.
"""
from __future__ import annotations

from amaranth import (Cat, ClockDomain, ClockSignal, Const, DomainRenamer, Elaboratable, Module, Mux, Signal, Value,
                      signed, unsigned)
from amaranth.lib.memory import Memory

from flightllm.formats import ACC_FRAC, ACT_FRAC, BLOCK, SCALE_FIX, block_bytes, paired
from flightllm.isa import WFmt
from flightllm.hw import params as P
from flightllm.hw.clock_gate import ClockGate

W_BITS = 17          # stored weight: Q4 0..15, int8, int16 -> signed 17
X_BITS = 8
ACC_BITS = 32
QS_BITS = 16
FIX_BITS = 43        # fp16 * 2^24 as an exact signed integer (finite and inf/nan patterns alike)
QWORD = 256 + 16 + 8  # QBUF word: 32 x int8, m (u16), e (i8)
STAGES = BLOCK // 2   # DSP stages per chain (one multiplier each)
SEG = 8               # stages per cascade segment: bounds the packed low field (module doc)
PK_BITS = 27          # DSP48E2 A operand (pre-adder bypassed): two packed weights
PK_SHIFT = 18         # the odd row's weight sits 18 bits up
PK_BIAS = (1 << 17) - 1
P_BITS = 48           # DSP48E2 P register
ENG_LAT = SEG + 3     # operand registers (A) -> a slot's acc/qs (A+11)

# Datapath registers are reset-less: their value is only ever read together with the valid bits of the group that
# wrote it (the meta pipeline and the row-sum write enables, which CTRL.RESET clears), as FPGA datapaths usually
# are. Verilator then evaluates no reset mask for them (docs/rtl.md "Simulation speed").
DP = dict(reset_less=True)

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


def sext(v, n):
    """``v`` (signed) sign-extended to ``n`` bits, written as a Cat with a Mux of the sign: the same value as an
    implicit extension, but Verilator turns Amaranth's replicated sign bit into one shift and mask per bit (the
    MPE's products and sums sign-extend 200+ times a cycle)."""
    w = len(v)
    return Cat(v, Mux(v[w - 1], (1 << (n - w)) - 1, 0)).as_signed()


def _w64(v):
    v = Value.cast(v)
    if len(v) < 64:
        v = sext(v, 64) if v.shape().signed else Cat(v, Const(0, 64 - len(v)))
    return v.as_unsigned()


def add64(m, a, b, name):
    """(a + b) mod 2^64, signed 64 bits (operands narrower than 64 bits extended by their sign), as two 32-bit
    halves with a carry: the same bits as ``(a + b)[:64]``, but Amaranth widens a sum to 65 bits, which
    Verilator evaluates word by word (a 65-bit temporary, extended operands) on every cycle. The halves are
    named signals (comb), so chained sums do not repeat their operands' expressions in the Verilog."""
    a, b = _w64(a), _w64(b)
    lo = Signal(33, name=f"{name}_lo")
    s = Signal(signed(64), name=name)
    m.d.comb += [lo.eq(a[:32] + b[:32]), s.eq(Cat(lo[:32], a[32:] + b[32:] + lo[32]))]
    return s


def shl64(m, v, n, name):
    """(v << n) mod 2^64 for an unsigned 6-bit ``n``: six constant-shift stages (named comb signals), the same
    bits as ``(v << n)[:64]`` without its 127-bit temporary (see add64)."""
    v = _w64(v)
    for i in range(6):
        k = 1 << i
        st = Signal(64, name=f"{name}_{i}")
        m.d.comb += st.eq(Mux(n[i], Cat(Const(0, k), v[:64 - k]), v))
        v = st
    return v.as_signed()


def sync_in(m, dom="sync", en=None):
    """A function adding statements to domain ``dom``, under ``en`` (a clock enable) when given."""
    def add(stmts):
        if en is None:
            m.d[dom] += stmts
        else:
            with m.If(en):
                m.d[dom] += stmts
    return add


def delay(m, sig, n, name, reset_less=True, sync=None):
    """``sig`` delayed ``n`` cycles. Datapath delays are reset-less (``DP``); a delay carrying valid bits passes
    ``reset_less=False`` so CTRL.RESET (the ResetInserter around the MPE) clears it. ``sync``: see sync_in."""
    sync = sync or sync_in(m)
    cur = sig
    for i in range(n):
        r = Signal.like(cur, name=f"{name}_d{i}", reset_less=reset_less)
        sync(r.eq(cur))
        cur = r
    return cur


def dsp_chain(m, a, x, pair, name, taps=1, cut=None):
    """One chain of len(a) DSP stages as two cascades of SEG stages; a (PK_BITS signed), x (X_BITS signed): the
    stage operands valid at cycle A; ``pair``: the operands are packed row pairs (valid at A + SEG + 1).

    Cascade s, stage l: inputs of stage s*SEG + l delayed l cycles, M <= a * x (one multiplier), P <= M (+ PCIN
    for l > 0). At A + SEG + 2 returns (even, odd, qs, tp, tq): packed, each cascade's P split into its low field
    ((P + PK_BIAS) mod 2^18 - PK_BIAS, the even row) and high part ((P + PK_BIAS) >> 18, the odd row), summed over
    both cascades; not packed, even = the sum of both P (odd unused); qs = the sum of the chain's activations.
    Reduction taps (``taps`` = 2 or 4, else none): tp[i] = the P of the last stage of the i-th run of
    len(a) / taps stages, delayed to A + SEG + 2, tq[i] = the sum of that run's activations. With 4 taps,
    ``cut`` (valid at A, with the operands) cuts each cascade in the middle: stage l = SEG / 2 takes P <= M, not
    M + PCIN (the DSP48E2's Z multiplexer, a dynamic OPMODE bit), so each run's tap holds its own dot product.
    """
    L = len(a)
    assert L % SEG == 0 and taps in (1, 2, 4) and (cut is None or taps == 4)
    run = L // taps
    ps = []
    tp = []
    for s_ in range(L // SEG):
        prev_p = None
        for l in range(SEG):
            i = s_ * SEG + l
            cuts = cut is not None and l == SEG // 2
            pk = delay(m, Cat(a[i], x[i], cut) if cuts else Cat(a[i], x[i]), l, f"{name}_sk{i}")
            ai, xi = pk[:PK_BITS].as_signed(), pk[PK_BITS:PK_BITS + X_BITS].as_signed()
            mreg = Signal(signed(P_BITS), name=f"{name}_m{i}", **DP)
            m.d.sync += mreg.eq(sext(ai * xi, P_BITS))
            preg = Signal(signed(P_BITS), name=f"{name}_p{i}", **DP)
            # the cascade add mod 2^P_BITS on the unsigned patterns (the P register's wrap-around): the same bits
            # as the signed sum, without the sign extensions to P_BITS + 1 that Verilator would evaluate
            mu = mreg.as_unsigned()
            if cuts:
                cm = Signal(name=f"{name}_cut{i}", **DP)          # the OPMODE register, with M
                m.d.sync += [cm.eq(pk[PK_BITS + X_BITS]), preg.eq(mu + Mux(cm, 0, prev_p.as_unsigned()))]
            else:
                m.d.sync += preg.eq(mreg if prev_p is None else mu + prev_p.as_unsigned())
            prev_p = preg
            if taps > 1 and (i + 1) % run == 0:        # P of stage l is valid at A + l + 2
                tp.append(delay(m, preg[:ACC_BITS].as_signed(), SEG - l, f"{name}_tp{i}"))
        ps.append(prev_p)
    qt = []
    for r_ in range(taps):
        q_ = Signal(signed(QS_BITS), name=f"{name}_qs" if taps == 1 else f"{name}_qs{r_}", **DP)
        # sum of the run's activations mod 2^QS_BITS, as offset-binary bytes (x ^ 0x80 = x + 128, unsigned) less
        # 128 per activation: unsigned adds, no sign extension of each operand
        m.d.sync += q_.eq(sum((x[i].as_unsigned() ^ 0x80) for i in range(r_ * run, (r_ + 1) * run))
                          + (-128 * run & ((1 << QS_BITS) - 1)))
        qt.append(delay(m, q_, SEG + 1, f"{name}_qsd" if taps == 1 else f"{name}_qsd{r_}"))
    if taps == 1:
        qsd = qt[0]
    else:
        qsd = Signal(signed(QS_BITS), name=f"{name}_qst")
        m.d.comb += qsd.eq(sum(qt))
    # The split, mod 2^ACC_BITS (even / odd keep that many bits): q = P + PK_BIAS as an unsigned word of
    # ACC_BITS + PK_SHIFT bits, even = the low fields' sum - 2 PK_BIAS, odd = the high fields' sum. All unsigned
    # and sliced: a signed shift or widening of a sum replicates its sign bit, and Verilator's C++ spelt the sum
    # out once per replicated bit (18 times a cascade; gcc merged most of them, not all).
    QW = ACC_BITS + PK_SHIFT
    qw = []                                   # the biased P words (not the activation sums q_ / qt above)
    for s_, p in enumerate(ps):
        q = Signal(QW, name=f"{name}_q{s_}")
        m.d.comb += q.eq(sext(p, QW).as_unsigned() + PK_BIAS)
        qw.append(q)
    mask = (1 << ACC_BITS) - 1
    lo = (sum(q[:PK_SHIFT] for q in qw) + (-len(qw) * PK_BIAS & mask))[:ACC_BITS]
    hi = sum(q[PK_SHIFT:] for q in qw)[:ACC_BITS]
    whole = sum(p[:ACC_BITS].as_unsigned() for p in ps)[:ACC_BITS]
    even = Signal(signed(ACC_BITS), name=f"{name}_even", **DP)
    odd = Signal(signed(ACC_BITS), name=f"{name}_odd", **DP)
    m.d.sync += [even.eq(Mux(pair, lo, whole)), odd.eq(hi)]
    return even, odd, qsd, tp, (qt if taps > 1 else [])


def lane_select(m, body, idx, qx, wk, nsp, sparse, on, k, nprod=BLOCK):
    """Comb: one lane's weight decode and sparse MUX; returns the 32 (weight, activation) product inputs.

    ``body``: the block's value bytes (512 bits), ``idx``: its index bytes (N:16 formats), ``qx``: the lane's 32
    activations (256 bits), ``wk``: the weight kind (WK_*), ``nsp``: N (16 when dense), ``sparse``: N:16 index
    mode, ``on``: the lane takes part. Product j: weight j of the kind's layout; activation j (dense) or, sparse,
    the one at the stored 4-bit index within group j // N (j < 2N; products past 2N and off lanes are zero).
    ``nprod``: build products 0..nprod-1 only (a slot only the sparse modes with 2N <= nprod use).
    """
    ws, xs = [], []
    for j in range(nprod):
        w_c = Signal(signed(W_BITS), name=f"wc_{k}_{j}")
        with m.Switch(wk):
            with m.Case(WK_Q4D):
                b_ = body[8 * (j % 16): 8 * (j % 16) + 8]
                m.d.comb += w_c.eq(b_[4:8] if j >= 16 else b_[0:4])
            with m.Case(WK_Q4S):
                b_ = body[8 * (j // 2): 8 * (j // 2) + 8]
                m.d.comb += w_c.eq(b_[4:8] if j % 2 else b_[0:4])
            with m.Case(WK_Q8):
                m.d.comb += w_c.eq(sext(body[8 * j: 8 * j + 8].as_signed(), W_BITS))
            with m.Case(WK_I16):
                m.d.comb += w_c.eq(sext(body[16 * j: 16 * j + 16].as_signed(), W_BITS))
        ib = idx[8 * (j // 2): 8 * (j // 2) + 8]
        nib = ib[4:8] if j % 2 else ib[0:4]
        pos = Signal(5, name=f"pos_{k}_{j}")        # sparse: the index within group j // N
        m.d.comb += pos.eq(Cat(nib, Const(j, 6) >= nsp))
        ok = on & (~sparse | (Const(j, 6) < (nsp << 1)))
        # the sparse MUX (32:1 over the block's activations) as a 4:1 pick of a 64-bit word, then a byte of it,
        # and dense blocks take activation j directly: the same mux, but Verilator evaluates a 32-way case as a
        # branch tree per product and cycle and a variable shift of a 256-bit vector as a wide shift, while a
        # shift of a 64-bit word is one instruction (and dense cycles skip the pick)
        xw = Signal(64, name=f"xw_{k}_{j}")
        with m.Switch(pos[3:5]):
            for i in range(BLOCK // 8):
                with m.Case(i):
                    m.d.comb += xw.eq(qx[64 * i: 64 * i + 64])
        x_c = Signal(signed(X_BITS), name=f"xc_{k}_{j}")
        m.d.comb += x_c.eq(Mux(sparse, xw.word_select(pos[0:3], 8), qx[8 * j: 8 * j + 8]))
        ws.append(Mux(ok, w_c, 0))
        xs.append(Mux(ok, x_c, 0))
    return ws, xs


def dequant(m, s, acc, qs, c_q4, c_i16, c_wfrac, k, sync=None):
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
    p1 = Signal(signed(64), name=f"p1_{k}", **DP)
    p2 = Signal(signed(64), name=f"p2_{k}", **DP)
    # assignment truncates to 64 bits / sign-extends (a [:64] slice of a narrower product would zero-extend).
    # D*acc (43 x 32 bits) and T*m_x (64 x 16) are kept mod 2^64, so they are written as two partial products of
    # at most 64 bits each (the same bits): Verilator evaluates a product wider than 64 bits word by word.
    # D*acc = ((D*acc_hi) mod 2^48) << 16 + D*acc_lo, acc_hi = acc >> 16 (signed), acc_lo = acc[:16].
    p1h = Signal(48, name=f"p1h_{k}")
    p1l = Signal(signed(64), name=f"p1l_{k}")
    m.d.comb += [p1h.eq(Dsel * acc[16:].as_signed()), p1l.eq(sext(Dsel * acc[:16], 64))]
    sync = sync or sync_in(m)
    sync([p1.eq(add64(m, Cat(Const(0, 16), p1h), p1l, f"p1s_{k}")), p2.eq(sext(Msel * qs, 64))])
    mxex = delay(m, s[32:56], 2, f"mxex_{k}", sync=sync)
    T = Signal(signed(64), name=f"T_{k}", **DP)
    sync(T.eq(add64(m, p1, p2, f"Ts_{k}")))
    U = Signal(signed(64), name=f"U_{k}", **DP)
    # T*m_x = ((T[32:]*m_x) mod 2^32) << 32 + T[:32]*m_x (mod 2^64)
    uh = Signal(32, name=f"Uh_{k}")
    ul = Signal(64, name=f"Ul_{k}")
    m.d.comb += [uh.eq(T[32:] * mxex[0:16]), ul.eq(T[:32] * mxex[0:16])]
    sync(U.eq(add64(m, Cat(Const(0, 32), uh), ul, f"Us_{k}")))
    ex3 = delay(m, mxex[16:24], 1, f"ex3_{k}", sync=sync).as_signed()
    v = Signal(signed(64), name=f"V_{k}", **DP)
    neg = Signal(7, name=f"nsh_{k}")
    m.d.comb += neg.eq(Mux(ex3 < -63, 63, -ex3))
    lsh = Signal(signed(64), name=f"lsh_{k}")
    m.d.comb += lsh.eq(Mux(ex3 >= 64, 0, shl64(m, U, ex3.as_unsigned()[:6], f"lshs_{k}")))
    sync(v.eq(Mux(ex3 >= 0, lsh, U >> neg)))
    return v, (Dk, Mk, Dsel, Msel, p1, p2, T, U, ex3, mxex)


def act_out(m, out, oacc, prev, sfx=""):
    """Comb: a finished 64-bit row sum (2^-ACC_FRAC) -> ACT int32: round half up to ACT_FRAC, saturate; with
    ``oacc`` also saturating-add ``prev`` (the ABUF word already there)."""
    sh = ACC_FRAC - ACT_FRAC
    r = Signal(signed(64), name="rnd" + sfx)
    # ((out + 2^(sh-1)) mod 2^64) >> sh, as (out >> sh) + bit sh-1 wrapped to 64 - sh bits: the same value
    # without a 65-bit sum (see add64)
    m.d.comb += r.eq(((out >> sh) + out[sh - 1])[:64 - sh].as_signed())
    y32 = Signal(signed(32), name="y32" + sfx)
    lo, hi = -(1 << 31), (1 << 31) - 1
    m.d.comb += y32.eq(Mux(r > hi, hi, Mux(r < lo, lo, r[:32].as_signed())))
    s33 = Signal(signed(34), name="yacc" + sfx)
    m.d.comb += s33.eq(y32 + prev.as_signed())
    yfin = Signal(signed(32), name="yfin" + sfx)
    m.d.comb += yfin.eq(Mux(oacc, Mux(s33 > hi, hi, Mux(s33 < lo, lo, s33[:32].as_signed())), y32))
    return yfin


class Mpe(Elaboratable):
    def __init__(self, board, qbuf_ports, abuf_words: int, gate: bool = False, drive_q: bool = True):
        self.board = board
        # drive_q: this engine issues the QBUF reads. The weight channels' engines (hw/top.py, split MV/MM) run in
        # lockstep on the same activation blocks, so only channel 0's drives the shared read ports; the others
        # take the same read data
        self.drive_q = drive_q
        # gate: the S1 registers of the two decode paths (paired / general, see elaborate) on gated clocks
        # (hw/clock_gate.py, the Verilator model); else the same registers with clock enables
        self.gate = gate
        a = board.accel
        self.L = STAGES
        assert a.macs_per_dsp == 2, "a DSP stage multiplies one activation by two packed weights"
        self.K = P.max_lanes(board)
        self.NCH = P.n_chains(board)
        assert self.NCH <= self.K
        self.WB = P.window_bytes(board)
        self.TT = P.token_tile(board)
        self.qports = qbuf_ports
        assert len(qbuf_ports) >= self.K
        self.abuf_bits = max(1, (abuf_words - 1).bit_length())
        # inputs (valid in S0)
        self.go = Signal()
        self.win = Signal(8 * self.WB)
        self.mode = Signal(4)
        self.kp = Signal(range(self.K + 1))     # units in the group
        self.rem = Signal(16)           # units < rem belong to the current stream row
        self.rowend = Signal()          # the group completes the current stream row
        self.t = Signal(range(self.TT))
        self.row = Signal(24)           # stream row (row pair p for the paired formats: rows 2p, 2p+1)
        self.oddv = Signal()            # paired: row 2p+1 exists (else the pair's odd half is padding)
        self.evv = Signal(init=1)       # the (even) row exists: 0 only for a weight channel's padding rows
        self.b0 = Signal(16)
        self.nb = Signal(16)
        self.xrow = Signal(24)          # QBUF block address of token t's activations
        self.ybase = Signal(24)         # ABUF word address of token t's output row 0
        self.wfrac = Signal(5)
        self.acc = Signal()
        self.clear = Signal()           # zero the row accumulators (instruction start)
        # ABUF access: port 0 the (even) row, port 1 the odd row of a pair (always another bank: the next word)
        self.ab_raddr = Signal(self.abuf_bits + 1)
        self.ab_ren = Signal()
        self.ab_rdata = Signal(32)
        self.ab_waddr = Signal(self.abuf_bits + 1)
        self.ab_wdata = Signal(32)
        self.ab_wen = Signal()
        self.ab_raddr1 = Signal(self.abuf_bits + 1)
        self.ab_ren1 = Signal()
        self.ab_rdata1 = Signal(32)
        self.ab_waddr1 = Signal(self.abuf_bits + 1)
        self.ab_wdata1 = Signal(32)
        self.ab_wen1 = Signal()
        self.ab_rpair = Signal()        # the ports' arrangement (hw/engine_abuf.py): a row pair, with the read
        self.ab_wpair = Signal()        # ... and with the write
        self.depth = self.L + 9        # S0 -> ABUF write

    @staticmethod
    def _flag(m, mode, pred, name):
        f = Signal(name=name)
        with m.Switch(mode):
            for mi, (fmt, sp) in enumerate(P.MODES):
                with m.Case(mi):
                    m.d.comb += f.eq(int(bool(pred(fmt, sp))))
        return f

    def _enabled(self, m, name, en):
        """A domain for registers that load only in cycles with ``en`` (assign them under ``m.If(en)``): a gated
        clock (``gate``), so that Verilator evaluates them and the logic behind them only in those cycles, else
        ``sync`` (a clock enable)."""
        if not self.gate:
            return "sync"
        m.domains += ClockDomain(name, local=True, reset_less=True)
        m.submodules[name + "_gate"] = g = ClockGate()
        m.d.comb += [g.en.eq(en), ClockSignal(name).eq(g.gclk)]
        return name

    def elaborate(self, platform):
        m = Module()
        K, L, WB, NCH = self.K, self.L, self.WB, self.NCH

        # ---- S0: QBUF reads, slot masks -----------------------------------------------------------------
        pair0 = self._flag(m, self.mode, paired, "pair_s0")
        KP = max(P.units(self.board, f, n) for f, n in P.MODES if paired(f, n))      # QBUF ports of paired units
        LP = 2 * KP                                                                 # their slots
        masks = {n_: Signal(K, name=f"{n_}_m") for n_ in ("cur_e", "cur_o", "nxt_e", "nxt_o")}
        for k in range(K):
            bk = Signal(17, name=f"b_{k}")
            m.d.comb += bk.eq(self.b0 + k)
            bw = Mux(bk >= self.nb, bk - self.nb, bk)
            rp = self.qports[k]
            # ports past the paired units' (k >= KP) read for the general path only
            if self.drive_q:
                m.d.comb += [rp.addr.eq(self.xrow + bw), rp.en.eq(self.go & (~pair0 if k >= KP else 1))]
            u = Mux(pair0, k // 2, k)               # the slot's unit
            odd = pair0 & (k % 2)
            inu = self.go & (u < self.kp)
            cur = inu & (u < self.rem)
            nxt = inu & (u >= self.rem)
            m.d.comb += [masks["cur_e"][k].eq(cur & ~odd), masks["cur_o"][k].eq(cur & odd),
                         masks["nxt_e"][k].eq(nxt & ~odd), masks["nxt_o"][k].eq(nxt & odd)]

        # ---- S1 registers -------------------------------------------------------------------------------
        # Two decode paths, each with its own S1 registers, loaded only by the groups it decodes: the paired
        # formats (dense Q4_1 / Q8_0: a weight per product, activation j, no index MUX) and the general one
        # (lane_select: every mode; its result is used for the others). The chain operand registers pick one by
        # the mode. Function as one path; Verilator (gate) evaluates the general decode only for its groups.
        mode = Signal(4, name="mode_s1", **DP)
        wfrac = Signal(5, name="wfrac_s1", **DP)
        m.d.sync += [mode.eq(self.mode), wfrac.eq(self.wfrac)]
        on_s0 = masks["cur_e"] | masks["cur_o"] | masks["nxt_e"] | masks["nxt_o"]
        en_g, en_p = self.go & ~pair0, self.go & pair0
        # the window registers load at a group's first token (t = 0) and hold for its further tokens (MM): the
        # stream hands the group's bytes over then (hw/top.py MM_RUN), so the next group's bytes can come in
        # while this one repeats
        first = Signal(name="first_tok")
        m.d.comb += first.eq(self.t == 0)
        en_gw, en_pw = en_g & first, en_p & first
        dg, dp = self._enabled(m, "mpe_g", en_gw), self._enabled(m, "mpe_p", en_pw)
        # slots past the paired ones (k >= LP) serve general groups only: their registers after S1 (scales,
        # acc / qs, the delays to C, the dequantiser) run while a general group is in flight (it reaches V
        # 23 cycles after S0), else hold; what they then hold is never read (the slot masks are 0 for it)
        hi_cnt = Signal(range(L + 9), name="hi_cnt")
        with m.If(en_g):
            m.d.sync += hi_cnt.eq(L + 8)
        with m.Elif(hi_cnt != 0):
            m.d.sync += hi_cnt.eq(hi_cnt - 1)
        en_hi = Signal(name="en_hi")
        m.d.comb += en_hi.eq(en_g | (hi_cnt != 0))
        sync_hi = sync_in(m, self._enabled(m, "mpe_hi", en_hi), en_hi)

        def sync_k(k):
            return sync_in(m) if k < LP else sync_hi
        win = Signal.like(self.win, name="win_g", **DP)
        mode_g = Signal(4, name="mode_g", **DP)
        lane_on = Signal(K, name="lane_on_g", **DP)
        with m.If(en_gw):
            m.d[dg] += [win.eq(self.win), mode_g.eq(self.mode), lane_on.eq(on_s0)]
        win_p = Signal(8 * WB, name="win_p", **DP)
        q4_p = Signal(name="q4_p", **DP)
        with m.If(en_pw):
            m.d[dp] += [win_p.eq(self.win), q4_p.eq(self._flag(m, self.mode, lambda f, n: f == WFmt.Q4_1, "q4_s0"))]
        meta_in = Cat(self.go, masks["cur_e"], masks["cur_o"], masks["nxt_e"], masks["nxt_o"], self.rowend, self.t,
                      self.row, self.ybase, self.acc, pair0, self.oddv, self.evv)
        qd = [self.qports[k].data for k in range(K)]

        # mode -> decode controls: the general path's (wk, nsp, sparse) of mode_g, the rest of mode
        wk = Signal(2, name="wkind")
        nsp = Signal(6, name="nsp")        # products per group half: N (sparse), 16 dense
        sparse = Signal(name="sparse")
        isq4 = Signal(name="isq4")
        isi16 = Signal(name="isi16")
        pair = Signal(name="pair_s1")
        spb = Signal(3, name="spb_s1")     # sparse blocks per chain (params.chain_blocks): 1, 2 or 4
        with m.Switch(mode_g):
            for mi, (fmt, sp) in enumerate(P.MODES):
                with m.Case(mi):
                    kind = (WK_I16 if fmt == WFmt.I16 else WK_Q8 if fmt == WFmt.Q8_0
                            else WK_Q4D if sp == 16 else WK_Q4S)
                    m.d.comb += [wk.eq(kind), nsp.eq(sp), sparse.eq(P.sparse(fmt, sp))]
        with m.Switch(mode):
            for mi, (fmt, sp) in enumerate(P.MODES):
                with m.Case(mi):
                    m.d.comb += [isq4.eq(fmt == WFmt.Q4_1), isi16.eq(fmt == WFmt.I16),
                                 pair.eq(int(paired(fmt, sp))), spb.eq(P.chain_blocks(fmt, sp))]

        # ---- S1, general path: per slot block select (body, indices, scales), weight decode, sparse MUX -------
        ws, xs = [], []
        scl_g = []
        for k in range(K):
            body = Signal(8 * 64, name=f"body_{k}")
            idx = Signal(8 * 16, name=f"idx_{k}")
            d16 = Signal(16, name=f"d16_{k}")
            m16 = Signal(16, name=f"m16_{k}")
            with m.Switch(mode_g):
                for mi, (fmt, sp) in enumerate(P.MODES):
                    if k >= P.lanes(self.board, fmt, sp) or paired(fmt, sp):
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
                        if P.sparse(fmt, sp):
                            vb = sp if fmt == WFmt.Q4_1 else 2 * sp
                            m.d.comb += idx.eq(win[8 * (base + hdr + vb): 8 * (base + bb)])
            # the slot's activation block: its QBUF port
            qsel = Signal(QWORD, name=f"qsel_{k}")
            m.d.comb += qsel.eq(qd[k])
            wsel, xsel = lane_select(m, body, idx, qsel[:256], wk, nsp, sparse, lane_on[k], k,
                                     P.slot_products(self.board, k))
            ws.append(wsel)
            xs.append(xsel)
            scl_g.append(Cat(d16, m16, qsel[256:272], qsel[272:280]))
        # ---- S1, paired path (dense Q4_1 / Q8_0): slot k = row k % 2 of unit k // 2, weight j of the block
        # (Q4_1: nibble j of the 16 value bytes, low nibbles first; Q8_0: byte j) times activation j ------------
        # (no lane masks here: a unit past the group's lanes computes on stale bytes, but its slots' masks are 0,
        # so nothing of it is ever read)
        w4s, w8s, px, scl_p = [], [], [], []
        for k in range(LP):
            u = k // 2
            b4, b8 = 20 * k, 34 * k                     # the block in the window: Q4_1 (20 bytes), Q8_0 (34)
            q4ok = 20 * (k + 1) <= WB and k < P.lanes(self.board, WFmt.Q4_1, 16)
            q8ok = 34 * (k + 1) <= WB and k < P.lanes(self.board, WFmt.Q8_0, 16)
            w4s.append([win_p[8 * (b4 + 4 + j % 16) + 4 * (j >= 16):][:4] if q4ok else Const(0, 4)
                        for j in range(BLOCK)])
            w8s.append([win_p[8 * (b8 + 2 + j): 8 * (b8 + 3 + j)].as_signed() if q8ok else None for j in range(BLOCK)])
            px.append([qd[u][8 * j: 8 * j + 8].as_signed() for j in range(BLOCK)])
            d4, d8 = win_p[8 * b4: 8 * b4 + 16], (win_p[8 * b8: 8 * b8 + 16] if q8ok else Const(0, 16))
            m4 = win_p[8 * b4 + 16: 8 * b4 + 32]
            scl_p.append(Cat(Mux(q4_p, d4, d8), Mux(q4_p, m4, 0), qd[u][256:272], qd[u][272:280]))

        def packed(u, p_):
            """The packed operand of unit u, product p_: w_odd * 2^18 + w_even (Q4_1 nibbles: a concatenation)."""
            q4 = Cat(w4s[2 * u][p_], Const(0, PK_SHIFT - 4), w4s[2 * u + 1][p_])
            e8, o8 = w8s[2 * u][p_], w8s[2 * u + 1][p_]
            q8 = (o8 << PK_SHIFT) + e8 if e8 is not None else Const(0)
            return Mux(q4_p, q4, q8)
        scl = []
        for k in range(K):
            # scales, raw, registered with the operands then delayed to C
            sc = Signal(16 + 16 + 16 + 8, name=f"scl_{k}", **DP)
            sync_k(k)(sc.eq(Mux(pair, scl_p[k], scl_g[k]) if k < LP else scl_g[k]))
            scl.append(sc)
        # chain operands: paired: unit u -> chains 2u, 2u+1 (activations 16h..16h+15, both rows packed); I16:
        # the block's 32 products on chains 0, 1; sparse with B = chain_blocks blocks per chain: slot k -> chain
        # k // B, stages 16 / B * (k % B) onwards (its 2N <= 16 / B products), read at its reduction tap
        ca = [[Signal(signed(PK_BITS), name=f"ca_{c}_{j}", **DP) for j in range(STAGES)] for c in range(NCH)]
        cb = [[Signal(signed(X_BITS), name=f"cb_{c}_{j}", **DP) for j in range(STAGES)] for c in range(NCH)]
        taps = [P.chain_taps(self.board, c) for c in range(NCH)]

        def prod(k, j):
            return (ws[k][j], xs[k][j]) if k < K and j < len(ws[k]) else (Const(0), Const(0))
        for c in range(NCH):
            u, h = c // 2, c % 2
            for j in range(STAGES):
                p_ = 16 * h + j
                pk_w = pk_x = i16_w = i16_x = Const(0)
                if 2 * u + 1 < LP:
                    pk_w = packed(u, p_)
                    pk_x = px[2 * u][p_]
                if c < 2:
                    i16_w, i16_x = ws[0][16 * c + j], xs[0][16 * c + j]
                sp_w, sp_x = prod(c, j)
                for nb_ in (2, 4):          # more blocks per chain where this chain has the taps
                    if taps[c] >= nb_:
                        run = STAGES // nb_
                        w_, x_ = prod(c * nb_ + j // run, j % run)
                        sp_w, sp_x = Mux(spb == nb_, w_, sp_w), Mux(spb == nb_, x_, sp_x)
                m.d.sync += [ca[c][j].eq(Mux(pair, pk_w, Mux(isi16, i16_w, sp_w))),
                             cb[c][j].eq(Mux(pair, pk_x, Mux(isi16, i16_x, sp_x)))]
        ctl = Signal(2 + 5, name="ctl_s2", **DP)
        m.d.sync += ctl.eq(Cat(isq4, isi16, wfrac))
        pairA = Signal(name="pair_s2", **DP)
        m.d.sync += pairA.eq(pair)
        cutA = Signal(name="cut_s2", **DP)        # 4 blocks per chain: cut the cascades between the taps
        modeA = Signal(4, name="mode_s2", **DP)
        m.d.sync += [cutA.eq(spb == 4), modeA.eq(mode)]

        # ---- A..C: DSP chains, then per slot acc / qs -----------------------------------------------------
        from flightllm.hw.dsp_chain import DspChain      # here: hw/dsp_chain.py imports this module

        ev, od, qc, tps, tqs = [], [], [], [], []
        for c in range(NCH):
            m.submodules[f"ch{c}"] = ch = DspChain(L, taps[c])
            m.d.comb += [ch.pair.eq(pairA), ch.cut.eq(cutA)] + [ch.a[j].eq(ca[c][j]) for j in range(L)] + \
                [ch.x[j].eq(cb[c][j]) for j in range(L)]
            ev.append(ch.even)
            od.append(ch.odd)
            qc.append(ch.qs)
            tps.append(ch.tp)
            tqs.append(ch.tq)
        mode_e = delay(m, modeA, SEG + 2, "mode_e")       # valid at A + SEG + 2, with the chains' outputs
        accS = [Signal(signed(ACC_BITS), name=f"acc_s_{k}", **DP) for k in range(K)]
        qsS = [Signal(signed(QS_BITS), name=f"qs_s_{k}", **DP) for k in range(K)]
        for k in range(K):
            acc_c = Signal(signed(ACC_BITS), name=f"acc_c_{k}")
            qs_c = Signal(signed(QS_BITS), name=f"qs_c_{k}")
            m.d.comb += [acc_c.eq(0), qs_c.eq(0)]
            sync_k(k)([accS[k].eq(acc_c), qsS[k].eq(qs_c)])
            with m.Switch(mode_e):
                for mi, (fmt, sp) in enumerate(P.MODES):
                    if k >= P.lanes(self.board, fmt, sp):
                        continue
                    if paired(fmt, sp):             # unit k // 2 on chains 2u, 2u+1; row k % 2 of the pair
                        u = k // 2
                        a_ = (od if k % 2 else ev)[2 * u] + (od if k % 2 else ev)[2 * u + 1]
                        q_ = qc[2 * u] + qc[2 * u + 1]
                    elif fmt == WFmt.I16:
                        a_, q_ = ev[0] + ev[1], qc[0]
                    else:                           # sparse: tap(s) of its run of stages
                        nb_ = P.chain_blocks(fmt, sp)
                        c, r_ = k // nb_, k % nb_
                        if nb_ == 1:
                            a_, q_ = ev[c], qc[c]
                        else:
                            g = taps[c] // nb_      # taps per block (a 4-tap chain holding 2 blocks: 2)
                            a_ = tps[c][(r_ + 1) * g - 1]
                            q_ = sum(tqs[c][r_ * g: (r_ + 1) * g])
                    with m.Case(mi):
                        m.d.comb += [acc_c.eq(a_), qs_c.eq(q_)]
        # the slots' acc/qs (A + ENG_LAT) travel to C = A + L + 1, where the scales (registered at A) arrive
        accC = [delay(m, a_, L + 1 - ENG_LAT, f"accC_{k}", sync=sync_k(k)) for k, a_ in enumerate(accS)]
        qsC = [delay(m, q_, L + 1 - ENG_LAT, f"qsC_{k}", sync=sync_k(k)) for k, q_ in enumerate(qsS)]
        sclC = [delay(m, s_, L + 1, f"sclC_{k}", sync=sync_k(k)) for k, s_ in enumerate(scl)]
        ctlC = delay(m, ctl, L + 1, "ctlC")
        c_q4, c_i16, c_wfrac = ctlC[0], ctlC[1], ctlC[2:7]

        # ---- dequant (per slot), all mod 2^64 -----------------------------------------------------------
        V = []
        for k in range(K):
            dq = Dequant()
            m.submodules[f"dq{k}"] = dq if k < LP or not self.gate else DomainRenamer("mpe_hi")(dq)
            m.d.comb += [dq.s.eq(sclC[k]), dq.acc.eq(accC[k]), dq.qs.eq(qsC[k]), dq.q4.eq(c_q4), dq.i16.eq(c_i16),
                         dq.wfrac.eq(c_wfrac), dq.en.eq(1 if k < LP else en_hi)]
            V.append(dq.v)
        self.dbg = dict(acc=accC, qs=qsC, V=V, ca=ca, cb=cb)
        # meta: S0 -> C+4 (V visible): 1 (S1) + 1 (A) + L + 1 (C) + 4
        metaV = delay(m, meta_in, L + 7, "metaV", reset_less=False)     # valid bits
        fields = [("go", 1), ("cur_e", K), ("cur_o", K), ("nxt_e", K), ("nxt_o", K), ("rowend", 1),
                  ("t", len(self.t)), ("row", 24), ("ybase", 24), ("acc", 1), ("pair", 1), ("oddv", 1), ("evv", 1)]

        def unpack(sig):
            d, o = {}, 0
            for n_, b_ in fields:
                d[n_] = sig[o: o + b_]
                o += b_
            return d
        mv = unpack(metaV)
        sums = {}
        for n_ in ("cur_e", "cur_o", "nxt_e", "nxt_o"):
            r = Signal(signed(64), name=n_, **DP)
            acc_ = Const(0, signed(64))
            for k in range(K):
                acc_ = add64(m, acc_, Mux(mv[n_][k], V[k], 0), f"{n_}_s{k}")
            m.d.sync += r.eq(acc_)
            sums[n_] = r
        metaS = Signal.like(metaV, name="metaS")
        m.d.sync += metaS.eq(metaV)
        ms = unpack(metaS)
        # ---- row accumulators per token and row of the pair ---------------------------------------------
        outs = []
        for h in ("e", "o"):
            # one accumulator per token of the tile, in a small memory (LUT-RAM: 64 x 64 bits on the U280, where
            # 128 registers with their multiplexers cost ~8.1k FF and ~2.6k LUT more an engine); `vld` stands for
            # the clear at an instruction's start: an accumulator not written since reads as 0
            ACC = Memory(shape=signed(64), depth=self.TT, init=[])
            m.submodules[f"racc_{h}"] = ACC
            arp = ACC.read_port(domain="comb")
            awp = ACC.write_port()
            vld = Signal(self.TT, name=f"racc_vld_{h}")
            out = Signal(signed(64), name=f"rowsum_{h}", **DP)
            outv = Signal(name=f"rowsum_v_{h}")
            m.d.sync += outv.eq(0)
            accsel = Signal(signed(64), name=f"racc_sel_{h}")
            m.d.comb += [arp.addr.eq(ms["t"]), accsel.eq(Mux(vld.bit_select(ms["t"], 1), arp.data, 0))]
            cur, nxt = sums[f"cur_{h}"], sums[f"nxt_{h}"]
            rsum = add64(m, accsel, cur, f"racc_sum_{h}")
            m.d.comb += [awp.addr.eq(ms["t"]), awp.data.eq(Mux(ms["rowend"], nxt, rsum)),
                         awp.en.eq(ms["go"] & ~self.clear)]
            with m.If(self.clear):
                m.d.sync += vld.eq(0)
            with m.Elif(ms["go"]):
                m.d.sync += vld.bit_select(ms["t"], 1).eq(1)
                with m.If(ms["rowend"] & (ms["pair"] & ms["oddv"] if h == "o" else ms["evv"])):
                    m.d.sync += [out.eq(rsum), outv.eq(1)]
            outs.append((out, outv))
        orow = Mux(ms["pair"], Cat(Const(0, 1), ms["row"]), ms["row"])
        wa = Signal(self.abuf_bits + 1, name="wa_e")
        wa1 = Signal(self.abuf_bits + 1, name="wa_o")
        m.d.comb += [wa.eq(ms["ybase"] + orow), wa1.eq(wa + 1)]
        oaddr = Signal(self.abuf_bits + 1, name="oaddr", **DP)
        oaddr1 = Signal(self.abuf_bits + 1, name="oaddr1", **DP)
        oacc = Signal(name="oacc", **DP)
        opair = Signal(name="opair", **DP)
        m.d.sync += [oaddr.eq(wa), oaddr1.eq(wa1), oacc.eq(ms["acc"]), opair.eq(ms["pair"])]
        m.d.comb += [self.ab_rpair.eq(ms["pair"]), self.ab_wpair.eq(opair)]
        rd = ms["go"] & ms["rowend"] & ms["acc"]
        m.d.comb += [self.ab_raddr.eq(wa), self.ab_ren.eq(rd & ms["evv"]),
                     self.ab_raddr1.eq(wa1), self.ab_ren1.eq(rd & ms["pair"] & ms["oddv"])]
        # ---- round, saturate, optional saturating accumulate, write -----------------------------------
        yfin = act_out(m, outs[0][0], oacc, self.ab_rdata, "e")
        yfin1 = act_out(m, outs[1][0], oacc, self.ab_rdata1, "o")
        m.d.comb += [self.ab_waddr.eq(oaddr), self.ab_wdata.eq(yfin), self.ab_wen.eq(outs[0][1]),
                     self.ab_waddr1.eq(oaddr1), self.ab_wdata1.eq(yfin1), self.ab_wen1.eq(outs[1][1])]
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


class Dequant(Elaboratable):
    """One slot's block dequantisation (:func:`dequant`): the engine has one per block slot, all the same module
    (the hierarchical estimate synthesises it once). Inputs at C, ``v`` at C + 4; ``en``: the registers load
    (a clock enable; the slots past the paired ones run only while a general group is in flight)."""

    def __init__(self):
        self.s = Signal(16 + 16 + 16 + 8)      # Cat(d fp16, m fp16, m_x u16, e_x i8)
        self.acc = Signal(signed(ACC_BITS))
        self.qs = Signal(signed(QS_BITS))
        self.q4, self.i16 = Signal(), Signal()
        self.wfrac = Signal(5)
        self.en = Signal()
        self.v = Signal(signed(64))

    def elaborate(self, platform):
        m = Module()
        v, _ = dequant(m, self.s, self.acc, self.qs, self.q4, self.i16, self.wfrac, 0, sync=sync_in(m, en=self.en))
        m.d.comb += self.v.eq(v)
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
