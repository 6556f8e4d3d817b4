"""The matrix engine's reference arithmetic against a plain Python-int implementation of the same formula."""
import numpy as np
import pytest

from flightllm.formats import ACT_FRAC, BLOCK, pack_sparse, pack_weights, unpack_weights
from flightllm.isa import WFmt
from flightllm.sim import mpe_model, sfu_model


def slow_mm(q, D, M, mask, fmt, xq, xm, xe):
    """Python ints: per block T = D*acc + M*qs, (T*m) shifted by e with floor, summed, rounded, saturated."""
    R, C = q.shape
    out = np.zeros((xq.shape[0], R), np.int64)
    for t in range(xq.shape[0]):
        for r in range(R):
            acc_total = 0
            for b in range(C // BLOCK):
                sl = slice(b * BLOCK, (b + 1) * BLOCK)
                acc = sum(int(a) * int(w) for a, w in zip(xq[t, sl], q[r, sl]))
                T = int(D[r, b]) * acc
                if fmt == WFmt.Q4_1:
                    kept = np.ones(BLOCK, bool) if mask is None else mask[r, sl]
                    T += int(M[r, b]) * sum(int(a) for a, k in zip(xq[t, sl], kept) if k)
                P = T * int(xm[t, b])
                e = int(xe[t, b])
                acc_total += P << e if e >= 0 else P >> -e
            y = (acc_total + (1 << 11)) >> 12
            out[t, r] = max(-(2**31), min(2**31 - 1, y))
    return out


@pytest.mark.parametrize("fmt", [WFmt.Q4_1, WFmt.Q8_0])
@pytest.mark.parametrize("n", [16, 8, 2])
def test_vectorised_equals_python_ints(fmt, n):
    rng = np.random.default_rng(n * 10 + fmt)
    R, C, T = 5, 96, 3
    keep = (rng.random((R, C // 16, 16)).argsort(-1) < n).reshape(R, C)
    q = rng.integers(0, 16, (R, C)) if fmt == WFmt.Q4_1 else rng.integers(-128, 128, (R, C))
    q = np.where(keep, q, 0)
    d = rng.uniform(-15, 15, (R, 3)).astype(np.float16).view(np.uint16)       # the full allowed scale range
    m = rng.uniform(-15, 15, (R, 3)).astype(np.float16).view(np.uint16) if fmt == WFmt.Q4_1 else None
    raw = pack_weights(q, d, m, fmt) if n == 16 else pack_sparse(q, keep, d, m, fmt, n)
    qq, D, M, mask = unpack_weights(raw, fmt, n, R, C)
    x = np.round(rng.standard_normal((T, C)) * rng.choice([1e-3, 1.0, 1e4], (T, 1)) * (1 << ACT_FRAC)).astype(np.int64)
    xq, xm, xe = sfu_model.quant(x, ACT_FRAC)
    y = mpe_model.mm(mpe_model.Weights(qq, D, M, mask, fmt), xq, xm, xe)
    assert np.array_equal(y, slow_mm(qq, D, M, mask, fmt, xq, xm, xe))


def test_i16_kv_weights_and_float_error():
    rng = np.random.default_rng(5)
    R, C = 40, 64
    wq = rng.integers(-32768, 32768, (R, C))
    raw = wq.astype("<i2").view(np.uint8).reshape(R, C * 2)
    qq, D, M, mask = unpack_weights(raw, WFmt.I16, 16, R, C, wfrac=9)
    x = np.round(rng.standard_normal((1, C)) * 4096).astype(np.int64)
    xq, xm, xe = sfu_model.quant(x, ACT_FRAC)
    w = mpe_model.Weights(qq, D, M, mask, WFmt.I16)
    y = mpe_model.mm(w, xq, xm, xe)
    assert np.array_equal(y, slow_mm(qq, D, M, mask, WFmt.I16, xq, xm, xe))
    ref = (wq / 512.0) @ (x[0] / 4096.0)
    assert np.abs(y[0] / 4096 - ref).max() < 0.01 * np.abs(ref).max() + 0.01
