"""Cross-gradient aggregation (CGA, Esfandiari et al. 2021): neighbours' data shape each agent's step.

A round is one step with two messages per edge. Each agent j sends its model
x_j to its neighbours; each neighbour i computes g_ij = ∇f_i(x_j), the
gradient of j's model on i's own batch (the same batch i takes its own
gradient g_ii on), and sends it back. Agent j then aggregates its own
gradient with the cross-gradients it got by a small quadratic program (the
gradient-episodic-memory projection, as in the paper's code):

    g̃ = w_jj·g_jj + Σ_i v_i·w_ij·g_ij,   v = argmin_{v ≥ m} ½‖w_jj·g_jj + Σ_i v_i·w_ij·g_ij‖²

(w_ij: the weight i gives j's model in its own row of the plan, not a byte on
the wire; for a symmetric W it is j's own weight for i, as in the paper),
which is the dual of projecting w_jj·g_jj onto {g : ⟨g, w_ij·g_ij⟩ ≥ 0 ∀ i} when
the margin m is 0 (the step then raises no neighbour's loss to first order);
m > 0 keeps at least that share of every cross-gradient (the public code
uses 0.5). One QP per parameter tensor (`qp_per_layer`, as the code) or one
over the whole vector. Finally, consensus then the optimizer step:
x_j ← Σ_i W_ji·x_i, then x_j ← x_j − η·(momentum of g̃).

Bytes: a model out and a parameter-sized gradient back per edge per step.
"""

from __future__ import annotations


import numpy as np
import scipy.linalg
import scipy.optimize
import torch

from dimat.agent import Agent
from dimat.algorithms.base import Algorithm, Phase, Received, gossip_average
from dimat.flat import FlatLayout, as_tensor


def cone_dual(P: np.ndarray, q: np.ndarray, margin: float) -> np.ndarray:
    """argmin_{v ≥ margin} ½ vᵀPv + qᵀv for a positive semi-definite P (a tiny ridge makes it definite).

    With v = margin + u it is a non-negative least-squares problem in u:
    ½uᵀPu + cᵀu with c = q + P·margin equals ½‖Lᵀu + L⁻¹c‖² (P = LLᵀ) up to a constant.
    """
    t = len(q)
    ridge = 1e-10 * float(np.trace(P)) / t + 1e-30
    L = np.linalg.cholesky(P + ridge * np.eye(t))
    c = q + P @ np.full(t, margin)
    u, _ = scipy.optimize.nnls(L.T, -scipy.linalg.solve_triangular(L, c, lower=True))
    return margin + u


def aggregate(own: torch.Tensor, cross: torch.Tensor, margin: float, blocks: list[tuple[int, int]]) -> torch.Tensor:
    """own + Σ_i v_i·cross_i with v from `cone_dual`, solved separately on each [start, end) block.

    own: [p] (weighted own gradient); cross: [t, p] (weighted cross-gradients). Gram matrices in float64.
    """
    if len(cross) == 0:
        return own.clone()
    out = own.clone()
    for s, e in blocks:
        M, g = cross[:, s:e].double(), own[s:e].double()
        v = cone_dual((M @ M.T).cpu().numpy(), (M @ g).cpu().numpy(), margin)
        out[s:e] = (g + torch.from_numpy(v).to(M) @ M).to(out.dtype)
    return out


class Cga(Algorithm):
    """Two phases per step: models out (each receiver returns its gradient of every model it got),
    then the cross-gradients back (each owner aggregates, mixes and steps). Every agent takes part in
    both every round, so a round the schedule skips is one plain local step."""

    name = "cga"
    steps_per_round = 1
    phases = (
        Phase("gossip", receive="cross_gradients", every_agent=True),
        Phase("reply", receive="step", every_agent=True),
    )

    def __init__(self, *, qp_margin: float = 0.5, qp_per_layer: bool = True, **kw):
        super().__init__(**kw)
        if qp_margin < 0:
            raise ValueError(f"algorithm.qp_margin={qp_margin} must be >= 0 (0: a pure projection)")
        self.qp_margin, self.qp_per_layer = qp_margin, qp_per_layer
        # agent -> [own gradient, batch x, batch y, self weight, received models]
        self._pending: dict[int, list] = {}

    def message_floats(self, phase: int, layout: FlatLayout) -> int:
        return layout.size if phase == 0 else layout.n_params  # the model out, its cross-gradient back

    def _blocks(self, agent: Agent) -> list[tuple[int, int]]:
        if not self.qp_per_layer:
            return [(0, agent.layout.n_params)]
        bounds = np.cumsum([0] + [p.numel() for p in agent.params])
        return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))

    def train(self, agent: Agent, steps: int) -> float:
        """The agent's own gradient on its next batch (kept for the exchange, where the step happens)."""
        xb, yb = agent.next_batch()
        own, loss = agent.gradient(xb, yb)
        self._pending[agent.index] = [own, xb, yb, 1.0, []]
        return loss

    def cross_gradients(self, agent: Agent, self_weight: float, received: list[Received]) -> dict[int, np.ndarray]:
        """Phase one: on the agent's own batch, the gradient of every model it received (replies, by owner)."""
        pending = self._pending[agent.index]
        _, xb, yb = pending[:3]
        pending[3:] = [self_weight, received]
        return {r.source: agent.gradient(xb, yb, r.state)[0].cpu().numpy() for r in received}

    def step(self, agent: Agent, self_weight: float, cross: list[Received]) -> None:
        """Phase two: aggregate own and cross-gradients, mix with the received models, take the step."""
        own, _, _, self_weight, received = self._pending.pop(agent.index)
        if cross:
            M = torch.stack([as_tensor(r.state).to(own.device) * r.weight for r in cross])
            direction = aggregate(own * self_weight, M, self.qp_margin, self._blocks(agent))
        else:
            direction = own * self_weight
        if received:
            gossip_average(agent.vec, self_weight, received)
        agent.apply_gradient(direction)
