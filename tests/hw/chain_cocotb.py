"""cocotb testbench of one DSP chain (hw/dsp_chain.py = hw/mpe.py::dsp_chain), run by tests/hw/test_chain_rtl.py;
reference: tests/hw/mpe_blocks_model.py::chain.

One vector of L (operand, activation) stage inputs enters per cycle, back to back. Checked, for every vector:
- ``even``, ``odd`` and ``qs`` leave the chain exactly SEG + 2 cycles after the inputs. Packed vectors (``pair``):
  the operand is w_odd * 2^18 + w_even and ``even`` / ``odd`` must equal the two rows' dot products computed from
  the weights themselves (so the low-field window and the split are checked); unpacked: ``even`` the dot product;
- the stage skew: stage i's P register (cascade i // SEG, stage l = i % SEG) holds its cascade's running sum
  exactly l + 2 cycles after the inputs;
- the 4 reduction taps (``tp``: run r's last stage P, ``tq``: its activation sum) at SEG + 2 cycles, with and
  without ``cut`` (each cascade cut in the middle: 4 independent dot products of 4, as 4 sparse 2:16 blocks).
Vectors: packed Q4_1 nibbles (0..15) and packed int8 (Q8_0) including the extremes that fill the low field's
window ((-128) x (-128) everywhere: 8 x 16384 = 131072 per cascade; -128 x 127 everywhere), unpacked int8 /
int16 (I16) / sparse (zeroed stages) vectors and their extremes, 2 or 4 sparse blocks side by side (the latter
cut); activations int8 including -128.
"""
from __future__ import annotations

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge

from mpe_blocks_model import chain
from cocotb_values import s, u, pack

L = int(os.environ["CHAIN_L"])
SEG = 8
SEED = int(os.environ.get("BLOCK_SEED", "1"))
N = int(os.environ.get("CHAIN_N", "400"))
A_BITS, X_BITS = 27, 8


def vectors(rng, n):
    kinds = rng.integers(0, 11, n)
    we = np.zeros((n, L), np.int64)
    wo = np.zeros((n, L), np.int64)
    x = rng.integers(-128, 128, (n, L))
    pair = np.zeros(n, bool)
    cut = np.zeros(n, bool)
    for k in range(n):
        kd = kinds[k]
        if kd == 0:                                              # packed Q4_1 nibbles
            pair[k] = True
            we[k], wo[k] = rng.integers(0, 16, L), rng.integers(0, 16, L)
        elif kd == 1:                                            # packed int8 (Q8_0)
            pair[k] = True
            we[k], wo[k] = rng.integers(-128, 128, L), rng.integers(-128, 128, L)
        elif kd == 2:                                            # packed extremes
            pair[k] = True
            we[k] = rng.choice([-128, 127, 15, 0], L)
            wo[k] = rng.choice([-128, 127, 15, 0], L)
            x[k] = rng.choice([-128, 127], L)
        elif kd == 3:                                            # the low field's window edges
            pair[k] = True
            we[k], wo[k] = rng.choice([-128, 127]), rng.choice([-128, 127])
            x[k] = -128 if rng.random() < 0.5 else 127
        elif kd == 4:
            we[k] = rng.integers(-128, 128, L)                   # int8, unpacked
        elif kd == 5:
            we[k] = rng.integers(-32768, 32768, L)               # int16 (I16)
        elif kd == 6:                                            # sparse: the stages past 2N are zeroed
            nk = 2 * int(rng.choice([1, 2, 4, 8]))
            we[k, :nk] = rng.integers(-128, 128, nk)
            x[k, nk:] = 0
        elif kd == 7:                                            # unpacked extremes
            we[k] = rng.choice([-32768, 32767, 15, -128, 127], L)
            x[k] = rng.choice([-128, 127], L)
        elif kd == 8:
            we[k] = -32768
            x[k] = -128
        else:                                                    # 4 (cut) or 2 sparse blocks of 2N products
            nb = 4 if kd == 9 else 2
            run = L // nb
            nk = 4 if nb == 4 else int(rng.choice([2, 4, 8]))
            we[k] = rng.integers(-128, 128, L) if rng.random() < 0.8 else rng.choice([-128, 127], L)
            x[k] = rng.integers(-128, 128, L)
            keep = (np.arange(L) % run) < nk
            we[k] *= keep
            x[k] *= keep
            cut[k] = nb == 4
    return we, wo, x, pair, cut


@cocotb.test()
async def cascade(dut):
    rng = np.random.default_rng(SEED)
    we, wo, x, pair, cut = vectors(rng, N)
    # the window edges, first: all (-128)(-128) and all (-128)(127) in both rows
    for i, (w_, x_) in enumerate([(-128, -128), (-128, 127), (127, -128), (127, 127)]):
        we[i], wo[i], x[i], pair[i] = w_, w_, x_, True
    even, odd, qs, partial, a, tp, tq = chain(we, wo, x, pair, SEG, cut, 4)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 0
    dut.a.value = 0
    dut.x.value = 0
    dut.pair.value = 0
    dut.cut.value = 0
    # the stage P registers inside the chain (hw/mpe.py names them ch_p<i>)
    stage_p = [getattr(dut.dut, f"ch_p{i}") for i in range(L)]
    await FallingEdge(dut.clk)
    for _ in range(L + 4):
        await FallingEdge(dut.clk)
    n_stage = 0
    n_tap = 0
    lat = SEG + 2
    for c in range(N + lat + 1):
        k = c - lat
        if 0 <= k < N:
            got = (s(dut.even), s(dut.qs))
            if not cut[k]:     # cut: the taps are the results (even sums the cascades' second halves)
                assert got == (even[k], qs[k]), f"vector {k} (pair {pair[k]}): (even, qs) = {got}, expected ({even[k]}, {qs[k]})"
            tpv, tqv = u(dut.tp), u(dut.tq)
            for r in range(4):
                gp = (tpv >> (32 * r)) & 0xFFFFFFFF
                gp -= (gp >> 31) << 32
                gq = (tqv >> (16 * r)) & 0xFFFF
                gq -= (gq >> 15) << 16
                assert (gp, gq) == (tp[k, r], tq[k, r]), f"vector {k} (cut {cut[k]}) tap {r}: ({gp}, {gq}), " \
                    f"expected ({tp[k, r]}, {tq[k, r]})"
                n_tap += 1
            if pair[k]:
                assert s(dut.odd) == odd[k], f"vector {k}: odd = {s(dut.odd)}, expected {odd[k]}"
        for i in range(L):
            kk = c - (i % SEG + 2)
            if 0 <= kk < N:
                g = s(stage_p[i])
                assert g == partial[kk, i], f"stage {i}, vector {kk}: P = {g}, expected {partial[kk, i]}"
                n_stage += 1
        if c < N:
            dut.a.value = pack(a[c], A_BITS)
            dut.x.value = pack(x[c], X_BITS)
            dut.pair.value = int(pair[c])
            dut.cut.value = int(cut[c])
        else:
            dut.a.value = 0
            dut.x.value = 0
            dut.pair.value = 0
            dut.cut.value = 0
        await FallingEdge(dut.clk)
    assert n_stage == N * L and n_tap == 4 * N
    dut._log.info(f"chain L={L}: {N} vectors ({int(pair.sum())} packed, {int(cut.sum())} cut), even/odd/qs/taps at "
                  f"+{lat} cycles and "
                  f"{n_stage} stage P values bit-exact (even {even.min()}..{even.max()}, odd {odd.min()}..{odd.max()})")
