"""Tests for topologies: every builder's invariants, known spectra, and error messages."""

from __future__ import annotations

import time

import networkx as nx
import numpy as np
import pytest

from topologies import (
    NAMES,
    TimeVarying,
    Topology,
    TopologyError,
    build,
    column_stochastic,
    mixing_matrix,
    validate,
)

# every graph builder at a tiny, small and medium size (torus needs a composite n, small_world n > k=4)
STATIC = [
    (name, n)
    for name in NAMES
    if name not in ("edgelist", "one_peer_exponential")
    for n in ((6, 16) if name in ("torus", "small_world") else (2, 6, 16))
]


def check_invariants(top: Topology, n: int) -> None:
    W = top.W
    assert top.n == n and W.shape == (n, n) and W.dtype == np.float64
    assert sorted(top.graph.nodes) == list(range(n))
    assert (W >= 0).all() and (np.diag(W) > 0).all()
    np.testing.assert_allclose(W.sum(axis=1), 1, atol=1e-12)
    if top.doubly_stochastic:
        np.testing.assert_allclose(W.sum(axis=0), 1, atol=1e-12)
    if not top.directed:
        assert nx.is_connected(top.graph)
        assert ((W > 0) == (W.T > 0)).all()
        for i in range(n):
            assert top.in_neighbors(i) == top.out_neighbors(i) == sorted(top.graph.neighbors(i))
    assert top.num_edges() == sum(len(top.in_neighbors(i)) for i in range(n))


@pytest.mark.parametrize("weights", ["uniform", "metropolis_hastings"])
@pytest.mark.parametrize("name,n", STATIC)
def test_static_builders(name: str, n: int, weights: str) -> None:
    top = build(name, n, weights=weights)
    assert isinstance(top, Topology) and top.name == name and not top.directed
    check_invariants(top, n)
    if weights == "metropolis_hastings":
        assert top.doubly_stochastic and np.allclose(top.W, top.W.T)
    assert 0 < top.spectral_gap() <= 1 + 1e-12


def test_w_is_read_only() -> None:
    with pytest.raises(ValueError):
        build("ring", 4).W[0, 0] = 1.0


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 17])
def test_ring_spectral_gap(n: int) -> None:
    top = build("ring", n)
    if n == 2:
        expected = 1.0  # single edge with weights 1/2: W is the averaging matrix
    else:
        # circulant with 1/3 on the diagonal and both neighbours; the largest non-trivial
        # modulus can come from the most negative eigenvalue (-1/3 for even n).
        eig = [1 / 3 + 2 / 3 * np.cos(2 * np.pi * k / n) for k in range(1, n)]
        expected = 1 - max(abs(e) for e in eig)
    assert top.spectral_gap() == pytest.approx(expected, abs=1e-12)
    assert top.doubly_stochastic and top.num_edges() == (2 if n == 2 else 2 * n)


def test_ring_and_full_shapes() -> None:
    assert build("ring", 5).in_neighbors(0) == [1, 4]
    assert build("full", 7).spectral_gap() == pytest.approx(1.0)
    assert build("full", 7).num_edges() == 42


def test_star_and_bipartite() -> None:
    star = build("star", 5)
    assert star.in_neighbors(0) == [1, 2, 3, 4] and star.in_neighbors(3) == [0]
    assert not star.doubly_stochastic  # uniform weights on an irregular graph
    np.testing.assert_allclose(star.W[0], 0.2)
    np.testing.assert_allclose(star.W[1], [0.5, 0.5, 0, 0, 0])
    bip = build("bipartite", 5)
    assert bip.in_neighbors(0) == [3, 4] and bip.in_neighbors(4) == [0, 1, 2]


def test_metropolis_on_star() -> None:
    W = build("star", 6, weights="metropolis_hastings").W
    np.testing.assert_allclose(W, W.T)
    np.testing.assert_allclose(W.sum(axis=0), 1)
    np.testing.assert_allclose(W[0, 1:], 1 / 6)
    np.testing.assert_allclose(np.diag(W)[1:], 5 / 6)


def test_torus() -> None:
    top = build("torus", 32)
    assert {d for _, d in top.graph.degree} == {4} and top.doubly_stochastic
    assert top.in_neighbors(0) == [1, 7, 8, 24]  # 4 rows x 8 cols
    assert build("torus", 32, rows=2).in_neighbors(0) == [1, 15, 16]  # 2x16: up and down coincide
    assert build("torus", 4).graph.number_of_edges() == 4  # 2x2: every wrap-around duplicates
    with pytest.raises(TopologyError, match="prime.*ring"):
        build("torus", 7)
    with pytest.raises(TopologyError, match="rows=3"):
        build("torus", 8, rows=3)


def test_exponential() -> None:
    top = build("exponential", 8)
    assert top.in_neighbors(0) == [1, 2, 4, 6, 7]
    assert top.doubly_stochastic


def test_erdos_renyi() -> None:
    a, b = build("erdos_renyi", 12, p=0.5, seed=3), build("erdos_renyi", 12, p=0.5, seed=3)
    assert nx.is_connected(a.graph) and set(a.graph.edges) == set(b.graph.edges)
    start = time.perf_counter()
    with pytest.raises(TopologyError, match=r"p=0\b.*larger p"):
        build("erdos_renyi", 12, p=0, max_tries=20)
    assert time.perf_counter() - start < 1


def test_small_world_reproducible() -> None:
    a, b = build("small_world", 20, k=4, rewire=0.3, seed=1), build("small_world", 20, k=4, rewire=0.3, seed=1)
    assert set(a.graph.edges) == set(b.graph.edges)


def test_one_peer_exponential() -> None:
    tv = build("one_peer_exponential", 8)
    assert isinstance(tv, TimeVarying) and len(tv.steps) == 3 and tv.at(4) is tv.steps[1]
    for t, step in enumerate(tv.steps):
        check_invariants(step, 8)
        assert step.directed and step.doubly_stochastic
        assert step.in_neighbors(5) == [(5 - 2**t) % 8] and step.out_neighbors(5) == [(5 + 2**t) % 8]
    np.testing.assert_allclose(tv.product(), np.full((8, 8), 1 / 8), atol=1e-15)
    assert tv.spectral_gap() == pytest.approx(1.0)
    with pytest.raises(TopologyError, match="power-of-2"):
        build("one_peer_exponential", 6)


def test_edgelist(tmp_path) -> None:
    f = tmp_path / "g.txt"
    f.write_text("# triangle plus tail\n0 1 0.25\n1 2 0.25\n2 0 0.25  # closing edge\n\n2 3 0.2\n")
    top = build("edgelist", 4, path=str(f))
    assert top.in_neighbors(2) == [0, 1, 3]
    filed = build("edgelist", 4, path=str(f), weights="file")
    assert filed.W[2, 3] == filed.W[3, 2] == 0.2 and filed.doubly_stochastic
    assert filed.W[2, 2] == pytest.approx(0.3) and filed.W[3, 3] == pytest.approx(0.8)
    with pytest.raises(TopologyError, match=rf"edge list {f} numbers agents up to 3 \(4 named\), but agents=5 asks for agents 0..4: fix the file, or set agents=4"):
        build("edgelist", 5, path=str(f))
    with pytest.raises(TopologyError, match="not found"):
        build("edgelist", 4, path=str(tmp_path / "missing.txt"))
    f.write_text("0 1\n0 x\n")
    with pytest.raises(TopologyError, match=r"g.txt:2: expected 'i j', 'i j w'"):
        build("edgelist", 2, path=str(f))
    f.write_text("0 1\n2 3\n")
    with pytest.raises(TopologyError, match=r"not connected \(2 connected components\)"):
        build("edgelist", 4, path=str(f))


def test_column_stochastic() -> None:
    for top in (build("star", 6), build("one_peer_exponential", 4).steps[1]):
        A = column_stochastic(top)
        np.testing.assert_allclose(A.sum(axis=0), 1)
        assert ((A > 0) == (top.W > 0)).all()
    np.testing.assert_allclose(column_stochastic(build("star", 6))[1:, 0], 1 / 6)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: build("hypercube", 4), "unknown topology 'hypercube'.*ring"),
        (lambda: build("ring", 4, weights="max"), "unknown weights.*metropolis_hastings"),
        (lambda: build("ring", 1), "agents=1: need at least 2 agents"),
        (lambda: mixing_matrix(nx.path_graph(3), "file"), "weights='file'"),
    ],
)
def test_build_errors(call, match: str) -> None:
    with pytest.raises(TopologyError, match=match):
        call()


def _top(W: np.ndarray, g: nx.Graph | None = None, doubly: bool = False) -> Topology:
    return Topology("t", len(W), g if g is not None else nx.complete_graph(len(W)), W, False, doubly)


@pytest.mark.parametrize(
    "top,match",
    [
        (_top(np.full((3, 3), np.nan)), "NaN"),
        (_top(np.array([[1.5, -0.5], [0.5, 0.5]])), "negative"),
        (_top(np.full((3, 3), 0.5)), "row 0 of W sums to 1.5"),
        (_top(build("star", 4).W, build("star", 4).graph, doubly=True), "promised doubly stochastic"),
        (_top(np.full((3, 3), 1 / 3), nx.path_graph(3)), "do not match the graph"),
        (_top(np.eye(3), nx.empty_graph(3)), r"not connected \(3 connected components\)"),
    ],
)
def test_validate_errors(top: Topology, match: str) -> None:
    with pytest.raises(TopologyError, match=match):
        validate(top)


def test_validate_n_expected() -> None:
    top = build("ring", 4)
    assert validate(top, n_expected=4) is top
    with pytest.raises(TopologyError, match="4 agents but 5 were expected"):
        validate(top, n_expected=5)
