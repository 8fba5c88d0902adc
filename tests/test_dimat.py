"""DIMAT's core effect in miniature, and its merge step against direct computations."""

from __future__ import annotations

import pytest

from dimat import run


def first_merge_accuracy(tiny, method: str) -> float:
    """The DIMAT protocol (Adam 1e-3, independent inits, 30 local epochs), then one ring merge."""
    res = run(tiny(
        "data=digits", "model.hidden=[128,128]", "agents=5", "rounds=1", "local_steps=1", "partition=iid",
        "topology=ring", "algorithm=dimat", f"merge={method}", "init=independent", "pretrain_epochs=30",
        "algorithm.optimizer.name=adam", "algorithm.optimizer.lr=0.001", "final_merge.enabled=false", "batch_size=32", "backend=inprocess",
    ))
    return res.records[0]["acc_after_merge"]


def test_aligned_merges_beat_plain_averaging_by_20_points(tiny):
    acc = {m: first_merge_accuracy(tiny, m) for m in ("average", "weight", "activation")}
    msg = f"first-merge accuracy: {acc}"
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
