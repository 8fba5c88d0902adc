"""Consensus SGD (CDSGD / CDMSGD, Jiang et al. 2017): gossip every step, gradient at the agent's own point.

x_i ← Σ_j W_ij x_j − η·∇f_i(x_i). The host trains one step from x_i, so the
agent's own update Δ_i = (x_i after the step) − x_i is known; the agent sends
the pre-step x_i, and the merge is x_i ← Σ_j W_ij x_j + Δ_i. With momentum
(`optimizer.name=msgd`, CDMSGD) Δ_i is the momentum step.
"""

from __future__ import annotations

import numpy as np
import torch

from dimat.agent import Agent
from dimat.algorithms.base import Algorithm, Received, gossip_average


class Cdsgd(Algorithm):
    name = "cdsgd"
    steps_per_round = 1  # "every step": a round is one local step

    def __init__(self, **kw):
        super().__init__(**kw)
        self._before: dict[int, torch.Tensor] = {}

    def before_train(self, agent: Agent) -> None:
        self._before[agent.index] = agent.vec.detach().clone()

    def payload(self, agent: Agent) -> np.ndarray:
        return self._before[agent.index].cpu().numpy().copy()

    def combine(self, agent: Agent, self_weight: float, received: list[Received]) -> None:
        x = self._before[agent.index]
        step = agent.vec.detach() - x
        gossip_average(x, self_weight, received)
        agent.vec.copy_(x + step)


class Cdmsgd(Cdsgd):
    """CDSGD with a momentum optimizer (its configs default to optimizer.name=msgd)."""

    name = "cdmsgd"
