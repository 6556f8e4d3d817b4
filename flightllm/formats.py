"""Numeric and memory formats shared by the compiler, the simulators and the RTL (docs/numerics.md).

On-chip values are integers with a fixed, documented scaling, so the functional simulator and the RTL agree
bit for bit and no result depends on the order of a reduction:

- ACT  : int32, ``ACT_FRAC`` fractional bits. Every activation vector in the ABUF.
- PROB : int32, ``PROB_FRAC`` fractional bits. Softmax output.
- GAMMA: int32, ``GAMMA_FRAC`` fractional bits. RMSNorm weights (loaded into the ABUF).
- ROPE : int32, ``ROPE_FRAC`` fractional bits. cos/sin table rows.
- QBUF : int8 activations in blocks of 32, each with a scale m * 2^e (m: 11-bit mantissa, e: int8).
- Weight block scales are fp16 in memory; the engine uses them as the exact integer D = d * 2^24.
- KV cache: int16 with ``KV_FRAC`` fractional bits (in memory, read by the engine as I16 weights).
"""
from __future__ import annotations

import numpy as np

from flightllm.isa import WFmt

BLOCK = 32              # quantisation block (weights and activations)
GROUP = 16              # M of N:M sparsity
ACT_FRAC = 12
PROB_FRAC = 30
GAMMA_FRAC = 16
ROPE_FRAC = 30
KV_FRAC = 9             # K and V seen up to ~21 in SmolLM2: int16 Q6.9 keeps them with 2^-9 resolution
SCALE_FIX = 24          # weight scales as integers: D = d * 2^SCALE_FIX (exact for every finite fp16)
ACC_FRAC = 24           # matrix-engine accumulator fraction bits
SCALE_MANT_BITS = 11    # activation block scale mantissa (fp16's precision)
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
# Pre-quantised activation block in memory (LD QACT): m (u16), e (i8), 0 (u8), 32 x int8.
QACT_BLOCK_BYTES = 36
# Largest |d| or |m| a weight block may carry: keeps every engine product inside 64 bits (docs/numerics.md).
MAX_WEIGHT_SCALE = 16.0


def block_bytes(fmt: int, sp_n: int = 16) -> int:
    """Bytes of one 32-weight block in device memory."""
    fmt = WFmt(fmt)
    if fmt == WFmt.Q4_1:
        return 20 if sp_n == 16 else 4 + 2 * sp_n       # d, m, values (4-bit), indices (4-bit)
    if fmt == WFmt.Q8_0:
        return 34 if sp_n == 16 else 2 + 3 * sp_n       # d, values (8-bit), indices (4-bit)
    return 2 * BLOCK                                    # I16: no header


def row_bytes(fmt: int, cols: int, sp_n: int = 16) -> int:
    return (cols // BLOCK) * block_bytes(fmt, sp_n)


# ---- weight stream layout (row pairs) ---------------------------------------------------------------------------
# Dense Q4_1 / Q8_0 matrices are stored row-pair interleaved at block granularity: pair-row p holds, for every
# block b, block b of row 2p then block b of row 2p+1 (a missing last odd row is zero bytes). The engine reads one
# *unit* (the two blocks) at a time and multiplies each activation once by both rows' weights packed into one DSP
# operand (hw/mpe.py, docs/rtl.md). A matrix op's ``wstride`` stays the per-row stride: pair-row p starts at
# waddr + p * 2 * wstride. Sparse N:16 and I16 rows (whose products do not share activations) are row-major.
# Every reader and writer of weight bytes goes through these functions.

def paired(fmt: int, sp_n: int = 16) -> bool:
    """Weights stored (and multiplied) as row pairs: dense Q4_1 and Q8_0."""
    return int(fmt) in (int(WFmt.Q4_1), int(WFmt.Q8_0)) and int(sp_n) == 16


def weight_stream(fmt: int, sp_n: int, rows: int, cols: int, stride: int) -> tuple[int, int, int]:
    """The engine's view of a rows x cols weight operand: (stream rows, bytes per stream row, stream row stride)."""
    rb = row_bytes(fmt, cols, sp_n)
    if paired(fmt, sp_n):
        return (rows + 1) // 2, 2 * rb, 2 * stride
    return rows, rb, stride


def weight_span(fmt: int, sp_n: int, rows: int, cols: int, stride: int) -> int:
    """Bytes from ``waddr`` to the end of the operand's last byte (the range a matrix op reads)."""
    sr, srb, sst = weight_stream(fmt, sp_n, rows, cols, stride)
    return (sr - 1) * sst + srb


def split_rows(fmt: int, sp_n: int, rows: int, channels: int) -> int:
    """Rows each weight channel holds of a ``rows``-row operand split over ``channels`` (an MV/MM with ``split``):
    stream rows (row pairs for the paired formats) are dealt round-robin, so channel c holds stream rows c, c + C,
    c + 2C, ..., padded with zero rows to the same count on every channel (the channels run in lockstep)."""
    sr = (rows + 1) // 2 if paired(fmt, sp_n) else rows
    per = -(-sr // channels)
    return 2 * per if paired(fmt, sp_n) else per


def split_row_map(fmt: int, sp_n: int, rows: int, channels: int) -> np.ndarray:
    """(channels, split_rows) global row of each channel's local row; rows >= ``rows`` are padding (never
    written). Channel c's section is the ordinary layout (``interleave_rows``) of the rows it lists."""
    lr = split_rows(fmt, sp_n, rows, channels)
    i = np.arange(lr)
    c = np.arange(channels)[:, None]
    if paired(fmt, sp_n):
        return 2 * ((i // 2) * channels + c) + i % 2
    return i * channels + c


def split_span(fmt: int, sp_n: int, rows: int, cols: int, stride: int, channels: int) -> int:
    """Bytes one channel's section of a split ``rows``-row operand spans from its start (``weight_span`` of its
    ``split_rows`` local rows): the range each channel reads at waddr + c * SPLIT_STRIDE."""
    return weight_span(fmt, sp_n, split_rows(fmt, sp_n, rows, channels), cols, stride)


def split_sections(raw: np.ndarray, fmt: int, sp_n: int, channels: int) -> np.ndarray:
    """Row-major device rows (uint8, R x row_bytes) -> (channels, section bytes): channel c's section, the stored
    layout (``interleave_rows``) of its local rows (``split_row_map``) with ``wstride`` = row_bytes, padding rows
    zero. Inverse: :func:`merge_sections`."""
    R, rb = raw.shape
    rmap = split_row_map(fmt, sp_n, R, channels)
    local = np.zeros(rmap.shape + (rb,), np.uint8)
    ok = rmap < R
    local[ok] = raw[rmap[ok]]
    return np.stack([interleave_rows(local[c], fmt, sp_n).reshape(-1) for c in range(channels)])


def split_layout(tiles: list, channels: int, align: int, page: int):
    """Several split operands ((row-major device rows, fmt, sp_n) each, e.g. row tiles) packed into ``channels``
    sections: operand i's channel-c part (``split_sections``) at offset offs[i] of every section, offsets aligned
    to ``align``, sections ``stride`` apart (page-aligned: SPLIT_STRIDE). Returns (offs, stride, pieces), pieces
    being (c * stride + offset, bytes) to store."""
    offs, secs, o = [], [], 0
    for raw, fmt, sp_n in tiles:
        sec = split_sections(raw, fmt, sp_n, channels)
        offs.append(o)
        secs.append(sec)
        o = -(-(o + sec.shape[1]) // align) * align
    stride = -(-max(o, 1) // page) * page
    return offs, stride, [(c * stride + off, sec[c]) for off, sec in zip(offs, secs) for c in range(channels)]


def merge_sections(sraw: np.ndarray, fmt: int, sp_n: int, rows: int) -> np.ndarray:
    """(channels, stream rows, stream row bytes) as read from each channel's section -> the ``rows`` row-major
    device rows of the logical operand (padding dropped)."""
    C = sraw.shape[0]
    rmap = split_row_map(fmt, sp_n, rows, C)
    local = np.stack([deinterleave_rows(sraw[c], fmt, sp_n, rmap.shape[1]) for c in range(C)])
    out = np.empty((rows, local.shape[-1]), np.uint8)
    ok = rmap < rows
    out[rmap[ok]] = local[ok]
    return out


def row_tile(rows: int, room: int) -> int:
    """Rows of one output tile of a ``rows``-row matrix where ``room`` rows fit: all of them, else an even number,
    so that every tile starts on a stored row pair (``interleave_rows``)."""
    return rows if room >= rows else room - room % 2


def interleave_rows(raw: np.ndarray, fmt: int, sp_n: int = 16) -> np.ndarray:
    """Row-major device rows (uint8, R x row_bytes) -> the stored layout (stream rows x stream row bytes)."""
    if not paired(fmt, sp_n):
        return raw
    R, rb = raw.shape
    bb = block_bytes(fmt, sp_n)
    nb = rb // bb
    pad = np.zeros((R + (R & 1), rb), np.uint8)
    pad[:R] = raw
    return np.ascontiguousarray(pad.reshape(-1, 2, nb, bb).transpose(0, 2, 1, 3)).reshape(-1, 2 * rb)


def deinterleave_rows(sraw: np.ndarray, fmt: int, sp_n: int, rows: int) -> np.ndarray:
    """Inverse of :func:`interleave_rows`: stored stream rows -> ``rows`` row-major device rows."""
    if not paired(fmt, sp_n):
        return sraw
    SR, srb = sraw.shape
    bb = block_bytes(fmt, sp_n)
    nb = srb // (2 * bb)
    return np.ascontiguousarray(sraw.reshape(SR, nb, 2, bb).transpose(0, 2, 1, 3)).reshape(2 * SR, nb * bb)[:rows]


def fp16_to_fixed(h: np.ndarray) -> np.ndarray:
    """fp16 bit patterns (uint16) -> exact int64 d * 2^SCALE_FIX. Inf/NaN must be rejected before this."""
    h = h.astype(np.int64)
    sign = np.where(h >> 15, -1, 1)
    exp = (h >> 10) & 0x1F
    frac = h & 0x3FF
    mant = np.where(exp == 0, frac, frac | 0x400)
    sh = np.where(exp == 0, 1, exp) - 1          # fp16 = mant * 2^(exp-25) -> *2^24 = mant << (exp-1)
    return sign * (mant << sh)


def fp16_finite(h: np.ndarray) -> np.ndarray:
    return ((h.astype(np.uint16) >> 10) & 0x1F) != 0x1F


def unpack_weights(raw: np.ndarray, fmt: int, sp_n: int, rows: int, cols: int, wfrac: int = 0):
    """Device weight rows (uint8, shape rows x row_bytes) -> (Q int (R, C), D int64 (R, B), M int64 (R, B), mask).

    Q holds the stored integers (Q4_1: 0..15, Q8_0: int8, I16: int16), zero where a sparse group pruned the
    weight; mask (R, C) marks kept weights for sparse Q4_1 (whose min applies to kept weights only; 1 kept, 0
    pruned), else None. A sparse block whose indices repeat a position gets the sum of those weights and a count
    of 2+ there: the engine multiplies every stored weight by the activation its index selects.
    """
    fmt = WFmt(fmt)
    nb = cols // BLOCK
    if fmt == WFmt.I16:
        q = raw[:, : cols * 2].copy().view("<i2").reshape(rows, cols)
        d = np.full((rows, nb), 1 << (SCALE_FIX - wfrac), dtype=np.int64)
        return q.astype(np.int32), d, np.zeros_like(d), None
    bb = block_bytes(fmt, sp_n)
    blk = raw[:, : nb * bb].reshape(rows, nb, bb)
    d = fp16_to_fixed(blk[..., 0:2].copy().view("<u2")[..., 0])
    hdr = 2
    m = np.zeros_like(d)
    if fmt == WFmt.Q4_1:
        m = fp16_to_fixed(blk[..., 2:4].copy().view("<u2")[..., 0])
        hdr = 4
    body = blk[..., hdr:]
    mask = None
    if sp_n == 16:
        if fmt == WFmt.Q4_1:   # GGUF order: byte j holds weight j (low nibble) and j+16 (high nibble)
            q = np.concatenate([body & 0xF, body >> 4], axis=-1).astype(np.int32)
        else:
            q = body.view(np.int8).astype(np.int32)
    else:
        k = 2 * sp_n                                   # kept weights per block (two groups of 16)
        if fmt == WFmt.Q4_1:
            vals = np.stack([body[..., :sp_n] & 0xF, body[..., :sp_n] >> 4], axis=-1).reshape(rows, nb, k)
            idxb = body[..., sp_n: 2 * sp_n]
        else:
            vals = body[..., :k].view(np.int8)
            idxb = body[..., k: k + sp_n]
        idx = np.stack([idxb & 0xF, idxb >> 4], axis=-1).reshape(rows, nb, k).astype(np.int64)
        idx = idx + np.repeat(np.array([0, GROUP]), sp_n)[None, None, :]      # group g indexes 16g..16g+15
        # One product per stored weight, as the engine computes (hw/mpe.py): a block whose indices repeat (only
        # a corrupt or hostile one) sums the repeated positions' weights and counts them twice in the Q4_1 min.
        q = np.zeros((rows, nb, BLOCK), np.int32)
        mk = np.zeros((rows, nb, BLOCK), np.int32)
        vals = vals.astype(np.int32)
        for s in range(k):
            ix = idx[..., s: s + 1]
            np.put_along_axis(q, ix, np.take_along_axis(q, ix, axis=-1) + vals[..., s: s + 1], axis=-1)
            np.put_along_axis(mk, ix, np.take_along_axis(mk, ix, axis=-1) + 1, axis=-1)
        if fmt == WFmt.Q4_1:
            mask = mk.reshape(rows, cols)
    return q.reshape(rows, cols), d, m, mask


def pack_weights(q: np.ndarray, d16: np.ndarray, m16: np.ndarray | None, fmt: int, sp_n: int = 16) -> np.ndarray:
    """Inverse of :func:`unpack_weights` for Q4_1/Q8_0: q (R, C) ints, d16/m16 (R, B) fp16 bit patterns.

    For sparse formats the kept positions are the non-zero mask implied by ``q`` per group; groups must hold
    exactly ``sp_n`` kept weights, chosen by the caller (zeros may be kept). Returns uint8 (R, row_bytes).
    """
    fmt = WFmt(fmt)
    rows, cols = q.shape
    nb = cols // BLOCK
    qb = q.reshape(rows, nb, BLOCK)
    parts = [d16.astype("<u2").reshape(rows, nb, 1).view(np.uint8)]
    if fmt == WFmt.Q4_1:
        parts.append(m16.astype("<u2").reshape(rows, nb, 1).view(np.uint8))
    if sp_n == 16:
        if fmt == WFmt.Q4_1:
            parts.append((qb[..., :16] | (qb[..., 16:] << 4)).astype(np.uint8))
        else:
            parts.append(qb.astype(np.int8).view(np.uint8))
    else:
        raise ValueError("use pack_sparse for N:16 formats")
    return np.concatenate(parts, axis=-1).reshape(rows, -1)


def pack_sparse(q: np.ndarray, keep: np.ndarray, d16: np.ndarray, m16: np.ndarray | None, fmt: int,
                sp_n: int) -> np.ndarray:
    """Sparse N:16 blocks: ``keep`` (R, C) bool with exactly sp_n True per group of 16."""
    fmt = WFmt(fmt)
    rows, cols = q.shape
    nb = cols // BLOCK
    kb = keep.reshape(rows, nb, 2, GROUP)
    if not np.all(kb.sum(-1) == sp_n):
        raise ValueError(f"every group of {GROUP} must keep exactly {sp_n} weights")
    pos = np.nonzero(kb.reshape(-1, GROUP))[1].reshape(rows, nb, 2 * sp_n)     # index within group, in order
    absidx = pos + np.repeat(np.array([0, GROUP]), sp_n)[None, None, :]
    vals = np.take_along_axis(q.reshape(rows, nb, BLOCK), absidx, axis=-1)
    parts = [d16.astype("<u2").reshape(rows, nb, 1).view(np.uint8)]
    if fmt == WFmt.Q4_1:
        parts.append(m16.astype("<u2").reshape(rows, nb, 1).view(np.uint8))
        v = vals.reshape(rows, nb, sp_n, 2)
        parts.append((v[..., 0] | (v[..., 1] << 4)).astype(np.uint8))
    else:
        parts.append(vals.astype(np.int8).view(np.uint8))
    ix = pos.reshape(rows, nb, sp_n, 2)
    parts.append((ix[..., 0] | (ix[..., 1] << 4)).astype(np.uint8))
    return np.concatenate(parts, axis=-1).reshape(rows, -1)


def to_fixed(x: np.ndarray, frac: int) -> np.ndarray:
    """Float data prepared by the compiler (tables, norm weights) -> int32 with ``frac`` fraction bits."""
    v = np.round(np.asarray(x, dtype=np.float64) * (1 << frac))
    return np.clip(v, INT32_MIN, INT32_MAX).astype(np.int32)


def sat32(x: np.ndarray) -> np.ndarray:
    return np.clip(x, INT32_MIN, INT32_MAX).astype(np.int32)


def pack_qact(q: np.ndarray, m: np.ndarray, e: np.ndarray) -> np.ndarray:
    """QBUF contents (q int8 (T, C), m uint16 (T, B), e int8 (T, B)) -> LD QACT rows (uint8, T x B*36)."""
    T, C = q.shape
    nb = C // BLOCK
    out = np.zeros((T, nb, QACT_BLOCK_BYTES), np.uint8)
    out[..., 0:2] = m.astype("<u2").reshape(T, nb, 1).view(np.uint8)
    out[..., 2] = e.astype(np.int8).view(np.uint8)
    out[..., 4:] = q.reshape(T, nb, BLOCK).view(np.uint8)
    return out.reshape(T, -1)
