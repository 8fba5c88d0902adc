"""SGP: push-sum weights de-bias gossip on a directed graph; bytes include the weight."""

from __future__ import annotations

import networkx as nx
import numpy as np
import torch
from torch import nn

import topologies
from dimat.agent import Agent
from dimat.algorithms import Received, build_algorithm
from dimat import run
from dimat.schedule import full_plan, mixing_rows


def directed_topology() -> topologies.Topology:
    # a directed ring plus one chord: out-degrees differ, so row-stochastic gossip is biased
    g = nx.DiGraph([(i, (i + 1) % 5) for i in range(5)] + [(0, 2)])
    W = np.zeros((5, 5))
    for i in range(5):
        srcs = [j for j in g.predecessors(i)] + [i]
        W[i, srcs] = 1 / len(srcs)
    return topologies.Topology("directed", 5, g, W, True, False)


def test_push_sum_converges_to_the_average_on_a_directed_graph():
    top = directed_topology()
    A = topologies.column_stochastic(top)
    algo = build_algorithm("sgp", optimizer={"name": "sgd", "lr": 0.01})  # never trains here
    agents = []
    for i in range(5):
        torch.manual_seed(i)
        agents.append(Agent(i, nn.Linear(3, 2), np.zeros((1, 3), np.float32), np.zeros(1, np.int64),
                            np.arange(1), batch_size=1, optimizer=algo.optimizer, seed=i))
    start = torch.stack([a.vec.clone() for a in agents])
    naive = start.clone()  # the same graph with plain row-stochastic gossip, for contrast
    rows = mixing_rows(A, full_plan(A))
    for _ in range(200):
        sent = [algo.payload(a) for a in agents]
        for a in agents:
            self_w, row = rows[a.index]
            algo.combine(a, self_w, [Received(j, sent[j], w) for j, w in row])
        naive = torch.from_numpy(top.W).float() @ naive
    target = start.mean(0)
    for a in agents:
        assert torch.allclose(a.vec, target, atol=1e-5)
    assert sum(algo.weight.values()) == np.float32(5) or abs(sum(algo.weight.values()) - 5) < 1e-4
    assert not torch.allclose(naive[0], target, atol=1e-3)  # without push-sum: a biased consensus


def test_sgp_end_to_end_counts_the_weight_in_its_bytes(tiny):
    res = run(tiny("algorithm=sgp", "backend=inprocess", "topology=ring", "rounds=2"))
    state_floats = (64 * 32 + 32) + (32 * 4 + 4)
    assert res.summary["bytes_total"] == 2 * 4 * 2 * 4 * (state_floats + 1)
    assert res.summary["final_acc_mean"] > 0.4
