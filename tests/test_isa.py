import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from flightllm import isa
from flightllm.errors import ISAError
from flightllm.isa import FIELDS, NWORDS, LdFmt, MiscOp, Op, StFmt, SysOp, WFmt


def _valid_fields(op, draw):
    f = {}
    for name, bits in FIELDS[op]:
        if name == "op":
            continue
        f[name] = draw(st.integers(0, (1 << bits) - 1))
    # fix up fields with rules
    if op in (Op.MM, Op.MV):
        f["fmt"] = draw(st.sampled_from(list(WFmt)))
        f["sp_n"] = 16 if f["fmt"] == WFmt.I16 else draw(st.sampled_from([2, 4, 8, 16]))
        for k in ("cols", "xaddr", "xstride"):
            f[k] -= f[k] % 32
        f["tokens"] = 1 if op == Op.MV else max(1, f["tokens"])
        if f["fmt"] == WFmt.I16:
            f["wfrac"] = min(f["wfrac"], 24)
        if f["split"]:
            f["rows_pos"] = 0
    elif op == Op.LD:
        f["fmt"] = draw(st.sampled_from(list(LdFmt)))
        f["cols"] -= f["cols"] % 32
        f["dst"] -= f["dst"] % 32
        f["dst_stride"] -= f["dst_stride"] % 32
    elif op == Op.ST:
        f["fmt"] = draw(st.sampled_from(list(StFmt)))
    elif op == Op.MISC:
        f["fn"] = draw(st.sampled_from([m for m in MiscOp if m != MiscOp.ROPE]))
        f["dst"] -= f["dst"] % 32
        f["dst_stride"] -= f["dst_stride"] % 32
        if f["fn"] == MiscOp.SOFTMAX:
            f["imm"] &= (1 << 31) - 1
    elif op == Op.SYS:
        f["fn"] = draw(st.sampled_from(list(SysOp)))
    return f


@st.composite
def instrs(draw):
    op = draw(st.sampled_from(list(Op)))
    return isa.make(op, **_valid_fields(op, draw))


@settings(max_examples=400, deadline=None)
@given(st.lists(instrs(), min_size=1, max_size=8))
def test_encode_decode_round_trip(prog):
    prog = prog + [isa.make(Op.SYS, fn=SysOp.END)]
    words = isa.assemble(prog)
    assert words.size == sum(NWORDS[i.op] for i in prog)
    back = [ins for _, ins in isa.disassemble(words)]
    # disassemble stops at the first END; compare up to there
    n = next(i for i, ins in enumerate(prog) if ins.op == Op.SYS and ins.f["fn"] == SysOp.END) + 1
    assert [(i.op, i.f) for i in back] == [(i.op, i.f) for i in prog[:n]]


def test_word_counts_fit_the_fields():
    for op, fields in FIELDS.items():
        assert sum(b for _, b in fields) <= 32 * NWORDS[op]
        assert fields[0] == ("op", 4)


def test_split_rows_do_not_grow_with_pos():
    with pytest.raises(ISAError, match="split rows cannot grow"):
        isa.make(Op.MV, fmt=0, sp_n=16, rows=64, cols=32, tokens=1, split=1, rows_pos=1)


def test_field_overflow_is_rejected():
    with pytest.raises(ISAError, match="does not fit"):
        isa.make(Op.MV, fmt=0, sp_n=16, rows=1 << 24, cols=32, tokens=1)
    with pytest.raises(ISAError, match="no field"):
        isa.make(Op.SYS, bogus=1)


@pytest.mark.parametrize("words,msg", [
    ([0], "unknown opcode 0"),
    ([0xF], "unknown opcode 15"),
    ([int(Op.MV)], "truncated"),
    ([], "past the end"),
])
def test_bad_streams(words, msg):
    with pytest.raises(ISAError, match=msg):
        isa.disassemble(np.array(words, dtype=np.uint32))


def test_missing_end_and_padding_bits():
    w = isa.assemble([isa.make(Op.SYS, fn=SysOp.NOP)])
    with pytest.raises(ISAError, match="past the end"):
        isa.disassemble(w)
    mv = isa.assemble([isa.make(Op.MV, fmt=0, sp_n=16, cols=32, tokens=1), isa.make(Op.SYS, fn=SysOp.END)])
    mv[NWORDS[Op.MV] - 1] |= 1 << 31           # MV's last word has unused high bits
    with pytest.raises(ISAError, match="padding"):
        isa.disassemble(mv)


def test_semantic_checks():
    with pytest.raises(ISAError, match="sparsity"):
        isa.make(Op.MM, fmt=0, sp_n=3, cols=32, tokens=1)
    with pytest.raises(ISAError, match="multiples of 32"):
        isa.make(Op.MM, fmt=0, sp_n=16, cols=33, tokens=1)
    with pytest.raises(ISAError, match="MV: tokens"):
        isa.make(Op.MV, fmt=0, sp_n=16, cols=32, tokens=2)
    with pytest.raises(ISAError, match="dense only"):
        isa.make(Op.MM, fmt=WFmt.I16, sp_n=8, cols=32, tokens=1)
    with pytest.raises(ISAError, match="wfrac"):      # hw/decoder.py flags it too (tests/hw/test_decoder_rtl.py)
        isa.make(Op.MM, fmt=WFmt.I16, sp_n=16, cols=32, tokens=1, wfrac=25)
    isa.make(Op.MM, fmt=WFmt.I16, sp_n=16, cols=32, tokens=1, wfrac=24)


def test_disasm_text_names_the_operation():
    ins = isa.make(Op.MV, fmt=WFmt.Q4_1, sp_n=8, rows=192, cols=576, tokens=1, waddr=0x1000)
    s = str(ins)
    assert s.startswith("MV.Q4_1.8:16") and "rows=192" in s and "waddr=0x1000" in s


def test_docs_carry_the_generated_field_tables():
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "isa.md").read_text()
    assert isa.markdown_fields().strip() in doc, "docs/isa.md is stale: paste isa.markdown_fields() into it"
