"""An algorithm of the user's own, in one file: gossip of a coordinate-wise trimmed mean."""

from __future__ import annotations

import torch

from dimat.algorithms import Algorithm
from dimat.flat import as_tensor


class TrimmedMean(Algorithm):
    """Each agent drops, coordinate by coordinate, the `trim` largest and smallest values among its own state
    and its neighbours', and takes the mean of the rest (robust to a few outlying neighbours). The message is
    the default one (the flat state); the framework counts its bytes and handles optimizer state and rollback."""

    name = "trimmed_mean"

    def __init__(self, *, trim: int = 1, **kw):
        super().__init__(**kw)
        if trim < 0:
            raise ValueError(f"algorithm.trim={trim} must be >= 0")
        self.trim = trim

    def combine(self, agent, self_weight, received):
        # a neighbour's state may be read-only memory (Ray's object store): as_tensor reads it without a copy
        stack = torch.stack([agent.vec.detach()] + [as_tensor(r.state).to(agent.vec) for r in received])
        k = min(self.trim, (len(stack) - 1) // 2)  # never trim every value away
        agent.vec.copy_(stack.sort(dim=0).values[k : len(stack) - k].mean(0))
