"""Compiler: GGUF model or Hugging Face checkpoint -> instruction streams and a device memory image (an
:class:`Artifact`)."""
from flightllm.compiler.artifact import Artifact
from flightllm.compiler.compile import compile_cached, compile_model

__all__ = ["Artifact", "compile_model", "compile_cached"]
