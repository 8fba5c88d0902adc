"""Public copies of models rebuilt from compressed differences (DIMAT over compressed channels).

An agent sends q_i = C(x_i − x̂_i), the compressed difference between its model and its public copy x̂_i, and
both ends add what was decoded to their copy of x̂_i: the sender to its own, every neighbour to the copy it
keeps of agent i. The copies stay equal at every end as long as every neighbour hears every message (the
algorithm refuses schedules that pick edges), and they approach the models as the differences shrink. A
merging algorithm then works on the neighbours' public copies instead of their models.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from dimat.agent import Agent
from dimat.algorithms.base import Received


class PublicCopies:
    """Per agent: its own public copy and one copy of each neighbour's (built on first use, from zeros)."""

    def __init__(self) -> None:
        self.own: dict[int, torch.Tensor] = {}
        self.copies: dict[int, dict[int, torch.Tensor]] = {}
        self.pending: dict[int, torch.Tensor] = {}  # what agent i sent this exchange, not yet added to its copy

    def _own(self, agent: Agent) -> torch.Tensor:
        if agent.index not in self.own:
            self.own[agent.index] = torch.zeros(agent.layout.size, dtype=torch.float32)
        return self.own[agent.index]

    def payload(self, agent: Agent) -> np.ndarray:
        """x_i − x̂_i, the difference the agent sends (its decoded form arrives by `sent`)."""
        diff = (agent.vec.detach().cpu() - self._own(agent)).numpy()
        self.pending[agent.index] = torch.from_numpy(diff.copy())
        return diff

    def sent(self, agent: Agent, message: np.ndarray) -> None:
        self.pending[agent.index] = torch.from_numpy(np.array(message, dtype=np.float32))

    def receive(self, agent: Agent, received: list[Received]) -> list[Received]:
        """The agent's own copy and its copies of the senders advanced by this exchange's messages; `received`
        with each sender's public copy in place of its message."""
        i = agent.index
        if i in self.pending:
            self._own(agent).add_(self.pending.pop(i))
        mine = self.copies.setdefault(i, {})
        out = []
        for r in received:
            copy = mine.get(r.source)
            if copy is None:
                copy = mine[r.source] = torch.zeros(agent.layout.size, dtype=torch.float32)
            copy.add_(torch.as_tensor(np.asarray(r.state, dtype=np.float32)))
            out.append(replace(r, state=copy.numpy()))
        return out

    def state(self, index: int) -> dict:
        return {"own": self.own[index].clone() if index in self.own else None,
                "copies": {str(j): c.clone() for j, c in self.copies.get(index, {}).items()}}

    def load(self, index: int, state: dict) -> None:
        if state["own"] is not None:
            self.own[index] = state["own"].clone()
        self.copies[index] = {int(j): c.clone() for j, c in state["copies"].items()}
