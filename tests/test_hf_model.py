"""Hugging Face checkpoint folders (compiler/hf_model.py): the same model as the GGUF they were written from, down
to the compiled image's bytes, and one-line errors for malformed or unsupported folders."""
import json
import shutil

import numpy as np
import pytest

from conftest import run_cli
from hf_util import dequantized, hf_forward, write_checkpoint
from flightllm import boards
from flightllm.compiler import compile_model, gguf_model, hf_model, source
from flightllm.errors import FlightLLMError, ModelError


@pytest.fixture(scope="module")
def f32(tmp_path_factory):
    """A tiny GGUF whose matrices are F32 (its embedding Q8_0): the compiler quantises F32 matrices to Q8_0 as it
    does a checkpoint's, so both compile to the same image."""
    from flightllm.fuzz import tiny_gguf

    p = tmp_path_factory.mktemp("hf") / "tiny-f32.gguf"
    tiny_gguf(str(p), seed=5, layers=2)
    return p


@pytest.fixture(scope="module")
def ckpt(f32, tmp_path_factory):
    return write_checkpoint(gguf_model.load(f32), tmp_path_factory.mktemp("hf") / "tiny-ckpt", shards=2)


def test_checkpoint_is_the_gguf_model_and_compiles_to_the_same_image(f32, ckpt):
    g, h = gguf_model.load(f32), source.load_model(source.resolve_model(str(ckpt)))
    assert {**h.config.to_dict(), "name": ""} == {**g.config.to_dict(), "name": ""} and h.config.name == "tiny-ckpt"
    W = dequantized(g)
    assert set(h.tensors) == set(W) and h.tied_output == g.tied_output
    for n, t in h.tensors.items():          # q/k permuted back to GGUF order; the rest as written
        assert t.type == "F32" and np.array_equal(np.asarray(t.data).reshape(t.shape), W[n]), n
    assert h.tokenizer["eos"] == g.tokenizer["eos"] and h.chat_template == g.chat_template
    b = boards.load("sim")
    a, c = compile_model(g, b, 128), compile_model(h, b, 128)
    assert np.array_equal(a.image, c.image)
    assert {k: v for k, v in a.header.items() if k not in ("model", "source")} == \
        {k: v for k, v in c.header.items() if k not in ("model", "source")}


def test_q4_1_checkpoint_compiles_to_the_q4_1_ggufs_image(tmp_path):
    """Float weights that came from Q4_1 blocks quantise back to the same blocks (image.quantize_q4_1 is ggml's), so
    a checkpoint of a Q4_1 GGUF compiled with quantize="q4_1" is that GGUF's image, embedding included (LD gathers
    it as Q8_0 in both: image.embedding_rows)."""
    from flightllm.fuzz import tiny_gguf

    types = dict.fromkeys(("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"), "Q4_1")
    tiny_gguf(str(tmp_path / "q4.gguf"), seed=7, types=types, layers=2, embd="Q4_1")
    g = gguf_model.load(tmp_path / "q4.gguf")
    h = hf_model.load(write_checkpoint(g, tmp_path / "q4-ckpt"))
    b = boards.load("sim")
    a = compile_model(g, b, 64)
    assert np.array_equal(a.image, compile_model(h, b, 64, "q4_1").image)
    assert compile_model(h, b, 64).image.size > a.image.size           # q8_0 by default: more bytes
    with pytest.raises(FlightLLMError, match="quantize must be one of q8_0, q4_1"):
        compile_model(h, b, 64, "q2_k")


def test_checkpoint_writer_follows_hugging_face_conventions(f32, ckpt, tmp_path, monkeypatch):
    """The folder the tests write is a real HF checkpoint: a forward pass in HF's conventions (rotate_half RoPE) over
    its files gives the GGUF reference's logits; written without the q/k reordering, it would not."""
    import hf_util
    from flightllm.sim.reference import Reference

    g = gguf_model.load(f32)
    single = write_checkpoint(g, tmp_path / "one")
    ids = [3, 10, 20, 5, 7, 1, 40]
    ref = Reference(g).forward(ids)[0]
    assert np.abs(hf_forward(single, ids) - ref).max() < 1e-4
    monkeypatch.setattr(hf_util, "unpermute", lambda w, heads: w)
    wrong = write_checkpoint(g, tmp_path / "wrong")
    assert np.abs(hf_forward(wrong, ids) - ref).max() > 1e-3


def test_half_precision_checkpoints(f32, tmp_path):
    g = gguf_model.load(f32)
    W = dequantized(g)
    h = hf_model.load(write_checkpoint(g, tmp_path / "f16", dtype=np.float16))
    t = h.tensors["blk.1.attn_k.weight"]
    assert t.type == "F16" and np.array_equal(np.asarray(t.data), W["blk.1.attn_k.weight"].astype(np.float16))
    # BF16 (numpy has no such type, so the file is written here): kept as 16-bit words, widened exactly to F32
    # per tensor by the compiler (image.float_rows)
    d = write_checkpoint(g, tmp_path / "bf16")
    names = sorted(hf_model.read_safetensors(d / "model.safetensors"))
    src = {n: a for n, (_, _, a) in hf_model.read_safetensors(d / "model.safetensors").items()}
    header, blobs, off = {}, [], 0
    for n in names:
        b = (np.asarray(src[n], np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        header[n] = {"dtype": "BF16", "shape": list(src[n].shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    hj = json.dumps(header).encode()
    (d / "model.safetensors").write_bytes(len(hj).to_bytes(8, "little") + hj + b"".join(blobs))
    h = hf_model.load(d)
    from flightllm.compiler.image import float_rows

    want = {n: (w.view(np.uint32) & 0xFFFF0000).view(np.float32) for n, w in W.items()}
    for n in ("blk.0.ffn_down.weight", "blk.1.attn_q.weight", "output_norm.weight"):     # q: permuted as words
        t = h.tensors[n]
        assert t.type == "BF16" and np.array_equal(float_rows(t), want[n]), n
    from flightllm.sim.reference import Reference

    assert np.array_equal(Reference(h).W["blk.1.ffn_up.weight"], want["blk.1.ffn_up.weight"])


def test_transformers_5_rope_parameters(ckpt, tmp_path):
    """transformers 5 writes rope_parameters {rope_type, rope_theta} instead of rope_theta (and no rope_scaling);
    read the old way, SmolLM2's base of 100,000 would become the default 10,000."""
    d = tmp_path / "tf5"
    shutil.copytree(ckpt, d)
    _edit_json("config.json", rope_theta=None, rope_scaling=None,
               rope_parameters={"rope_theta": 100000.0, "rope_type": "default"})(d)
    assert hf_model.load(d).config.rope_base == 100000.0
    _edit_json("config.json", rope_theta=5e5, rope_parameters=None)(d)
    assert hf_model.load(d).config.rope_base == 5e5


def test_transformers_5_tokenizer_files(ckpt, tmp_path):
    """transformers 5 saves the chat template as chat_template.jinja; generation_config.json may list several
    end-of-sequence ids (LLaMA 3 instruct: <|end_of_text|> and <|eot_id|>): every one stops generation. A template
    that writes the BOS itself gets no second one; raise_exception() in a template is a one-line error."""
    from flightllm.host.api import LLM

    d = tmp_path / "tf5tok"
    shutil.copytree(ckpt, d)
    _edit_json("tokenizer_config.json", chat_template=None, add_bos_token=True)(d)
    _edit_json("config.json", bos_token_id=62)(d)
    (d / "chat_template.jinja").write_text("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
                                           "{{ raise_exception('no system turns') }}{% endif %}{{ m['content'] }}"
                                           "{% endfor %}")
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [63, 60]}))
    llm = LLM(str(d), ctx=64)
    assert llm.stop_ids == {60, 63}
    ids = llm.prompt_ids("!#", chat=True)
    assert ids[0] == 62 and ids[1] != 62 and llm.prompt_ids("!#")[0] == 62        # add_bos for plain text too
    with pytest.raises(ModelError, match="chat template failed: no system turns"):
        llm.prompt_ids("!#", chat=True, system="be brief")


def test_tensors_the_model_does_not_use_are_skipped(ckpt, tmp_path):
    """Older checkpoints store buffers such as rotary_emb.inv_freq (and other files may hold int tensors)."""
    from safetensors.numpy import load_file, save_file

    d = tmp_path / "extra"
    shutil.copytree(ckpt, d)
    p = d / "model-00001-of-00002.safetensors"
    W = load_file(str(p))
    W["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(16, np.float32)
    W["model.layers.0.self_attn.position_ids"] = np.arange(8, dtype=np.int64)
    save_file(W, str(p))
    h = hf_model.load(d)
    assert len(h.tensors) == len(hf_model.load(ckpt).tensors) == 2 + 2 * 9


def test_cli_generates_the_same_tokens_from_the_checkpoint(f32, ckpt, tmp_path):
    env = {"FLIGHTLLM_CACHE": str(tmp_path / "cache")}
    outs = []
    for m, q in ((str(f32), []), (str(ckpt), []), (str(ckpt), ["--quantize", "q4_1"])):
        r = run_cli("generate", "-m", m, "-p", "!#%&()", "-n", "6", "--json", *q, env=env)
        assert r.returncode == 0, r.stderr
        outs.append(json.loads(r.stdout))
    assert outs[0]["token_ids"] == outs[1]["token_ids"] and len(outs[0]["token_ids"]) == 6
    assert outs[0]["prompt_token_ids"] == outs[1]["prompt_token_ids"]
    # q4_1: 20 bytes a block of 32 instead of Q8_0's 34 for every matrix (and the tied head)
    b8, b4 = outs[1]["stats"]["bytes_per_token"], outs[2]["stats"]["bytes_per_token"]
    assert b4 < b8 and outs[2]["stats"]["tokens_per_s"] > outs[1]["stats"]["tokens_per_s"]
    r = run_cli("compile", "-m", str(ckpt), "--quantize", "q4_1", "--ctx", "64", "-o", str(tmp_path / "q4.flm"),
                env=env)
    assert r.returncode == 0, r.stderr
    r = run_cli("generate", "-m", str(tmp_path / "q4.flm"), "--quantize", "q8_0", "-p", "!", env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "compiled with float matrices as q4_1" in r.stderr
    assert sorted(p.name for p in source.source_files(ckpt)) == [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"]


def _edit_json(name, **kv):
    def f(d):
        p = d / name
        c = json.loads(p.read_text())
        for k, v in kv.items():
            c.pop(k, None) if v is None else c.__setitem__(k, v)
        p.write_text(json.dumps(c))
    return f


def _edit_header(fn):
    """Rewrite the first shard's safetensors header with ``fn(header)``; the data stays."""
    def f(d):
        p = d / "model-00001-of-00002.safetensors"
        b = p.read_bytes()
        n = int.from_bytes(b[:8], "little")
        h = json.loads(b[8: 8 + n])
        fn(h)
        hj = json.dumps(h).encode()
        p.write_bytes(len(hj).to_bytes(8, "little") + hj + b[8 + n:])
    return f


def _edit_tokenizer(fn):
    def f(d):
        t = json.loads((d / "tokenizer.json").read_text())
        fn(t)
        (d / "tokenizer.json").write_text(json.dumps(t))
    return f


def _first(h):
    return h[sorted(k for k in h if k != "__metadata__")[0]]


def _write(name, data):
    return lambda d: (d / name).write_bytes(data)


BAD = [
    ("config-json", _write("config.json", b"{not json"), "is not valid JSON"),
    ("arch", _edit_json("config.json", model_type="mistral"), "unsupported model_type 'mistral'"),
    ("rope-scaling", _edit_json("config.json", rope_scaling={"rope_type": "linear", "factor": 2.0}),
     "RoPE scaling is not supported"),
    ("bias", _edit_json("config.json", attention_bias=True), "biases are not supported"),
    ("act", _edit_json("config.json", hidden_act="gelu"), "SiLU"),
    ("heads", _edit_json("config.json", num_attention_heads=3), "do not divide hidden size"),
    ("layers", _edit_json("config.json", num_hidden_layers=3), "missing tensor model.layers.2."),
    ("vocab", _edit_json("config.json", vocab_size=70), "has shape (64, 64), config.json implies (70, 64)"),
    ("untied", _edit_json("config.json", tie_word_embeddings=False), "no lm_head.weight"),
    ("rope-base", _edit_json("config.json", rope_theta=0), "'rope_theta' = 0"),
    ("rope-params", _edit_json("config.json", rope_theta=None, rope_parameters={"rope_type": "yarn", "factor": 4.0,
                                                                               "rope_theta": 1e4}),
     "rope_parameters = {'rope_type': 'yarn'"),
    ("eps-huge", _edit_json("config.json", rms_norm_eps=10**400), "'rms_norm_eps' = 1000000000"),   # fuzz hf
    ("layers-type", _edit_json("config.json", num_hidden_layers="2"), "should be an integer"),
    ("head-dim", _edit_json("config.json", head_dim=64), "head_dim 64"),
    ("no-weights", lambda d: [p.unlink() for p in d.glob("*.safetensors*")], "no *.safetensors weights"),
    ("shard-path", _edit_json("model.safetensors.index.json", weight_map={"x": "../x.safetensors"}),
     "is not a file in"),
    ("header-len", lambda d: (d / "model-00001-of-00002.safetensors").write_bytes((1 << 40).to_bytes(8, "little")),
     "not a safetensors file"),
    ("header-json", lambda d: (d / "model-00001-of-00002.safetensors").write_bytes(
        (4).to_bytes(8, "little") + b"{{{{"), "header is not valid JSON"),
    ("offsets", _edit_header(lambda h: _first(h).__setitem__("data_offsets", [0, 1 << 40])), "lie outside"),
    ("name", _edit_header(lambda h: h.__setitem__("x\n" * 500, {"dtype": "F32", "shape": [1], "data_offsets": "\n"})),
     "tensor 'x\\nx\\n"),
    ("dtype", _edit_header(lambda h: _first(h).__setitem__("dtype", "Q4")), "unknown dtype 'Q4'"),
    ("int-weights", _edit_header(lambda h: _first(h).update(dtype="I8", shape=[_first(h)["shape"][0] * 4]
                                                            + _first(h)["shape"][1:])), "has dtype I8 (supported"),
    ("bytes", _edit_header(lambda h: _first(h).__setitem__("shape", [1, 2, 3])), "needs 24"),
    ("tokenizer", _write("tokenizer.json", b'{"model": 3}'), "not a tokenizer"),
    ("merge", _edit_tokenizer(lambda t: t["model"].__setitem__("merges", ['!"'])), "not a tokenizer"),
    # tokenizers panics on this one (fuzz hf): a PanicException, with Rust's message on fd 2 (checked below)
    ("prefix", _edit_tokenizer(lambda t: t["model"].__setitem__("continuing_subword_prefix", "llama")),
     "not a tokenizer"),
    ("eos-id", _edit_json("config.json", eos_token_id=999), "not a token id below the vocabulary size 64"),
    ("eos-name", lambda d: (_edit_json("config.json", eos_token_id=None)(d),
                            _edit_json("tokenizer_config.json", eos_token="<nope>")(d)), "'<nope>' is not in"),
]


@pytest.mark.parametrize("case,edit,msg", BAD, ids=[b[0] for b in BAD])
def test_malformed_checkpoints_give_one_line(ckpt, tmp_path, case, edit, msg):
    d = tmp_path / case
    shutil.copytree(ckpt, d)
    edit(d)
    with pytest.raises(ModelError) as e:
        hf_model.load(d)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_nonfinite_weights_and_cli_errors(f32, ckpt, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = tmp_path / "nan"
    shutil.copytree(ckpt, d)
    p = next(d.glob("model-*.safetensors"))
    W = load_file(str(p))
    k = next(n for n in W if n.endswith("mlp.up_proj.weight"))
    W[k][0, 0] = np.nan
    save_file(W, str(p))
    with pytest.raises(FlightLLMError, match="non-finite weights"):
        compile_model(hf_model.load(d), boards.load("sim"), 128)
    t = json.loads((d / "tokenizer.json").read_text())
    t["model"]["continuing_subword_prefix"] = "llama"
    (d / "tokenizer.json").write_text(json.dumps(t))
    r = run_cli("compile", "-m", str(d), "-o", str(tmp_path / "x.flm"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a tokenizer" in r.stderr, r.stderr
    # an artifact's stored tokenizer is parsed the same way (the header is not under the image's checksum)
    from flightllm.compiler.artifact import Artifact

    art = compile_model(hf_model.load(ckpt), boards.load("sim"), 64)
    art.header["tokenizer_json"] = json.dumps(t)
    art.save(tmp_path / "bad-tok.flm")
    r = run_cli("generate", "-m", str(tmp_path / "bad-tok.flm"), "-p", "!", "-n", "1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "the artifact's tokenizer: not a tokenizer" in r.stderr
    assert Artifact.load(tmp_path / "bad-tok.flm").header["tokenizer_json"] == json.dumps(t)
    (d / "config.json").write_text("[]")
    r = run_cli("compile", "-m", str(d), "-o", str(tmp_path / "x.flm"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "config.json: not a JSON object" in r.stderr
