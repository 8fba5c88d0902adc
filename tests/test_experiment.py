"""End to end: both backends run the same experiment and agree; outputs are complete."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dimat import ConfigError, run
from dimat.metrics import read_metrics

KEYS = {"round", "step", "acc_mean", "acc_min", "acc_max", "acc_avg_model", "consensus", "bytes_total", "wall_s"}


def test_inprocess_dsgd_writes_the_run_folder(tiny):
    res = run(tiny("algorithm=dsgd", "backend=inprocess"))
    recs = read_metrics(res.run_dir)
    assert [r["round"] for r in recs] == [1, 2]
    assert KEYS <= set(recs[0])
    assert len(recs[0]["acc"]) == 4 and len(recs[0]["acc_own"]) == 4
    summary = json.loads((res.run_dir / "summary.json").read_text())
    assert {"final_acc_mean", "bytes_total", "bytes_per_agent_max", "wall_s"} <= set(summary)
    assert (res.run_dir / "config.yaml").exists()
    # the synthetic task is learnable: better than chance (4 classes)
    assert summary["final_acc_mean"] > 0.4, summary


def test_bytes_are_degree_times_state_size(tiny):
    res = run(tiny("algorithm=dsgd", "backend=inprocess", "topology=ring"))
    # mlp 64-32-4 : (64*32+32) + (32*4+4) float32 parameters, no buffers
    state_bytes = 4 * ((64 * 32 + 32) + (32 * 4 + 4))
    per_round = 4 * 2 * state_bytes  # 4 agents, 2 ring neighbours each
    assert res.records[0]["bytes_total"] == per_round
    assert res.records[-1]["bytes_total"] == 2 * per_round
    assert res.records[-1]["bytes_sent"] == [2 * 2 * state_bytes] * 4


def test_dsgd_full_topology_reaches_exact_consensus(tiny):
    # W = 1/N everywhere: one gossip round makes every agent the average
    res = run(tiny("algorithm=dsgd", "backend=inprocess", "topology=full", "topology.weights=uniform"))
    assert res.records[-1]["consensus"] < 1e-9
    acc = res.records[-1]["acc"]
    assert max(acc) - min(acc) < 1e-9
    assert res.records[-1]["acc_avg_model"] == pytest.approx(acc[0])


def test_local_sends_nothing_and_centralized_runs(tiny):
    local = run(tiny("algorithm=local", "backend=inprocess"))
    assert local.summary["bytes_total"] == 0
    central = run(tiny("algorithm=centralized", "backend=inprocess"))
    assert central.summary["bytes_total"] == 0
    assert len(central.records[-1]["acc"]) == 1


def test_inprocess_is_bit_for_bit_repeatable(tiny, tmp_path):
    a = run(tiny("algorithm=dsgd", "backend=inprocess", f"run.dir={tmp_path}/a"))
    b = run(tiny("algorithm=dsgd", "backend=inprocess", f"run.dir={tmp_path}/b"))
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("wall_s", "merge_s", "exchange_s")} for r in rs]
    assert strip(a.records) == strip(b.records)


def test_ray_matches_inprocess(tiny, tmp_path):
    common = ("algorithm=dsgd", "agents=4", "rounds=3")
    a = run(tiny(*common, "backend=inprocess", f"run.dir={tmp_path}/a"))
    b = run(tiny(*common, "backend=ray", "backend.num_cpus=2", f"run.dir={tmp_path}/b"))
    for ra, rb in zip(a.records, b.records):
        np.testing.assert_allclose(ra["acc"], rb["acc"], atol=1e-6)
        # one host in-process; on Ray the two actors split the average model's test samples (`spread`)
        assert ra["acc_avg_model"] == pytest.approx(rb["acc_avg_model"], abs=1e-6)
        assert ra["consensus"] == pytest.approx(rb["consensus"], rel=1e-4, abs=1e-8)
        assert ra["bytes_total"] == rb["bytes_total"]


def test_bad_input_is_refused_before_anything_is_written(tiny, tmp_path):
    with pytest.raises(ConfigError, match="agents=1"):
        run(tiny("agents=1"))
    with pytest.raises(ConfigError, match="alpha"):
        run(tiny("partition=dirichlet", "partition.alpha=0"))
    assert not (tmp_path / "run").exists()


def test_gossiping_momentum_doubles_the_payload_and_mixes_the_buffers(tiny):
    plain = run(tiny("algorithm=dsgd", "backend=inprocess", "topology=full", "rounds=1"))
    both = run(tiny("algorithm=dsgd", "backend=inprocess", "topology=full", "rounds=1", "algorithm.gossip_momentum=true"))
    assert both.summary["bytes_total"] == 2 * plain.summary["bytes_total"]
    assert both.records[-1]["consensus"] < 1e-9  # full graph, W = 1/N: weights (and buffers) agree exactly


def test_gossip_momentum_needs_a_momentum_optimizer(tiny):
    with pytest.raises(ConfigError, match="gossip_momentum"):
        run(tiny("algorithm=dsgd", "algorithm.optimizer.name=adam", "algorithm.gossip_momentum=true"))


def test_a_diverging_agent_is_rolled_back_instead_of_poisoning_its_neighbours(tiny, monkeypatch):
    # every agent blows up in round 1 (its weights go non-finite): all are rolled back, the run stays finite
    from dimat.agent import Agent

    real = Agent.train

    def blows_up_once(self, steps):
        loss = real(self, steps)
        if self.steps_done == steps:
            self.vec.mul_(float("inf"))
        return loss

    monkeypatch.setattr(Agent, "train", blows_up_once)
    res = run(tiny("algorithm=dsgd", "backend=inprocess", "pretrain_epochs=0"))
    assert res.records[0]["rolled_back"] == [0, 1, 2, 3]
    assert np.isfinite(res.records[-1]["consensus"])
    assert all(np.isfinite(a) for a in res.records[-1]["acc"])


def test_a_nan_injected_into_one_agent_reaches_no_neighbour(tiny, monkeypatch):
    from dimat.agent import Agent

    real_train = Agent.train

    def poisoned(self, steps):
        loss = real_train(self, steps)
        if self.index == 1:
            self.vec[0] = float("nan")  # agent 1's weights go bad during local training
        return loss

    monkeypatch.setattr(Agent, "train", poisoned)
    res = run(tiny("algorithm=dsgd", "backend=inprocess", "topology=ring"))
    assert all(r["rolled_back"] == [1] for r in res.records)
    assert np.isfinite(res.records[-1]["consensus"]) and np.isfinite(res.records[-1]["acc_avg_model"])
    assert res.records[-1]["acc"][0] > 0.3 and res.records[-1]["acc"][2] > 0.3  # its ring neighbours still learn


def test_final_figures_are_on_the_full_test_set_whatever_eval_says(tiny, tmp_path):
    big = ("data.n_test=3000", "algorithm=dsgd", "backend=inprocess", "rounds=3")  # 3,000 test samples
    full = run(tiny(*big, "eval.max_samples=null", f"run.dir={tmp_path}/full"))
    light = run(tiny(*big, "eval.max_samples=100", "eval.agents=2", "eval.every=2", f"run.dir={tmp_path}/light"))
    default = run(tiny(*big, f"run.dir={tmp_path}/default"))  # a 2,000-sample subsample during the run
    for key in ("final_acc_mean", "final_acc_min", "final_acc_max", "final_acc_avg_model", "final_acc_global_merge"):
        assert light.summary[key] == full.summary[key] == default.summary[key], key
    # during the run: the subsample and the agents due; the last round: the full test set and every agent
    assert [r["eval_samples"] for r in light.records] == [100, 3000] and full.records[-1]["eval_samples"] == 3000
    assert [r["eval_samples"] for r in default.records] == [2000, 2000, 3000]
    assert light.summary["final_eval_samples"] == 3000
    assert [r.get("evaluated_agents") for r in light.records] == [[0, 1], None]  # a rotating subset of 2, then all
    assert len(light.records[0]["acc"]) == 2 and len(light.records[-1]["acc"]) == 4
    assert light.summary["eval_s"] > 0 and light.summary["final_eval_s"] > 0


def test_the_before_merge_figures_are_on_the_subsample_in_the_last_round_too(tiny):
    res = run(tiny("algorithm=dimat", "backend=inprocess", "data.n_test=3000", "eval.max_samples=100",
                   "eval.before_merge=true", "rounds=2"))
    first, last = res.records
    assert first["eval_samples"] == first["eval_samples_before_merge"] == 100
    assert last["eval_samples"] == 3000 and last["eval_samples_before_merge"] == 100  # the final figures: all
    assert 0 <= last["acc_before_merge"] <= 1


@pytest.mark.parametrize("algorithm, before", [("dsgd", False), ("dimat", True), ("local", False)])
@pytest.mark.parametrize("n_train, rounds", [(4000, 12), (20000, 12), (800, 6)])
def test_by_default_evaluation_takes_at_most_a_fifth_of_the_run(tiny, algorithm, before, n_train, rounds):
    """eval.every=null spaces evaluated rounds so that the whole run's evaluation (forward passes, a third of a
    trained sample's cost), the last round's on the full test set included, stays within a fifth of the run;
    where the last round alone exceeds it, only the last round is evaluated. eval.before_merge=null evaluates
    before merges only for dimat."""
    from dimat.api import to_plain
    from dimat.components import EVAL_COST, setup

    s = setup(to_plain(tiny(f"algorithm={algorithm}", "backend=inprocess", "eval.every=null", "agents=8",
                            f"rounds={rounds}", f"data.n_train={n_train}", "data.n_test=2000",
                            "eval.max_samples=500")))
    c, e = s.cfg, s.cfg["eval"]
    assert e["before_merge"] is before
    models = 8 * (2 if before else 1) + 1  # the agents (before and after a merge) and the average model
    # the last round: the agents after the merge, the average and the global merge on the full test set, the
    # agents before the merge on the subsample
    last = EVAL_COST * (2000 * (8 + 1 + (1 if c["final_merge"]["enabled"] else 0)) + (500 * 8 if before else 0))
    trained = 8 * s.steps_per_round * c["batch_size"] * rounds + 8 * s.pretrain_steps * c["batch_size"]

    def share(every: int) -> float:
        evaluated = EVAL_COST * 500 * models * ((rounds - 1) // every) + last
        return evaluated / (evaluated + trained)

    every = e["every"]
    assert 1 <= every <= rounds
    assert share(every) <= 0.2 or every == rounds  # within the budget, or nothing but the last round
    assert every == 1 or share(every - 1) > 0.2  # and the densest spacing that is
    if n_train == 800:  # 100 training samples per agent against 2,000 test samples: the last round is over it
        assert every == rounds and share(rounds) > 0.2
    if n_train == 20000:
        assert every == 1  # enough training to afford a record every round
    if n_train == 4000:
        assert 1 < every < rounds  # records during the run, spaced


def test_spread_gives_the_extra_models_batches_to_the_least_busy_hosts():
    from dimat.experiment import spread

    # 5 agents on two hosts (3 + 2) and 10,000 test samples: the average model's whole evaluation goes to the
    # host with two agents, and both finish after 30,000 predictions instead of 40,000 on host 0
    assert spread([30000, 20000], 10000, 250) == [(0, 0), (0, 10000)]
    # idle hosts (the final global merge): an even split in whole batches, contiguous, covering every sample
    parts = spread([0, 0, 0], 1000, 256)
    assert parts == [(0, 512), (512, 768), (768, 1000)]
    for loads, m, bs in (([0], 7, 256), ([5, 900, 0, 40], 2000, 64), ([100] * 7, 3, 1)):
        parts = spread(loads, m, bs)
        assert len(parts) == len(loads) and parts[0][0] == 0 and parts[-1][1] == m
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        assert all(lo % bs == 0 for lo, _ in parts)  # every batch is the one a single pass predicts
        finish = [load + (hi - lo) for load, (lo, hi) in zip(loads, parts)]
        assert max(finish) <= max(max(loads), -(-(sum(loads) + m) // len(loads))) + bs


def test_the_evaluation_subsample_is_class_stratified():
    from dimat.components import eval_subsample

    y = np.repeat(np.arange(10), [500, 300, 200, 100, 100, 100, 100, 100, 100, 400])
    idx = eval_subsample(y, 400, seed=0)
    assert len(idx) == 400 and np.array_equal(idx, np.sort(idx))
    assert np.bincount(y[idx], minlength=10).tolist() == [100, 60, 40, 20, 20, 20, 20, 20, 20, 80]
    assert eval_subsample(y, 5000, seed=0) is None  # asking for at least the whole set: the whole set


def test_exchange_first_merges_before_the_local_steps(tiny):
    # on the full graph (W = 1/N) an exchange leaves every agent at the average: exact consensus when the round
    # ends with it; with exchange_first the agents then train on their own shards and have moved apart
    last = run(tiny("algorithm=dsgd", "backend=inprocess", "topology=full", "rounds=1"))
    first = run(tiny("algorithm=dsgd", "backend=inprocess", "topology=full", "rounds=1", "exchange_first=true"))
    assert last.records[-1]["consensus"] < 1e-8 < first.records[-1]["consensus"]
    assert first.records[-1]["bytes_total"] == last.records[-1]["bytes_total"] > 0
    with pytest.raises(ConfigError, match="exchange_first"):
        run(tiny("algorithm=local", "backend=inprocess", "exchange_first=true"))
