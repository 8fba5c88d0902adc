"""Models users bring, end to end: a LeNet that flattens with `x.view` trains on every algorithm (its layout is
checked once and kept), transformers and MobileNets merge by permutation on both backends, and a model alignment
cannot cover is named in one line at start-up."""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch
from torch import nn

from dimat import run
from dimat.agent import Agent
from dimat.models import build_model

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "merge"))
import zoo  # noqa: E402 - the test models (tests/merge/zoo.py)

ALGORITHMS = ["dimat", "dsgd", "choco", "cdsgd", "cdmsgd", "sgp", "cga", "gt", "d2", "qgm", "fedavg", "local", "centralized"]


def lenet(input_shape, num_classes):
    return zoo.LeNet(tuple(input_shape), num_classes)


def test_a_view_after_convolutions_keeps_the_default_layout_and_builtins_keep_channels_last():
    x = torch.randn(8, 1, 8, 8).numpy()
    idx = torch.arange(8).numpy()
    lenet_agent = Agent(0, lenet((1, 8, 8), 10), x, idx % 10, idx, batch_size=4,
                        optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}, seed=0)
    cnn_agent = Agent(0, build_model("cnn", (1, 8, 8), 10), x, idx % 10, idx, batch_size=4,
                      optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}, seed=0)
    assert lenet_agent.conv and not lenet_agent.nhwc_inputs
    assert cnn_agent.nhwc_inputs
    assert math.isfinite(lenet_agent.train(3)) and lenet_agent.predict(x).shape == (8,)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_lenet_that_flattens_with_view_trains_on_every_algorithm(tiny, algorithm):
    res = run(tiny(f"algorithm={algorithm}", "backend=inprocess", "rounds=2", "data=digits", "eval.max_samples=200"),
              model=lenet)
    assert 0.0 <= res.summary["final_acc_mean"] <= 1.0 and math.isfinite(res.summary["final_acc_mean"])


@pytest.mark.parametrize("backend,model,merge", [
    ("inprocess", "vit", "activation"), ("inprocess", "mobilenet", "weight"),
    ("ray", "vit", "activation"), ("ray", "mobilenet", "weight"),
])
def test_builtin_transformer_and_mobilenet_merge_by_permutation_on_both_backends(tiny, backend, model, merge):
    extra = ["model.dim=16"] if model == "vit" else []
    res = run(tiny(f"backend={backend}", f"model={model}", *extra, f"merge={merge}", "data=digits", "agents=3",
                   "rounds=2", "pretrain_epochs=1", "eval.max_samples=200"))
    assert math.isfinite(res.summary["final_acc_mean"]) and res.summary["final_acc_global_merge"] is not None


class Sorted(nn.Module):
    """Hidden units sorted by value: no permutation of them leaves the outputs alone."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.a, self.b = nn.Linear(math.prod(input_shape), 16), nn.Linear(16, num_classes)

    def forward(self, x):
        return self.b(torch.sort(self.a(x.flatten(1)), 1).values)


def test_a_model_alignment_cannot_cover_is_named_at_start_up_in_one_line(tiny, capsys):
    run(tiny("backend=inprocess", "rounds=1", "merge=weight"), model=Sorted)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "warning" in ln]
    assert len(lines) == 1 and "plain averaging" in lines[0] and "sort" in lines[0], lines
    run(tiny("backend=inprocess", "rounds=1", "merge=weight"), model=lenet)  # covered: nothing to say
    assert "warning" not in capsys.readouterr().out
