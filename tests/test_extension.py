"""Extension points: components from `_target_` or as objects, a Python API that is the CLI's, an algorithm
that owns its message pattern, schedules that declare what they need, and what the framework does once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dimat
import topologies
from dimat import ConfigError, experiment, run
from dimat.agent import Agent
from dimat.algorithms import Algorithm, Phase
from dimat.schedule import Periodic

MERGING = ["dimat", "dsgd", "choco", "cdsgd", "cdmsgd", "sgp", "cga", "gt", "d2", "qgm", "fedavg"]


@pytest.mark.parametrize("algorithm", MERGING)
def test_opt_state_reset_is_applied_by_the_framework_for_every_algorithm(tiny, monkeypatch, algorithm):
    """Every agent that merged gets a fresh optimizer once per exchange (cdsgd, sgp, qgm and cga forgot to)."""
    calls: list[int] = []
    real = Agent.reset_optimizer
    monkeypatch.setattr(Agent, "reset_optimizer", lambda self: (calls.append(self.index), real(self))[1])
    run(tiny(f"algorithm={algorithm}", "algorithm.opt_state=reset", "backend=inprocess", "rounds=3",
             "pretrain_epochs=0", "final_merge.enabled=false"))
    assert sorted(calls) == sorted(list(range(4)) * 3), calls  # 4 agents on a ring, 3 rounds, no rollbacks
    calls.clear()
    run(tiny(f"algorithm={algorithm}", "algorithm.opt_state=keep", "backend=inprocess", "rounds=3",
             "pretrain_epochs=0", "final_merge.enabled=false"))
    assert calls == []


def test_a_drop_is_judged_on_the_union_of_a_time_varying_topology():
    tv = topologies.build("one_peer_exponential", 8)
    experiment.check_connected(tv, [0, 1, 4, 5, 6, 7], [2, 3])  # step 0 alone is cut, the union is not
    with pytest.raises(RuntimeError, match="disconnects"):
        experiment.check_connected(tv, [0, 3], [1, 2, 4, 5, 6, 7])


def test_run_takes_a_mapping_of_choices_and_values(tmp_path):
    res = run({"algorithm": "dsgd", "data": "synthetic", "backend": "inprocess", "agents": 3, "rounds": 1,
               "model": {"hidden": [16]}, "run": {"progress": False, "dir": str(tmp_path / "run")}})
    assert res.summary["agents"] == 3 and res.summary["algorithm"] == "dsgd"
    with pytest.raises(ConfigError, match="agentz"):
        run({"agentz": 3})


def test_a_run_records_objects_by_their_import_path(tiny):
    from dimat.models import cnn

    res = run(tiny("backend=inprocess", "algorithm=dsgd", "rounds=1"), model=cnn)
    cfg = (res.run_dir / "config.yaml").read_text()
    assert "_target_: dimat.models.cnn" in cfg
    assert res.summary["model_bytes"] > 4 * (64 * 32 + 32)  # the cnn's, not the config's mlp


class MedianServer(Algorithm):
    """A user's algorithm with a server pattern: every agent uploads, the driver takes the coordinate-wise median."""

    name = "median_server"
    phases = (Phase("server"),)

    def aggregate(self, payloads, sizes):
        return np.median(np.stack(list(payloads.values())), axis=0).astype(np.float32)


class PullPush(Algorithm):
    """A user's two-phase pattern: agents send their state; each receiver answers with (its state − the sender's);
    senders move half way along the mean answer. Messages of different sizes per phase."""

    name = "pull_push"
    phases = (Phase("gossip", receive="answer"), Phase("reply", receive="move"))

    def message_floats(self, phase, layout):
        return layout.size if phase == 0 else layout.n_params

    def answer(self, agent, self_weight, received):
        n = agent.layout.n_params
        return {r.source: (agent.state()[:n] - r.state[:n]) for r in received}

    def move(self, agent, self_weight, answers):
        if answers:
            n = agent.layout.n_params
            agent.vec[:n] += 0.5 * torch.from_numpy(np.mean([a.state for a in answers], axis=0))


def test_an_algorithm_with_its_own_message_pattern_is_one_class(tiny):
    med = run(tiny("backend=inprocess", "rounds=2", "eval.every=1"), algorithm=MedianServer)
    state = med.summary["model_bytes"]
    assert med.summary["bytes_total"] == 2 * 2 * 4 * state  # rounds × (up + down) × agents × state
    assert all(r["consensus"] < 1e-12 for r in med.records)  # everyone holds the median after each round
    pp = run(tiny("backend=inprocess", "rounds=2", "topology=full", "eval.every=1"), algorithm=PullPush)
    n_params = state // 4  # the mlp has no buffers
    assert pp.summary["bytes_total"] == 2 * 4 * 3 * (state + 4 * n_params)  # a state out, a difference back
    # on a full graph of 4 the mean answer is 4/3·(x̄ − x_i): a half step leaves a third of each deviation
    for rec in pp.records:
        assert rec["consensus"] == pytest.approx(rec["consensus_before_merge"] / 9, rel=1e-4)


class Recording(Periodic):
    """A user's schedule that needs the consensus distance: what it was shown is kept."""

    seen: list = []
    needs = frozenset({"consensus"})

    def plan(self, progress, W, measured):
        Recording.seen.append(measured["consensus"])
        return super().plan(progress, W, measured)


def test_a_schedule_gets_the_measurements_it_declares(tiny):
    Recording.seen.clear()
    run(tiny("backend=inprocess", "algorithm=dsgd", "rounds=3", "eval.every=3", "schedule=custom",
             "schedule._target_=test_extension.Recording"))
    assert len(Recording.seen) == 3 and all(np.isfinite(Recording.seen))  # measured every round, not just at evals


def test_a_topology_builder_of_the_users(tiny):
    import networkx as nx

    res = run(tiny("backend=inprocess", "algorithm=dsgd", "rounds=1", "agents=6"), topology=nx.circulant_graph(6, [1, 2]))
    assert res.records[-1]["exchanges"] == 6 * 4
    with pytest.raises(ConfigError, match="is not connected"):
        run(tiny("backend=inprocess", "agents=6"), topology=nx.empty_graph(6))


def test_a_partitioner_of_the_users_is_checked(tiny):
    with pytest.raises(ConfigError, match="several agents"):
        run(tiny("backend=inprocess", "partition=custom", "partition._target_=test_extension.overlapping"))


def overlapping(labels, n_agents, seed=0):
    return [np.arange(10)] * n_agents
