"""The SFU reference model against float maths, with the edge cases the RTL must match."""
import numpy as np
import pytest

from flightllm.formats import ACT_FRAC, GAMMA_FRAC, PROB_FRAC, ROPE_FRAC, to_fixed
from flightllm.sim import sfu_model as S

A = 1 << ACT_FRAC


def fx(x):
    return to_fixed(x, ACT_FRAC)


def test_quant_bounds_and_error():
    rng = np.random.default_rng(0)
    x = fx(rng.standard_normal((4, 100)) * rng.uniform(0.01, 100, (4, 1)))
    q, m, e = S.quant(x, ACT_FRAC)
    assert q.shape == (4, 128) and m.shape == (4, 4)
    assert np.abs(q.astype(int)).max() <= 127
    assert np.all(q[:, 100:] == 0)
    assert np.all(m < 2048)
    deq = q.astype(float).reshape(4, 4, 32) * (m.astype(float) * np.exp2(e.astype(float)))[..., None]
    err = np.abs(deq.reshape(4, 128)[:, :100] - x / A)
    step = (m.astype(float) * np.exp2(e.astype(float))).repeat(32, 1)[:, :100]
    assert np.all(err <= 0.5 * step + 1e-12)


def test_quant_zero_block_and_extremes():
    x = np.zeros((1, 64), np.int64)
    x[0, 32:] = [2**31 - 1] * 16 + [-(2**31)] * 16
    q, m, e = S.quant(x, ACT_FRAC)
    assert not q[0, :32].any() and m[0, 0] == 0
    assert q[0, 32] == 127 and q[0, 63] == -127


def test_rmsnorm_matches_float():
    rng = np.random.default_rng(1)
    x = fx(rng.standard_normal((3, 576)) * np.array([[0.01], [1.0], [300.0]])) / A   # what ACT can hold
    g = to_fixed(rng.uniform(0.2, 3, 576), GAMMA_FRAC)
    y = S.rmsnorm(fx(x), g, round(1e-5 * A * A)) / A
    ref = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * (g / (1 << GAMMA_FRAC))
    assert np.abs(y - ref).max() < 2e-3


def test_rmsnorm_zero_vector_and_huge_outlier():
    x = np.zeros((2, 64))
    x[1, 3] = 30000.0                                      # a massive activation, as SmolLM2 has
    y = S.rmsnorm(fx(x), to_fixed(np.ones(64), GAMMA_FRAC), 168)
    assert not y[0].any()
    assert abs(y[1, 3] / A - 8.0) < 1e-3                   # sqrt(64)


def test_softmax_matches_float_and_masks():
    rng = np.random.default_rng(2)
    s = rng.standard_normal((4, 40)) * 8
    valid = np.array([40, 10, 1, 33])
    mult = round(S.LOG2E_Q16 / 8)                          # scale 1/sqrt(64)
    p = S.softmax(fx(s), valid, mult) / (1 << PROB_FRAC)
    for t, v in enumerate(valid):
        z = s[t, :v] / 8
        ref = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        assert np.abs(p[t, :v] - ref).max() < 2e-4
        assert not p[t, v:].any()
        assert abs(p[t].sum() - 1) < 1e-3


def test_softmax_all_equal_and_large_magnitudes():
    x = np.full((1, 64), 123456789, np.int64)
    p = S.softmax(x, np.array([64]), S.LOG2E_Q16)
    assert np.all(p == p[0, 0]) and abs(p[0, 0] / (1 << PROB_FRAC) - 1 / 64) < 1e-6
    x = np.array([[2**31 - 1, -(2**31), 0, 2**31 - 1]])
    p = S.softmax(x, np.array([4]), S.LOG2E_Q16) / (1 << PROB_FRAC)
    assert p[0, 0] == pytest.approx(0.5, abs=1e-6) and p[0, 3] == pytest.approx(0.5, abs=1e-6) and p[0, 1] == 0


def test_silu_mul_matches_float():
    a = np.linspace(-20, 20, 2001)
    b = np.linspace(3, -3, 2001)
    y = S.silu_mul(fx(a)[None], fx(b)[None])[0] / A
    ref = a / (1 + np.exp(-a)) * b
    assert np.abs(y - ref).max() < 3e-3


def test_rope_matches_float():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 128)) * 5
    ang = np.array([[3.0], [1000.0]]) * 100000.0 ** (-np.arange(32) * 2 / 64)
    tab = np.concatenate([to_fixed(np.cos(ang), ROPE_FRAC), to_fixed(np.sin(ang), ROPE_FRAC)], 1)
    y = S.rope(fx(x), tab, 64) / A
    xr = x.reshape(2, 2, 32, 2)
    c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
    ref = np.stack([xr[..., 0] * c - xr[..., 1] * s, xr[..., 0] * s + xr[..., 1] * c], -1).reshape(2, 128)
    assert np.abs(y - ref).max() < 1e-3


def test_add_saturates_and_argmax_takes_first():
    a = np.array([[2**31 - 1, -5, 7, 7]])
    assert S.add(a, np.array([[10, 5, 0, 0]])).tolist() == [[2**31 - 1, 0, 7, 7]]
    assert S.argmax(a[:, 1:]).tolist() == [1]


def test_tables_are_the_documented_functions():
    """Every entry of the ROM tables equals docs/numerics.md's formula, evaluated here with Python's float pow/exp."""
    import math

    e = S.exp2_table()
    assert e.tolist() == [round(2 ** (PROB_FRAC - f / 4096)) for f in range(4096)]
    assert e[0] == 1 << PROB_FRAC and np.all(np.diff(e) <= 0)
    s = S.sigmoid_table()
    assert s.tolist() == [round(65536 / (1 + math.exp(16 - i / 128))) for i in range(4097)]
    assert s[0] == 0 and s[-1] == 1 << 16 and s[s.size // 2] == 1 << 15
