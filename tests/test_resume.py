"""Checkpoints: a run that crashes and is resumed writes the same metrics as one that never stopped."""

from __future__ import annotations

import pytest
import torch

from dimat import experiment
from dimat.experiment import run
from dimat.metrics import read_metrics

TIME_KEYS = {"wall_s", "merge_s", "exchange_s"}
COMMON = ("backend=inprocess", "rounds=5", "run.checkpoint_every=2", "model.hidden=[16]")


def _strip(recs):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in recs]


@pytest.mark.parametrize("algorithm", [
    "dsgd", "dimat", "gt", "d2", "qgm", "cga",  # their per-agent state (trackers, momentum, ...) is checkpointed
    "dsgd,backend.vectorize=true,algorithm.optimizer=msgd",  # momentum rows of a vectorized group
])
def test_a_crashed_run_resumes_to_the_same_metrics(tiny, tmp_path, monkeypatch, algorithm):
    algorithm, *extra = algorithm.split(",")
    full = run(tiny(*COMMON, f"algorithm={algorithm}", *extra, f"run.dir={tmp_path}/full"))

    real_round = experiment.Driver.round

    def crash_in_round_4(self, r):
        if r == 4:
            raise KeyboardInterrupt("killed")
        real_round(self, r)

    monkeypatch.setattr(experiment.Driver, "round", crash_in_round_4)
    with pytest.raises(KeyboardInterrupt):
        run(tiny(*COMMON, f"algorithm={algorithm}", *extra, f"run.dir={tmp_path}/crash"))
    assert [r["round"] for r in read_metrics(tmp_path / "crash")] == [1, 2, 3]  # round 3 is after the checkpoint
    monkeypatch.setattr(experiment.Driver, "round", real_round)

    resumed = run(tiny(*COMMON, f"algorithm={algorithm}", *extra, f"run.dir={tmp_path}/crash"), resume=True)
    assert _strip(read_metrics(tmp_path / "crash")) == _strip(read_metrics(full.run_dir))
    assert resumed.summary["bytes_total"] == full.summary["bytes_total"]
    assert resumed.summary["final_acc_mean"] == full.summary["final_acc_mean"]


def test_checkpoints_load_with_weights_only(tiny):
    res = run(tiny("algorithm=dimat", "backend=inprocess", "run.checkpoint_every=1"))
    files = sorted((res.run_dir / "checkpoint").glob("*.pt"))
    assert {f.name for f in files} >= {"driver.pt", "agent_0.pt", "agent_3.pt"}
    for f in files:
        torch.load(f, weights_only=True)  # raises if anything but tensors and plain values were saved
    assert not list(res.run_dir.glob("*.tmp")) and not (res.run_dir / "checkpoint.tmp").exists()


def test_a_truncated_checkpoint_falls_back_to_the_previous_one(tiny, tmp_path):
    common = ("algorithm=dsgd", "backend=inprocess", "rounds=3", "run.checkpoint_every=1")
    full = run(tiny(*common, f"run.dir={tmp_path}/full"))
    damaged = full.run_dir / "checkpoint" / "agent_1.pt"
    damaged.write_bytes(damaged.read_bytes()[:100])  # a crash mid-write (on a filesystem without atomic rename)
    resumed = run(tiny(*common, f"run.dir={tmp_path}/full"), resume=True)  # replays round 3 from round 2's
    assert _strip(resumed.records) == _strip(full.records)
