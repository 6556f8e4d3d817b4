"""Lowering of a LLaMA forward pass to the ISA: one program per token-count bucket.

Each program runs ``T`` tokens starting at run-time position POS (the host's POS register): T = 1 is the decode
step, larger buckets are prefill chunks. Activations stay on chip across all layers (always-on-chip decode);
only weights, the KV cache, the token ids and the logits cross the memory interface.

On-chip layout (ABUF words / QBUF bytes) is planned once for the largest bucket and shared by every program.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from flightllm.formats import ACT_FRAC, BLOCK, KV_FRAC, PROB_FRAC, SCALE_FIX, row_tile
from flightllm.isa import Instr, LdFmt, MiscOp, Op, StFmt, SysOp, WFmt, make
from flightllm.compiler.gguf_model import LlamaConfig
from flightllm.compiler.memmap import Scratch
from flightllm.sim.sfu_model import LOG2E_Q16

KV_BYTES = 2   # int16 KV cache


@dataclass
class Mat:
    addr: int
    fmt: int
    rows: int
    cols: int
    stride: int      # bytes per row
    split: int = 0   # laid out over the weight channels: its MV/MMs have split = 1 (docs/isa.md "Weight channels")
    tiles: dict[int, int] = field(default_factory=dict)   # split: first row of each row tile -> the tile's waddr
                                                          # (each tile an operand of its own, dealt on its own)

    def waddr(self, r0: int = 0) -> int:
        """Where an MV/MM over rows r0.. of this matrix reads (channel 0's section when split)."""
        return self.tiles[r0] if self.split else self.addr + r0 * self.stride


@dataclass
class Placement:
    """Where the compiled model lives in device memory."""
    mats: dict[str, Mat] = field(default_factory=dict)
    gammas: dict[str, int] = field(default_factory=dict)
    rope: int = 0
    kcache: dict[tuple[int, int], int] = field(default_factory=dict)   # (layer, kv head) -> K rows [ctx][hd]
    vcache: dict[tuple[int, int], int] = field(default_factory=dict)   # (layer, kv head) -> V^T rows [hd][ctx]
    tokens: int = 0        # IO: int32 token ids of the run
    logits: int = 0        # IO: int32 ACT logits, one row of vocab per token


def plan_onchip(cfg: LlamaConfig, ctx: int, tmax: int, abuf_words: int, qbuf_bytes: int):
    """ABUF/QBUF slots for ``tmax`` tokens and context ``ctx``; raises CompileError if the board is too small."""
    H, F, KV = cfg.hidden, cfg.ffn, cfg.n_kv_heads * cfg.head_dim
    group = cfg.n_heads // cfg.n_kv_heads
    a = Scratch("ABUF", abuf_words, align=1)
    for name, size in (("x", tmax * H), ("xn", tmax * H), ("q", tmax * H), ("k", tmax * KV), ("v", tmax * KV),
                       ("s", max(tmax, group) * ctx), ("p", max(tmax, group) * ctx), ("o", tmax * H), ("g", tmax * F), ("u", tmax * F),
                       ("gamma", H), ("rope", tmax * cfg.head_dim)):
        a.alloc(name, size)
    # logits tile: the whole vocabulary if it fits, else row tiles streamed out one by one
    tile = row_tile(cfg.vocab, a.free_space())
    a.alloc("logits", max(tile, 64))        # fails with a clear message when not even a small tile fits
    q = Scratch("QBUF", qbuf_bytes, align=BLOCK)
    for name, size in (("x", tmax * max(H, F)), ("q", tmax * H), ("p", max(tmax, group) * ctx)):
        q.alloc(name, size)
    return a, q


class Lowering:
    def __init__(self, cfg: LlamaConfig, place: Placement, ctx: int, tmax: int, abuf: Scratch, qbuf: Scratch):
        self.cfg, self.pl, self.ctx, self.tmax = cfg, place, ctx, tmax
        self.A = {k: v[0] for k, v in abuf.slots.items()}
        self.Q = {k: v[0] for k, v in qbuf.slots.items()}
        self.logit_tile = abuf.slots["logits"][1]
        self.eps = max(1, round(cfg.rms_eps * (1 << (2 * ACT_FRAC))))
        self.smax_mult = round(LOG2E_Q16 / math.sqrt(cfg.head_dim))
        self.kv_shift = ACT_FRAC - KV_FRAC
        self.prog: list[Instr] = []
        self.layer_ends: list[int] = []     # instruction index of each layer's last instruction (for tracing)

    # -- emit helpers -------------------------------------------------------------------------------
    def _e(self, op: Op, **kw):
        self.prog.append(make(op, **kw))

    def misc(self, fn: MiscOp, **kw):
        self._e(Op.MISC, fn=fn, **kw)

    def quant(self, src: int, dst: int, n: int, rows: int, src_stride: int, dst_stride: int, frac=ACT_FRAC, **kw):
        self.misc(MiscOp.QUANT, src=src, dst=dst, n=n, rows=rows, src_stride=src_stride, dst_stride=dst_stride,
                  imm=frac, **kw)

    def mm(self, m: Mat, x: int, xstride: int, y: int, ystride: int, T: int, acc=0, rows=None, r0=0):
        op = Op.MV if T == 1 else Op.MM
        self._e(op, fmt=m.fmt, sp_n=16, acc=acc, waddr=m.waddr(r0), wstride=m.stride,
                rows=m.rows if rows is None else rows, cols=m.cols, tokens=T, xaddr=x, xstride=xstride, yaddr=y,
                ystride=ystride, split=m.split)

    def norm(self, gamma: str, T: int):
        H, A = self.cfg.hidden, self.A
        self._e(Op.LD, fmt=LdFmt.I32, dst=A["gamma"], addr=self.pl.gammas[gamma], rows=1, cols=H,
                src_stride=H * 4, dst_stride=H)
        self.misc(MiscOp.RMSNORM, src=A["x"], src2=A["gamma"], dst=A["xn"], n=H, rows=T, src_stride=H,
                  dst_stride=H, imm=self.eps)
        self.quant(A["xn"], self.Q["x"], H, T, H, H)

    # -- the forward pass ---------------------------------------------------------------------------
    def forward(self, T: int, all_logits: bool) -> list[Instr]:
        cfg, pl, A, Q = self.cfg, self.pl, self.A, self.Q
        H, F, hd, ctx = cfg.hidden, cfg.ffn, cfg.head_dim, self.ctx
        KV = cfg.n_kv_heads * hd
        group = cfg.n_heads // cfg.n_kv_heads
        emb = pl.mats["token_embd"]
        self.prog, self.layer_ends = [], []
        # embedding rows gathered by token id (Q8_0 -> ACT)
        self._e(Op.LD, fmt=LdFmt.Q8_0, idx=1, dst=A["x"], addr=emb.addr, rows=T, cols=H, src_stride=emb.stride,
                dst_stride=H, idx_addr=pl.tokens)
        kv_wfrac = KV_FRAC
        for l in range(cfg.n_layers):
            M = lambda n: pl.mats[f"blk.{l}.{n}"]  # noqa: E731
            self.norm(f"blk.{l}.attn_norm", T)
            self.mm(M("attn_q"), Q["x"], H, A["q"], H, T)
            self.mm(M("attn_k"), Q["x"], H, A["k"], KV, T)
            self.mm(M("attn_v"), Q["x"], H, A["v"], KV, T)
            # RoPE rows for positions POS..POS+T-1
            self._e(Op.LD, fmt=LdFmt.I32, dst=A["rope"], addr=pl.rope, rows=T, cols=hd, src_stride=hd * 4,
                    dst_stride=hd, pos_stride=hd * 4)
            self.misc(MiscOp.ROPE, src=A["q"], src2=A["rope"], dst=A["q"], n=H, rows=T, src_stride=H,
                      src2_stride=hd, dst_stride=H, imm=hd)
            self.misc(MiscOp.ROPE, src=A["k"], src2=A["rope"], dst=A["k"], n=KV, rows=T, src_stride=KV,
                      src2_stride=hd, dst_stride=KV, imm=hd)
            for g in range(cfg.n_kv_heads):
                # K row per position; V transposed (one row per head dimension) so P.V streams rows too
                self._e(Op.ST, fmt=StFmt.I16, shift=self.kv_shift, src=A["k"] + g * hd, addr=pl.kcache[l, g],
                        rows=T, cols=hd, src_stride=KV, dst_stride=hd * KV_BYTES, elem_stride=KV_BYTES,
                        pos_stride=hd * KV_BYTES)
                self._e(Op.ST, fmt=StFmt.I16, shift=self.kv_shift, src=A["v"] + g * hd, addr=pl.vcache[l, g],
                        rows=T, cols=hd, src_stride=KV, dst_stride=KV_BYTES, elem_stride=ctx * KV_BYTES,
                        pos_stride=KV_BYTES)
            self.quant(A["q"], Q["q"], H, T, H, H)
            # Decode (T = 1): the query heads sharing a KV head run as one matrix op, so each K/V row is
            # read once per group (GQA). Prefill: one head at a time, causal rows per token.
            rows_per = group if T == 1 else 1
            for h0 in range(0, cfg.n_heads, rows_per):
                g = h0 // group
                R = T * rows_per
                self._e(Op.MV if R == 1 else Op.MM, fmt=WFmt.I16, sp_n=16, rows_pos=1, wfrac=kv_wfrac,
                        waddr=pl.kcache[l, g], wstride=hd * KV_BYTES, rows=T, cols=hd, tokens=R,
                        xaddr=Q["q"] + h0 * hd, xstride=hd if T == 1 else H, yaddr=A["s"], ystride=ctx)
                self.misc(MiscOp.SOFTMAX, n_pos=1, causal=int(T > 1), src=A["s"], dst=A["p"], n=1, rows=R,
                          src_stride=ctx, dst_stride=ctx, imm=self.smax_mult)
                self.quant(A["p"], Q["p"], T, R, ctx, ctx, frac=PROB_FRAC, n_pos=1)
                self._e(Op.MV if R == 1 else Op.MM, fmt=WFmt.I16, sp_n=16, cols_pos=1, wfrac=kv_wfrac,
                        waddr=pl.vcache[l, g], wstride=ctx * KV_BYTES, rows=hd, cols=T, tokens=R, xaddr=Q["p"],
                        xstride=ctx, yaddr=A["o"] + h0 * hd, ystride=hd if T == 1 else H)
            self.quant(A["o"], Q["x"], H, T, H, H)
            self.mm(M("attn_output"), Q["x"], H, A["x"], H, T, acc=1)          # residual fused
            self.norm(f"blk.{l}.ffn_norm", T)
            self.mm(M("ffn_gate"), Q["x"], H, A["g"], F, T)
            self.mm(M("ffn_up"), Q["x"], H, A["u"], F, T)
            self.misc(MiscOp.SILU_MUL, src=A["g"], src2=A["u"], dst=A["g"], n=F, rows=T, src_stride=F,
                      src2_stride=F, dst_stride=F)
            self.quant(A["g"], Q["x"], F, T, F, F)
            self.mm(M("ffn_down"), Q["x"], F, A["x"], H, T, acc=1)
            self.layer_ends.append(len(self.prog) - 1)
        self.norm("output_norm", T)
        head = pl.mats["output"]
        toks = range(T) if all_logits else [T - 1]
        for t in toks:
            for r0 in range(0, cfg.vocab, self.logit_tile):
                rows = min(self.logit_tile, cfg.vocab - r0)
                self.mm(head, Q["x"] + t * H, H, A["logits"], rows, 1, rows=rows, r0=r0)
                row = t if all_logits else 0
                self._e(Op.ST, fmt=StFmt.I32, src=A["logits"], addr=pl.logits + (row * cfg.vocab + r0) * 4, rows=1,
                        cols=rows, src_stride=rows, dst_stride=rows * 4, elem_stride=4)
        self._e(Op.SYS, fn=SysOp.END)
        return self.prog


assert SCALE_FIX >= KV_FRAC
