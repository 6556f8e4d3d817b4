"""GGUF loading: the real SmolLM2 file, and hostile or unsupported files (one clear error each)."""
import struct

import numpy as np
import pytest

from flightllm.compiler import gguf_model, source
from flightllm.errors import ModelError


def test_smollm2_hyperparameters(smollm2):
    c = smollm2.config
    assert (c.n_layers, c.hidden, c.n_heads, c.n_kv_heads, c.ffn, c.vocab) == (30, 576, 9, 3, 1536, 49152)
    assert c.head_dim == 64 and c.rope_base == 100000.0 and c.context == 8192
    assert abs(c.rms_eps - 1e-5) < 1e-9
    assert smollm2.tied_output
    assert smollm2.tensors["token_embd.weight"].type == "Q8_0"
    assert smollm2.layer(0, "attn_q").type == "Q4_1" and smollm2.layer(0, "attn_k").shape == (192, 576)
    assert smollm2.tokenizer["model"] == "gpt2" and smollm2.tokenizer["add_bos"] is False
    assert "<|im_start|>" in smollm2.chat_template


def test_tokenizer_and_chat_template(codec):
    ids = codec.encode(codec.chat("What is the capital of France?"))
    # the template adds the default system message; specials parse as single tokens; no BOS prepended
    assert ids[0] == 1 and ids.count(2) == 2 and ids[-4:] == codec.encode("<|im_start|>assistant\n")
    assert codec.decode(codec.encode("Hello, world! 123")) == "Hello, world! 123"
    assert codec.encode("2024") == [codec.encode(d)[0] for d in "2024"]      # digits split one by one


def _patched(src, tmp_path, name, patch):
    data = bytearray(src.read_bytes())
    patch(data)
    p = tmp_path / name
    p.write_bytes(bytes(data))
    return p


def _f32_field(key, v):
    """A float32 metadata entry as GGUF writes it: the key's length and bytes, type 6 (FLOAT32), the value."""
    return struct.pack("<Q", len(key)) + key.encode() + struct.pack("<If", 6, v)


def _replace(data, old, new):
    i = data.index(old)
    data[i:i + len(new)] = new


@pytest.mark.parametrize("name,patch,msg", [
    ("magic.gguf", lambda d: d.__setitem__(slice(0, 4), b"GGUX"), "not a GGUF file"),
    ("version.gguf", lambda d: d.__setitem__(slice(4, 8), struct.pack("<I", 99)), "unsupported GGUF version 99"),
    ("count.gguf", lambda d: d.__setitem__(slice(8, 16), struct.pack("<Q", 1 << 40)), "absurd counts"),
    ("arch.gguf", lambda d: _replace(d, b"\x05\0\0\0\0\0\0\0llama", b"\x05\0\0\0\0\0\0\0mamba"),
     "unsupported architecture 'mamba'"),
    ("type.gguf", lambda d: _replace(d, b"token_embd.weight\x02\0\0\0", b"token_embd.weight\x07\0\0\0"),
     "dimensions"),
    # numbers that are finite but would turn the RoPE table into NaNs or swamp RMSNorm (fuzz gguf found the first)
    *[(f"{key}{v}.gguf", lambda d, k=key, old=old, v=v: _replace(d, _f32_field(k, old), _f32_field(k, v)),
       f"'{key}' = \\S+ is out of range")
      for key, old, v in [("llama.rope.freq_base", 100000.0, 0.0), ("llama.rope.freq_base", 100000.0, -10000.0),
                          ("llama.attention.layer_norm_rms_epsilon", 1e-5, -1e-5),
                          ("llama.attention.layer_norm_rms_epsilon", 1e-5, 2.0)]],
])
def test_hostile_headers(smollm2_path, tmp_path, name, patch, msg):
    p = _patched(smollm2_path, tmp_path, name, patch)
    with pytest.raises(ModelError, match=msg):
        gguf_model.load(p)


def test_unsupported_tensor_type(smollm2_path, tmp_path):
    def patch(d):
        i = d.index(b"token_embd.weight\x02\0\0\0") + len(b"token_embd.weight") + 4 + 16
        d[i:i + 4] = struct.pack("<I", 6)            # Q8_0 -> Q5_0 (a real GGML type flightllm does not map)
    with pytest.raises(ModelError, match="unsupported type Q5_0"):
        gguf_model.load(_patched(smollm2_path, tmp_path, "q5.gguf", patch))


def test_shape_inconsistent_with_metadata(smollm2_path, tmp_path):
    def patch(d):
        i = d.index(b"llama.feed_forward_length") + len(b"llama.feed_forward_length") + 4
        d[i:i + 4] = struct.pack("<I", 1024)
    with pytest.raises(ModelError, match="metadata implies"):
        gguf_model.load(_patched(smollm2_path, tmp_path, "ffn.gguf", patch))


def test_truncated_and_not_gguf(smollm2_path, tmp_path):
    p = tmp_path / "trunc.gguf"
    p.write_bytes(smollm2_path.read_bytes()[:300000])
    with pytest.raises(ModelError, match="truncated|outside the file"):
        gguf_model.load(p)
    q = tmp_path / "text.gguf"
    q.write_text("hello")
    with pytest.raises(ModelError, match="not a GGUF"):
        gguf_model.load(q)
    with pytest.raises(ModelError, match="not found"):
        source.resolve_model(str(tmp_path / "missing.gguf"))


def test_absurd_string_length(smollm2_path, tmp_path):
    def patch(d):
        i = d.index(b"general.architecture") - 8
        d[i:i + 8] = struct.pack("<Q", 1 << 50)
    with pytest.raises(ModelError, match="absurd"):
        gguf_model.load(_patched(smollm2_path, tmp_path, "strlen.gguf", patch))


def test_names_from_the_file_stay_on_one_line(smollm2_path, tmp_path):
    """A message quoting a key or tensor name from a hostile file: control characters come out escaped (errors.py),
    long names cut (fuzz gguf found messages of several lines)."""
    from conftest import run_cli

    p = _patched(smollm2_path, tmp_path, "key.gguf", lambda d: _replace(
        d, b"general.architecture\x08\0\0\0", b"general.architectur\n" + struct.pack("<I", 99)))
    with pytest.raises(ModelError) as e:
        gguf_model.load(p)
    assert str(e.value).endswith("metadata general.architectur\\n has unknown value type 99")
    r = run_cli("compile", "-m", str(p), "-o", str(tmp_path / "x.flm"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "architectur\\n has" in r.stderr
