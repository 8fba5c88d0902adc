"""Bad input is refused up front: one line naming the problem and the fix, exit code 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from dimat import ConfigError, run

BAD = [
    (["agents=1"], "at least 2 agents"),
    (["topology=erdos_renyi", "topology.p=0"], "use a larger p"),
    (["topology=edgelist", "topology.path=EDGES"], "numbers agents up to 2"),
    (["partition=dirichlet", "partition.alpha=0"], "alpha"),
    (["agents=600"], "more data"),
    (["data=mnist", "data.root=/nonexistent/mnist"], "/nonexistent/mnist"),
    (["schedule=late", "schedule.p1=1.5"], "schedule.p1"),
    (["schedule=periodic", "schedule.every=0"], "schedule.every"),
    (["budget.bytes=10"], "smaller than one exchange"),
    (["model=resnet20", "model.width=0"], "width=0"),
    (["eval.every=0"], "eval.every"),
    (["backend=inprocess", "backend.comm=torch"], "backend.comm is not an option"),
    (["backend.comm=mpi"], "object_store or torch"),
    (["algorithm=cdsgd", "local_steps=5"], "every step"),
    (["algorithm=cdsgd", "local_epochs=2"], "every step"),
    # what a new user hit on the way to their own components
    (["algorithm.optimizer.name=foo"], "algorithm.optimizer.name=foo is unknown: use one of sgd, msgd, adam"),
    (["algorithm.optimizer.lr=-1"], "algorithm.optimizer.lr=-1.0 is out of range"),
    (["algorithm.optimizer.name=adam", "algorithm.optimizer.momentum=0.5"], "momentum applies to name=msgd"),
    (["algorithm=dsgd", "merge=activation"], "merge.method=activation"),
    (["algorithm=dsgd", "algorithm.qp_margin=9"], "algorithm.qp_margin is not an option"),
    (["schedule.p1=0.99"], "schedule.p1 is not an option"),
    (["model=custom"], "model._target_ is missing"),
    (["schedule._target_=no.such.X"], "schedule._target_=no.such.X cannot be imported"),
    (["model=custom", "model._target_=dimat.models.Vitt"], "dimat.models has no Vitt: did you mean ViT"),
    (["model=custom", "model._target_=dimat.modelz.cnn"], "dimat has no modelz: did you mean models"),
    (["model._target_=torch.nn.Linear"], "model.hidden is not an argument of torch.nn.Linear"),
    (["algorithm=local", "budget.bytes=1e6"], "does not communicate"),
    (["algorithm=local", "schedule=late"], "does not communicate"),
    (["algorithm=fedavg", "backend.comm=torch"], "through a server"),
    (["algorithm=centralized", "final_merge.enabled=true"], "nothing to merge"),
    (["local_epochs=1", "local_steps=3"], "set one of them"),
]


@pytest.mark.parametrize("overrides,message", BAD)
def test_bad_input_raises_one_clear_line_and_writes_nothing(tiny, tmp_path, overrides, message):
    edges = tmp_path / "edges.txt"
    edges.write_text("0 1\n1 2\n")
    overrides = [o.replace("EDGES", str(edges)) for o in overrides]
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        run(tiny(*overrides))
    assert message in str(err.value), str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()
    assert time.perf_counter() - t0 < 30  # refused within seconds, before any host starts


class Untraceable(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.fc = nn.Linear(int(torch.tensor(input_shape).prod()), num_classes)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.fc(x.flatten(1))
        return -self.fc(x.flatten(1))


def test_a_model_without_a_derivable_spec_is_refused_for_permutation_merges(tiny):
    with pytest.raises(ConfigError, match="cannot be traced by torch.fx"):
        run(tiny("algorithm=dimat", "merge=weight", "backend=inprocess"), model=Untraceable)
    run(tiny("algorithm=dimat", "merge=average", "backend=inprocess", "rounds=1"), model=Untraceable)  # no spec needed


def test_a_model_with_the_wrong_head_is_refused(tiny):
    def three_classes(input_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))

    with pytest.raises(ConfigError, match=r"returns \(2, 3\) for 2 inputs: dimat needs logits of shape \(2, num_classes=4\)"):
        run(tiny("backend=inprocess"), model=three_classes)


def _cli(args, cwd, timeout=120):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.run([sys.executable, "-m", "dimat", *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.mark.parametrize("args,start", [
    (["agents=1", "data=synthetic"], "error: agents=1"),
    (["algorithm=dsgd", "algorithm.qp_margin=9"], "error: algorithm.qp_margin is not an option"),  # at compose time
    (["algorithm.optimizer.name=foo", "backend=inprocess"], "error: algorithm.optimizer.name=foo is unknown"),
])
def test_cli_exits_with_code_2_and_leaves_no_folder(tmp_path, args, start):
    t0 = time.perf_counter()
    p = _cli(args, tmp_path)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().startswith(start) and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not any(tmp_path.rglob("*")), list(tmp_path.rglob("*"))
    assert time.perf_counter() - t0 < 60


def test_quiet_runs_still_print_the_final_figures(tmp_path):
    p = _cli(["data=synthetic", "model.hidden=[16]", "agents=3", "rounds=1", "algorithm=dsgd", "backend=inprocess",
              "run.progress=false", f"run.dir={tmp_path}/run"], tmp_path)
    assert p.returncode == 0, p.stderr
    line = p.stdout.strip().splitlines()[-1]
    assert "final_acc_mean=" in line and "final_acc_global_merge=" in line and "KiB" in line, p.stdout
