"""An agent host: a block of agents in one process, the same code in-process and in a Ray actor.

The host holds state and runs what the driver sends it: ``host.run(fn, *args)``
calls a plain function ``fn(host, *args)`` from `dimat.runtime.ops` (training,
evaluation, measurements), `dimat.runtime.exchange` (messages) or
`dimat.runtime.checkpoint`. It knows no algorithm and no schedule: the
algorithm object it builds from its `HostSpec` owns what travels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dimat.agent import Agent
from dimat.data import Dataset
from dimat.flat import flatten_module


@dataclass(frozen=True)
class HostSpec:
    """What every host needs to build its agents: made once on the driver, pickled to the actors."""

    model: Callable[..., torch.nn.Module]  # factory(input_shape=..., num_classes=...)
    algorithm: Callable[[], Any]  # a fresh Algorithm for each host
    batch_size: int
    seed: int
    independent_init: bool
    eval_batch_size: int = 256
    eval_index: np.ndarray | None = None  # the test samples evaluated during the run (None: all)
    track_sent: bool = False  # keep each agent's last sent state (schedules that measure "drift")
    compressor: Any = None  # a dimat.compress.Compressor encoding every gossip message (None: plain float32)


def agent_seed(seed: int, index: int) -> int:
    """A per-agent seed, independent of which host the agent lives on."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def build_agent_model(spec: HostSpec, dataset: Dataset, index: int) -> torch.nn.Module:
    """Agent `index`'s initial model: its own init (`independent`) or the shared one."""
    torch.manual_seed(spec.seed + index if spec.independent_init else spec.seed)
    return spec.model(input_shape=dataset.input_shape, num_classes=dataset.num_classes)


class AgentHost:
    """Hosts the agents `parts` (agent index → its sample indices) of one experiment."""

    def __init__(self, spec: HostSpec, dataset: Dataset, parts: dict[int, np.ndarray], *, transport: str = "local",
                 threads: int | None = None, timeout_s: float = 600.0, device: str = "cpu", vectorize: bool = False):
        if threads:
            torch.set_num_threads(threads)
        # Adam's second moments of always-zero inputs (digit borders) decay into denormal
        # floats, which are ~30x slower on CPU; flushing them to zero changes nothing that matters
        torch.set_flush_denormal(True)
        self.spec, self.dataset, self.transport = spec, dataset, transport
        self.timeout_s, self.device = timeout_s, device
        self.algorithm = spec.algorithm()
        self.algorithm.compressed = spec.compressor is not None
        self.algorithm.start(dataset, spec.seed, device)
        example = torch.from_numpy(dataset.x_train[:2].copy()).to(device)
        self.agents: dict[int, Agent] = {}
        for i, idx in parts.items():
            agent = Agent(i, build_agent_model(spec, dataset, i), dataset.x_train, dataset.y_train, idx,
                          batch_size=spec.batch_size, optimizer=self.algorithm.optimizer,
                          seed=agent_seed(spec.seed, i), device=device, **self.algorithm.training)
            self.algorithm.prepare(agent, example)
            self.agents[i] = agent
        self.group = None
        if vectorize:
            from dimat.runtime.vectorized import AgentGroup

            self.group = AgentGroup(list(self.agents.values()))
        self.codec = None  # encoding of gossip messages (dimat.compress): per sending agent, its memory
        if spec.compressor is not None:
            from dimat.compress import Codec

            self.codec = Codec(spec.compressor, spec.seed, list(self.agents), self.layout().shapes)
        # the state each agent last sent, kept only for schedules that measure drift (one model per agent)
        self.last_sent = {i: a.state().copy() for i, a in self.agents.items()} if spec.track_sent else {}
        self.received: set[int] = set()  # agents that received messages in the current exchange
        # between an exchange's publish and deliver: (snapshots of messages only this host reads, handles of
        # the published ones), see `dimat.runtime.exchange.publish`
        self.outbox: tuple[dict, dict] = ({}, {})
        self._buffers: dict = {}  # reused message snapshots, by (phase, agent)
        self._saved: torch.Tensor | None = None  # reused copy of the state an agent rolls back to
        self._scratch: tuple[torch.nn.Module, torch.Tensor] | None = None

    def run(self, fn: Callable, *args: Any) -> Any:
        """The one entry point: `fn(self, *args)` (a plain function, sent by the driver)."""
        return fn(self, *args)

    # -- what the operations share ------------------------------------------
    def put(self, arrays: dict) -> dict:
        """Handles other hosts can fetch, to snapshots of the arrays (which may be views of live states):
        object-store references with Ray (`ray.put` copies), copies in-process."""
        if self.transport == "ray":
            import ray

            return {k: ray.put(v) for k, v in arrays.items()}
        # an encoded message (a dict of fresh arrays) is no view of a live state: it needs no copy
        return {k: v if isinstance(v, dict) else np.array(v) for k, v in arrays.items()}

    def fetch(self, handles: dict) -> dict:
        if self.transport == "ray" and handles:
            import ray

            keys = list(handles)
            return dict(zip(keys, ray.get([handles[k] for k in keys], timeout=self.timeout_s)))
        return handles

    def snapshot(self, key, array: np.ndarray) -> np.ndarray:
        """A read-only copy of `array` in a buffer reused for `key` at every exchange: no fresh pages to
        fault in, which costs more than the copy itself at a few MB. (An encoded message is fresh already.)"""
        if isinstance(array, dict):
            return array
        buf = self._buffers.get(key)
        if buf is None or buf.shape != array.shape or buf.dtype != array.dtype:
            buf = self._buffers[key] = np.empty_like(array)
        buf.flags.writeable = True
        np.copyto(buf, array)
        buf.flags.writeable = False
        return buf

    def saved(self, vec: torch.Tensor) -> torch.Tensor:
        """`vec` copied into one buffer the host reuses (good until the next call: one agent at a time)."""
        if self._saved is None or self._saved.shape != vec.shape or self._saved.device != vec.device:
            self._saved = torch.empty_like(vec)
        return self._saved.copy_(vec.detach())

    def scratch_model(self) -> tuple[torch.nn.Module, torch.Tensor]:
        """A spare model of the agents' architecture over its own flat vector, built once."""
        if self._scratch is None:
            model = build_agent_model(self.spec, self.dataset, 0).to(self.device)
            self._scratch = (model, flatten_module(model)[0])
        return self._scratch

    def layout(self):
        return next(iter(self.agents.values())).layout
