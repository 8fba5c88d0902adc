"""D-SGD gossip averaging, federated averaging, and the two references: local-only and centralized."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from dimat.agent import Agent
from dimat.algorithms.base import Algorithm, Phase, Received, gossip_average
from dimat.flat import FlatLayout


class Dsgd(Algorithm):
    """Decentralized SGD: after local steps, x_i ← Σ_j W_ij x_j (all agents from one init).

    With `gossip_momentum`, the momentum buffer is sent and mixed with the same
    weights (the payload doubles; bytes count it).
    """

    name = "dsgd"

    def __init__(self, *, gossip_momentum: bool = False, **kw):
        super().__init__(**kw)
        self.gossip_momentum = gossip_momentum
        if gossip_momentum and self.optimizer["name"] != "msgd":
            raise ValueError("algorithm.gossip_momentum=true needs algorithm.optimizer.name=msgd (a momentum buffer)")
        if gossip_momentum and self.opt_state == "reset":
            raise ValueError("algorithm.gossip_momentum=true mixes the momentum buffer, which opt_state=reset "
                             "would discard: use algorithm.opt_state=keep")

    def message_floats(self, phase: int, layout: FlatLayout) -> int:
        return layout.size + (layout.n_params if self.gossip_momentum else 0)

    def payload(self, agent: Agent) -> np.ndarray:
        if not self.gossip_momentum:
            return super().payload(agent)
        return torch.cat([agent.vec.detach().cpu(), agent.momentum().cpu()]).numpy()

    def combine(self, agent: Agent, self_weight: float, received: list[Received]) -> None:
        n = agent.layout.size
        if self.gossip_momentum:
            mom = gossip_average(agent.momentum(), self_weight, [replace(r, state=r.state[n:]) for r in received])
            agent.set_momentum(mom)
            received = [replace(r, state=r.state[:n]) for r in received]
        gossip_average(agent.vec, self_weight, received)


class Fedavg(Algorithm):
    """Federated averaging: on each communicating round a server replaces every agent's model by the
    shard-size-weighted mean of all of them (each agent uploads one state and downloads one).

    The server is the driver; the schedule only says when (its plan on the topology is a
    trigger), and budgets do not apply: it is the centralised-communication reference.
    """

    name = "fedavg"
    phases = (Phase("server"),)

    def aggregate(self, payloads: dict[int, np.ndarray], sizes: dict[int, int]) -> np.ndarray:
        ids = sorted(payloads)
        w = np.array([sizes[i] for i in ids], dtype=np.float64)
        stacked = np.stack([payloads[i] for i in ids]).astype(np.float64)
        return np.tensordot(w / w.sum(), stacked, axes=1).astype(np.float32)


class Local(Algorithm):
    """No communication: every agent trains alone."""

    name = "local"
    communicates = False


class Centralized(Algorithm):
    """One model on all the data with the agents' combined batch: the reference."""

    name = "centralized"
    communicates = False
