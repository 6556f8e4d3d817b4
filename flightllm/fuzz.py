"""`flightllm fuzz`: deterministic mutation fuzzing of the GGUF loader and of the instruction decoder/executor.

gguf: a small LLaMA GGUF (written here with the `gguf` package) is mutated — byte flips, boundary values written
over count/length/offset fields, truncation, insertion — and loaded, then compiled. Every case must end in
success or a FlightLLMError; anything else is a crash, a case over the time limit a hang.

isa: random and mutated instruction streams are decoded and executed on the functional simulator with a
protected memory map. Besides crashes and hangs it counts out-of-region writes: bytes outside the writable
regions that changed.
"""
from __future__ import annotations

import os
import resource
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, field

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
    seconds: float = 0.0
    examples: list = field(default_factory=list)     # the first few crash/hang descriptions

    def to_dict(self):
        return asdict(self)

    @property
    def clean(self) -> bool:
        return self.crashes == self.hangs == self.out_of_region_writes == 0


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def tiny_gguf(path: str, seed: int = 0, types: dict | None = None, layers: int = 1) -> None:
    """A small LLaMA GGUF (hidden 64, 2 heads, 1 KV head, FFN 96, vocab 64, byte-level BPE vocabulary).

    ``types`` maps a matrix name (attn_q, ..., ffn_down) to a GGML type name (F32 by default)."""
    import gguf
    from gguf.quants import quantize

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, "llama")
    H, F, V, L = 64, 96, 64, layers
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
    toks = [chr(0x21 + i) for i in range(V - 4)] + ["!\"", "#$", "<|im_start|>", "<|im_end|>"]
    w.add_token_list(toks)
    w.add_token_types([1] * (V - 2) + [3, 3])
    w.add_token_merges(["! \"", "# $"])
    w.add_eos_token_id(V - 1)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
    mat = lambda r, c: rng.standard_normal((r, c)).astype(np.float32) * 0.05  # noqa: E731
    w.add_tensor("token_embd.weight", quantize(mat(V, H), gguf.GGMLQuantizationType.Q8_0),
                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("output_norm.weight", np.ones(H, np.float32))
    for l in range(L):
        p = f"blk.{l}."
        for n, shp in (("attn_q", (H, H)), ("attn_k", (32, H)), ("attn_v", (32, H)), ("attn_output", (H, H)),
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


def _case(rep: Report, i: int, fn) -> None:
    """Run one case under the time limit; a FlightLLMError is a clean rejection, anything else a crash."""
    rep.cases += 1
    signal.alarm(CASE_SECONDS)
    try:
        fn()
        rep.accepted += 1
    except FlightLLMError:
        rep.rejected += 1
    except _Timeout:
        rep.hangs += 1
        _note(rep, i, "hang")
    except Exception as e:  # noqa: BLE001 - the point: anything else is a crash
        rep.crashes += 1
        _note(rep, i, f"{type(e).__name__}: {str(e)[:100]}")
    finally:
        signal.alarm(0)


def _note(rep: Report, i: int, what: str):
    if len(rep.examples) < 5:
        rep.examples.append(f"case {i}: {what}")


def fuzz_isa(cases: int, seed: int = 0) -> Report:
    """Decode and run random/mutated streams on fsim; read-only and unmapped bytes must never change."""
    from flightllm import boards, isa
    from flightllm.compiler.memmap import MemoryMap
    from flightllm.sim.fsim import FunctionalSim

    rep = Report("isa")
    board = boards.load("sim")
    mm = MemoryMap()
    mm.add("weights", 64 << 10, writable=False)
    data = mm.add("data", 64 << 10, writable=True)
    prog = mm.add("program", 4 << 10, writable=False)
    mem_size = mm.top + (16 << 10)                 # an unmapped tail: nothing may land there either
    rng = np.random.default_rng(seed)
    base_img = rng.integers(0, 256, mem_size, dtype=np.uint8)
    protect = np.ones(mem_size, bool)
    protect[data.base: data.end] = False
    # seeds: valid instructions with fields drawn near the real buffer/region sizes
    t0 = time.time()
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i in range(cases):
            words = _stream(rng, isa, mm, board)
            sim = FunctionalSim(board, mem_size, mm)
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


def _stream(rng, isa, mm, board) -> np.ndarray:
    """A program: mostly well-formed instructions with hostile field values, sometimes raw random words."""
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


def run(target: str, cases: int, seed: int = 0, mem_limit_gb: float = 8.0) -> Report:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    lim = int(mem_limit_gb * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (lim if hard == resource.RLIM_INFINITY else min(lim, hard), hard))
    try:
        if target == "gguf":
            return fuzz_gguf(cases, seed)
        if target == "isa":
            return fuzz_isa(cases, seed)
        raise FlightLLMError(f"fuzz: unknown target '{target}' (gguf or isa)")
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


__all__ = ["run", "tiny_gguf", "Report"]
