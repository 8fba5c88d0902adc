"""Backends that host agents: `inprocess` (sequential, exact) and `ray` (actors with several agents each).

A backend exposes the hosts as a list and one verb: run a plain function
`fn(host, *args)` on every host (each with its own arguments, or the same ones)
and return the results in host order. The driver's round loop is the same for
both; the config names a backend class by `backend._target_`.

The names below are imported on first use, so that importing a light module of
this package (`dimat.runtime.prestart`) does not import torch or Ray.
"""

from __future__ import annotations

import importlib

_NAMES = {
    "Backend": "dimat.runtime.base", "HostFailure": "dimat.runtime.base", "assign_agents": "dimat.runtime.base",
    "AgentHost": "dimat.runtime.host", "HostSpec": "dimat.runtime.host",
    "InProcessBackend": "dimat.runtime.inprocess", "RayBackend": "dimat.runtime.ray_backend",
}


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'dimat.runtime' has no attribute {name!r}")


__all__ = sorted(_NAMES)
