"""CHOCO-SGD (Koloskova, Stich and Jaggi, ICML 2019): gossip of compressed differences to public copies.

Every agent i keeps x̂_i, the public copy of its own model that each of its neighbours can rebuild from what
it sent, and s_i = Σ_j W_ij x̂_j, the mixing row's sum of its neighbours' public copies and its own (the
memory-efficient form: two model copies per agent, whatever its degree). An exchange, after the local steps:

    q_i = C(x_i − x̂_i)                       sent (`compress=`: the message is encoded; C is its decoding)
    x̂_i ← x̂_i + q_i
    s_i ← s_i + W_ii q_i + Σ_j W_ij q_j      on receipt
    x_i ← x_i + γ (s_i − x̂_i)                the consensus step (`algorithm.gamma`)

With `compress=none` and γ = 1 this is D-SGD exactly: x̂_i = x_i after sending and s_i the mixed average.
The public copies must stay the same at every end, so every exchange reaches every neighbour: schedules
that pick some edges, budgets and time-varying graphs are refused.
"""

from __future__ import annotations

import numpy as np
import torch

from dimat.agent import Agent
from dimat.algorithms.base import Algorithm, Received
from dimat.flat import as_tensor


class Choco(Algorithm):
    name = "choco"
    every_edge = True  # the public copies need every neighbour to hear every message

    def __init__(self, *, gamma: float = 1.0, **options):
        super().__init__(**options)
        if not 0 < gamma <= 1:
            raise ValueError(f"algorithm.gamma={gamma} must be in (0, 1]: the consensus step size")
        self.gamma = float(gamma)
        self.hat: dict[int, torch.Tensor] = {}  # x̂_i: the agent's public copy
        self.mix: dict[int, torch.Tensor] = {}  # s_i = Σ_j W_ij x̂_j
        self.pending: dict[int, torch.Tensor] = {}  # q_i sent this exchange, not yet folded into x̂_i, s_i

    def prepare(self, agent: Agent, example: torch.Tensor) -> None:
        self.hat[agent.index] = torch.zeros_like(agent.vec)
        self.mix[agent.index] = torch.zeros_like(agent.vec)

    def payload(self, agent: Agent) -> np.ndarray:
        diff = (agent.vec.detach() - self.hat[agent.index]).cpu().numpy()
        self.pending[agent.index] = torch.from_numpy(diff.copy())  # what goes out when nothing encodes it
        return diff

    def sent(self, agent: Agent, phase: int, message: np.ndarray) -> None:
        self.pending[agent.index] = torch.from_numpy(np.array(message, dtype=np.float32))  # as decoded

    def combine(self, agent: Agent, self_weight: float, received: list[Received]) -> None:
        i = agent.index
        q = self.pending.pop(i).to(agent.vec.device)
        hat, mix = self.hat[i], self.mix[i]
        hat.add_(q)
        mix.add_(q, alpha=self_weight)
        for r in received:
            mix.add_(as_tensor(r.state).to(mix.device), alpha=r.weight)
        agent.vec.add_(mix - hat, alpha=self.gamma)

    def agent_state(self, index: int) -> dict:
        return {"hat": self.hat[index].cpu().clone(), "mix": self.mix[index].cpu().clone()}

    def load_agent_state(self, index: int, state: dict) -> None:
        self.hat[index].copy_(state["hat"])
        self.mix[index].copy_(state["mix"])
