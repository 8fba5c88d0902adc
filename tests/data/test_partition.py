"""Partitioners: disjoint, covering, deterministic, skewed as asked, and fail in one line."""

import time

import numpy as np
import pytest

from dimat.data import PARTITIONS, PartitionError, class_histogram, own_classes, partition

LABELS = np.random.default_rng(1).permutation(np.arange(1000) % 10)  # 100 per class


def _check_disjoint(parts: list[np.ndarray]) -> np.ndarray:
    allidx = np.concatenate(parts)
    assert len(allidx) == len(np.unique(allidx))
    for p in parts:
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0) and len(p) > 0
    return allidx


@pytest.mark.parametrize("method", PARTITIONS)
@pytest.mark.parametrize("n", [1, 3, 10, 25])
def test_disjoint_and_covering(method: str, n: int) -> None:
    parts = partition(LABELS, n, method, **({"min_samples": 5} if method == "dirichlet" else {}))
    assert len(parts) == n
    allidx = _check_disjoint(parts)
    if method == "iid":
        assert len(allidx) >= len(LABELS) - 10 * (n - 1)  # only per-class remainders dropped
    else:
        assert np.array_equal(np.sort(allidx), np.arange(len(LABELS)))


@pytest.mark.parametrize("method", PARTITIONS)
def test_seeds_reproducible(method: str) -> None:
    a = partition(LABELS, 7, method, seed=3)
    b = partition(LABELS, 7, method, seed=3)
    c = partition(LABELS, 7, method, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    if method != "classes":  # with N <= C the class split involves no randomness
        assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_iid_balanced() -> None:
    hist = class_histogram(LABELS, partition(LABELS, 7, "iid"), 10)
    assert (hist == 100 // 7).all()


def test_iid_tiny_data_falls_back_to_round_robin() -> None:
    labels = np.arange(10)  # one sample per class, five agents
    parts = partition(labels, 5, "iid")
    assert [len(p) for p in parts] == [2] * 5
    _check_disjoint(parts)


def test_classes_mod_n() -> None:
    parts = partition(LABELS, 3, "classes")
    hist = class_histogram(LABELS, parts, 10)
    for a in range(3):
        assert set(np.flatnonzero(hist[a])) == {c for c in range(10) if c % 3 == a}
    assert (hist.sum(0) == 100).all()


def test_classes_more_agents_than_classes() -> None:
    parts = partition(LABELS, 25, "classes")  # classes 0-4 on 3 agents, 5-9 on 2
    hist = class_histogram(LABELS, parts, 10)
    for a in range(25):
        assert np.flatnonzero(hist[a]).tolist() == [a % 10]
    assert [len(p) for p in parts[:10:5]] == [34, 50]
    assert (hist.sum(0) == 100).all()


def _mean_max_share(alpha: float) -> float:
    hist = class_histogram(LABELS, partition(LABELS, 10, "dirichlet", alpha=alpha, min_samples=2), 10)
    return float((hist.max(1) / hist.sum(1)).mean())


def test_dirichlet_skew_follows_alpha() -> None:
    assert _mean_max_share(0.05) > 0.6
    assert _mean_max_share(1000.0) < 0.25  # near uniform (0.1 is perfectly uniform)


def test_dirichlet_min_samples_and_no_hang() -> None:
    labels = np.random.default_rng(0).integers(0, 10, 1437)
    t = time.perf_counter()
    parts = partition(labels, 100, "dirichlet", alpha=0.01, min_samples=10)
    assert time.perf_counter() - t < 1.0
    assert min(map(len, parts)) >= 10
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(1437))


def test_dirichlet_lowers_min_samples_to_what_the_data_allows() -> None:
    parts = partition(LABELS, 200, "dirichlet", alpha=0.1, min_samples=10)  # 2000 > 1000 samples
    assert min(map(len, parts)) >= len(LABELS) // 200
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))


def test_shards_give_few_classes() -> None:
    hist = class_histogram(LABELS, partition(LABELS, 10, "shards", shards_per_agent=2), 10)
    assert ((hist > 0).sum(1) <= 2 + 2).all()  # a shard straddles at most one class boundary
    assert (hist.sum(1) == 100).all()


def test_own_classes() -> None:
    assert own_classes(np.array([50, 50, 0, 0])).tolist() == [True, True, False, False]
    assert own_classes(np.array([10, 10, 10, 5])).tolist() == [True, True, True, True]  # 5 >= 0.5 * 35 / 4
    assert own_classes(np.array([97, 1, 1, 1])).tolist() == [True, False, False, False]
    assert not own_classes(np.zeros(3, int)).any()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(n_agents=0), "agents=0 must be >= 1"),
        (dict(n_agents=5000), "agents=5000 but the dataset has 1000 training samples: use fewer agents"),
        (dict(n_agents=3, method="bogus"), "iid, classes, dirichlet, shards"),
        (dict(n_agents=3, method="dirichlet", alpha=0), r"partition.alpha=0 must be > 0"),
        (dict(n_agents=3, method="dirichlet", min_samples=-1), "min_samples=-1 must be >= 0"),
        (dict(n_agents=600, method="shards", shards_per_agent=2), "shards_per_agent=2"),
        (dict(n_agents=3, method="classes"), r"agents \[1\] without samples"),  # class 1 absent
    ],
)
def test_errors(kwargs: dict, match: str) -> None:
    labels = LABELS if kwargs.get("method") != "classes" else np.array([0, 0, 0, 2, 2, 2])
    with pytest.raises(PartitionError, match=match) as e:
        partition(labels, **kwargs)
    assert "\n" not in str(e.value)
