"""Bad input is refused up front: one line naming the problem and the fix, exit code 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from dimat.experiment import ConfigError, run

BAD = [
    (["agents=1"], "at least 2 agents"),
    (["topology=erdos_renyi", "topology.p=0"], "use a larger p"),
    (["topology=edgelist", "topology.path=EDGES"], "has 3 nodes but agents=4"),
    (["partition=dirichlet", "partition.alpha=0"], "alpha"),
    (["agents=600"], "more data"),
    (["data=mnist", "data.root=/nonexistent/mnist"], "/nonexistent/mnist"),
    (["schedule=late", "schedule.p1=1.5"], "schedule.p1"),
    (["schedule=periodic", "schedule.every=0"], "schedule.every"),
    (["budget.bytes=10"], "smaller than one exchange"),
    (["model=resnet20", "model.width=0"], "width=0"),
    (["eval.every=0"], "eval.every"),
    (["backend=inprocess", "backend.comm=torch"], "use backend=ray"),
    (["backend.comm=mpi"], "object_store or torch"),
    (["algorithm=cdsgd", "local_steps=5"], "every step"),
]


@pytest.mark.parametrize("overrides,message", BAD)
def test_bad_input_raises_one_clear_line_and_writes_nothing(tiny, tmp_path, overrides, message):
    edges = tmp_path / "edges.txt"
    edges.write_text("0 1\n1 2\n")
    overrides = [o.replace("EDGES", str(edges)) for o in overrides]
    with pytest.raises(ConfigError) as err:
        run(tiny(*overrides))
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_model_without_a_derivable_spec_is_refused_for_permutation_merges(monkeypatch, tiny):
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                return self.fc(x.flatten(1))
            return -self.fc(x.flatten(1))

    import dimat.runtime.host as host

    monkeypatch.setattr(host, "build_model", lambda *a, **k: Untraceable())
    with pytest.raises(ConfigError, match="PermutationSpec"):
        run(tiny("algorithm=dimat", "merge=weight", "backend=inprocess"))
    run(tiny("algorithm=dimat", "merge=average", "backend=inprocess", "rounds=1"))  # no spec needed


def test_cli_exits_with_code_2_and_leaves_no_folder(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    p = subprocess.run(
        [sys.executable, "-m", "dimat", "agents=1", "data=synthetic"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120,
    )
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().startswith("error: agents=1") and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not any(tmp_path.rglob("*")), list(tmp_path.rglob("*"))
