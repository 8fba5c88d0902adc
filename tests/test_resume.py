"""Checkpoints: a run that crashes and is resumed writes the same metrics as one that never stopped."""

from __future__ import annotations

import pytest
import torch

from cfg_helpers import crash_at
import dimat
from dimat import ConfigError, run
from dimat.metrics import read_metrics

TIME_KEYS = {"wall_s", "merge_s", "exchange_s"}
COMMON = ("backend=inprocess", "rounds=5", "run.checkpoint_every=2", "model.hidden=[16]")


def _strip(recs):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in recs]


@pytest.mark.parametrize("algorithm", [
    "dsgd", "dimat", "gt", "d2", "qgm", "cga",  # their per-agent state (trackers, momentum, ...) is checkpointed
    "dsgd,backend.vectorize=true,algorithm.optimizer.name=msgd",  # momentum rows of a vectorized group
])
def test_a_crashed_run_resumes_to_the_same_metrics(tiny, tmp_path, algorithm):
    algorithm, *extra = algorithm.split(",")
    full = run(tiny(*COMMON, f"algorithm={algorithm}", *extra, f"run.dir={tmp_path}/full"))

    crash_at(tiny(*COMMON, f"algorithm={algorithm}", *extra, f"run.dir={tmp_path}/crash"), at=4)
    assert [r["round"] for r in read_metrics(tmp_path / "crash")] == [1, 2, 3]  # round 3 is after the checkpoint

    resumed = dimat.resume(tmp_path / "crash")
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
    resumed = dimat.resume(full.run_dir)  # replays round 3 from round 2's
    assert _strip(resumed.records) == _strip(full.records)


def test_resume_with_more_rounds_continues_the_run(tiny, tmp_path):
    common = ("algorithm=dsgd", "backend=inprocess", "run.checkpoint_every=1", "model.hidden=[16]")
    six = run(tiny(*common, "rounds=6", f"run.dir={tmp_path}/six"))
    four = run(tiny(*common, "rounds=4", f"run.dir={tmp_path}/four"))
    more = dimat.resume(four.run_dir, ["rounds=6"])  # what `python -m dimat resume=DIR rounds=6` does
    assert [r["round"] for r in more.records] == [1, 2, 3, 4, 5, 6]
    assert _strip(more.records)[4:] == _strip(six.records)[4:]  # rounds 5, 6: the same as never stopping
    assert more.summary["rounds"] == 6


def test_resume_refuses_what_cannot_change(tiny, tmp_path):
    res = run(tiny("algorithm=dsgd", "backend=inprocess", "rounds=3", "run.checkpoint_every=1"))
    with pytest.raises(ConfigError, match="algorithm.optimizer.lr cannot change when a run resumes"):
        dimat.resume(res.run_dir, ["algorithm.optimizer.lr=0.1"])
    with pytest.raises(ConfigError, match="rounds=2 but the checkpoint is at round 3"):
        dimat.resume(res.run_dir, ["rounds=2"])
    # through the config, as the CLI passes it: the overrides the user gave are what is compared
    with pytest.raises(ConfigError, match="agents cannot change"):
        run(tiny(f"resume={res.run_dir}", "backend=inprocess", "agents=6"))
    again = run(tiny(f"resume={res.run_dir}", "backend=inprocess", "rounds=4"))
    assert again.records[-1]["round"] == 4


def _damage(path):
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize("damaged", ["driver", "agent"])
def test_resume_without_a_readable_checkpoint_refuses_and_changes_nothing(tiny, tmp_path, damaged):
    res = run(tiny("algorithm=dsgd", "backend=inprocess", "rounds=3", "run.checkpoint_every=1"))
    for folder in ("checkpoint", "checkpoint.prev"):
        _damage(res.run_dir / folder / ("driver.pt" if damaged == "driver" else "agent_1.pt"))
    before = {p: p.read_bytes() for p in res.run_dir.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="no readable checkpoint.*nothing was changed"):
        dimat.resume(res.run_dir)
    after = {p: p.read_bytes() for p in res.run_dir.rglob("*") if p.is_file()}
    assert after == before  # metrics.jsonl, the intact agent files and summary.json all as they were


def test_a_run_never_writes_over_another(tiny, tmp_path):
    first = run(tiny("algorithm=dsgd", "backend=inprocess", "rounds=2"))
    metrics = (first.run_dir / "metrics.jsonl").read_bytes()
    with pytest.raises(ConfigError, match="holds a run already.*resume="):
        run(tiny("algorithm=dsgd", "backend=inprocess", "rounds=3", f"run.dir={first.run_dir}"))
    assert (first.run_dir / "metrics.jsonl").read_bytes() == metrics
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        run(tiny("backend=inprocess", f"run.dir={tmp_path}/a_file"))
    (tmp_path / "empty").mkdir()
    assert run(tiny("backend=inprocess", "rounds=1", f"run.dir={tmp_path}/empty")).records  # an empty folder is fine
