"""dimat's optimizers against torch.optim's foreach ones: the same steps to the bit, the same state_dict format,
and no torch._dynamo import (the reason they exist)."""

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from dimat.optim import Optimizer


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3), nn.Linear(3, 3))


def _torch_opt(params, name, lr, momentum, wd):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, foreach=True)
    return torch.optim.SGD(params, lr=lr, momentum=momentum if name == "msgd" else 0.0, weight_decay=wd,
                           foreach=True)


def _steps(net, opt, n, seed, frozen_until=0):
    """n steps on random batches; the last layer gets no gradient for the first `frozen_until` steps."""
    g = torch.Generator().manual_seed(seed)
    last = list(net[-1].parameters())
    for k in range(n):
        x, y = torch.randn(5, 1, 8, 8, generator=g), torch.randint(0, 3, (5,), generator=g)
        for p in last:
            p.requires_grad_(k >= frozen_until)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()


@pytest.mark.parametrize("name,wd", [("sgd", 0.0), ("sgd", 1e-3), ("msgd", 0.0), ("msgd", 5e-4), ("adam", 0.0),
                                     ("adam", 1e-4)])
def test_same_steps_as_torch_optim_to_the_bit(name, wd):
    ours, theirs = _net(), _net()
    a = Optimizer(ours.parameters(), name, lr=0.05, momentum=0.9, weight_decay=wd)
    b = _torch_opt(theirs.parameters(), name, 0.05, 0.9, wd)
    _steps(ours, a, 6, seed=1, frozen_until=2)  # a parameter without a gradient is skipped, its state starts late
    _steps(theirs, b, 6, seed=1, frozen_until=2)
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(ours.parameters(), _net().parameters()))


@pytest.mark.parametrize("name", ["msgd", "adam"])
def test_state_dicts_interchange_with_torch_optim(name):
    """A checkpoint written by torch.optim (dimat before 2026-12-02) continues identically in ours, and back."""
    base = _net()
    b = _torch_opt(base.parameters(), name, 0.05, 0.9, 1e-4)
    _steps(base, b, 3, seed=2)
    ours, theirs = _net(), _net()
    ours.load_state_dict(base.state_dict())
    theirs.load_state_dict(base.state_dict())
    a = Optimizer(ours.parameters(), name, lr=0.05, momentum=0.9, weight_decay=1e-4)
    a.load_state_dict(b.state_dict())
    c = _torch_opt(theirs.parameters(), name, 0.05, 0.9, 1e-4)
    c.load_state_dict(copy.deepcopy(a.state_dict()))  # ours -> torch's format (torch keeps references)
    _steps(ours, a, 3, seed=3)
    _steps(theirs, c, 3, seed=3)
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="optimizer state for 6 tensors, this optimizer has 2"):
        Optimizer(list(ours.parameters())[:2], name, lr=0.1).load_state_dict(a.state_dict())


def test_unknown_name_is_one_clear_error():
    with pytest.raises(ValueError, match="algorithm.optimizer.name=rmsprop is unknown: use one of sgd, msgd, adam"):
        Optimizer(_net().parameters(), "rmsprop", lr=0.1)


def test_runs_do_not_import_dynamo(tmp_path):
    """torch.optim's first call imports torch._dynamo (~2 s of CPU per process), as torch.func.grad does: neither
    an agent's training (both optimizers, a checkpoint round trip) nor in-process runs (looped with DIMAT's
    weight matching and final merge; vectorized) import it."""
    code = (
        "import sys, numpy as np, torch\n"
        "from dimat.agent import Agent\n"
        "from dimat.api import compose, run\n"
        "from dimat.models.cnn import CNN\n"
        "x = np.random.rand(64, 1, 28, 28).astype('float32'); y = np.random.randint(0, 10, 64)\n"
        "for name in ('msgd', 'adam'):\n"
        "    a = Agent(0, CNN((1, 28, 28), 10, 1, 'bn'), x, y, np.arange(64), batch_size=16, seed=0,\n"
        "              optimizer={'name': name, 'lr': 0.01, 'momentum': 0.9, 'weight_decay': 0.0})\n"
        "    a.train(3); a.restore(a.snapshot())\n"
        "tiny = ['data=synthetic', 'model=mlp', 'model.hidden=[16]', 'agents=4', 'rounds=2', 'backend=inprocess',\n"
        "        'run.progress=false']\n"
        f"run(compose(tiny + ['run.dir={tmp_path / 'looped'}']))\n"
        f"run(compose(tiny + ['algorithm=dsgd', 'backend.vectorize=true', 'run.dir={tmp_path / 'vmapped'}']))\n"
        "print('dynamo', 'torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "dynamo False"
    assert (tmp_path / "looped" / "summary.json").exists() and (tmp_path / "vmapped" / "summary.json").exists()
