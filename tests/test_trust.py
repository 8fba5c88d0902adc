"""Trust: a slip never loses a run, every failure is one line that says what to do, and a run that cannot
train says so instead of running to the end."""

from __future__ import annotations

import errno
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import dimat
from dimat import ConfigError, run
from dimat.experiment import Diverged
from dimat.metrics import RunWriter, read_metrics

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("lr", ["inf", "nan", "1e4", "0", "-1"])
def test_an_absurd_learning_rate_is_refused_at_start_up(tiny, lr):
    with pytest.raises(ConfigError, match=r"lr=.* is out of range: give 0 < lr <= 10"):
        run(tiny("backend=inprocess", f"algorithm.optimizer.lr={lr}"))


class NanNet(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.fc = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1)) * float("nan")


def test_a_model_with_non_finite_logits_is_refused_before_anything_starts(tiny, tmp_path):
    with pytest.raises(ConfigError, match="non-finite logits"):
        run(tiny("backend=inprocess"), model=NanNet)
    assert not (tmp_path / "run").exists()


def test_rollbacks_are_recorded_every_round_and_a_run_that_cannot_train_stops(tiny, monkeypatch, tmp_path):
    from dimat.agent import Agent

    real = Agent.train

    def poisoned(self, steps):
        loss = real(self, steps)
        if self.steps_done > 2 * steps:  # every agent's weights go bad from round 3 on
            self.vec[0] = float("nan")
        return loss

    monkeypatch.setattr(Agent, "train", poisoned)
    with pytest.raises(Diverged, match="rounds 3-5.*lower algorithm.optimizer.lr"):
        run(tiny("algorithm=dsgd", "backend=inprocess", "rounds=8", "eval.every=4", "pretrain_epochs=0"))
    recs = read_metrics(tmp_path / "run")
    assert [(r["round"], r["rolled_back"]) for r in recs if r.get("event")] == [(3, [0, 1, 2, 3]), (5, [0, 1, 2, 3])]
    assert [r["round"] for r in recs if not r.get("event")] == [4]  # evaluated, with its rollbacks



def test_rollbacks_in_rounds_not_evaluated_are_events_and_summed(tiny, monkeypatch):
    from dimat.agent import Agent

    real = Agent.train

    def poisoned(self, steps):
        loss = real(self, steps)
        if self.index == 1 and self.steps_done in (2 * steps, 3 * steps):  # agent 1 in rounds 2 and 3
            self.vec[0] = float("nan")
        return loss

    monkeypatch.setattr(Agent, "train", poisoned)
    res = run(tiny("algorithm=dsgd", "backend=inprocess", "rounds=4", "eval.every=4", "pretrain_epochs=0"))
    events = [r for r in read_metrics(res.run_dir) if r.get("event") == "rolled_back"]
    assert [(e["round"], e["rolled_back"]) for e in events] == [(2, [1]), (3, [1])]
    assert res.summary["rollbacks"] == 2


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one_and_says_so(tiny, monkeypatch, tmp_path):
    from dimat.runtime import checkpoint

    real_save = torch.save
    calls = {"n": 0}

    def save(obj, path, *a, **k):
        if "checkpoint.tmp" in str(path) and calls["n"] >= 5:  # the second checkpoint: the disk fills up
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 64")
        calls["n"] += 1
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    monkeypatch.setattr("dimat.metrics.disk_full", lambda folder, margin=1 << 20: True)
    with pytest.raises(OSError) as err:
        run(tiny("algorithm=dsgd", "backend=inprocess", "rounds=4", "run.checkpoint_every=1", "pretrain_epochs=0"))
    assert err.value.errno == errno.ENOSPC and "checkpoint.tmp" in str(err.value.filename)
    folder = tmp_path / "run"
    assert not (folder / "checkpoint.tmp").exists()
    assert checkpoint.newest_complete(folder)[0] == folder / "checkpoint"
    assert all(isinstance(r, dict) for r in read_metrics(folder))


def test_a_failed_metrics_write_leaves_the_previous_lines(tmp_path, monkeypatch):
    w = RunWriter(tmp_path)
    w.append({"round": 1, "acc_mean": 0.5})
    before = (tmp_path / "metrics.jsonl").read_bytes()

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("dimat.metrics.os.fsync", full)
    with pytest.raises(OSError) as err:
        w.append({"round": 2, "acc_mean": 0.6})
    assert err.value.errno == errno.ENOSPC and (tmp_path / "metrics.jsonl").read_bytes() == before


def _cli(args, tmp_path, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "dimat", *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_ctrl_c_is_one_line_exit_130_and_the_run_resumes(tmp_path):
    folder = tmp_path / "run"
    p = _cli(["backend=inprocess", "data=synthetic", "model.hidden=[16]", "rounds=400", "run.checkpoint_every=1",
              "run.progress=false", f"run.dir={folder}", "agents=3"], tmp_path)
    deadline = time.monotonic() + 60
    while not (folder / "checkpoint" / "driver.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert p.returncode == 130, err
    assert len(lines) == 1 and lines[0].startswith("interrupted") and f"resume={folder}" in lines[0], lines
    from dimat.runtime.checkpoint import saved_round

    done = saved_round(folder)
    resumed = dimat.resume(folder, [f"rounds={done + 1}"])  # the interrupted run continues
    assert resumed.records[-1]["round"] == done + 1


def test_a_full_disk_from_the_command_line_is_one_line(tmp_path):
    code = ("import sys, torch, dimat.metrics as m; real = torch.save\n"
            "def save(obj, path, *a, **k):\n"
            "    if 'checkpoint.tmp' in str(path): raise RuntimeError('unexpected pos')\n"
            "    return real(obj, path, *a, **k)\n"
            "torch.save = save; m.disk_full = lambda folder, margin=0: True\n"
            "from dimat.cli import main; sys.argv = ['dimat'] + sys.argv[1:]; main()\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, "backend=inprocess", "data=synthetic", "model.hidden=[16]",
                          "rounds=2", "run.progress=false", f"run.dir={tmp_path}/run"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "no space left" in lines[0], out.stderr
    assert not (tmp_path / "run" / "checkpoint.tmp").exists()


def test_a_host_that_does_not_answer_is_one_line_and_leaves_nothing(tmp_path):
    p = _cli(["backend.timeout_s=0.001", "agents=2", "rounds=1", "run.progress=false", f"run.dir={tmp_path}/run"],
             tmp_path)
    _, err = p.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "backend.timeout_s" in lines[0], err
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob("outputs/*/*"))
