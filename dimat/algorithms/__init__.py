"""What an agent does with its neighbours' states in a round.

An algorithm is a small object living next to the agents (on their host). The
driver decides *when* and *with whom* (the schedule); the algorithm decides
*how* the received states are combined. All math is in pure functions
(`dimat.merge`, `gossip_average`) that tests call directly.
"""

from __future__ import annotations

from dimat.algorithms.base import Algorithm, Received, gossip_average
from dimat.algorithms.consensus import Cdsgd
from dimat.algorithms.cross import Cga
from dimat.algorithms.dimat import Dimat
from dimat.algorithms.gossip import Centralized, Dsgd, Fedavg, Local
from dimat.algorithms.push_sum import Sgp
from dimat.algorithms.tracking import D2, Gt, Qgm

ALGORITHMS: dict[str, type[Algorithm]] = {
    "dimat": Dimat,
    "dsgd": Dsgd,
    "cdsgd": Cdsgd,
    "cdmsgd": Cdsgd,
    "sgp": Sgp,
    "cga": Cga,
    "gt": Gt,
    "d2": D2,
    "qgm": Qgm,
    "fedavg": Fedavg,
    "local": Local,
    "centralized": Centralized,
}


def build_algorithm(name: str, *, merge: dict | None = None, **options) -> Algorithm:
    """The algorithm called `name`, configured by the `algorithm` and `merge` groups."""
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm={name} is unknown: use one of {', '.join(ALGORITHMS)}")
    options.pop("_target_", None)
    return ALGORITHMS[name](merge=dict(merge or {}), **options)


__all__ = ["ALGORITHMS", "Algorithm", "Received", "build_algorithm", "gossip_average"]
