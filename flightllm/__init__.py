"""flightllm: an open FPGA accelerator for LLM inference (RTL, compiler, runtime, simulators).

Subpackages map the repository's top-level folders: ``flightllm.hw`` (hw/), ``flightllm.compiler``
(compiler/), ``flightllm.sim`` (sim/), ``flightllm.host`` (host/), ``flightllm.boards`` (boards/).
"""
__version__ = "0.1.0"


def __getattr__(name):
    # Lazy: `import flightllm` stays cheap for the CLI and the RTL tools.
    if name in ("LLM", "Sampling", "Result"):
        from flightllm.host import api

        return getattr(api, name)
    raise AttributeError(name)


__all__ = ["LLM", "Sampling", "Result", "__version__"]
