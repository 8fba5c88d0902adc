"""Named topology builders; :func:`build` is the single entry point and always validates."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np

from .core import TimeVarying, Topology, TopologyError, validate
from .mixing import WEIGHTS, mixing_matrix


@dataclass(frozen=True)
class _Options:
    seed: int
    p: float
    k: int
    rewire: float
    path: str | None
    max_tries: int
    rows: int | None


def _ring(n: int, o: _Options) -> nx.Graph:
    return nx.Graph([(0, 1)]) if n == 2 else nx.cycle_graph(n)


def _full(n: int, o: _Options) -> nx.Graph:
    return nx.complete_graph(n)


def _star(n: int, o: _Options) -> nx.Graph:
    return nx.star_graph(n - 1)  # node 0 is the hub


def _torus(n: int, o: _Options) -> nx.Graph:
    rows = o.rows
    if rows is None:
        rows = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
        if rows == 1:
            raise TopologyError(f"torus needs a composite number of agents but {n} is prime: use 'ring' or change n")
    elif rows < 2 or n % rows or n // rows < 2:
        raise TopologyError(f"torus rows={rows} does not split n={n} into a grid with both sides >= 2: pick a divisor")
    cols = n // rows
    g = nx.Graph()  # a Graph dedupes the coinciding wrap-around edges of sides of length 2
    g.add_nodes_from(range(n))
    for r in range(rows):
        for c in range(cols):
            g.add_edge(r * cols + c, r * cols + (c + 1) % cols)
            g.add_edge(r * cols + c, ((r + 1) % rows) * cols + c)
    return g


def _erdos_renyi(n: int, o: _Options) -> nx.Graph:
    if not 0 <= o.p <= 1:
        raise TopologyError(f"erdos_renyi p={o.p} is not a probability: use 0 <= p <= 1")
    larger = f"use a larger p (about log(n)/n = {math.log(n) / n:.2f} or more)"
    if o.p == 0:  # no edges ever, so resampling cannot help: fail at once
        raise TopologyError(f"erdos_renyi(n={n}, p=0) has no edges: {larger}")
    tries = max(o.max_tries, 1)
    for seed in range(o.seed, o.seed + tries):
        g = nx.gnp_random_graph(n, o.p, seed=seed)
        if nx.is_connected(g):
            return g
    raise TopologyError(f"erdos_renyi(n={n}, p={o.p}) was disconnected for {tries} seeds from {o.seed}: {larger}")


def _exponential(n: int, o: _Options) -> nx.Graph:
    g = nx.Graph()
    g.add_nodes_from(range(n))
    hops = [2**e for e in range(n.bit_length()) if 2**e < n]
    g.add_edges_from((i, (i + h) % n) for i in range(n) for h in hops)
    return g


def _small_world(n: int, o: _Options) -> nx.Graph:
    # Clamp k so the default k=4 works for small n; n=2 keeps k=2 (= n), which networkx
    # turns into the single edge, since its lattice needs k >= 2 to have any edges.
    k = min(o.k, max(n - 1, 2))
    try:
        return nx.connected_watts_strogatz_graph(n, k, o.rewire, tries=max(o.max_tries, 1), seed=o.seed)
    except nx.NetworkXError as e:
        raise TopologyError(f"small_world(n={n}, k={o.k}, rewire={o.rewire}) failed ({e}): use k >= 2") from e


def _bipartite(n: int, o: _Options) -> nx.Graph:
    return nx.complete_bipartite_graph(math.ceil(n / 2), n - math.ceil(n / 2))


def _edgelist(n: int, o: _Options) -> nx.Graph:
    if o.path is None:
        raise TopologyError("builder 'edgelist' needs path=<file with 'i j' or 'i j w' lines>")
    path = Path(o.path)
    if not path.is_file():
        raise TopologyError(f"edge list {path} not found: pass an existing file as path")
    g = nx.Graph()
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            if len(fields) not in (2, 3):
                raise ValueError
            i, j = int(fields[0]), int(fields[1])
            attrs = {"weight": float(fields[2])} if len(fields) == 3 else {}
        except ValueError:
            raise TopologyError(f"edge list {path}:{lineno}: expected 'i j' or 'i j w', got {line.strip()!r}") from None
        if i < 0 or j < 0 or i == j:
            raise TopologyError(f"edge list {path}:{lineno}: need two distinct 0-based agent ids, got {i} {j}")
        g.add_edge(i, j, **attrs)
    if g.number_of_nodes() == 0:
        raise TopologyError(f"edge list {path} has no edges: add 'i j' lines")
    found = max(g.nodes) + 1
    if found != n:
        raise TopologyError(f"edge list {path} has {found} nodes but agents={n}: set agents={found} or fix the file")
    g.add_nodes_from(range(n))  # ids missing from the file become isolated agents, caught by validation
    return g


_STATIC: dict[str, Callable[[int, _Options], nx.Graph]] = {
    "ring": _ring,
    "full": _full,
    "star": _star,
    "torus": _torus,
    "erdos_renyi": _erdos_renyi,
    "exponential": _exponential,
    "small_world": _small_world,
    "bipartite": _bipartite,
    "edgelist": _edgelist,
}

NAMES: tuple[str, ...] = (*_STATIC, "one_peer_exponential")


def _one_peer_exponential(n: int) -> TimeVarying:
    """Step ``t`` of ``log2 n``: agent ``i`` averages with ``(i - 2^t) mod n``; one period averages exactly."""
    if n & (n - 1):
        raise TopologyError(
            f"one_peer_exponential needs a power-of-2 number of agents, got {n}: use e.g. {1 << n.bit_length()}"
        )
    steps = []
    for t in range(n.bit_length() - 1):
        src = [(i - 2**t) % n for i in range(n)]
        W = 0.5 * np.eye(n)
        W[range(n), src] += 0.5
        g = nx.DiGraph()
        g.add_nodes_from(range(n))
        g.add_edges_from(zip(src, range(n)))  # edge j -> i: j sends to i
        steps.append(Topology(f"one_peer_exponential/t={t}", n, g, W, directed=True, doubly_stochastic=True))
    return TimeVarying("one_peer_exponential", n, tuple(steps))


def build(
    name: str,
    n: int,
    *,
    weights: str = "uniform",
    seed: int = 0,
    p: float = 0.3,
    k: int = 4,
    rewire: float = 0.1,
    path: str | None = None,
    max_tries: int = 100,
    rows: int | None = None,
) -> Topology | TimeVarying:
    """Build and validate the topology ``name`` over ``n`` agents (see :data:`NAMES`)."""
    if name not in NAMES:
        raise TopologyError(f"unknown topology '{name}': use one of {', '.join(NAMES)}")
    if weights not in WEIGHTS:
        raise TopologyError(f"unknown weights '{weights}': use one of {', '.join(WEIGHTS)}")
    if n < 2:
        raise TopologyError(f"agents={n}: need at least 2 agents")
    if name == "one_peer_exponential":
        return validate(_one_peer_exponential(n), n_expected=n)
    graph = _STATIC[name](n, _Options(seed, p, k, rewire, path, max_tries, rows))
    W = mixing_matrix(graph, weights)
    # uniform weights give equal column sums only when every agent has the same degree
    regular = len({d for _, d in graph.degree}) == 1
    doubly = weights != "uniform" or regular
    return validate(Topology(name, n, graph, W, directed=False, doubly_stochastic=doubly), n_expected=n)
