"""Backends that host agents: `inprocess` (sequential, exact) and `ray` (actors with several agents each).

A backend exposes the hosts as a list and one verb, `call`: run a host method
on every host (each with its own arguments, or the same ones) and return the
results in host order. The driver's round loop is the same for both.
"""

from __future__ import annotations

from dimat.runtime.base import Backend, assign_agents
from dimat.runtime.inprocess import InProcessBackend

BACKENDS = ("inprocess", "ray")


def build_backend(cfg: dict, dataset, parts) -> Backend:
    name = cfg["backend"]["name"]
    if name == "inprocess":
        return InProcessBackend(cfg, dataset, parts)
    if name == "ray":
        from dimat.runtime.ray_backend import RayBackend

        return RayBackend(cfg, dataset, parts)
    raise ValueError(f"backend={name} is unknown: use one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "assign_agents", "build_backend"]
