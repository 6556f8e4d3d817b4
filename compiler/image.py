"""Device memory image: weights repacked into the engine's block formats, norm weights and RoPE tables.

GGUF Q4_1 and Q8_0 rows are already the engine's dense block layout (docs/numerics.md), so they are copied after
their scales are checked; Q4_0 becomes Q4_1 exactly (m = -8d); F16/F32/BF16 matrices are quantised to Q8_0, or to Q4_1
(``quantize="q4_1"``: 20 bytes a 32-block instead of 34, so a memory-bound decode runs ~1.7x faster, at 4-bit
error).
"""
from __future__ import annotations

import numpy as np

from flightllm.errors import CompileError
from flightllm.formats import (BLOCK, GAMMA_FRAC, MAX_WEIGHT_SCALE, ROPE_FRAC, fp16_finite, pack_weights,
                               row_bytes, to_fixed)
from flightllm.isa import WFmt
from flightllm.compiler.gguf_model import FLOAT_TYPES, Tensor


def _check_scales(name: str, h: np.ndarray) -> None:
    if not np.all(fp16_finite(h)):
        raise CompileError(f"tensor {name}: non-finite block scale")
    v = np.abs(h.view(np.float16).astype(np.float32))
    if v.size and v.max() >= MAX_WEIGHT_SCALE:
        raise CompileError(f"tensor {name}: block scale {v.max():g} exceeds the engine's range (< {MAX_WEIGHT_SCALE})")


def quantize_q8_0(x: np.ndarray):
    """Float rows -> (q int8, d fp16 bits) per 32-block, round to nearest as ggml does."""
    R, C = x.shape
    xb = x.astype(np.float32).reshape(R, C // BLOCK, BLOCK)
    amax = np.abs(xb).max(-1)
    d = (amax / 127.0).astype(np.float16)
    df = d.astype(np.float32)
    inv = np.where(df > 0, 1.0 / np.where(df > 0, df, 1), 0)
    q = np.clip(np.round(xb * inv[..., None]), -127, 127).astype(np.int32)
    return q.reshape(R, C), d.view(np.uint16)


def quantize_q4_1(x: np.ndarray):
    """Float rows -> (q 0..15, d fp16 bits, m fp16 bits) per 32-block as ggml's quantize_row_q4_1_ref does (and the
    gguf package): d = (max - min) / 15 and m = min, the nibbles from the fp32 d and min, rounded half up."""
    R, C = x.shape
    xb = x.astype(np.float32).reshape(R, C // BLOCK, BLOCK)
    lo, hi = xb.min(-1), xb.max(-1)
    d = (hi - lo) / np.float32(15)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, np.float32(1)), np.float32(0)).astype(np.float32)
    q = np.trunc((xb - lo[..., None]) * inv[..., None] + np.float32(0.5)).clip(0, 15).astype(np.int32)
    return q.reshape(R, C), d.astype(np.float16).view(np.uint16), lo.astype(np.float16).view(np.uint16)


QUANTIZE = ("q8_0", "q4_1")       # what F16/F32 matrices become (compile_model's ``quantize``)


def float_rows(t: Tensor) -> np.ndarray:
    """An F32/F16/BF16 tensor's values as float32 (a BF16 value is a float32's high 16 bits: exact)."""
    if t.type == "BF16":
        u = np.ascontiguousarray(t.data).reshape(-1).view(np.uint8).view("<u2")
        return (u.astype(np.uint32) << 16).view(np.float32).reshape(t.shape)
    return np.asarray(t.data, dtype=np.float32).reshape(t.shape)


def device_matrix(t: Tensor, quantize: str = "q8_0") -> tuple[WFmt, np.ndarray]:
    """A GGUF matrix -> (engine format, uint8 rows of blocks); ``quantize`` picks the format of a float one."""
    R, C = t.shape
    if C % BLOCK:
        raise CompileError(f"tensor {t.name}: {C} columns is not a multiple of {BLOCK}")
    nb = C // BLOCK
    if t.type == "Q4_1":
        raw = np.ascontiguousarray(t.data).reshape(R, nb, 20)
        _check_scales(t.name, raw[..., 0:4].copy().view("<u2"))
        return WFmt.Q4_1, raw.reshape(R, -1)
    if t.type == "Q8_0":
        raw = np.ascontiguousarray(t.data).reshape(R, nb, 34)
        _check_scales(t.name, raw[..., 0:2].copy().view("<u2"))
        return WFmt.Q8_0, raw.reshape(R, -1)
    if t.type == "Q4_0":
        raw = np.ascontiguousarray(t.data).reshape(R, nb, 18)
        d16 = raw[..., 0:2].copy().view("<u2")[..., 0]
        _check_scales(t.name, d16)
        m16 = (-8.0 * d16.view(np.float16).astype(np.float32)).astype(np.float16).view(np.uint16)  # exact
        q = np.concatenate([raw[..., 2:] & 0xF, raw[..., 2:] >> 4], axis=-1).reshape(R, C).astype(np.int32)
        return WFmt.Q4_1, pack_weights(q, d16, m16, WFmt.Q4_1)
    if t.type in FLOAT_TYPES:
        x = float_rows(t)
        if not np.all(np.isfinite(x)):
            raise CompileError(f"tensor {t.name}: non-finite weights")
        if quantize == "q4_1":
            q, d16, m16 = quantize_q4_1(x)
            _check_scales(t.name, np.stack([d16, m16], -1))
            return WFmt.Q4_1, pack_weights(q, d16, m16, WFmt.Q4_1)
        q, d16 = quantize_q8_0(x)
        _check_scales(t.name, d16)
        return WFmt.Q8_0, pack_weights(q, d16, None, WFmt.Q8_0)
    raise CompileError(f"tensor {t.name}: type {t.type} cannot be mapped")


def embedding_rows(t: Tensor) -> np.ndarray:
    """The token embedding as LD gathers it: Q8_0 rows (LD has no 4-bit row format). A Q8_0 table is copied; a
    Q4_0/Q4_1 one is dequantised and quantised to Q8_0 (each value moves by at most half the new step, 1/254 of
    its block's largest magnitude); a float one is quantised."""
    if t.type == "Q8_0":
        return device_matrix(t)[1]
    if t.type in ("Q4_0", "Q4_1"):
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        x = np.asarray(dequantize(np.asarray(t.data), GGMLQuantizationType[t.type]), np.float32).reshape(t.shape)
        t = Tensor(t.name, "F32", t.shape, x)
    return device_matrix(t, "q8_0")[1]


def gamma_words(t: Tensor) -> np.ndarray:
    g = float_rows(t).reshape(-1)
    if not np.all(np.isfinite(g)) or np.abs(g).max(initial=0) >= (1 << (31 - GAMMA_FRAC)):
        raise CompileError(f"tensor {t.name}: norm weights out of range")
    return to_fixed(g, GAMMA_FRAC)


def rope_table(ctx: int, head_dim: int, base: float) -> np.ndarray:
    """Row p = [cos(p*theta_i) for i < hd/2] + [sin(...)], theta_i = base^(-2i/hd), as ROPE_FRAC fixed point."""
    half = head_dim // 2
    theta = base ** (-np.arange(half, dtype=np.float64) * 2.0 / head_dim)
    ang = np.arange(ctx, dtype=np.float64)[:, None] * theta[None, :]
    return np.concatenate([to_fixed(np.cos(ang), ROPE_FRAC), to_fixed(np.sin(ang), ROPE_FRAC)], axis=1)


__all__ = ["device_matrix", "embedding_rows", "float_rows", "gamma_words", "rope_table", "quantize_q8_0",
           "quantize_q4_1", "QUANTIZE", "row_bytes"]
