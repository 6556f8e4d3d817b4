"""Engine top: instruction fetch/decode, DMA, QBUF/ABUF, the MPE, AXI4-Lite CSRs; generated from a Board.

Entry points: ``build_top(board)`` (an Amaranth Elaboratable plus its port list) and
``generate_verilog(board, path)``. Execution is in order, one instruction at a time (as sim/cycles.py models):
FETCH (first word inside an executable region, hw/prot.py; one AR of params.fetch_beats beats (2 on a 64-byte
port) at the instruction's beat, fewer at a region's end) -> ALIGN -> DECODE (illegal or truncated -> error) -> CHECK (buffer bounds, alignment,
memory regions -> error) -> EXEC (LD / ST / MM,MV / MISC on the SFU / SYS) -> RETIRE. Every AXI burst is checked
again against the regions before it is issued; CTRL.RESET returns the engine to IDLE.
"""
from __future__ import annotations

import re
from pathlib import Path

from amaranth import (Cat, ClockDomain, ClockSignal, Const, DomainRenamer, Elaboratable, Module, Mux, ResetInserter,
                      ResetSignal, Signal, signed)
from amaranth.hdl import Array

from flightllm.boards import Board
from flightllm.formats import ACT_FRAC, BLOCK, QACT_BLOCK_BYTES, SCALE_FIX, block_bytes, paired

Q8_BLOCK_BYTES = 34          # LD Q8_0: fp16 d + 32 int8
from flightllm.isa import ErrCode, LdFmt, MiscOp, Op, StFmt, SysOp, WFmt
from flightllm.hw import params as P
from flightllm.hw.clock_gate import VERILOG as CLKGATE_VERILOG, VERILOG_BUFGCE as CLKGATE_BUFGCE, ClockGate
from flightllm.hw.csr import Csr
from flightllm.hw.decoder import WIN_BITS, Decoder
from flightllm.hw.dma import ReadStream, WriteStream
from flightllm.hw.engine_abuf import EngineAbufPorts
from flightllm.hw.mpe import QWORD, Mpe
from flightllm.hw.ram import Ram, verilog as ram_verilog
from flightllm.hw.sfu import Sfu, SfuAbufPorts, sfu_width
from flightllm.hw.sfu_cores import restart_names
from flightllm.hw.regs import STATUS_BUSY, STATUS_DONE, STATUS_ERROR
from flightllm.hw.prot import FETCH, READ, WRITE, RegionCheck, region_regs


CLASSES = ("LD", "ST", "MM", "SYS", "SFU")     # cls register value -> CYC_<class> counter


class Top(Elaboratable):
    def __init__(self, board: Board, reset_less: bool = False):
        self.board = board
        # reset_less: see elaborate; the sync domain is then defined here and its clock is a port
        self.cd_sync = ClockDomain("sync", reset_less=True) if reset_less else None
        a = board.accel
        self.PB = board.memory.port_bytes
        self.lg = (self.PB - 1).bit_length()
        self.NL = P.abuf_banks(board)         # ABUF banks, word a in bank a % NL
        assert self.PB >= 16 and self.PB & (self.PB - 1) == 0, "a port of 16, 32, 64 ... bytes"
        self.FB = P.fetch_beats(board)       # beats of an instruction fetch (2 on a 64-byte port)
        self.K = P.max_lanes(board)
        self.TT = P.token_tile(board)
        self.qdepth = a.qbuf_bytes // BLOCK
        self.adepth = a.abuf_words // self.NL
        self.csr = Csr()
        # AXI4 masters: m_axi (channel 0: fetch, LD, ST, MM/MV) and, on a board with weight channels, m{c}_axi for
        # c = 1 .. C-1, which only a split MV/MM reads (their write channels are tied off: full AXI4 masters keep
        # the vendor flows' one interface kind)
        self.C = a.weight_channels
        D = 8 * self.PB
        self.mx = []
        for c in range(1, self.C):
            sig = {n: Signal(w, name=f"m{c}_axi_{n}") for n, w in self._axi(D)}
            self.mx.append(sig)
        for n, w in self._axi(D):
            setattr(self, f"m_{n}", Signal(w, name=f"m_axi_{n}"))
        self.irq = Signal()

    def _axi(self, D):
        return [("arvalid", 1), ("arready", 1), ("araddr", 64), ("arlen", 8), ("arsize", 3), ("arburst", 2),
                ("rvalid", 1), ("rready", 1), ("rdata", D), ("rresp", 2), ("rlast", 1),
                ("awvalid", 1), ("awready", 1), ("awaddr", 64), ("awlen", 8), ("awsize", 3), ("awburst", 2),
                ("wvalid", 1), ("wready", 1), ("wdata", D), ("wstrb", self.PB), ("wlast", 1),
                ("bvalid", 1), ("bready", 1), ("bresp", 2)]

    def ports(self):
        c = self.csr
        clk = [self.cd_sync.clk] if self.cd_sync is not None else []      # else Amaranth adds clk and rst
        return clk + [getattr(self, f"m_{n}") for n, _ in self._axi(8 * self.PB)] + [
                x[n] for x in self.mx for n, _ in self._axi(8 * self.PB)] + [self.irq,
                c.awvalid, c.awready, c.awaddr, c.wvalid, c.wready, c.wdata, c.wstrb, c.bvalid, c.bready, c.bresp,
                c.arvalid, c.arready, c.araddr, c.rvalid, c.rready, c.rdata, c.rresp]

    def elaborate(self, platform):
        m = Module()
        b, PB, lg, NL, K, TT = self.board, self.PB, self.lg, self.NL, self.K, self.TT
        a = b.accel
        if self.cd_sync is not None:
            # Verilator model (generate_verilog target "sim"): no rst port. Every register is declared with its
            # reset value, so the model starts in the reset state; CTRL.RESET (srst) works as before. A top-level
            # rst input would put every register's next-state logic in the cone of an input, which Verilator
            # evaluates again in each of the two evals per cycle (its "ico" region): 2.4x slower.
            m.domains.sync = self.cd_sync
        rst_sync = ResetSignal("sync", allow_reset_less=True)     # Const(0) when reset-less
        m.submodules.csr = csr = self.csr
        srst = csr.reset          # CTRL.RESET: the engine's state machines and datapaths back to idle (not the CSRs)
        m.submodules.dec = dec = Decoder()
        rs = ReadStream(PB, P.stream_buffer_bytes(b), P.window_bytes(b))
        ws = WriteStream(PB, a.abuf_words, NL)
        m.submodules.rs = ResetInserter(srst)(rs)
        m.submodules.ws = ResetInserter(srst)(ws)
        # ---- on-chip buffers ---------------------------------------------------------------------------
        m.submodules.qbuf = qbuf = Ram(QWORD, self.qdepth, "qbuf")
        qports = [qbuf.read_port() for _ in range(K)]
        qw = qbuf.write_port()
        mpe = Mpe(b, qports, a.abuf_words, gate=self.cd_sync is not None)     # gated decode paths: sim target
        m.submodules.mpe = ResetInserter(srst)(mpe)
        # weight channels 1 .. C-1 (split MV/MM): a read stream and an engine each, in lockstep with channel 0's;
        # their engines take channel 0's QBUF read data (the same activation blocks)
        C = self.C
        rsx, mpex = [], []
        for c in range(1, C):
            r_ = ReadStream(PB, P.stream_buffer_bytes(b), P.window_bytes(b))
            m.submodules[f"rs{c}"] = ResetInserter(srst)(r_)
            e_ = Mpe(b, qports, a.abuf_words, gate=self.cd_sync is not None, drive_q=False)
            m.submodules[f"mpe{c}"] = ResetInserter(srst)(e_)
            rsx.append(r_)
            mpex.append(e_)
        engs = [mpe] + mpex
        banks = []
        ultra = b.resources.get("uram", 0) > 0        # the ABUF banks in UltraRAM where the device has it (hw/ram.py)
        for i in range(NL):
            mem = Ram(32, self.adepth, f"abuf{i}", ultra=ultra)
            m.submodules[f"abuf{i}"] = mem
            banks.append((mem.read_port(), mem.write_port()))
        bb_bits = (NL - 1).bit_length()
        # special function unit (docs/sfu.md): its W-word ABUF ports spread over the banks by SfuAbufPorts
        # on its own gated clock (hw/clock_gate.py): running only from start to done, it behaves as if clock-enabled
        SW = sfu_width(b)
        LW = P.ld_words(b)
        m.domains.sfu = ClockDomain("sfu", local=True)
        m.submodules.sfu_gate = sgate = ClockGate()
        m.submodules.sfu = sfu = DomainRenamer("sfu")(Sfu(SW))
        # CTRL.RESET resets the SFU too: its domain's reset, with the gate open for that edge
        m.d.comb += [ClockSignal("sfu").eq(sgate.gclk), ResetSignal("sfu").eq(rst_sync | srst),
                     sgate.en.eq(sfu.start | sfu.busy | rst_sync | srst)]
        m.submodules.sfu_ab = sab = DomainRenamer("sfu")(SfuAbufPorts(SW, NL))
        m.d.comb += [sab.sfu_rd_en.eq(sfu.rd_en), sab.sfu_rd_addr.eq(sfu.rd_addr), sab.sfu_rd_mask.eq(sfu.rd_mask),
                     sfu.rd_data.eq(sab.sfu_rd_data), sab.sfu_wr_en.eq(sfu.wr_en), sab.sfu_wr_addr.eq(sfu.wr_addr),
                     sab.sfu_wr_mask.eq(sfu.wr_mask), sab.sfu_wr_data.eq(sfu.wr_data)]
        m.d.comb += [sab.rdata[i].eq(banks[i][0].data) for i in range(NL)]

        m.d.comb += [self.m_arsize.eq(lg), self.m_arburst.eq(1), self.m_awsize.eq(lg), self.m_awburst.eq(1),
                     self.m_bready.eq(1)]
        # ---- architectural state -----------------------------------------------------------------------
        busy, done, err = Signal(), Signal(), Signal()
        code = Signal(8)
        pc = Signal(32)
        cycles = Signal(64)
        instret = Signal(32)
        cyc = {k: Signal(32, name=f"cyc_{k}") for k in CLASSES}
        last_ret = Signal(64)
        cls = Signal(3)
        wr_bytes = Signal(32)
        ibase = Cat(csr.rw["INSTR_BASE_LO"], csr.rw["INSTR_BASE_HI"])
        memsize = Cat(csr.rw["MEM_SIZE_LO"], csr.rw["MEM_SIZE_HI"])
        pos = csr.rw["POS"]
        # memory protection (hw/prot.py): chk for the instruction-level checks (FETCH, CHECK, LDX_WAIT), and a
        # guard on each AXI channel that checks every burst before it is issued
        rregs = region_regs(csr.rw)
        m.submodules.chk = chk = RegionCheck(rregs, memsize)
        m.submodules.gar = gar = RegionCheck(rregs, memsize)
        m.submodules.gaw = gaw = RegionCheck(rregs, memsize)
        m.d.comb += [csr.ro["STATUS"].eq(Cat(busy, done, err)), csr.ro["ERROR"].eq(code), csr.ro["PC"].eq(pc),
                     csr.ro["CYCLES_LO"].eq(cycles[:32]), csr.ro["CYCLES_HI"].eq(cycles[32:]),
                     csr.ro["INSTRET"].eq(instret),
                     csr.ro["RD_BYTES"].eq(sum([rs.bytes_taken] + [r_.bytes_taken for r_ in rsx])),    # every channel
                     csr.ro["WR_BYTES"].eq(wr_bytes), csr.ro["ID"].eq(0)]
        for k, s in cyc.items():
            m.d.comb += csr.ro[f"CYC_{k}"].eq(s)
        m.d.comb += self.irq.eq(done | err)
        with m.If(busy):
            m.d.sync += cycles.eq(cycles + 1)

        # ---- instruction fetch & decode ----------------------------------------------------------------
        faddr = Signal(64)
        m.d.comb += faddr.eq(ibase + (pc << 2))
        FB = self.FB
        line = Signal(FB * 8 * PB)
        beat = Signal(range(FB))
        iw = Signal(WIN_BITS)
        m.d.comb += dec.iw.eq(iw)
        # decoded, resolved operands (registered in DECODE)
        f_mm, f_ld, f_st, f_sys = dec.f[Op.MM], dec.f[Op.LD], dec.f[Op.ST], dec.f[Op.SYS]
        f_misc = dec.f[Op.MISC]
        mn = Signal(25)             # MISC n, resolved (n + POS when n_pos)
        # the SFU's fields: the decoded word (stable until the next fetch) and the resolved n
        m.d.comb += [sfu.fn.eq(f_misc["fn"]), sfu.src.eq(f_misc["src"]), sfu.src2.eq(f_misc["src2"]),
                     sfu.dst.eq(f_misc["dst"]), sfu.n.eq(mn), sfu.rows.eq(f_misc["rows"]),
                     sfu.src_stride.eq(f_misc["src_stride"]), sfu.src2_stride.eq(f_misc["src2_stride"]),
                     sfu.dst_stride.eq(f_misc["dst_stride"]), sfu.imm.eq(f_misc["imm"]),
                     sfu.causal.eq(f_misc["causal"])]
        op = Signal(4)
        rows = Signal(25)
        cols = Signal(25)
        nb = Signal(20)
        mode = Signal(4)
        bbytes = Signal(7)
        klanes = Signal(range(K + 1))
        rb = Signal(32)             # MM: bytes per stream row (a row pair for the paired formats)
        srows = Signal(25)          # MM: stream rows (formats.weight_stream)
        wst = Signal(33)            # MM: stream row stride
        tokens = Signal(16)
        base = Signal(66)
        nbytes = Signal(32)
        # MM/MV derived
        mode_c = Signal(4)
        bb_c = Signal(7)
        k_c = Signal(range(K + 1))
        pair_c = Signal()
        with m.Switch(Cat(f_mm["sp_n"], f_mm["fmt"])):
            for mi, (fmt, sp) in enumerate(P.MODES):
                with m.Case(sp | (fmt << 5)):
                    m.d.comb += [mode_c.eq(mi), bb_c.eq(P.unit_bytes(fmt, sp)), k_c.eq(P.units(b, fmt, sp)),
                                 pair_c.eq(int(paired(fmt, sp)))]
        rows_c = Signal(25)
        cols_c = Signal(25)
        srows_g = Signal(25)
        srows_c = Signal(25)        # stream rows a channel streams: split, each of C channels ceil(srows / C)
        spl_c = Signal()
        lgC = (self.C - 1).bit_length()      # boards: weight_channels is a power of two
        m.d.comb += [srows_g.eq(Mux(pair_c, (rows_c + 1) >> 1, rows_c)),
                     spl_c.eq(f_mm["split"] if self.C > 1 else 0),
                     srows_c.eq(Mux(spl_c, (srows_g + (self.C - 1)) >> lgC, srows_g))]
        m.d.comb += [rows_c.eq(f_mm["rows"] + Mux(f_mm["rows_pos"], pos, 0)),
                     cols_c.eq(Mux(f_mm["cols_pos"], ((f_mm["cols"] + pos + 31) >> 5) << 5, f_mm["cols"]))]
        # check operands
        c_hi_mem = Signal(84)
        c_hi_buf = Signal(48)
        c_hi_buf2 = Signal(48)
        c_ill = Signal()
        c_misal = Signal()

        # ---- exec registers ----------------------------------------------------------------------------
        b0 = Signal(20)
        row = Signal(25)
        left = Signal(40)
        t = Signal(range(TT))
        tok0 = Signal(16)
        ttile = Signal(range(TT + 1))
        drain = Signal(8)
        merged = Signal()
        xgot = Signal()              # LD idx: the row's index word has been read
        xaddr_row = Signal(84)
        # LD unit counters
        ublk = Signal(20)
        urow = Signal(25)
        uleft = Signal(40)

        # defaults
        m.d.comb += [rs.start.eq(0), rs.flush.eq(0), ws.start.eq(0), ws.flush.eq(0), mpe.go.eq(0),
                     mpe.clear.eq(0), rs.take.eq(0)]
        fetch_ar = Signal()
        fetch_r = Signal()
        fline = Signal(64)
        m.d.comb += fline.eq((faddr >> lg) << lg)
        fn = Signal(range(FB + 1))   # beats the fetch reads: those of the line that start inside its region
        fn_c = Signal(range(FB + 1))
        fend = Signal(50)            # end of the fetched instruction's region (an instruction may not cross it)
        m.d.comb += fn_c.eq(1 + sum(fline + j * PB < chk.end for j in range(1, FB)))
        ar_cand, ar_ok, aw_cand, aw_ok = Signal(), Signal(), Signal(), Signal()
        m.d.comb += [ar_cand.eq(Mux(fetch_ar, 1, rs.arvalid)), ar_ok.eq(gar.code == 0), aw_ok.eq(gaw.code == 0),
                     self.m_arvalid.eq(ar_cand & ar_ok),
                     self.m_araddr.eq(Mux(fetch_ar, fline, rs.araddr)),
                     self.m_arlen.eq(Mux(fetch_ar, fn_c - 1, rs.arlen)),
                     rs.arready.eq(~fetch_ar & self.m_arready & ar_ok),
                     gar.lo.eq(self.m_araddr), gar.hi.eq(self.m_araddr + ((self.m_arlen + 1) << lg)),
                     gar.need.eq(Mux(fetch_ar, FETCH, READ)),
                     gaw.lo.eq(self.m_awaddr), gaw.hi.eq(self.m_awaddr + ((self.m_awlen + 1) << lg)),
                     gaw.need.eq(WRITE),
                     rs.rvalid.eq(~fetch_r & self.m_rvalid), rs.rdata.eq(self.m_rdata),
                     self.m_rready.eq(Mux(fetch_r, 1, rs.rready))]
        # ST I16 element store (state ST16_RUN): read word e_sa, AW at e_da in cycle t; W with the rounded,
        # saturated int16 in t + 1 (the bank's read latency); B responses counted down to zero
        e_row, e_col = Signal(16), Signal(16)
        e_sa, e_rsa = Signal(26), Signal(26)
        e_da, e_rda = Signal(48), Signal(48)
        e_left, e_bleft = Signal(32), Signal(32)
        e_v, e_err = Signal(), Signal()
        e_off = Signal(lg)
        e_awvalid = Signal()
        st16_ren = Signal()
        e_bank = Signal(bb_bits)
        with m.If(st16_ren):        # the bank the held read data came from (a W beat may wait for WREADY)
            m.d.sync += e_bank.eq(e_sa[:bb_bits])
        e_x = Signal(signed(32))
        m.d.comb += e_x.eq(Array([banks[i][0].data for i in range(NL)])[e_bank])
        e_sh = f_st["shift"]
        e_r = Signal(signed(34))
        m.d.comb += e_r.eq((e_x + ((Const(1, 33) << e_sh) >> 1)) >> e_sh)
        e_y = Signal(16)
        m.d.comb += e_y.eq(Mux(e_r > 32767, 32767, Mux(e_r < -32768, -32768, e_r)))
        st16_mode = Signal()
        m.d.comb += [aw_cand.eq(ws.awvalid), self.m_awvalid.eq(aw_cand & aw_ok), ws.awready.eq(self.m_awready & aw_ok),
                     self.m_awaddr.eq(ws.awaddr),
                     self.m_awlen.eq(ws.awlen), self.m_wvalid.eq(ws.wvalid), ws.wready.eq(self.m_wready),
                     self.m_wdata.eq(ws.wdata), self.m_wstrb.eq(ws.wstrb), self.m_wlast.eq(ws.wlast),
                     ws.bvalid.eq(self.m_bvalid), ws.bresp.eq(self.m_bresp)]
        with m.If(st16_mode):       # one single-beat AW per element and, a cycle or more later, its W beat
            m.d.comb += [aw_cand.eq(e_awvalid), self.m_awaddr.eq((e_da >> lg) << lg), self.m_awlen.eq(0),
                         self.m_wvalid.eq(e_v), self.m_wdata.eq(Cat(*([e_y] * (PB // 2)))),
                         self.m_wstrb.eq(Const(3, PB) << e_off), self.m_wlast.eq(1), ws.bvalid.eq(0)]
        with m.If(self.m_wvalid & self.m_wready):
            m.d.sync += wr_bytes.eq(wr_bytes + sum(self.m_wstrb[i] for i in range(PB)))

        # ABUF port muxing: the SFU (while it runs) reads and writes W words; ST reads all banks; MPE reads one word
        # (acc) and writes one word; LD I32 writes
        sfu_mode = Signal()
        ldq_mode = Signal()         # LD Q8_0 / I32: SW words a cycle through the SFU's bank write port
        ldq_addr = Signal(24)
        ldq_data = Signal(32 * SW)
        ldq_mask = Signal(SW)
        HALVES = BLOCK // SW
        uh = Signal(range(HALVES))
        with m.If(ldq_mode):
            m.d.comb += [sab.sfu_wr_en.eq(1), sab.sfu_wr_addr.eq(ldq_addr), sab.sfu_wr_mask.eq(ldq_mask),
                         sab.sfu_wr_data.eq(ldq_data)]
        st_mode = Signal()
        ld_wen = Signal()
        ld_waddr = Signal(26)
        ld_wdata = Signal(32)
        assert NL >= 2 * C, "each engine writes the two rows of a pair to neighbouring banks in one cycle"
        # the engines' ABUF ports: in lockstep (split) their rows are 2C consecutive words (formats.split_row_map),
        # so a rotation by engine 0's address puts each on its bank (hw/engine_abuf.py)
        m.submodules.eng_ab = eab = EngineAbufPorts(C, NL, len(mpe.ab_raddr))
        for c, e in enumerate(engs):
            for h, (ren, ra, rd, wen, wa, wd) in enumerate(
                    [(e.ab_ren, e.ab_raddr, e.ab_rdata, e.ab_wen, e.ab_waddr, e.ab_wdata),
                     (e.ab_ren1, e.ab_raddr1, e.ab_rdata1, e.ab_wen1, e.ab_waddr1, e.ab_wdata1)]):
                k = 2 * c + h
                m.d.comb += [eab.ren[k].eq(ren), eab.raddr[k].eq(ra), rd.eq(eab.rdata[k]),
                             eab.wen[k].eq(wen), eab.waddr[k].eq(wa), eab.wdata[k].eq(wd)]
        m.d.comb += [eab.rpair.eq(mpe.ab_rpair), eab.wpair.eq(mpe.ab_wpair)]
        for i, (rp, wp) in enumerate(banks):
            m.d.comb += [rp.addr.eq(Mux(sfu_mode, sab.raddr[i],
                                        Mux(st16_mode, e_sa >> bb_bits,
                                            Mux(st_mode, ws.rd_addr[i], eab.bank_raddr[i])))),
                         rp.en.eq(Mux(sfu_mode, sab.ren[i],
                                      Mux(st16_mode, st16_ren & (e_sa[:bb_bits] == i),
                                          Mux(st_mode, ws.rd_en, eab.bank_ren[i])))),
                         ws.rd_data[i].eq(rp.data), eab.bank_rdata[i].eq(rp.data)]
            sw_mode = sfu_mode | ldq_mode
            m.d.comb += [wp.addr.eq(Mux(sw_mode, sab.waddr[i], Mux(ld_wen, ld_waddr >> bb_bits, eab.bank_waddr[i]))),
                         wp.data.eq(Mux(sw_mode, sab.wdata[i], Mux(ld_wen, ld_wdata, eab.bank_wdata[i]))),
                         wp.en.eq(Mux(sw_mode, sab.wen[i], Mux(ld_wen, ld_waddr[:bb_bits] == i, eab.bank_wen[i])))]

        # MPE operand wiring
        xstride, ystride = Signal(24), Signal(24)
        xaddr, yaddr = Signal(24), Signal(24)
        wfrac, accf = Signal(5), Signal()
        rem = Signal(21)
        m.d.comb += rem.eq(nb - b0)
        lim = Signal(21)
        m.d.comb += lim.eq(Mux(merged, rem + nb - 1, rem))
        kp = Signal(range(K + 1))
        kk = Mux(klanes < lim, klanes, lim)
        m.d.comb += kp.eq(Mux(kk < left, kk, left))
        need = Signal(10)
        m.d.comb += need.eq(kp * bbytes)
        tg = Signal(16)
        m.d.comb += tg.eq(tok0 + t)
        # shared multipliers: one instruction is checked or run at a time, so the CHECK state's bounds products, the
        # MM / LD run products and the MM stream length share four multipliers, their operands chosen by the
        # registered op (and CHECK against the run states). Each product is the one it replaces, bit for bit.
        ma = [Signal(signed(27), name=f"mul_a{i}") for i in range(4)]
        mb = [Signal(34, name=f"mul_b{i}") for i in range(4)]
        mp = [Signal(signed(61), name=f"mul_p{i}") for i in range(4)]
        m.d.comb += [mp[i].eq(ma[i] * mb[i]) for i in range(4)]
        # the weight channels' masters: read-only; each burst checked by its own guard (in CHECK, the guard checks
        # the channel's whole range instead: no stream runs then)
        in_check = Signal()
        spl = Signal()               # the MM/MV in flight streams split over the weight channels
        sstride = Signal(48)
        m.d.comb += sstride.eq(Cat(csr.rw["SPLIT_STRIDE_LO"], csr.rw["SPLIT_STRIDE_HI"][:16]))
        cbase = [Signal(66, name=f"cbase{c}") for c in range(1, C)]
        garx = []
        for c, (x, r_, cb) in enumerate(zip(self.mx, rsx, cbase), start=1):
            g_ = RegionCheck(rregs, memsize)
            m.submodules[f"gar{c}"] = g_
            garx.append(g_)
            m.d.comb += [cb.eq(base + c * sstride),
                         g_.lo.eq(Mux(in_check, cb, x["araddr"])),
                         g_.hi.eq(Mux(in_check, cb + mp[0] + rb, x["araddr"] + ((x["arlen"] + 1) << lg))),
                         g_.need.eq(READ),
                         x["arvalid"].eq(r_.arvalid & (g_.code == 0)), x["araddr"].eq(r_.araddr),
                         x["arlen"].eq(r_.arlen), x["arsize"].eq(lg), x["arburst"].eq(1),
                         r_.arready.eq(x["arready"] & (g_.code == 0)),
                         r_.rvalid.eq(x["rvalid"]), r_.rdata.eq(x["rdata"]), x["rready"].eq(r_.rready),
                         # read-only: the write channels are driven idle (undriven they would be top inputs)
                         x["awvalid"].eq(0), x["awaddr"].eq(0), x["awlen"].eq(0), x["awsize"].eq(lg),
                         x["awburst"].eq(1), x["wvalid"].eq(0), x["wdata"].eq(0), x["wstrb"].eq(0), x["wlast"].eq(0),
                         x["bready"].eq(1), r_.clear_stats.eq(rs.clear_stats), r_.flush.eq(rs.flush),
                         r_.take.eq(Mux(spl, rs.take, 0))]

        def mul_ops(*pairs):
            return [x for i, (u, v) in enumerate(pairs) for x in (ma[i].eq(u), mb[i].eq(v))]

        with m.Switch(op):
            with m.Case(int(Op.MM), int(Op.MV)):
                tk = Mux(in_check, tokens - 1, tg)
                m.d.comb += mul_ops((srows - 1, wst), (tk, xstride), (tk, ystride), (srows, rb))
            with m.Case(int(Op.LD)):
                ldq = (f_ld["fmt"] == LdFmt.QACT) | (f_ld["fmt"] == LdFmt.Q8_0)
                m.d.comb += mul_ops((rows - 1, f_ld["src_stride"]),
                                    (Mux(in_check, rows - 1, urow),
                                     Mux(in_check | (f_ld["fmt"] != LdFmt.QACT), f_ld["dst_stride"],
                                         f_ld["dst_stride"] >> 5)),
                                    (rows, nbytes), (rows, Mux(ldq, nb, cols)))
            with m.Case(int(Op.ST)):
                m.d.comb += mul_ops((rows - 1, f_st["dst_stride"]), (rows - 1, f_st["src_stride"]),
                                    (cols - 1, f_st["elem_stride"]), (rows, cols))
            with m.Case(int(Op.MISC)):
                r1m = Signal(16)
                m.d.comb += r1m.eq(rows - 1)
                m.d.comb += mul_ops((r1m, f_misc["src_stride"]), (r1m, f_misc["dst_stride"]),
                                    (r1m, f_misc["src2_stride"]))
        m.d.comb += [mpe.win.eq(rs.win), mpe.mode.eq(mode), mpe.kp.eq(kp), mpe.rem.eq(rem),
                     mpe.rowend.eq(kp >= rem), mpe.t.eq(t), mpe.b0.eq(b0), mpe.nb.eq(nb),
                     mpe.xrow.eq((xaddr + mp[1]) >> 5), mpe.ybase.eq(yaddr + mp[2]),
                     mpe.wfrac.eq(wfrac), mpe.acc.eq(accf)]
        # each engine's stream row as a global one: split, channel c's local row r is row r * C + c
        # (formats.split_row_map); the rows past the operand's end are a channel's zero padding, never written
        for c, e in enumerate(engs):
            grow = Signal(25, name=f"grow{c}")
            m.d.comb += [grow.eq(Mux(spl, (row << lgC) | c, row) if C > 1 else row), e.row.eq(grow),
                         e.oddv.eq(Cat(Const(1, 1), grow) < rows),
                         e.evv.eq(Mux(pair_c, Cat(Const(0, 1), grow), grow) < rows)]
            if c:
                m.d.comb += [e.win.eq(rsx[c - 1].win), e.go.eq(mpe.go & spl), e.clear.eq(mpe.clear),
                             e.mode.eq(mpe.mode), e.kp.eq(mpe.kp), e.rem.eq(mpe.rem), e.rowend.eq(mpe.rowend),
                             e.t.eq(mpe.t), e.b0.eq(mpe.b0), e.nb.eq(mpe.nb), e.xrow.eq(mpe.xrow),
                             e.ybase.eq(mpe.ybase), e.wfrac.eq(mpe.wfrac), e.acc.eq(mpe.acc)]
        m.d.comb += [qw.en.eq(0)]

        def fail(c):
            return [err.eq(1), busy.eq(0), code.eq(int(c))]

        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(csr.start):
                    m.d.comb += rs.clear_stats.eq(1)
                    m.d.sync += [busy.eq(1), done.eq(0), err.eq(0), code.eq(0), pc.eq(0), cycles.eq(0),
                                 instret.eq(0), last_ret.eq(0), wr_bytes.eq(0)] + [s.eq(0) for s in cyc.values()]
                    m.next = "FETCH"
            with m.State("FETCH"):
                # the instruction's first word must lie in an executable region (sim/fsim.py::_stream)
                m.d.comb += [chk.lo.eq(faddr), chk.hi.eq(faddr + 4), chk.need.eq(FETCH)]
                with m.If(ibase[:2] != 0):
                    m.d.sync += fail(ErrCode.MISALIGNED)
                    m.next = "STOP"
                with m.Elif(chk.code != 0):
                    m.d.sync += [err.eq(1), busy.eq(0), code.eq(chk.code)]
                    m.next = "STOP"
                with m.Else():
                    m.d.comb += fetch_ar.eq(1)
                    with m.If(self.m_arready & ar_ok):
                        m.d.sync += [beat.eq(0), fn.eq(fn_c), fend.eq(chk.end)]
                        m.next = "FWAIT"
            with m.State("FWAIT"):
                m.d.comb += fetch_r.eq(1)
                with m.If(beat >= fn):      # a beat past the region (not read): this cycle stands for it (same timing)
                    m.d.sync += beat.eq(beat + 1)
                    with m.If(beat == FB - 1):
                        m.next = "ALIGN"
                with m.Elif(self.m_rvalid):
                    m.d.sync += beat.eq(beat + 1)
                    with m.Switch(beat):
                        for j in range(FB):
                            with m.Case(j):
                                m.d.sync += line[8 * PB * j: 8 * PB * (j + 1)].eq(self.m_rdata)
                    with m.If(beat == FB - 1):
                        m.next = "ALIGN"
                    with m.If(self.m_rresp != 0):
                        m.d.sync += fail(ErrCode.AXI_ERROR)
                        m.next = "STOP"
            with m.State("ALIGN"):
                with m.Switch(faddr[2:lg]):          # a case per word offset (instructions are word-aligned: FETCH)
                    for i in range(PB // 4):
                        with m.Case(i):
                            m.d.sync += iw.eq(line[32 * i:])
                m.next = "DECODE"
            with m.State("DECODE"):
                pos_off = Signal(64)
                m.d.comb += pos_off.eq(pos * Mux(dec.op == Op.ST, f_st["pos_stride"], f_ld["pos_stride"]))
                m.d.sync += [op.eq(dec.op), spl.eq(0)]     # an MM/MV below sets spl
                with m.If(dec.illegal | (faddr + (dec.nwords << 2) > fend)):     # or truncated at its region's end
                    m.d.sync += fail(ErrCode.ILLEGAL_INSTR)
                    m.next = "STOP"
                with m.Else():
                    m.next = "CHECK"
                    with m.Switch(dec.op):
                        with m.Case(int(Op.MM), int(Op.MV)):
                            m.d.sync += [cls.eq(2), rows.eq(rows_c), cols.eq(cols_c), nb.eq(cols_c >> 5),
                                         mode.eq(mode_c), bbytes.eq(bb_c), klanes.eq(k_c), tokens.eq(f_mm["tokens"]),
                                         rb.eq((cols_c >> 5) * bb_c), base.eq(f_mm["waddr"]),
                                         srows.eq(srows_c), spl.eq(spl_c),
                                         wst.eq(Mux(pair_c, f_mm["wstride"] << 1, f_mm["wstride"])),
                                         xaddr.eq(f_mm["xaddr"]), xstride.eq(f_mm["xstride"]),
                                         yaddr.eq(f_mm["yaddr"]), ystride.eq(f_mm["ystride"]),
                                         wfrac.eq(f_mm["wfrac"]), accf.eq(f_mm["acc"])]
                        with m.Case(int(Op.LD)):
                            nbc = Mux(f_ld["fmt"] == LdFmt.QACT, (f_ld["cols"] >> 5) * QACT_BLOCK_BYTES,
                                      Mux(f_ld["fmt"] == LdFmt.Q8_0, (f_ld["cols"] >> 5) * Q8_BLOCK_BYTES,
                                          f_ld["cols"] << 2))
                            m.d.sync += [cls.eq(0), rows.eq(f_ld["rows"]), cols.eq(f_ld["cols"]),
                                         nb.eq(f_ld["cols"] >> 5), nbytes.eq(nbc),
                                         base.eq(f_ld["addr"] + pos_off)]
                        with m.Case(int(Op.ST)):
                            m.d.sync += [cls.eq(1), rows.eq(f_st["rows"]), cols.eq(f_st["cols"]),
                                         base.eq(f_st["addr"] + pos_off)]
                        with m.Case(int(Op.SYS)):
                            m.d.sync += cls.eq(3)
                        with m.Case(int(Op.MISC)):
                            m.d.sync += [cls.eq(4), rows.eq(f_misc["rows"]),
                                         mn.eq(f_misc["n"] + Mux(f_misc["n_pos"], pos, 0))]
            with m.State("CHECK"):
                # bounds, computed from the registered operands (mirrors sim/fsim.py's order of checks)
                m.d.comb += in_check.eq(1)
                with m.Switch(op):
                    with m.Case(int(Op.MM), int(Op.MV)):
                        m.d.comb += [c_ill.eq((rows == 0) | (cols < BLOCK)
                                              | ((wst < rb) & (rows > 1))),
                                     c_hi_mem.eq(base + mp[0] + rb),
                                     c_hi_buf.eq(xaddr + mp[1] + cols),
                                     c_hi_buf2.eq(yaddr + mp[2] + rows)]
                        m.d.comb += [chk.lo.eq(base), chk.hi.eq(c_hi_mem), chk.need.eq(READ)]
                        with m.If(c_ill):
                            m.d.sync += fail(ErrCode.ILLEGAL_INSTR)
                            m.next = "STOP"
                        with m.Elif(chk.code != 0):
                            m.d.sync += [err.eq(1), busy.eq(0), code.eq(chk.code)]
                            m.next = "STOP"
                        for g_ in garx:             # the other weight channels' ranges, in channel order
                            with m.Elif(spl & (g_.code != 0)):
                                m.d.sync += [err.eq(1), busy.eq(0), code.eq(g_.code)]
                                m.next = "STOP"
                        with m.Elif((c_hi_buf > a.qbuf_bytes) | (c_hi_buf2 > a.abuf_words)):
                            m.d.sync += fail(ErrCode.BUF_OVERFLOW)
                            m.next = "STOP"
                        with m.Elif((tokens > 1) & (ystride < rows)):      # isa.mm_outputs_overlap
                            m.d.sync += fail(ErrCode.ILLEGAL_INSTR)
                            m.next = "STOP"
                        with m.Else():
                            m.d.sync += [merged.eq((wst == rb) | (srows == 1)), tok0.eq(0)]
                            m.d.comb += mpe.clear.eq(1)
                            m.next = "MM_START"
                    with m.Case(int(Op.LD)):
                        isq = f_ld["fmt"] == LdFmt.QACT
                        # gathered rows (idx): the index words' range here; each row's range when its index is read
                        m.d.comb += [c_hi_mem.eq(Mux(f_ld["idx"], f_ld["idx_addr"] + (rows << 2),
                                                     base + mp[0] + nbytes)),
                                     c_hi_buf.eq(f_ld["dst"] + mp[1] + cols)]
                        m.d.comb += [chk.lo.eq(Mux(f_ld["idx"], f_ld["idx_addr"], base)), chk.hi.eq(c_hi_mem),
                                     chk.need.eq(READ)]
                        with m.If(rows == 0):
                            m.d.sync += fail(ErrCode.MEM_BOUNDS)
                            m.next = "STOP"
                        with m.Elif((f_ld["idx"] & (f_ld["idx_addr"][:2] != 0))
                                    | ((f_ld["fmt"] == LdFmt.I32) & ((base[:2] != 0) | (f_ld["src_stride"][:2] != 0)))):
                            m.d.sync += fail(ErrCode.MISALIGNED)
                            m.next = "STOP"
                        with m.Elif(chk.code != 0):
                            m.d.sync += [err.eq(1), busy.eq(0), code.eq(chk.code)]
                            m.next = "STOP"
                        with m.Elif((cols == 0) | (c_hi_buf > Mux(isq, a.qbuf_bytes, a.abuf_words))):
                            m.d.sync += fail(ErrCode.BUF_OVERFLOW)
                            m.next = "STOP"
                        with m.Elif(f_ld["idx"]):
                            m.d.sync += [ublk.eq(0), urow.eq(0), uh.eq(0)]
                            m.next = "LDX_IDX"
                        with m.Else():
                            mg = (f_ld["src_stride"] == nbytes) | (rows == 1)
                            m.d.comb += [rs.start.eq(1), rs.base.eq(base),
                                         rs.seg_len.eq(Mux(mg, mp[2], nbytes)),
                                         rs.stride.eq(f_ld["src_stride"]), rs.nseg.eq(Mux(mg, 1, rows))]
                            m.d.sync += [ublk.eq(0), urow.eq(0),
                                         uleft.eq(mp[3]),
                                         uh.eq(0)]
                            m.next = "LD_RUN"
                    with m.Case(int(Op.ST)):
                        es = f_st["elem_stride"]
                        is16 = f_st["fmt"] == StFmt.I16
                        esz = Mux(is16, 2, 4)
                        m.d.comb += [c_hi_buf.eq(f_st["src"] + mp[1] + cols),
                                     c_hi_mem.eq(base + mp[0] + mp[2] + esz),
                                     chk.lo.eq(base), chk.hi.eq(c_hi_mem), chk.need.eq(WRITE)]
                        with m.If((rows == 0) | (cols == 0) | (c_hi_buf > a.abuf_words)):
                            m.d.sync += fail(ErrCode.BUF_OVERFLOW)
                            m.next = "STOP"
                        with m.Elif(((es < esz) | (~is16 & (es != 4))) & (cols > 1)):
                            # overlapping elements are illegal; scattered I32 stores are not implemented
                            m.d.sync += fail(ErrCode.ILLEGAL_INSTR)
                            m.next = "STOP"
                        with m.Elif(Mux(is16, base[0] | es[0] | f_st["dst_stride"][0],
                                        (base[:2] != 0) | (es[:2] != 0) | (f_st["dst_stride"][:2] != 0))):
                            m.d.sync += fail(ErrCode.MISALIGNED)
                            m.next = "STOP"
                        with m.Elif(chk.code != 0):
                            m.d.sync += [err.eq(1), busy.eq(0), code.eq(chk.code)]
                            m.next = "STOP"
                        with m.Elif(is16):
                            # element by element: one ABUF read, one single-beat AW + W (2-byte strobe) each cycle
                            m.d.sync += [e_row.eq(0), e_col.eq(0), e_sa.eq(f_st["src"]), e_rsa.eq(f_st["src"]),
                                         e_da.eq(base), e_rda.eq(base), e_left.eq(mp[3]), e_bleft.eq(mp[3]),
                                         e_v.eq(0), e_err.eq(0)]
                            m.next = "ST16_RUN"
                        with m.Else():
                            mg = ((f_st["src_stride"] == cols) & (f_st["dst_stride"] == (cols << 2))) | (rows == 1)
                            m.d.comb += [ws.start.eq(1), ws.dst.eq(base), ws.dst_stride.eq(f_st["dst_stride"]),
                                         ws.src.eq(f_st["src"]), ws.src_stride.eq(f_st["src_stride"]),
                                         ws.rows.eq(Mux(mg, 1, rows)), ws.cols.eq(Mux(mg, mp[3], cols))]
                            m.next = "ST_RUN"
                    with m.Case(int(Op.MISC)):
                        # every operand range before any work, as sim/fsim.py::_x_MISC (all BUF_OVERFLOW)
                        fm = f_misc
                        fn = fm["fn"]
                        mw = Signal(42)
                        n32 = Signal(30)
                        m.d.comb += [mw.eq(mn + Mux((fn == MiscOp.SOFTMAX) & fm["causal"], r1m, 0)),
                                     n32.eq(((mn + 31) >> 5) << 5)]
                        hi_src = fm["src"] + mp[0] + mw
                        hi_dst = fm["dst"] + mp[1] + Mux(fn == MiscOp.ARGMAX, 1, mw)
                        hi_q = fm["dst"] + mp[1] + n32
                        hi_2 = fm["src2"] + mp[2] + Mux(fn == MiscOp.ROPE, fm["imm"], mn)
                        two = (fn == MiscOp.ADD) | (fn == MiscOp.SILU_MUL) | (fn == MiscOp.ROPE)
                        bad = ((rows == 0) | (mw == 0) | (hi_src > a.abuf_words)
                               | Mux(fn == MiscOp.QUANT, hi_q > a.qbuf_bytes, hi_dst > a.abuf_words)
                               | (two & (hi_2 > a.abuf_words))
                               | ((fn == MiscOp.RMSNORM) & (fm["src2"] + mn > a.abuf_words)))
                        # dst meets src (and ADD / SILU_MUL's src2) only exactly in place (rows apart), never the
                        # ROPE table or the gain: the SFU streams rows, fsim computes whole instructions
                        # (isa.misc_overlap)
                        wd = Mux(fn == MiscOp.ARGMAX, 1, mw)
                        apart = (rows == 1) | (fm["dst_stride"] >= wd)
                        inpl = (fm["dst"] == fm["src"]) & (fm["dst_stride"] == fm["src_stride"]) & apart
                        inpl2 = ((fn != MiscOp.ROPE) & (fm["dst"] == fm["src2"])
                                 & (fm["dst_stride"] == fm["src2_stride"]) & apart)
                        ovl = (fn != MiscOp.QUANT) & (
                            ((fm["src"] < hi_dst) & (fm["dst"] < hi_src) & ~inpl)
                            | (two & (fm["src2"] < hi_dst) & (fm["dst"] < hi_2) & ~inpl2)
                            | ((fn == MiscOp.RMSNORM) & (fm["src2"] < hi_dst) & (fm["dst"] < fm["src2"] + mn)))
                        with m.If((fn == MiscOp.ROPE) & (mn % fm["imm"] != 0)):
                            m.d.sync += fail(ErrCode.ILLEGAL_INSTR)     # n + POS no longer whole heads
                            m.next = "STOP"
                        with m.Elif(bad):
                            m.d.sync += fail(ErrCode.BUF_OVERFLOW)
                            m.next = "STOP"
                        with m.Elif(ovl):
                            m.d.sync += fail(ErrCode.ILLEGAL_INSTR)
                            m.next = "STOP"
                        with m.Else():
                            m.d.comb += sfu.start.eq(1)
                            m.next = "SFU_RUN"
                    with m.Case(int(Op.SYS)):
                        with m.If(f_sys["fn"] == SysOp.END):
                            m.next = "END"
                        with m.Else():
                            m.next = "RETIRE"
            # ---- MM / MV ----------------------------------------------------------------------------------
            with m.State("MM_START"):
                m.d.comb += [rs.start.eq(1), rs.base.eq(base), rs.seg_len.eq(Mux(merged, mp[3], rb)),
                             rs.stride.eq(wst), rs.nseg.eq(Mux(merged, 1, srows))]
                for r_, cb in zip(rsx, cbase):
                    m.d.comb += [r_.start.eq(spl), r_.base.eq(cb), r_.seg_len.eq(rs.seg_len), r_.stride.eq(wst),
                                 r_.nseg.eq(rs.nseg)]
                tl = tokens - tok0
                m.d.sync += [b0.eq(0), row.eq(0), left.eq(srows * nb), t.eq(0),
                             ttile.eq(Mux(tl > TT, TT, tl))]
                m.next = "MM_RUN"
            with m.State("MM_RUN"):
                # a group's first token needs its bytes in every channel's stream and takes them (the engines
                # hold the window for the further tokens, hw/mpe.py), so the streams refill while it repeats:
                # a group wider than half the stream buffer (Q8_0's 68-byte unit on a 16-byte port) would
                # otherwise wait a cycle for the next one after a compute-bound group
                fire = Signal()
                m.d.comb += fire.eq((left != 0) & ((t != 0) | (
                    rs.data_phase & (rs.cnt >= need)
                    & _all(~spl | (r_.data_phase & (r_.cnt >= need)) for r_ in rsx))))
                with m.If(fire):
                    m.d.comb += mpe.go.eq(1)
                    with m.If(t == 0):
                        m.d.comb += rs.take.eq(need)
                    with m.If(t + 1 == ttile):
                        nb0 = b0 + kp
                        m.d.sync += [t.eq(0), left.eq(left - kp), b0.eq(Mux(nb0 >= nb, nb0 - nb, nb0)),
                                     row.eq(row + (kp >= rem))]
                    with m.Else():
                        m.d.sync += t.eq(t + 1)
                with m.If((left == 0) & ~rs.busy & ~_any(r_.busy for r_ in rsx)):
                    with m.If(tok0 + TT < tokens):
                        m.d.sync += tok0.eq(tok0 + TT)
                        m.next = "MM_START"
                    with m.Else():
                        m.d.sync += drain.eq(mpe.depth)
                        m.next = "DRAIN"
                with m.If(_any([self.m_rvalid & self.m_rready & (self.m_rresp != 0)]
                               + [x["rvalid"] & x["rready"] & (x["rresp"] != 0) for x in self.mx])):
                    m.d.comb += rs.flush.eq(1)
                    m.d.sync += fail(ErrCode.AXI_ERROR)
                    m.next = "STOP"
            with m.State("DRAIN"):
                m.d.sync += drain.eq(drain - 1)
                with m.If(drain == 0):
                    m.next = "RETIRE"
            # ---- LD -----------------------------------------------------------------------------------------
            with m.State("LD_RUN"):
                isq = f_ld["fmt"] == LdFmt.QACT
                isq8 = f_ld["fmt"] == LdFmt.Q8_0
                is32 = ~isq & ~isq8
                # LD I32: up to LW words a cycle (a chunk never straddles a row), through the SFU's bank port;
                # LW = params.ld_words: SW, or the port's words where the SFU is wider (U280: 16 of 32)
                k32 = Signal(range(LW + 1))
                m.d.comb += k32.eq(Mux(cols - ublk < LW, cols - ublk, LW))
                ub = Mux(isq, QACT_BLOCK_BYTES, Mux(isq8, Q8_BLOCK_BYTES, k32 << 2))
                fire = Signal()
                m.d.comb += fire.eq((uleft != 0) & rs.data_phase & (rs.cnt >= ub))
                w = rs.win
                m.d.comb += [qw.addr.eq((f_ld["dst"] >> 5) + mp[1] + ublk),
                             qw.data.eq(Cat(w[32: 32 + 256], w[0:16], w[16:24])),
                             ld_waddr.eq(f_ld["dst"] + mp[1] + ublk), ld_wdata.eq(w[:32])]
                with m.If(fire):
                    more = isq8 & (uh != HALVES - 1)          # Q8_0: 32 / SW cycles per block
                    with m.If(more):
                        m.d.sync += uh.eq(uh + 1)
                    with m.Else():
                        m.d.comb += rs.take.eq(ub)
                        step = Mux(is32, k32, 1)
                        lastb = ublk + step == Mux(isq | isq8, nb, cols)
                        m.d.sync += [uh.eq(0), uleft.eq(uleft - step), ublk.eq(Mux(lastb, 0, ublk + step)),
                                     urow.eq(urow + lastb)]
                    m.d.comb += [qw.en.eq(isq), ldq_mode.eq(~isq)]
                # Q8_0 dequantisation (docs/numerics.md): x = sat32((D * q + 2^11) >> 12), D = fp16 * 2^24, SW
                # elements a cycle written through the SFU's W-word bank port
                h = w[0:16]
                hexp = h[10:15]
                mant = Mux(hexp == 0, h[0:10], Cat(h[0:10], Const(1, 1)))
                sh = Signal(5)
                m.d.comb += sh.eq(Mux(hexp == 0, 0, hexp - 1))
                dmag = Signal(42)
                m.d.comb += dmag.eq(mant << sh)
                dfix = Signal(signed(43))
                m.d.comb += dfix.eq(Mux(h[15], -dmag, dmag))
                qsel = Array([w[16 + 8 * SW * k: 16 + 8 * SW * (k + 1)] for k in range(HALVES)])[uh]
                lanes_q8 = []
                for i in range(SW):
                    prod = Signal(signed(52), name=f"q8_prod{i}")
                    m.d.comb += prod.eq(dfix * qsel[8 * i: 8 * i + 8].as_signed() + (1 << (SCALE_FIX - ACT_FRAC - 1)))
                    v = prod >> (SCALE_FIX - ACT_FRAC)
                    lanes_q8.append(Mux(v > 0x7FFFFFFF, 0x7FFFFFFF, Mux(v < -0x80000000, -0x80000000, v))[:32])
                m.d.comb += [ldq_addr.eq(f_ld["dst"] + mp[1] + Mux(is32, ublk, (ublk << 5) + uh * SW)),
                             ldq_data.eq(Mux(is32, w[:32 * SW], Cat(*lanes_q8))),
                             ldq_mask.eq(Mux(is32, (Const(1, SW + 1) << k32) - 1, (1 << SW) - 1))]
                with m.If((uleft == 0) & ~rs.busy):
                    with m.If(f_ld["idx"] & (urow != rows)):
                        m.next = "LDX_IDX"
                    with m.Else():
                        m.next = "RETIRE"
                with m.If(self.m_rvalid & self.m_rready & (self.m_rresp != 0)):
                    m.d.comb += rs.flush.eq(1)
                    m.d.sync += fail(ErrCode.AXI_ERROR)
                    m.next = "STOP"
            # ---- LD with idx: per row, read its index word, then the row at addr + index * src_stride -------
            with m.State("LDX_IDX"):
                m.d.comb += [rs.start.eq(1), rs.base.eq(f_ld["idx_addr"] + (urow << 2)), rs.seg_len.eq(4),
                             rs.stride.eq(4), rs.nseg.eq(1)]
                m.d.sync += xgot.eq(0)
                m.next = "LDX_WAIT"
            with m.State("LDX_WAIT"):
                with m.If(~xgot & rs.data_phase & (rs.cnt >= 4)):
                    m.d.comb += rs.take.eq(4)
                    m.d.sync += [xgot.eq(1), xaddr_row.eq(base + rs.win[:32] * f_ld["src_stride"])]
                m.d.comb += [chk.lo.eq(xaddr_row), chk.hi.eq(xaddr_row + nbytes), chk.need.eq(READ)]
                with m.If(xgot & ~rs.busy):
                    with m.If(chk.code != 0):           # each gathered row inside a readable region
                        m.d.sync += [err.eq(1), busy.eq(0), code.eq(chk.code)]
                        m.next = "STOP"
                    with m.Else():
                        m.d.comb += [rs.start.eq(1), rs.base.eq(xaddr_row), rs.seg_len.eq(nbytes),
                                     rs.stride.eq(nbytes), rs.nseg.eq(1)]
                        m.d.sync += uleft.eq(Mux(f_ld["fmt"] == LdFmt.I32, cols, nb))
                        m.next = "LD_RUN"
                with m.If(self.m_rvalid & self.m_rready & (self.m_rresp != 0)):
                    m.d.comb += rs.flush.eq(1)
                    m.d.sync += fail(ErrCode.AXI_ERROR)
                    m.next = "STOP"
            # ---- ST -----------------------------------------------------------------------------------------
            with m.State("ST_RUN"):
                m.d.comb += st_mode.eq(1)
                with m.If(~ws.busy):
                    with m.If(ws.berr):
                        m.d.sync += fail(ErrCode.AXI_ERROR)
                        m.next = "STOP"
                    with m.Else():
                        m.next = "RETIRE"
            # ---- MISC (SFU) ---------------------------------------------------------------------------------
            with m.State("SFU_RUN"):
                m.d.comb += [sfu_mode.eq(1), qw.addr.eq(sfu.q_addr), qw.data.eq(Cat(sfu.q_data, sfu.q_m, sfu.q_e)),
                             qw.en.eq(sfu.q_en)]
                with m.If(sfu.done):
                    m.next = "RETIRE"
            # ---- ST I16 (KV cache, contiguous or scattered) -------------------------------------------------
            with m.State("ST16_RUN"):
                m.d.comb += st16_mode.eq(1)
                # an element issues (ABUF read + AW) once the previous one's W beat leaves; AW and W may stall
                w_free = ~e_v | self.m_wready
                m.d.comb += e_awvalid.eq((e_left != 0) & w_free)
                with m.If(e_awvalid & self.m_awready & aw_ok):
                    m.d.comb += st16_ren.eq(1)
                    lastc = e_col + 1 == cols
                    m.d.sync += [e_left.eq(e_left - 1), e_v.eq(1), e_off.eq(e_da[:lg]),
                                 e_col.eq(Mux(lastc, 0, e_col + 1)), e_row.eq(e_row + lastc)]
                    with m.If(lastc):
                        m.d.sync += [e_rsa.eq(e_rsa + f_st["src_stride"]), e_sa.eq(e_rsa + f_st["src_stride"]),
                                     e_rda.eq(e_rda + f_st["dst_stride"]), e_da.eq(e_rda + f_st["dst_stride"])]
                    with m.Else():
                        m.d.sync += [e_sa.eq(e_sa + 1), e_da.eq(e_da + f_st["elem_stride"])]
                with m.Elif(w_free):
                    m.d.sync += e_v.eq(0)
                with m.If(self.m_bvalid):
                    m.d.sync += e_bleft.eq(e_bleft - 1)
                    with m.If(self.m_bresp != 0):
                        m.d.sync += e_err.eq(1)
                with m.If((e_bleft == 0) & ~e_v):
                    with m.If(e_err):
                        m.d.sync += fail(ErrCode.AXI_ERROR)
                        m.next = "STOP"
                    with m.Else():
                        m.next = "RETIRE"
            with m.State("RETIRE"):
                m.d.sync += [pc.eq(pc + dec.nwords), instret.eq(instret + 1), last_ret.eq(cycles + 1)]
                for i, k in enumerate(CLASSES):
                    with m.If(cls == i):
                        m.d.sync += cyc[k].eq(cyc[k] + (cycles + 1 - last_ret))
                m.next = "FETCH"
            with m.State("END"):      # retires like any instruction (one cycle), then stops
                m.d.sync += [done.eq(1), busy.eq(0), instret.eq(instret + 1),
                             cyc["SYS"].eq(cyc["SYS"] + (cycles + 1 - last_ret))]
                m.next = "STOP"
            with m.State("STOP"):
                with m.If(csr.start):
                    m.d.comb += rs.clear_stats.eq(1)
                    m.d.sync += [busy.eq(1), done.eq(0), err.eq(0), code.eq(0), pc.eq(0), cycles.eq(0),
                                 instret.eq(0), last_ret.eq(0), wr_bytes.eq(0)] + [s.eq(0) for s in cyc.values()]
                    m.next = "FETCH"
        state = fsm._data["signal"]       # Amaranth 0.5: the FSM's state register (IDLE encodes as 0)
        # the burst guards: a burst outside its region is never issued; the engine stops (a second line behind
        # CHECK, which refuses the same accesses first, so it only fires if CHECK and the DMA disagree)
        g_ar, g_aw = ar_cand & ~ar_ok, aw_cand & ~aw_ok
        g_code = gaw.code
        g_x = [r_.arvalid & (g_.code != 0) for r_, g_ in zip(rsx, garx)]     # the weight channels' guards
        for gx, g_ in reversed(list(zip(g_x, garx))):
            g_code = Mux(gx, g_.code, g_code)
        with m.If(busy & (g_ar | g_aw | _any(g_x))):
            m.d.comb += [rs.flush.eq(1), ws.flush.eq(1)]
            m.d.sync += [err.eq(1), busy.eq(0), code.eq(Mux(g_ar, gar.code, g_code)),
                         state.eq(fsm.encoding["STOP"])]
        # soft reset (CTRL.RESET): back to IDLE; the submodules are reset by their ResetInserter
        with m.If(srst):
            m.d.sync += [busy.eq(0), done.eq(0), err.eq(0), code.eq(0), e_v.eq(0), e_left.eq(0),
                         state.eq(fsm.encoding["IDLE"])]
        return m


def _all(bits):
    out = Const(1, 1)
    for x in bits:
        out = out & x
    return out


def _any(bits):
    out = Const(0, 1)
    for x in bits:
        out = out | x
    return out


def build_top(board: Board, reset_less: bool = False):
    top = Top(board, reset_less)
    return top, top.ports()


_MEM_DECL = re.compile(r"^  reg \[(\d+):0\] ([A-Za-z_][A-Za-z0-9_]*) \[(\d+):0\];$")


def _compact_memory_init(text: str) -> str:
    """Amaranth writes one ``mem[i] = 0;`` line per word of every zero-initialised memory (megabytes for the
    ABUF/QBUF); fold each such ``initial`` block into a loop."""
    lines = text.split("\n")
    out, i, n = [], 0, len(lines)
    while i < n:
        ln = lines[i]
        mo = _MEM_DECL.match(ln)
        if mo and i + 1 < n and lines[i + 1] == "  initial begin":
            name, depth = mo.group(2), int(mo.group(3))
            j = i + 2
            pref = f"    {name}["
            zero = True
            while j < n and lines[j].startswith(pref):
                v = lines[j].split("=", 1)[1].strip().rstrip(";")
                zero &= set(v.split("'", 1)[-1][1:]) <= {"0"}
                j += 1
            if zero and j < n and lines[j] == "  end" and j - (i + 2) == depth + 1:
                out += [ln, f"  integer {name}__i;",
                        f"  initial for ({name}__i = 0; {name}__i <= {depth}; {name}__i = {name}__i + 1) "
                        f"{name}[{name}__i] = 0;"]
                i = j + 1
                continue
        out.append(ln)
        i += 1
    return "\n".join(out)


TARGETS = ("sim", "synth", "xilinx")
# the clock gate's body, the last module of the text: all that tells `synth` from `xilinx` apart
_CLKGATE = {"synth": CLKGATE_VERILOG, "xilinx": CLKGATE_BUFGCE}


def retarget(text: str, src: str, dst: str) -> str | None:
    """``src``'s generated Verilog as ``dst``'s, without elaborating the design again (minutes on the big boards),
    where the two differ only in the clock gate's body (`synth` <-> `xilinx`); None where they differ more."""
    if src in _CLKGATE and dst in _CLKGATE and text.endswith(_CLKGATE[src]):
        return text[:len(text) - len(_CLKGATE[src])] + _CLKGATE[dst]
    return None


def generate_verilog(board: Board, path, name: str = "flightllm_top", target: str = "sim") -> Path:
    """Write the engine's Verilog. The design is the same for every ``target``; only the leaf modules' bodies
    differ: ``sim`` (Verilator) gates the RAM read registers' clocks (hw/ram.py) and has no ``rst`` port (the
    registers start at their reset values; see Top.elaborate), ``synth`` (yosys estimates) uses clock enables,
    ``xilinx`` (vendor builds) also makes the clock gate a BUFGCE (hw/clock_gate.py)."""
    from amaranth.back import verilog

    assert target in TARGETS, target
    restart_names()
    top, ports = build_top(board, reset_less=target == "sim")
    text = _compact_memory_init(verilog.convert(top, ports=ports, name=name, emit_src=False))
    text += ram_verilog(text, sim=target == "sim") + _CLKGATE.get(target, CLKGATE_VERILOG)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p
