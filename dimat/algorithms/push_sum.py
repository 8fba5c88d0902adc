"""Stochastic gradient push (SGP, Assran et al. 2019) with real push-sum weights.

Each agent keeps a numerator z_i and a scalar weight w_i, and trains at the
de-biased point x_i = z_i / w_i. A round: local steps on x_i (so z_i = w_i·x_i
moves by w_i times the local update), then every agent j pushes A_ij·(z_j, w_j)
to each out-neighbour i, with A column-stochastic (A_ij = 1/(outdeg_j + 1)).
Because columns sum to one, Σ z and Σ w are conserved and x_i = z_i / w_i
converges to the average even on directed and time-varying graphs, where
plain row-stochastic gossip is biased.
"""

from __future__ import annotations

import numpy as np
import torch

from dimat.agent import Agent
from dimat.algorithms.base import Algorithm, Received
from dimat.flat import FlatLayout


class Sgp(Algorithm):
    name = "sgp"
    mixing = "column"  # the driver mixes with the column-stochastic push-sum matrix

    def __init__(self, **kw):
        super().__init__(**kw)
        self.weight: dict[int, float] = {}

    def _w(self, i: int) -> float:
        return self.weight.setdefault(i, 1.0)

    def message_floats(self, phase: int, layout: FlatLayout) -> int:
        return layout.size + 1  # the push-sum weight travels with the numerator

    def payload(self, agent: Agent) -> np.ndarray:
        w = self._w(agent.index)
        return np.concatenate([agent.vec.detach().cpu().numpy() * w, np.array([w], dtype=np.float32)])

    def combine(self, agent: Agent, self_weight: float, received: list[Received]) -> None:
        w_own = self._w(agent.index)
        z = agent.vec.detach() * (w_own * self_weight)
        w = w_own * self_weight
        for r in received:
            z = z + torch.from_numpy(np.asarray(r.state[:-1], dtype=np.float32)).to(z.device) * r.weight
            w += float(r.state[-1]) * r.weight
        self.weight[agent.index] = w
        agent.vec.copy_(z / w)

    def agent_state(self, index: int) -> dict:
        return {"weight": self._w(index)}

    def load_agent_state(self, index: int, state: dict) -> None:
        self.weight[index] = float(state["weight"])
