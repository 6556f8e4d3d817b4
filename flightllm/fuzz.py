"""`flightllm fuzz`: deterministic mutation fuzzing of the model loaders and of the instruction decoder/executor.

gguf: a small LLaMA GGUF (written here with the `gguf` package) is mutated — byte flips, boundary values written
over count/length/offset fields, truncation, insertion — and loaded, then compiled. Every case must end in
success or a FlightLLMError; anything else is a crash, a case over the time limit a hang.

hf: a small Hugging Face checkpoint folder (tiny_checkpoint) has one file mutated per case — bytes as above, or a
JSON field (config.json, the tokenizer files, the safetensors header) set to a boundary or ill-typed value — and is
loaded and compiled, judged as gguf.

isa: random and mutated instruction streams are decoded and executed on the functional simulator with a
protected memory map. Besides crashes and hangs it counts out-of-region writes: bytes outside the writable
regions that changed.

parity: the same kind of streams (with small shapes) on the functional simulator and on the RTL (Verilator, the
region registers programmed from the same map): each case must end with the same error code and PC on both, or
with the same memory and the same cycle count; mismatches are counted besides crashes, hangs and out-of-region
writes (on either engine).

isa and parity take a board (``sim`` by default). On a board with weight channels (``accel.weight_channels`` > 1,
e.g. tests/boards/sim-2ch.toml) the weights region holds one section per channel, SPLIT_STRIDE apart, and half the
well-formed MV/MM are split over them (docs/isa.md "Weight channels").
"""
from __future__ import annotations

import os
import resource
import signal
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from flightllm.errors import FlightLLMError

CASE_SECONDS = 5


@dataclass
class Report:
    target: str
    cases: int = 0
    accepted: int = 0
    rejected: int = 0
    crashes: int = 0
    hangs: int = 0
    out_of_region_writes: int = 0
    mismatches: int = 0                              # parity: fsim and RTL disagreed (error code, PC or memory)
    cycle_mismatches: int = 0                        # parity: valid streams whose cycle counts differ
    seconds: float = 0.0
    examples: list = field(default_factory=list)     # the first few crash/hang descriptions

    def to_dict(self):
        return asdict(self)

    @property
    def clean(self) -> bool:
        return self.crashes == self.hangs == self.out_of_region_writes == self.mismatches == 0


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


# The tiny model both writers make: hidden 64, 2 heads, 1 KV head (32 wide), FFN 96, vocab 64 (a token per
# character '!'..'\\', two merges, the chat markers as control tokens)
TINY_H, TINY_F, TINY_V, TINY_KV = 64, 96, 64, 32
TINY_TOKENS = [chr(0x21 + i) for i in range(TINY_V - 4)] + ["!\"", "#$", "<|im_start|>", "<|im_end|>"]
TINY_TYPES = [1] * (TINY_V - 2) + [3, 3]
TINY_MERGES = ["! \"", "# $"]
TINY_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"


def tiny_gguf(path: str, seed: int = 0, types: dict | None = None, layers: int = 1, embd: str = "Q8_0") -> None:
    """A small LLaMA GGUF (hidden 64, 2 heads, 1 KV head, FFN 96, vocab 64, byte-level BPE vocabulary).

    ``types`` maps a matrix name (attn_q, ..., ffn_down) to a GGML type name (F32 by default); ``embd`` is the
    token embedding's (a quantised type)."""
    import gguf
    from gguf.quants import quantize

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, "llama")
    H, F, V, L = TINY_H, TINY_F, TINY_V, layers
    types = types or {}
    w.add_block_count(L)
    w.add_context_length(256)
    w.add_embedding_length(H)
    w.add_feed_forward_length(F)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(TINY_TOKENS)
    w.add_token_types(TINY_TYPES)
    w.add_token_merges(TINY_MERGES)
    w.add_eos_token_id(V - 1)
    w.add_chat_template(TINY_TEMPLATE)
    mat = lambda r, c: rng.standard_normal((r, c)).astype(np.float32) * 0.05  # noqa: E731
    w.add_tensor("token_embd.weight", quantize(mat(V, H), gguf.GGMLQuantizationType[embd]),
                 raw_dtype=gguf.GGMLQuantizationType[embd])
    w.add_tensor("output_norm.weight", np.ones(H, np.float32))
    for l in range(L):
        p = f"blk.{l}."
        for n, shp in (("attn_q", (H, H)), ("attn_k", (TINY_KV, H)), ("attn_v", (TINY_KV, H)), ("attn_output", (H, H)),
                       ("ffn_gate", (F, H)), ("ffn_up", (F, H)), ("ffn_down", (H, F))):
            t = types.get(n, "F32")
            arr = mat(*shp)
            if t == "F32":
                w.add_tensor(p + n + ".weight", arr)
            elif t == "F16":
                w.add_tensor(p + n + ".weight", arr.astype(np.float16))
            else:
                qt = gguf.GGMLQuantizationType[t]
                w.add_tensor(p + n + ".weight", quantize(arr, qt), raw_dtype=qt)
        w.add_tensor(p + "attn_norm.weight", np.ones(H, np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(H, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _mutate(data: bytes, rng: np.random.Generator, header_end: int) -> bytes:
    b = bytearray(data)
    kind = int(rng.integers(0, 5))
    span = max(8, min(header_end, len(b)))
    if kind == 0:                                   # flip bytes
        for _ in range(int(rng.integers(1, 9))):
            b[int(rng.integers(0, span))] ^= int(rng.integers(1, 256))
    elif kind == 1:                                 # a boundary value over a 4- or 8-byte field
        width = 8 if rng.random() < 0.5 else 4
        at = int(rng.integers(0, span - width))
        vals = [0, 1, 2**31 - 1, 2**32 - 1, 2**63, 2**64 - 1, int(rng.integers(0, 2**32))]
        v = vals[int(rng.integers(0, len(vals)))] & ((1 << (8 * width)) - 1)
        b[at: at + width] = v.to_bytes(width, "little")
    elif kind == 2:                                 # truncate
        del b[int(rng.integers(0, len(b))):]
    elif kind == 3:                                 # insert junk
        at = int(rng.integers(0, span))
        b[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8))
    else:                                           # delete a run
        at = int(rng.integers(0, span))
        del b[at: at + int(rng.integers(1, 64))]
    return bytes(b)


def fuzz_gguf(cases: int, seed: int = 0) -> Report:
    from flightllm import boards
    from flightllm.compiler import compile_model, gguf_model

    rep = Report("gguf")
    board = boards.load("sim")
    tmp = tempfile.mkdtemp(prefix="flightllm-fuzz-")
    seed_path = os.path.join(tmp, "seed.gguf")
    tiny_gguf(seed_path, seed)
    data = open(seed_path, "rb").read()
    import gguf

    r = gguf.GGUFReader(seed_path)
    header_end = min(t.data_offset for t in r.tensors)
    del r
    rng = np.random.default_rng(seed)
    case_path = os.path.join(tmp, "case.gguf")
    t0 = time.time()
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i in range(cases):
            blob = _mutate(data, rng, header_end)
            with open(case_path, "wb") as f:
                f.write(blob)
            _case(rep, i, lambda: compile_model(gguf_model.load(case_path), board, ctx=64))
    finally:
        signal.signal(signal.SIGALRM, old)
    rep.seconds = round(time.time() - t0, 2)
    return rep


def tiny_checkpoint(folder: str, seed: int = 0) -> None:
    """A small Hugging Face LLaMA checkpoint folder (the tiny GGUF's shapes and vocabulary, random F32 weights):
    config.json, model.safetensors (written here: header length, JSON header, data), tokenizer files."""
    import json

    from flightllm.host.tokenizer import build_tokenizer_json

    rng = np.random.default_rng(seed)
    H, F, V, KV = TINY_H, TINY_F, TINY_V, TINY_KV
    os.makedirs(folder, exist_ok=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": F, "vocab_size": V,
           "max_position_embeddings": 256, "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "hidden_act": "silu",
           "tie_word_embeddings": True, "eos_token_id": V - 1, "bos_token_id": None}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    shapes = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    for n, shp in (("input_layernorm", (H,)), ("post_attention_layernorm", (H,)), ("self_attn.q_proj", (H, H)),
                   ("self_attn.k_proj", (KV, H)), ("self_attn.v_proj", (KV, H)), ("self_attn.o_proj", (H, H)),
                   ("mlp.gate_proj", (F, H)), ("mlp.up_proj", (F, H)), ("mlp.down_proj", (H, F))):
        shapes[f"model.layers.0.{n}.weight"] = shp
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for n, shp in shapes.items():
        a = np.ones(shp, np.float32) if len(shp) == 1 else rng.standard_normal(shp).astype(np.float32) * 0.05
        header[n] = {"dtype": "F32", "shape": list(shp), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    hj = json.dumps(header).encode()
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(len(hj).to_bytes(8, "little") + hj + b"".join(blobs))
    tok = {"model": "gpt2", "pre": "default", "tokens": TINY_TOKENS, "merges": TINY_MERGES, "token_type": TINY_TYPES}
    with open(os.path.join(folder, "tokenizer.json"), "w") as f:
        f.write(build_tokenizer_json(tok))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": TINY_TOKENS[-1], "add_bos_token": False, "chat_template": TINY_TEMPLATE}, f)


# values a structural mutation writes over a JSON field: boundaries, wrong types, nesting
JSON_VALUES = [0, -1, 1, 2, 3, 63, 64, 65, 2**31, 2**63, 10**400, 1e300, -1e-300, 0.5, "", "x", "a\nb", "llama", "F16",
               "BF16", "I8", None, True, [], [0], [0, 0], [0, 1 << 40], [1, 2, 3, 4, 5], {}, {"rope_type": "linear"}]


def _mutate_json(data: bytes, rng: np.random.Generator) -> bytes:
    """A field of a JSON object (one level down too, e.g. a safetensors entry) set to a JSON_VALUES value, or
    deleted."""
    import json

    obj = json.loads(data)
    tgt = obj
    if isinstance(obj, dict) and obj and rng.random() < 0.6:
        k = list(obj)[int(rng.integers(0, len(obj)))]
        if isinstance(obj[k], dict) and obj[k]:
            tgt = obj[k]
    if not isinstance(tgt, dict) or not tgt:
        return data
    k = list(tgt)[int(rng.integers(0, len(tgt)))]
    if rng.random() < 0.15:
        del tgt[k]
    else:
        tgt[k] = JSON_VALUES[int(rng.integers(0, len(JSON_VALUES)))]
    return json.dumps(obj).encode()


def fuzz_hf(cases: int, seed: int = 0) -> Report:
    """Checkpoint folders: one file of a tiny checkpoint mutated per case (bytes or a JSON field; for the weights
    file its safetensors header), loaded and compiled."""
    import shutil

    from flightllm import boards
    from flightllm.compiler import compile_model, hf_model

    rep = Report("hf")
    board = boards.load("sim")
    tmp = tempfile.mkdtemp(prefix="flightllm-fuzz-")
    seed_dir, case_dir = os.path.join(tmp, "seed"), os.path.join(tmp, "case")
    tiny_checkpoint(seed_dir, seed)
    files = {n: Path(seed_dir, n).read_bytes() for n in os.listdir(seed_dir)}
    w = files["model.safetensors"]
    hlen = int.from_bytes(w[:8], "little")
    rng = np.random.default_rng(seed)
    t0 = time.time()
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i in range(cases):
            shutil.rmtree(case_dir, ignore_errors=True)
            shutil.copytree(seed_dir, case_dir)
            name = ["config.json", "model.safetensors", "model.safetensors", "tokenizer_config.json",
                    "tokenizer.json"][int(rng.integers(0, 5))]
            data, structural = files[name], rng.random() < 0.5
            if name == "model.safetensors":
                head = _mutate_json(w[8: 8 + hlen], rng) if structural else None
                blob = (len(head).to_bytes(8, "little") + head + w[8 + hlen:]) if structural \
                    else _mutate(w, rng, 8 + hlen)
            else:
                blob = _mutate_json(data, rng) if structural else _mutate(data, rng, len(data))
            with open(os.path.join(case_dir, name), "wb") as f:
                f.write(blob)
            _case(rep, i, lambda: compile_model(hf_model.load(case_dir), board, ctx=64))
    finally:
        signal.signal(signal.SIGALRM, old)
        shutil.rmtree(tmp, ignore_errors=True)
    rep.seconds = round(time.time() - t0, 2)
    return rep


def _case(rep: Report, i: int, fn, seconds: int = CASE_SECONDS) -> None:
    """Run one case under the time limit; a FlightLLMError is a clean rejection, anything else a crash. A numpy
    RuntimeWarning (NaN, overflow, invalid cast) is a crash too: it is how silent corruption shows."""
    rep.cases += 1
    signal.alarm(seconds)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            fn()
        rep.accepted += 1
    except FlightLLMError:
        rep.rejected += 1
    except _Timeout:
        rep.hangs += 1
        _note(rep, i, "hang")
    except _Mismatch as e:
        rep.mismatches += 1
        _note(rep, i, f"mismatch: {e}")
    except Exception as e:  # noqa: BLE001 - the point: anything else is a crash
        rep.crashes += 1
        _note(rep, i, f"{type(e).__name__}: {str(e)[:100]}")
    finally:
        signal.alarm(0)


def _note(rep: Report, i: int, what: str):
    if len(rep.examples) < 5:
        rep.examples.append(f"case {i}: {what}")


SECTION = 64 << 10          # the weights region per weight channel (SPLIT_STRIDE on a multi-channel board)


def _layout(seed: int, board="sim"):
    """The fuzzed device: a read-only region (the weights: one SPLIT_STRIDE-wide section per weight channel), a
    writable one, the program, and an unmapped tail; a random initial image and the mask of bytes no run may
    change (all but the writable region)."""
    from flightllm import boards
    from flightllm.compiler.memmap import MemoryMap

    board = boards.load(board) if isinstance(board, str) else board
    mm = MemoryMap()
    mm.add("weights", SECTION * board.accel.weight_channels, writable=False)
    data = mm.add("data", 64 << 10, writable=True)
    prog = mm.add("program", 4 << 10, writable=False, executable=True)
    mem_size = mm.top + (16 << 10)                 # an unmapped tail: nothing may land there either
    rng = np.random.default_rng(seed)
    base_img = rng.integers(0, 256, mem_size, dtype=np.uint8)
    protect = np.ones(mem_size, bool)
    protect[data.base: data.end] = False
    return board, mm, data, prog, mem_size, rng, base_img, protect


def split_stride(board) -> int:
    """SPLIT_STRIDE of the fuzz layout: the weights region cut into one section per channel (0: one channel)."""
    return SECTION if board.accel.weight_channels > 1 else 0


def fuzz_isa(cases: int, seed: int = 0, board="sim") -> Report:
    """Decode and run random/mutated streams on fsim; read-only and unmapped bytes must never change."""
    from flightllm import isa
    from flightllm.sim.fsim import FunctionalSim

    rep = Report("isa")
    board, mm, data, prog, mem_size, rng, base_img, protect = _layout(seed, board)
    # seeds: valid instructions with fields drawn near the real buffer/region sizes
    t0 = time.time()
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i in range(cases):
            words = _stream(rng, isa, mm, board)
            sim = FunctionalSim(board, mem_size, mm, split_stride(board))
            sim.mem[:] = base_img
            nb = min(words.nbytes, prog.size)
            sim.mem[prog.base: prog.base + nb] = words.view(np.uint8)[:nb]
            before = sim.mem[protect].copy()
            _case(rep, i, lambda: sim.run(prog.base, int(rng.integers(0, 64))))
            changed = int(np.count_nonzero(sim.mem[protect] != before))
            if changed:
                rep.out_of_region_writes += changed
                _note(rep, i, f"{changed} protected bytes changed")
    finally:
        signal.signal(signal.SIGALRM, old)
    rep.seconds = round(time.time() - t0, 2)
    return rep


COUNT_FIELDS = ("rows", "cols", "n", "tokens")
SMALL = 256


def _sane(rng, isa, mm, board):
    """A well-formed instruction with small shapes inside the fuzz layout's regions (it may still fault: data
    lies where the previous instructions left it, e.g. gather indices are random)."""
    from flightllm.formats import QACT_BLOCK_BYTES, row_bytes, split_span, weight_span

    I = lambda lo, hi: int(rng.integers(lo, hi))  # noqa: E731
    w, d = mm["weights"], mm["data"]
    buf = lambda: I(0, 128) * 32  # noqa: E731
    op = isa.Op(I(1, 7))
    if op == isa.Op.LD:
        fmt = isa.LdFmt(I(0, 3))
        rows, cols = I(1, 9), (I(1, 5) * 32 if fmt != isa.LdFmt.I32 else I(1, 65))
        nb = {isa.LdFmt.I32: 4 * cols, isa.LdFmt.Q8_0: row_bytes(1, cols),
              isa.LdFmt.QACT: cols // 32 * QACT_BLOCK_BYTES}[fmt]
        reg = w if rng.random() < 0.5 else d
        stride = nb + (4 * I(0, 4) if rng.random() < 0.3 else 0)
        addr = reg.base + 4 * I(0, (reg.size - rows * stride) // 4)
        kw = dict(fmt=fmt, addr=addr, rows=rows, cols=cols, src_stride=stride, dst=buf(),
                  dst_stride=-(-cols // 32) * 32 + 32 * I(0, 2))
        if rng.random() < 0.2:
            kw.update(idx=1, idx_addr=d.base + 4 * I(0, 64), addr=reg.base, src_stride=stride)
        return isa.make(op, **kw)
    if op == isa.Op.ST:
        fmt = isa.StFmt(I(0, 2))
        rows, cols = I(1, 5), I(1, 65)
        es = 4 if fmt == isa.StFmt.I32 else 2 * I(1, 4)
        return isa.make(op, fmt=fmt, shift=I(0, 20), src=I(0, 4096), src_stride=cols + I(0, 4), rows=rows,
                        cols=cols, addr=d.base + 4 * I(0, 1024), dst_stride=cols * es + 4 * I(0, 4), elem_stride=es)
    if op in (isa.Op.MM, isa.Op.MV):
        fmt = isa.WFmt(I(0, 3))
        sp = 16 if fmt == isa.WFmt.I16 else (2, 4, 8, 16)[I(0, 4)]
        rows, cols = I(1, 65), 32 * I(1, 5)
        rb = row_bytes(int(fmt), cols, sp)
        C = board.accel.weight_channels
        split = int(C > 1 and rng.random() < 0.5)
        # a split operand: channel c's section at waddr + c * SPLIT_STRIDE, each inside its part of the region
        span = split_span(int(fmt), sp, rows, cols, rb, C) if split else weight_span(int(fmt), sp, rows, cols, rb)
        room = split_stride(board) if split else w.size
        tokens = 1 if op == isa.Op.MV else I(1, 5)
        return isa.make(op, fmt=fmt, sp_n=sp, rows=rows, cols=cols, waddr=w.base + I(0, max(1, room - span)),
                        split=split,
                        wstride=rb, tokens=tokens, xaddr=buf(), xstride=-(-cols // 32) * 32, yaddr=I(0, 4096),
                        ystride=rows + I(0, 4) if rng.random() < 0.8 else I(0, rows + 1),     # tokens' rows may overlap
                        wfrac=I(0, 25), acc=I(0, 2))
    if op == isa.Op.MISC:
        fn = isa.MiscOp(I(0, 8))
        rows, n = I(1, 5), 2 * I(1, 33)
        kw = dict(fn=fn, rows=rows, n=n, src=I(0, 1024), src2=I(1024, 2048), dst=I(2048, 4096), src_stride=n + I(0, 4),
                  src2_stride=n + I(0, 4), dst_stride=n + I(0, 4), imm=I(0, 1 << 16))
        if fn == isa.MiscOp.QUANT:
            kw.update(dst=buf(), dst_stride=-(-n // 32) * 32, imm=I(0, 31))
        if fn == isa.MiscOp.ROPE:
            kw.update(imm=n)
        if fn == isa.MiscOp.SOFTMAX:
            kw.update(causal=I(0, 2))
        if fn != isa.MiscOp.QUANT and rng.random() < 0.3:
            # overlapping operands: in place (legal), or a dst over src / src2 (ILLEGAL_INSTR, isa.misc_overlap)
            how = I(0, 3)
            if how == 0:
                kw.update(dst=kw["src"], dst_stride=kw["src_stride"])
            elif how == 1:
                kw.update(dst=kw["src"] + I(1, n + 4))
            else:
                kw.update(dst=kw["src2"] + I(0, n))
        return isa.make(op, **kw)
    return isa.make(isa.Op.SYS, fn=isa.SysOp.NOP)


def _parity_stream(rng, isa, mm, board) -> np.ndarray:
    """Half the cases: a few well-formed instructions (_sane), one field sometimes set hostile; the others the
    isa target's streams with small shapes."""
    if rng.random() < 0.5:
        return _stream(rng, isa, mm, board, small=True)
    prog = [_sane(rng, isa, mm, board) for _ in range(int(rng.integers(1, 6)))]
    if rng.random() < 0.3:
        ins = prog[int(rng.integers(0, len(prog)))]
        names = [n for n, _ in isa.FIELDS[ins.op][3:]]
        name = names[int(rng.integers(0, len(names)))]
        bits = dict(isa.FIELDS[ins.op])[name]
        near = [0, 1, 31, 33, board.accel.abuf_words - 1, board.accel.qbuf_bytes, mm.top - 64, mm["data"].end - 4]
        v = near[int(rng.integers(0, len(near)))]
        ins.f[name] = (v % (SMALL + 1) if name in COUNT_FIELDS else v) & ((1 << bits) - 1)
    words = []
    for ins in prog + [isa.make(isa.Op.SYS, fn=isa.SysOp.END)]:
        words += isa.encode(ins)
    return np.array(words, dtype=np.uint32)


def _stream(rng, isa, mm, board, small: bool = False) -> np.ndarray:
    """A program: mostly well-formed instructions with hostile field values, sometimes raw random words.
    ``small``: counts (rows, cols, n, tokens) at most SMALL, so every case runs in a few ms on the RTL."""
    if rng.random() < 0.2:
        return rng.integers(0, 2**32, int(rng.integers(1, 64)), dtype=np.uint64).astype(np.uint32)
    near = [0, 1, 31, 32, 33, 64, 4096, board.accel.abuf_words - 1, board.accel.abuf_words,
            board.accel.qbuf_bytes, mm.top - 64, mm.top, mm["data"].base, mm["weights"].base, 1 << 20]
    prog = []
    for _ in range(int(rng.integers(1, 6))):
        op = isa.Op(int(rng.integers(1, 7)))
        f = {}
        for name, bits in isa.FIELDS[op][1:]:
            r = rng.random()
            if r < 0.5:
                v = near[int(rng.integers(0, len(near)))]
            elif r < 0.8:
                v = int(rng.integers(0, 256))
            else:
                v = int(rng.integers(0, 1 << min(bits, 62)))
            if small and name in COUNT_FIELDS:
                v %= SMALL + 1
            f[name] = v & ((1 << bits) - 1)
        f.setdefault("op", int(op))
        f["op"] = int(op)
        prog.append(isa.Instr(op, f))
    prog.append(isa.make(isa.Op.SYS, fn=isa.SysOp.END))
    words = []
    for ins in prog:
        try:
            words += isa.encode(ins)
        except FlightLLMError:
            pass
    w = np.array(words, dtype=np.uint32)
    for _ in range(int(rng.integers(0, 3))):           # and a few flipped bits
        if w.size:
            w[int(rng.integers(0, w.size))] ^= np.uint32(1 << int(rng.integers(0, 32)))
    return w


FAULT_SPLIT_AT = 16384        # mixed_program's split MM: its channel sections at this offset of each weights section


def mixed_program(mm, channels: int = 1):
    """A valid program over a (weights, data, program) map that uses every AXI path of the engine: LD QACT, MM,
    ST I32, a scattered ST I16 (element by element), LD with idx, MISC, LD Q8_0; with ``channels`` > 1 also an MM
    split over the weight channels (their sections at FAULT_SPLIT_AT + c * SPLIT_STRIDE) and its store."""
    from flightllm import isa
    from flightllm.formats import row_bytes
    from flightllm.isa import LdFmt, MiscOp, Op, StFmt, SysOp, WFmt

    w, d = mm["weights"].base, mm["data"].base
    rb = row_bytes(WFmt.Q8_0, 64, 16)
    split = [] if channels == 1 else [
        isa.make(Op.MM, fmt=WFmt.Q8_0, sp_n=16, waddr=w + FAULT_SPLIT_AT, wstride=rb, rows=24, cols=64, tokens=2,
                 xaddr=0, xstride=64, yaddr=16384, ystride=24, wfrac=0, split=1),
        isa.make(Op.ST, fmt=StFmt.I32, src=16384, addr=d + 7168, rows=2, cols=24, src_stride=24, dst_stride=96,
                 elem_stride=4)]
    return [
        isa.make(Op.LD, fmt=LdFmt.QACT, dst=0, addr=w, rows=2, cols=64, src_stride=72, dst_stride=64),
        isa.make(Op.MM, fmt=WFmt.Q8_0, sp_n=16, waddr=w + 4096, wstride=rb, rows=24, cols=64, tokens=2, xaddr=0,
                 xstride=64, yaddr=0, ystride=24, wfrac=0),
        isa.make(Op.ST, fmt=StFmt.I32, src=0, addr=d, rows=2, cols=24, src_stride=24, dst_stride=96, elem_stride=4),
        isa.make(Op.ST, fmt=StFmt.I16, shift=6, src=0, addr=d + 1024, rows=2, cols=24, src_stride=24, dst_stride=2,
                 elem_stride=64),
        isa.make(Op.LD, fmt=LdFmt.I32, idx=1, idx_addr=d + 4096, addr=w + 8192, rows=3, cols=40, src_stride=256,
                 dst=4096, dst_stride=40),
        isa.make(Op.MISC, fn=MiscOp.ADD, src=4096, src2=4136, dst=8192, n=40, rows=1),
        isa.make(Op.ST, fmt=StFmt.I32, src=4096, addr=d + 2048, rows=3, cols=40, src_stride=40, dst_stride=160,
                 elem_stride=4),
        isa.make(Op.ST, fmt=StFmt.I32, src=8192, addr=d + 3072, rows=1, cols=40, src_stride=40, dst_stride=160,
                 elem_stride=4),
        isa.make(Op.LD, fmt=LdFmt.Q8_0, dst=12288, addr=w + 12288, rows=2, cols=64, src_stride=68, dst_stride=64),
        isa.make(Op.ST, fmt=StFmt.I32, src=12288, addr=d + 6144, rows=2, cols=64, src_stride=64, dst_stride=256,
                 elem_stride=4)] + split + [
        isa.make(Op.SYS, fn=SysOp.END)]


def mixed_image(mm, size: int, seed: int = 3, channels: int = 1, stride: int = 0) -> np.ndarray:
    """Random device memory with tame block scales for mixed_program, and its gather indices (``channels``,
    ``stride``: the split MM's sections)."""
    from flightllm.formats import row_bytes, split_span
    from flightllm.isa import WFmt

    img = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
    w = mm["weights"].base
    blocks = [(w, 4, 36), (w + 4096, 24 * 2, 34), (w + 12288, 4, 34)]
    if channels > 1:
        n = split_span(WFmt.Q8_0, 16, 24, 64, row_bytes(WFmt.Q8_0, 64, 16), channels) // 34
        blocks += [(w + FAULT_SPLIT_AT + c * stride, n, 34) for c in range(channels)]
    for base, n, blk in blocks:
        for k in range(n):
            img[base + k * blk + 1] = 0x20 + (k % 8)         # fp16 scale exponents well inside their range
    for k in range(4):
        img[w + 2 + 36 * k] = 250                           # QACT block exponents (int8)
    d = mm["data"].base
    img[d + 4096: d + 4108] = np.array([7, 0, 31], "<u4").view(np.uint8)
    return img


def fuzz_faults(cases: int, seed: int = 0, board="sim") -> Report:
    """mixed_program on the RTL under random AXI faults. Half the cases: random backpressure on every channel and
    random extra latency (the memory must end identical to a clean run); the others: SLVERR or DECERR on a random
    read or write burst (AXI_ERROR, nothing outside the writable region touched, then a soft reset and a clean
    rerun identical to the reference). Accepted: the faulty run completed; rejected: it stopped with AXI_ERROR.
    On a board with weight channels the program adds a split MM, the stalls and latency reach every master, and a
    read error goes to a random master's burst (a weight channel's read bursts are the split MM's)."""
    from flightllm import isa
    from flightllm.errors import DeviceError
    from flightllm.compiler.memmap import MemoryMap
    from flightllm.sim.rtl_device import RtlDevice

    from flightllm import boards

    rep = Report("faults")
    board = boards.load(board) if isinstance(board, str) else board
    C = board.accel.weight_channels
    S = SECTION if C > 1 else 0
    mm = MemoryMap()
    mm.add("weights", S * C if C > 1 else 16384, writable=False)
    data = mm.add("data", 8192, writable=True)
    prog = mm.add("program", 4096, writable=False, executable=True)
    size = mm.top + 4096
    words = isa.assemble(mixed_program(mm, C)).view(np.uint8)
    img = mixed_image(mm, size, channels=C, stride=S)
    img[prog.base: prog.base + words.size] = words
    writable = np.zeros(size, bool)
    writable[data.base: data.end] = True
    dev = RtlDevice(board, size, mm, split_stride=S)
    dev.mem[:] = img
    ref = dev.run(prog.base)
    ref_mem = dev.mem.copy()
    dev.faults()
    dev.mem[:] = img
    dev.run(prog.base)
    n_wr = dev.bursts()[1]
    n_rds = dev.read_bursts()           # per master: m_axi, then the weight channels'
    assert all(n_rds), n_rds            # every master reads in the program (the split MM)
    rng = np.random.default_rng(seed)
    t0, stopped = time.time(), 0
    old = signal.signal(signal.SIGALRM, _alarm)

    def one(i):
        nonlocal stopped
        dev.mem[:] = img
        if rng.random() < 0.5:
            p = rng.random(5) * 0.9
            dev.faults(seed=int(rng.integers(1, 2**63)), ar=p[0], aw=p[1], w=p[2], r=p[3], b=p[4],
                       latency=int(rng.integers(0, 64)))
            try:
                st = dev.run(prog.base, max_cycles=PARITY_MAX_CYCLES)
            except DeviceError as e:
                if e.code == isa.ErrCode.WATCHDOG:
                    raise _Timeout() from None
                raise _Mismatch(f"stopped with {e} under backpressure") from None
            finally:
                dev.faults()
            if not np.array_equal(dev.mem, ref_mem) or st.instructions != ref.instructions:
                raise _Mismatch("results differ under backpressure")
            return
        kind = "read" if rng.random() < 0.5 else "write"
        port = int(rng.integers(0, C)) if kind == "read" and C > 1 else 0      # (sim's draws as before)
        k = int(rng.integers(0, n_rds[port] if kind == "read" else n_wr))
        what = f"{kind} burst {k}" + (f" of master {port}" if port else "")
        dev.faults(seed=int(rng.integers(1, 2**63)), r=0.2, b=0.2, latency=int(rng.integers(0, 8)),
                   resp="SLVERR" if rng.random() < 0.5 else "DECERR", err_port=port, **{f"err_{kind}": k})
        try:
            dev.run(prog.base, max_cycles=PARITY_MAX_CYCLES)
            raise _Mismatch(f"no error for a {what} error")
        except DeviceError as e:
            if e.code != isa.ErrCode.AXI_ERROR or "\n" in str(e):
                raise _Mismatch(f"{what}: {e}") from None
        finally:
            dev.faults()
        stopped += 1
        changed = int(np.count_nonzero(dev.mem[~writable] != img[~writable]))
        if changed:
            rep.out_of_region_writes += changed
            _note(rep, i, f"{changed} protected bytes changed")
        dev.reset()
        dev.mem[:] = img
        st = dev.run(prog.base)
        if not np.array_equal(dev.mem, ref_mem) or st.cycles != ref.cycles:
            raise _Mismatch(f"rerun after a {what} error differs")

    try:
        for i in range(cases):
            bad = rep.crashes + rep.hangs + rep.mismatches
            _case(rep, i, lambda: one(i), PARITY_CASE_SECONDS)
            if rep.crashes + rep.hangs + rep.mismatches > bad:
                dev.reset()
    finally:
        signal.signal(signal.SIGALRM, old)
    # _case counts every case that returned as accepted: those that stopped with AXI_ERROR are the rejected ones
    rep.rejected, rep.accepted = stopped, rep.accepted - stopped
    rep.seconds = round(time.time() - t0, 2)
    return rep


class _Mismatch(Exception):
    """The engine under test disagreed with its reference (results, error code, or a rerun)."""


PARITY_MAX_CYCLES = 5_000_000        # an RTL case still running after this is a hang
PARITY_CASE_SECONDS = 60


def _outcome(fn):
    """('ok', stats) or ('err', code, pc) of one run; anything but a DeviceError propagates."""
    from flightllm.errors import DeviceError

    try:
        st = fn()
    except DeviceError as e:
        return ("err", int(e.code), int(max(e.pc, 0)))
    return ("ok", st.cycles)


def fuzz_parity(cases: int, seed: int = 0, carry: bool = False, board="sim") -> Report:
    """The same streams on fsim and on the RTL: identical code and PC, or identical memory and cycles. ``carry``
    keeps one pair of devices for the whole run (on-chip buffers carried from case to case, as on a board between
    runs, and device memory rewritten by the host before each case); otherwise every case starts fresh."""
    from flightllm import isa
    from flightllm.sim.fsim import FunctionalSim
    from flightllm.sim.rtl_device import RtlDevice

    rep = Report("parity-carry" if carry else "parity")
    board, mm, data, prog, mem_size, rng, base_img, protect = _layout(seed, board)
    S = split_stride(board)
    t0, valid = time.time(), 0
    fs = rd = None
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i in range(cases):
            words = _parity_stream(rng, isa, mm, board)
            pos = int(rng.integers(0, 64))
            img = base_img.copy()
            nb = min(words.nbytes, prog.size)
            img[prog.base: prog.base + nb] = words.view(np.uint8)[:nb]
            # fresh devices (on-chip buffers zero) per case: ~10 ms for the RTL model; cases are independent
            if fs is None or not carry:
                fs, rd = FunctionalSim(board, mem_size, mm, S), RtlDevice(board, mem_size, mm, split_stride=S)
            fs.write(0, img)
            rd.mem[:] = img
            res = {}

            def both():
                res["fsim"] = _outcome(lambda: fs.run(prog.base, pos))
                res["rtl"] = _outcome(lambda: rd.run(prog.base, pos, max_cycles=PARITY_MAX_CYCLES))
                if res["rtl"][:2] == ("err", int(isa.ErrCode.WATCHDOG)) and res["fsim"][0] == "ok":
                    raise _Timeout()

            _case(rep, i, both, PARITY_CASE_SECONDS)
            changed = int(np.count_nonzero(fs.mem[protect] != img[protect])) + \
                int(np.count_nonzero(rd.mem[protect] != img[protect]))
            if changed:
                rep.out_of_region_writes += changed
                _note(rep, i, f"{changed} protected bytes changed")
            if len(res) == 2:
                f_, r_ = res["fsim"], res["rtl"]
                same = f_[0] == r_[0] == "ok" or f_ == r_              # ok on both, or the same code and PC
                if not same or not np.array_equal(fs.mem, rd.mem):
                    rep.mismatches += 1
                    _note(rep, i, f"fsim {res['fsim']} rtl {res['rtl']} memory equal "
                                  f"{np.array_equal(fs.mem, rd.mem)} words {[hex(int(w)) for w in words[:24]]}")
                elif res["fsim"][0] == "ok":
                    valid += 1
                    if res["fsim"][1] != res["rtl"][1]:     # bits and memory equal, cycles not (see the docs)
                        rep.cycle_mismatches += 1
    finally:
        signal.signal(signal.SIGALRM, old)
    # _case counts every case that returned as accepted: split them into valid streams and stopped ones
    rep.rejected, rep.accepted = rep.accepted - valid, valid
    rep.seconds = round(time.time() - t0, 2)
    return rep


def run(target: str, cases: int, seed: int = 0, mem_limit_gb: float = 8.0, board="sim") -> Report:
    """``board``: a board name or file (isa, parity and faults targets; gguf compiles for sim)."""
    if board != "sim" and target in ("gguf", "hf"):
        raise FlightLLMError(f"fuzz: --board applies to isa, parity, parity-carry and faults ({target} runs on sim)")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    lim = int(mem_limit_gb * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (lim if hard == resource.RLIM_INFINITY else min(lim, hard), hard))
    try:
        if target == "gguf":
            return fuzz_gguf(cases, seed)
        if target == "hf":
            return fuzz_hf(cases, seed)
        if target == "isa":
            return fuzz_isa(cases, seed, board)
        if target in ("parity", "parity-carry"):
            return fuzz_parity(cases, seed, carry=target == "parity-carry", board=board)
        if target == "faults":
            return fuzz_faults(cases, seed, board)
        raise FlightLLMError(f"fuzz: unknown target '{target}' (gguf, hf, isa, parity, parity-carry or faults)")
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


__all__ = ["run", "tiny_gguf", "tiny_checkpoint", "Report"]
