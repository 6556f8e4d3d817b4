"""Numpy reference models of the matrix-engine blocks the cocotb testbenches drive (tests/hw/*_cocotb.py).

Block-level views of the arithmetic of sim/mpe_model.py (the engine-level reference) and of the weight formats
in flightllm/formats.py; where a block's result is an engine-level quantity (a row's ACT output) the testbench
compares with sim/mpe_model.py itself.
"""
from __future__ import annotations

import numpy as np

from flightllm.formats import BLOCK, GROUP, block_bytes, fp16_to_fixed, unpack_weights
from flightllm.isa import WFmt

M64 = (1 << 64) - 1


def wrap64(v: int) -> int:
    """Python int -> signed 64-bit two's complement value."""
    v &= M64
    return v - (1 << 64) if v >> 63 else v


# ---- DSP chain ------------------------------------------------------------------------------------------------
def chain(we: np.ndarray, wo: np.ndarray, x: np.ndarray, pair: np.ndarray, seg: int = 8, cut=None, taps: int = 4):
    """One chain (hw/mpe.py::dsp_chain): we, wo, x (N, L) ints, pair (N,) bool; wo is ignored where not pair.

    Stage i multiplies x[:, i] by the operand a = wo * 2^18 + we (pair) or we; the chain is cascades of ``seg``
    stages, each cut in the middle where ``cut`` (N,) bool. Returns (even, odd, qs, partial, a, tp, tq): even =
    sum we*x, odd = sum wo*x (pair; 0 otherwise) computed from the weights themselves (without a cut), qs = sum x,
    ``partial[:, i]`` the P register of stage i (its cascade's, or cut half's, running sum), ``tp[:, r]`` the
    reduction tap of run r of L / taps stages (its last stage's P, low 32 bits, signed), ``tq[:, r]`` the run's
    activation sum.
    """
    we, wo, x = we.astype(np.int64), wo.astype(np.int64), x.astype(np.int64)
    a = np.where(pair[:, None], wo * (1 << 18) + we, we)
    p = a * x
    N, L = p.shape
    partial = np.cumsum(p.reshape(N, L // seg, seg), axis=2).reshape(N, L)
    if cut is not None:
        half = np.cumsum(p.reshape(N, L // (seg // 2), seg // 2), axis=2).reshape(N, L)
        partial = np.where(cut[:, None], half, partial)
    even = (we * x).sum(1)
    odd = np.where(pair, (wo * x).sum(1), 0)
    run = L // taps
    tp = partial[:, run - 1::run] & 0xFFFFFFFF
    tp = np.where(tp >> 31, tp - (1 << 32), tp)
    tq = x.reshape(N, taps, run).sum(2)
    return even, odd, x.sum(1), partial, a, tp, tq


# ---- sparse MUX -----------------------------------------------------------------------------------------------
def block_fields(blk: np.ndarray, fmt: int, sp: int):
    """One device block (uint8, block_bytes) -> (body bytes, index bytes) as the engine cuts them from the window."""
    bb = block_bytes(fmt, sp)
    hdr = 0 if fmt == WFmt.I16 else 4 if fmt == WFmt.Q4_1 else 2
    body = blk[hdr:bb]
    idx = np.zeros(0, np.uint8)
    if sp != 16 and fmt != WFmt.I16:
        vb = sp if fmt == WFmt.Q4_1 else 2 * sp
        idx = blk[hdr + vb: bb]
    return body, idx


def lane_select(blk: np.ndarray, fmt: int, sp: int, xq: np.ndarray, keep: np.ndarray | None = None,
                on: bool = True):
    """The (weight, activation) pair of each of a lane's 32 products; weights from formats.unpack_weights.

    Dense: product j = stored weight j times activation j. N:16 (``keep``: the 32 kept flags the block was packed
    with, N per group of 16): the stored order is ascending position within each group, so product j (j < 2N)
    is the j-th kept weight (group j // N) times the activation at its position; products 2N..31 are zero. A
    lane that is off gives zeros.
    """
    q, _, _, mask = unpack_weights(blk[None, :], fmt, sp, 1, BLOCK)
    q = q[0].astype(np.int64)
    w = np.zeros(BLOCK, np.int64)
    x = np.zeros(BLOCK, np.int64)
    if not on:
        return w, x
    if sp == 16 or fmt == WFmt.I16:
        pos = np.arange(BLOCK)
    else:
        pos = np.nonzero(keep)[0]
        assert pos.size == 2 * sp and not q[~keep].any()
        if mask is not None:
            assert np.array_equal(mask[0], keep)
    w[:pos.size] = q[pos]
    x[:pos.size] = xq.astype(np.int64)[pos]
    return w, x


# ---- dequantisation -------------------------------------------------------------------------------------------
def dequant_block(acc, qs, d16, m16, mx, ex, fmt: int, wfrac: int = 0):
    """Per-block term V (docs/numerics.md, sim/mpe_model.py): ((D*acc + M*qs) * m_x) shifted by e_x (floor),
    every step mod 2^64. D, M from the fp16 bits via formats.fp16_to_fixed; I16: D = 2^(24-wfrac), M = 0;
    Q8_0: M = 0. Python ints (exact, wrapped to 64 bits at each step as the RTL is)."""
    if fmt == WFmt.I16:
        D, M = 1 << (24 - wfrac), 0
    else:
        D = int(fp16_to_fixed(np.array([d16], np.uint16))[0])
        M = int(fp16_to_fixed(np.array([m16], np.uint16))[0]) if fmt == WFmt.Q4_1 else 0
    T = wrap64(wrap64(D * int(acc)) + wrap64(M * int(qs)))
    U = wrap64(T * int(mx))
    e = int(ex)
    return wrap64(U << e) if e >= 0 else (U >> min(-e, 63))
