"""All agents in the driver's process, run one after another: bit-for-bit repeatable."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dimat.runtime.base import Backend, resolve_device
from dimat.runtime.host import AgentHost, HostSpec


class InProcessBackend(Backend):
    name = "inprocess"

    def __init__(self, spec: HostSpec, dataset, parts, *, device: str = "auto", vectorize: bool = False):
        import torch

        self.groups = [list(range(len(parts)))]
        self.device = resolve_device(device, torch.cuda.is_available())
        self.hosts = [AgentHost(spec, dataset, dict(enumerate(parts)), transport="local", device=self.device,
                                vectorize=vectorize)]

    def run_each(self, fn: Callable, args: Sequence[tuple]) -> list[Any]:
        return [h.run(fn, *a) for h, a in zip(self.hosts, args)]

    def run_one(self, host: int, fn: Callable, *args: Any) -> Any:
        return self.hosts[host].run(fn, *args)
