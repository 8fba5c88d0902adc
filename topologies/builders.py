"""Topology builders: functions of the agent count returning a networkx graph (or a time-varying sequence).

These are what `topology._target_` names (`topologies.ring`, ...); a user's own
builder has the same shape, ``fn(n, **options)``, and may also return a
:class:`Topology` with its own ``W``. :func:`from_graph` turns a graph into a
validated :class:`Topology` (mixing weights chosen by ``weights``);
:func:`build` does both for a built-in name.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from pathlib import Path

import networkx as nx
import numpy as np

from .core import TimeVarying, Topology, TopologyError, validate
from .mixing import WEIGHTS, mixing_matrix


def ring(n: int) -> nx.Graph:
    """A cycle: each agent hears its two neighbours."""
    return nx.Graph([(0, 1)]) if n == 2 else nx.cycle_graph(n)


def full(n: int) -> nx.Graph:
    """Everyone hears everyone."""
    return nx.complete_graph(n)


def star(n: int) -> nx.Graph:
    """Agent 0 is the hub."""
    return nx.star_graph(n - 1)


def torus(n: int, rows: int | None = None) -> nx.Graph:
    """A 2-d wrap-around grid of ``rows`` rows (None: the most square one)."""
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


def erdos_renyi(n: int, p: float = 0.3, max_tries: int = 100, seed: int = 0) -> nx.Graph:
    """G(n, p), redrawn with the next seed until connected (at most ``max_tries`` draws)."""
    if not 0 <= p <= 1:
        raise TopologyError(f"erdos_renyi p={p} is not a probability: use 0 <= p <= 1")
    larger = f"use a larger p (about log(n)/n = {math.log(n) / n:.2f} or more)"
    if p == 0:  # no edges ever, so resampling cannot help: fail at once
        raise TopologyError(f"erdos_renyi(n={n}, p=0) has no edges: {larger}")
    tries = max(max_tries, 1)
    for s in range(seed, seed + tries):
        g = nx.gnp_random_graph(n, p, seed=s)
        if nx.is_connected(g):
            return g
    raise TopologyError(f"erdos_renyi(n={n}, p={p}) was disconnected for {tries} seeds from {seed}: {larger}")


def exponential(n: int) -> nx.Graph:
    """Agent i hears i ± 2^k for every power of two below n."""
    g = nx.Graph()
    g.add_nodes_from(range(n))
    hops = [2**e for e in range(n.bit_length()) if 2**e < n]
    g.add_edges_from((i, (i + h) % n) for i in range(n) for h in hops)
    return g


def small_world(n: int, k: int = 4, rewire: float = 0.1, max_tries: int = 100, seed: int = 0) -> nx.Graph:
    """Connected Watts-Strogatz: a ring lattice of ``k`` neighbours, each edge rewired with prob. ``rewire``."""
    # Clamp k so the default k=4 works for small n; n=2 keeps k=2 (= n), which networkx
    # turns into the single edge, since its lattice needs k >= 2 to have any edges.
    kk = min(k, max(n - 1, 2))
    try:
        return nx.connected_watts_strogatz_graph(n, kk, rewire, tries=max(max_tries, 1), seed=seed)
    except nx.NetworkXError as e:
        raise TopologyError(f"small_world(n={n}, k={k}, rewire={rewire}) failed ({e}): use k >= 2") from e


def bipartite(n: int) -> nx.Graph:
    """Complete bipartite graph between the first ceil(n/2) agents and the rest."""
    return nx.complete_bipartite_graph(math.ceil(n / 2), n - math.ceil(n / 2))


def edgelist(n: int, path: str | None = None) -> nx.Graph:
    """A graph from a file of 'i j' or 'i j w' lines (0-based agent ids; w: an edge weight for weights=file)."""
    if path is None:
        raise TopologyError("builder 'edgelist' needs path=<file with 'i j' or 'i j w' lines>")
    path = Path(path)
    if not path.is_file():
        raise TopologyError(f"edge list {path} not found: pass an existing file as path")
    g = nx.Graph()
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        named = [f for f in fields if "=" in f]  # link attributes: bandwidth=<bit/s> latency=<s> (network clock)
        fields = [f for f in fields if "=" not in f]
        try:
            if len(fields) not in (2, 3):
                raise ValueError
            i, j = int(fields[0]), int(fields[1])
            attrs = {"weight": float(fields[2])} if len(fields) == 3 else {}
            for item in named:
                key, value = item.split("=", 1)
                if key not in ("bandwidth", "latency"):
                    raise TopologyError(f"edge list {path}:{lineno}: {key}= is not a link attribute: use bandwidth= "
                                        "(bit/s) or latency= (s)")
                attrs[key] = float(value)
        except ValueError:
            raise TopologyError(f"edge list {path}:{lineno}: expected 'i j', 'i j w' and optional bandwidth=B "
                                f"latency=L, got {line.strip()!r}") from None
        if i < 0 or j < 0 or i == j:
            raise TopologyError(f"edge list {path}:{lineno}: need two distinct 0-based agent ids, got {i} {j}")
        g.add_edge(i, j, **attrs)
    if g.number_of_nodes() == 0:
        raise TopologyError(f"edge list {path} has no edges: add 'i j' lines")
    found = max(g.nodes) + 1
    if found != n:
        raise TopologyError(f"edge list {path} numbers agents up to {found - 1} ({g.number_of_nodes()} named), but "
                            f"agents={n} asks for agents 0..{n - 1}: fix the file, or set agents={found} if it "
                            f"describes {found} agents")
    g.add_nodes_from(range(n))  # ids missing from the file become isolated agents, caught by validation
    return g


def one_peer_exponential(n: int) -> TimeVarying:
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
    return validate(TimeVarying("one_peer_exponential", n, tuple(steps)), n_expected=n)


BUILDERS: dict[str, Callable[..., nx.Graph | TimeVarying]] = {
    "ring": ring, "full": full, "star": star, "torus": torus, "erdos_renyi": erdos_renyi, "exponential": exponential,
    "small_world": small_world, "bipartite": bipartite, "edgelist": edgelist,
    "one_peer_exponential": one_peer_exponential,
}
NAMES: tuple[str, ...] = tuple(BUILDERS)


def from_graph(graph: nx.Graph | nx.DiGraph, weights: str = "uniform", *, name: str = "graph",
               n: int | None = None) -> Topology:
    """A validated :class:`Topology` on ``graph`` (nodes 0..n-1).

    Undirected: ``W = mixing_matrix(graph, weights)``. Directed (an edge j -> i means j sends to i):
    every agent averages itself and its in-neighbours with equal weights (``weights`` must be uniform).
    """
    if weights not in WEIGHTS:
        raise TopologyError(f"unknown weights '{weights}': use one of {', '.join(WEIGHTS)}")
    n = graph.number_of_nodes() if n is None else n
    if n < 2:
        raise TopologyError(f"agents={n}: need at least 2 agents")
    if set(graph.nodes) != set(range(n)):
        raise TopologyError(f"topology '{name}': graph nodes must be exactly 0..{n - 1} for agents={n}: "
                            "build it with n nodes labelled 0..n-1")
    if graph.is_directed():
        if weights != "uniform":
            raise TopologyError(f"topology '{name}' is directed: weights={weights} is for undirected graphs; "
                                "use weights=uniform (in-neighbours and self averaged)")
        adj = nx.to_numpy_array(graph, nodelist=range(n), weight=None).T > 0  # adj[i, j]: j sends to i
        np.fill_diagonal(adj, True)
        W = adj / adj.sum(axis=1, keepdims=True)
        doubly = bool(np.allclose(W.sum(axis=0), 1.0))
        return validate(Topology(name, n, graph, W, directed=True, doubly_stochastic=doubly), n_expected=n)
    W = mixing_matrix(graph, weights)
    # uniform weights give equal column sums only when every agent has the same degree
    regular = len({d for _, d in graph.degree}) == 1
    doubly = weights != "uniform" or regular
    return validate(Topology(name, n, graph, W, directed=False, doubly_stochastic=doubly), n_expected=n)


def build(name: str, n: int, *, weights: str = "uniform", **options) -> Topology | TimeVarying:
    """Build and validate the built-in topology ``name`` over ``n`` agents (see :data:`NAMES`) with that
    builder's ``options`` (e.g. ``p``, ``seed`` for erdos_renyi)."""
    if name not in NAMES:
        raise TopologyError(f"unknown topology '{name}': use one of {', '.join(NAMES)}")
    if weights not in WEIGHTS:
        raise TopologyError(f"unknown weights '{weights}': use one of {', '.join(WEIGHTS)}")
    if n < 2:
        raise TopologyError(f"agents={n}: need at least 2 agents")
    builder = BUILDERS[name]
    unknown = sorted(set(options) - set(inspect.signature(builder).parameters))
    if unknown:
        raise TopologyError(f"topology {name} takes no option {', '.join(unknown)}")
    out = builder(n, **options)
    if isinstance(out, TimeVarying):
        if weights != "uniform":
            raise TopologyError(f"topology {name} brings its own mixing weights: drop weights={weights}")
        return out
    return from_graph(out, weights, name=name, n=n)
