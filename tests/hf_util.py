"""Write a Hugging Face LLaMA checkpoint folder from a GGUF model, as transformers' own files lay it out.

Tests of compiler/hf_model.py use it: the weights are the GGUF's, dequantised to float, with q/k rows put back in
Hugging Face's order (written here from llama.cpp's converter, not taken from the loader), so the loaded model can
be compared tensor by tensor with the GGUF one. The weight files are written by the `safetensors` package.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from flightllm.compiler.gguf_model import Model

HF_LAYER = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
            "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
            "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def dequantized(model: Model) -> dict[str, np.ndarray]:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    return {n: np.asarray(dequantize(np.asarray(t.data), GGMLQuantizationType[t.type]), np.float32).reshape(t.shape)
            for n, t in model.tensors.items()}


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """GGUF q/k rows -> Hugging Face's: llama.cpp permutes each head's rows (h, 2, hd/2) -> (h, hd/2, 2)."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_weights(model: Model) -> dict[str, np.ndarray]:
    cfg, W, out = model.config, dequantized(model), {}
    for n, w in W.items():
        if n.startswith("blk."):
            _, i, kind, _ = n.split(".")
            if kind in ("attn_q", "attn_k"):
                w = unpermute(w, cfg.n_heads if kind == "attn_q" else cfg.n_kv_heads)
            out[f"model.layers.{i}.{HF_LAYER[kind]}.weight"] = w
        else:
            out[{"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}[n]] = w
    return out


def write_checkpoint(model: Model, folder: Path, dtype=np.float32, shards: int = 1, config: dict | None = None,
                     tokenizer_config: dict | None = None) -> Path:
    """config.json, model.safetensors (or ``shards`` files and the index), tokenizer.json, tokenizer_config.json;
    ``config`` / ``tokenizer_config`` entries override the written ones (None deletes a key)."""
    from safetensors.numpy import save_file

    from flightllm.host.tokenizer import build_tokenizer_json

    cfg, tok = model.config, model.tokenizer
    folder.mkdir(parents=True, exist_ok=True)
    c = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": cfg.hidden,
         "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
         "intermediate_size": cfg.ffn, "vocab_size": cfg.vocab, "max_position_embeddings": cfg.context,
         "rope_theta": cfg.rope_base, "rms_norm_eps": cfg.rms_eps, "hidden_act": "silu",
         "tie_word_embeddings": model.tied_output, "rope_scaling": None, "attention_bias": False,
         "mlp_bias": False, "torch_dtype": {np.float32: "float32", np.float16: "float16"}[dtype],
         "bos_token_id": tok.get("bos") if tok.get("bos", -1) >= 0 else None, "eos_token_id": tok.get("eos")}
    for k, v in (config or {}).items():
        c.pop(k, None) if v is None else c.__setitem__(k, v)
    (folder / "config.json").write_text(json.dumps(c, indent=2))
    W = {k: np.ascontiguousarray(v.astype(dtype)) for k, v in hf_weights(model).items()}
    names = sorted(W)
    if shards == 1:
        save_file(W, str(folder / "model.safetensors"))
    else:
        wm = {}
        for s in range(shards):
            f = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = names[s::shards]
            save_file({k: W[k] for k in part}, str(folder / f))
            wm.update({k: f for k in part})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    (folder / "tokenizer.json").write_text(build_tokenizer_json(tok))
    tc = {"eos_token": tok["tokens"][tok["eos"]], "add_bos_token": bool(tok.get("add_bos")),
          "chat_template": model.chat_template}
    for k, v in (tokenizer_config or {}).items():
        tc.pop(k, None) if v is None else tc.__setitem__(k, v)
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    return folder


def hf_forward(folder: Path, ids) -> np.ndarray:
    """Logits of a LLaMA checkpoint folder in Hugging Face's conventions (rotate_half RoPE over rows in HF order),
    fp32 numpy, weights read with the `safetensors` package: independent of the loader and of sim/reference.py."""
    from safetensors.numpy import load_file

    c = json.loads((folder / "config.json").read_text())
    W = {k: v.astype(np.float32) for k, v in load_file(str(folder / "model.safetensors")).items()}
    H, nh, nkv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd, T = H // nh, len(ids)
    inv = 1.0 / c["rope_theta"] ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, -1).astype(np.float32)[:, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, -1).astype(np.float32)[:, None, :]

    def rope(x):                                   # transformers' apply_rotary_pos_emb
        half = np.concatenate([-x[..., hd // 2:], x[..., : hd // 2]], -1)
        return x * cos + half * sin

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + np.float32(c["rms_norm_eps"])) * g

    x = W["model.embed_tokens.weight"][np.asarray(ids)]
    mask = np.triu(np.full((T, T), -np.inf, np.float32), 1)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, W[p + "input_layernorm.weight"])
        q = rope((h @ W[p + "self_attn.q_proj.weight"].T).reshape(T, nh, hd))
        k = rope((h @ W[p + "self_attn.k_proj.weight"].T).reshape(T, nkv, hd))
        v = (h @ W[p + "self_attn.v_proj.weight"].T).reshape(T, nkv, hd)
        o = np.empty((T, nh, hd), np.float32)
        for j in range(nh):
            s = q[:, j] @ k[:, j // (nh // nkv)].T / np.float32(np.sqrt(hd)) + mask
            e = np.exp(s - s.max(-1, keepdims=True))
            o[:, j] = (e / e.sum(-1, keepdims=True)) @ v[:, j // (nh // nkv)]
        x = x + o.reshape(T, H) @ W[p + "self_attn.o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        g, u = h @ W[p + "mlp.gate_proj.weight"].T, h @ W[p + "mlp.up_proj.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ W[p + "mlp.down_proj.weight"].T
    out = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return rms(x, W["model.norm.weight"]) @ out.T
