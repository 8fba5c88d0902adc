"""The algorithm interface and the gossip-average primitive."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dimat.agent import Agent
from dimat.flat import FlatLayout, as_tensor


@dataclass(frozen=True)
class Received:
    """One neighbour state an agent received this round, with its mixing weight."""

    source: int
    state: np.ndarray  # flat float32 vector (read-only: it may live in the object store)
    weight: float


def gossip_average(own: torch.Tensor, self_weight: float, received: list[Received]) -> torch.Tensor:
    """In place: own ← w_ii·own + Σ_j w_ij·x_j (float32, the mixing-matrix row)."""
    own.mul_(self_weight)
    for r in received:
        own.add_(as_tensor(r.state).to(own.device, own.dtype), alpha=r.weight)
    return own


class Algorithm:
    """Base class: options shared by every algorithm and the hooks a host calls.

    Subclasses override `combine` (what a merge does) and the class flags.
    """

    communicates: bool = True
    default_init: str = "shared"  # used when the top-level `init` is `auto`

    def __init__(
        self,
        *,
        merge: dict,
        optimizer: str = "sgd",
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        opt_state: str = "keep",
        gossip_momentum: bool = False,
        correction: str = "none",
        qp_margin: float = 0.5,
        qp_per_layer: bool = True,
    ):
        if opt_state not in ("keep", "reset"):
            raise ValueError(f"algorithm.opt_state={opt_state} is unknown: use keep or reset")
        self.merge_cfg = merge
        self.optimizer = {"optimizer": optimizer, "lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        self.opt_state = opt_state
        self.gossip_momentum = gossip_momentum
        if correction not in ("none", "gt", "qgm"):
            raise ValueError(f"algorithm.correction={correction} is unknown: use none, gt or qgm")
        if correction != "none" and not self.takes_correction:
            raise ValueError(
                f"algorithm.correction={correction} is a dimat option: use algorithm={correction} for gossip"
            )
        self.correction = correction
        if qp_margin < 0:
            raise ValueError(f"algorithm.qp_margin={qp_margin} must be >= 0 (0: a pure projection)")
        self.qp_margin, self.qp_per_layer = qp_margin, qp_per_layer  # cga's aggregation (see algorithms.cross)

    def payload_floats(self, layout: FlatLayout) -> int:
        """How many float32 values one payload holds (prices an exchange before the run starts)."""
        return layout.size

    def payload(self, agent: Agent) -> np.ndarray:
        """What the agent sends its neighbours: a copy of its flat state (subclasses may add more)."""
        return agent.state().copy()

    server: bool = False  # a server averages all agents (fedavg) instead of neighbour gossip
    cross: bool = False  # models out, gradients of them back, then one step (cga): no local training
    takes_correction: bool = False  # whether `correction=gt|qgm` applies (dimat)
    mixing: str = "row"  # row: the topology's W; column: its column-stochastic push-sum matrix
    steps_per_round: int | None = None  # forces local_steps (e.g. 1 for per-step consensus methods)

    def before_train(self, agent: Agent) -> None:
        """Called by the host just before the agent's local steps of a round."""

    def prepare(self, agent: Agent, example: torch.Tensor) -> None:
        """Once per agent on its host, before training (e.g. derive a permutation spec)."""

    def combine(self, agent: Agent, self_weight: float, received: list[Received]) -> dict:
        """Merge the received states into `agent`; returns measurements (e.g. merge time)."""
        raise NotImplementedError

    def agent_state(self, index: int) -> dict:
        """What the algorithm remembers about agent `index` (saved in checkpoints)."""
        return {}

    def load_agent_state(self, index: int, state: dict) -> None:
        pass

    def after_merge(self, agent: Agent) -> None:
        if self.opt_state == "reset":
            agent.reset_optimizer()
