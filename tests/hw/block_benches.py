"""Verilator tops for the matrix-engine block testbenches (tests/hw/<block>_cocotb.py).

Each bench wraps one block of hw/ and flattens its ports (lists of signals become one vector, element 0 in the
low bits) so that cocotb drives and reads a handful of top-level ports. Nothing here re-implements a block: the
benches only wire constants (AXI ids, sizes) and concatenate ports.
"""
from __future__ import annotations

from amaranth import Const, Elaboratable, Module, Signal


def connect(m, conn):
    """Wire flattened top ports to their parts: (top, [signals], top_is_output), element 0 in the low bits."""
    for top, parts, out in conn:
        lo = 0
        for s in parts:
            if out:
                m.d.comb += top[lo: lo + len(s)].eq(s)
            else:
                m.d.comb += s.eq(top[lo: lo + len(s)])
            lo += len(s)


class Flat(Elaboratable):
    """``sub`` as submodule ``dut``; ``ins``/``outs``: {port name: signal or list of signals}."""

    def __init__(self, sub, ins: dict, outs: dict, consts: dict | None = None):
        self.sub = sub
        self.conn = []
        self.ports = []
        for d, out in ((ins, False), (outs, True)):
            for name, v in d.items():
                parts = v if isinstance(v, (list, tuple)) else [v]
                top = Signal(sum(len(s) for s in parts), name=name)
                self.ports.append(top)
                self.conn.append((top, parts, out))
        # constant outputs (AXI signals the block does not drive)
        self.consts = []
        for name, (width, value) in (consts or {}).items():
            top = Signal(width, name=name)
            self.ports.append(top)
            self.consts.append((top, value))

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self.sub
        connect(m, self.conn)
        for top, value in self.consts:
            m.d.comb += top.eq(Const(value, len(top)))
        return m


def chain_bench(length: int = 16):
    """hw/dsp_chain.py's chain with 4 reduction taps: ports ``a`` (L x 27 bits), ``x`` (L x 8), ``pair``, ``cut``,
    ``even``, ``odd``, ``qs``, ``tp`` (4 x 32), ``tq`` (4 x 16)."""
    from flightllm.hw.dsp_chain import DspChain

    ch = DspChain(length, 4)
    b = Flat(ch, {"a": ch.a, "x": ch.x, "pair": ch.pair, "cut": ch.cut},
             {"even": ch.even, "odd": ch.odd, "qs": ch.qs, "tp": ch.tp, "tq": ch.tq})
    return b, b.ports


def sparse_mux_bench():
    """hw/mpe.py's per-lane weight decode + sparse MUX (``mpe.LaneSelect``)."""
    from flightllm.hw.mpe import LaneSelect

    s = LaneSelect()
    b = Flat(s, {"body": s.body, "idx": s.idx, "qx": s.qx, "wk": s.wk, "nsp": s.nsp, "sparse": s.sparse,
                 "on": s.on}, {"w": s.w, "x": s.x})
    return b, b.ports


def dequant_bench():
    """hw/mpe.py's per-block dequantisation + 64-bit accumulation + ACT rounding (``mpe.DequantAcc``)."""
    from flightllm.hw.mpe import DequantAcc

    d = DequantAcc()
    ins = {n: getattr(d, n) for n in ("valid", "first", "last", "acc", "qs", "d16", "m16", "mx", "ex", "q4",
                                      "i16", "wfrac", "yacc", "yadd")}
    outs = {n: getattr(d, n) for n in ("dfix", "mfix", "v", "v_valid", "y", "y_valid")}
    b = Flat(d, ins, outs)
    return b, b.ports


def decoder_bench():
    """hw/decoder.py as is: ``iw`` in; ``op``, ``nwords``, ``illegal``, ``known`` and ``<op>_<field>`` out."""
    from flightllm.hw.decoder import Decoder
    from flightllm.isa import Op

    d = Decoder()
    ports = [d.iw, d.op, d.nwords, d.illegal, d.known]
    for op in (Op.LD, Op.ST, Op.MM, Op.MISC, Op.SYS):
        ports += list(d.f[op].values())
    return d, ports


def dma_bench(port_bytes: int, buf_bytes: int, window: int, abuf_words: int):
    """hw/dma.py's ReadStream and WriteStream side by side on one AXI4 master port ``m_axi_*``.

    The AXI signals the streams leave implicit (ids, size = full beat, INCR bursts, bready = 1: WriteStream
    takes every B response) are constants. The WriteStream's ABUF bank read ports are ``st_rd_addr`` (NL x row
    bits), ``st_rd_en`` and ``st_rd_data`` (NL x 32), served by the testbench.
    """
    from amaranth import Elaboratable, Module

    from flightllm.hw.dma import ReadStream, WriteStream

    rs = ReadStream(port_bytes, buf_bytes, window)
    ws = WriteStream(port_bytes, abuf_words)
    lg = (port_bytes - 1).bit_length()

    class Both(Elaboratable):
        def elaborate(self, platform):
            m = Module()
            m.submodules.rs, m.submodules.ws = rs, ws
            return m

    ins = {"rs_start": rs.start, "rs_base": rs.base, "rs_seg_len": rs.seg_len, "rs_stride": rs.stride,
           "rs_nseg": rs.nseg, "rs_flush": rs.flush, "rs_take": rs.take,
           "rs_clear_stats": rs.clear_stats,
           "m_axi_arready": rs.arready, "m_axi_rvalid": rs.rvalid, "m_axi_rdata": rs.rdata,
           "ws_start": ws.start, "ws_flush": ws.flush, "ws_dst": ws.dst, "ws_dst_stride": ws.dst_stride,
           "ws_src": ws.src, "ws_src_stride": ws.src_stride, "ws_rows": ws.rows, "ws_cols": ws.cols,
           "m_axi_awready": ws.awready, "m_axi_wready": ws.wready, "m_axi_bvalid": ws.bvalid,
           "m_axi_bresp": ws.bresp, "st_rd_data": ws.rd_data}
    outs = {"rs_cnt": rs.cnt, "rs_win": rs.win, "rs_data_phase": rs.data_phase, "rs_busy": rs.busy,
            "rs_bytes_taken": rs.bytes_taken,
            "m_axi_arvalid": rs.arvalid, "m_axi_araddr": rs.araddr, "m_axi_arlen": rs.arlen,
            "m_axi_rready": rs.rready,
            "ws_busy": ws.busy, "ws_berr": ws.berr,
            "m_axi_awvalid": ws.awvalid, "m_axi_awaddr": ws.awaddr, "m_axi_awlen": ws.awlen,
            "m_axi_wvalid": ws.wvalid, "m_axi_wdata": ws.wdata, "m_axi_wstrb": ws.wstrb, "m_axi_wlast": ws.wlast,
            "st_rd_addr": ws.rd_addr, "st_rd_en": ws.rd_en}
    consts = {"m_axi_arid": (1, 0), "m_axi_arsize": (3, lg), "m_axi_arburst": (2, 1),
              "m_axi_awid": (1, 0), "m_axi_awsize": (3, lg), "m_axi_awburst": (2, 1),
              "m_axi_bready": (1, 1)}
    # rid, rlast, bid: inputs the streams ignore (bursts are counted, not delimited by rlast)
    ign = {"m_axi_rid": Signal(1, name="rid_i"), "m_axi_rlast": Signal(1, name="rlast_i"),
           "m_axi_bid": Signal(1, name="bid_i")}
    b = Flat(Both(), {**ins, **ign}, outs, consts)
    return b, b.ports, rs, ws
