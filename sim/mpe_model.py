"""Reference model of the matrix processing engine's arithmetic (MM/MV), bit-exact with hw/.

Per 32-block b of row r and token t (docs/numerics.md):
    acc  = sum_k q_w[r,k] * q_x[t,k]                      (integer MACs in the DSP chains)
    qs   = sum_k kept[r,k] * q_x[t,k]                     (Q4_1 only: the min applies to kept weights)
    T    = D[r,b] * acc + M[r,b] * qs                     (D, M = fp16 scale/min * 2^24, exact integers)
    add  = (T * m_x[t,b]) << e_x[t,b]   (arithmetic, floor when the shift is negative)
    ACC  = sum_b add                                      (64-bit, wraps; integer sums are order-free)
    y    = sat32((ACC + 2^(ACC_FRAC-ACT_FRAC-1)) >> (ACC_FRAC-ACT_FRAC))        ACT out
Integer dot products run through float BLAS where every partial sum is an exact integer (< 2^24 in float32,
< 2^53 in float64), so speed costs nothing in exactness.
"""
from __future__ import annotations

import numpy as np

from flightllm.formats import ACC_FRAC, ACT_FRAC, BLOCK, SCALE_FIX, sat32
from flightllm.isa import WFmt

assert ACC_FRAC == SCALE_FIX  # the block product lands on the accumulator's scale with shift e_x alone


class Weights:
    """A weight matrix decoded once for the simulator: float copies laid out block-major for batched GEMV."""

    __slots__ = ("rows", "cols", "fmt", "wf", "mf", "D", "M", "dense_min")

    def __init__(self, q: np.ndarray, D: np.ndarray, M: np.ndarray, mask, fmt: int):
        self.rows, self.cols = q.shape
        self.fmt = fmt
        nb = self.cols // BLOCK
        ft = np.float64 if fmt == WFmt.I16 else np.float32
        self.wf = np.ascontiguousarray(q.reshape(self.rows, nb, BLOCK).transpose(1, 0, 2).astype(ft))
        self.D = np.ascontiguousarray(D.T)   # (B, R)
        self.M = np.ascontiguousarray(M.T)
        self.dense_min = mask is None
        self.mf = None if mask is None else np.ascontiguousarray(
            mask.reshape(self.rows, nb, BLOCK).transpose(1, 0, 2).astype(np.float32))

    def slice_rows(self, r0: int, r1: int) -> "Weights":
        w = object.__new__(Weights)
        w.rows, w.cols, w.fmt, w.dense_min = r1 - r0, self.cols, self.fmt, self.dense_min
        w.wf, w.D, w.M = self.wf[:, r0:r1], self.D[:, r0:r1], self.M[:, r0:r1]
        w.mf = None if self.mf is None else self.mf[:, r0:r1]
        return w


def mm(w: Weights, xq: np.ndarray, xm: np.ndarray, xe: np.ndarray) -> np.ndarray:
    """y (T, R) ACT int32 = W (R, C) x X (T, C); xq int8 (T, C), xm/xe (T, B) block scales."""
    T, C = xq.shape
    nb = C // BLOCK
    assert C == w.cols
    xb = xq.reshape(T, nb, BLOCK).transpose(1, 2, 0).astype(w.wf.dtype)        # (B, 32, T)
    Tb = np.matmul(w.wf, xb).astype(np.int64)                                   # (B, R, T) exact acc
    Tb *= w.D[:, :, None]
    if w.fmt == WFmt.Q4_1:
        if w.dense_min:
            qs = xq.reshape(T, nb, BLOCK).sum(-1, dtype=np.int64).T[:, None, :]   # (B, 1, T)
        else:
            qs = np.matmul(w.mf, xb.astype(np.float32)).astype(np.int64)
        Tb += w.M[:, :, None] * qs
    Tb *= xm.T.astype(np.int64)[:, None, :]
    e = xe.T.astype(np.int64)[:, None, :]
    if e.max() <= 0:                              # the usual case: right shifts only
        Tb >>= np.minimum(-e, 63)
    else:
        Tb = np.where(e >= 0, Tb << np.maximum(e, 0), Tb >> np.minimum(-e, 63))
    ACC = Tb.sum(axis=0)                                                         # (R, T), wraps at 64 bits
    sh = ACC_FRAC - ACT_FRAC
    ACC += 1 << (sh - 1)
    ACC >>= sh
    return sat32(ACC).T
