"""cocotb testbench of the dequantisation path (hw/mpe.py ``dequant``, ``fp16_fixed``, ``act_out`` via
``DequantAcc``), run by tests/hw/test_dequant_rtl.py; references: flightllm/formats.py (fp16_to_fixed),
sim/mpe_model.py (a row's ACT output) and tests/hw/mpe_blocks_model.py::dequant_block (per-block term).

- ``fp16``: every one of the 65,536 fp16 bit patterns through the scale decoder (``dfix``, ``mfix``) equals
  formats.fp16_to_fixed (d * 2^24 as an exact integer).
- ``rows``: rows of 1..6 blocks stream in one block per cycle (with bubbles). Per block, V (D*acc + M*qs, times
  m_x, shifted by e_x with floor, mod 2^64) appears exactly 4 cycles later and equals the model; per row the
  ACT result appears 5 cycles after its last block. Model rows: random Q4_1 / Q8_0 / I16 weights packed and
  unpacked with formats.py, int8 activations with QACT scales; acc/qs are the blocks' integer dot products and
  the row result must equal sim/mpe_model.mm (and sfu_model.add of the old ABUF word for MM acc=1). Raw rows:
  any acc/qs, any fp16 pattern, m_x and e_x over their whole ranges (shifts >= 64 and < -63, 64-bit wraps,
  saturation), against the block model and a 64-bit wrapping sum.
"""
from __future__ import annotations

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, Timer

from flightllm.formats import BLOCK, GROUP, fp16_to_fixed, pack_sparse, pack_weights, sat32, unpack_weights
from flightllm.isa import WFmt
from flightllm.sim import mpe_model as MM
from flightllm.sim import sfu_model
from mpe_blocks_model import dequant_block, wrap64
from cocotb_values import u

SEED = int(os.environ.get("BLOCK_SEED", "1"))
NROWS = int(os.environ.get("DEQUANT_ROWS", "160"))


def sval(h):
    v = h.value
    return v.to_signed() if hasattr(v, "to_signed") else int(v)


@cocotb.test()
async def fp16(dut):
    h = np.arange(1 << 16, dtype=np.uint16)
    exp = fp16_to_fixed(h)
    half = 1 << 15
    for i in range(half):
        dut.d16.value = i
        dut.m16.value = i + half
        await Timer(1, unit="ns")
        g = (sval(dut.dfix), sval(dut.mfix))
        assert g == (exp[i], exp[i + half]), f"fp16 {i:#06x} / {i + half:#06x}: {g} != ({exp[i]}, {exp[i + half]})"
    dut._log.info("fp16_fixed: all 65536 patterns equal formats.fp16_to_fixed")


def model_row(rng, fmt, nb):
    """A real row: (blocks [dict of RTL inputs], wfrac, expected y from sim/mpe_model.mm)."""
    C = BLOCK * nb
    wfrac = int(rng.integers(0, 25)) if fmt == WFmt.I16 else 0
    sp = 16
    if fmt == WFmt.I16:
        q = rng.integers(-32768, 32768, (1, C)).astype("<i2")
        raw = q.view(np.uint8).reshape(1, -1)
        d16 = rng.integers(0, 1 << 16, (1, nb)).astype(np.uint16)      # not part of I16: must be ignored
        m16 = rng.integers(0, 1 << 16, (1, nb)).astype(np.uint16)
    else:
        q = rng.integers(0, 16, (1, C)) if fmt == WFmt.Q4_1 else rng.integers(-128, 128, (1, C))
        scale = float(rng.choice([0.001, 0.05, 2.0, 15.9]))
        d16 = np.float16(rng.uniform(-scale, scale, (1, nb))).view(np.uint16)
        m16 = np.float16(rng.uniform(-scale, scale, (1, nb))).view(np.uint16)
        sp = int(rng.choice([16, 8, 4, 2]))
        if sp == 16:
            raw = pack_weights(q, d16, m16 if fmt == WFmt.Q4_1 else None, fmt)
        else:
            keep = np.zeros((C // GROUP, GROUP), bool)
            for g in range(C // GROUP):
                keep[g, rng.choice(GROUP, sp, replace=False)] = True
            raw = pack_sparse(q, keep.reshape(1, C), d16, m16 if fmt == WFmt.Q4_1 else None, fmt, sp)
        if fmt == WFmt.Q8_0:
            m16 = rng.integers(0, 1 << 16, (1, nb)).astype(np.uint16)      # no min in Q8_0: must be ignored
    Q, D, M, mask = unpack_weights(raw, fmt, sp, 1, C, wfrac)
    xq = rng.integers(-127, 128, (1, C)).astype(np.int8)
    xm = rng.integers(1024, 2048, (1, nb)).astype(np.uint16)
    xe = rng.integers(-40, -14, (1, nb)).astype(np.int8)
    y = int(MM.mm(MM.Weights(Q, D, M, mask, fmt), xq, xm, xe)[0, 0])
    qb, xb = Q.reshape(nb, BLOCK).astype(np.int64), xq.reshape(nb, BLOCK).astype(np.int64)
    kept = np.ones_like(qb, bool) if mask is None else mask.reshape(nb, BLOCK)
    acc, qs = (qb * xb).sum(-1), (kept * xb).sum(-1)
    blocks = [dict(acc=int(acc[b]), qs=int(qs[b]), d16=int(d16[0, b]), m16=int(m16[0, b]), mx=int(xm[0, b]),
                   ex=int(xe[0, b])) for b in range(nb)]
    return blocks, wfrac, y


def raw_row(rng, nb):
    """Any values the ports can carry; the expected y is computed from the block model."""
    blocks = []
    for _ in range(nb):
        wide = rng.random() < 0.5
        blocks.append(dict(
            acc=int(rng.integers(-(1 << 31), 1 << 31)) if wide else int(rng.integers(-(1 << 27), 1 << 27)),
            qs=int(rng.integers(-(1 << 15), 1 << 15)) if wide else int(rng.integers(-4096, 4097)),
            d16=int(rng.integers(0, 1 << 16)), m16=int(rng.integers(0, 1 << 16)),
            mx=int(rng.integers(0, 1 << 16)) if wide else int(rng.integers(1024, 2048)),
            ex=int(rng.integers(-128, 128)) if wide else int(rng.integers(-70, 70))))
    return blocks


@cocotb.test()
async def rows(dut):
    rng = np.random.default_rng(SEED)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 0
    for n in ("valid", "first", "last", "acc", "qs", "d16", "m16", "mx", "ex", "q4", "i16", "wfrac", "yacc", "yadd"):
        getattr(dut, n).value = 0
    await FallingEdge(dut.clk)
    # the stream: (cycle inputs, expected V or None) and the expected rows
    stream, exp_rows = [], []
    n_model = 0
    for r in range(NROWS):
        nb = int(rng.integers(1, 7))
        fmt = WFmt(int(rng.integers(0, 3)))
        yacc = int(rng.random() < 0.3)
        yadd = int(rng.choice([int(rng.integers(-(1 << 31), 1 << 31)), int(rng.integers(-(1 << 20), 1 << 20))]))
        if rng.random() < 0.6:
            blocks, wfrac, y = model_row(rng, fmt, nb)
            n_model += 1
        else:
            blocks, wfrac, y = raw_row(rng, nb), int(rng.integers(0, 25)), None
        vs = [dequant_block(b["acc"], b["qs"], b["d16"], b["m16"], b["mx"], b["ex"], fmt, wfrac) for b in blocks]
        if y is None:                                       # 64-bit wrapping row sum, round half up, saturate
            s = wrap64(sum(vs))
            y = int(sat32(np.array([wrap64(s + (1 << 11)) >> 12]))[0])
        if yacc:
            y = int(sfu_model.add(np.array([y], np.int64), np.array([yadd], np.int64))[0])
        exp_rows.append(y)
        for i, (b, v) in enumerate(zip(blocks, vs)):
            while rng.random() < 0.15:
                stream.append((None, None))                 # bubble
            ins = dict(b, valid=1, first=int(i == 0), last=int(i == nb - 1), q4=int(fmt == WFmt.Q4_1),
                       i16=int(fmt == WFmt.I16), wfrac=wfrac, yacc=yacc, yadd=yadd)
            stream.append((ins, v))
    issued = []           # cycle -> expected V (or None)
    got_v, got_y = {}, []
    for c in range(len(stream) + 6):
        if u(dut.v_valid):
            got_v[c] = sval(dut.v)
        if u(dut.y_valid):
            got_y.append((c, sval(dut.y)))
        if c < len(stream):
            ins, v = stream[c]
            if ins is None:
                dut.valid.value = 0
            else:
                for n_, x in ins.items():           # the bench's ports are unsigned vectors
                    getattr(dut, n_).value = x & ((1 << len(getattr(dut, n_))) - 1)
            issued.append(v)
        else:
            dut.valid.value = 0
        await FallingEdge(dut.clk)
    exp_v = {c + 4: v for c, v in enumerate(issued) if v is not None}
    assert set(got_v) == set(exp_v), f"V valid in cycles {sorted(set(got_v) ^ set(exp_v))[:6]} unexpectedly"
    for c, v in exp_v.items():
        assert got_v[c] == v, f"cycle {c - 4}: V = {got_v[c]}, expected {v}"
    last_cycles = [c for c, (ins, _) in enumerate(stream) if ins is not None and ins["last"]]
    assert [c for c, _ in got_y] == [c + 5 for c in last_cycles], "row results not 5 cycles after the last block"
    for r, ((c, y), e) in enumerate(zip(got_y, exp_rows)):
        assert y == e, f"row {r}: y = {y}, expected {e}"
    dut._log.info(f"dequant: {len(exp_v)} blocks V bit-exact at +4, {len(exp_rows)} rows ({n_model} vs "
                  f"sim/mpe_model.mm) y bit-exact at +5")
