"""DMA engines on the AXI4 master port.

``ReadStream``: reads a list of equally spaced byte segments (base + r*stride, len bytes each; one merged
segment when they touch) with back-to-back AR bursts (<= 64 beats, never across 4 KiB), into a ring of beat slots.
The consumer sees the ``window`` bytes at the ring's read pointer, ``cnt`` valid bytes, and consumes ``take`` bytes
per cycle; lead/trail bytes of partial beats are dropped here (the read pointer skips them).

``WriteStream`` (ST): AW bursts plus W beats whose 16 32-bit lanes are read from the banked ABUF, rotated to the
destination's byte offset, with write strobes for partial beats.
"""
from __future__ import annotations

from amaranth import Cat, Const, Elaboratable, Module, Mux, Signal
from amaranth.lib.memory import Memory

BURST_BEATS = 64


class ReadStream(Elaboratable):
    def __init__(self, port_bytes: int, buf_bytes: int, window: int):
        self.PB, self.BB, self.WB = port_bytes, buf_bytes, window
        self.lg = (port_bytes - 1).bit_length()
        # command
        self.start = Signal()
        self.base = Signal(48)
        self.seg_len = Signal(40)
        self.stride = Signal(48)
        self.nseg = Signal(25)
        self.flush = Signal()
        # AXI AR/R (R handshakes gated by the top)
        self.arvalid = Signal()
        self.arready = Signal()
        self.araddr = Signal(64)
        self.arlen = Signal(8)
        self.rvalid = Signal()
        self.rready = Signal()
        self.rdata = Signal(8 * port_bytes)
        # consumer side
        self.cnt = Signal(range(buf_bytes + 1))
        self.win = Signal(8 * window)
        self.data_phase = Signal()
        self.take = Signal(range(buf_bytes + 1))
        self.busy = Signal()            # segments remain to be consumed
        self.bytes_taken = Signal(32)   # data bytes consumed (statistics)
        self.clear_stats = Signal()     # zero bytes_taken (a new run starts)

    def elaborate(self, platform):
        m = Module()
        PB, lg = self.PB, self.lg
        # parameters are latched on start (inputs are only valid in the start cycle)
        seg_len, stride, nseg = Signal(40), Signal(48), Signal(25)
        with m.If(self.start):
            m.d.sync += [seg_len.eq(self.seg_len), stride.eq(self.stride), nseg.eq(self.nseg)]
        seg_len_c = Mux(self.start, self.seg_len, seg_len)
        # ---- AR issuer ----------------------------------------------------------------------------------
        ar_on = Signal()
        ar_seg = Signal(25)
        ar_base = Signal(48)
        cur = Signal(48 - lg)
        end = Signal(48 - lg)
        room = Signal(8)
        rem_beats = Signal(48 - lg)
        m.d.comb += [rem_beats.eq(end - cur), room.eq(BURST_BEATS - (cur & (BURST_BEATS - 1)))]
        n = Signal(8)
        m.d.comb += n.eq(Mux(rem_beats < room, rem_beats, room))
        m.d.comb += [self.arvalid.eq(ar_on), self.araddr.eq(cur << lg), self.arlen.eq(n - 1)]

        def seg_bounds(b):
            return [cur.eq(b >> lg), end.eq((b + seg_len_c + PB - 1) >> lg)]

        with m.If(self.start):
            m.d.sync += [ar_on.eq(1), ar_seg.eq(0), ar_base.eq(self.base)] + seg_bounds(self.base)
        with m.Elif(self.flush):
            m.d.sync += ar_on.eq(0)
        with m.Elif(ar_on & self.arready):
            with m.If(cur + n == end):
                nb = ar_base + stride
                m.d.sync += [ar_base.eq(nb), ar_seg.eq(ar_seg + 1)] + seg_bounds(nb)
                with m.If(ar_seg + 1 == nseg):
                    m.d.sync += ar_on.eq(0)
            with m.Else():
                m.d.sync += cur.eq(cur + n)

        # ---- extractor cursor: LEAD drop, DATA, TRAIL drop per segment ------------------------------------
        on = Signal()
        phase = Signal(2)            # 0 lead, 1 data, 2 trail
        left = Signal(40)            # bytes left in this phase
        x_seg = Signal(25)
        x_base = Signal(48)
        # the buffer is a ring of BB / PB beat slots: an accepted beat fills the next slot as it came (AXI beats
        # are address-aligned), and consuming bytes (taken, or lead / trail dropped) advances the read pointer
        # ``rp``; the window is the WB bytes from ``rp``: the slots they touch, shifted by rp's offset in its beat.
        # The same bytes as a FIFO shifted by what is consumed, without its two shifters as wide as the buffer
        # (~30k LUT a stream buffer on a 64-byte port). Bytes past ``cnt`` are stale, as the consumers allow (they
        # read only what ``cnt`` covers). The slots are small memories (asynchronous reads), so Verilator writes a
        # slot per copy and accepted beat instead of copying the whole buffer at every evaluation. There is one copy
        # per read port (the NW slots the window touches), each with one write and one read port, every copy taking
        # every beat: the simple dual-port LUT-RAM every family has. One memory with NW read ports maps to RAM32M16
        # on UltraScale+, but yosys builds it from flip-flops and multiplexers on 7-series parts (PYNQ-Z2's stream
        # was 8.0k LUT and 1,292 FF that way, 3.0k and 396 now).
        NS = self.BB // PB
        NW = -(-(self.WB + PB - 1) // PB)          # slots the window touches
        assert NS * PB == self.BB and NW <= NS
        wrs, rds = [], []
        for j in range(NW):
            m.submodules[f"ring{j}"] = ring = Memory(shape=8 * PB, depth=NS, init=[])
            wrs.append(ring.write_port())
            rds.append(ring.read_port(domain="comb"))
        rp = Signal(range(self.BB))
        ws = Signal(range(NS))
        cnt = self.cnt
        s0 = Signal(range(NS))
        m.d.comb += s0.eq(rp >> lg)
        for j, rd in enumerate(rds):
            m.d.comb += rd.addr.eq(Mux(s0 + j >= NS, s0 + j - NS, s0 + j))
        m.d.comb += [self.win.eq((Cat(*[rd.data for rd in rds]) >> (rp[:lg] << 3))[: 8 * self.WB]),
                     self.data_phase.eq(on & (phase == 1)), self.busy.eq(on)]
        tk = Signal(range(self.BB + 1))
        with m.If(on & (phase != 1)):
            m.d.comb += tk.eq(Mux(left < cnt, left, cnt))
        with m.Elif(on & (phase == 1)):
            m.d.comb += tk.eq(self.take)
        acc_beat = Signal()
        fill = Signal(range(self.BB + 1))
        m.d.comb += fill.eq(cnt - tk)
        m.d.comb += self.rready.eq(fill + PB <= self.BB)
        m.d.comb += acc_beat.eq(self.rvalid & self.rready)
        rp_n = Signal(range(2 * self.BB + 1))
        m.d.comb += rp_n.eq(rp + tk)
        for wr in wrs:
            m.d.comb += [wr.addr.eq(ws), wr.data.eq(self.rdata), wr.en.eq(acc_beat & ~self.flush & ~self.start)]
        with m.If(self.flush | self.start):
            m.d.sync += [cnt.eq(0), rp.eq(0), ws.eq(0)]
        with m.Else():
            m.d.sync += rp.eq(Mux(rp_n >= self.BB, rp_n - self.BB, rp_n))
            with m.If(acc_beat):
                m.d.sync += [cnt.eq(fill + PB), ws.eq(Mux(ws == NS - 1, 0, ws + 1))]
            with m.Else():
                m.d.sync += cnt.eq(fill)
        with m.If(self.start):
            m.d.sync += [on.eq(1), phase.eq(0), left.eq(self.base[:lg]), x_seg.eq(0), x_base.eq(self.base),
                         self.bytes_taken.eq(self.bytes_taken)]
        with m.Elif(self.flush):
            m.d.sync += on.eq(0)
        with m.Elif(on):
            with m.Switch(phase):
                with m.Case(0):
                    with m.If(left == tk):
                        m.d.sync += [phase.eq(1), left.eq(seg_len)]
                    with m.Else():
                        m.d.sync += left.eq(left - tk)
                with m.Case(1):
                    m.d.sync += self.bytes_taken.eq(self.bytes_taken + tk)
                    with m.If(left == tk):
                        m.d.sync += [phase.eq(2), left.eq((-(x_base + seg_len))[:lg])]
                    with m.Else():
                        m.d.sync += left.eq(left - tk)
                with m.Case(2):
                    with m.If(left == tk):
                        nb = x_base + stride
                        m.d.sync += [phase.eq(0), left.eq(nb[:lg]), x_base.eq(nb), x_seg.eq(x_seg + 1)]
                        with m.If(x_seg + 1 == nseg):
                            m.d.sync += on.eq(0)
                    with m.Else():
                        m.d.sync += left.eq(left - tk)
        with m.If(self.clear_stats):          # last: wins over the count above
            m.d.sync += self.bytes_taken.eq(0)
        return m


class WriteStream(Elaboratable):
    """ST I32: rows of ``cols`` ABUF words to memory (contiguous rows merged by the caller)."""

    def __init__(self, port_bytes: int, abuf_words: int, banks: int = 0):
        self.PB = port_bytes
        self.NL = port_bytes // 4                 # 32-bit lanes per beat
        self.NB = banks or self.NL                # ABUF banks (a power of two >= NL: a beat's words in distinct banks)
        assert self.NB >= self.NL and self.NB & (self.NB - 1) == 0
        self.lg = (port_bytes - 1).bit_length()
        self.bank_bits = (self.NB - 1).bit_length()
        self.row_bits = max(1, (abuf_words // self.NB - 1).bit_length())
        self.start = Signal()
        self.flush = Signal()
        self.dst = Signal(48)
        self.dst_stride = Signal(48)
        self.src = Signal(26)
        self.src_stride = Signal(26)
        self.rows = Signal(25)
        self.cols = Signal(26)                    # words per row
        self.busy = Signal()
        self.awvalid = Signal()
        self.awready = Signal()
        self.awaddr = Signal(64)
        self.awlen = Signal(8)
        self.wvalid = Signal()
        self.wready = Signal()
        self.wdata = Signal(8 * port_bytes)
        self.wstrb = Signal(port_bytes)
        self.wlast = Signal()
        self.bvalid = Signal()
        self.bresp = Signal(2)
        self.berr = Signal()
        # ABUF bank read ports (addr/en out, data in, one-cycle latency)
        self.rd_addr = [Signal(self.row_bits, name=f"st_ra_{i}") for i in range(self.NB)]
        self.rd_en = Signal()
        self.rd_data = [Signal(32, name=f"st_rd_{i}") for i in range(self.NB)]

    def elaborate(self, platform):
        m = Module()
        lg, NL, NB = self.lg, self.NL, self.NB
        cols_r, rows_r, dstr, sstr = Signal(26), Signal(25), Signal(48), Signal(26)
        with m.If(self.start):
            m.d.sync += [cols_r.eq(self.cols), rows_r.eq(self.rows), dstr.eq(self.dst_stride), sstr.eq(self.src_stride)]
        cols = Mux(self.start, self.cols, cols_r)
        nbytes = Signal(34)
        m.d.comb += nbytes.eq(cols << 2)
        # ---- AW issuer (per row, bursts <= 64 beats inside 4 KiB) --------------------------------------
        aw_on = Signal()
        aw_row = Signal(25)
        aw_base = Signal(48)
        cur = Signal(48 - lg)
        end = Signal(48 - lg)
        room = Signal(8)
        m.d.comb += room.eq(BURST_BEATS - (cur & (BURST_BEATS - 1)))
        n = Signal(8)
        m.d.comb += n.eq(Mux(end - cur < room, end - cur, room))
        m.d.comb += [self.awvalid.eq(aw_on), self.awaddr.eq(cur << lg), self.awlen.eq(n - 1)]
        bursts = Signal(32)      # AW issued - B received
        aw_fire = Signal()
        m.d.comb += aw_fire.eq(aw_on & self.awready)
        m.d.sync += bursts.eq(bursts + aw_fire - self.bvalid)
        with m.If(self.bvalid & (self.bresp != 0)):
            m.d.sync += self.berr.eq(1)

        def bounds(b):
            return [cur.eq(b >> lg), end.eq((b + nbytes + self.PB - 1) >> lg)]

        with m.If(self.start):
            m.d.sync += [aw_on.eq(1), aw_row.eq(0), aw_base.eq(self.dst), self.berr.eq(0)] + bounds(self.dst)
        with m.Elif(self.flush):
            m.d.sync += aw_on.eq(0)
        with m.Elif(aw_fire):
            with m.If(cur + n == end):
                nb = aw_base + dstr
                m.d.sync += [aw_base.eq(nb), aw_row.eq(aw_row + 1)] + bounds(nb)
                with m.If(aw_row + 1 == rows_r):
                    m.d.sync += aw_on.eq(0)
            with m.Else():
                m.d.sync += cur.eq(cur + n)
        # ---- W streamer ---------------------------------------------------------------------------------
        w_on = Signal()
        w_row = Signal(25)
        w_dst = Signal(48)
        w_src = Signal(26)
        wb = Signal(48 - lg)        # current beat (address >> lg)
        wend = Signal(48 - lg)
        bcnt = Signal(8)            # beat index inside the current burst
        blen = Signal(8)
        wroom = Signal(8)
        m.d.comb += wroom.eq(BURST_BEATS - (wb & (BURST_BEATS - 1)))
        # stage 2 (data) registers
        v2 = Signal()
        last2 = Signal()
        lo2 = Signal(signed_bits := 27)
        base2 = Signal(27)
        cols2 = Signal(26)
        adv = Signal()
        m.d.comb += adv.eq(~v2 | self.wready)
        # word index of lane 0 in this beat relative to the row start: (wb<<lg - w_dst) / 4
        rel = Signal(27)          # signed in two's complement: lane i word = rel + i
        m.d.comb += rel.eq(((wb << lg) - w_dst)[2:29])
        abase = Signal(27)
        m.d.comb += abase.eq(w_src + rel)
        for b in range(NB):         # every bank reads; those no lane of the beat maps to are not used
            lane = Signal(self.bank_bits, name=f"lane_of_bank_{b}")
            m.d.comb += lane.eq(b - abase[: self.bank_bits])
            m.d.comb += self.rd_addr[b].eq((abase + lane) >> self.bank_bits)
        m.d.comb += self.rd_en.eq(adv)
        issue = Signal()
        m.d.comb += issue.eq(w_on & adv)
        # end of burst: bcnt == blen
        cur_blen = Signal(8)
        m.d.comb += cur_blen.eq(Mux(wend - wb < wroom, wend - wb, wroom))
        with m.If(self.start):
            m.d.sync += [w_on.eq(1), w_row.eq(0), w_dst.eq(self.dst), w_src.eq(self.src),
                         wb.eq(self.dst >> lg), wend.eq((self.dst + nbytes + self.PB - 1) >> lg), bcnt.eq(0)]
        with m.Elif(self.flush):
            m.d.sync += w_on.eq(0)
        with m.Elif(issue):
            with m.If(bcnt == 0):
                m.d.sync += blen.eq(cur_blen)
            blen_now = Mux(bcnt == 0, cur_blen, blen)
            with m.If(bcnt + 1 == blen_now):
                m.d.sync += bcnt.eq(0)
            with m.Else():
                m.d.sync += bcnt.eq(bcnt + 1)
            with m.If(wb + 1 == wend):
                nd = w_dst + dstr
                m.d.sync += [w_row.eq(w_row + 1), w_dst.eq(nd), w_src.eq(w_src + sstr),
                             wb.eq(nd >> lg), wend.eq((nd + nbytes + self.PB - 1) >> lg), bcnt.eq(0)]
                with m.If(w_row + 1 == rows_r):
                    m.d.sync += w_on.eq(0)
            with m.Else():
                m.d.sync += wb.eq(wb + 1)
        blen_now = Mux(bcnt == 0, cur_blen, blen)
        with m.If(adv):
            m.d.sync += [v2.eq(issue), last2.eq((bcnt + 1 == blen_now) | (wb + 1 == wend)),
                         lo2.eq(rel), base2.eq(abase), cols2.eq(cols_r)]
        # rotate bank data into lanes, strobes for words inside [0, cols)
        data, strb = [], []
        for i in range(NL):
            bank = Signal(self.bank_bits, name=f"bank_of_lane_{i}")
            m.d.comb += bank.eq(base2[: self.bank_bits] + i)
            word = Signal(32, name=f"wlane_{i}")
            with m.Switch(bank):
                for b in range(NB):
                    with m.Case(b):
                        m.d.comb += word.eq(self.rd_data[b])
            w_i = Signal(27, name=f"widx_{i}")
            m.d.comb += w_i.eq(lo2 + i)
            ok = Signal(name=f"wok_{i}")
            m.d.comb += ok.eq(~w_i[26] & (w_i < cols2))
            data.append(word)
            strb.append(Mux(ok, 0xF, 0))
        m.d.comb += [self.wvalid.eq(v2), self.wdata.eq(Cat(*data)), self.wstrb.eq(Cat(*[s[:4] for s in strb])),
                     self.wlast.eq(last2)]
        m.d.comb += self.busy.eq(aw_on | w_on | v2 | (bursts != 0))
        return m
