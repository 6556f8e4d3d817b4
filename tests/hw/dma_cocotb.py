"""cocotb testbench of the DMA engines (hw/dma.py), run by tests/hw/test_dma_rtl.py, against an AXI4 memory
(cocotbext-axi ``AxiRam``) with random backpressure on every channel; reference: numpy slices of the memory.

- ``read_stream``: random ReadStream commands (base, segment length, stride, segment count; lengths from 1 byte
  to several 64-beat bursts, bases near 4 KiB boundaries) consumed by a random reader (take 0..min(cnt, window,
  bytes left in the segment) per cycle). The bytes taken equal the memory's segments; every AR is beat-aligned,
  <= 64 beats, inside one 4 KiB page, and the ARs cover exactly the beats of the segments, in order;
  ``bytes_taken`` counts the data bytes (and ``clear_stats`` zeroes it).
- ``write_stream``: random WriteStream commands (ABUF source word, source stride, destination byte address
  (4-byte aligned) and stride, rows, words per row) with the ABUF banks served by the testbench (one-cycle
  synchronous reads, as hw/ram.py). The whole memory afterwards equals numpy's expectation (nothing written
  outside the rows: the partial-beat strobes), every AW is <= 64 beats inside one 4 KiB page, the ARs cover
  the rows' beats, ``wlast`` closes each burst (AxiRam asserts it) and ``busy`` stays up until every B response.
"""
from __future__ import annotations

import logging
import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge
from cocotbext.axi import AxiBus, AxiRam
from cocotb_values import u

PB = int(os.environ["DMA_PB"])
BB = int(os.environ["DMA_BB"])
WB = int(os.environ["DMA_WB"])
ABUF = int(os.environ["DMA_ABUF"])
SEED = int(os.environ.get("BLOCK_SEED", "1"))
NCMD = int(os.environ.get("DMA_NCMD", "40"))
MEM = 1 << 16
LG = (PB - 1).bit_length()
NL = PB // 4
ROW_BITS = max(1, (ABUF // NL - 1).bit_length())
BURST = 64


def pauses(seed, p):
    r = random.Random(seed)
    while True:
        yield r.random() < p


class Env:
    def __init__(self, dut, seed, p_pause=0.3):
        self.dut = dut
        cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
        self.ram = AxiRam(AxiBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst, size=MEM)
        for i, ch in enumerate((self.ram.read_if.ar_channel, self.ram.read_if.r_channel,
                                self.ram.write_if.aw_channel, self.ram.write_if.w_channel,
                                self.ram.write_if.b_channel)):
            ch.set_pause_generator(pauses(seed * 10 + i, p_pause))
            ch.log.setLevel(logging.WARNING)
        for i in (self.ram.read_if, self.ram.write_if):
            i.log.setLevel(logging.WARNING)       # one INFO line per burst otherwise
        self.ar, self.aw, self.w, self.nb = [], [], [], 0
        self.abuf = None

    async def reset(self):
        d = self.dut
        for n in ("rs_start", "rs_flush", "rs_take", "rs_clear_stats", "ws_start", "ws_flush", "st_rd_data"):
            getattr(d, n).value = 0
        d.rst.value = 1
        for _ in range(3):
            await FallingEdge(d.clk)
        d.rst.value = 0
        await FallingEdge(d.clk)
        cocotb.start_soon(self.monitor())

    async def monitor(self):
        """Handshakes of this cycle, seen at the falling edge (valid/ready are stable there)."""
        d = self.dut
        en_prev, addr_prev = 0, 0
        while True:
            await FallingEdge(d.clk)
            if u(d.m_axi_arvalid) and u(d.m_axi_arready):
                self.ar.append((u(d.m_axi_araddr), u(d.m_axi_arlen) + 1))
            if u(d.m_axi_awvalid) and u(d.m_axi_awready):
                self.aw.append((u(d.m_axi_awaddr), u(d.m_axi_awlen) + 1))
            if u(d.m_axi_wvalid) and u(d.m_axi_wready):
                self.w.append((u(d.m_axi_wstrb), u(d.m_axi_wlast)))
            if u(d.m_axi_bvalid):
                self.nb += 1
            # ABUF banks: the read issued at the last rising edge returns now (one-cycle synchronous RAM)
            en, addr = u(d.st_rd_en), u(d.st_rd_addr)
            if en_prev and self.abuf is not None:
                data = 0
                for b in range(NL):
                    row = (addr_prev >> (ROW_BITS * b)) & ((1 << ROW_BITS) - 1)
                    a = row * NL + b
                    word = int(self.abuf[a]) & 0xFFFFFFFF if a < ABUF else 0
                    data |= word << (32 * b)
                d.st_rd_data.value = data
            en_prev, addr_prev = en, addr


def check_bursts(bursts, segs, what):
    """bursts: [(addr, beats)]; segs: [(byte address, length)] -> the beat ranges each must cover, in order."""
    exp = []
    for a, n in segs:
        exp += list(range(a >> LG, (a + n + PB - 1) >> LG))
    got = []
    for addr, beats in bursts:
        assert addr % PB == 0, f"{what}: burst address {addr:#x} not beat-aligned"
        assert 1 <= beats <= BURST, f"{what}: burst of {beats} beats"
        assert (addr & 0xFFF) + beats * PB <= 0x1000, f"{what}: burst {addr:#x}+{beats} beats crosses 4 KiB"
        got += list(range(addr >> LG, (addr >> LG) + beats))
    assert got == exp, f"{what}: bursts cover beats {got[:8]}..., expected {exp[:8]}... ({len(got)} vs {len(exp)})"


def rand_len(rng, big):
    r = rng.random()
    if r < 0.3:
        return int(rng.integers(1, 2 * PB))
    if r < 0.8:
        return int(rng.integers(1, 8 * PB))
    return int(rng.integers(BURST * PB - PB, big))


def rand_base(rng, span):
    """A base for ``span`` bytes, often just below a 4 KiB boundary."""
    if rng.random() < 0.4:
        page = int(rng.integers(1, (MEM - span) // 4096)) if MEM - span > 8192 else 1
        return max(0, page * 4096 - int(rng.integers(1, 3 * PB)))
    return int(rng.integers(0, MEM - span))


@cocotb.test()
async def read_stream(dut):
    rng = np.random.default_rng(SEED)
    env = Env(dut, SEED)
    mem = rng.integers(0, 256, MEM, dtype=np.uint8)
    env.ram.write(0, mem.tobytes())
    await env.reset()
    taken_total = 0
    for cmd in range(NCMD):
        if cmd == NCMD // 2:                        # a new run: the byte counter restarts from zero
            dut.rs_clear_stats.value = 1
            await FallingEdge(dut.clk)
            dut.rs_clear_stats.value = 0
            assert u(dut.rs_bytes_taken) == 0, "clear_stats left bytes_taken at " + str(u(dut.rs_bytes_taken))
            taken_total = 0
        nseg = int(rng.integers(1, 5))
        seg_len = rand_len(rng, BURST * PB * 2 + 3 * PB) if nseg == 1 else rand_len(rng, BURST * PB + PB)
        stride = seg_len + (0 if rng.random() < 0.2 else int(rng.integers(1, 400)))
        span = (nseg - 1) * stride + seg_len + PB
        base = rand_base(rng, span)
        segs = [(base + r * stride, seg_len) for r in range(nseg)]
        exp = np.concatenate([mem[a: a + n] for a, n in segs])
        env.ar.clear()
        dut.rs_base.value, dut.rs_seg_len.value, dut.rs_stride.value, dut.rs_nseg.value = base, seg_len, stride, nseg
        dut.rs_start.value = 1
        await FallingEdge(dut.clk)
        dut.rs_start.value = 0
        got = bytearray()
        left = [seg_len] * nseg
        si, cyc = 0, 0
        while True:
            t = 0
            if u(dut.rs_data_phase):
                assert si < nseg, f"cmd {cmd}: data phase after the last segment"
                cnt = u(dut.rs_cnt)
                hi = min(cnt, WB, left[si])
                if hi and rng.random() < 0.75:
                    t = int(rng.integers(1, hi + 1)) if rng.random() < 0.6 else hi
                    win = u(dut.rs_win)
                    got += win.to_bytes(WB, "little")[:t]
                    left[si] -= t
                    if left[si] == 0:
                        si += 1
            elif si == nseg and not u(dut.rs_busy):
                break
            dut.rs_take.value = t
            await FallingEdge(dut.clk)
            cyc += 1
            assert cyc < 20 * (sum(left) + span) + 2000, f"cmd {cmd}: stuck ({len(got)} of {exp.size} bytes)"
        dut.rs_take.value = 0
        dut.rs_flush.value = 1                      # as hw/top.py does once a stream is consumed
        await FallingEdge(dut.clk)
        dut.rs_flush.value = 0
        ctx = f"cmd {cmd}: base {base:#x} len {seg_len} stride {stride} nseg {nseg}"
        g = np.frombuffer(bytes(got), np.uint8)
        assert g.size == exp.size and np.array_equal(g, exp), \
            f"{ctx}: data differs at {np.nonzero(g[:exp.size] != exp[:g.size])[0][:4].tolist()}"
        check_bursts(env.ar, segs, ctx)
        taken_total += exp.size
        assert u(dut.rs_bytes_taken) == taken_total, f"{ctx}: bytes_taken {u(dut.rs_bytes_taken)} != {taken_total}"
    dut._log.info(f"ReadStream PB={PB}: {NCMD} commands, {taken_total} bytes equal to memory")


@cocotb.test()
async def write_stream(dut):
    rng = np.random.default_rng(SEED + 1)
    env = Env(dut, SEED + 1)
    mem = rng.integers(0, 256, MEM, dtype=np.uint8)
    env.ram.write(0, mem.tobytes())
    env.abuf = rng.integers(-(1 << 31), 1 << 31, ABUF, dtype=np.int64)
    await env.reset()
    words = 0
    for cmd in range(NCMD):
        rows = int(rng.integers(1, 5))
        r = rng.random()
        cols = int(rng.integers(1, 4)) if r < 0.3 else int(rng.integers(1, 3 * NL)) if r < 0.7 else \
            int(rng.integers(BURST * NL - NL, BURST * NL + 3 * NL))
        cols = min(cols, ABUF // rows)
        sstr = int(rng.integers(cols, cols + 40))
        rows = min(rows, 1 + (ABUF - cols) // sstr)
        src = int(rng.integers(0, ABUF - (rows - 1) * sstr - cols + 1))
        dstr = 4 * cols + (0 if rng.random() < 0.3 else 4 * int(rng.integers(1, 100)))
        span = (rows - 1) * dstr + 4 * cols
        dst = rand_base(rng, span + PB) & ~3
        segs = [(dst + i * dstr, 4 * cols) for i in range(rows)]
        for i in range(rows):
            a = dst + i * dstr
            mem[a: a + 4 * cols] = env.abuf[src + i * sstr: src + i * sstr + cols].astype("<u4").view(np.uint8)
        env.aw.clear()
        env.w.clear()
        nb0 = env.nb
        d = dut
        d.ws_dst.value, d.ws_dst_stride.value, d.ws_src.value, d.ws_src_stride.value = dst, dstr, src, sstr
        d.ws_rows.value, d.ws_cols.value = rows, cols
        d.ws_start.value = 1
        await FallingEdge(dut.clk)
        d.ws_start.value = 0
        cyc = 0
        while u(d.ws_busy):
            await FallingEdge(dut.clk)
            cyc += 1
            assert cyc < 40 * (rows * cols // NL + rows) + 2000, f"cmd {cmd}: WriteStream stuck"
        ctx = f"cmd {cmd}: dst {dst:#x} stride {dstr} src {src} sstr {sstr} rows {rows} cols {cols}"
        assert env.nb - nb0 == len(env.aw), f"{ctx}: busy fell with {len(env.aw) - env.nb + nb0} B pending"
        check_bursts(env.aw, segs, ctx)
        assert len(env.w) == sum(n for _, n in env.aw), f"{ctx}: {len(env.w)} W beats for the AW bursts"
        lasts = [k for k, (_, last) in enumerate(env.w) if last]
        ends = list(np.cumsum([n for _, n in env.aw]) - 1)
        assert lasts == ends, f"{ctx}: wlast on beats {lasts}, bursts end on {ends}"
        got = np.frombuffer(env.ram.read(0, MEM), np.uint8)
        bad = np.nonzero(got != mem)[0]
        assert bad.size == 0, f"{ctx}: memory differs at {bad[:6].tolist()} (got {got[bad[:6]].tolist()}, " \
                              f"expected {mem[bad[:6]].tolist()})"
        assert not u(d.ws_berr)
        words += rows * cols
    dut._log.info(f"WriteStream PB={PB}: {NCMD} commands, {words} words, memory equal to numpy")
