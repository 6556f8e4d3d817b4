"""GGUF model loading: hyperparameters, tensors in their quantised form, tokenizer data.

Only what a LLaMA-family decoder needs, checked before use: a malformed or hostile file gives a ModelError with
one line of explanation (the CLI prints it and exits 2), never a traceback or an unbounded allocation.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flightllm.errors import ModelError

FLOAT_TYPES = ("F32", "F16", "BF16")       # compiler/image.py float_rows reads these
SUPPORTED_TYPES = FLOAT_TYPES + ("Q4_0", "Q4_1", "Q8_0")
LAYER_TENSORS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                 "ffn_down")
GGUF_MAGIC = b"GGUF"


@dataclass
class Tensor:
    name: str
    type: str                 # GGML type name
    shape: tuple[int, ...]    # numpy order: (rows/out, cols/in) for matrices
    data: np.ndarray          # uint8 rows of blocks for quantised types, float arrays otherwise

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return self.shape[-1]


@dataclass
class LlamaConfig:
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    ffn: int
    vocab: int
    context: int
    rope_base: float
    rms_eps: float
    head_dim: int
    name: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Model:
    path: Path
    config: LlamaConfig
    tensors: dict[str, Tensor]
    tokenizer: dict = field(default_factory=dict)   # tokens, merges, token_type, model, pre, special ids
    chat_template: str | None = None
    tied_output: bool = True

    def layer(self, i: int, name: str) -> Tensor:
        return self.tensors[f"blk.{i}.{name}.weight"]


def _field(r, key, default=None, required=True):
    f = r.fields.get(key)
    if f is None:
        if required and default is None:
            raise ModelError(f"GGUF metadata lacks '{key}'")
        return default
    try:
        return f.contents()
    except Exception as e:  # noqa: BLE001 - gguf raises assorted errors on bad metadata
        raise ModelError(f"GGUF metadata '{key}' is malformed ({e.__class__.__name__})") from None


def _int(r, key, default=None, lo=1, hi=1 << 24) -> int:
    v = _field(r, key, default)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ModelError(f"GGUF metadata '{key}' should be an integer, got {type(v).__name__}")
    if not lo <= int(v) <= hi:
        raise ModelError(f"GGUF metadata '{key}' = {v} is out of range [{lo}, {hi}]")
    return int(v)


def _float(r, key, default=None, lo=-np.inf, hi=np.inf, lo_open=False) -> float:
    v = _field(r, key, default)
    if not isinstance(v, (int, float, np.floating, np.integer)) or not np.isfinite(v):
        raise ModelError(f"GGUF metadata '{key}' should be a finite number")
    if not (lo < v if lo_open else lo <= v) or not v <= hi:
        raise ModelError(f"GGUF metadata '{key}' = {v} is out of range {'(' if lo_open else '['}{lo}, {hi}]")
    return float(v)


def _strings(r, key) -> list[str] | None:
    f = r.fields.get(key)
    if f is None:
        return None
    try:
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    except Exception:  # noqa: BLE001
        raise ModelError(f"GGUF metadata '{key}' is not a list of UTF-8 strings") from None


def load(path: str | os.PathLike) -> Model:
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror}") from None
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path}: not a GGUF file (magic {magic!r})")
    from flightllm.compiler import gguf_check

    gguf_check.check_file(path)        # structural bounds before gguf's reader trusts any size field
    import gguf

    try:
        r = gguf.GGUFReader(path, "r")
    except Exception as e:  # noqa: BLE001 - the reader raises ValueError/IndexError/struct errors
        raise ModelError(f"{path}: malformed GGUF ({e.__class__.__name__}: {str(e)[:120]})") from None

    arch = _field(r, "general.architecture")
    if arch != "llama":
        raise ModelError(f"{path}: unsupported architecture '{arch}' (flightllm maps LLaMA-family models)")
    a = "llama"
    hidden = _int(r, f"{a}.embedding_length", hi=1 << 16)
    n_heads = _int(r, f"{a}.attention.head_count", hi=1024)
    cfg = LlamaConfig(
        n_layers=_int(r, f"{a}.block_count", hi=1024),
        hidden=hidden,
        n_heads=n_heads,
        n_kv_heads=_int(r, f"{a}.attention.head_count_kv", default=n_heads, hi=1024),
        ffn=_int(r, f"{a}.feed_forward_length", hi=1 << 18),
        vocab=0,
        context=_int(r, f"{a}.context_length", default=2048, hi=1 << 22),
        # a base <= 0 makes the RoPE angles NaN; an epsilon past 1 swamps any activation's mean square
        rope_base=_float(r, f"{a}.rope.freq_base", default=10000.0, lo=0.0, hi=1e12, lo_open=True),
        rms_eps=_float(r, f"{a}.attention.layer_norm_rms_epsilon", default=1e-5, lo=0.0, hi=1.0),
        head_dim=0,
        name=str(_field(r, "general.name", default="", required=False) or path.stem),
    )
    if hidden % n_heads or n_heads % cfg.n_kv_heads:
        raise ModelError(f"{path}: head counts ({n_heads}, {cfg.n_kv_heads}) do not divide hidden size {hidden}")
    cfg.head_dim = hidden // n_heads
    rope_dim = _int(r, f"{a}.rope.dimension_count", default=cfg.head_dim, hi=1 << 16)
    if rope_dim != cfg.head_dim:
        raise ModelError(f"{path}: partial RoPE (dimension {rope_dim} of {cfg.head_dim}) is not supported")

    tensors: dict[str, Tensor] = {}
    for t in r.tensors:
        tname = t.tensor_type.name
        if tname not in SUPPORTED_TYPES:
            raise ModelError(f"{path}: tensor {t.name} has unsupported type {tname} "
                             f"(supported: {', '.join(SUPPORTED_TYPES)})")
        shape = tuple(int(s) for s in reversed([int(x) for x in t.shape]))   # GGUF [in, out] -> (out, in)
        tensors[t.name] = Tensor(t.name, tname, shape, t.data)

    emb = tensors.get("token_embd.weight")
    if emb is None:
        raise ModelError(f"{path}: no token_embd.weight")
    cfg.vocab = emb.rows
    kv = cfg.n_kv_heads * cfg.head_dim
    want = {"token_embd.weight": (cfg.vocab, hidden), "output_norm.weight": (hidden,)}
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        want.update({
            p + "attn_norm.weight": (hidden,), p + "ffn_norm.weight": (hidden,),
            p + "attn_q.weight": (hidden, hidden), p + "attn_k.weight": (kv, hidden),
            p + "attn_v.weight": (kv, hidden), p + "attn_output.weight": (hidden, hidden),
            p + "ffn_gate.weight": (cfg.ffn, hidden), p + "ffn_up.weight": (cfg.ffn, hidden),
            p + "ffn_down.weight": (hidden, cfg.ffn)})
    if "output.weight" in tensors:
        want["output.weight"] = (cfg.vocab, hidden)
    for n, shp in want.items():
        t = tensors.get(n)
        if t is None:
            raise ModelError(f"{path}: missing tensor {n}")
        if t.shape != shp:
            raise ModelError(f"{path}: tensor {n} has shape {t.shape}, metadata implies {shp}")
        if len(shp) == 1 and t.type not in FLOAT_TYPES:
            raise ModelError(f"{path}: norm tensor {n} must be F32/F16/BF16, not {t.type}")

    tok = {
        "model": _field(r, "tokenizer.ggml.model", default="", required=False),
        "pre": _field(r, "tokenizer.ggml.pre", default="", required=False),
        "tokens": _strings(r, "tokenizer.ggml.tokens"),
        "merges": _strings(r, "tokenizer.ggml.merges"),
        "token_type": None,
        "bos": _field(r, "tokenizer.ggml.bos_token_id", default=-1, required=False),
        "eos": _field(r, "tokenizer.ggml.eos_token_id", default=-1, required=False),
        "add_bos": bool(_field(r, "tokenizer.ggml.add_bos_token", default=False, required=False)),
    }
    tt = r.fields.get("tokenizer.ggml.token_type")
    if tt is not None:
        tok["token_type"] = [int(tt.parts[i][0]) for i in tt.data]
    if tok["tokens"] is not None and len(tok["tokens"]) != cfg.vocab:
        raise ModelError(f"{path}: tokenizer has {len(tok['tokens'])} tokens, embedding has {cfg.vocab} rows")
    tmpl = _field(r, "tokenizer.chat_template", default="", required=False) or None
    return Model(path=path, config=cfg, tensors=tensors, tokenizer=tok, chat_template=tmpl,
                 tied_output="output.weight" not in tensors)
