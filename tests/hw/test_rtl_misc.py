"""MISC (SFU) instructions on the RTL engine (hw/top.py + hw/sfu.py) against the functional simulator: one
program of LD I32 -> every MISC function (ROPE, RMSNORM, SOFTMAX causal with n_pos, SILU_MUL, ADD, COPY, ARGMAX,
QUANT consumed by an MV), LD Q8_0 (dequantising, strided rows) -> ST I32, compared bit for bit (the whole device memory) and cycle for cycle."""
from __future__ import annotations

import numpy as np
import pytest

from flightllm import boards
from flightllm.compiler.image import rope_table
from flightllm.errors import DeviceError
from flightllm.formats import ACT_FRAC, GAMMA_FRAC, pack_weights
from flightllm.isa import ErrCode, LdFmt, MiscOp, Op, StFmt, SysOp, WFmt, assemble, make

pytestmark = pytest.mark.rtl

try:
    from flightllm.sim.rtl_device import verilator_bin
    verilator_bin()
    HAVE = True
except Exception:   # pragma: no cover
    HAVE = False

need = pytest.mark.skipif(not HAVE, reason="Verilator not installed")

MEM = 1 << 20
PROG, DATA, OUT = 0x1000, 0x10000, 0x80000


def _program(rng):
    """Inputs in memory and the program; ABUF word areas: x 0.., y 8192.., gamma 16384, rope 20000, out 30000.."""
    T, H, hd, F = 3, 96, 32, 80
    mem = np.zeros(MEM, np.uint8)
    x = np.round(rng.standard_normal((T, H)) * (1 << ACT_FRAC)).astype(np.int32)
    x[:, 5] *= 9
    y = np.round(rng.standard_normal((T, H)) * (1 << ACT_FRAC)).astype(np.int32)
    gamma = np.round(rng.uniform(0.5, 1.5, H) * (1 << GAMMA_FRAC)).astype(np.int32)
    rope = rope_table(8, hd, 10000.0).astype(np.int32)                       # rows p = [cos | sin]
    s = np.round(rng.standard_normal((T, 12)) * (1 << ACT_FRAC) * 2).astype(np.int32)
    blobs = {}
    off = DATA
    for name, a in (("x", x), ("y", y), ("gamma", gamma), ("rope", rope), ("s", s)):
        b = np.ascontiguousarray(a).view(np.uint8).ravel()
        mem[off: off + b.size] = b
        blobs[name] = off
        off += -(-b.size // 64) * 64
    # Q8_0 weights for the MV that consumes the QUANT result
    wq = rng.integers(-127, 128, (40, H))
    wd = rng.uniform(0.002, 0.03, (40, H // 32)).astype(np.float16)
    raw = pack_weights(wq, wd.view(np.uint16), None, WFmt.Q8_0)
    waddr = off
    mem[waddr: waddr + raw.size] = raw.ravel()
    off += -(-raw.size // 64) * 64
    # a Q8_0 matrix (embedding rows) dequantised by LD Q8_0: rows 70 bytes apart (not contiguous), scales with
    # subnormal, tiny, negative and huge (saturating) fp16 values
    eq = rng.integers(-128, 128, (3, 64))
    ed = rng.uniform(-0.05, 0.05, (3, 2)).astype(np.float16)
    ed[0, 0], ed[1, 1], ed[2, 0] = np.float16(3e-7), np.float16(60000.0), np.float16(-2.0)
    eraw = pack_weights(eq, ed.view(np.uint16), None, WFmt.Q8_0)
    eaddr = off
    for r in range(3):
        mem[eaddr + 70 * r: eaddr + 70 * r + 68] = eraw[r]
    pos = 4
    ld = lambda dst, addr, rows, cols, ps=0: make(Op.LD, fmt=LdFmt.I32, dst=dst, addr=addr, rows=rows, cols=cols,  # noqa: E731
                                                   src_stride=cols * 4, dst_stride=cols, pos_stride=ps)
    st = lambda src, addr, rows, cols: make(Op.ST, fmt=StFmt.I32, src=src, addr=addr, rows=rows, cols=cols,  # noqa: E731
                                            src_stride=cols, dst_stride=cols * 4, elem_stride=4)
    M = lambda fn, **kw: make(Op.MISC, fn=fn, **kw)                                               # noqa: E731
    prog = [
        ld(0, blobs["x"], T, H), ld(8192, blobs["y"], T, H), ld(16384, blobs["gamma"], 1, H),
        ld(20000, blobs["rope"], T, hd, hd * 4),      # rows POS.. of the table (pos_stride)
        ld(24000, blobs["s"], T, 12),
        M(MiscOp.COPY, src=0, dst=30000, n=H, rows=T, src_stride=H, dst_stride=H),
        M(MiscOp.ROPE, src=30000, src2=20000, dst=30000, n=H, rows=T, src_stride=H, src2_stride=hd, dst_stride=H,
          imm=hd),
        M(MiscOp.RMSNORM, src=0, src2=16384, dst=31000, n=H, rows=T, src_stride=H, dst_stride=H, imm=20),
        # causal softmax over n = 1 + POS (n_pos), row width n + T - 1, strided rows
        M(MiscOp.SOFTMAX, n_pos=1, causal=1, src=24000, dst=32000, n=1, rows=T, src_stride=12, dst_stride=12,
          imm=11819),
        M(MiscOp.SILU_MUL, src=0, src2=8192, dst=33000, n=F, rows=T, src_stride=H, src2_stride=H, dst_stride=F),
        M(MiscOp.ADD, src=0, src2=8192, dst=8192, n=H, rows=T, src_stride=H, src2_stride=H, dst_stride=H),
        M(MiscOp.ARGMAX, src=0, dst=34000, n=H, rows=T, src_stride=H, dst_stride=1),
        M(MiscOp.QUANT, src=31000, dst=4096, n=H, rows=T, src_stride=H, dst_stride=128, imm=ACT_FRAC),
        make(Op.MM, fmt=WFmt.Q8_0, sp_n=16, waddr=waddr, wstride=raw.shape[1], rows=40, cols=H, tokens=T,
             xaddr=4096, xstride=128, yaddr=35000, ystride=40),
        st(30000, OUT, T, H), st(31000, OUT + 0x1000, T, H), st(32000, OUT + 0x2000, T, 12),
        st(33000, OUT + 0x3000, T, F), st(8192, OUT + 0x4000, T, H), st(34000, OUT + 0x5000, 1, T),
        st(35000, OUT + 0x6000, T, 40),
        make(Op.LD, fmt=LdFmt.Q8_0, dst=36000, addr=eaddr, rows=3, cols=64, src_stride=70, dst_stride=80),
        make(Op.LD, fmt=LdFmt.Q8_0, dst=36240, addr=eaddr + 70, rows=1, cols=64, src_stride=70, dst_stride=64),
        make(Op.ST, fmt=StFmt.I32, src=36000, addr=OUT + 0x7000, rows=1, cols=304, src_stride=304,
             dst_stride=304 * 4, elem_stride=4),
        make(Op.SYS, fn=SysOp.END),
    ]
    w = assemble(prog).view(np.uint8)
    mem[PROG: PROG + w.size] = w
    return mem, pos


@need
def test_misc_program_bit_exact_and_cycles():
    from flightllm.sim.fsim import FunctionalSim
    from flightllm.sim.rtl_device import RtlDevice

    b = boards.load("sim")
    mem, pos = _program(np.random.default_rng(7))
    fs = FunctionalSim(b, MEM)
    fs.mem[:] = mem
    ref = fs.run(PROG, pos=pos)
    dev = RtlDevice(b, MEM)
    dev.mem[:] = mem
    got = dev.run(PROG, pos=pos)
    out = slice(OUT, OUT + 0x8000)
    assert np.any(fs.mem[out] != 0)
    bad = np.flatnonzero(dev.mem != fs.mem)
    assert bad.size == 0, f"{bad.size} bytes differ, first at {bad[:8]}"
    assert got.instructions == ref.instructions
    for k in ("SFU", "MM", "ST", "SYS"):                # every MISC instruction cycle-exact (sim/cycles.py::misc)
        assert got.by_class.get(k) == ref.by_class[k], (k, got.by_class, ref.by_class)
    # LD: exact except LD Q8_0 with non-contiguous rows (the first Q8_0 load, 3 rows 70 bytes apart: +4) or a base
    # not 64-byte aligned (the second: +1), which sim/cycles.py::transfer does not describe yet (docs/rtl.md)
    assert got.by_class["LD"] == ref.by_class["LD"] + 5, (got.by_class, ref.by_class)


@need
@pytest.mark.parametrize("kw", [dict(fn=MiscOp.COPY, src=0, dst=262144 - 10, n=16, rows=1),          # dst past ABUF
                                dict(fn=MiscOp.ADD, src=0, src2=262144 - 100, dst=0, n=16, rows=8, src2_stride=16),
                                dict(fn=MiscOp.QUANT, src=0, dst=262144 - 32, n=64, rows=1),        # QBUF
                                dict(fn=MiscOp.COPY, src=0, dst=0, n=0, rows=1)])                   # empty
def test_misc_bounds(kw):
    from flightllm.sim.fsim import FunctionalSim
    from flightllm.sim.rtl_device import RtlDevice

    b = boards.load("sim")
    prog = [make(Op.SYS, fn=SysOp.NOP), make(Op.MISC, **kw), make(Op.SYS, fn=SysOp.END)]
    w = assemble(prog).view(np.uint8)
    codes = []
    for dev in (FunctionalSim(b, 1 << 16), RtlDevice(b, 1 << 16)):
        dev.mem[4096: 4096 + w.size] = w
        with pytest.raises(DeviceError) as e:
            dev.run(4096)
        codes.append((e.value.code, e.value.pc))
    assert codes[0] == codes[1] == (ErrCode.BUF_OVERFLOW, 1)
