"""Split MV/MM on fsim (weight channels, docs/isa.md): the stream rows dealt round-robin to C channels, channel c's
section at waddr + c * SPLIT_STRIDE. Results equal the unsplit instruction's bit for bit; cycles are the one-channel
board's unsplit instruction over a channel's rows; every channel's bytes are read; protection faults as unsplit."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from flightllm import boards, formats, isa
from flightllm.errors import DeviceError
from flightllm.host.kernel import random_weights
from flightllm.hw import params as P
from flightllm.hw.regs import PERM_R, PERM_W, PERM_X
from flightllm.isa import ErrCode, Op, SysOp, WFmt
from flightllm.sim.fsim import FunctionalSim, Prot

SIM2 = Path(__file__).resolve().parent / "boards" / "sim-2ch.toml"
COLS = 96
PAGE = 4096
CASES = [(f, n) for f in (WFmt.Q4_1, WFmt.Q8_0) for n in (2, 4, 8, 16)] + [(WFmt.I16, 16)]


def board(C: int) -> boards.Board:
    b = boards.load(str(SIM2))
    if C == 2:
        return b
    return replace(b, memory=replace(b.memory, channels=C), accel=replace(b.accel, weight_channels=C))


def raw_rows(rng, fmt, sp_n, rows, cols=COLS):
    """Row-major device rows of a random operand (formats.row_bytes each)."""
    if fmt == WFmt.I16:
        return rng.integers(-4000, 4000, (rows, cols)).astype("<i2").view(np.uint8).reshape(rows, -1)
    return random_weights(rng, rows, cols, 4 if fmt == WFmt.Q4_1 else 8, sp_n)[1]


class Setup:
    """One memory image: the operand unsplit (stored layout) at 0 and split at SPLIT, C sections S apart; the
    activations in the QBUF, the ABUF seeded (acc adds into it)."""

    def __init__(self, b, fmt, sp_n, rows, tokens, seed=0):
        rng = np.random.default_rng(seed)
        self.b, self.fmt, self.sp_n, self.rows, self.tokens = b, fmt, sp_n, rows, tokens
        C = b.accel.weight_channels
        self.raw = raw_rows(rng, fmt, sp_n, rows)
        self.rb = self.raw.shape[1]
        stored = formats.interleave_rows(self.raw, fmt, sp_n).reshape(-1)
        self.sections = formats.split_sections(self.raw, fmt, sp_n, C)
        self.SPLIT = -(-stored.size // PAGE) * PAGE + PAGE
        self.S = -(-self.sections.shape[1] // PAGE) * PAGE + PAGE        # a gap between sections
        self.end = self.SPLIT + C * self.S
        self.mem = np.zeros(self.end + 4 * PAGE, np.uint8)
        self.mem[: stored.size] = stored
        for c in range(C):
            self.mem[self.SPLIT + c * self.S: self.SPLIT + c * self.S + self.sections.shape[1]] = self.sections[c]
        self.xq = rng.integers(-127, 128, (tokens, COLS)).astype(np.int8)
        self.xm = rng.integers(1024, 2048, (tokens, COLS // 32)).astype(np.uint16)
        self.xe = rng.integers(-20, -10, (tokens, COLS // 32)).astype(np.int8)
        self.y0 = rng.integers(-1 << 20, 1 << 20, tokens * rows).astype(np.int32)

    def sim(self, b=None, regions=None):
        b = b or self.b
        s = FunctionalSim(b, self.mem.size, split_stride=self.S)
        s.mem[:] = self.mem
        s.qbuf[: self.xq.size] = self.xq.reshape(-1)
        s.qm[: self.xm.size] = self.xm.reshape(-1)
        s.qe[: self.xe.size] = self.xe.reshape(-1)
        s.abuf[: self.y0.size] = self.y0
        if regions is not None:
            s.set_regions(regions)
        return s

    def run(self, sim, split, acc=0, rows=None, waddr=None):
        """Run one MV/MM (and END) from the top of memory; returns (outputs (tokens, rows), stats)."""
        rows = self.rows if rows is None else rows
        ins = isa.make(Op.MV if self.tokens == 1 else Op.MM, fmt=self.fmt, sp_n=self.sp_n, acc=acc,
                       waddr=(self.SPLIT if split else 0) if waddr is None else waddr, wstride=self.rb, rows=rows,
                       cols=COLS, tokens=self.tokens, xaddr=0, xstride=COLS, yaddr=0, ystride=rows, split=split)
        words = isa.assemble([ins, isa.make(Op.SYS, fn=SysOp.END)])
        pa = self.end
        sim.write(pa, words)                 # a host write: drops the program fsim cached from there
        st = sim.run(pa)
        return sim.abuf[: self.tokens * rows].reshape(self.tokens, rows).copy(), st


@pytest.mark.parametrize("C", [2, 3])
@pytest.mark.parametrize("rows", [1, 3, 7, 33, 193])
@pytest.mark.parametrize("fmt,sp_n", CASES, ids=[f"{f.name}-{n}" for f, n in CASES])
def test_split_equals_unsplit_bit_for_bit(fmt, sp_n, rows, C):
    b = board(C)
    for tokens, acc in ((1, 0), (1, 1), (3, 1), (5, 0)):
        s = Setup(b, fmt, sp_n, rows, tokens, seed=rows * 7 + C)
        y_unsplit, _ = s.run(s.sim(), 0, acc)
        y_split, st = s.run(s.sim(), 1, acc)
        assert np.array_equal(y_split, y_unsplit), (tokens, acc)
        assert y_split.any()
        if acc:
            assert not np.array_equal(y_split.reshape(-1), s.y0)


def test_split_sections_round_trip_and_pad_with_zero_rows():
    rng = np.random.default_rng(3)
    for fmt, sp_n in CASES:
        for rows in (1, 2, 5, 8, 33):
            for C in (1, 2, 3, 4):
                raw = raw_rows(rng, fmt, sp_n, rows)
                sec = formats.split_sections(raw, fmt, sp_n, C)
                lr = formats.split_rows(fmt, sp_n, rows, C)
                assert sec.shape == (C, lr * raw.shape[1])
                sr, srb, _ = formats.weight_stream(fmt, sp_n, lr, COLS, raw.shape[1])
                back = formats.merge_sections(sec.reshape(C, sr, srb), fmt, sp_n, rows)
                assert np.array_equal(back, raw)
                pad = formats.split_row_map(fmt, sp_n, rows, C) >= rows
                local = [formats.deinterleave_rows(sec[c].reshape(sr, srb), fmt, sp_n, lr) for c in range(C)]
                assert all(not local[c][i].any() for c, i in zip(*np.nonzero(pad)))


def test_split_on_one_channel_is_the_unsplit_instruction():
    b = boards.load("sim")
    s = Setup(b, WFmt.Q4_1, 16, 33, 1)
    y0, st0 = s.run(s.sim(), 0)
    y1, st1 = s.run(s.sim(), 1, waddr=0)          # channel 0 holds everything; SPLIT_STRIDE unused
    assert np.array_equal(y0, y1) and st0.cycles == st1.cycles and st0.bytes_read == st1.bytes_read


@pytest.mark.parametrize("C", [2, 3])
@pytest.mark.parametrize("fmt,sp_n,rows,tokens", [(WFmt.Q4_1, 16, 193, 1), (WFmt.Q8_0, 16, 33, 1),
                                                  (WFmt.Q4_1, 4, 193, 1), (WFmt.Q8_0, 2, 7, 1),
                                                  (WFmt.I16, 16, 193, 1), (WFmt.Q4_1, 16, 193, 3),
                                                  (WFmt.I16, 16, 33, 40)])
def test_split_cycles_are_one_channels_unsplit_cycles(fmt, sp_n, rows, tokens, C):
    """A split MV/MM on C channels costs the unsplit instruction over split_rows local rows (the channels run in
    lockstep, every stream at one master's rate); RD_BYTES counts every channel's payload: C x one channel's
    bytes."""
    b = board(C)
    s = Setup(b, fmt, sp_n, rows, tokens)
    _, st = s.run(s.sim(), 1)
    lr = formats.split_rows(fmt, sp_n, rows, C)
    _, st1 = s.run(s.sim(), 0, rows=lr, waddr=s.SPLIT)   # channel 0's section as an unsplit operand
    assert st.by_class["MM"] == st1.by_class["MM"]
    assert st.bytes_read == C * st1.bytes_read
    sr, srb, _ = formats.weight_stream(fmt, sp_n, lr, COLS, s.rb)
    assert st1.bytes_read == sr * srb * -(-tokens // P.token_tile(b))


def test_split_beats_unsplit_on_two_channels():
    s = Setup(board(2), WFmt.Q4_1, 16, 1535, 1)
    one = Setup(boards.load("sim"), WFmt.Q4_1, 16, 1535, 1)
    _, st = s.run(s.sim(), 1)
    _, st1 = one.run(one.sim(), 0)
    assert st.by_class["MM"] < 0.6 * st1.by_class["MM"]


def _regions(*spans):
    return [Prot(f"r{i}", lo, hi, perm) for i, (lo, hi, perm) in enumerate(spans)]


@pytest.mark.parametrize("C", [2, 3])
def test_split_protection_faults_like_the_unsplit_read(C):
    """Each channel's range is checked in order 0..C-1, the first failure reported with the unsplit read's code."""
    s = Setup(board(C), WFmt.Q8_0, 16, 33, 1)
    span = formats.split_span(WFmt.Q8_0, 16, 33, COLS, s.rb, C)
    top = s.mem.size
    prog = (s.end, top, PERM_R | PERM_X)                                   # the program: executable
    last = s.SPLIT + (C - 1) * s.S
    # the last channel's section crosses out of its region: MEM_BOUNDS, as an unsplit read crossing out does
    rs = _regions((0, s.SPLIT, PERM_R), (s.SPLIT, last + span - 64, PERM_R), prog)
    with pytest.raises(DeviceError) as split_e:
        s.run(s.sim(regions=rs), 1)
    rs_u = _regions((0, span - 64, PERM_R), prog)
    with pytest.raises(DeviceError) as unsplit_e:
        s.run(s.sim(regions=rs_u), 0, rows=formats.split_rows(WFmt.Q8_0, 16, 33, C))
    assert split_e.value.code == unsplit_e.value.code == ErrCode.MEM_BOUNDS
    assert split_e.value.pc == unsplit_e.value.pc == 0
    # channel 1 in a region without R: MEM_PERM, as the unsplit read from there
    rs = _regions((0, s.SPLIT + s.S, PERM_R), (s.SPLIT + s.S, s.end, PERM_W), prog)
    with pytest.raises(DeviceError) as split_e:
        s.run(s.sim(regions=rs), 1)
    with pytest.raises(DeviceError) as unsplit_e:
        s.run(s.sim(regions=rs), 0, waddr=s.SPLIT + s.S)
    assert split_e.value.code == unsplit_e.value.code == ErrCode.MEM_PERM
    # both: channel 0 out of every region, channel 1 unreadable -> channel 0's MEM_BOUNDS comes first
    rs = _regions((0, s.SPLIT, PERM_R), (s.SPLIT + s.S, s.end, PERM_W), prog)
    with pytest.raises(DeviceError) as e:
        s.run(s.sim(regions=rs), 1)
    assert e.value.code == ErrCode.MEM_BOUNDS


def test_weight_cache_tells_split_reads_apart():
    """The same waddr read split and unsplit (and under another SPLIT_STRIDE) decodes different operands."""
    s = Setup(board(2), WFmt.Q4_1, 16, 33, 1)
    rs = _regions((0, s.end, PERM_R), (s.end, s.mem.size, PERM_R | PERM_X))       # read-only: decoded weights cached
    sim = s.sim(regions=rs)
    y_split, _ = s.run(sim, 1)
    y_same, _ = s.run(sim, 0, waddr=s.SPLIT)          # section 0 read as an unsplit operand
    assert not np.array_equal(y_split, y_same)
    sim.split_stride = 0                              # every channel reads section 0
    y_s0, _ = s.run(sim, 1)
    assert not np.array_equal(y_s0, y_split)
    sim.split_stride = s.S
    assert np.array_equal(s.run(sim, 1)[0], y_split)
    assert np.array_equal(s.run(s.sim(), 0)[0], y_split)
