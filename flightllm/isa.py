"""The flightllm instruction set, defined once.

Every consumer reads this table: the compiler's assembler, the functional simulator's decoder, the RTL
instruction decoder (its field layout is generated from :data:`FIELDS`), ``flightllm disasm`` and the docs
(docs/isa.md). An instruction is a run of little-endian 32-bit words; word 0 starts with the 4-bit opcode,
which fixes the length. Fields are packed LSB first across the words, in the order listed.

Classes follow FlightLLM: LD (memory -> on-chip), ST (on-chip -> memory), MM/MV (matrix engine: weights stream
from memory, INT8 activations from the on-chip QBUF, results to the on-chip ABUF), MISC (special function unit),
SYS (control). Each carries 4-bit ``wait``/``release`` dependency masks (one bit per unit: LD, MPE, SFU, ST) for
the decoupled pipeline; execution semantics are those of in-order issue.

Run-time registers: the host writes ``POS`` (position of the first token of the run) before starting a program.
Fields flagged ``*_pos`` add it, so one program serves every position: decode is a single instruction stream.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from flightllm.errors import ISAError

WORD_BITS = 32


class Op(enum.IntEnum):
    LD = 1
    ST = 2
    MM = 3
    MV = 4
    MISC = 5
    SYS = 6


class WFmt(enum.IntEnum):
    """Weight formats the matrix engine streams (docs/numerics.md)."""
    Q4_1 = 0   # 32 x 4-bit, fp16 scale d and min m: w = d*q + m
    Q8_0 = 1   # 32 x int8, fp16 scale d: w = d*q
    I16 = 2    # int16 fixed point, w = q * 2^-wfrac (the KV cache)


class LdFmt(enum.IntEnum):
    I32 = 0    # copy 32-bit words into ABUF (tables, norm weights)
    Q8_0 = 1   # dequantise Q8_0 rows into ACT (embedding rows)
    QACT = 2   # pre-quantised activation blocks into the QBUF (formats.QACT_BLOCK_BYTES per 32)


class StFmt(enum.IntEnum):
    I32 = 0    # copy ABUF words out (logits, argmax)
    I16 = 1    # ACT -> int16 with a rounding right shift and saturation (KV cache)


class MiscOp(enum.IntEnum):
    COPY = 0
    ADD = 1        # dst = sat(a + b)
    RMSNORM = 2    # dst = x / rms(x) * g           imm = eps in ACT^2 units (2^-24)
    SOFTMAX = 3    # dst = softmax(x * 2^-imm)     PROB out; n_pos/causal set the valid length
    SILU_MUL = 4   # dst = silu(a) * b              (SwiGLU)
    ROPE = 5       # rotate adjacent pairs of each head by the table in src2 (cos | sin, Q.30)
    QUANT = 6      # ABUF int32 (imm = fraction bits) -> QBUF int8 blocks of 32 + scale
    ARGMAX = 7     # dst word = index of the first maximum of each row


class SysOp(enum.IntEnum):
    NOP = 0
    END = 1


UNITS = ("LD", "MPE", "SFU", "ST")

_HEAD = [("op", 4), ("wait", 4), ("release", 4)]

# name, bits. Addresses: DRAM byte addresses are 40 bits; ABUF word / QBUF byte addresses 24 bits.
FIELDS: dict[Op, list[tuple[str, int]]] = {
    Op.LD: _HEAD + [
        ("fmt", 4), ("idx", 1), ("dst", 24), ("addr", 40), ("rows", 16), ("cols", 16),
        ("src_stride", 32), ("dst_stride", 24), ("pos_stride", 32), ("idx_addr", 40)],
    Op.ST: _HEAD + [
        ("fmt", 4), ("shift", 5), ("src", 24), ("addr", 40), ("rows", 16), ("cols", 16),
        ("src_stride", 24), ("dst_stride", 32), ("elem_stride", 32), ("pos_stride", 32)],
    Op.MM: _HEAD + [
        ("fmt", 3), ("sp_n", 5), ("acc", 1), ("rows_pos", 1), ("cols_pos", 1), ("wfrac", 5),
        ("waddr", 40), ("wstride", 32), ("rows", 24), ("cols", 24), ("tokens", 16),
        ("xaddr", 24), ("xstride", 24), ("yaddr", 24), ("ystride", 24), ("split", 1)],
    Op.MISC: _HEAD + [
        ("fn", 4), ("n_pos", 1), ("causal", 1), ("src", 24), ("src2", 24), ("dst", 24), ("n", 24), ("rows", 16),
        ("src_stride", 24), ("src2_stride", 24), ("dst_stride", 24), ("imm", 32)],
    Op.SYS: _HEAD + [("fn", 4), ("imm", 16)],
}
FIELDS[Op.MV] = FIELDS[Op.MM]

NWORDS: dict[Op, int] = {op: -(-sum(b for _, b in f) // WORD_BITS) for op, f in FIELDS.items()}


@dataclass
class Instr:
    op: Op
    f: dict[str, int] = field(default_factory=dict)

    def __getattr__(self, name):
        try:
            return self.__dict__["f"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __str__(self) -> str:
        return disasm_line(self)


def make(op: Op, **kw) -> Instr:
    """Build an instruction; unknown fields or values that do not fit are errors here, not silent truncation."""
    names = {n: b for n, b in FIELDS[op]}
    f = {n: 0 for n in names}
    f["op"] = int(op)
    for k, v in kw.items():
        if k not in names or k == "op":
            raise ISAError(f"{op.name} has no field '{k}'")
        v = int(v)
        if v < 0 or v >> names[k]:
            raise ISAError(f"{op.name}.{k} = {v} does not fit in {names[k]} bits")
        f[k] = v
    ins = Instr(op, f)
    validate(ins)
    return ins


def encode(ins: Instr) -> list[int]:
    acc, pos = 0, 0
    for name, bits in FIELDS[ins.op]:
        v = ins.f.get(name, 0)
        if v < 0 or v >> bits:
            raise ISAError(f"{ins.op.name}.{name} = {v} does not fit in {bits} bits")
        acc |= v << pos
        pos += bits
    return [(acc >> (WORD_BITS * i)) & 0xFFFFFFFF for i in range(NWORDS[ins.op])]


def assemble(prog: list[Instr]) -> np.ndarray:
    words: list[int] = []
    for ins in prog:
        words += encode(ins)
    return np.asarray(words, dtype="<u4")


def decode_at(words, pc: int) -> tuple[Instr, int]:
    """Decode the instruction at word index ``pc``; returns it and the next pc."""
    if pc >= len(words):
        raise ISAError(f"pc {pc}: past the end of the stream (no END)")
    opcode = int(words[pc]) & 0xF
    try:
        op = Op(opcode)
    except ValueError:
        raise ISAError(f"pc {pc}: unknown opcode {opcode}") from None
    n = NWORDS[op]
    if pc + n > len(words):
        raise ISAError(f"pc {pc}: {op.name} truncated ({len(words) - pc} of {n} words)")
    acc = 0
    for i in range(n):
        acc |= int(words[pc + i]) << (WORD_BITS * i)
    f, pos = {}, 0
    for name, bits in FIELDS[op]:
        f[name] = (acc >> pos) & ((1 << bits) - 1)
        pos += bits
    if acc >> pos:
        raise ISAError(f"pc {pc}: {op.name} has non-zero padding bits")
    ins = Instr(op, f)
    try:
        validate(ins)
    except ISAError as e:
        raise ISAError(f"pc {pc}: {e}") from None
    return ins, pc + n


def disassemble(words) -> list[tuple[int, Instr]]:
    """Whole stream -> [(pc, instr)]; stops after SYS END. Raises ISAError on anything malformed."""
    out, pc = [], 0
    words = np.asarray(words, dtype=np.uint32)
    while True:
        ins, nxt = decode_at(words, pc)
        out.append((pc, ins))
        pc = nxt
        if ins.op == Op.SYS and ins.f["fn"] == SysOp.END:
            return out


def extents(op: Op, f: dict, pos: int) -> dict[str, int]:
    """The run-time extents of an instruction (``op``, fields ``f``) at POS = ``pos``: MM/MV ``rows`` (+ POS with
    ``rows_pos``) and ``cols`` (cols + POS rounded up to whole 32-blocks with ``cols_pos``), MISC ``n`` (+ POS with
    ``n_pos``); {} for the others. The compiler's checks and fsim use it; hw/top.py's decode forms the same values."""
    if op in (Op.MM, Op.MV):
        return {"rows": f["rows"] + (pos if f["rows_pos"] else 0),
                "cols": -(-(f["cols"] + pos) // 32) * 32 if f["cols_pos"] else f["cols"]}
    if op == Op.MISC:
        return {"n": f["n"] + (pos if f["n_pos"] else 0)}
    return {}


def mm_outputs_overlap(rows: int, tokens: int, ystride: int) -> bool:
    """MM writes a token's rows while later tokens' rows of the same pass are still to come (row-major over the
    token tile), fsim token by token: where tokens' output rows overlap the two orders differ, so the ISA refuses
    it (ILLEGAL_INSTR, after the bounds). ``rows`` is the resolved row count (+ POS with ``rows_pos``)."""
    return tokens > 1 and ystride < rows


def misc_overlap(f: dict, n: int) -> tuple[int, int] | None:
    """The ABUF range a MISC writes, if it overlaps one it reads other than exactly in place; None when legal.

    The SFU streams a MISC row by row, so rows would see what earlier rows wrote where a source overlaps the
    destination, while fsim computes the whole instruction first. The ISA therefore allows a destination to meet
    ``src`` (and ``src2`` of ADD / SILU_MUL) only in place (same base and stride, rows that do not overlap each
    other) and never the ROPE table or the RMSNORM gain; the engine stops such an instruction with ILLEGAL_INSTR
    (hw/top.py CHECK, after the bounds).
    ``n`` is the resolved length (n + POS with ``n_pos``)."""
    fn = f["fn"]
    if fn == MiscOp.QUANT:                          # writes the QBUF
        return None
    r1 = f["rows"] - 1
    width = n + (r1 if fn == MiscOp.SOFTMAX and f["causal"] else 0)
    wd = 1 if fn == MiscOp.ARGMAX else width
    d0, d1 = f["dst"], f["dst"] + r1 * f["dst_stride"] + wd
    s1 = f["src"] + r1 * f["src_stride"] + width
    apart = r1 == 0 or f["dst_stride"] >= wd          # the destination's rows do not overlap each other
    bad = f["src"] < d1 and d0 < s1 and not (d0 == f["src"] and f["dst_stride"] == f["src_stride"] and apart)
    if fn in (MiscOp.ADD, MiscOp.SILU_MUL):           # src2 rows as wide as dst's: in place there too
        bad |= f["src2"] < d1 and d0 < f["src2"] + r1 * f["src2_stride"] + n and not (
            d0 == f["src2"] and f["dst_stride"] == f["src2_stride"] and apart)
    elif fn == MiscOp.ROPE:                           # the table: never
        bad |= f["src2"] < d1 and d0 < f["src2"] + r1 * f["src2_stride"] + f["imm"]
    elif fn == MiscOp.RMSNORM:
        bad |= f["src2"] < d1 and d0 < f["src2"] + n
    return (d0, d1) if bad else None


def validate(ins: Instr) -> None:
    """Field rules that do not depend on the board (enum values, alignment, shapes)."""
    f, op = ins.f, ins.op
    if op in (Op.MM, Op.MV):
        try:
            WFmt(f["fmt"])
        except ValueError:
            raise ISAError(f"{op.name}: unknown weight format {f['fmt']}") from None
        if f["sp_n"] not in (2, 4, 8, 16):
            raise ISAError(f"{op.name}: sparsity N must be 2, 4, 8 or 16 (got {f['sp_n']})")
        if f["fmt"] == WFmt.I16 and f["sp_n"] != 16:
            raise ISAError(f"{op.name}: I16 weights are dense only")
        if f["fmt"] == WFmt.I16 and f["wfrac"] > 24:     # formats.SCALE_FIX: D = 2^(24 - wfrac) must be an integer
            raise ISAError(f"{op.name}: I16 wfrac must be <= 24 (got {f['wfrac']})")
        if (f["cols"] % 32 and not f["cols_pos"]) or f["xaddr"] % 32 or f["xstride"] % 32:
            raise ISAError(f"{op.name}: cols, xaddr and xstride must be multiples of 32")
        if f["split"] and f["rows_pos"]:
            raise ISAError(f"{op.name}: split rows cannot grow with POS (rows_pos)")
        if op == Op.MV and f["tokens"] != 1:
            raise ISAError("MV: tokens must be 1 (use MM)")
        if f["tokens"] < 1:
            raise ISAError(f"{op.name}: tokens must be >= 1")
    elif op == Op.LD:
        try:
            LdFmt(f["fmt"])
        except ValueError:
            raise ISAError(f"LD: unknown format {f['fmt']}") from None
        if f["fmt"] in (LdFmt.Q8_0, LdFmt.QACT) and f["cols"] % 32:
            raise ISAError(f"LD {LdFmt(f['fmt']).name}: cols must be a multiple of 32")
        if f["fmt"] == LdFmt.QACT and (f["dst"] % 32 or f["dst_stride"] % 32):
            raise ISAError("LD QACT: dst and dst_stride must be multiples of 32")
    elif op == Op.ST:
        try:
            StFmt(f["fmt"])
        except ValueError:
            raise ISAError(f"ST: unknown format {f['fmt']}") from None
    elif op == Op.MISC:
        try:
            fn = MiscOp(f["fn"])
        except ValueError:
            raise ISAError(f"MISC: unknown function {f['fn']}") from None
        if fn == MiscOp.QUANT and (f["dst"] % 32 or f["dst_stride"] % 32):
            raise ISAError("MISC QUANT: dst and dst_stride must be multiples of 32")
        if fn == MiscOp.ROPE and (f["imm"] < 2 or f["imm"] % 2 or f["n"] % f["imm"]):
            raise ISAError("MISC ROPE: imm (head dim) must be even and divide n")
        if fn == MiscOp.SOFTMAX and f["imm"] >> 31:
            raise ISAError("MISC SOFTMAX: imm (the exponent scale) must be below 2^31")
    elif op == Op.SYS:
        try:
            SysOp(f["fn"])
        except ValueError:
            raise ISAError(f"SYS: unknown function {f['fn']}") from None


def _name(ins: Instr) -> str:
    if ins.op == Op.MISC:
        return MiscOp(ins.f["fn"]).name
    if ins.op == Op.SYS:
        return SysOp(ins.f["fn"]).name
    if ins.op in (Op.MM, Op.MV):
        return f"{ins.op.name}.{WFmt(ins.f['fmt']).name}" + ("" if ins.f["sp_n"] == 16 else f".{ins.f['sp_n']}:16")
    if ins.op == Op.LD:
        return f"LD.{LdFmt(ins.f['fmt']).name}"
    return f"ST.{StFmt(ins.f['fmt']).name}"


def disasm_line(ins: Instr) -> str:
    skip = {"op", "fn", "fmt", "sp_n"}
    parts = [f"{k}={v:#x}" if k in ("addr", "waddr", "idx_addr") else f"{k}={v}"
             for k, v in ins.f.items() if k not in skip and (v or k in ("rows", "cols", "n"))]
    return f"{_name(ins):<14} " + " ".join(parts)


class ErrCode(enum.IntEnum):
    """Values of the status register's error field: the engine stops on the first one."""
    OK = 0
    ILLEGAL_INSTR = 1     # unknown opcode/function/format, bad field combination, truncated stream
    MEM_BOUNDS = 2        # a memory access outside every region the runtime programmed
    MEM_WRITE_RO = 3      # a write into a read-only region (weights, instructions)
    BUF_OVERFLOW = 4      # an on-chip buffer (ABUF/QBUF) access past its end
    MISALIGNED = 5        # an access not aligned to its element size
    AXI_ERROR = 6         # the memory system answered SLVERR/DECERR
    WATCHDOG = 7          # no instruction retired for too long
    MEM_PERM = 8          # an access its region does not permit: a fetch outside an executable region, a read without R


def markdown_fields() -> str:
    """The field tables of docs/isa.md, generated from :data:`FIELDS` (a test keeps the doc in step)."""
    out = []
    for op in Op:
        out.append(f"### {op.name} ({NWORDS[op]} words)\n\n| bits | field | width |\n|---|---|---|")
        pos = 0
        for name, bits in FIELDS[op]:
            out.append(f"| {pos}..{pos + bits - 1} | `{name}` | {bits} |")
            pos += bits
        out.append("")
    return "\n".join(out)
