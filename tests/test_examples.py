"""examples/: a user's own model, dataset loader and algorithm, run by the CLI and by the Python API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dimat.metrics import read_metrics

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMALL = ["agents=4", "rounds=3", "run.progress=false", "backend.timeout_s=120", "+data.n_train=600",
         "+data.n_test=300", "eval.every=1"]
BY_TARGET = ["data=custom", "data._target_=mylab.data.spirals", "model=custom", "model._target_=mylab.models.ResidualMLP",
             "+model.width=32", "algorithm=custom", "algorithm._target_=mylab.algorithms.TrimmedMean",
             "+algorithm.trim=1"]


def _run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """A command from examples/ (the user's package is importable from the working directory, nowhere else)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, *args], cwd=EXAMPLES, capture_output=True, text=True, env=env, timeout=timeout)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return p


@pytest.mark.timeout(600)
def test_user_components_by_target_run_on_both_backends_with_identical_results(tmp_path):
    for backend in ("inprocess", "ray"):
        extra = ["backend.num_cpus=2"] if backend == "ray" else []
        args = [a for a in SMALL if backend == "ray" or not a.startswith("backend.")]
        _run(["-m", "dimat", *BY_TARGET, *args, f"backend={backend}", *extra, f"run.dir={tmp_path}/{backend}"])
    a, b = read_metrics(tmp_path / "inprocess"), read_metrics(tmp_path / "ray")
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        np.testing.assert_allclose(ra["acc"], rb["acc"], atol=1e-6)
        assert ra["bytes_total"] == rb["bytes_total"]
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    width, n_in, classes = 32, 2, 3  # the user's model on the user's 2-d, 3-class data
    params = (n_in * width + width) + 2 * ((width * 2 * width + 2 * width) + (2 * width * width + width)) + (width * classes + classes)
    assert summary["model_bytes"] == 4 * params
    assert summary["algorithm"] == "trimmed_mean" and summary["final_acc_global_merge"] is not None
    assert a[-1]["acc_mean"] > 0.5  # three spiral arms: chance is 1/3


def test_user_components_from_their_own_yaml_folder(tmp_path):
    p = _run(["-m", "dimat", "-cd", "conf", "data=spirals", "model=residual_mlp", "algorithm=trimmed_mean",
              "backend=inprocess", *[a for a in SMALL if not a.startswith(("backend.", "+data"))],
              "data.n_train=600", "data.n_test=300", f"run.dir={tmp_path}/run"])
    assert "trimmed_mean done" in p.stdout
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["algorithm"] == "trimmed_mean"


def test_the_python_api_script(tmp_path):
    p = _run(["run_api.py", "rounds=2", "run.progress=false", f"run.dir={tmp_path}/run"])
    assert "global merge" in p.stdout
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    assert "mylab.models.ResidualMLP" in cfg and "mylab.algorithms.TrimmedMean" in cfg  # objects recorded by path


def test_dimat_aligns_the_users_model_in_its_merges_and_the_global_merge(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import dimat
    from dimat.components import setup
    from mylab.data import spirals
    from mylab.models import ResidualMLP

    cfg = dimat.compose(["agents=4", "rounds=2", "backend=inprocess", "run.progress=false", "partition=iid",
                         "pretrain_epochs=2", f"run.dir={tmp_path}/run"])
    s = setup(dimat.api.to_plain(cfg), model=ResidualMLP, dataset=spirals(n_train=600, n_test=300))
    axes = {g: {(e.key, e.axis) for e in entries} for g, entries in s.perm_spec.groups.items()}
    stream = [g for g, pairs in axes.items() if ("head.weight", 1) in pairs]
    assert stream and ("stem.weight", 0) in axes[stream[0]]  # the residual stream is one group
    res = dimat.run(cfg, model=ResidualMLP, dataset=spirals(n_train=600, n_test=300))
    assert res.summary["final_acc_global_merge"] > 0.5


def test_a_users_model_starts_from_its_own_state_dicts(tmp_path, monkeypatch):
    """init_from with a model dimat has never seen: agent_<i>.pt state dicts a user saved themselves."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import torch

    import dimat
    from dimat.components import setup
    from mylab.data import spirals
    from mylab.models import ResidualMLP

    data = spirals(n_train=600, n_test=300)
    folder = tmp_path / "mine"
    folder.mkdir()
    models = []
    for i in range(4):
        torch.manual_seed(100 + i)
        models.append(ResidualMLP(input_shape=data.input_shape, num_classes=data.num_classes))
        torch.save(models[-1].state_dict(), folder / f"agent_{i}.pt")
    cfg = dimat.compose(["agents=4", "rounds=1", "backend=inprocess", "run.progress=false", "partition=iid",
                         "eval.max_samples=null", f"init_from={folder}", f"run.dir={tmp_path}/run"])
    res = dimat.run(cfg, model=ResidualMLP, dataset=data)
    prepared = setup(dimat.api.to_plain(cfg), model=ResidualMLP, dataset=data).dataset  # as the agents see it
    x = torch.from_numpy(prepared.x_test)
    with torch.no_grad():
        expected = [float((m.eval()(x).argmax(1).numpy() == prepared.y_test).mean()) for m in models]
    assert res.records[0]["round"] == 0 and res.records[0]["acc"] == pytest.approx(expected)
