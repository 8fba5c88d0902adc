"""All agents in the driver's process, run one after another: bit-for-bit repeatable."""

from __future__ import annotations

from typing import Any, Sequence

from dimat.runtime.base import Backend, resolve_device
from dimat.runtime.host import AgentHost


class InProcessBackend(Backend):
    def __init__(self, cfg: dict, dataset, parts):
        self.groups = [list(range(len(parts)))]
        import torch

        device = resolve_device(cfg["backend"]["device"], torch.cuda.is_available())
        self.hosts = [AgentHost(cfg, dataset, dict(enumerate(parts)), transport="local", device=device)]

    def call_each(self, method: str, args: Sequence[tuple]) -> list[Any]:
        return [getattr(h, method)(*a) for h, a in zip(self.hosts, args)]

    def call_one(self, host: int, method: str, *args: Any) -> Any:
        return getattr(self.hosts[host], method)(*args)
