"""Heterogeneity-correcting gossip: gradient tracking (K-GT), exact diffusion (D²), quasi-global momentum (QGM).

At a constant step size, plain D-SGD on non-IID shards settles at a point
biased towards each agent's own minimiser: gossip pulls the agents together,
their local gradients pull them apart, and the two balance away from the
global minimiser. The methods here remove that bias:

- `gt` (gradient tracking with local steps, K-GT, Liu et al. 2024): each agent
  adds a correction c_i to every local gradient; after a round it sends its
  mean corrected gradient z_i with its model and sets c_i ← c_i − z_i + Σ_j W_ij z_j.
  Σ_i c_i stays 0 and c_i tracks (mean gradient − own gradient). The payload
  holds the model and z_i (one parameter vector more: the bytes say so).
- `d2` (exact diffusion / D², Tang et al. 2018; Yuan et al. 2019): mix
  φ_i = ψ_i + x_i − ψ_i' with W̃ = (I + W)/2, where ψ_i is the model after
  local steps, x_i the model after the last merge and ψ_i' the previous ψ_i.
  Σ_i (x_i − ψ_i) is conserved, which pins the fixed point to the global
  minimiser. Same payload size as D-SGD.
- `qgm` (quasi-global momentum, Lin et al. 2021): D-SGD with heavy-ball momentum
  whose buffer is rebuilt after each merge from the agent's net displacement,
  gossip included, so momentum follows the global direction instead of the
  local one. No extra bytes.

The two model-side corrections (`GradientTracking`, `QuasiGlobalMomentum`) are
components that `dimat` merges can use too (`algorithm.correction=gt|qgm`).
"""

from __future__ import annotations

import numpy as np
import torch

from dimat.agent import Agent
from dimat.algorithms.base import Algorithm, Received, gossip_average
from dimat.flat import FlatLayout


class GradientTracking:
    """Per agent: the correction c_i added to each local gradient, and the corrected gradients' sum."""

    def __init__(self):
        self.c: dict[int, torch.Tensor] = {}
        self.acc: dict[int, torch.Tensor] = {}
        self.count: dict[int, int] = {}

    def attach(self, agent: Agent) -> None:
        i, n = agent.index, agent.layout.n_params
        self.c[i] = torch.zeros(n, device=agent.vec.device)
        self.acc[i] = torch.zeros(n, device=agent.vec.device)
        self.count[i] = 0
        c_views, acc_views = agent.param_views(self.c[i]), agent.param_views(self.acc[i])

        def hook(grads: list[torch.Tensor]) -> None:
            torch._foreach_add_(grads, c_views)
            torch._foreach_add_(acc_views, grads)
            self.count[i] += 1

        agent.grad_hook = hook

    def direction(self, agent: Agent) -> torch.Tensor:
        """z_i: the mean corrected gradient since the last merge (zeros before any step)."""
        i = agent.index
        return self.acc[i] / max(self.count[i], 1)

    def update(self, agent: Agent, own: torch.Tensor, self_weight: float, received: list[Received]) -> None:
        """c_i ← c_i − z_i + Σ_j W_ij z_j (received states are the neighbours' z_j)."""
        i = agent.index
        mixed = gossip_average(own.clone(), self_weight, received)
        self.c[i].add_(mixed - own)
        self.acc[i].zero_()
        self.count[i] = 0

    def state(self, i: int) -> dict:
        return {"c": self.c[i].cpu().clone(), "acc": self.acc[i].cpu().clone(), "count": self.count[i]}

    def load(self, i: int, state: dict) -> None:
        self.c[i].copy_(state["c"])  # in place: the gradient hook holds views of these
        self.acc[i].copy_(state["acc"])
        self.count[i] = int(state["count"])


class QuasiGlobalMomentum:
    """Per agent: m̂_i ← β·m̂_i + (1 − β)·(x_i before − x_i after)/(η·K), loaded as the momentum buffer."""

    def __init__(self, optimizer: dict, option: str):
        """From the algorithm's optimizer settings; `option` names the setting that asked for it (errors)."""
        if optimizer["name"] != "msgd":
            raise ValueError(f"{option} needs algorithm.optimizer.name=msgd (it rebuilds the momentum buffer)")
        self.beta, self.lr = optimizer["momentum"], optimizer["lr"]
        self.m: dict[int, torch.Tensor] = {}
        self.x0: dict[int, torch.Tensor] = {}
        self.s0: dict[int, int] = {}
        self.fresh: dict[int, bool] = {}

    def attach(self, agent: Agent) -> None:
        i = agent.index
        self.m[i] = torch.zeros(agent.layout.n_params, device=agent.vec.device)
        self.x0[i] = agent.vec[: agent.layout.n_params].detach().clone()
        self.s0[i] = agent.steps_done
        self.fresh[i] = False

    def before_train(self, agent: Agent) -> None:
        i = agent.index
        if self.fresh[i]:
            agent.set_momentum(self.m[i].clone())
            self.fresh[i] = False

    def after_merge(self, agent: Agent) -> None:
        i = agent.index
        x = agent.vec[: agent.layout.n_params].detach()
        k = agent.steps_done - self.s0[i]
        if k > 0:
            self.m[i].mul_(self.beta).add_((self.x0[i] - x) / (self.lr * k), alpha=1 - self.beta)
            self.fresh[i] = True
        self.x0[i] = x.clone()
        self.s0[i] = agent.steps_done

    def state(self, i: int) -> dict:
        return {"m": self.m[i].cpu().clone(), "x0": self.x0[i].cpu().clone(), "s0": self.s0[i], "fresh": self.fresh[i]}

    def load(self, i: int, state: dict) -> None:
        self.m[i].copy_(state["m"])
        self.x0[i].copy_(state["x0"])
        self.s0[i], self.fresh[i] = int(state["s0"]), bool(state["fresh"])


def split(received: list[Received], n: int) -> tuple[list[Received], list[Received]]:
    """Received [state | extra] payloads as two lists: the states, and the extras after element n."""
    return (
        [Received(r.source, r.state[:n], r.weight) for r in received],
        [Received(r.source, r.state[n:], r.weight) for r in received],
    )


def with_extra(agent: Agent, extra: torch.Tensor) -> np.ndarray:
    """The payload [flat state | extra] as one float32 array."""
    return torch.cat([agent.vec.detach(), extra.to(agent.vec.device)]).cpu().numpy()


class _CorrectedGossip(Algorithm):
    """D-SGD plus one per-agent correction component (attached at prepare, saved in checkpoints)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.component = self._component()

    def _component(self):
        raise NotImplementedError

    def prepare(self, agent: Agent, example: torch.Tensor) -> None:
        self.component.attach(agent)

    def agent_state(self, index: int) -> dict:
        return self.component.state(index)

    def load_agent_state(self, index: int, state: dict) -> None:
        self.component.load(index, state)


class Gt(_CorrectedGossip):
    """Gradient tracking with local steps (K-GT); the payload is the state plus z_i."""

    name = "gt"

    def _component(self) -> GradientTracking:
        self.tracking = GradientTracking()
        return self.tracking

    def message_floats(self, phase: int, layout: FlatLayout) -> int:
        return layout.size + layout.n_params

    def payload(self, agent: Agent) -> np.ndarray:
        return with_extra(agent, self.tracking.direction(agent))

    def combine(self, agent: Agent, self_weight: float, received: list[Received]) -> None:
        states, dirs = split(received, agent.layout.size)
        own_dir = self.tracking.direction(agent)
        gossip_average(agent.vec, self_weight, states)
        self.tracking.update(agent, own_dir, self_weight, dirs)


class Qgm(_CorrectedGossip):
    """D-SGD with quasi-global momentum (needs optimizer=msgd); no extra bytes."""

    name = "qgm"

    def _component(self) -> QuasiGlobalMomentum:
        self.qgm = QuasiGlobalMomentum(self.optimizer, "algorithm=qgm")
        return self.qgm

    def before_train(self, agent: Agent) -> None:
        self.qgm.before_train(agent)

    def combine(self, agent: Agent, self_weight: float, received: list[Received]) -> None:
        gossip_average(agent.vec, self_weight, received)
        self.qgm.after_merge(agent)


class D2(Algorithm):
    """Exact diffusion: mix φ_i = ψ_i + x_i − ψ_i' with (I + W)/2 (parameters; buffers mix plainly)."""

    name = "d2"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.x_prev: dict[int, torch.Tensor] = {}
        self.psi_prev: dict[int, torch.Tensor] = {}
        self.sent: dict[int, torch.Tensor] = {}

    def prepare(self, agent: Agent, example: torch.Tensor) -> None:
        p = agent.vec[: agent.layout.n_params].detach()
        self.x_prev[agent.index], self.psi_prev[agent.index] = p.clone(), p.clone()

    def _phi(self, agent: Agent) -> torch.Tensor:
        i, n = agent.index, agent.layout.n_params
        phi = agent.vec.detach().clone()
        psi = phi[:n].clone()
        phi[:n] += self.x_prev[i] - self.psi_prev[i]
        # if no merge follows (the agent only sends this round), its next start point is ψ itself
        self.psi_prev[i], self.x_prev[i] = psi, psi.clone()
        self.sent[i] = phi
        return phi

    def payload(self, agent: Agent) -> np.ndarray:
        return self._phi(agent).cpu().numpy()

    def combine(self, agent: Agent, self_weight: float, received: list[Received]) -> None:
        i = agent.index
        if i not in self.sent:  # a receiver that did not send this round
            self._phi(agent)
        phi = self.sent.pop(i)
        # in float64: float32 weights (1/3 → 0.33333334) would leak a constant fraction of Σ(x − ψ)
        # every round, and that invariant is what pins the fixed point to the global minimiser
        mixed = gossip_average(phi.double(), (1 + self_weight) / 2,
                               [Received(r.source, r.state, r.weight / 2) for r in received])
        agent.vec.copy_(mixed)
        self.x_prev[i] = agent.vec[: agent.layout.n_params].detach().clone()

    def agent_state(self, index: int) -> dict:
        return {"x_prev": self.x_prev[index].cpu().clone(), "psi_prev": self.psi_prev[index].cpu().clone()}

    def load_agent_state(self, index: int, state: dict) -> None:
        self.x_prev[index] = state["x_prev"].to(self.x_prev[index].device).clone()
        self.psi_prev[index] = state["psi_prev"].to(self.psi_prev[index].device).clone()
