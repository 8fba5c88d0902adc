"""The backend interface shared by the in-process and Ray runtimes."""

from __future__ import annotations

from typing import Any, Sequence


def assign_agents(n_agents: int, n_hosts: int) -> list[list[int]]:
    """Contiguous blocks of agents per host (ring neighbours mostly share a host)."""
    n_hosts = max(1, min(n_hosts, n_agents))
    bounds = [round(h * n_agents / n_hosts) for h in range(n_hosts + 1)]
    return [list(range(bounds[h], bounds[h + 1])) for h in range(n_hosts)]


def resolve_device(device: str, gpu_available: bool) -> str:
    """`backend.device` → the torch device the agents use ("auto": cuda when a GPU is there)."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"backend.device={device} is unknown: use auto, cpu or cuda")
    if device == "cuda" and not gpu_available:
        raise ValueError("backend.device=cuda but no GPU is visible: use backend.device=auto or cpu")
    return "cuda" if device == "cuda" or (device == "auto" and gpu_available) else "cpu"


class HostFailure(RuntimeError):
    """An agent host died or stopped answering; `host` is its index."""

    def __init__(self, host: int, what: str):
        super().__init__(f"agent host {host} {what}")
        self.host = host


class Backend:
    """Hosts agents; `groups[h]` lists the agents living on host h."""

    groups: list[list[int]]
    comm: str = "object_store"  # how neighbour states travel: object_store | torch

    def call(self, method: str, *args: Any) -> list[Any]:
        """`method(*args)` on every host; results in host order."""
        return self.call_each(method, [args] * len(self.groups))

    def call_each(self, method: str, args: Sequence[tuple]) -> list[Any]:
        raise NotImplementedError

    def call_one(self, host: int, method: str, *args: Any) -> Any:
        raise NotImplementedError

    def restart(self, host: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot restart a host")

    def shutdown(self) -> None:
        pass

    def host_of(self, agent: int) -> int:
        for h, g in enumerate(self.groups):
            if agent in g:
                return h
        raise KeyError(agent)
