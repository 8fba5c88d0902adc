"""Mixing matrices: row-stochastic gossip weights and column-stochastic push-sum weights."""

from __future__ import annotations

import networkx as nx
import numpy as np

from .core import Topology, TopologyError

WEIGHTS: tuple[str, ...] = ("uniform", "metropolis_hastings", "file")


def mixing_matrix(graph: nx.Graph, weights: str = "uniform") -> np.ndarray:
    """Row-stochastic ``W`` for an undirected graph with nodes ``0..n-1``.

    * ``uniform``: ``1/(deg(i)+1)`` for neighbours and self (DIMAT's choice);
      doubly stochastic only on regular graphs.
    * ``metropolis_hastings``: ``1/(1+max(deg i, deg j))``, self weight takes the
      rest; symmetric and doubly stochastic on any graph.
    * ``file``: the edges' ``weight`` attributes, self weight takes the rest.
    """
    if graph.is_directed():
        raise TopologyError("mixing_matrix needs an undirected graph: build W for a DiGraph directly")
    if weights not in WEIGHTS:
        raise TopologyError(f"unknown weights '{weights}': use one of {', '.join(WEIGHTS)}")
    n = graph.number_of_nodes()
    deg = np.array([graph.degree(i) for i in range(n)], dtype=np.float64)
    W = np.zeros((n, n))
    if weights == "uniform":
        for i, j in graph.edges:
            W[i, j], W[j, i] = 1 / (deg[i] + 1), 1 / (deg[j] + 1)
        np.fill_diagonal(W, 1 / (deg + 1))
        return W
    for i, j, w in graph.edges(data="weight"):
        if weights == "file" and w is None:
            raise TopologyError(
                f"weights='file' needs a weight on every edge but ({i}, {j}) has none: "
                "use builder 'edgelist' with 'i j w' lines"
            )
        W[i, j] = W[j, i] = 1 / (1 + max(deg[i], deg[j])) if weights == "metropolis_hastings" else w
    np.fill_diagonal(W, 1 - W.sum(axis=1))
    return W


def column_stochastic(top: Topology) -> np.ndarray:
    """Push-sum (SGP) weights: ``A[i, j] = 1/(outdeg(j)+1)`` for ``j -> i`` and ``j == i``.

    Each sender splits its mass evenly over itself and its out-neighbours, so
    columns sum to 1 even on directed or irregular graphs.
    """
    mask = (top.W > 0).astype(np.float64)  # diagonal is always positive in a valid topology
    return mask / mask.sum(axis=0, keepdims=True)
