"""All agents in the driver's process, run one after another: bit-for-bit repeatable."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dimat.runtime.base import Backend, free_cpus, machine_cpus, resolve_device
from dimat.runtime.host import AgentHost, HostSpec


class InProcessBackend(Backend):
    name = "inprocess"

    def __init__(self, spec: HostSpec, dataset, parts, *, device: str = "auto", vectorize: bool = False,
                 threads: int | None = None):
        import torch

        if threads is not None and threads < 1:
            raise ValueError(f"backend.threads={threads} must be >= 1 (or null: this machine's CPUs)")
        self.groups = [list(range(len(parts)))]
        self.device = resolve_device(device, torch.cuda.is_available())
        self._threads_before = torch.get_num_threads()  # the whole process's: put back at shutdown
        self.threads = threads or machine_cpus()  # not the momentary load: the same numbers on a busy machine
        self.free = free_cpus() if threads is None else None
        self.hosts = [AgentHost(spec, dataset, dict(enumerate(parts)), transport="local", device=self.device,
                                vectorize=vectorize, threads=self.threads)]

    def run_each(self, fn: Callable, args: Sequence[tuple]) -> list[Any]:
        return [h.run(fn, *a) for h, a in zip(self.hosts, args)]

    def run_one(self, host: int, fn: Callable, *args: Any) -> Any:
        return self.hosts[host].run(fn, *args)

    def shutdown(self) -> None:
        import torch

        torch.set_num_threads(self._threads_before)
