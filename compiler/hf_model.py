"""Hugging Face model loading: a local LLaMA checkpoint folder (config.json, *.safetensors, tokenizer.json).

The result is the same :class:`~flightllm.compiler.gguf_model.Model` the GGUF loader gives, so everything after
loading is shared: tensors under their GGUF names, q/k rows permuted as llama.cpp's converter permutes them (the
device's RoPE rotates adjacent pairs, Hugging Face's rotates halves), float matrices that the compiler quantises to
Q8_0 or Q4_1 (compiler/image.py). Nothing is fetched: the folder must hold every file. As with GGUF, a malformed
or hostile folder gives a ModelError of one line, never a traceback or an unbounded allocation.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from flightllm.errors import ModelError
from flightllm.compiler.gguf_model import LlamaConfig, Model, Tensor

# safetensors dtypes a LLaMA checkpoint stores its weights in (numpy has no bfloat16: BF16 stays 16-bit words,
# widened to float32 per tensor when the compiler quantises it, image.float_rows)
DTYPES = {"F32": (np.dtype("<f4"), "F32"), "F16": (np.dtype("<f2"), "F16"), "BF16": (np.dtype("<u2"), "BF16")}
# element sizes of the format's other dtypes: a file may hold tensors the model does not use (an old checkpoint's
# I64 buffers, say), which are bounds-checked and skipped
ITEM = {"F64": 8, "I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1,
        "F8_E4M3": 1, "F8_E5M2": 1, **{k: v[0].itemsize for k, v in DTYPES.items()}}
MAX_HEADER = 100 << 20          # the safetensors header is JSON; real ones are well under 1 MB
MAX_JSON = 64 << 20             # config.json, tokenizer.json (SmolLM2's is 2 MB), the shard index
# Hugging Face name (after "model.layers.{i}.") -> GGUF name (after "blk.{i}.")
LAYER_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}
TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def _text(path: Path, what: str) -> str:
    """A text file of the folder, at most MAX_JSON bytes."""
    try:
        if path.stat().st_size > MAX_JSON:
            raise ModelError(f"{path}: {what} is larger than {MAX_JSON >> 20} MiB")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(f"{path.parent}: no {path.name} ({what})") from None
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ModelError(f"{path}: {what} is not UTF-8 text") from None


def _json(path: Path, what: str):
    try:
        return json.loads(_text(path, what))
    except (json.JSONDecodeError, RecursionError) as e:
        raise ModelError(f"{path}: {what} is not valid JSON ({e.__class__.__name__})") from None


def read_safetensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], np.ndarray]]:
    """name -> (safetensors dtype, shape, read-only array over the file: typed for DTYPES, raw bytes otherwise),
    every offset and size checked first."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 2 <= n <= min(MAX_HEADER, size - 8):
                raise ModelError(f"{path}: not a safetensors file (header length {n}, file {size} bytes)")
            text = f.read(n)
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror}") from None
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ModelError(f"{path}: safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path}: safetensors header is not a JSON object")
    base, data_len = 8 + n, size - 8 - n
    mm = np.memmap(path, np.uint8, "r", offset=base, shape=(data_len,)) if data_len else np.zeros(0, np.uint8)
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        nm = repr(name[:60])                      # a hostile name may be long or hold a newline
        if not isinstance(e, dict) or not isinstance(e.get("dtype"), str):
            raise ModelError(f"{path}: tensor {nm} has a malformed entry")
        dt = e["dtype"]
        if dt not in ITEM:
            raise ModelError(f"{path}: tensor {nm} has an unknown dtype {dt[:20]!r}")
        shape, offs = e.get("shape"), e.get("data_offsets")
        if (not isinstance(shape, list) or len(shape) > 4
                or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 1 << 32 for s in shape)):
            raise ModelError(f"{path}: tensor {nm} has a malformed shape")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
                or not 0 <= offs[0] <= offs[1] <= data_len):
            raise ModelError(f"{path}: tensor {nm}'s data offsets {repr(offs)[:60]} lie outside the file's "
                             f"{data_len} data bytes")
        item = ITEM[dt]
        if offs[1] - offs[0] != math.prod(shape) * item:
            raise ModelError(f"{path}: tensor {nm} holds {offs[1] - offs[0]} bytes, shape {shape} of {dt} "
                             f"needs {math.prod(shape) * item}")
        if offs[0] % item:
            raise ModelError(f"{path}: tensor {nm} starts at an offset not aligned to its {item}-byte elements")
        data = mm[offs[0]:offs[1]]
        out[name] = (dt, tuple(shape), data.view(DTYPES[dt][0]).reshape(shape) if dt in DTYPES else data)
    return out


def _shards(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        idx = _json(index, "the shard index")
        wm = idx.get("weight_map") if isinstance(idx, dict) else None
        if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
            raise ModelError(f"{index}: no weight_map of tensor names to files")
        files = []
        for v in sorted(set(wm.values())):
            p = folder / v
            if Path(v).name != v or not p.is_file():      # a shard named with a path, or missing
                raise ModelError(f"{index}: shard {v[:60]!r} is not a file in {folder}")
            files.append(p)
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{folder}: no *.safetensors weights (PyTorch .bin checkpoints are not read)")
    return files


def permute_rope(w: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face q/k rows -> GGUF's: each head's halves (i, i + hd/2) become adjacent pairs (2i, 2i+1), as
    llama.cpp's convert_hf_to_gguf.py does, so RoPE rotates the same coordinates."""
    r = w.shape[0]
    return w.reshape(heads, 2, r // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _cfg_int(c: dict, key: str, default=None, lo=1, hi=1 << 24) -> int:
    v = c.get(key, default)
    if v is None:
        raise ModelError(f"config.json lacks '{key}'")
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ModelError(f"config.json '{key}' = {repr(v)[:40]} should be an integer in [{lo}, {hi}]")
    return v


def _cfg_float(c: dict, key: str, default: float, lo: float, hi: float, lo_open=False) -> float:
    v = c.get(key, default)
    try:                                            # JSON integers are unbounded: 10**400 does not fit a float
        f = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
    except OverflowError:
        f = math.inf
    if not math.isfinite(f) or not (lo < f if lo_open else lo <= f) or not f <= hi:
        raise ModelError(f"config.json '{key}' = {repr(v)[:40]} should be a number in "
                         f"{'(' if lo_open else '['}{lo}, {hi}]")
    return f


def _config(folder: Path) -> tuple[LlamaConfig, bool, dict]:
    c = _json(folder / "config.json", "the model configuration")
    if not isinstance(c, dict):
        raise ModelError(f"{folder / 'config.json'}: not a JSON object")
    if c.get("model_type") != "llama":
        raise ModelError(f"{folder}: unsupported model_type {repr(c.get('model_type'))[:40]} (flightllm maps "
                         f"LLaMA-family models)")
    # transformers 5 writes RoPE's settings as rope_parameters {rope_type, rope_theta}; 4.x as rope_theta and
    # rope_scaling (None, or a dict whose rope_type / type is not "default" for a scaled RoPE)
    rope = c.get("rope_parameters") or c
    plain = lambda v: v is None or (isinstance(v, dict) and v.get("rope_type", v.get("type")) == "default")  # noqa
    # what the LLaMA configuration can ask for that the device does not compute
    for key, ok, why in (("hidden_act", lambda v: v in (None, "silu"), "SiLU is the SFU's activation"),
                         ("rope_scaling", plain, "RoPE scaling is not supported"),
                         ("rope_parameters", lambda v: v is None or plain(v), "RoPE scaling is not supported"),
                         ("attention_bias", lambda v: not v, "projection biases are not supported"),
                         ("mlp_bias", lambda v: not v, "projection biases are not supported"),
                         ("pretraining_tp", lambda v: v in (None, 1), "tensor-parallel slicing is not supported")):
        if not ok(c.get(key)):
            raise ModelError(f"{folder}: config.json {key} = {repr(c.get(key))[:60]}: {why}")
    hidden = _cfg_int(c, "hidden_size", hi=1 << 16)
    heads = _cfg_int(c, "num_attention_heads", hi=1024)
    cfg = LlamaConfig(
        n_layers=_cfg_int(c, "num_hidden_layers", hi=1024), hidden=hidden, n_heads=heads,
        n_kv_heads=_cfg_int(c, "num_key_value_heads", default=heads, hi=1024),
        ffn=_cfg_int(c, "intermediate_size", hi=1 << 18), vocab=_cfg_int(c, "vocab_size", hi=1 << 22),
        context=_cfg_int(c, "max_position_embeddings", default=2048, hi=1 << 22),
        rope_base=_cfg_float(rope, "rope_theta", 10000.0, 0.0, 1e12, lo_open=True),
        rms_eps=_cfg_float(c, "rms_norm_eps", 1e-6, 0.0, 1.0),
        head_dim=0, name=folder.resolve().name)
    if hidden % heads or heads % cfg.n_kv_heads:
        raise ModelError(f"{folder}: head counts ({heads}, {cfg.n_kv_heads}) do not divide hidden size {hidden}")
    cfg.head_dim = hidden // heads
    if c.get("head_dim") not in (None, cfg.head_dim):
        raise ModelError(f"{folder}: config.json head_dim {repr(c['head_dim'])[:40]} is not hidden_size / "
                         f"num_attention_heads = {cfg.head_dim}")
    if cfg.head_dim % 2:
        raise ModelError(f"{folder}: head size {cfg.head_dim} is odd; RoPE needs pairs")
    return cfg, bool(c.get("tie_word_embeddings", False)), c


def _token_id(tk, vocab: int, key: str, value) -> int:
    """A special token named by config.json (an id) or tokenizer_config.json (a string or an AddedToken object);
    -1 for none."""
    if isinstance(value, dict):
        value = value.get("content")
    if value is None:
        return -1
    if isinstance(value, str):
        i = tk.token_to_id(value)
        if i is None:
            raise ModelError(f"{key} {value[:40]!r} is not in tokenizer.json's vocabulary")
        return int(i)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab:
        raise ModelError(f"{key} = {repr(value)[:40]} is not a token id below the vocabulary size {vocab}")
    return value


def _tokenizer(folder: Path, cfg: LlamaConfig, c: dict) -> tuple[dict, str | None]:
    from flightllm.host.tokenizer import parse_tokenizer

    p = folder / "tokenizer.json"
    tk = parse_tokenizer(_text(p, "the tokenizer"), str(p))
    n = tk.get_vocab_size(with_added_tokens=True)
    vocab = tk.get_vocab(with_added_tokens=True)
    if n > cfg.vocab or any(i >= cfg.vocab for i in vocab.values()):
        raise ModelError(f"{p}: token ids reach {max(vocab.values())}, the embedding has {cfg.vocab} rows")
    tokens = [""] * cfg.vocab                     # rows past the tokenizer's vocabulary are padding
    for t, i in vocab.items():
        tokens[i] = t
    tc = folder / "tokenizer_config.json"
    tcfg = _json(tc, "the tokenizer configuration") if tc.is_file() else {}
    if not isinstance(tcfg, dict):
        raise ModelError(f"{tc}: not a JSON object")
    gc = folder / "generation_config.json"
    gen = _json(gc, "the generation configuration") if gc.is_file() else {}
    if not isinstance(gen, dict):
        raise ModelError(f"{gc}: not a JSON object")
    # config.json's ids are the model's own; tokenizer_config.json names the tokens the chat template uses; every
    # end-of-sequence id any of them names stops generation (LLaMA 3 instruct ends turns with <|eot_id|>, listed in
    # generation_config.json beside <|end_of_text|>)
    stop = [i for key, v in (("eos_token_id", c.get("eos_token_id")), ("eos_token_id", gen.get("eos_token_id")),
                             ("eos_token", tcfg.get("eos_token")))
            for x in (v if isinstance(v, list) else [v]) if (i := _token_id(tk, cfg.vocab, key, x)) >= 0]
    bos = _token_id(tk, cfg.vocab, "bos_token_id", c.get("bos_token_id"))
    if bos < 0:
        bos = _token_id(tk, cfg.vocab, "bos_token", tcfg.get("bos_token"))
    tok = {"model": "hf", "json": tk.to_str(), "tokens": tokens, "merges": None, "token_type": None,
           "bos": bos, "eos": stop[0] if stop else -1, "stop": sorted(set(stop)),
           "add_bos": bool(tcfg.get("add_bos_token", False))}
    return tok, _chat_template(folder, tcfg)


def _chat_template(folder: Path, tcfg: dict) -> str | None:
    """tokenizer_config.json's chat_template (a string, or named templates: the default one); transformers 4.4x+
    saves it as chat_template.jinja instead (older: chat_template.json)."""
    tmpl = tcfg.get("chat_template")
    if tmpl is None and (folder / "chat_template.jinja").is_file():
        tmpl = _text(folder / "chat_template.jinja", "the chat template")
    elif tmpl is None and (folder / "chat_template.json").is_file():
        j = _json(folder / "chat_template.json", "the chat template")
        tmpl = j.get("chat_template") if isinstance(j, dict) else None
    if isinstance(tmpl, list):                    # named templates: take the default one
        tmpl = next((t.get("template") for t in tmpl if isinstance(t, dict) and t.get("name") == "default"), None)
    if tmpl is not None and not isinstance(tmpl, str):
        raise ModelError(f"{folder}: the chat template is not a string")
    return tmpl


def load(folder: str | os.PathLike) -> Model:
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"{folder}: not a folder")
    cfg, tied, c = _config(folder)
    raw: dict[str, tuple[str, tuple, np.ndarray]] = {}
    for f in _shards(folder):
        for name, v in read_safetensors(f).items():
            if name in raw:
                raise ModelError(f"{f}: tensor {name} is also in another shard")
            raw[name] = v

    H, F, kv = cfg.hidden, cfg.ffn, cfg.n_kv_heads * cfg.head_dim
    layer = {"input_layernorm": (H,), "post_attention_layernorm": (H,), "self_attn.q_proj": (H, H),
             "self_attn.k_proj": (kv, H), "self_attn.v_proj": (kv, H), "self_attn.o_proj": (H, H),
             "mlp.gate_proj": (F, H), "mlp.up_proj": (F, H), "mlp.down_proj": (H, F)}
    want = {"model.embed_tokens.weight": (cfg.vocab, H), "model.norm.weight": (H,)}
    want.update({f"model.layers.{i}.{k}.weight": shp for i in range(cfg.n_layers) for k, shp in layer.items()})
    if "lm_head.weight" in raw and not tied:
        want["lm_head.weight"] = (cfg.vocab, H)
    elif not tied:
        raise ModelError(f"{folder}: no lm_head.weight and config.json does not tie the output to the embedding")
    tensors: dict[str, Tensor] = {}
    for name, shape in want.items():
        if name not in raw:
            raise ModelError(f"{folder}: missing tensor {name}")
        dt, shp, arr = raw[name]
        if dt not in DTYPES:
            raise ModelError(f"{folder}: tensor {name} has dtype {dt} (supported: {', '.join(DTYPES)})")
        if shp != shape:
            raise ModelError(f"{folder}: tensor {name} has shape {shp}, config.json implies {shape}")
        g = _gguf_name(name)
        if g.endswith(("attn_q.weight", "attn_k.weight")):
            arr = permute_rope(np.asarray(arr), cfg.n_heads if g.endswith("attn_q.weight") else cfg.n_kv_heads)
        tensors[g] = Tensor(g, DTYPES[dt][1], shape, arr)
    tok, tmpl = _tokenizer(folder, cfg, c)
    return Model(path=folder, config=cfg, tensors=tensors, tokenizer=tok, chat_template=tmpl,
                 tied_output="output.weight" not in tensors)


def _gguf_name(name: str) -> str:
    stem = name[: -len(".weight")]
    if stem in TOP_NAMES:
        return TOP_NAMES[stem] + ".weight"
    _, _, i, rest = stem.split(".", 3)           # model.layers.{i}.{rest}
    return f"blk.{i}.{LAYER_NAMES[rest]}.weight"
