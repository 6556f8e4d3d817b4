"""Reference model of the special function unit, bit-exact with hw/ (docs/numerics.md).

All arithmetic is on integers with fixed scalings; transcendental functions come from ROM tables built by
:func:`exp2_table` and :func:`sigmoid_table` (the RTL initialises its ROMs from the same functions), square roots
from an exact integer square root, reciprocals from one integer division per row. Rows are vectorised.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from flightllm.formats import (ACT_FRAC, BLOCK, GAMMA_FRAC, PROB_FRAC, ROPE_FRAC, SCALE_MANT_BITS, sat32)

EXP_FRAC_BITS = 12                       # log2-domain fraction bits: the exp2 ROM has 2^12 entries
LOG2E_Q16 = round(math.log2(math.e) * (1 << 16))
SIG_RANGE = 16                           # sigmoid table covers [-16, 16); saturates outside
SIG_STEP_BITS = 5                        # table step 2^-7 in ACT units (12 - 5 = 7)
SIG_FRAC = 16


@lru_cache(maxsize=None)
def exp2_table() -> np.ndarray:
    """EXP2[f] = round(2^(PROB_FRAC - f / 4096)), f in [0, 4096)."""
    f = np.arange(1 << EXP_FRAC_BITS, dtype=np.float64)
    return np.round(np.exp2(PROB_FRAC - f / (1 << EXP_FRAC_BITS))).astype(np.int64)


@lru_cache(maxsize=None)
def sigmoid_table() -> np.ndarray:
    """SIG[i] = round(2^16 * sigmoid(-16 + i * 2^-7)), i in [0, 4096] (one extra entry for interpolation)."""
    n = (2 * SIG_RANGE) << (ACT_FRAC - SIG_STEP_BITS)
    x = -SIG_RANGE + np.arange(n + 1, dtype=np.float64) / (1 << (ACT_FRAC - SIG_STEP_BITS))
    return np.round((1 << SIG_FRAC) / (1.0 + np.exp(-x))).astype(np.int64)


def _bitlen(v: np.ndarray) -> np.ndarray:
    """Bit length of non-negative int64 values < 2^53 (exact through float64)."""
    return np.frexp(v.astype(np.float64))[1].astype(np.int64)


def quant(x: np.ndarray, frac: int):
    """int32 rows (T, n) with ``frac`` fraction bits -> (q int8 (T, n32), m uint16 (T, B), e int8 (T, B)).

    Rows are zero-padded to a multiple of 32. Per block: S = ceil(amax*128/127) rounded up to an 11-bit mantissa
    m * 2^k; q = round_half_up(128*|x| / S) * sign(x), so |q| <= 127; scale = m * 2^(k - 7 - frac).
    """
    T, n = x.shape
    n32 = -(-n // BLOCK) * BLOCK
    xp = np.zeros((T, n32), np.int64)
    xp[:, :n] = x
    xb = xp.reshape(T, n32 // BLOCK, BLOCK)
    ax = np.abs(xb)
    amax = ax.max(-1)
    S = (amax * 128 + 126) // 127
    k = np.maximum(_bitlen(S) - SCALE_MANT_BITS, 0)
    m = (S + (np.int64(1) << k) - 1) >> k
    carry = m >> SCALE_MANT_BITS                      # m rounded up to 2^11: renormalise
    m = np.where(carry > 0, m >> 1, m)
    k = k + carry
    Seff = (m << k)[..., None]
    safe = np.maximum(Seff, 1)
    q = np.where(Seff > 0, (ax * 256 + Seff) // (2 * safe), 0) * np.sign(xb)
    e = np.where(amax > 0, k - 7 - frac, 0)
    return q.reshape(T, n32).astype(np.int8), m.astype(np.uint16), e.astype(np.int8)


def rmsnorm(x: np.ndarray, g: np.ndarray, eps: int) -> np.ndarray:
    """x (T, n) ACT, g (n,) GAMMA, eps in ACT^2 units (2^-24). Exact: ss, isqrt and one division per row."""
    T, n = x.shape
    xi = x.astype(np.int64)
    hi, lo = xi >> 16, xi & 0xFFFF                    # x = hi*2^16 + lo: the squares' sums fit in int64
    s1 = (hi * hi).sum(-1)
    s2 = (hi * lo).sum(-1)
    s3 = (lo * lo).sum(-1)
    rinv = np.zeros(T, np.int64)
    for t in range(T):
        ss = (int(s1[t]) << 32) + (int(s2[t]) << 17) + int(s3[t])
        var = ss // n + eps
        s = math.isqrt(var << 24)                     # sqrt(var) with 24 fraction bits
        rinv[t] = (1 << 62) // s if s else 0
    u = (xi * rinv[:, None] + (1 << 29)) >> 30        # x / rms with 20 fraction bits
    y = (u * g.astype(np.int64)[None, :] + (1 << (GAMMA_FRAC + 20 - ACT_FRAC - 1))) >> (GAMMA_FRAC + 20 - ACT_FRAC)
    return sat32(y)


def softmax(x: np.ndarray, valid: np.ndarray, mult: int) -> np.ndarray:
    """x (T, W) ACT scores; row t uses columns [0, valid[t]) (later ones give 0). PROB out.

    ``mult`` = round(log2(e) * scale * 2^16) folds the score scale (1/sqrt(head_dim)) into the exp2 argument.
    """
    T, W = x.shape
    xi = x.astype(np.int64)
    cols = np.arange(W)[None, :]
    live = cols < valid[:, None]
    mx = np.where(live, xi, np.iinfo(np.int64).min).max(-1, keepdims=True)
    z = np.where(live, mx - xi, 0)
    w = (z * mult) >> (16 + ACT_FRAC - EXP_FRAC_BITS)  # log2-domain distance, EXP_FRAC_BITS fraction bits
    ni = np.minimum(w >> EXP_FRAC_BITS, 62)
    e = np.where(live, exp2_table()[w & ((1 << EXP_FRAC_BITS) - 1)] >> ni, 0)
    tot = e.sum(-1, keepdims=True)                    # >= 2^30: the maximum contributes EXP2[0]
    rinv = (np.int64(1) << 61) // np.maximum(tot, 1)
    return ((e * rinv + (1 << 30)) >> 31).astype(np.int32)


def silu_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """silu(a) * b, ACT in and out; sigmoid by table with linear interpolation."""
    ai = a.astype(np.int64)
    tab = sigmoid_table()
    v = ai + (SIG_RANGE << ACT_FRAC)
    top = len(tab) - 1
    i = np.clip(v >> SIG_STEP_BITS, 0, top - 1)
    fr = v & ((1 << SIG_STEP_BITS) - 1)
    s = tab[i] + (((tab[i + 1] - tab[i]) * fr + (1 << (SIG_STEP_BITS - 1))) >> SIG_STEP_BITS)
    s = np.where(v < 0, 0, np.where(v >= (top << SIG_STEP_BITS), 1 << SIG_FRAC, s))
    silu = (ai * s + (1 << (SIG_FRAC - 1))) >> SIG_FRAC
    return sat32((silu * b.astype(np.int64) + (1 << (ACT_FRAC - 1))) >> ACT_FRAC)


def rope(x: np.ndarray, table: np.ndarray, head_dim: int) -> np.ndarray:
    """x (T, n) ACT, table (T, head_dim) = [cos_0..cos_{h/2-1}, sin_0..] ROPE; rotates pairs (2i, 2i+1)."""
    T, n = x.shape
    half = head_dim // 2
    xv = x.astype(np.int64).reshape(T, n // head_dim, half, 2)
    c = table[:, None, :half].astype(np.int64)
    s = table[:, None, half:head_dim].astype(np.int64)
    x0, x1 = xv[..., 0], xv[..., 1]
    r = 1 << (ROPE_FRAC - 1)
    y = np.empty_like(xv)
    y[..., 0] = _sum_shr(x0 * c, -(x1 * s), r, ROPE_FRAC)
    y[..., 1] = _sum_shr(x0 * s, x1 * c, r, ROPE_FRAC)
    return sat32(y.reshape(T, n))


def _sum_shr(a: np.ndarray, b: np.ndarray, r: int, sh: int) -> np.ndarray:
    """floor((a + b + r) / 2^sh) exactly, for int64 a, b whose sum may pass 2^63 (two products of int32 extremes:
    (-2^31)(-2^31) + (-2^31)(-2^31) = 2^63); the RTL keeps the full-width sum (hw/sfu_cores.py RopeCore)."""
    m = (1 << sh) - 1
    return (a >> sh) + (b >> sh) + (((a & m) + (b & m) + r) >> sh)


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return sat32(a.astype(np.int64) + b.astype(np.int64))


def argmax(x: np.ndarray) -> np.ndarray:
    return np.argmax(x, axis=-1).astype(np.int32)     # first maximum, as the RTL's strict '>' scan


def act_to_float(x: np.ndarray, frac: int = ACT_FRAC) -> np.ndarray:
    return x.astype(np.float64) / (1 << frac)


__all__ = ["quant", "rmsnorm", "softmax", "silu_mul", "rope", "add", "argmax", "exp2_table", "sigmoid_table",
           "PROB_FRAC"]
