"""Derivation rules one by one on tiny models, hand-written specs, and edge cases of matching."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dimat.merge import (
    PermutationSpec, SpecError, activation_matching, align, align_many, apply_permutation, check_spec,
    random_permutation,
)
from dimat.models import build_model


def keys_of(spec: PermutationSpec) -> set[str]:
    return {e.key for pairs in spec.groups.values() for e in pairs}


def axes_of(spec: PermutationSpec) -> set[tuple[str, int]]:
    return {(e.key, e.axis) for pairs in spec.groups.values() for e in pairs}


def derive(model: nn.Module, *shape: int) -> PermutationSpec:
    return PermutationSpec.from_model(model, torch.randn(4, *shape))


class Head(nn.Module):
    """a → (middle op) → c; tests pass a different middle op."""

    def __init__(self, middle, width: int = 8) -> None:
        super().__init__()
        self.a, self.c, self.middle = nn.Linear(6, width), nn.Linear(width, 3), middle

    def forward(self, x):
        return self.c(self.middle(self, self.a(x)))


@pytest.mark.parametrize("name,middle,free", [
    ("scalar arithmetic", lambda m, h: F.relu(h) * 0.5 + 1, True),
    ("reshape, flip and reshape back", lambda m, h: h.reshape(-1, 2, 4).flip(1).reshape(-1, 8), True),
    ("cat of its own halves", lambda m, h: torch.cat([h[:, :4], h[:, 4:]], 1), True),
    ("roll over units", lambda m, h: h.roll(3, dims=1), True),
    ("softmax over all units", lambda m, h: h.softmax(1), True),
    ("sum over all units", lambda m, h: h + h.sum(1, keepdim=True), True),
    ("running sum over units", lambda m, h: h.cumsum(1), False),
    ("a positional constant", lambda m, h: h * torch.arange(8.0), False),
    ("a unit read twice", lambda m, h: h[:, [0, 0, 1, 2, 3, 4, 5, 6]], False),
    ("sort over units", lambda m, h: torch.sort(h, 1).values, False),
    ("sum of half the units", lambda m, h: h + h[:, :4].sum(1, keepdim=True), False),
])
def test_ops_that_keep_units_apart_pass_and_ops_that_tell_them_apart_pin(name, middle, free):
    spec = derive(Head(middle), 6)  # self-tested either way
    assert ("a.weight" in keys_of(spec)) is free, name


def test_a_parameter_added_to_a_stream_moves_with_it():
    class Bias(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.p, self.c = nn.Linear(6, 8), nn.Parameter(torch.randn(8)), nn.Linear(8, 3)

        def forward(self, x):
            return self.c(F.relu(self.a(x) + self.p))

    spec = derive(Bias(), 6)
    assert len(spec.groups) == 1 and {("a.weight", 0), ("p", 0), ("c.weight", 1)} <= axes_of(spec)


def test_gating_product_joins_both_branches():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.g, self.c = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x):
            return self.c(self.a(x) * torch.sigmoid(self.g(x)))

    spec = derive(Gate(), 6)
    assert len(spec.groups) == 1 and {"a.weight", "g.weight", "c.weight"} <= keys_of(spec)


def test_global_mean_pool_and_layernorm_pass():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.ln, self.fc = nn.Conv2d(3, 8, 3), nn.LayerNorm(8), nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(F.relu(self.ln(self.conv(x).mean((2, 3)))))

    spec = derive(Net(), 3, 8, 8)
    assert {"conv.weight", "ln.weight", "ln.bias", "fc.weight"} <= keys_of(spec)


def test_a_module_called_twice_keeps_one_consistent_group():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)

        def forward(self, x):
            return self.c(F.relu(self.b(F.relu(self.b(F.relu(self.a(x)))))))

    spec = derive(Shared(), 6)  # the self-test inside would fail on an inconsistent spec
    assert len(spec.groups) == 1 and [s.module for s in spec.consumers["P0"]].count("b") == 1


def test_tuple_outputs_are_compared_leaf_by_leaf():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.c = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x):
            h = F.relu(self.a(x))
            return {"logits": self.c(h), "aux": [self.c(h * 2)]}

    assert keys_of(derive(Two(), 6)) == {"a.weight", "a.bias", "c.weight"}


def test_groupnorm_with_several_groups_moves_blocks_and_one_group_moves_freely():
    gn = derive(build_model("cnn", (1, 8, 8), 10, norm="gn"), 1, 8, 8)
    ln = derive(build_model("cnn", (1, 8, 8), 10, norm="ln"), 1, 8, 8)
    assert {"norm1.weight", "norm1.bias"} <= keys_of(gn) and {"norm1.weight", "norm1.bias"} <= keys_of(ln)
    assert len(gn.groups) == len(ln.groups) and not ln.blocks
    assert sorted(b for _, b in gn.blocks.values()) == [32 // 8, 64 // 8]  # channels per GroupNorm group


def test_flatten_of_a_spatial_map_repeats_each_channel_and_spatial_size_one_is_plain():
    spec = derive(build_model("cnn", (1, 8, 8), 10), 1, 8, 8)  # 2x2 map before fc1
    fc1 = [e for es in spec.groups.values() for e in es if e.key == "fc1.weight" and e.axis == 1]
    assert ("conv2.weight", 0) in axes_of(spec) and len(fc1) == 1 and fc1[0].repeat == 4
    resnet = derive(build_model("resnet20", (1, 8, 8), 10), 1, 8, 8)  # 1x1 after global pooling
    assert ("fc.weight", 1) in axes_of(resnet)


def test_a_hand_written_spec_is_checked_and_its_mistakes_named():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(6, 4)
    pairs = (("0.weight", 0), ("0.bias", 0), ("1.weight", 0), ("1.bias", 0),
             ("1.running_mean", 0), ("1.running_var", 0), ("3.weight", 1))
    check_spec(m, PermutationSpec(groups={"hidden": pairs}, sizes={"hidden": 5}, consumers={"hidden": ("3",)}), x)
    forgot_bn_weight = tuple(p for p in pairs if p[0] != "1.weight")  # ones at init: caught by randomising
    with pytest.raises(SpecError, match="hidden"):
        check_spec(m, PermutationSpec(groups={"hidden": forgot_bn_weight}, sizes={"hidden": 5}), x)
    with pytest.raises(SpecError, match="3.wieght"):
        check_spec(m, PermutationSpec(groups={"hidden": (*pairs[:-1], ("3.wieght", 1))}, sizes={"hidden": 5}), x)
    with pytest.raises(SpecError, match="length 4"):
        check_spec(m, PermutationSpec(groups={"hidden": pairs}, sizes={"hidden": 4}), x)


def test_apply_permutation_leaves_groups_missing_from_perm_alone():
    spec = derive(build_model("mlp", (1, 8, 8), 10, hidden=(16, 16)), 1, 8, 8)
    perm = random_permutation(spec, 1)
    state = build_model("mlp", (1, 8, 8), 10, hidden=(16, 16)).state_dict()
    out = apply_permutation(spec, {"P0": perm["P0"]}, state)
    assert torch.equal(out["1.weight"], state["1.weight"][perm["P0"]])
    assert torch.equal(out["3.weight"], state["3.weight"][:, perm["P0"]])  # P1 (3's outputs) untouched
    assert out["5.weight"] is state["5.weight"]


def test_activation_matching_handles_dead_units_without_nan():
    torch.manual_seed(0)
    m = build_model("mlp", (1, 8, 8), 10, hidden=(16, 16))
    with torch.no_grad():  # 4 dead units: constant 0 after the ReLU, interchangeable
        m[1].weight[:4] = 0.0
        m[1].bias[:4] = -1.0
    spec = derive(m, 1, 8, 8)
    other = copy.deepcopy(m)
    other.load_state_dict(apply_permutation(spec, random_permutation(spec, 5), m.state_dict()))
    data = torch.randn(256, 1, 8, 8)
    perm = activation_matching(spec, m, other, data)
    assert all(sorted(p.tolist()) == list(range(spec.sizes[g])) for g, p in perm.items())
    aligned = apply_permutation(spec, perm, other.state_dict())
    assert torch.equal(aligned["1.weight"][4:], m.state_dict()["1.weight"][4:])  # every live unit found
    other.load_state_dict(aligned)
    with torch.no_grad():
        assert torch.allclose(other(data), m(data), atol=1e-5)


def test_activation_alignment_from_a_state_dict_and_align_many():
    torch.manual_seed(0)
    m = build_model("mlp", (1, 8, 8), 10, hidden=(16, 16))
    spec = derive(m, 1, 8, 8)
    data = torch.randn(256, 1, 8, 8)
    copies = [apply_permutation(spec, random_permutation(spec, s), m.state_dict()) for s in (1, 2)]
    aligned, _ = align(m.state_dict(), copies, spec, "activation", data=data, model=copy.deepcopy(m))
    many, _ = align_many([m.state_dict(), *copies], spec, method="activation", data=data, model=copy.deepcopy(m))
    for states in (aligned, many[1:]):
        for s in states:
            assert all(torch.allclose(s[k], v) for k, v in m.state_dict().items())
