"""Functional simulator: executes instruction streams exactly as the hardware does, and counts cycles.

State mirrors the device: flat device memory (``mem``), the on-chip ABUF (int32 words), the QBUF (int8 plus a
scale m*2^e per 32 bytes), the POS register and SPLIT_STRIDE (``split_stride``: bytes between the weight channels'
sections of an MV/MM with ``split``). Arithmetic lives in mpe_model/sfu_model; this module decodes,
resolves run-time fields, checks every access against the region map, moves data, and charges cycles.
Faults stop the run with a DeviceError carrying the status register's error code, as the RTL does.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flightllm.boards import Board
from flightllm.errors import DeviceError, ISAError
from flightllm.formats import (ACT_FRAC, BLOCK, QACT_BLOCK_BYTES, SCALE_FIX, deinterleave_rows, fp16_to_fixed,
                               merge_sections, row_bytes, sat32, split_rows, unpack_weights, weight_stream)
from flightllm.isa import (ErrCode, Instr, LdFmt, MiscOp, Op, StFmt, SysOp, decode_at, extents, misc_overlap,
                           mm_outputs_overlap)
from flightllm.compiler.memmap import MemoryMap
from flightllm.hw import params as P, regs
from flightllm.hw.regs import PERM_R, PERM_W, PERM_X
from flightllm.sim import mpe_model, sfu_model
from flightllm.sim.cycles import Q8_BLOCK_BYTES, CycleModel

MAX_INSTRUCTIONS = 10_000_000     # the watchdog: a stream with no END cannot spin forever


@dataclass(frozen=True)
class Prot:
    """One protection region as the engine's region registers hold it (hw/regs.py)."""
    name: str
    base: int
    end: int
    perm: int

    @property
    def writable(self) -> bool:
        return bool(self.perm & PERM_W)


def prot_regions(memmap) -> list[Prot]:
    """What the region registers hold once the driver programmed them from a compiler MemoryMap (its order is
    the registers' priority): the same encoding and the same refusals (hw/regs.py::region_writes)."""
    if memmap is None:
        return []
    rs = list(memmap.regions.values())
    w = dict(regs.region_writes([(r.base, r.size, r.perm) for r in rs]))
    return [Prot(rs[i].name, b, b + n, p) for i, b, n, p in regs.regions_from(w.__getitem__)]


@dataclass
class RunStats:
    cycles: int = 0
    instructions: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    by_class: dict = field(default_factory=dict)

    def add(self, other: "RunStats") -> None:
        """Accumulate another run (one program of a multi-chunk forward pass)."""
        self.cycles += other.cycles
        self.instructions += other.instructions
        self.bytes_read += other.bytes_read
        self.bytes_written += other.bytes_written
        for k, v in other.by_class.items():
            self.by_class[k] = self.by_class.get(k, 0) + v

    def charge(self, cls: str, cyc: int, rd: int = 0, wr: int = 0):
        self.cycles += cyc
        self.instructions += 1
        self.bytes_read += rd
        self.bytes_written += wr
        self.by_class[cls] = self.by_class.get(cls, 0) + cyc


class FunctionalSim:
    def __init__(self, board: Board, mem_size: int, regions: MemoryMap | None = None, split_stride: int = 0):
        a = board.accel
        self.board = board
        self.mem = np.zeros(mem_size, np.uint8)
        self.abuf = np.zeros(a.abuf_words, np.int32)
        self.qbuf = np.zeros(a.qbuf_bytes, np.int8)
        self.qm = np.zeros(a.qbuf_bytes // BLOCK, np.uint16)
        self.qe = np.zeros(a.qbuf_bytes // BLOCK, np.int8)
        self.regions = prot_regions(regions)
        self.pos = 0
        self.split_stride = int(split_stride)
        self.cm = CycleModel(board)
        self._wcache: dict = {}
        self._pcache: dict = {}

    # -- memory protection (hw/top.py's region checker does the same, in the same order) ----------------
    def _region(self, lo: int, hi: int, write, pc: int):
        """[lo, hi) must lie inside device memory and inside one region with the permission ``write`` asks for:
        True (a DMA write: W), False (a DMA read: R) or "x" (an instruction fetch: X and not W)."""
        if hi > self.mem.size or lo < 0:
            raise DeviceError(f"pc {pc}: memory access [{lo:#x}, {hi:#x}) beyond device memory",
                              ErrCode.MEM_BOUNDS, pc)
        if not self.regions:
            return None
        for r in self.regions:
            if r.base <= lo and hi <= r.end:
                if write == "x":
                    if r.perm & (PERM_X | PERM_W) != PERM_X:
                        raise DeviceError(f"pc {pc}: instruction fetch at {lo:#x} from non-executable region "
                                          f"'{r.name}'", ErrCode.MEM_PERM, pc)
                elif write:
                    if not r.perm & PERM_W:
                        raise DeviceError(f"pc {pc}: write to read-only region '{r.name}' at {lo:#x}",
                                          ErrCode.MEM_WRITE_RO, pc)
                elif not r.perm & PERM_R:
                    raise DeviceError(f"pc {pc}: read from unreadable region '{r.name}' at {lo:#x}",
                                      ErrCode.MEM_PERM, pc)
                return r
        raise DeviceError(f"pc {pc}: memory access [{lo:#x}, {hi:#x}) outside every region", ErrCode.MEM_BOUNDS, pc)

    def _buf(self, buf: np.ndarray, name: str, base: int, stride: int, rows: int, n: int, pc: int) -> np.ndarray:
        """Rows of an on-chip buffer as a (rows, n) view, bounds-checked like the RTL's address checker."""
        hi = base + (rows - 1) * stride + n
        if n <= 0 or rows <= 0 or hi > buf.size:
            raise DeviceError(f"pc {pc}: {name} access [{base}, {hi}) past its {buf.size} entries", ErrCode.BUF_OVERFLOW, pc)
        if rows == 1 or stride == n:
            return buf[base: base + rows * n].reshape(rows, n)
        return np.lib.stride_tricks.as_strided(buf[base:], (rows, n), (stride * buf.itemsize, buf.itemsize))

    # -- program execution ----------------------------------------------------------------------------
    def _stream(self, addr: int):
        """Yield (pc, instr) as the engine fetches them: each instruction's first word inside an executable
        region (with no region programmed: inside memory), the whole instruction inside that region, a fetch fault
        or an illegal instruction raised when the engine reaches it (after the instructions before it ran).
        Streams from protected regions are decoded once and cached."""
        if addr % 4:
            raise DeviceError(f"instruction base {addr:#x} not word aligned", ErrCode.MISALIGNED, 0)
        hit = self._pcache.get(addr)
        if hit is not None:
            yield from hit[0]
            if hit[1] is not None:
                raise hit[1]
            return
        out, pc, fault = [], 0, None
        try:
            while True:
                fa = addr + 4 * pc
                r = self._region(fa, fa + 4, "x", pc)
                end = r.end if r is not None else self.mem.size
                words = self.mem[addr: end - (end - addr) % 4].view("<u4")
                try:
                    ins, nxt = decode_at(words, pc)
                except ISAError as e:
                    raise DeviceError(f"illegal instruction: {e}", ErrCode.ILLEGAL_INSTR, pc) from None
                out.append((pc, ins))
                if len(out) > MAX_INSTRUCTIONS:
                    raise DeviceError("watchdog: no END", ErrCode.WATCHDOG, pc)
                yield pc, ins
                if ins.op == Op.SYS and ins.f["fn"] == SysOp.END:
                    break
                pc = nxt
        except DeviceError as e:
            fault = e
            if self.regions:
                self._pcache[addr] = (out, fault)
            raise
        if self.regions:                 # fetched from executable regions, which are never writable
            self._pcache[addr] = (out, None)

    def run(self, addr: int, pos: int = 0, trace=None) -> RunStats:
        """Execute the program at byte address ``addr`` with POS = pos; ``trace(i, pc, ins, sim)`` after each."""
        self.pos = int(pos)
        st = RunStats()
        for i, (pc, ins) in enumerate(self._stream(addr)):
            getattr(self, f"_x_{ins.op.name}")(ins.f, pc, st)
            if trace is not None:
                trace(i, pc, ins, self)
        return st

    # -- LD / ST --------------------------------------------------------------------------------------
    def _x_LD(self, f, pc, st):
        rows, cols = f["rows"], f["cols"]
        fmt = LdFmt(f["fmt"])
        # the RTL's order of checks: rows, alignment, the memory range, the buffer, then (idx) each gathered row
        if rows == 0:
            raise DeviceError(f"pc {pc}: LD of zero rows", ErrCode.MEM_BOUNDS, pc)
        nbytes = {LdFmt.I32: cols * 4, LdFmt.Q8_0: row_bytes(1, cols),
                  LdFmt.QACT: cols // BLOCK * QACT_BLOCK_BYTES}[fmt]
        base = f["addr"] + self.pos * f["pos_stride"]
        if (f["idx"] and f["idx_addr"] % 4) or (fmt == LdFmt.I32 and (base % 4 or f["src_stride"] % 4)):
            raise DeviceError(f"pc {pc}: LD not aligned to its 4-byte words", ErrCode.MISALIGNED, pc)
        if f["idx"]:
            ia = f["idx_addr"]
            self._region(ia, ia + 4 * rows, False, pc)
        else:
            self._region(base, base + (rows - 1) * f["src_stride"] + nbytes, False, pc)
        if cols == 0:
            raise DeviceError(f"pc {pc}: LD of zero columns", ErrCode.BUF_OVERFLOW, pc)
        dbuf = (self.qbuf, "QBUF") if fmt == LdFmt.QACT else (self.abuf, "ABUF")
        self._buf(*dbuf, f["dst"], f["dst_stride"], rows, cols, pc)        # bounds before any data moves
        fault = None
        if f["idx"]:
            ids = self.mem[ia: ia + 4 * rows].view("<u4").astype(np.int64)
            addrs = base + ids * f["src_stride"]
            for k, a in enumerate(addrs):            # the RTL checks (and loads) row by row: rows before a bad one land
                try:
                    self._region(int(a), int(a) + nbytes, False, pc)
                except DeviceError as e:
                    if k == 0:
                        raise
                    fault, rows, addrs = e, k, addrs[:k]
                    break
        else:
            addrs = base + np.arange(rows, dtype=np.int64) * f["src_stride"]
        if f["idx"]:
            W, LW = P.sfu_width(self.board), P.ld_words(self.board)     # Q8_0: W words a cycle; I32: LW
            ch = {LdFmt.I32: -(-cols // LW), LdFmt.Q8_0: cols // BLOCK * (BLOCK // W), LdFmt.QACT: cols // BLOCK}[fmt]
            first = {LdFmt.Q8_0: Q8_BLOCK_BYTES, LdFmt.I32: 4 * min(LW, cols)}.get(fmt, 0)   # a row's first write
            cyc = self.cm.ld_gather(addrs, ch, ia, first, QACT_BLOCK_BYTES if fmt == LdFmt.QACT else 0)
        else:
            segs = rows if rows > 1 and f["src_stride"] != nbytes else 1
            if fmt == LdFmt.I32:
                cyc = self.cm.ld_i32(rows, cols, base, segs)
            else:
                cyc = self.cm.transfer(rows * nbytes, rows, True, rows * cols, segs, base, f["src_stride"])
        raw = self.mem[addrs[:, None] + np.arange(nbytes)[None, :]]
        if fmt == LdFmt.QACT:
            blk = raw.reshape(rows, cols // BLOCK, QACT_BLOCK_BYTES)
            self._buf(self.qbuf, "QBUF", f["dst"], f["dst_stride"], rows, cols, pc)[...] = \
                blk[..., 4:].view(np.int8).reshape(rows, cols)
            bs = (f["dst"] // BLOCK, f["dst_stride"] // BLOCK, rows, cols // BLOCK, pc)
            self._buf(self.qm, "QBUF", *bs)[...] = blk[..., 0:2].copy().view("<u2")[..., 0]
            self._buf(self.qe, "QBUF", *bs)[...] = blk[..., 2].view(np.int8)
            if fault is not None:
                raise fault
            st.charge("LD", cyc, rd=rows * (nbytes + 4 * f["idx"]))     # a gather also reads an index word per row
            return
        dst = self._buf(self.abuf, "ABUF", f["dst"], f["dst_stride"], rows, cols, pc)
        if fmt == LdFmt.I32:
            val = raw.view("<i4").reshape(rows, cols)
        else:
            blk = raw.reshape(rows, cols // BLOCK, 34)
            D = fp16_to_fixed(blk[..., 0:2].copy().view("<u2")[..., 0])
            q = blk[..., 2:].view(np.int8).astype(np.int64)
            sh = SCALE_FIX - ACT_FRAC
            val = sat32((D[..., None] * q + (1 << (sh - 1))) >> sh).reshape(rows, cols)
        dst[...] = val
        if fault is not None:
            raise fault
        st.charge("LD", cyc, rd=rows * (nbytes + 4 * f["idx"]))

    def _x_ST(self, f, pc, st):
        rows, cols = f["rows"], f["cols"]
        fmt = StFmt(f["fmt"])
        if rows == 0 or cols == 0:
            raise DeviceError(f"pc {pc}: ST of an empty block", ErrCode.BUF_OVERFLOW, pc)
        src = self._buf(self.abuf, "ABUF", f["src"], f["src_stride"], rows, cols, pc)
        esz = 4 if fmt == StFmt.I32 else 2
        es = f["elem_stride"]
        if es < esz and cols > 1:
            raise DeviceError(f"pc {pc}: ST elements overlap (elem_stride {es} < {esz})", ErrCode.ILLEGAL_INSTR, pc)
        if fmt == StFmt.I32 and es != 4 and cols > 1:
            raise DeviceError(f"pc {pc}: ST I32 with elem_stride {es}: scattered I32 stores are not implemented",
                              ErrCode.ILLEGAL_INSTR, pc)
        base = f["addr"] + self.pos * f["pos_stride"]
        if base % esz or es % esz or f["dst_stride"] % esz:
            raise DeviceError(f"pc {pc}: ST not aligned to {esz}-byte elements", ErrCode.MISALIGNED, pc)
        hi = base + (rows - 1) * f["dst_stride"] + (cols - 1) * es + esz
        self._region(base, hi, True, pc)          # checked before a single byte moves
        x = src.astype(np.int64)
        if fmt == StFmt.I32:
            data = x.astype("<i4")
        else:
            sh = f["shift"]
            data = np.clip((x + ((1 << sh) >> 1)) >> sh, -32768, 32767).astype("<i2")
        starts = base + np.arange(rows, dtype=np.int64)[:, None] * f["dst_stride"] + np.arange(cols)[None, :] * es
        byt = data.reshape(rows, cols, 1).view(np.uint8).reshape(rows, cols, esz)
        self.mem[starts[..., None] + np.arange(esz)] = byt
        self._invalidate(base, hi)
        # the RTL stores I16 element by element (one single-beat write each), contiguous or not
        if fmt == StFmt.I32:
            cyc = self.cm.st_i32(base, rows, cols, f["dst_stride"], f["src_stride"], es)
        else:
            cyc = self.cm.transfer(rows * cols * esz, rows, False, rows * cols)
        st.charge("ST", cyc, wr=rows * cols * esz)

    def _invalidate(self, lo, hi):
        if self._wcache:
            for k in [k for k in self._wcache if k[0] < hi and lo < k[1]]:
                del self._wcache[k]

    # -- the host's side of device memory ---------------------------------------------------------------
    def set_regions(self, prot: list[Prot]) -> None:
        """New protection regions (the driver's region registers): what was cached under the old ones is dropped
        (a stream cached as executable, or weights as read-only, may not be either now)."""
        if prot != self.regions:
            self.regions = list(prot)
            self._pcache.clear()
            self._wcache.clear()

    def write(self, addr: int, data) -> None:
        """A host write into device memory (a driver's sync_to_device, a runtime's inputs): stores the bytes and
        drops what fsim decoded from them, so a program or matrix the host rewrites is read again."""
        b = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        addr = int(addr)
        if addr < 0 or addr + b.size > self.mem.size:
            raise DeviceError(f"host write [{addr:#x}, {addr + b.size:#x}) beyond device memory ({self.mem.size:#x})",
                              ErrCode.MEM_BOUNDS, 0)
        self.mem[addr: addr + b.size] = b
        self.host_wrote(addr, addr + b.size)

    def host_wrote(self, lo: int, hi: int) -> None:
        """The host changed device memory [lo, hi) behind fsim's back (``mem`` is a plain array): the decoded
        weights from those bytes are dropped, and every decoded program if they touch an executable region (the
        engine never writes one, so only the host can change a program)."""
        self._invalidate(lo, hi)
        if self._pcache and (not self.regions or any(r.base < hi and lo < r.end and r.perm & PERM_X
                                                     for r in self.regions)):
            self._pcache.clear()

    # -- matrix engine --------------------------------------------------------------------------------
    def _weights(self, f, rows, cols, pc):
        """The operand's rows decoded, the channels it streams from (C: the board's weight channels with
        ``split``, else 1) and one channel's stream geometry (formats.weight_stream of its rows, row pairs for the
        paired formats) as (stream rows, bytes per stream row, stream stride). Split: channel c reads the ordinary
        layout of its ``split_rows`` local rows at waddr + c * SPLIT_STRIDE (formats.split_row_map)."""
        fmt, sp = f["fmt"], f["sp_n"]
        rb = row_bytes(fmt, cols, sp)
        addr, stride = f["waddr"], f["wstride"]
        C = self.board.accel.weight_channels if f["split"] else 1
        S = self.split_stride if C > 1 else 0
        sr, srb, sst = weight_stream(fmt, sp, split_rows(fmt, sp, rows, C) if C > 1 else rows, cols, stride)
        span = (sr - 1) * sst + srb
        if stride < rb and rows > 1:
            raise DeviceError(f"pc {pc}: weight rows overlap (stride {stride} < {rb})", ErrCode.ILLEGAL_INSTR, pc)
        bases = [addr + c * S for c in range(C)]
        regs_ = [self._region(a, a + span, False, pc) for a in bases]      # channel by channel, as the RTL
        # the key's range covers every section (what a write there must invalidate); C and S tell split reads apart
        key = (addr, bases[-1] + span, fmt, sp, rows, cols, stride, f["wfrac"], C, S)
        w = self._wcache.get(key)
        if w is None:
            def stream(a):
                if sst == srb:
                    return self.mem[a: a + span].reshape(sr, srb)
                return self.mem[(a + sst * np.arange(sr, dtype=np.int64))[:, None] + np.arange(srb)[None, :]]
            if C == 1:
                raw = deinterleave_rows(stream(addr), fmt, sp, rows)
            else:
                raw = merge_sections(np.stack([stream(a) for a in bases]), fmt, sp, rows)
            w = mpe_model.Weights(*unpack_weights(raw, fmt, sp, rows, cols, f["wfrac"]), fmt)
            if all(r is None or not r.writable for r in regs_):
                self._wcache[key] = w
        return w, C, (sr, srb, sst)

    def _x_MM(self, f, pc, st):
        rows, cols = extents(Op.MM, f, self.pos).values()
        T = f["tokens"]
        if rows < 1 or cols < BLOCK:
            raise DeviceError(f"pc {pc}: empty matrix ({rows} x {cols})", ErrCode.ILLEGAL_INSTR, pc)
        w, C, (sr, srb, sst) = self._weights(f, rows, cols, pc)
        xq = self._buf(self.qbuf, "QBUF", f["xaddr"], f["xstride"], T, cols, pc)
        xs = (f["xaddr"] // BLOCK, f["xstride"] // BLOCK, T, cols // BLOCK, pc)
        yv = self._buf(self.abuf, "ABUF", f["yaddr"], f["ystride"], T, rows, pc)
        if mm_outputs_overlap(rows, T, f["ystride"]):
            raise DeviceError(f"pc {pc}: {T} tokens' outputs of {rows} rows overlap (ystride {f['ystride']})",
                              ErrCode.ILLEGAL_INSTR, pc)
        y = mpe_model.mm(w, xq, self._buf(self.qm, "QBUF", *xs), self._buf(self.qe, "QBUF", *xs))
        yv[...] = sfu_model.add(yv, y) if f["acc"] else y
        wbytes = sr * srb               # one channel's stream
        segs = sr if sr > 1 and sst != srb else 1
        # split: the C channels stream in lockstep, each its own section on its own master (SPLIT_STRIDE is a
        # multiple of 4096: every channel has channel 0's beat offset), so the instruction costs one channel's
        # stream; every channel's payload is read
        st.charge("MM", self.cm.mm(wbytes, sr, cols, T, f["fmt"], f["sp_n"], segs, f["waddr"], sst),
                  rd=C * self.cm.mm_bytes(wbytes, T))

    _x_MV = _x_MM

    # -- special function unit ------------------------------------------------------------------------
    def _x_MISC(self, f, pc, st):
        fn = MiscOp(f["fn"])
        rows, n = f["rows"], extents(Op.MISC, f, self.pos)["n"]
        if fn == MiscOp.ROPE and n % f["imm"]:      # n_pos: n + POS must still be whole heads (the RTL's CHECK)
            raise DeviceError(f"pc {pc}: ROPE over {n} elements, not whole heads of {f['imm']}",
                              ErrCode.ILLEGAL_INSTR, pc)
        A = lambda base, stride, nn: self._buf(self.abuf, "ABUF", base, stride, rows, nn, pc)  # noqa: E731
        # every operand range is checked before any work, as the RTL's CHECK state does
        width = n + (rows - 1 if fn == MiscOp.SOFTMAX and f["causal"] else 0)
        src = A(f["src"], f["src_stride"], width)
        if fn == MiscOp.QUANT:
            n32 = -(-n // BLOCK) * BLOCK
            qv = self._buf(self.qbuf, "QBUF", f["dst"], f["dst_stride"], rows, n32, pc)
            bs = (f["dst"] // BLOCK, f["dst_stride"] // BLOCK, rows, n32 // BLOCK, pc)
            mv, ev = self._buf(self.qm, "QBUF", *bs), self._buf(self.qe, "QBUF", *bs)
            qv[...], mv[...], ev[...] = sfu_model.quant(src, f["imm"])
            st.charge("SFU", self.cm.misc(fn, rows, width))
            return
        dst = A(f["dst"], f["dst_stride"], 1 if fn == MiscOp.ARGMAX else width)
        if fn in (MiscOp.ADD, MiscOp.SILU_MUL):
            src2 = A(f["src2"], f["src2_stride"], n)
        elif fn == MiscOp.ROPE:
            src2 = A(f["src2"], f["src2_stride"], f["imm"])
        elif fn == MiscOp.RMSNORM:
            src2 = self._buf(self.abuf, "ABUF", f["src2"], 0, 1, n, pc)[0]
        ov = misc_overlap(f, n)                     # after the bounds, as the RTL's CHECK
        if ov is not None:
            raise DeviceError(f"pc {pc}: MISC {fn.name} writes ABUF [{ov[0]}, {ov[1]}), which overlaps a source "
                              "other than in place", ErrCode.ILLEGAL_INSTR, pc)
        if fn == MiscOp.SOFTMAX:
            valid = width - (rows - 1 - np.arange(rows)) if f["causal"] else np.full(rows, width)
            y = sfu_model.softmax(src, valid, f["imm"])
        elif fn == MiscOp.ARGMAX:
            y = sfu_model.argmax(src)[:, None]
        elif fn == MiscOp.COPY:
            y = src.copy()
        elif fn == MiscOp.ADD:
            y = sfu_model.add(src, src2)
        elif fn == MiscOp.SILU_MUL:
            y = sfu_model.silu_mul(src, src2)
        elif fn == MiscOp.RMSNORM:
            y = sfu_model.rmsnorm(src, src2, f["imm"])
        elif fn == MiscOp.ROPE:
            y = sfu_model.rope(src, src2, f["imm"])
        else:  # pragma: no cover - MiscOp is exhaustive
            raise DeviceError(f"pc {pc}: MISC {fn}", ErrCode.ILLEGAL_INSTR, pc)
        dst[...] = y
        st.charge("SFU", self.cm.misc(fn, rows, width, f["imm"] if fn == MiscOp.ROPE else None))

    def _x_SYS(self, f, pc, st):
        st.charge("SYS", self.cm.sys())
