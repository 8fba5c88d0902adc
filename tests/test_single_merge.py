"""The single-merge paper's protocol pieces: degree budgets end to end, post-merge rounds, its training options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dimat import ConfigError, run
from dimat.agent import Agent


def test_a_degree_budget_pulls_what_its_rule_says_and_counts_what_each_agent_heard(tiny):
    res = run(tiny("algorithm=dsgd", "backend=inprocess", "topology=full", "rounds=4", "eval.every=1",
                   "schedule=degree", "schedule.rule=truncate", "schedule.r_start=0", "schedule.r_end=3",
                   "schedule.p1=0.75"))
    state = res.summary["model_bytes"]
    assert [r["bytes_round"] for r in res.records] == [0, 0, 4 * 3 * state, 4 * 3 * state]  # p >= 0.75: all 3
    assert res.summary["transfers_per_agent"] == 6.0  # each agent heard 3 neighbours, twice
    assert res.records[2]["consensus"] < 1e-10  # everyone pulled everyone, 1/4 each: the exact average


def test_a_fractional_budget_pulls_on_average_what_it_promises(tiny):
    res = run(tiny("algorithm=dsgd", "backend=inprocess", "topology=full", "agents=8", "rounds=40", "local_steps=1",
                   "eval.every=40", "schedule=degree", "schedule.r_start=0.5"))
    heard = np.array(res.records[-1]["bytes_recv"]) / res.summary["model_bytes"]
    assert abs(heard.mean() - 20) < 4 * np.sqrt(40 * 0.25 / 8)  # 0.5 per agent per round, 40 rounds
    assert len(set(heard.tolist())) > 1  # random pulls: agents heard different amounts


def test_post_merge_rounds_gossip_before_the_global_merge_and_are_counted(tiny):
    plain = run(tiny("algorithm=dsgd", "backend=inprocess", "schedule=final_only"))
    post = run(tiny("algorithm=dsgd", "backend=inprocess", "schedule=final_only", "final_merge.rounds=2",
                    "final_merge.topology=full"))
    state = post.summary["model_bytes"]
    assert post.summary["bytes_post_merge"] == 2 * 4 * 3 * state and plain.summary["bytes_total"] == 0
    assert post.summary["bytes_total"] == post.summary["bytes_post_merge"]
    assert post.summary["post_merge_consensus"] < 1e-10  # one round on the full graph is the exact average
    assert post.summary["final_acc_global_merge"] == pytest.approx(post.summary["post_merge_acc_mean"])
    assert post.summary["final_acc_global_merge"] == pytest.approx(plain.summary["final_acc_global_merge"])


@pytest.mark.parametrize("overrides,message", [
    (["final_merge.topology=full"], "set final_merge.rounds too"),
    (["algorithm=dimat", "final_merge.rounds=2"], "do not share one basis"),
    (["final_merge.enabled=false", "final_merge.rounds=2"], "post-merge gossip rounds precede an enabled"),
    (["algorithm=sgp", "schedule=degree"], "column-stochastic"),
    (["algorithm.clip=0"], "algorithm.clip=0.0 must be > 0"),
    (["algorithm.label_smoothing=1.5"], "label_smoothing=1.5"),
])
def test_what_does_not_apply_is_refused(tiny, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run(tiny("backend=inprocess", *overrides))


def test_label_smoothing_and_elementwise_clipping():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 5)).astype(np.float32) * 10, rng.integers(0, 3, 16)
    torch.manual_seed(0)
    agent = Agent(0, nn.Linear(5, 3), x, y, np.arange(16), batch_size=16, seed=0, label_smoothing=0.1, clip=1e-3,
                  optimizer={"name": "sgd", "lr": 1.0, "momentum": 0.0, "weight_decay": 0.0})
    before = agent.vec.detach().clone()
    with torch.no_grad():
        ref = F.cross_entropy(agent.model(torch.from_numpy(x)), torch.from_numpy(y), label_smoothing=0.1)
    assert agent.train(1) == pytest.approx(float(ref))  # the loss it trains on is the smoothed one
    step = (agent.vec.detach() - before).abs()
    assert step.max() <= 1e-3 + 1e-6 and step.max() > 0.9e-3  # every gradient element clipped to ±0.001 (float32)
    g, _ = agent.gradient(torch.from_numpy(x), torch.from_numpy(y))
    assert g.abs().max() <= 1e-3 + 1e-9


def test_the_single_merge_presets_run_in_a_tiny_mode(tmp_path):
    from cfg_helpers import compose_cfg

    for preset in ("single_merge_figure1", "single_merge_figure2"):
        cfg = compose_cfg([f"experiment={preset}", "data=synthetic", "agents=4", "rounds=4", "local_steps=2",
                           "run.progress=false", "backend=inprocess", f"run.dir={tmp_path}/{preset}"])
        res = run(cfg)
        assert res.summary["final_acc_global_merge"] is not None and res.summary["bytes_total"] > 0
