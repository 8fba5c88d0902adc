"""Compressors, pure: exact where lossless, within their bounds otherwise, messages as declared, error feedback
that keeps what it drops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dimat.compress import (
    CompressError, Compressor, ErrorFeedback, LowRank, QSGD, RandomK, Sign, TopK, message_nbytes,
)

RNG = np.random.default_rng(0)
V = RNG.standard_normal(1000).astype(np.float32)


def roundtrip(c: Compressor, v: np.ndarray, seed: int = 1) -> tuple[dict, np.ndarray]:
    msg = c.encode(v, np.random.default_rng(seed))
    return msg, c.decode(msg, len(v))


@pytest.mark.parametrize("c", [Compressor(), TopK(ratio=1.0), RandomK(ratio=1.0), QSGD(bits=32)])
def test_lossless_settings_round_trip_exactly(c):
    _, out = roundtrip(c, V)
    np.testing.assert_array_equal(out, V)
    assert c.lossless


def test_lowrank_at_full_rank_is_exact_and_compresses_below_it():
    shapes = [(20, 30), (20,), (10, 2, 3, 3)]
    v = RNG.standard_normal(sum(math.prod(s) for s in shapes)).astype(np.float32)
    full = LowRank(rank=20)
    full.setup(shapes)
    np.testing.assert_allclose(roundtrip(full, v)[1], v, atol=1e-5)
    low = LowRank(rank=2)
    low.setup(shapes)
    msg, out = roundtrip(low, v)
    m = v[:600].reshape(20, 30).astype(np.float64)
    best = np.linalg.svd(m, compute_uv=False)  # no rank-2 matrix is closer than the Eckart-Young bound
    err = np.linalg.norm(out[:600].reshape(20, 30) - m)
    assert np.sqrt((best[2:] ** 2).sum()) - 1e-4 <= err < np.linalg.norm(m)
    np.testing.assert_array_equal(out[600:620], v[600:620])  # a vector travels whole
    assert message_nbytes(msg) == low.nbytes(len(v)) < 4 * len(v)


def test_topk_keeps_the_largest_and_nothing_else():
    msg, out = roundtrip(TopK(ratio=0.05), V)
    k = math.ceil(0.05 * len(V))
    ref = np.zeros_like(V)
    keep = np.argsort(-np.abs(V))[:k]
    ref[keep] = V[keep]
    np.testing.assert_array_equal(out, ref)
    assert message_nbytes(msg) == 8 * k == TopK(ratio=0.05).nbytes(len(V))


def test_randomk_sends_values_and_the_seed_of_their_indices():
    msg, out = roundtrip(RandomK(ratio=0.1), V)
    k = math.ceil(0.1 * len(V))
    kept = np.flatnonzero(out)
    assert len(kept) == k and np.array_equal(out[kept], V[kept])
    assert message_nbytes(msg) == 4 * k + 8


def test_qsgd_is_unbiased_and_within_one_level_of_its_bucket():
    c = QSGD(bits=4, bucket=100)
    s = 7  # 2^(4-1) - 1 levels
    outs = np.stack([roundtrip(c, V, seed)[1] for seed in range(400)])
    norms = np.repeat(np.linalg.norm(V.reshape(10, 100), axis=1), 100)  # one norm per bucket of 100
    assert np.all(np.abs(outs - V) <= norms / s + 1e-4)  # one level of norm/s at most
    assert np.all(np.abs(outs.mean(0) - V) < 4 * (norms / s) / np.sqrt(400))  # unbiased (4 standard errors)
    msg = c.encode(V, np.random.default_rng(0))
    assert message_nbytes(msg) == 4 * 10 + len(V) * 4 // 8 == c.nbytes(len(V))


def test_sign_is_the_scaled_sign():
    msg, out = roundtrip(Sign(), V)
    np.testing.assert_allclose(out, np.abs(V).mean() * np.sign(V), rtol=1e-6)
    assert message_nbytes(msg) == 4 + math.ceil(len(V) / 8)


@pytest.mark.parametrize("c", [TopK(ratio=0.01, error_feedback=True), Sign(error_feedback=True),
                               QSGD(bits=8, error_feedback=True)])
def test_error_feedback_sends_later_what_it_dropped(c):
    ef, rng = ErrorFeedback(c), np.random.default_rng(0)
    vs = [RNG.standard_normal(300).astype(np.float32) for _ in range(20)]
    sent = [ef.send(v, rng)[1] for v in vs]
    # what was sent plus what is still owed is exactly what should have been sent (to float32 rounding of the
    # sums, relative to their size)
    total = np.sum(sent, 0) + ef.memory
    scale = max(np.abs(np.sum(sent, 0)).max(), np.abs(ef.memory).max(), 1.0)
    np.testing.assert_allclose(total, np.sum(vs, 0), atol=1e-5 * scale)
    assert np.abs(ef.memory).max() > 0  # something was owed along the way


def test_packing_for_a_byte_transport_is_lossless():
    for c in (TopK(ratio=0.1), RandomK(ratio=0.1), QSGD(bits=2), Sign()):
        msg = c.encode(V, np.random.default_rng(3))
        buf = c.pack(msg, len(V))
        assert buf.dtype == np.uint8 and buf.nbytes == c.nbytes(len(V))
        np.testing.assert_array_equal(c.decode(c.unpack(buf, len(V)), len(V)), c.decode(msg, len(V)))


@pytest.mark.parametrize("make,match", [
    (lambda: TopK(ratio=0), "compress.ratio=0"), (lambda: QSGD(bits=3), "compress.bits=3"),
    (lambda: LowRank(rank=0), "compress.rank=0"), (lambda: Compressor(error_feedback=True), "error_feedback"),
    (lambda: QSGD(bits=32, bucket=64), "compress.bucket=64"),
])
def test_bad_options_are_one_line(make, match):
    with pytest.raises(CompressError, match=match):
        make()
