"""Topology values and their validation.

A :class:`Topology` pairs a communication graph with the mixing matrix ``W``
used by gossip: agent ``i`` replaces its state by ``sum_j W[i, j] x_j``, so row
``i`` holds the weights ``i`` gives to what it receives and ``W[i, j] > 0``
exactly when ``j`` sends to ``i`` (or ``j == i``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import networkx as nx
import numpy as np

TOL = 1e-9  # stochasticity tolerance; loose enough for float sums, tight enough to catch bugs


class TopologyError(ValueError):
    """A topology cannot be built or is invalid; the message says how to fix it."""


def _gap(W: np.ndarray) -> float:
    """1 - |lambda_2|: second-largest eigenvalue modulus of a stochastic matrix."""
    moduli = np.sort(np.abs(np.linalg.eigvals(W)))[::-1]
    return float(1.0 - moduli[1])


def _readonly(W: np.ndarray) -> np.ndarray:
    # A private read-only copy keeps a frozen value frozen all the way down.
    out = np.array(W, dtype=np.float64)
    out.flags.writeable = False
    return out


@dataclass(frozen=True, eq=False)
class Topology:
    """A communication graph (nodes ``0..n-1``) and its mixing matrix ``W``."""

    name: str
    n: int
    graph: nx.Graph | nx.DiGraph
    W: np.ndarray
    directed: bool
    doubly_stochastic: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "W", _readonly(self.W))

    def in_neighbors(self, i: int) -> list[int]:
        """Agents whose state ``i`` receives (sorted, excluding ``i``)."""
        return [int(j) for j in np.flatnonzero(self.W[i] > 0) if j != i]

    def out_neighbors(self, i: int) -> list[int]:
        """Agents that receive ``i``'s state (sorted, excluding ``i``)."""
        return [int(j) for j in np.flatnonzero(self.W[:, i] > 0) if j != i]

    def spectral_gap(self) -> float:
        """``1 - |lambda_2(W)|``; larger means faster consensus."""
        return _gap(self.W)

    def num_edges(self) -> int:
        """Directed transfers per full gossip round (nonzero off-diagonal entries)."""
        return int(np.count_nonzero(self.W) - np.count_nonzero(np.diag(self.W)))


@dataclass(frozen=True, eq=False)
class TimeVarying:
    """A periodic sequence of topologies: round ``t`` uses ``steps[t % len(steps)]``."""

    name: str
    n: int
    steps: tuple[Topology, ...]

    def at(self, t: int) -> Topology:
        return self.steps[t % len(self.steps)]

    def product(self) -> np.ndarray:
        """Mixing over one period, ``W_{T-1} ... W_1 W_0`` (later rounds act last)."""
        P = np.eye(self.n)
        for step in self.steps:
            P = step.W @ P
        return P

    def spectral_gap(self) -> float:
        """Spectral gap of one period's product of mixing matrices."""
        return _gap(self.product())


T = TypeVar("T", Topology, TimeVarying)


def validate(top: T, n_expected: int | None = None) -> T:
    """Check ``top`` and return it unchanged; raise :class:`TopologyError` on the first problem.

    A :class:`TimeVarying` has every step checked except connectivity, which is
    required of the union of its steps (single steps may be disconnected).
    """
    if top.n < 2:
        raise TopologyError(f"agents={top.n}: need at least 2 agents")
    if n_expected is not None and top.n != n_expected:
        raise TopologyError(
            f"topology '{top.name}' has {top.n} agents but {n_expected} were expected: "
            f"build it with n={n_expected}"
        )
    if isinstance(top, Topology):
        _check_step(top)
        _check_connected(top.name, top.graph)
        return top
    if not top.steps:
        raise TopologyError(f"time-varying topology '{top.name}' has no steps: give at least one")
    for step in top.steps:
        if step.n != top.n:
            raise TopologyError(
                f"time-varying topology '{top.name}': step '{step.name}' has {step.n} agents, "
                f"not {top.n}: build all steps with the same n"
            )
        _check_step(step)
    _check_connected(top.name, union_graph(top))
    return top


def union_graph(top: Topology | TimeVarying) -> nx.Graph | nx.DiGraph:
    """Every edge the topology ever uses: its graph, or the union of a time-varying sequence's steps."""
    if isinstance(top, Topology):
        return top.graph
    return nx.compose_all([s.graph for s in top.steps])


def _check_step(top: Topology) -> None:
    """Everything but connectivity: shape, entries, graph agreement, stochasticity."""
    name, n, W, g = top.name, top.n, top.W, top.graph
    if W.shape != (n, n):
        raise TopologyError(f"topology '{name}': W has shape {W.shape}, expected ({n}, {n}): rebuild W for n={n}")
    if not np.isfinite(W).all():
        raise TopologyError(f"topology '{name}': W contains NaN or inf: check the edge weights")
    if (W < 0).any():
        i, j = np.argwhere(W < 0)[0]
        raise TopologyError(
            f"topology '{name}': W[{i},{j}]={W[i, j]:.3g} is negative: weights must be >= 0 "
            "(with weights='file', each agent's edge weights must sum to < 1)"
        )
    if (np.diag(W) <= 0).any():
        i = int(np.flatnonzero(np.diag(W) <= 0)[0])
        raise TopologyError(
            f"topology '{name}': W[{i},{i}]=0: every agent needs a positive self weight "
            "(with weights='file', keep each agent's edge weights below 1)"
        )
    if top.directed != g.is_directed():
        raise TopologyError(
            f"topology '{name}': directed={top.directed} but the graph is "
            f"{'directed' if g.is_directed() else 'undirected'}: make them agree"
        )
    if set(g.nodes) != set(range(n)):
        raise TopologyError(f"topology '{name}': graph nodes must be exactly 0..{n - 1}: relabel the graph")
    if nx.number_of_selfloops(g):
        raise TopologyError(f"topology '{name}': graph has self-loops: remove them (self weight lives on W's diagonal)")
    off = (W > 0) & ~np.eye(n, dtype=bool)
    if not top.directed and (off != off.T).any():
        raise TopologyError(f"topology '{name}': undirected but W's sparsity is not symmetric: use a DiGraph or fix W")
    # adj[j, i] = 1 for an edge j -> i, and j -> i means W[i, j] > 0.
    adj = nx.to_numpy_array(g, nodelist=range(n), weight=None) > 0
    if (off != adj.T).any():
        raise TopologyError(
            f"topology '{name}': W's nonzeros do not match the graph's edges: W[i, j] > 0 iff j sends to i"
        )
    rows = W.sum(axis=1)
    if np.abs(rows - 1).max() > TOL:
        i = int(np.argmax(np.abs(rows - 1)))
        raise TopologyError(f"topology '{name}': row {i} of W sums to {rows[i]:.12g}, not 1: normalise W's rows")
    cols = W.sum(axis=0)
    if top.doubly_stochastic and np.abs(cols - 1).max() > TOL:
        j = int(np.argmax(np.abs(cols - 1)))
        raise TopologyError(
            f"topology '{name}': promised doubly stochastic but column {j} sums to {cols[j]:.12g}: "
            "use weights='metropolis_hastings' or set doubly_stochastic=False"
        )


def _check_connected(name: str, g: nx.Graph | nx.DiGraph) -> None:
    if g.is_directed():
        k = nx.number_strongly_connected_components(g)
        kind = "strongly connected components"
    else:
        k = nx.number_connected_components(g)
        kind = "connected components"
    if k != 1:
        raise TopologyError(
            f"topology '{name}' is not connected ({k} {kind}): add edges so every agent can reach every other"
        )
