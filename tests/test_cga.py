"""CGA: the QP aggregation, gradients at a neighbour's model, one full step by hand, bytes both ways."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch
from torch import nn

from dimat.agent import Agent
from dimat.algorithms import Received, build_algorithm
from dimat.algorithms.cross import aggregate, cone_dual
from dimat import ConfigError, run


def _primal_projection(g: np.ndarray, M: np.ndarray) -> np.ndarray:
    """min ½‖x − g‖² s.t. M x ≥ 0, by a general-purpose solver (the reference)."""
    res = scipy.optimize.minimize(
        lambda x: 0.5 * np.sum((x - g) ** 2), g, jac=lambda x: x - g, method="SLSQP",
        constraints=[{"type": "ineq", "fun": lambda x: M @ x, "jac": lambda x: M}], options={"ftol": 1e-14, "maxiter": 500},
    )
    return res.x


@pytest.mark.parametrize("seed", range(6))
def test_zero_margin_is_the_projection_onto_the_neighbours_cone(seed):
    rng = np.random.default_rng(seed)
    p, t = 12, 3
    M = rng.standard_normal((t, p))
    g = -M.sum(0) + 0.3 * rng.standard_normal(p)  # conflicts with the cross-gradients: constraints bind
    assert (M @ g < 0).any()
    out = aggregate(torch.tensor(g), torch.tensor(M), 0.0, [(0, p)]).numpy()
    assert (M @ out >= -1e-8).all()  # no neighbour's loss rises to first order
    np.testing.assert_allclose(out, _primal_projection(g, M), atol=1e-5)


def test_a_gradient_already_in_the_cone_is_unchanged_without_margin():
    rng = np.random.default_rng(0)
    M = rng.standard_normal((3, 8))
    g = M.sum(0) * 2.0 + np.linalg.svd(M)[2][-1]  # positive inner product with every row
    assert (M @ g > 0).all()
    out = aggregate(torch.tensor(g), torch.tensor(M), 0.0, [(0, 8)]).numpy()
    np.testing.assert_allclose(out, g, atol=1e-12)


def test_margin_is_the_least_share_and_the_dual_is_optimal():
    rng = np.random.default_rng(1)
    M = rng.standard_normal((4, 10))
    g = -M[0] + rng.standard_normal(10)
    P, q = M @ M.T, M @ g
    for margin in (0.0, 0.5, 2.0):
        v = cone_dual(P, q, margin)
        assert (v >= margin - 1e-12).all()
        grad = P @ v + q  # KKT: zero where v is above its bound, non-negative where it sits on it
        free = v > margin + 1e-9
        np.testing.assert_allclose(grad[free], 0.0, atol=1e-8)
        assert (grad[~free] >= -1e-8).all()
    # with a big margin every cross-gradient enters with exactly that weight
    M2 = np.abs(M)
    v = cone_dual(M2 @ M2.T, M2 @ np.abs(g), 0.5)
    np.testing.assert_allclose(v, 0.5)


def test_per_layer_blocks_are_solved_separately():
    rng = np.random.default_rng(2)
    M, g = rng.standard_normal((2, 9)), rng.standard_normal(9)
    blocks = [(0, 4), (4, 9)]
    whole = aggregate(torch.tensor(g), torch.tensor(M), 0.0, blocks).numpy()
    for s, e in blocks:
        part = aggregate(torch.tensor(g[s:e]), torch.tensor(M[:, s:e]), 0.0, [(0, e - s)]).numpy()
        np.testing.assert_allclose(whole[s:e], part, atol=1e-12)
        assert (M[:, s:e] @ whole[s:e] >= -1e-9).all()


def _bn_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _agents(n: int, algo, x, y, shards):
    return [Agent(i, _bn_model(i), x, y, shards[i], batch_size=8, optimizer=algo.optimizer, seed=i) for i in range(n)]


def test_gradient_at_a_neighbours_state_leaves_the_agent_untouched():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 6)).astype(np.float32), rng.integers(0, 3, 16)
    algo = build_algorithm("cga")
    a, b = _agents(2, algo, x, y, [np.arange(16), np.arange(16)])
    b.model.train()
    with torch.no_grad():  # give b's BatchNorm statistics non-default values
        b.model(torch.from_numpy(x))
    before = a.vec.detach().clone()
    xb, yb = torch.from_numpy(x[:8]), torch.from_numpy(y[:8])
    g, loss = a.gradient(xb, yb, b.state().copy())
    assert torch.equal(a.vec, before)  # a's weights and running statistics did not move
    ref_loss = nn.functional.cross_entropy(b.model(xb), yb)  # b's own model, train mode: the same function
    ref = torch.autograd.grad(ref_loss, list(b.model.parameters()))
    torch.testing.assert_close(g, torch.cat([r.reshape(-1) for r in ref]))
    assert loss == pytest.approx(float(ref_loss.detach()))


def test_one_step_by_hand():
    """Three agents on a path 0–1–2: agent 1's step is the average of the three models minus lr times
    (w·own + Σ v·w·cross), the cross-gradients being its neighbours' gradients of its model on their batches."""
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((24, 6)).astype(np.float32), rng.integers(0, 3, 24)
    shards = np.array_split(np.arange(24), 3)  # 8 each = one batch: the batch is the whole shard
    lr, margin = 0.1, 0.0
    algo = build_algorithm("cga", optimizer={"name": "sgd", "lr": lr}, qp_margin=margin, qp_per_layer=False)
    agents = _agents(3, algo, x, y, shards)
    W = {0: [(1, 0.5)], 1: [(0, 1 / 3), (2, 1 / 3)], 2: [(1, 0.5)]}
    self_w = {0: 0.5, 1: 1 / 3, 2: 0.5}
    states = [a.state().copy() for a in agents]
    out = {}
    for a in agents:  # the own gradient (`train`), then phase one: gradients of the received models
        algo.train(a, 1)
        out[a.index] = algo.cross_gradients(a, self_w[a.index], [Received(j, states[j], w) for j, w in W[a.index]])
    # the reference: gradients of agent 1's model on each agent's batch (train-mode BatchNorm)
    n = agents[1].layout.n_params

    def grad_on(k):
        m = _bn_model(1)
        m.train()
        loss = nn.functional.cross_entropy(m(torch.from_numpy(x[shards[k]])), torch.from_numpy(y[shards[k]]))
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(m.parameters()))]).double().numpy()

    np.testing.assert_allclose(out[0][1], grad_on(0), atol=1e-5)  # agent 0's gradient of agent 1's model
    np.testing.assert_allclose(out[2][1], grad_on(2), atol=1e-5)
    algo.step(agents[1], self_w[1], [Received(k, out[k][1], W[k][0][1]) for k in (0, 2)])  # phase two
    M = np.stack([0.5 * grad_on(0), 0.5 * grad_on(2)])
    step = _primal_projection(grad_on(1) / 3, M)
    mixed = (states[0] + states[1] + states[2]).astype(np.float64) / 3
    np.testing.assert_allclose(agents[1].state()[:n], mixed[:n] - lr * step, atol=1e-5)
    assert agents[1].steps_done == 1


def test_cga_counts_a_model_out_and_a_gradient_back_per_edge(tiny):
    res = run(tiny("algorithm=cga", "backend=inprocess", "rounds=3", "topology=ring", "data=digits",
                   "model=cnn", "model.width=1"))
    # a cnn with BatchNorm: its state (parameters + running statistics) is larger than its gradient
    from dimat.flat import FlatLayout
    from dimat.models import build_model

    layout = FlatLayout.of(build_model("cnn", (1, 8, 8), 10, width=1, norm="bn"))
    assert layout.size > layout.n_params
    assert res.records[-1]["step"] == 3
    per_edge = 4 * (layout.size + layout.n_params)
    assert res.summary["bytes_total"] == 3 * 4 * 2 * per_edge  # rounds × agents × degree × (model + gradient)
    assert res.records[-1]["acc_mean"] > 0.1


def test_cga_learns_and_budgets_price_the_round_trip(tiny):
    res = run(tiny("algorithm=cga", "backend=inprocess", "rounds=30", "data=digits", "topology=ring",
                   "algorithm.optimizer.lr=0.1", "eval.every=30"))
    assert res.summary["final_acc_mean"] > 0.5  # 30 steps of 16 images: well above chance (10%)
    layout_floats = (64 * 32 + 32) + (32 * 10 + 10)
    budgeted = run(tiny("algorithm=cga", "backend=inprocess", "rounds=6", "topology=ring",
                        f"budget.bytes={3 * 4 * 2 * 4 * 2 * layout_floats}"))  # three full rounds of round trips
    assert budgeted.summary["bytes_total"] <= 3 * 4 * 2 * 4 * 2 * layout_floats
    assert budgeted.summary["bytes_total"] > 0


def test_cga_refuses_vectorized_hosts(tiny):
    with pytest.raises(ConfigError, match="backend.vectorize=false"):
        run(tiny("algorithm=cga", "backend=inprocess", "backend.vectorize=true"))


def test_negative_margin_is_refused():
    with pytest.raises(ValueError, match="qp_margin"):
        build_algorithm("cga", qp_margin=-1.0)


def test_cga_declares_its_two_phase_pattern():
    from dimat.algorithms import Cga

    assert [p.kind for p in Cga.phases] == ["gossip", "reply"] and all(p.every_agent for p in Cga.phases)


def test_rounds_the_schedule_skips_are_plain_local_steps(tiny):
    res = run(tiny("algorithm=cga", "backend=inprocess", "rounds=4", "topology=ring", "schedule=periodic",
                   "schedule.every=2", "eval.every=1"))
    edge = 2 * res.summary["model_bytes"]  # a model out, a gradient back (no running statistics: same size)
    assert [r["bytes_round"] for r in res.records] == [0, 8 * edge, 0, 8 * edge]
    assert [r["step"] for r in res.records] == [1, 2, 3, 4]
    assert res.records[2]["consensus"] != res.records[1]["consensus"]  # round 3 moved the agents, without gossip
