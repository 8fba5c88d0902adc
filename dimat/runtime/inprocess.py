"""All agents in the driver's process, run one after another: bit-for-bit repeatable."""

from __future__ import annotations

from typing import Any, Sequence

from dimat.runtime.base import Backend
from dimat.runtime.host import AgentHost


class InProcessBackend(Backend):
    def __init__(self, cfg: dict, dataset, parts):
        self.groups = [list(range(len(parts)))]
        self.hosts = [AgentHost(cfg, dataset, dict(enumerate(parts)), transport="local")]

    def call_each(self, method: str, args: Sequence[tuple]) -> list[Any]:
        return [getattr(h, method)(*a) for h, a in zip(self.hosts, args)]

    def call_one(self, host: int, method: str, *args: Any) -> Any:
        return getattr(self.hosts[host], method)(*args)
