"""Instruction decoder: field layout generated from flightllm.isa.FIELDS (no bit position is restated here).

``Decoder`` takes the instruction window (up to max(NWORDS) little-endian words, word 0 at bit 0) and exposes
per-opcode field signals, the opcode, the instruction length and an ``illegal`` flag that mirrors
:func:`flightllm.isa.validate` (the features this RTL does not implement, scattered ST I32, are refused by hw/top.py's CHECK).
"""
from __future__ import annotations

from amaranth import Elaboratable, Module, Signal, Const
from amaranth.hdl import Array

from flightllm.isa import FIELDS, NWORDS, WORD_BITS, LdFmt, MiscOp, Op, StFmt, SysOp, WFmt

MAX_WORDS = max(NWORDS.values())
WIN_BITS = MAX_WORDS * WORD_BITS


def layout(op: Op) -> dict[str, tuple[int, int]]:
    """field -> (bit offset, width) in the concatenated instruction words."""
    pos, out = 0, {}
    for name, bits in FIELDS[op]:
        out[name] = (pos, bits)
        pos += bits
    return out


def used_bits(op: Op) -> int:
    return sum(b for _, b in FIELDS[op])


class Decoder(Elaboratable):
    def __init__(self):
        self.iw = Signal(WIN_BITS)
        self.op = Signal(4)
        self.nwords = Signal(4)
        self.illegal = Signal()
        self.known = Signal()
        # one signal per (op, field); MV shares MM's layout
        self.f: dict[Op, dict[str, Signal]] = {}
        for op in (Op.LD, Op.ST, Op.MM, Op.MISC, Op.SYS):
            self.f[op] = {n: Signal(b, name=f"{op.name.lower()}_{n}") for n, b in FIELDS[op]}
        self.f[Op.MV] = self.f[Op.MM]

    def elaborate(self, platform):
        m = Module()
        iw = self.iw
        m.d.comb += self.op.eq(iw[:4])
        for op in (Op.LD, Op.ST, Op.MM, Op.MISC, Op.SYS):
            for name, (off, bits) in layout(op).items():
                m.d.comb += self.f[op][name].eq(iw[off: off + bits])
        nw = Array([Const(NWORDS.get(Op(i), 1) if i in Op._value2member_map_ else 1, 4) for i in range(16)])
        m.d.comb += self.nwords.eq(nw[self.op])
        m.d.comb += self.known.eq(0)
        ill = Signal()

        def pad(op):
            u, n = used_bits(op), NWORDS[op] * WORD_BITS
            return iw[u:n] != 0 if n > u else Const(0)

        with m.Switch(self.op):
            for op in (Op.MM, Op.MV):
                with m.Case(int(op)):
                    f = self.f[op]
                    m.d.comb += self.known.eq(1)
                    sp = f["sp_n"]
                    m.d.comb += ill.eq(
                        pad(op) | (f["fmt"] > int(max(WFmt)))
                        | ~((sp == 2) | (sp == 4) | (sp == 8) | (sp == 16))
                        | ((f["fmt"] == WFmt.I16) & (sp != 16))
                        | ((f["cols"][:5] != 0) & ~f["cols_pos"]) | (f["xaddr"][:5] != 0) | (f["xstride"][:5] != 0)
                        | (f["tokens"] == 0)
                        | ((f["tokens"] != 1) if op == Op.MV else Const(0))
                        | ((f["fmt"] == WFmt.I16) & (f["wfrac"] > 24))
                        | (f["split"] & f["rows_pos"]))
            with m.Case(int(Op.LD)):
                f = self.f[Op.LD]
                m.d.comb += self.known.eq(1)
                m.d.comb += ill.eq(
                    pad(Op.LD) | (f["fmt"] > int(max(LdFmt)))
                    | (((f["fmt"] == LdFmt.Q8_0) | (f["fmt"] == LdFmt.QACT)) & (f["cols"][:5] != 0))
                    | ((f["fmt"] == LdFmt.QACT) & ((f["dst"][:5] != 0) | (f["dst_stride"][:5] != 0))))
            with m.Case(int(Op.ST)):
                f = self.f[Op.ST]
                m.d.comb += self.known.eq(1)
                m.d.comb += ill.eq(pad(Op.ST) | (f["fmt"] > int(max(StFmt))))
            with m.Case(int(Op.SYS)):
                f = self.f[Op.SYS]
                m.d.comb += self.known.eq(1)
                m.d.comb += ill.eq(pad(Op.SYS) | (f["fn"] > int(max(SysOp))))
            with m.Case(int(Op.MISC)):
                f = self.f[Op.MISC]
                m.d.comb += self.known.eq(1)
                imm = f["imm"]
                m.d.comb += ill.eq(
                    pad(Op.MISC) | (f["fn"] > int(max(MiscOp)))
                    | ((f["fn"] == MiscOp.QUANT) & ((f["dst"][:5] != 0) | (f["dst_stride"][:5] != 0)))
                    | ((f["fn"] == MiscOp.ROPE) & ((imm < 2) | imm[0] | (f["n"] % imm != 0)))
                    | ((f["fn"] == MiscOp.SOFTMAX) & imm[31]))
            with m.Default():
                m.d.comb += ill.eq(1)
        m.d.comb += self.illegal.eq(ill)
        return m
