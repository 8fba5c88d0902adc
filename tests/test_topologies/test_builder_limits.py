"""Builder edge cases: small_world's k clamp for small n and erdos_renyi failing fast at p=0."""

from __future__ import annotations

import time

import networkx as nx
import pytest

from topologies import TopologyError, build


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_small_world_clamps_k(n: int) -> None:
    top = build("small_world", n)  # default k=4 would exceed n - 1 and make networkx raise
    assert top.n == n and nx.is_connected(top.graph)
    assert min(d for _, d in top.graph.degree) >= min(2, n - 1)


def test_small_world_needs_k_at_least_2() -> None:
    with pytest.raises(TopologyError, match="k=1.*use k >= 2"):
        build("small_world", 8, k=1, max_tries=3)


def test_erdos_renyi_p0_fails_without_sampling() -> None:
    start = time.perf_counter()
    with pytest.raises(TopologyError, match=r"erdos_renyi\(n=2000, p=0\) has no edges: use a larger p"):
        build("erdos_renyi", 2000, p=0, max_tries=10_000)
    assert time.perf_counter() - start < 0.1
