"""Graph builders, time-varying sequences, mixing matrices, spectra and validation.

A builder is ``fn(n, **options)`` returning a networkx graph (or a :class:`Topology` /
:class:`TimeVarying` with its own mixing matrices): the built-in ones below are what
`topology._target_` names, and a user's own has the same shape.
"""

from .builders import (
    BUILDERS, NAMES, bipartite, build, edgelist, erdos_renyi, exponential, from_graph, full, one_peer_exponential,
    ring, small_world, star, torus,
)
from .core import TimeVarying, Topology, TopologyError, union_graph, validate
from .mixing import WEIGHTS, column_stochastic, mixing_matrix

__all__ = [
    "BUILDERS", "NAMES", "WEIGHTS", "TimeVarying", "Topology", "TopologyError", "bipartite", "build",
    "column_stochastic", "edgelist", "erdos_renyi", "exponential", "from_graph", "full", "mixing_matrix",
    "one_peer_exponential", "ring", "small_world", "star", "torus", "union_graph", "validate",
]
