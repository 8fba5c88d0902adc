"""D-SGD gossip averaging, and the two references: local-only and centralized."""

from __future__ import annotations

from dimat.agent import Agent
from dimat.algorithms.base import Algorithm, Received, gossip_average


class Dsgd(Algorithm):
    """Decentralized SGD: after local steps, x_i ← Σ_j W_ij x_j (all agents from one init)."""

    def combine(self, agent: Agent, self_weight: float, received: list[Received]) -> dict:
        gossip_average(agent.vec, self_weight, received)
        self.after_merge(agent)
        return {}


class Local(Algorithm):
    """No communication: every agent trains alone."""

    communicates = False


class Centralized(Algorithm):
    """One model on all the data with the agents' combined batch: the reference."""

    communicates = False
