"""Compiler v1: memory map, programs, artifact file, and static checks of every instruction's addresses."""
import numpy as np
import pytest

from flightllm import boards, isa
from flightllm.compiler import Artifact, compile_model
from flightllm.compiler.validate import check_artifact, check_program
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
    """Q4_1 and Q8_0 rows are the engine's dense block format: the image holds the GGUF blocks byte for byte, in
    the engine's row-pair order (block b of row 2p, then block b of row 2p+1; formats.interleave_rows)."""
    t = smollm2.layer(7, "ffn_down")
    img = artifact.image
    raw = np.asarray(t.data).tobytes()
    R = t.rows
    rb = len(raw) // R
    bb = 20 if t.type == "Q4_1" else 34
    pair0 = b"".join(raw[r * rb + b * bb: r * rb + (b + 1) * bb] for b in range(rb // bb) for r in (0, 1))
    found = img.tobytes().find(pair0)
    assert found >= artifact.memmap["weights"].base
    from flightllm.formats import interleave_rows
    stored = interleave_rows(np.frombuffer(raw, np.uint8).reshape(R, rb), WFmt.Q4_1 if bb == 20 else WFmt.Q8_0)
    assert img[found: found + stored.size].tobytes() == stored.tobytes()


def test_q4_1_quantiser_is_ggmls():
    """image.quantize_q4_1 (--quantize q4_1) gives the gguf package's Q4_1 bytes (ggml's reference quantiser), edge
    blocks included: constant, one outlier, values near zero, a range of one fp16 step."""
    import gguf
    from gguf.quants import quantize

    from flightllm.compiler import image
    from flightllm.formats import pack_weights

    rng = np.random.default_rng(4)
    x = (rng.standard_normal((48, 320)) * 0.05).astype(np.float32)
    x[0, :32] = 0.25
    x[1, 32:64] = 0; x[1, 40] = 3.0
    x[2, :32] = rng.standard_normal(32).astype(np.float32) * 1e-6
    x[3, :32] = np.float32(1.0) + np.arange(32, dtype=np.float32) * np.float32(2 ** -10) / 31
    q, d, m = image.quantize_q4_1(x)
    assert q.min() >= 0 and q.max() <= 15
    assert np.array_equal(pack_weights(q, d, m, WFmt.Q4_1), quantize(x, gguf.GGMLQuantizationType.Q4_1).reshape(48, -1))


def test_every_access_stays_in_its_region(artifact, sim_board):
    """Static check over all programs at the smallest and largest legal POS (POS + T <= ctx)."""
    check_artifact(artifact, sim_board)


def test_validator_rejects_out_of_region_and_overflowing_streams(artifact, sim_board):
    mm = artifact.memmap
    w = artifact.memmap["weights"]
    bad_st = [isa.make(Op.ST, fmt=StFmt.I32, src=0, addr=w.base, rows=1, cols=4, src_stride=4, dst_stride=16,
                       elem_stride=4), isa.make(Op.SYS, fn=1)]
    with pytest.raises(CompileError, match="writes read-only region 'weights'"):
        check_program(isa.assemble(bad_st), mm, 0, sim_board.accel.abuf_words, sim_board.accel.qbuf_bytes)
    past = [isa.make(Op.LD, fmt=LdFmt.I32, dst=0, addr=mm.top - 8, rows=1, cols=4, src_stride=16, dst_stride=4),
            isa.make(Op.SYS, fn=1)]
    with pytest.raises(CompileError, match="outside every region"):
        check_program(isa.assemble(past), mm, 0, sim_board.accel.abuf_words, sim_board.accel.qbuf_bytes)
    big = [isa.make(Op.MISC, fn=0, src=0, dst=sim_board.accel.abuf_words - 10, n=20, rows=1), isa.make(Op.SYS, fn=1)]
    with pytest.raises(CompileError, match="ABUF"):
        check_program(isa.assemble(big), mm, 0, sim_board.accel.abuf_words, sim_board.accel.qbuf_bytes)
    pos_dep = [isa.make(Op.ST, fmt=StFmt.I16, src=0, addr=mm["logits"].end - 256, rows=1, cols=64, src_stride=64,
                        dst_stride=128, elem_stride=2, pos_stride=128), isa.make(Op.SYS, fn=1)]
    check_program(isa.assemble(pos_dep), mm, 0, sim_board.accel.abuf_words, sim_board.accel.qbuf_bytes)
    with pytest.raises(CompileError, match="writes read-only region 'program'"):     # at POS 2 it spills over
        check_program(isa.assemble(pos_dep), mm, 2, sim_board.accel.abuf_words, sim_board.accel.qbuf_bytes)


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


def test_board_too_small_is_a_clear_error(smollm2, tmp_path):
    src = (boards.BOARD_DIR / "sim.toml").read_text().replace("abuf_words = 262144", "abuf_words = 16384")
    p = tmp_path / "tiny.toml"
    p.write_text(src.replace('name = "sim"', 'name = "tiny"'))
    with pytest.raises(CompileError, match="ABUF too small"):
        compile_model(smollm2, boards.load(str(p)), ctx=512)


def test_weight_channels_split_every_streamed_matrix(artifact_2ch, artifact, sim2_board, smollm2):
    """sim-2ch: the projections and the head are laid out over both channels (section c at weights + c * S holds
    every matrix's channel-c part) and streamed with split = 1; the KV-cache MVs are not; the embedding gather reads
    a row-major copy; the regions are the one-channel artifact's."""
    from flightllm.compiler import image
    from flightllm.compiler.memmap import PAGE
    from flightllm.formats import split_sections

    S, C = artifact_2ch.split_stride, sim2_board.accel.weight_channels
    w = artifact_2ch.memmap["weights"]
    assert artifact.split_stride == 0 and S > 0 and S % PAGE == 0 and w.base + C * S <= w.end
    assert list(artifact_2ch.memmap.regions) == list(artifact.memmap.regions)
    check_artifact(artifact_2ch, sim2_board)
    prog = [ins for _, ins in isa.disassemble(artifact_2ch.program_words("fwd1"))]
    mvs = [ins.f for ins in prog if ins.op in (Op.MM, Op.MV)]
    assert {f["split"] for f in mvs if f["fmt"] == WFmt.I16} == {0}               # the KV cache
    weights = [f for f in mvs if f["fmt"] != WFmt.I16]
    assert len(weights) == 7 * smollm2.config.n_layers + 1 and {f["split"] for f in weights} == {1}
    img = artifact_2ch.image
    for f, name in ((weights[0], "blk.0.attn_q"), (weights[-1], "token_embd")):      # the tied head: its own copy
        fmt, rows = image.device_matrix(smollm2.tensors[name + ".weight"])
        assert f["rows"] == rows.shape[0]             # one logits tile: the whole vocabulary fits the ABUF
        sec = split_sections(rows, fmt, 16, C)
        for c in range(C):
            a = f["waddr"] + c * S
            assert w.base <= a and a + sec.shape[1] <= w.end
            assert np.array_equal(img[a: a + sec.shape[1]], sec[c])
    ld = next(ins.f for ins in prog if ins.op == Op.LD and ins.f["idx"])
    _, emb = image.device_matrix(smollm2.tensors["token_embd.weight"])
    assert ld["addr"] >= w.base + C * S
    assert np.array_equal(img[ld["addr"]: ld["addr"] + emb.size], emb.reshape(-1))


def test_validator_checks_every_channel_and_old_artifacts_have_no_split_stride(artifact_2ch, artifact, sim2_board,
                                                                                tmp_path):
    past = -(-artifact_2ch.memmap.top // 4096) * 4096          # channel 1 beyond every region
    for bad, msg in ((past, "outside every region"), (100, "multiple of 4096")):
        hdr = dict(artifact_2ch.header, split_stride=bad)
        with pytest.raises(CompileError, match=msg):
            check_artifact(Artifact(hdr, artifact_2ch.image), sim2_board)
    old = Artifact({k: v for k, v in artifact.header.items() if k != "split_stride"}, artifact.image)
    old.save(tmp_path / "old.flm")
    assert Artifact.load(tmp_path / "old.flm").split_stride == 0
