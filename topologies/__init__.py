"""Graph builders, time-varying sequences, mixing matrices, spectra and validation."""

from .builders import NAMES, build
from .core import TimeVarying, Topology, TopologyError, validate
from .mixing import WEIGHTS, column_stochastic, mixing_matrix

__all__ = [
    "NAMES",
    "WEIGHTS",
    "TimeVarying",
    "Topology",
    "TopologyError",
    "build",
    "column_stochastic",
    "mixing_matrix",
    "validate",
]
