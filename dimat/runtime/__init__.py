"""Backends that host agents: `inprocess` (sequential, exact) and `ray` (actors with several agents each).

A backend exposes the hosts as a list and one verb: run a plain function
`fn(host, *args)` on every host (each with its own arguments, or the same ones)
and return the results in host order. The driver's round loop is the same for
both; the config names a backend class by `backend._target_`.
"""

from __future__ import annotations

from dimat.runtime.base import Backend, HostFailure, assign_agents
from dimat.runtime.host import AgentHost, HostSpec
from dimat.runtime.inprocess import InProcessBackend


def __getattr__(name: str):
    if name == "RayBackend":  # imports ray: only when a config asks for it
        from dimat.runtime.ray_backend import RayBackend

        return RayBackend
    raise AttributeError(name)


__all__ = ["AgentHost", "Backend", "HostFailure", "HostSpec", "InProcessBackend", "RayBackend", "assign_agents"]
