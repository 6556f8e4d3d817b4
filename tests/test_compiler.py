"""Compiler v1: memory map, programs, artifact file, and static checks of every instruction's addresses."""
import numpy as np
import pytest

from flightllm import boards, isa
from flightllm.compiler import Artifact, compile_model
from flightllm.errors import CompileError
from flightllm.isa import LdFmt, Op, StFmt, WFmt


def test_memory_map_regions_are_disjoint_and_protected(artifact):
    mm = artifact.memmap
    regs = sorted(mm.regions.values(), key=lambda r: r.base)
    for a, b in zip(regs, regs[1:]):
        assert a.end <= b.base
    assert not mm["weights"].writable and not mm["program"].writable
    assert mm["kv"].writable and mm["io"].writable and mm["logits"].writable
    # KV cache: 30 layers x 3 KV heads x (K + V) x ctx x 64 x int16
    ctx = artifact.header["ctx"]
    assert mm["kv"].size >= 30 * 3 * 2 * ctx * 64 * 2


def test_weights_are_the_gguf_blocks(artifact, smollm2):
    """Q4_1 and Q8_0 rows are the engine's dense block format: the image holds them byte for byte."""
    t = smollm2.layer(7, "ffn_down")
    img = artifact.image
    found = img.tobytes().find(np.asarray(t.data).tobytes()[:4096])
    assert found >= artifact.memmap["weights"].base


def _accesses(ins, pos_max, ctx):
    """(lo, hi, write) byte ranges an instruction touches for POS in [0, pos_max]."""
    f = ins.f
    out = []
    for pos in (0, pos_max):
        if ins.op == Op.LD and not f["idx"]:
            nb = f["cols"] * 4 if f["fmt"] == LdFmt.I32 else f["cols"] // 32 * 34
            lo = f["addr"] + pos * f["pos_stride"]
            out.append((lo, lo + (f["rows"] - 1) * f["src_stride"] + nb, False))
        elif ins.op == Op.ST:
            es = 4 if f["fmt"] == StFmt.I32 else 2
            lo = f["addr"] + pos * f["pos_stride"]
            hi = lo + (f["rows"] - 1) * f["dst_stride"] + (f["cols"] - 1) * f["elem_stride"] + es
            out.append((lo, hi, True))
        elif ins.op in (Op.MM, Op.MV):
            rows = f["rows"] + (pos if f["rows_pos"] else 0)
            cols = -(-(f["cols"] + pos) // 32) * 32 if f["cols_pos"] else f["cols"]
            from flightllm.formats import row_bytes
            out.append((f["waddr"], f["waddr"] + (rows - 1) * f["wstride"] + row_bytes(f["fmt"], cols, f["sp_n"]),
                        False))
    return out


def test_every_access_stays_in_its_region(artifact):
    """Static check over all programs at the smallest and largest legal POS (POS + T <= ctx)."""
    mm = artifact.memmap
    ctx = artifact.header["ctx"]
    for name, p in artifact.header["programs"].items():
        prog = isa.disassemble(artifact.program_words(name))
        assert prog[-1][1].op == Op.SYS
        assert len(prog) == p["instructions"]
        for _, ins in prog:
            for lo, hi, write in _accesses(ins, ctx - p["tokens"], ctx):
                r = [r for r in mm.regions.values() if r.base <= lo and hi <= r.end]
                assert r, f"{name}: {ins} touches [{lo:#x},{hi:#x}) outside every region"
                assert r[0].writable or not write


def test_decode_program_is_position_independent(artifact):
    """One decode stream serves every position: KV/RoPE addresses and attention lengths come from POS."""
    prog = [ins for _, ins in isa.disassemble(artifact.program_words("fwd1"))]
    kv_mm = [i for i in prog if i.op in (Op.MV, Op.MM) and i.f["fmt"] == WFmt.I16]
    assert kv_mm and all(i.f["rows_pos"] or i.f["cols_pos"] for i in kv_mm)
    assert all(i.f["pos_stride"] for i in prog if i.op == Op.ST and i.f["fmt"] == StFmt.I16)


def test_artifact_save_load_and_corruption(artifact, tmp_path):
    p = tmp_path / "a.flm"
    artifact.save(p)
    back = Artifact.load(p)
    assert back.header["programs"] == artifact.header["programs"]
    assert np.array_equal(back.image, artifact.image)
    data = bytearray(p.read_bytes())
    data[-100] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(CompileError, match="checksum"):
        Artifact.load(p)
    p.write_bytes(b"hello")
    with pytest.raises(CompileError, match="not a flightllm artifact"):
        Artifact.load(p)


def test_context_limits(smollm2):
    with pytest.raises(CompileError, match="multiple of 32"):
        compile_model(smollm2, boards.load("sim"), ctx=100)
    with pytest.raises(CompileError, match="exceeds the model"):
        compile_model(smollm2, boards.load("sim"), ctx=16384)


def test_board_too_small_is_a_clear_error(smollm2):
    with pytest.raises(CompileError, match="ABUF too small"):
        compile_model(smollm2, boards.load("pynq-z2"), ctx=512)
