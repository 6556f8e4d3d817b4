import numpy as np
import pytest

from flightllm import formats
from flightllm.isa import WFmt


def test_fp16_to_fixed_is_exact_for_every_finite_pattern():
    h = np.arange(1 << 16, dtype=np.uint16)
    ok = formats.fp16_finite(h)
    fx = formats.fp16_to_fixed(h[ok])
    ref = h[ok].view(np.float16).astype(np.float64) * (1 << formats.SCALE_FIX)
    assert np.array_equal(fx.astype(np.float64), ref)
    assert np.all(fx == np.round(ref))


@pytest.mark.parametrize("fmt", [WFmt.Q4_1, WFmt.Q8_0])
def test_dense_pack_unpack_round_trip(fmt):
    rng = np.random.default_rng(0)
    R, C = 7, 96
    q = rng.integers(0, 16, (R, C)) if fmt == WFmt.Q4_1 else rng.integers(-128, 128, (R, C))
    d = rng.random((R, 3)).astype(np.float16).view(np.uint16)
    m = rng.random((R, 3)).astype(np.float16).view(np.uint16) if fmt == WFmt.Q4_1 else None
    raw = formats.pack_weights(q, d, m, fmt)
    assert raw.shape == (R, formats.row_bytes(fmt, C))
    q2, D, M, mask = formats.unpack_weights(raw, fmt, 16, R, C)
    assert mask is None and np.array_equal(q2, q)
    assert np.array_equal(D, formats.fp16_to_fixed(d))
    if m is not None:
        assert np.array_equal(M, formats.fp16_to_fixed(m))


@pytest.mark.parametrize("fmt", [WFmt.Q4_1, WFmt.Q8_0])
@pytest.mark.parametrize("n", [2, 4, 8])
def test_sparse_pack_unpack_round_trip(fmt, n):
    rng = np.random.default_rng(n)
    R, C = 5, 64
    keep = (rng.random((R, C // 16, 16)).argsort(-1) < n).reshape(R, C)
    q = rng.integers(0, 16, (R, C)) if fmt == WFmt.Q4_1 else rng.integers(-128, 128, (R, C))
    q = np.where(keep, q, 0)
    d = rng.random((R, 2)).astype(np.float16).view(np.uint16)
    m = rng.random((R, 2)).astype(np.float16).view(np.uint16) if fmt == WFmt.Q4_1 else None
    raw = formats.pack_sparse(q, keep, d, m, fmt, n)
    assert raw.shape[1] == formats.row_bytes(fmt, C, n)
    q2, D, M, mask = formats.unpack_weights(raw, fmt, n, R, C)
    assert np.array_equal(q2, q)
    if fmt == WFmt.Q4_1:
        assert np.array_equal(mask, keep)


def test_sparse_group_must_hold_exactly_n():
    keep = np.ones((1, 32), bool)
    with pytest.raises(ValueError, match="exactly 4"):
        formats.pack_sparse(np.zeros((1, 32), int), keep, np.zeros((1, 1), np.uint16), None, WFmt.Q8_0, 4)


def test_i16_weights_use_wfrac():
    raw = np.arange(64, dtype="<i2").view(np.uint8).reshape(1, 128)
    q, D, M, _ = formats.unpack_weights(raw, WFmt.I16, 16, 1, 64, wfrac=9)
    assert np.array_equal(q[0], np.arange(64)) and np.all(D == 1 << 15) and not M.any()


def test_repeated_sparse_indices_sum_as_the_engine_does():
    """A corrupt sparse block whose two indices in a group are equal: every stored weight is multiplied by the
    activation its index selects (hw/mpe.py), so the position holds the sum and the Q4_1 min counts it twice."""
    q = np.zeros((1, 32), np.int32)
    keep = np.zeros((1, 32), bool)
    keep[0, [3, 7, 16, 20]] = True
    q[0, [3, 7, 16, 20]] = [5, 9, 1, 2]
    raw = formats.pack_sparse(q, keep, np.array([[0x3C00]]), np.array([[0x3C00]]), WFmt.Q4_1, 2)
    idx_at = 4 + 2                                         # d, m, then 2 bytes of values, then the index bytes
    raw[0, idx_at] = 3 | (3 << 4)                          # group 0: both kept weights now point at position 3
    q2, _, _, mask = formats.unpack_weights(raw, WFmt.Q4_1, 2, 1, 32)
    assert q2[0, 3] == 5 + 9 and q2[0, 7] == 0 and mask[0, 3] == 2 and mask[0, 7] == 0
    assert q2[0, 16] == 1 and q2[0, 20] == 2 and mask[0].sum() == 4
