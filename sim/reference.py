"""Float reference forward pass of a LLaMA-family GGUF model (fp32, dequantised weights).

Not part of the device path: tests and `flightllm eval --reference` use it to bound the error of the integer
datapath. It follows the GGUF conventions the compiler relies on: q/k rows are permuted so RoPE rotates adjacent
pairs (2i, 2i+1), K/V use the KV head count, the output layer is the token embedding when no output.weight exists.
"""
from __future__ import annotations

import numpy as np

from flightllm.compiler.gguf_model import Model


class Reference:
    def __init__(self, model: Model):
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        from flightllm.compiler.gguf_model import FLOAT_TYPES
        from flightllm.compiler.image import float_rows

        self.cfg = model.config
        self.W: dict[str, np.ndarray] = {}
        for name, t in model.tensors.items():
            if t.type in FLOAT_TYPES:     # a checkpoint's BF16 is 16-bit words, a GGUF's bytes
                self.W[name] = float_rows(t)
                continue
            arr = dequantize(np.asarray(t.data), GGMLQuantizationType[t.type])
            self.W[name] = np.asarray(arr, dtype=np.float32).reshape(t.shape)
        if "output.weight" not in self.W:
            self.W["output.weight"] = self.W["token_embd.weight"]

    def _rms(self, x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + np.float32(self.cfg.rms_eps)) * g

    def _rope(self, x, pos):
        hd = x.shape[-1]
        theta = self.cfg.rope_base ** (-np.arange(hd // 2, dtype=np.float64) * 2.0 / hd)
        ang = pos[:, None] * theta[None, :]
        c, s = np.cos(ang)[:, None, :].astype(np.float32), np.sin(ang)[:, None, :].astype(np.float32)
        x0, x1 = x[..., 0::2], x[..., 1::2]
        y = np.empty_like(x)
        y[..., 0::2] = x0 * c - x1 * s
        y[..., 1::2] = x0 * s + x1 * c
        return y

    def forward(self, ids, layers: int | None = None):
        """Logits (T, vocab) for token ids at positions 0..T-1, and the residual after each layer."""
        cfg, W = self.cfg, self.W
        T = len(ids)
        H, hd, nh, nkv = cfg.hidden, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
        grp = nh // nkv
        x = W["token_embd.weight"][np.asarray(ids)]
        pos = np.arange(T, dtype=np.float64)
        mask = np.triu(np.full((T, T), -np.inf, np.float32), 1)
        resid = []
        for l in range(cfg.n_layers if layers is None else layers):
            p = f"blk.{l}."
            h = self._rms(x, W[p + "attn_norm.weight"])
            q = self._rope((h @ W[p + "attn_q.weight"].T).reshape(T, nh, hd), pos)
            k = self._rope((h @ W[p + "attn_k.weight"].T).reshape(T, nkv, hd), pos)
            v = (h @ W[p + "attn_v.weight"].T).reshape(T, nkv, hd)
            o = np.empty((T, nh, hd), np.float32)
            for j in range(nh):
                s = q[:, j] @ k[:, j // grp].T / np.float32(np.sqrt(hd)) + mask
                e = np.exp(s - s.max(-1, keepdims=True))
                o[:, j] = (e / e.sum(-1, keepdims=True)) @ v[:, j // grp]
            x = x + o.reshape(T, H) @ W[p + "attn_output.weight"].T
            h = self._rms(x, W[p + "ffn_norm.weight"])
            g, u = h @ W[p + "ffn_gate.weight"].T, h @ W[p + "ffn_up.weight"].T
            x = x + (g / (1 + np.exp(-g)) * u) @ W[p + "ffn_down.weight"].T
            resid.append(x)
        logits = self._rms(x, W["output_norm.weight"]) @ W["output.weight"].T
        return logits, resid
