"""CDSGD: with W = 1/N everywhere, the agents' average follows centralized SGD on the pooled batch."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dimat.agent import Agent
from dimat.algorithms import Received, build_algorithm
from dimat import run


def test_cdsgd_average_follows_pooled_minibatch_sgd():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    n, lr = 4, 0.1
    algo = build_algorithm("cdsgd", optimizer={"name": "sgd", "lr": lr})

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))

    shards = np.array_split(np.arange(64), n)
    agents = [Agent(i, model(), x, y, shards[i], batch_size=16, optimizer=algo.optimizer, seed=i) for i in range(n)]
    reference = model()
    opt = torch.optim.SGD(reference.parameters(), lr=lr)
    # from a common point, one consensus step moves the average exactly like SGD on the pooled batch;
    # afterwards each agent's gradient is taken at its own point, so later steps only track it
    for _ in range(1):
        for a in agents:
            algo.before_train(a)
            a.train(1)
        sent = [algo.payload(a) for a in agents]
        for a in agents:
            algo.combine(a, 1 / n, [Received(j, sent[j], 1 / n) for j in range(n) if j != a.index])
        # the same step on the pooled batch: each agent's epoch covers its whole shard of 16
        opt.zero_grad()
        xb, yb = torch.from_numpy(x), torch.from_numpy(y)
        losses = [nn.functional.cross_entropy(reference(xb[s]), yb[s]) for s in shards]
        torch.stack(losses).mean().backward()
        opt.step()
    mean = torch.stack([a.vec for a in agents]).mean(0)
    ref = torch.cat([p.detach().reshape(-1) for p in reference.parameters()])
    assert torch.allclose(mean, ref, atol=1e-5), float((mean - ref).abs().max())


def test_cdsgd_runs_one_step_per_round_and_counts_bytes(tiny):
    res = run(tiny("algorithm=cdsgd", "backend=inprocess", "rounds=3", "topology=ring"))
    state_bytes = 4 * ((64 * 32 + 32) + (32 * 4 + 4))
    assert res.records[-1]["step"] == 3
    assert res.summary["bytes_total"] == 3 * 4 * 2 * state_bytes  # rounds × agents × degree × state
