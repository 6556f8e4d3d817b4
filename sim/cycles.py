"""Cycle model of the accelerator, per instruction, from the board config alone.

Execution is in order: an instruction's cycles are its issue overhead, plus the larger of its memory time
(bytes / the board's bytes per cycle) and its compute time, plus a pipeline drain. The RTL takes exactly these
cycles (tests/hw compare them cycle for cycle, unaligned addresses included); change both together.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from flightllm.boards import Board
from flightllm.formats import block_bytes
from flightllm.hw.params import STAGES, ld_words, sfu_width
from flightllm.isa import MiscOp, WFmt
from flightllm.sim.sfu_cycles import sfu_cycles

Q8_BLOCK_BYTES = block_bytes(WFmt.Q8_0)
MISC_FIXED = -1              # RTL: the SFU's start cycle is the engine's CHECK cycle (counted in both)
FETCH_FIXED = 4              # RTL: AR, align, decode, check, retire, plus the fetch's beats after the read latency
                             # (params.fetch_beats: 2 on a 64-byte port)
XFER_FIXED = 2               # RTL: stream start, last-beat drain
MM_FIXED = 4                 # RTL: stream start, first window, issue, hand-off per token tile
SEG_GAP = 2                  # RTL: each further row segment of a read stream whose rows are not contiguous
                             # (MM weights with wstride != row bytes, e.g. the V^T cache; LD with src_stride);
                             # an MM hides up to n - 1 of it behind the segment's last group (_seg_gap)
LD_QACT_FIXED = 1            # RTL: the QBUF block writer's last block
LD_I32_FIXED = 1             # RTL: LD I32 writes ld_words words a cycle (hw/top.py LD_RUN)
LDX_ROW_FIXED = 9            # RTL: LD idx per row: two stream starts, index hand-over, row drain
LD_Q8_FIXED = 1              # RTL: LD Q8_0 dequantises sfu_width words a cycle


@lru_cache(maxsize=4096)
def _mm_mid(o: int, total: int, nb: int, bb: int, k: int, n: int, port: int, per: int = 1) -> int:
    """MM over merged weight rows at beat offset ``o``: a group whose last byte arrives in a late beat issues
    (``n`` token cycles) once that beat is in, the groups after it one after another: the max over groups of
    that beat's index + 1 + the later groups' issue cycles (hw/top.py MM_RUN's kp/lim, as params.groups), + n - 1
    for the group's own further token cycles (only a group of more bytes than n beats carry makes that term
    decide: Q8_0 units on a 16-byte port). ``per``: cycles per beat (beat c is in at per * (c - 1) + 1)."""
    if nb >= k:                     # every group k blocks but the last: vectorised (any length; a group wider
        G = -(-total // k)          # than a beat, e.g. 5 Q8_0 4:16 blocks, makes the tail decide)
        g = np.arange(G, dtype=np.int64)
        ends = np.minimum((g + 1) * k, total)
        return int(np.max(per * (-(-(o + ends * bb) // port) - 1) + 1 + (G - 1 - g) * n)) + n - 1
    if total > 1 << 14:             # rows shorter than a group, long streams: the first/last terms decide
        return 0
    ends, b0, left, e = [], 0, total, 0
    while left > 0:
        kp = min(k, nb - b0 + nb - 1, left)
        e += kp
        ends.append(e)
        b0 += kp
        b0 -= nb if b0 >= nb else 0
        left -= kp
    G = len(ends)
    return max(per * (-(-(o + x * bb) // port) - 1) + 1 + (G - 1 - g) * n for g, x in enumerate(ends)) + n - 1


def _seg_gap(n: int) -> int:
    """Cycles each further row segment of an MM's weight stream adds with ``n`` tokens in the tile: the stream
    takes a group's bytes at its first token (hw/top.py MM_RUN), so it drops the segment's trail and the next
    one's lead while the last group repeats for the n - 1 further tokens."""
    return max(0, SEG_GAP - (n - 1))


def _early(n: int) -> int:
    """The cycle an MM tile of ``n`` >= 2 tokens ends sooner than one of one token: its stream has handed over
    the last group's bytes (and left its busy state) before the group's last token, not after it."""
    return 1 if n >= 2 else 0


class CycleModel:
    def __init__(self, board: Board):
        # every stream runs through one master on one memory channel (a split MV/MM: one per channel, in lockstep)
        self.bpc = board.channel_bytes_per_cycle
        self.lat = board.memory.latency_cycles
        self.macs = board.accel.macs_per_cycle
        self.chain = STAGES          # the MPE's drain: its chains are STAGES deep whatever chain_length says
        self.lanes = board.accel.sfu_lanes
        self.port = board.memory.port_bytes
        self.board = board
        # the RTL's configuration: one port-wide beat every ``per`` cycles (Board.beat_period: 1 where the memory
        # keeps up with the port, 2 on PYNQ-Z2; the harness serves exactly that). Only there are the effects of
        # addresses and strides off the beat modelled (measured on the RTL); other boards keep the byte-rate model.
        self.per = board.beat_period or 1
        self.beat = board.beat_period is not None and self.bpc <= self.port

    def _mem(self, nbytes: int) -> int:
        return -(-int(nbytes) // int(self.bpc)) if self.bpc >= 1 else int(nbytes / self.bpc + 0.999999)

    def _beats(self, nbytes: int) -> int:
        """Port-wide beats of ``nbytes`` (beat boards)."""
        return -(-int(nbytes) // self.port)

    def _arr(self, beats: int) -> int:
        """Cycles from a stream's first beat to the end of its ``beats``-th: one beat every ``per`` cycles."""
        return self.per * (beats - 1) + 1 if beats > 0 else 0

    def _lead(self, base: int, first_bytes: int = 0) -> int:
        """Cycles a read stream's first write waits past its first beat: the lead-byte drop (1 when ``base`` is
        not on a beat), or, when that write needs a whole block (LD Q8_0: 34 bytes, ``first_bytes``) and the block
        spans further beats, those beats (2 on a 16-byte port; never more than the drop on a 64-byte one), ``per``
        cycles each."""
        o = int(base) % self.port
        return max(1 if o else 0, self.per * (-(-(o + first_bytes) // self.port) - 1))

    def fetch(self) -> int:
        """Instruction fetch (one read of params.fetch_beats beats at the memory latency), decode and bounds
        check, retire."""
        from flightllm.hw import params as P

        fb = P.fetch_beats(self.board)
        return self.lat + FETCH_FIXED + (self._arr(fb) if self.beat else fb)

    def mm(self, wbytes: int, rows: int, cols: int, tokens: int, fmt: int, sp_n: int, segments: int = 1,
           base: int = 0, stride: int = 0) -> int:
        """RTL (docs/rtl.md): per token tile the weights stream once; each group of units issues once per
        token of the tile; the pipeline drains once at the end. ``wbytes``: one stream of the weights; ``rows``,
        ``stride``: the stream's rows and their stride (formats.weight_stream: row pairs for the paired formats);
        ``base``: the first byte's address (only its offset in the beat matters)."""
        from flightllm.hw import params as P

        nb = cols // 32
        bb = wbytes // max(1, rows * nb)
        tt = P.token_tile(self.board)
        if not self.beat:            # byte-rate boards: merged groups, no beat offsets (as before)
            groups = P.groups(self.board, fmt, sp_n, rows, nb, True)
            k0 = min(P.units(self.board, fmt, sp_n), 2 * nb - 1, rows * nb)
            first = 1 if k0 * bb > self.port else 0
            total = 0
            for t0 in range(0, tokens, tt):
                n = min(tt, tokens - t0)
                total += MM_FIXED + self.lat + max(self._mem(wbytes), groups * n + first) \
                    + _seg_gap(n) * (segments - 1) - _early(n)
            return self.fetch() + total + self.chain + 10
        merged = segments == 1
        groups = P.groups(self.board, fmt, sp_n, rows, nb, merged)
        o = int(base) % self.port
        # the first group issues once its blocks are in the buffer (they may span two beats) and, when the
        # weights do not start on a beat, once the extractor has dropped the lead bytes (a cycle after the
        # first beat); the stream ends with its last beat, ceil((o + bytes) / PB) beats after the first
        k0 = min(P.units(self.board, fmt, sp_n), 2 * nb - 1 if merged else nb, rows * nb)
        first = max(1 if o else 0, self.per * (-(-(o + k0 * bb) // self.port) - 1))
        mem = self._arr(self._beats(o + wbytes))
        seg_beats = seg_ends = 0
        if not merged:
            offs, rbeats = self._row_beats(base, rows, stride, wbytes // rows)
            seg_beats = self._arr(int(np.sum(rbeats)))
            # each row's groups: the stream beat their last byte is in (the rows' beats one after another)
            k = P.units(self.board, fmt, sp_n)
            ends = np.minimum((np.arange(-(-nb // k)) + 1) * k, nb) * bb
            seg_ends = (np.cumsum(rbeats) - rbeats)[:, None] + -(-(offs[:, None] + ends[None, :]) // self.port)
        total = 0
        for t0 in range(0, tokens, tt):
            n = min(tt, tokens - t0)
            if merged:
                mid = _mm_mid(o, rows * nb, nb, bb, P.units(self.board, fmt, sp_n), n, self.port, self.per)
                total += MM_FIXED + self.lat + max(mem, groups * n + first, mid) - _early(n)
            else:   # row segments: the extractor's per-segment gap overlaps the reads of the next rows' beats
                e = seg_ends.ravel()
                # the groups after each one follow n cycles apart, and a row boundary between adds the gap
                rb = np.repeat(np.arange(seg_ends.shape[0] - 1, -1, -1), seg_ends.shape[1])
                mid = int(np.max(self.per * (e - 1) + 1 + (e.size - 1 - np.arange(e.size)) * n
                                 + rb * _seg_gap(n))) + n - 1
                total += MM_FIXED + self.lat + max(seg_beats, groups * n + first + _seg_gap(n) * (segments - 1),
                                                   mid) - _early(n)
        return self.fetch() + total + self.chain + 10

    def mm_bytes(self, wbytes: int, tokens: int) -> int:
        """Bytes an MM reads: the weights once per token tile."""
        from flightllm.hw import params as P

        return wbytes * -(-tokens // P.token_tile(self.board))

    def transfer(self, nbytes: int, rows: int, contiguous: bool, elems: int, segments: int = 1, base: int = 0,
                 stride: int = 0) -> int:
        """LD Q8_0/QACT (contiguous) or ST I16 (one beat per element). A store retires on its last write
        response, which the memory gives after its latency (sim/rtl/harness.cpp). ``base``: an LD's first byte;
        the read stream drops the lead bytes of a first beat that does not start there a cycle after it arrives
        (later rows' leads are inside the SEG_GAP). ``stride``: an LD's source row stride (rows in segments)."""
        beats = self._mem(nbytes) if contiguous else elems
        if self.beat:
            beats = self._arr(self._beats(nbytes) if contiguous else elems)
        first = 0
        qact = contiguous and elems and nbytes * 32 == elems * 36
        if qact:                                                    # LD QACT: the RTL writes one block a cycle
            beats = max(self._beats(nbytes) if self.beat else beats, elems // 32) + LD_QACT_FIXED
        elif contiguous and elems and nbytes * 32 == elems * 34:   # LD Q8_0: SFU-width words a cycle
            beats = max(beats, elems // sfu_width(self.board)) + LD_Q8_FIXED
            first = Q8_BLOCK_BYTES                                  # once the first block is in
        lead = self._lead(base, first) if self.beat and contiguous else 0
        run = beats + lead + SEG_GAP * (segments - 1)
        if qact and self.beat:
            # a block a cycle, the lead drop and the segment gaps in between, or the stream's own beats (each row's
            # lead bytes included) decide: a block waiting for its beats leaves the drop and the gaps between
            # them (PYNQ-Z2's beat every 2 cycles, and KV260's 16-byte beat a cycle against a 36-byte block)
            run = max(elems // 32 + LD_QACT_FIXED + lead + SEG_GAP * (segments - 1),
                      self._arr(self._stream_beats(base, nbytes, rows, segments, stride)) + LD_QACT_FIXED)
        return self.fetch() + self.lat + run + XFER_FIXED

    def _stream_beats(self, base: int, nbytes: int, rows: int, segments: int, stride: int) -> int:
        """Beats a read stream of ``nbytes`` from ``base`` takes: one run, or ``rows`` rows ``stride`` apart."""
        if segments == 1:
            return self._beats(int(base) % self.port + nbytes)
        return int(np.sum(self._row_beats(base, rows, stride, nbytes // rows)[1]))

    def _row_beats(self, base: int, rows: int, stride: int, row_bytes: int):
        """Rows ``stride`` apart from ``base``: each row's offset in its first beat and the beats it spans."""
        offs = (int(base) + np.arange(rows, dtype=np.int64) * int(stride)) % self.port
        return offs, -(-(offs + row_bytes) // self.port)

    def st_i32(self, base: int, rows: int, cols: int, dst_stride: int, src_stride: int, elem_stride: int = 4) -> int:
        """ST I32 (hw/dma.py WriteStream): one W beat per 64-byte beat a row touches, rows merged into one when
        both strides are contiguous (or one row); a store retires on its last write response."""
        nb = 4 * cols
        if not self.beat:            # byte-rate boards: the bytes at the board's rate (one beat a word scattered)
            return self.transfer(rows * nb, rows, elem_stride == 4, rows * cols)
        if rows == 1 or (src_stride == cols and dst_stride == nb):
            beats = self._beats(int(base) % self.port + rows * nb)
        else:
            beats = sum(self._beats((int(base) + r * int(dst_stride)) % self.port + nb) for r in range(rows))
        return self.fetch() + self.lat + self._arr(beats) + XFER_FIXED

    def ld_i32(self, rows: int, cols: int, base: int = 0, segments: int = 1) -> int:
        """LD I32: the RTL writes up to ld_words words a cycle into the ABUF, a chunk never straddling a row;
        a first beat not starting at ``base`` costs the lead drop (``transfer``), each further row segment
        SEG_GAP."""
        W = ld_words(self.board)
        beats = max(self._arr(self._beats(rows * cols * 4)) if self.beat else self._mem(rows * cols * 4),
                    rows * -(-cols // W))
        if not self.beat:
            return self.fetch() + self.lat + beats + XFER_FIXED + LD_I32_FIXED
        lead = self._lead(base, 4 * min(W, cols))     # the first write needs its chunk's words in
        return self.fetch() + self.lat + beats + lead + XFER_FIXED + LD_I32_FIXED + SEG_GAP * (segments - 1)

    def ld_gather(self, addrs, chunks_per_row: int, idx_addr: int = 0, first_bytes: int = 0,
                  block_bytes: int = 0) -> int:
        """LD with idx (hw/top.py LDX_IDX/LDX_WAIT/LD_RUN): per row, a 4-byte read of its index, then the row's own
        read, one cycle more when the row does not start on a beat boundary. ``addrs``: the gathered rows' byte
        addresses; ``chunks_per_row``: the row's write cycles (Q8_0: blocks * 32 / W, I32: ceil(cols / W));
        ``first_bytes``: what a row's first write needs in (Q8_0: a block; see ``_lead``); ``block_bytes``: the
        row writes a block of this many bytes a cycle (LD QACT: 36), so on a beat board each block waits for
        its last beat (``_wait_blocks``)."""
        per_row = 2 * self.lat + LDX_ROW_FIXED + chunks_per_row
        if self.beat:
            mis = sum(max(self._lead(a, first_bytes), self._wait_blocks(a, block_bytes, chunks_per_row))
                      for a in addrs)
        else:
            mis = sum(1 for a in addrs if int(a) % self.port)
        # the index words: +1 when they do not start on a beat, -1 for each further beat they span (measured on
        # the RTL over idx_addr offsets and row counts, tests/hw/test_rtl_cycles_unaligned.py)
        if self.beat:
            io = int(idx_addr) % self.port
            mis += (1 if io else 0) - (-(-(io + 4 * len(addrs)) // self.port) - 1)
        return self.fetch() - 1 + len(addrs) * per_row + mis

    def _wait_blocks(self, base: int, block_bytes: int, blocks: int) -> int:
        """Cycles a row of ``blocks`` blocks written one a cycle loses to their beats (beat boards): block k is
        written once the beat holding its last byte is in, ``per`` cycles a beat, so the row ends the most any
        block waits past its place (k) in the run; 0 when nothing is given. A 36-byte LD QACT block spans 2.25
        16-byte beats (KV260, PYNQ-Z2); on a 64-byte port this never exceeds the lead drop."""
        if not block_bytes or not blocks:
            return 0
        o = int(base) % self.port
        k = np.arange(blocks, dtype=np.int64)
        return int(np.max(self.per * (-(-(o + (k + 1) * block_bytes) // self.port) - 1) - k))

    def misc(self, fn: MiscOp, rows: int, n: int, imm: int | None = None) -> int:
        """RTL: instruction fetch/decode/check/retire plus the SFU's exact cycles (hw/sfu.py, sim/sfu_cycles.py),
        its start cycle being the CHECK cycle. n: row width (SOFTMAX: n + rows - 1 when causal); imm: ROPE's head
        dim (without it, taken as a multiple of the SFU width)."""
        return self.fetch() + MISC_FIXED + sfu_cycles(sfu_width(self.board), fn, rows, n, imm)

    def sys(self) -> int:
        return self.fetch()
