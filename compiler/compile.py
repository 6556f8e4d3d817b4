"""Model -> artifact: place weights and tables, plan on-chip buffers, lower every bucket, assemble."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from flightllm import boards, cache
from flightllm.errors import CompileError
from flightllm.formats import BLOCK, interleave_rows, split_layout
from flightllm.isa import WFmt, assemble
from flightllm.compiler import image, source
from flightllm.compiler.artifact import Artifact
from flightllm.compiler.gguf_model import Model
from flightllm.compiler.lower import KV_BYTES, Lowering, Mat, Placement, plan_onchip
from flightllm.compiler.memmap import PAGE, MemoryMap

COMPILER_VERSION = "2"
ALIGN = 64          # one memory beat


def _align(n: int, a: int = ALIGN) -> int:
    return -(-n // a) * a


def compile_model(model: Model, board: boards.Board, ctx: int | None = None, quantize: str = "q8_0") -> Artifact:
    """``quantize``: the format of float (F16/F32/BF16) matrices, q8_0 or q4_1 (image.QUANTIZE); quantised GGUF
    tensors keep their own."""
    cfg = model.config
    if quantize not in image.QUANTIZE:
        raise CompileError(f"quantize must be one of {', '.join(image.QUANTIZE)}, not {quantize!r}")
    acc = board.accel
    ctx = min(cfg.context, acc.max_context) if ctx is None else ctx
    if ctx < 32 or ctx % BLOCK:
        raise CompileError(f"context {ctx} must be a positive multiple of {BLOCK}")
    if ctx > cfg.context:
        raise CompileError(f"context {ctx} exceeds the model's {cfg.context}")
    if cfg.head_dim % BLOCK or cfg.hidden % BLOCK or cfg.ffn % BLOCK:
        raise CompileError(f"hidden/head/FFN sizes must be multiples of {BLOCK}")
    tmax = max(acc.prefill_buckets)
    abuf, qbuf = plan_onchip(cfg, ctx, tmax, acc.abuf_words, acc.qbuf_bytes)

    # --- device memory: weights and tables ----------------------------------------------------------
    chunks: list[tuple[int, np.ndarray]] = []
    pl = Placement()
    off = 0

    def put(arr: np.ndarray) -> int:
        nonlocal off
        b = np.ascontiguousarray(arr).view(np.uint8).reshape(-1)
        addr = off
        chunks.append((addr, b))
        off = _align(off + b.size)
        return addr

    mm = MemoryMap()
    io = mm.add("io", tmax * 4, writable=True)
    pl.tokens = io.base
    wbase = mm.top
    off = wbase
    names = ["token_embd"] + [f"blk.{l}.{n}" for l in range(cfg.n_layers)
                              for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")]
    if not model.tied_output:
        names.append("output")
    # matrices the engine multiplies are stored in its weight stream layout (formats.interleave_rows: row pairs for
    # dense Q4_1/Q8_0); the embedding table, gathered row by row by LD (Q8_0 rows only), stays row-major, so a
    # tied output head gets its own stored copy, in the embedding's own format
    C = acc.weight_channels
    emb = model.tensors["token_embd.weight"]

    def put_embedding():
        rows = image.embedding_rows(emb)
        pl.mats["token_embd"] = Mat(put(rows), int(WFmt.Q8_0), emb.rows, emb.cols, rows.shape[1])

    if C == 1:
        put_embedding()
        if model.tied_output:
            fmt, rows = image.device_matrix(emb, quantize)
            pl.mats["output"] = Mat(put(interleave_rows(rows, fmt)), int(fmt), emb.rows, emb.cols, rows.shape[1])
        for n in names[1:]:
            t = model.tensors[n + ".weight"]
            fmt, rows = image.device_matrix(t, quantize)
            pl.mats[n] = Mat(put(interleave_rows(rows, fmt)), int(fmt), t.rows, t.cols, rows.shape[1])
        split_stride = 0
    else:
        split_stride = _place_split(model, names, pl, chunks, wbase, C, abuf.slots["logits"][1], quantize)
        off = wbase + C * split_stride
        put_embedding()
    for n in [f"blk.{l}.{k}" for l in range(cfg.n_layers) for k in ("attn_norm", "ffn_norm")] + ["output_norm"]:
        pl.gammas[n] = put(image.gamma_words(model.tensors[n + ".weight"]))
    pl.rope = put(image.rope_table(ctx, cfg.head_dim, cfg.rope_base))
    mm.add("weights", off - wbase, writable=False)

    hd = cfg.head_dim
    per = ctx * hd * KV_BYTES
    kv = mm.add("kv", 2 * cfg.n_layers * cfg.n_kv_heads * per, writable=True)
    a = kv.base
    for l in range(cfg.n_layers):
        for g in range(cfg.n_kv_heads):
            pl.kcache[l, g], pl.vcache[l, g] = a, a + per
            a += 2 * per
    lg = mm.add("logits", tmax * cfg.vocab * 4, writable=True)
    pl.logits = lg.base

    # --- programs ------------------------------------------------------------------------------------
    low = Lowering(cfg, pl, ctx, tmax, abuf, qbuf)
    progs, blobs = {}, []
    pbase = mm.top
    poff = pbase
    for T in sorted(acc.prefill_buckets):
        for all_logits in (False, True):
            name = f"{'all' if all_logits else 'fwd'}{T}"
            words = assemble(low.forward(T, all_logits))
            progs[name] = {"addr": poff, "words": int(words.size), "tokens": T, "all_logits": all_logits,
                           "instructions": len(low.prog), "layer_ends": list(low.layer_ends)}
            blobs.append((poff, words.view(np.uint8)))
            poff = _align(poff + words.nbytes)
    mm.add("program", poff - pbase, writable=False, executable=True)

    if mm.top > board.memory.capacity_mib << 20:
        raise CompileError(f"model needs {mm.top >> 20} MiB of device memory; board {board.name} has "
                           f"{board.memory.capacity_mib} MiB")
    img = np.zeros(mm.top, np.uint8)       # KV and logits regions start zeroed too
    for addr, b in chunks + blobs:
        img[addr: addr + b.size] = b

    from flightllm.host.tokenizer import build_tokenizer_json

    tok = model.tokenizer
    eos = int(tok.get("eos", -1))
    stop = [eos] + list(tok.get("stop", []))
    if tok.get("tokens") and "<|im_end|>" in tok["tokens"]:
        stop.append(tok["tokens"].index("<|im_end|>"))
    bytes_w = sum(m.rows * m.stride for n, m in pl.mats.items() if n != "output" or not model.tied_output)
    header = {
        "compiler_version": COMPILER_VERSION,
        "board": board.name, "board_config": board.to_dict(),
        "model": cfg.to_dict(), "source": str(model.path), "tied_output": model.tied_output, "quantize": quantize,
        "ctx": ctx, "tmax": tmax, "buckets": sorted(acc.prefill_buckets),
        "memmap": mm.to_dict(), "mem_size": mm.top, "split_stride": split_stride, "programs": progs,
        "io": {"tokens": pl.tokens, "logits": pl.logits},
        "onchip": {"abuf": {k: list(v) for k, v in abuf.slots.items()}, "qbuf": {k: list(v) for k, v in qbuf.slots.items()}},
        "weight_bytes": int(bytes_w),
        "tokenizer_json": build_tokenizer_json(tok), "chat_template": model.chat_template,
        "eos": eos, "bos": int(tok.get("bos", -1)), "add_bos": bool(tok.get("add_bos")), "stop_ids": sorted(set(stop)),
    }
    return Artifact(header, img)


def _place_split(model: Model, names: list[str], pl: Placement, chunks: list, wbase: int, C: int,
                 logit_tile: int, quantize: str) -> int:
    """Weight channels (docs/isa.md): every matrix the engine streams (the projections and the output head, the
    tied embedding's copy included) split over the C channels. Section c of the weights region, at wbase + c * S,
    holds every matrix's channel-c part (formats.split_sections) at the same offset; the head is split per logit
    row tile, as each tile is an MV of its own. Returns S (page-aligned; the artifact's SPLIT_STRIDE)."""
    split_names = names[1:] + ["output"] if model.tied_output else names[1:]      # not the gathered embedding
    tiles, where = [], []
    for n in split_names:
        t = model.tensors[("token_embd" if n == "output" else n) + ".weight"]
        fmt, rows = image.device_matrix(t, quantize)
        tile = logit_tile if n == "output" else t.rows
        pl.mats[n] = Mat(0, int(fmt), t.rows, t.cols, rows.shape[1], split=1)
        for r0 in range(0, t.rows, tile):
            tiles.append((rows[r0: r0 + tile], fmt, 16))
            where.append((n, r0))
    offs, S, pieces = split_layout(tiles, C, ALIGN, PAGE)
    for (n, r0), o in zip(where, offs):
        pl.mats[n].tiles[r0] = wbase + o
        if r0 == 0:
            pl.mats[n].addr = wbase + o
    chunks += [(wbase + a, b) for a, b in pieces]
    return S


def compile_cached(model_name: str, board_name: str, ctx: int | None = None, quantize: str = "q8_0") -> Artifact:
    """Compile, or reuse an artifact compiled from the same model file, board file and compiler."""
    path = source.resolve_model(model_name)
    board = boards.load(board_name)
    stamps = [f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in source.source_files(path)]
    key = hashlib.sha256("|".join([*stamps, board.path.read_text(), str(ctx), quantize, COMPILER_VERSION,
                                   _source_stamp()]).encode()).hexdigest()[:24]
    group = f"{path.stem}.{board.name}."          # this model on this board; contexts and compilers side by side
    cp = cache.root() / f"{group}{key}.flm"
    if cp.is_file():
        try:
            art = Artifact.load(cp)
            cache.touch(cp)
            return art
        except CompileError:
            cp.unlink(missing_ok=True)       # corrupt cache entry: rebuild
    art = compile_model(source.load_model(path), board, ctx, quantize)
    try:
        art.save(cp)
        cache.prune(cp, group)
    except OSError:
        pass                                 # a read-only cache only costs time
    return art


def _source_stamp() -> str:
    """Sources an artifact is made from: editing any of them invalidates cached artifacts."""
    import flightllm
    from flightllm.host import tokenizer
    from flightllm.sim import sfu_model

    here = Path(__file__).resolve().parent
    top = Path(flightllm.__file__).resolve().parent
    files = sorted(here.glob("*.py")) + [top / "isa.py", top / "formats.py", Path(tokenizer.__file__),
                                         Path(sfu_model.__file__)]
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()
