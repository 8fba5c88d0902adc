"""DIMAT's core effect in miniature, and its merge step against direct computations."""

from __future__ import annotations

import json

import pytest

from cfg_helpers import compose_cfg, tiny_overrides
from dimat import run


COMMON = ["data=digits", "model.hidden=[128,128]", "agents=5", "partition=iid", "batch_size=32", "backend=inprocess",
          "algorithm.optimizer.name=adam", "algorithm.optimizer.lr=0.001"]


@pytest.fixture(scope="module")
def trained_alone(tmp_path_factory):
    """DIMAT's phase one: every agent trained alone from its own init (Adam 1e-3, 30 local epochs)."""
    d = tmp_path_factory.mktemp("alone")
    return run(compose_cfg(tiny_overrides([f"run.dir={d}/run", *COMMON, "algorithm=local", "init=independent",
                                           "rounds=1", "local_epochs=30"]))).run_dir


def first_merge_accuracy(tiny, folder, method: str) -> float:
    """Phase two from those agents (init_from): one local step, then one ring merge."""
    res = run(tiny(*COMMON, f"init_from={folder}", "rounds=1", "local_steps=1", "topology=ring", "algorithm=dimat",
                   f"merge={method}", "final_merge.enabled=false"))
    return res.records[-1]["acc_after_merge"]


def test_aligned_merges_beat_plain_averaging_by_20_points(tiny, trained_alone):
    acc = {m: first_merge_accuracy(tiny, trained_alone, m) for m in ("average", "weight", "activation")}
    alone = json.loads((trained_alone / "summary.json").read_text())["final_acc_mean"]
    msg = f"first-merge accuracy: {acc}, agents alone before it: {alone}"
    print(msg)  # the figures of docs/alignment.md: pytest tests/test_dimat.py -k aligned_merges -s
    assert acc["weight"] >= acc["average"] + 0.20, msg
    assert acc["activation"] >= acc["average"] + 0.20, msg


def test_dimat_records_before_and_after_merge_and_the_global_merge(tiny):
    res = run(tiny("algorithm=dimat", "backend=inprocess", "init=independent", "pretrain_epochs=2"))
    rec = res.records[-1]
    assert {"acc_before_merge", "acc_after_merge", "consensus_before_merge", "exchanges_planned", "merge_s"} <= set(rec)
    assert rec["exchanges"] == rec["exchanges_planned"] == 8  # ring of 4: two neighbours each
    assert 0.0 <= res.summary["final_acc_global_merge"] <= 1.0
    assert res.summary["bytes_final_merge"] == 2 * 4 * (res.summary["bytes_total"] // (2 * 8))


@pytest.mark.parametrize("opt_state", ["keep", "reset"])
def test_optimizer_state_setting(tiny, opt_state):
    res = run(tiny("algorithm=dimat", "backend=inprocess", f"algorithm.opt_state={opt_state}", "algorithm.optimizer.name=adam",
                   "algorithm.optimizer.lr=0.01"))
    assert res.summary["final_acc_mean"] > 0.3


def test_proxy_merge_data_is_used_and_reported(tiny, capsys):
    res = run(tiny("algorithm=dimat", "merge=activation", "merge.data=proxy", "merge.samples=64", "backend=inprocess",
                   "run.progress=true"))
    assert "proxy set of 64 training samples" in capsys.readouterr().out
    assert res.summary["final_acc_mean"] > 0.3


def test_combine_with_repair_gives_every_channel_the_rows_interpolation():
    # merge=average: the endpoints are the agent's and its neighbours' models as they are, so the target is
    # computed here directly from them
    import numpy as np
    import torch

    from dimat.agent import Agent
    from dimat.algorithms.base import Received
    from dimat.algorithms.dimat import Dimat
    from dimat.flat import flatten_module
    from dimat.merge import channel_stats, interpolate
    from dimat.models import build_model

    x = np.random.default_rng(0).normal(size=(300, 1, 8, 8)).astype(np.float32)
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(build_model("cnn", (1, 8, 8), 10, norm="bn"))
    algo = Dimat(merge={"method": "average", "samples": 200, "repair": True})
    agent = Agent(0, models[0], x, np.zeros(300, np.int64), np.arange(300), batch_size=16, optimizer=algo.optimizer,
                  seed=0)
    algo.prepare(agent, torch.from_numpy(x[:2]))
    data = agent.local_samples(200)
    weights = [0.5, 0.25, 0.25]
    targets = interpolate([channel_stats(m, algo.points, data) for m in models], weights)
    received = [Received(j, flatten_module(models[j])[0].numpy().copy(), weights[j]) for j in (1, 2)]
    algo.combine(agent, weights[0], received)
    for name, (_, mean, var) in channel_stats(agent.model, algo.points, data).items():
        assert torch.allclose(mean, targets[name][0], atol=1e-4), name
        assert torch.allclose(var.sqrt(), targets[name][1], atol=1e-4), name
    assert [p.kind for p in algo.points] == ["bn", "bn", "layer"]


@pytest.mark.parametrize("method", ["weight", "average"])
def test_repair_runs_end_to_end_and_counts_its_statistics(tiny, method):
    res = run(tiny("algorithm=dimat", f"merge={method}", "merge.repair=true", "backend=inprocess", "model=cnn",
                   "model.norm=bn", "model.width=1", "init=independent", "pretrain_epochs=1"))
    plain = run(tiny("algorithm=dimat", f"merge={method}", "backend=inprocess", "model=cnn", "model.norm=bn",
                     "model.width=1", "init=independent", "pretrain_epochs=1", "run.dir=" + str(res.run_dir) + "_plain"))
    assert 0.0 <= res.summary["final_acc_global_merge"] <= 1.0
    # the same run without REPAIR: REPAIR's statistics travel on top of the final merge's models
    assert res.summary["bytes_final_merge"] > plain.summary["bytes_final_merge"]
    assert res.records[-1]["consensus"] != plain.records[-1]["consensus"]  # the merges themselves changed


@pytest.mark.parametrize("overrides,message", [
    (["algorithm=dsgd", "merge.repair=true"], "merge.repair=True"),
    (["algorithm=dimat", "merge.repair=true", "merge.bn_repair=false"], "merge.repair=true re-estimates"),
    (["algorithm=dimat", "merge.repair=true", "model=resnet20", "model.norm=none"], "merge.repair: layers"),
])
def test_repair_is_refused_where_it_cannot_apply(tiny, overrides, message):
    from dimat import ConfigError

    with pytest.raises(ConfigError, match=message):
        run(tiny("backend=inprocess", *overrides))
