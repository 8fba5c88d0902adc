"""What an agent does with its neighbours' messages in a round.

An algorithm is a small object living next to the agents (on their host), one
subclass of :class:`Algorithm` per file; the config names it by `_target_`. The
driver decides *when* and *with whom* (the schedule); the algorithm decides
*what* travels and *how* it is combined. All math is in pure functions
(`dimat.merge`, `gossip_average`, `cross.aggregate`) that tests call directly.
"""

from __future__ import annotations

from dimat.algorithms.base import SERVER, Algorithm, Phase, Received, gossip_average, optimizer_settings
from dimat.algorithms.choco import Choco
from dimat.algorithms.consensus import Cdmsgd, Cdsgd
from dimat.algorithms.cross import Cga
from dimat.algorithms.dimat import Dimat
from dimat.algorithms.gossip import Centralized, Dsgd, Fedavg, Local
from dimat.algorithms.push_sum import Sgp
from dimat.algorithms.tracking import D2, Gt, Qgm

ALGORITHMS: dict[str, type[Algorithm]] = {
    cls.name: cls for cls in (Dimat, Dsgd, Choco, Cdsgd, Cdmsgd, Sgp, Cga, Gt, D2, Qgm, Fedavg, Local, Centralized)
}


def build_algorithm(name: str, **options) -> Algorithm:
    """The built-in algorithm called `name` with its constructor's `options` (Python use and tests)."""
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm={name} is unknown: use one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name](**options)


__all__ = [
    "ALGORITHMS", "SERVER", "Algorithm", "Cdmsgd", "Cdsgd", "Centralized", "Cga", "Choco", "D2", "Dimat", "Dsgd", "Fedavg", "Gt",
    "Local", "Phase", "Qgm", "Received", "Sgp", "build_algorithm", "gossip_average", "optimizer_settings",
]
