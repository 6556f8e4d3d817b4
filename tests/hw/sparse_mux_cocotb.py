"""cocotb testbench of one lane's weight decode + N:16 sparse MUX (hw/mpe.py ``lane_select`` via ``LaneSelect``),
run by tests/hw/test_sparse_mux_rtl.py; reference: tests/hw/mpe_blocks_model.py::lane_select, built on
flightllm/formats.py's unpack_weights.

For every engine mode (params.MODES: Q4_1 and Q8_0 with N in {16, 8, 4, 2}, I16 dense) random blocks are packed
with formats.pack_weights / pack_sparse (random kept positions), cut into body and index bytes as the engine
cuts them from its window (the bytes past the block are random: a neighbour block's), and driven with 32
random activations. Each of the 32 products' (weight, activation) must equal the model's pair: the j-th stored
weight and, N:16, the activation its index selects within group j // N; products past 2N and lanes that are off
give zeros. The lane's dot product and kept-activation sum also equal the dense ones from unpack_weights.
"""
from __future__ import annotations

import os

import cocotb
import numpy as np
from cocotb.triggers import Timer

from flightllm.formats import BLOCK, GROUP, block_bytes, pack_sparse, pack_weights, unpack_weights
from flightllm.hw import params as P
from flightllm.hw.mpe import WK_I16, WK_Q4D, WK_Q4S, WK_Q8, W_BITS, X_BITS
from flightllm.isa import WFmt
from mpe_blocks_model import block_fields, lane_select

SEED = int(os.environ.get("BLOCK_SEED", "1"))
N = int(os.environ.get("SPARSE_N", "80"))        # blocks per mode


def sv(h, n, bits):
    """A flattened port of n signed elements -> list of ints."""
    v = h.value.to_unsigned()
    out = []
    for i in range(n):
        e = (v >> (bits * i)) & ((1 << bits) - 1)
        out.append(e - (1 << bits) if e >> (bits - 1) else e)
    return out


def controls(fmt, sp):
    """The mode decode of hw/mpe.py (Mpe.elaborate): weight kind, N, index mode."""
    kind = WK_I16 if fmt == WFmt.I16 else WK_Q8 if fmt == WFmt.Q8_0 else WK_Q4D if sp == 16 else WK_Q4S
    return kind, sp, int(sp != 16 and fmt != WFmt.I16)


def rand_block(rng, fmt, sp):
    """One device block (uint8) and its kept mask (None when dense)."""
    if fmt == WFmt.I16:
        q = rng.integers(-32768, 32768, (1, BLOCK)).astype("<i2")
        return q.view(np.uint8)[0], None
    q = rng.integers(0, 16, (1, BLOCK)) if fmt == WFmt.Q4_1 else rng.integers(-128, 128, (1, BLOCK))
    d16 = rng.integers(0, 1 << 16, (1, 1)).astype(np.uint16)
    m16 = rng.integers(0, 1 << 16, (1, 1)).astype(np.uint16) if fmt == WFmt.Q4_1 else None
    if sp == 16:
        return pack_weights(q, d16, m16, fmt)[0], None
    keep = np.zeros((2, GROUP), bool)
    for g in range(2):
        keep[g, rng.choice(GROUP, sp, replace=False)] = True
    keep = keep.reshape(BLOCK)
    return pack_sparse(q, keep[None, :], d16, m16, fmt, sp)[0], keep


@cocotb.test()
async def lanes(dut):
    rng = np.random.default_rng(SEED)
    total = 0
    for fmt, sp in P.MODES:
        kind, nsp, sparse = controls(fmt, sp)
        dut.wk.value, dut.nsp.value, dut.sparse.value = kind, nsp, sparse
        bb = block_bytes(fmt, sp)
        for k in range(N):
            blk, keep = rand_block(rng, fmt, sp)
            assert blk.size == bb
            body, idx = block_fields(blk, fmt, sp)
            junk = rng.integers(0, 256, 64 + 16, dtype=np.uint8)          # a neighbour block's bytes
            body_w = np.concatenate([body, junk[: 64 - body.size]])
            idx_w = np.concatenate([idx, junk[64: 64 + 16 - idx.size]])
            xq = rng.integers(-128, 128, BLOCK).astype(np.int8)
            on = bool(rng.random() < 0.9)
            dut.body.value = int.from_bytes(body_w.tobytes(), "little")
            dut.idx.value = int.from_bytes(idx_w.tobytes(), "little")
            dut.qx.value = int.from_bytes(xq.tobytes(), "little")
            dut.on.value = int(on)
            await Timer(1, unit="ns")
            w, x = sv(dut.w, BLOCK, W_BITS), sv(dut.x, BLOCK, X_BITS)
            ew, ex = lane_select(blk, fmt, sp, xq, keep, on)
            ctx = f"{WFmt(fmt).name} {sp}:16 block {k} (on={on})"
            assert w == ew.tolist(), f"{ctx}: weights {w} != {ew.tolist()}"
            assert x == ex.tolist(), f"{ctx}: activations {x} != {ex.tolist()}"
            if on:                             # the lane's results equal the dense view of formats.unpack_weights
                q = unpack_weights(blk[None, :], fmt, sp, 1, BLOCK)[0][0].astype(np.int64)
                assert int(np.dot(w, x)) == int(np.dot(q, xq.astype(np.int64))), ctx
                kept = np.ones(BLOCK, bool) if keep is None else keep
                assert sum(x) == int(xq.astype(np.int64)[kept].sum()), ctx
            total += 1
    dut._log.info(f"sparse MUX: {total} blocks over {len(P.MODES)} modes, 32 (w, x) pairs each equal the model")
