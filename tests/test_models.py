"""Any LLaMA-architecture GGUF with Q4_0/Q4_1/Q8_0/F16/F32 tensors maps: a small model written here."""
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
