"""D-SGD gossip averaging, and the two references: local-only and centralized."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from dimat.agent import Agent
from dimat.algorithms.base import Algorithm, Received, gossip_average
from dimat.flat import FlatLayout


class Dsgd(Algorithm):
    """Decentralized SGD: after local steps, x_i ← Σ_j W_ij x_j (all agents from one init).

    With `gossip_momentum`, the momentum buffer is sent and mixed with the same
    weights (the payload doubles; bytes count it).
    """

    def __init__(self, **kw):
        super().__init__(**kw)
        if self.gossip_momentum and self.optimizer["optimizer"] != "msgd":
            raise ValueError("algorithm.gossip_momentum=true needs algorithm.optimizer=msgd (a momentum buffer)")

    def payload_floats(self, layout: FlatLayout) -> int:
        return layout.size + (layout.n_params if self.gossip_momentum else 0)

    def payload(self, agent: Agent) -> np.ndarray:
        if not self.gossip_momentum:
            return super().payload(agent)
        return torch.cat([agent.vec.detach().cpu(), agent.momentum().cpu()]).numpy()

    def combine(self, agent: Agent, self_weight: float, received: list[Received]) -> dict:
        n = agent.layout.size
        if self.gossip_momentum:
            mom = gossip_average(agent.momentum(), self_weight, [replace(r, state=r.state[n:]) for r in received])
            agent.set_momentum(mom)
            received = [replace(r, state=r.state[:n]) for r in received]
        gossip_average(agent.vec, self_weight, received)
        if not self.gossip_momentum:
            self.after_merge(agent)
        return {}


class Fedavg(Algorithm):
    """Federated averaging: on each communicating round a server replaces every agent's model by the
    shard-size-weighted mean of all of them (each agent uploads one state and downloads one).

    The driver does the server's part; the schedule only says when (its plan on the topology
    is a trigger), and budgets do not apply: it is the centralised-communication reference.
    """

    server = True
    default_init = "shared"


class Local(Algorithm):
    """No communication: every agent trains alone."""

    communicates = False


class Centralized(Algorithm):
    """One model on all the data with the agents' combined batch: the reference."""

    communicates = False
