"""MISC (SFU) instructions on the RTL engine (hw/top.py + hw/sfu.py) against the functional simulator: one
program of LD I32 -> every MISC function (ROPE, RMSNORM, SOFTMAX causal with n_pos, SILU_MUL, ADD, COPY, ARGMAX,
QUANT consumed by an MV), LD Q8_0 (dequantising, strided rows) -> ST I32, compared bit for bit (the whole device memory) and cycle for cycle."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flightllm import boards
from flightllm.compiler.image import rope_table
from flightllm.errors import DeviceError
from flightllm.formats import ACT_FRAC, GAMMA_FRAC, pack_weights
from flightllm.isa import ErrCode, LdFmt, MiscOp, Op, StFmt, SysOp, WFmt, assemble, make

pytestmark = pytest.mark.rtl

from rtl_available import HAVE, need  # noqa: E402,F401

MEM = 1 << 20
# tests/boards/narrow-4ch.toml: an 8-lane SFU over 8 ABUF banks behind a 4-word port (the SFU wider than a beat, as
# the U280's 32 lanes behind its 16-word port)
NARROW4 = pytest.param(str(Path(__file__).resolve().parents[1] / "boards" / "narrow-4ch.toml"), id="narrow-4ch")
PROG, DATA, OUT = 0x1000, 0x10000, 0x80000


def _program(rng):
    """Inputs in memory and the program; ABUF word areas: x 0.., y 2048.., gamma 4096, rope 5000, out 7000..13303
    (inside PYNQ-Z2's 32K-word ABUF: every board runs it on its own engine build)"""
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
        ld(0, blobs["x"], T, H), ld(2048, blobs["y"], T, H), ld(4096, blobs["gamma"], 1, H),
        ld(5000, blobs["rope"], T, hd, hd * 4),      # rows POS.. of the table (pos_stride)
        ld(6000, blobs["s"], T, 12),
        M(MiscOp.COPY, src=0, dst=7000, n=H, rows=T, src_stride=H, dst_stride=H),
        M(MiscOp.ROPE, src=7000, src2=5000, dst=7000, n=H, rows=T, src_stride=H, src2_stride=hd, dst_stride=H,
          imm=hd),
        M(MiscOp.RMSNORM, src=0, src2=4096, dst=8000, n=H, rows=T, src_stride=H, dst_stride=H, imm=20),
        # causal softmax over n = 1 + POS (n_pos), row width n + T - 1, strided rows
        M(MiscOp.SOFTMAX, n_pos=1, causal=1, src=6000, dst=9000, n=1, rows=T, src_stride=12, dst_stride=12,
          imm=11819),
        M(MiscOp.SILU_MUL, src=0, src2=2048, dst=10000, n=F, rows=T, src_stride=H, src2_stride=H, dst_stride=F),
        M(MiscOp.ADD, src=0, src2=2048, dst=2048, n=H, rows=T, src_stride=H, src2_stride=H, dst_stride=H),
        M(MiscOp.ARGMAX, src=0, dst=11000, n=H, rows=T, src_stride=H, dst_stride=1),
        M(MiscOp.QUANT, src=8000, dst=4096, n=H, rows=T, src_stride=H, dst_stride=128, imm=ACT_FRAC),
        make(Op.MM, fmt=WFmt.Q8_0, sp_n=16, waddr=waddr, wstride=raw.shape[1], rows=40, cols=H, tokens=T,
             xaddr=4096, xstride=128, yaddr=12000, ystride=40),
        st(7000, OUT, T, H), st(8000, OUT + 0x1000, T, H), st(9000, OUT + 0x2000, T, 12),
        st(10000, OUT + 0x3000, T, F), st(2048, OUT + 0x4000, T, H), st(11000, OUT + 0x5000, 1, T),
        st(12000, OUT + 0x6000, T, 40),
        make(Op.LD, fmt=LdFmt.Q8_0, dst=13000, addr=eaddr, rows=3, cols=64, src_stride=70, dst_stride=80),
        make(Op.LD, fmt=LdFmt.Q8_0, dst=13240, addr=eaddr + 70, rows=1, cols=64, src_stride=70, dst_stride=64),
        make(Op.ST, fmt=StFmt.I32, src=13000, addr=OUT + 0x7000, rows=1, cols=304, src_stride=304,
             dst_stride=304 * 4, elem_stride=4),
        make(Op.SYS, fn=SysOp.END),
    ]
    w = assemble(prog).view(np.uint8)
    mem[PROG: PROG + w.size] = w
    return mem, pos


@need
@pytest.mark.parametrize("board", ["sim", "pynq-z2", "kv260", NARROW4])   # 16-byte ports, 3-beat fetch; SFU 2 / 4 / 8
def test_misc_program_bit_exact_and_cycles(board):
    from flightllm.sim.fsim import FunctionalSim
    from flightllm.sim.rtl_device import RtlDevice

    b = boards.load(board)
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
    # every instruction cycle-exact (sim/cycles.py's beat model at Board.beat_period: 1 on sim and KV260, 2 on
    # PYNQ-Z2, as the harness serves; RtlDevice refuses a board without one), unaligned LD Q8_0 too
    for k in ("SFU", "MM", "ST", "SYS", "LD"):
        assert got.by_class.get(k) == ref.by_class[k], (k, got.by_class, ref.by_class)
    assert got.cycles == ref.cycles


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


def _kv_gather_program(rng):
    """ST I16 (K rows contiguous, V^T scattered with elem_stride, pos_stride, saturation, shifts 0..31) and LD with
    idx (Q8_0 embedding rows at unaligned addresses, I32 rows) in one program."""
    mem = np.zeros(MEM, np.uint8)
    x = (rng.standard_normal(4096) * 3e4).astype(np.int32)
    x[:8] = [2**31 - 1, -2**31, 70000, -70000, 5, -5, 1, -1]
    mem[DATA: DATA + x.nbytes] = x.view(np.uint8)
    ids = np.array([5, 0, 17, 3], np.uint32)
    mem[0x30000: 0x30010] = ids.view(np.uint8)
    mem[0x30040: 0x30048] = ids[1:3].view(np.uint8)     # index words 64-byte aligned (see docs/rtl.md)
    q = rng.integers(0, 256, 40 * 612).astype(np.uint8)
    q.reshape(40, 18, 34)[:, :, 1] &= 0x3F                       # finite fp16 scales
    mem[0x50000: 0x50000 + q.size] = q
    st16 = lambda **kw: make(Op.ST, fmt=StFmt.I16, src=kw.pop("src", 0), **kw)   # noqa: E731
    prog = [make(Op.LD, fmt=LdFmt.I32, dst=0, addr=DATA, rows=1, cols=4096, src_stride=16384, dst_stride=4096),
            st16(shift=4, addr=OUT, rows=1, cols=192, src_stride=100, dst_stride=384, elem_stride=2, pos_stride=384),
            st16(shift=0, addr=OUT + 0x1000, rows=2, cols=64, src_stride=100, dst_stride=256, elem_stride=2),
            st16(shift=9, addr=OUT + 0x2000, rows=3, cols=64, src_stride=100, dst_stride=2, elem_stride=512,
                 pos_stride=2),
            st16(shift=31, src=3, addr=OUT + 0x3000, rows=1, cols=1, src_stride=1, dst_stride=2, elem_stride=0),
            make(Op.LD, fmt=LdFmt.Q8_0, idx=1, dst=5000, addr=0x50000, rows=4, cols=576, src_stride=612,
                 dst_stride=600, idx_addr=0x30000),
            make(Op.LD, fmt=LdFmt.Q8_0, idx=1, dst=8000, addr=0x50000, rows=2, cols=64, src_stride=612,
                 dst_stride=64, idx_addr=0x30040),
            make(Op.LD, fmt=LdFmt.I32, idx=1, dst=9000, addr=0x50000, rows=4, cols=96, src_stride=612,
                 dst_stride=112, idx_addr=0x30000),
            make(Op.ST, fmt=StFmt.I32, src=5000, addr=OUT + 0x4000, rows=1, cols=4600, src_stride=4600,
                 dst_stride=4600 * 4, elem_stride=4),
            make(Op.SYS, fn=SysOp.END)]
    w = assemble(prog).view(np.uint8)
    mem[PROG: PROG + w.size] = w
    return mem


@need
@pytest.mark.parametrize("board", ["sim", "pynq-z2", "kv260", NARROW4])
def test_st_i16_and_ld_gather_bit_exact_and_cycles(board):
    from flightllm.sim.fsim import FunctionalSim
    from flightllm.sim.rtl_device import RtlDevice

    b = boards.load(board)
    mem = _kv_gather_program(np.random.default_rng(3))
    fs = FunctionalSim(b, MEM)
    fs.mem[:] = mem
    ref = fs.run(PROG, pos=3)
    dev = RtlDevice(b, MEM)
    dev.mem[:] = mem
    got = dev.run(PROG, pos=3)
    assert np.any(fs.mem[OUT: OUT + 0x3000] != 0) and np.any(fs.mem[OUT + 0x4000: OUT + 0x8000] != 0)
    bad = np.flatnonzero(dev.mem != fs.mem)
    assert bad.size == 0, f"{bad.size} bytes differ, first at {bad[:8]}"
    assert (got.instructions, got.bytes_written) == (ref.instructions, ref.bytes_written)
    assert got.cycles == ref.cycles, (got.by_class, ref.by_class)
    assert got.by_class["LD"] == ref.by_class["LD"] and got.by_class["ST"] == ref.by_class["ST"]


@need
@pytest.mark.parametrize("kw,code", [
    (dict(idx_addr=MEM - 8, rows=4), ErrCode.MEM_BOUNDS),                 # index words past memory
    (dict(idx_addr=0x30000, rows=2, src_stride=1 << 20), ErrCode.MEM_BOUNDS),   # a gathered row past memory
    (dict(idx_addr=0x30000, rows=2, dst=262144 - 600), ErrCode.BUF_OVERFLOW)])
def test_ld_gather_errors(kw, code):
    from flightllm.sim.fsim import FunctionalSim
    from flightllm.sim.rtl_device import RtlDevice

    b = boards.load("sim")
    f = dict(fmt=LdFmt.Q8_0, idx=1, dst=0, addr=0x50000, cols=576, src_stride=612, dst_stride=576)
    f.update(kw)
    prog = [make(Op.SYS, fn=SysOp.NOP), make(Op.LD, **f), make(Op.SYS, fn=SysOp.END)]
    w = assemble(prog).view(np.uint8)
    codes = []
    for dev in (FunctionalSim(b, MEM), RtlDevice(b, MEM)):
        dev.mem[0x30000: 0x30008] = np.array([1, 2], "<u4").view(np.uint8)
        dev.mem[PROG: PROG + w.size] = w
        with pytest.raises(DeviceError) as e:
            dev.run(PROG)
        codes.append((e.value.code, e.value.pc))
    assert codes[0] == codes[1] == (code, 1)
