"""REPAIR: after the correction every channel has the endpoints' interpolated mean and std, on the data."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dimat.merge import (
    PermutationSpec, RepairError, channel_stats, interpolate, merge, repair_merged, repair_points, reset_bn,
)
from dimat.merge.repair import correct, point_stats, pool
from dimat.models import build_model

# a BatchNorm model (its hidden fc1 has no norm: corrected in its own weights), one with "ln", norm-free ones
CASES = [("cnn", {"norm": "bn"}, (1, 8, 8), {"bn", "layer"}), ("resnet20", {}, (3, 8, 8), {"bn"}),
         ("resnet20", {"norm": "ln"}, (3, 8, 8), {"norm"}), ("mlp", {}, (1, 8, 8), {"layer"}),
         ("vgg11", {"norm": "none"}, (3, 8, 8), {"layer"})]


def endpoints(name, kw, shape, k=3):
    """k independently initialised models (BatchNorm statistics of their own), their spec and some data."""
    data = torch.randn(240, *shape) * 1.5 + 0.3
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        m = build_model(name, shape, 10, **kw)
        reset_bn(m, data[seed * 40 : seed * 40 + 80] * (1 + seed))  # statistics from other data than the merge's
        models.append(m)
    return models, PermutationSpec.from_model(models[0], data[:2]), data


def merged_model(models, weights):
    out = copy.deepcopy(models[0])
    out.load_state_dict(merge([m.state_dict() for m in models], weights))
    return out


def assert_on_target(stats, targets, tol=1e-4):
    for name, (_, mean, var) in stats.items():
        goal_mean, goal_std = targets[name]
        scale = 1.0 + float(goal_std.max())
        assert torch.allclose(mean, goal_mean, atol=tol * scale), name
        assert torch.allclose(var.sqrt(), goal_std, atol=tol * scale), name


@pytest.mark.parametrize("name,kw,shape,kinds", CASES)
def test_every_channel_gets_the_interpolated_mean_and_std(name, kw, shape, kinds):
    models, spec, data = endpoints(name, kw, shape)
    points = repair_points(models[0], spec, data[:2])
    assert {p.kind for p in points} == kinds
    weights = [0.5, 0.3, 0.2]
    targets = interpolate([channel_stats(m, points, data) for m in models], weights)
    merged = merged_model(models, weights)
    before = channel_stats(merged, points, data)
    # the naive merge is off target (its spread collapses), so the test below measures the correction
    assert any(not torch.allclose(var.sqrt(), targets[p][1], rtol=0.05) for p, (_, _, var) in before.items())
    repair_merged(merged, points, targets, data)
    assert_on_target(channel_stats(merged, points, data), targets)


def test_the_points_are_the_norm_layers_and_the_hidden_layers_without_one():
    models, spec, data = endpoints("cnn", {"norm": "bn"}, (1, 8, 8))
    points = repair_points(models[0], spec, data[:2])
    assert [(p.name, p.kind) for p in points] == [("norm1", "bn"), ("norm2", "bn"), ("fc1", "layer")]
    mlp, spec, data = endpoints("mlp", {}, (1, 8, 8), k=1)
    assert [p.name for p in repair_points(mlp[0], spec, data[:2])] == ["1", "3"]  # not the output layer "5"


def test_repair_of_a_merge_of_identical_models_changes_nothing_but_the_statistics():
    models, spec, data = endpoints("cnn", {"norm": "bn"}, (1, 8, 8), k=1)
    m = models[0]
    points = repair_points(m, spec, data[:2])
    merged = merged_model([m, copy.deepcopy(m)], [0.4, 0.6])
    reset_bn(m, data)  # the merged model's BatchNorm statistics after REPAIR are those of `data`
    repair_merged(merged, points, interpolate([channel_stats(m, points, data)] * 2, [0.4, 0.6]), data)
    for k, v in m.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(merged.state_dict()[k], v, rtol=1e-3, atol=1e-4), k


@pytest.mark.parametrize("name,kw,shape", [("cnn", {"norm": "bn"}, (1, 8, 8)), ("cnn", {"norm": "ln"}, (1, 8, 8))])
def test_one_point_at_a_time_over_shards_equals_one_pass_over_their_union(name, kw, shape):
    # the final merge's way (hosts send moments, the driver pools and corrects) against repair_merged
    models, spec, data = endpoints(name, kw, shape)
    points = repair_points(models[0], spec, data[:2])
    targets = interpolate([channel_stats(m, points, data) for m in models], [1 / 3] * 3)
    one_pass = merged_model(models, [1 / 3] * 3)
    repair_merged(one_pass, points, targets, data)
    stepwise = merged_model(models, [1 / 3] * 3)
    state, shards = stepwise.state_dict(), (data[:100], data[100:170], data[170:])
    for p in points:
        correct(state, p, pool([point_stats(stepwise, p, s, batch_size=32) for s in shards]), targets[p.name])
    for k, v in one_pass.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(state[k], v, rtol=1e-4, atol=1e-5), k


def test_models_without_a_place_for_the_correction_are_refused():
    models, spec, data = endpoints("resnet20", {"norm": "none"}, (3, 8, 8), k=1)
    with pytest.raises(RepairError, match="merge.repair: layers .* add into one channel group without a norm"):
        repair_points(models[0], spec, data[:2])
    no_affine = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, affine=False), nn.ReLU(), nn.Flatten(),
                              nn.LazyLinear(3))
    x = torch.randn(2, 1, 5, 5)
    no_affine(x)
    with pytest.raises(RepairError, match=r"1 \(BatchNorm2d\) has no affine"):
        repair_points(no_affine, PermutationSpec.from_model(no_affine, x), x)
    no_bias = nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(2, 4)
    with pytest.raises(RepairError, match="layer 0 has no bias"):
        repair_points(no_bias, PermutationSpec.from_model(no_bias, x), x)


class _Host:
    """What the final merge's host operations read: the host's agents and a spare model."""

    def __init__(self, agents):
        from dimat.flat import flatten_module

        self.agents = {a.index: a for a in agents}
        model = copy.deepcopy(agents[0].model)
        self._scratch = (model, flatten_module(model)[0])

    def scratch_model(self):
        return self._scratch


class _Backend:
    def __init__(self, hosts):
        self.hosts = hosts

    def run(self, fn, *args):
        return [fn(h, *args) for h in self.hosts]


@pytest.mark.parametrize("kw", [{"norm": "bn"}, {"norm": "ln"}])
def test_repair_of_the_final_merge_of_permuted_copies_gives_back_the_model(kw):
    # four agents on two hosts hold the same network in four bases: aligned, averaged and REPAIRed on
    # the same data, the merge must compute the original function, and REPAIR's statistics are counted
    import numpy as np

    from dimat.agent import Agent
    from dimat.algorithms.base import optimizer_settings
    from dimat.algorithms.final import global_alignment, repair_global
    from dimat.flat import FlatLayout, flatten_module
    from dimat.merge import apply_permutation, random_permutation

    shape = (1, 8, 8)
    x = (torch.randn(160, *shape) * 1.5 + 0.3).numpy()
    y = np.arange(160) % 10
    torch.manual_seed(0)
    model = build_model("cnn", shape, 10, **kw)
    reset_bn(model, torch.from_numpy(x))
    spec = PermutationSpec.from_model(model, torch.from_numpy(x[:2]))
    agents = []
    for i in range(4):
        m = copy.deepcopy(model)
        if i:
            m.load_state_dict(apply_permutation(spec, random_permutation(spec, seed=i), model.state_dict()))
        agents.append(Agent(i, m, x, y, np.arange(160), batch_size=32,
                            optimizer=optimizer_settings({"name": "sgd", "lr": 0.1}), seed=i))
    layout = FlatLayout.of(model)
    merged, perms = global_alignment([a.state().copy() for a in agents], layout, spec)
    backend = _Backend([_Host(agents[:2]), _Host(agents[2:])])
    out, nbytes = repair_global(backend, merged, copy.deepcopy(model), dict(enumerate(perms)), spec, x[:2], 160)
    repaired = copy.deepcopy(model)
    flatten_module(repaired)[0].copy_(torch.from_numpy(out))
    with torch.no_grad():
        model.eval(), repaired.eval()
        assert torch.allclose(repaired(torch.from_numpy(x)), model(torch.from_numpy(x)), atol=2e-3)
    assert nbytes > 0
