"""Cycle parity at addresses and strides off the beat (sim's 64 bytes; PYNQ-Z2's 16, a beat every 2 cycles):
single-instruction programs (LD I32/Q8_0/QACT, LD with idx (rows and index words at offsets), ST I32 merged/per-row,
ST I16 contiguous/scattered, MM/MV merged and in row segments) on the functional simulator and the RTL, sweeping
the base's offset in the beat, compared cycle for cycle (sim/cycles.py: the lead-byte drop, per-row beats of ST I32,
the MM weights' beats and groups at an offset, row segments, the index words' beats)."""
from __future__ import annotations

import numpy as np
import pytest

from flightllm import boards
from flightllm.formats import row_bytes
from flightllm.isa import LdFmt, Op, StFmt, SysOp, WFmt, assemble, make

pytestmark = pytest.mark.rtl

from rtl_available import HAVE, need  # noqa: E402,F401

MEM = 1 << 20
PROG, DATA, IDX = 0x1000, 0x10000, 0x8000


def _ld(fmt, o, rows, cols, extra, **kw):
    nb = {LdFmt.I32: 4 * cols, LdFmt.Q8_0: row_bytes(1, cols), LdFmt.QACT: cols // 32 * 36}[fmt]
    return make(Op.LD, fmt=fmt, dst=0, addr=DATA + o, rows=rows, cols=cols, src_stride=nb + extra,
                dst_stride=-(-cols // 32) * 32, **kw)


def _cases():
    out = []
    for o in range(0, 64, 4):
        for rows, cols, extra in ((1, 37, 0), (1, 160, 0), (3, 20, 0), (3, 64, 12)):
            out.append(("ld_i32", _ld(LdFmt.I32, o, rows, cols, extra)))
        for rows in (1, 3, 17, 33):                            # index words at an offset, spanning 1-3 beats
            out.append(("ld_i32_idx", _ld(LdFmt.I32, o, rows, 40, 4, idx=1, idx_addr=IDX + o)))
        out.append(("ld_qact_idx", _ld(LdFmt.QACT, o + 1, 5, 64, 4, idx=1, idx_addr=IDX + 60 - o)))
        out.append(("ld_qact_idx", _ld(LdFmt.QACT, o + 3, 3, 160, 0, idx=1, idx_addr=IDX + o)))
        for rows, cols, dstr, sstr in ((1, 1, 4, 1), (1, 17, 68, 17), (2, 16, 64, 16), (2, 16, 68, 16),
                                       (3, 20, 88, 20), (3, 20, 80, 21)):
            out.append(("st_i32", make(Op.ST, fmt=StFmt.I32, src=0, addr=DATA + o, rows=rows, cols=cols,
                                       src_stride=sstr, dst_stride=dstr, elem_stride=4)))
    for o in range(0, 64, 3):
        for rows, cols, extra in ((1, 32, 0), (2, 64, 0), (3, 32, 5)):
            out.append(("ld_q8", _ld(LdFmt.Q8_0, o, rows, cols, extra)))
            out.append(("ld_qact", _ld(LdFmt.QACT, o, rows, cols, extra)))
        out.append(("ld_q8_idx", _ld(LdFmt.Q8_0, o, 3, 64, 2, idx=1, idx_addr=IDX)))
        for rows, cols, es, extra in ((1, 33, 2, 0), (2, 16, 2, 6), (3, 8, 6, 2)):
            out.append(("st_i16", make(Op.ST, fmt=StFmt.I16, src=0, addr=DATA + (o & ~1), rows=rows, cols=cols,
                                       src_stride=cols, dst_stride=cols * es + extra, elem_stride=es, shift=3)))
        for fmt, sp, rows, cols, T, extra in ((WFmt.Q8_0, 16, 1, 32, 1, 0), (WFmt.Q8_0, 16, 8, 64, 1, 0),
                                              (WFmt.Q8_0, 16, 40, 96, 3, 0), (WFmt.Q4_1, 16, 16, 64, 2, 0),
                                              (WFmt.Q4_1, 4, 33, 128, 1, 0), (WFmt.I16, 16, 4, 64, 1, 0),
                                              (WFmt.I16, 16, 4, 64, 2, 2), (WFmt.Q8_0, 8, 64, 128, 4, 0),
                                              (WFmt.Q8_0, 8, 56, 128, 1, 0), (WFmt.Q4_1, 16, 48, 128, 1, 176),
                                              (WFmt.Q8_0, 16, 18, 128, 1, 120), (WFmt.Q4_1, 4, 10, 64, 3, 100),
                                              # row segments, 2 tokens: a beat-bound group, then the row gaps
                                              (WFmt.Q4_1, 4, 3, 32, 2, 8), (WFmt.Q4_1, 2, 4, 160, 2, 12),
                                              (WFmt.Q8_0, 4, 4, 32, 2, 8)):
            rb = row_bytes(int(fmt), cols, sp)
            out.append(("mm", make(Op.MV if T == 1 else Op.MM, fmt=fmt, sp_n=sp, waddr=DATA + o, wstride=rb + extra,
                                   rows=rows, cols=cols, tokens=T, xaddr=0, xstride=cols, yaddr=8192,
                                   ystride=rows, wfrac=8)))
    return out


@need
@pytest.mark.parametrize("board", ["sim", "pynq-z2", "kv260"])     # kv260: a 16-byte beat every cycle
def test_unaligned_cycles_exact(board):
    from flightllm.sim.fsim import FunctionalSim
    from flightllm.sim.rtl_device import RtlDevice

    b = boards.load(board)
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, MEM).astype(np.uint8)
    img[DATA + 1: DATA + 0x20000: 2] &= 0x3B                  # finite fp16 scales wherever a block starts
    img[IDX: IDX + 256] = np.array([3, 0, 7, 2, 5, 1, 4, 6] * 8, np.uint32).view(np.uint8)
    fs, rd = FunctionalSim(b, MEM), RtlDevice(b, MEM)
    bad = []
    for kind, ins in _cases():
        w = assemble([ins, make(Op.SYS, fn=SysOp.END)]).view(np.uint8)
        got = []
        for dev in (fs, rd):
            dev.mem[:] = img
            dev.mem[PROG: PROG + w.size] = w
            got.append(dev.run(PROG))
        if got[1].cycles != got[0].cycles:
            bad.append((kind, got[1].cycles - got[0].cycles, ins.f))
        assert np.array_equal(fs.mem, rd.mem), (kind, ins.f)
    assert not bad, f"{len(bad)} cycle mismatches (rtl - fsim), first {bad[:4]}"
