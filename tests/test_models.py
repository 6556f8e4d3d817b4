"""Any LLaMA-architecture GGUF with Q4_0/Q4_1/Q8_0/F16/BF16/F32 tensors maps: a small model written here."""
import numpy as np
import pytest

from conftest import TINY_TYPES, run_cli
from flightllm import boards
from flightllm.compiler import compile_model, gguf_model
from flightllm.host.runtime import Runtime
from flightllm.sim.reference import Reference


def test_mixed_types_compile_and_match_reference(tiny):
    m = gguf_model.load(tiny)
    assert {m.layer(0, n).type for n in TINY_TYPES} == set(TINY_TYPES.values())
    art = compile_model(m, boards.load("sim"), ctx=128)
    rt = Runtime(art)
    ids = [5, 17, 33, 2, 40, 41, 9, 12, 60]
    got, _ = rt.forward(ids, 0, all_logits=True)
    ref, _ = Reference(m).forward(ids)
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() < 0.05 * scale + 0.02


@pytest.mark.parametrize("embd", ["Q4_0", "Q4_1"])
def test_4bit_token_embedding(tmp_path, embd):
    """LD gathers embedding rows as Q8_0 only: a 4-bit table is stored for it as Q8_0 (image.embedding_rows), the
    tied output head keeps the 4-bit blocks. Before, the 4-bit rows were read as Q8_0: logits off by more than
    their own scale, silently."""
    from flightllm.fuzz import tiny_gguf

    tiny_gguf(str(tmp_path / "e.gguf"), seed=2, types=TINY_TYPES, embd=embd)
    m = gguf_model.load(tmp_path / "e.gguf")
    ids = [5, 17, 33, 2, 40, 41, 9, 12, 60]
    got, _ = Runtime(compile_model(m, boards.load("sim"), ctx=64)).forward(ids, 0, all_logits=True)
    ref, _ = Reference(m).forward(ids)
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max() + 0.02


def test_merge_outside_the_vocabulary(tiny, tmp_path):
    """A BPE merge whose result is no token: tokenizers 0.23 raises an Exception, or, when no token of the
    vocabulary is longer than one character, panics (a PanicException, not an Exception: a traceback past every
    handler, Rust's message on stderr). The merges are checked against the vocabulary first."""
    from flightllm.errors import ModelError
    from flightllm.host.tokenizer import build_tokenizer_json

    with pytest.raises(ModelError, match="joins or makes a token not in the vocabulary"):
        build_tokenizer_json({"model": "gpt2", "tokens": ["!", '"', "x"], "merges": ['! "']})     # the panic case
    d = tiny.read_bytes()
    tok = (2).to_bytes(8, "little") + b"#$"           # the token the merge "# $" makes
    assert d.count(tok) == 1
    p = tmp_path / "merge.gguf"
    p.write_bytes(d.replace(tok, (2).to_bytes(8, "little") + b"#%"))
    r = run_cli("compile", "-m", str(p), "--ctx", "64", "-o", str(tmp_path / "x.flm"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "BPE merge '# $' joins or makes a token not in the vocabulary" in r.stderr


def test_cli_generates_from_a_path(tiny, tmp_path):
    """`generate -m FILE.gguf`: the CLI's greedy tokens are the runtime's own greedy decode of the same prompt ids."""
    import json

    r = run_cli("generate", "-m", tiny, "-p", "!#$%", "-n", "4", "--ctx", "128", "--json",
                env={"FLIGHTLLM_CACHE": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    art = compile_model(gguf_model.load(tiny), boards.load("sim"), ctx=128)
    rt = Runtime(art)
    ids, want = out["prompt_token_ids"], []
    logits, _ = rt.forward(ids, 0)
    for pos in range(len(ids), len(ids) + 4):
        t = int(logits[-1].argmax())
        if t in art.header["stop_ids"]:          # a stop token ends the text and is not part of it
            break
        want.append(t)
        logits, _ = rt.forward([t], pos)
    assert len(ids) >= 1 and out["token_ids"] == want


def test_no_stray_top_level_packages(tmp_path):
    """The folders are subpackages of flightllm only: nothing named hw/host/sim/compiler is importable."""
    import subprocess
    import sys

    code = "import importlib.util as u; print([n for n in ('hw','host','sim','compiler','boards') if u.find_spec(n)])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.stdout.strip() == "[]"
