"""cocotb testbench of one lane's DSP cascade (hw/dsp_chain.py = hw/mpe.py::dsp_cascade), run by
tests/hw/test_chain_rtl.py; reference: tests/hw/mpe_blocks_model.py::chain.

One vector of 2L (weight, activation) products enters per cycle, back to back. Checked, for every vector:
- ``acc`` (the dot product) and ``qs`` (the activation sum) leave the last stage exactly L + 1 cycles after the
  inputs (the P register of stage L-1);
- the stage skew: stage l's P register holds the partial dot product of products 0..2l+1 exactly l + 2 cycles
  after the inputs (stage l sees its inputs delayed l cycles, M at +l+1, P at +l+2).
Weights: Q4_1 nibbles (0..15), int8, int16 (the I16 KV format) and sparse vectors (zeroed products); activations
int8 including -128; the extremes of every kind so the 32-bit accumulator's range is exercised.
"""
from __future__ import annotations

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge

from mpe_blocks_model import chain
from cocotb_values import u, s, pack

L = int(os.environ["CHAIN_L"])
SEED = int(os.environ.get("BLOCK_SEED", "1"))
N = int(os.environ.get("CHAIN_N", "400"))
W_BITS, X_BITS = 17, 8


def vectors(rng, n):
    P = 2 * L
    kinds = rng.integers(0, 6, n)
    w = np.zeros((n, P), np.int64)
    x = rng.integers(-128, 128, (n, P))
    for k in range(n):
        kd = kinds[k]
        if kd == 0:
            w[k] = rng.integers(0, 16, P)                        # Q4_1 nibbles
        elif kd == 1:
            w[k] = rng.integers(-128, 128, P)                    # int8
        elif kd == 2:
            w[k] = rng.integers(-32768, 32768, P)                # int16 (I16)
        elif kd == 3:                                            # sparse: the products past 2N are zeroed
            nk = 2 * int(rng.choice([2, 4, 8]))
            w[k, :nk] = rng.integers(-128, 128, nk)
            x[k, nk:] = 0
        elif kd == 4:                                            # extremes: most negative / positive sums
            w[k] = rng.choice([-32768, 32767, 15, -128, 127], P)
            x[k] = rng.choice([-128, 127], P)
        else:
            w[k] = -32768
            x[k] = -128
    return w, x


@cocotb.test()
async def cascade(dut):
    rng = np.random.default_rng(SEED)
    w, x = vectors(rng, N)
    acc, qs, partial, qpart = chain(w, x)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 0
    dut.w.value = 0
    dut.x.value = 0
    # the stage P registers inside the cascade (hw/mpe.py names them ch_p<l>, ch_pq<l>)
    stage_p = [getattr(dut.dut, f"ch_p{l}") for l in range(L)]
    stage_q = [getattr(dut.dut, f"ch_pq{l}") for l in range(L)]
    await FallingEdge(dut.clk)
    # let the zero inputs flush the cascade
    for _ in range(L + 2):
        await FallingEdge(dut.clk)
    n_stage = 0
    for c in range(N + L + 2):
        # outputs of this cycle (after c rising edges since vector 0 was driven)
        k = c - (L + 1)
        if 0 <= k < N:
            got = (s(dut.acc), s(dut.qs))
            assert got == (acc[k], qs[k]), f"vector {k}: (acc, qs) = {got}, expected ({acc[k]}, {qs[k]})"
        for l in range(L):
            kk = c - (l + 2)
            if 0 <= kk < N:
                g = (s(stage_p[l]), s(stage_q[l]))
                assert g == (partial[kk, l], qpart[kk, l]), \
                    f"stage {l}, vector {kk}: P = {g}, expected ({partial[kk, l]}, {qpart[kk, l]})"
                n_stage += 1
        if c < N:
            dut.w.value = pack(w[c], W_BITS)
            dut.x.value = pack(x[c], X_BITS)
        else:
            dut.w.value = 0
            dut.x.value = 0
        await FallingEdge(dut.clk)
    assert n_stage == N * L
    dut._log.info(f"chain L={L}: {N} vectors, acc/qs at +{L + 1} cycles and {n_stage} stage P values bit-exact "
                  f"(acc range {acc.min()}..{acc.max()})")
