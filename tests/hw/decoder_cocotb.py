"""cocotb testbench of hw/decoder.py (run by tests/hw/test_decoder_rtl.py); the reference is flightllm/isa.py.

- ``valid``: random valid instructions of every opcode, built with ``isa.make`` and ``isa.encode``, decode to the
  same opcode, length and fields, with ``illegal`` low.
- ``illegal``: random instruction windows (every opcode value 0..15, fields that break one rule of
  ``isa.validate`` at a time, stray padding bits, and fully random words): ``illegal`` is high exactly when
  ``isa.decode_at`` raises ISAError, and the fields are still the bit slices ``decode_at`` reads.
The decoder is combinational: each window is driven, then read 1 ns later.
"""
from __future__ import annotations

import os

import cocotb
import numpy as np
from cocotb.triggers import Timer

from flightllm import isa
from flightllm.errors import ISAError
from flightllm.isa import FIELDS, NWORDS, WORD_BITS, LdFmt, MiscOp, Op, StFmt, SysOp, WFmt
from cocotb_values import u

SEED = int(os.environ.get("BLOCK_SEED", "1"))
N = int(os.environ.get("DECODER_N", "600"))
MAX_WORDS = max(NWORDS.values())
OPS = (Op.LD, Op.ST, Op.MM, Op.MV, Op.MISC, Op.SYS)


def rbits(rng, nbits):
    """A random non-negative integer of ``nbits`` bits."""
    return sum(int(rng.integers(0, 1 << 32)) << (32 * i) for i in range(-(-nbits // 32))) & ((1 << nbits) - 1)


def rand_field(rng, bits):
    """Mostly small or aligned values, sometimes the extremes of the field."""
    r = rng.random()
    top = (1 << bits) - 1
    if r < 0.15:
        return top
    if r < 0.25:
        return 0
    if r < 0.6:
        return int(rng.integers(0, min(top, 4096) + 1))
    return rbits(rng, bits)


def valid_fields(rng, op):
    """Random field values that ``isa.validate`` accepts (the rules of isa.validate, applied as fix-ups)."""
    f = {n: rand_field(rng, b) for n, b in FIELDS[op] if n != "op"}
    if op in (Op.MM, Op.MV):
        f["fmt"] = int(rng.choice(list(WFmt)))
        f["sp_n"] = 16 if f["fmt"] == WFmt.I16 else int(rng.choice([2, 4, 8, 16]))
        if not f["cols_pos"]:
            f["cols"] -= f["cols"] % 32
        f["xaddr"] -= f["xaddr"] % 32
        f["xstride"] -= f["xstride"] % 32
        f["tokens"] = 1 if op == Op.MV else max(1, f["tokens"])
        if f["fmt"] == WFmt.I16:
            f["wfrac"] = int(rng.integers(0, 25))
        if f["split"]:
            f["rows_pos"] = 0
    elif op == Op.LD:
        f["fmt"] = int(rng.choice(list(LdFmt)))
        if f["fmt"] != LdFmt.I32:
            f["cols"] -= f["cols"] % 32
        if f["fmt"] == LdFmt.QACT:
            f["dst"] -= f["dst"] % 32
            f["dst_stride"] -= f["dst_stride"] % 32
    elif op == Op.ST:
        f["fmt"] = int(rng.choice(list(StFmt)))
    elif op == Op.MISC:
        f["fn"] = int(rng.choice(list(MiscOp)))
        if f["fn"] == MiscOp.QUANT:
            f["dst"] -= f["dst"] % 32
            f["dst_stride"] -= f["dst_stride"] % 32
        if f["fn"] == MiscOp.ROPE:
            f["imm"] = 2 * int(rng.integers(1, 65))
            f["n"] = f["imm"] * int(rng.integers(0, (1 << 24) // f["imm"]))
        if f["fn"] == MiscOp.SOFTMAX:
            f["imm"] &= (1 << 31) - 1
    elif op == Op.SYS:
        f["fn"] = int(rng.choice(list(SysOp)))
    return f


# one rule of isa.validate broken at a time: (ops, field, value generator given the valid fields)
BREAKERS = [
    ((Op.MM, Op.MV), lambda f, r: f.update(fmt=int(r.integers(len(WFmt), 8)))),
    ((Op.MM, Op.MV), lambda f, r: f.update(sp_n=int(r.choice([0, 1, 3, 5, 7, 9, 15, 17, 31])))),
    ((Op.MM, Op.MV), lambda f, r: f.update(fmt=int(WFmt.I16), sp_n=int(r.choice([2, 4, 8])))),
    ((Op.MM, Op.MV), lambda f, r: f.update(cols_pos=0, cols=32 * int(r.integers(0, 1000)) + int(r.integers(1, 32)))),
    ((Op.MM, Op.MV), lambda f, r: f.update(xaddr=f["xaddr"] | int(r.integers(1, 32)))),
    ((Op.MM, Op.MV), lambda f, r: f.update(xstride=f["xstride"] | int(r.integers(1, 32)))),
    ((Op.MM, Op.MV), lambda f, r: f.update(tokens=0)),
    ((Op.MV,), lambda f, r: f.update(tokens=int(r.integers(2, 1 << 16)))),
    ((Op.MM, Op.MV), lambda f, r: f.update(fmt=int(WFmt.I16), sp_n=16, wfrac=int(r.integers(25, 32)))),
    ((Op.MM, Op.MV), lambda f, r: f.update(split=1, rows_pos=1)),
    ((Op.LD,), lambda f, r: f.update(fmt=int(r.integers(len(LdFmt), 16)))),
    ((Op.LD,), lambda f, r: f.update(fmt=int(r.choice([LdFmt.Q8_0, LdFmt.QACT])),
                                     cols=f["cols"] | int(r.integers(1, 32)))),
    ((Op.LD,), lambda f, r: f.update(fmt=int(LdFmt.QACT), dst=f["dst"] | int(r.integers(1, 32)))),
    ((Op.LD,), lambda f, r: f.update(fmt=int(LdFmt.QACT), dst_stride=f["dst_stride"] | int(r.integers(1, 32)))),
    ((Op.ST,), lambda f, r: f.update(fmt=int(r.integers(len(StFmt), 16)))),
    ((Op.MISC,), lambda f, r: f.update(fn=int(r.integers(len(MiscOp), 16)))),
    ((Op.MISC,), lambda f, r: f.update(fn=int(MiscOp.QUANT), dst=f["dst"] | int(r.integers(1, 32)))),
    ((Op.MISC,), lambda f, r: f.update(fn=int(MiscOp.QUANT), dst_stride=f["dst_stride"] | int(r.integers(1, 32)))),
    ((Op.MISC,), lambda f, r: f.update(fn=int(MiscOp.ROPE), imm=int(r.choice([0, 1, 3, 7, 33])))),
    ((Op.MISC,), lambda f, r: f.update(fn=int(MiscOp.ROPE), imm=8, n=8 * int(r.integers(0, 1000)) + int(r.integers(1, 8)))),
    ((Op.MISC,), lambda f, r: f.update(fn=int(MiscOp.SOFTMAX), imm=int(r.integers(1 << 31, 1 << 32)))),
    ((Op.SYS,), lambda f, r: f.update(fn=int(r.integers(len(SysOp), 16)))),
]


def pack(op, f) -> int:
    """Fields -> the instruction bits, without isa.encode's range check (so breakers may set any value)."""
    acc, pos = 0, 0
    for name, bits in FIELDS[op]:
        v = int(op) if name == "op" else f.get(name, 0)
        assert 0 <= v < (1 << bits), (name, v)
        acc |= v << pos
        pos += bits
    return acc


def expect(window: int):
    """isa's view of a window: (opcode, nwords, illegal, {field: value} or None)."""
    words = np.array([(window >> (WORD_BITS * i)) & 0xFFFFFFFF for i in range(MAX_WORDS)], np.uint32)
    opcode = window & 0xF
    try:
        isa.decode_at(words, 0)
        ill = False
    except ISAError:
        ill = True
    if opcode not in Op._value2member_map_:
        return opcode, 1, True, None
    op = Op(opcode)
    f, pos = {}, 0
    for name, bits in FIELDS[op]:
        f[name] = (window >> pos) & ((1 << bits) - 1)
        pos += bits
    return opcode, NWORDS[op], ill, f


def field_handle(dut, op, name):
    key = Op.MM if op == Op.MV else op
    return getattr(dut, f"{key.name.lower()}_{name}")


async def check(dut, window, what):
    opcode, nw, ill, f = expect(window)
    dut.iw.value = window
    await Timer(1, unit="ns")
    got = (u(dut.op), u(dut.nwords), u(dut.illegal), u(dut.known))
    exp = (opcode, nw, int(ill), int(f is not None))
    assert got == exp, f"{what}: window {window:#x}: (op, nwords, illegal, known) {got} != {exp}"
    if f is not None:
        for name, v in f.items():
            g = u(field_handle(dut, Op(opcode), name))
            assert g == v, f"{what}: {Op(opcode).name}.{name} = {g}, expected {v} (window {window:#x})"
    return ill


@cocotb.test()
async def valid(dut):
    rng = np.random.default_rng(SEED)
    n = 0
    for k in range(N):
        op = OPS[k % len(OPS)]
        ins = isa.make(op, **valid_fields(rng, op))       # make() runs isa.validate: the instruction is valid
        words = isa.encode(ins)
        window = sum(w << (WORD_BITS * i) for i, w in enumerate(words))
        if rng.random() < 0.5:                            # the next instruction's words follow in the window
            window |= rbits(rng, WORD_BITS * MAX_WORDS) << (WORD_BITS * NWORDS[op])
            window &= (1 << (WORD_BITS * MAX_WORDS)) - 1
        ill = await check(dut, window, f"valid {op.name}")
        assert not ill
        n += 1
    dut._log.info(f"decoder: {n} valid instructions decoded to isa's fields")


@cocotb.test()
async def illegal(dut):
    rng = np.random.default_rng(SEED + 1)
    counts = {"broken rule": 0, "padding": 0, "opcode": 0, "random": 0}
    n_ill = 0
    for k in range(N):
        kind = k % 4
        if kind == 0:                                     # one validate rule broken
            ops, brk = BREAKERS[(k // 4) % len(BREAKERS)]
            op = ops[int(rng.integers(0, len(ops)))]
            f = valid_fields(rng, op)
            brk(f, rng)
            window = pack(op, f)
            counts["broken rule"] += 1
        elif kind == 1:                                   # a valid instruction with a stray padding bit
            op = OPS[int(rng.integers(0, len(OPS)))]
            used = sum(b for _, b in FIELDS[op])
            room = NWORDS[op] * WORD_BITS - used
            window = pack(op, valid_fields(rng, op))
            if room:
                window |= 1 << (used + int(rng.integers(0, room)))
            counts["padding"] += 1
        elif kind == 2:                                   # every opcode value, fields random
            window = rbits(rng, WORD_BITS * MAX_WORDS) & ~0xF | (k // 4) % 16
            counts["opcode"] += 1
        else:                                             # fully random window
            window = rbits(rng, WORD_BITS * MAX_WORDS)
            counts["random"] += 1
        window &= (1 << (WORD_BITS * MAX_WORDS)) - 1
        n_ill += await check(dut, window, f"case {k}")
    assert n_ill > N // 2, f"only {n_ill} of {N} windows were illegal: the generator is too tame"
    dut._log.info(f"decoder: {N} windows ({counts}), {n_ill} illegal, flags equal to isa.decode_at")
