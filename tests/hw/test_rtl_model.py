"""The whole SmolLM2 model on the RTL engine (hw/top.py through the Verilator harness, the pynq driver path of
``--backend rtl``) against the functional simulator: a 4-token prefill (every layer: embedding gather, RMSNORM,
MM Q4_1/Q8_0, ROPE, K/V^T cache stores, causal SOFTMAX, attention MMs over the cache, SILU_MUL, residual ADD,
logits) and two greedy decode steps. Logits bit-identical, token ids identical, and every run's cycles and
RD/WR byte counts equal to fsim's (sim/cycles.py describes the RTL exactly). ~1-2 minutes with a cached build."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.rtl

from rtl_available import HAVE, need  # noqa: E402,F401


@pytest.mark.skipif(not HAVE, reason="Verilator not installed")
def test_smollm2_prefill_and_decode_on_rtl():
    from flightllm.compiler.compile import compile_cached
    from flightllm.host.runtime import Runtime

    art = compile_cached("smollm2", "sim", 256)
    prompt = [504, 3575, 282, 4521]                  # "The capital of Germany"
    runs = {}
    for backend in ("fsim", "rtl"):
        rt = Runtime(art, backend)
        try:
            toks, logits, cycles = list(prompt), [], []
            lg, st = rt.forward(toks, 0)
            logits.append(lg)
            cycles.append((st.cycles, st.bytes_read, st.bytes_written))
            for _ in range(2):
                toks.append(int(np.argmax(logits[-1][0] if logits[-1].ndim == 2 else logits[-1])))
                lg, st = rt.forward(toks[-1:], len(toks) - 1)
                logits.append(lg)
                cycles.append((st.cycles, st.bytes_read, st.bytes_written))
            runs[backend] = (toks, logits, cycles)
        finally:
            rt.close()
    (ft, fl, fc), (rt_, rl, rc) = runs["fsim"], runs["rtl"]
    assert rt_ == ft, (rt_, ft)
    for a, b in zip(fl, rl):
        assert np.array_equal(a, b)                  # the logits' int32 bits (exact /2^12 floats)
    assert rc == fc, (rc, fc)          # cycles (sim/cycles.py describes the RTL exactly) and RD/WR_BYTES
