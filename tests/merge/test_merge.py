"""The permutation library: derived specs are right, matching recovers planted permutations, merges help."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dimat.merge import (
    PermutationSpec, SpecError, activation_matching, activation_matching_many, align, align_many, apply_permutation, check_spec, merge,
    random_permutation, reset_bn, weight_matching,
)
from dimat.models import build_model

CASES = [
    ("mlp", {}, (1, 8, 8)), ("cnn", {}, (1, 8, 8)), ("cnn", {"norm": "ln"}, (1, 8, 8)),
    ("cnn", {"norm": "gn"}, (1, 8, 8)), ("vgg11", {}, (3, 32, 32)), ("vgg16", {}, (3, 32, 32)),
    ("vgg16", {"norm": "none"}, (1, 28, 28)), ("vgg11", {"norm": "ln"}, (3, 32, 32)),
    ("resnet20", {"norm": "ln"}, (3, 32, 32)), ("resnet20", {}, (3, 32, 32)), ("resnet20", {"width": 2}, (3, 32, 32)),
]


def model_and_spec(name, kw, shape, seed=0):
    torch.manual_seed(seed)
    m = build_model(name, shape, 10, **kw)
    return m, PermutationSpec.from_model(m, torch.randn(4, *shape))


def permuted_copy(model, spec, seed=1):
    other = copy.deepcopy(model)
    perm = random_permutation(spec, seed)
    other.load_state_dict(apply_permutation(spec, perm, model.state_dict()))
    return other, perm


def randomise_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.mark.parametrize("name,kw", [("vgg11", {"groups": 4}), ("resnet20", {})])
def test_groupnorm_with_several_groups_moves_channels_within_and_groups_as_blocks(name, kw):
    # a permutation may not move a channel out of its GroupNorm group: every group of channels is blocked
    # (blocks of channels/groups, moved as wholes, permuted inside); one group ("ln") lets them all move freely
    m, gn = model_and_spec(name, {"norm": "gn", **kw}, (3, 32, 32))
    ln = model_and_spec(name, {"norm": "ln"}, (3, 32, 32))[1]
    assert len(gn.groups) == len(ln.groups) == {"vgg11": 8, "resnet20": 12}[name] and not ln.blocks
    modules = dict(m.named_modules())
    for g, entries in gn.groups.items():
        norm = next(modules[e.key.rsplit(".", 1)[0]] for e in entries if isinstance(modules[e.key.rsplit(".", 1)[0]],
                                                                                    nn.GroupNorm))
        assert gn.blocks[g][1] == norm.num_channels // norm.num_groups, g
    assert len({fam for fam, _ in gn.blocks.values()}) == len(gn.groups)  # no two groups share a block permutation


@pytest.mark.parametrize("name,kw,shape", CASES)
def test_a_permuted_copy_computes_the_same_function(name, kw, shape):
    m, spec = model_and_spec(name, kw, shape)
    randomise_bn(m)
    other, _ = permuted_copy(m, spec)
    m.eval(), other.eval()
    x = torch.randn(8, *shape)
    assert spec.groups, "no permutable groups found"
    assert torch.allclose(m(x), other(x), atol=1e-4)
    key = spec.groups["P0"][0].key
    assert not torch.equal(m.state_dict()[key], other.state_dict()[key])


def test_batchnorm_statistics_are_permuted_but_not_the_counter():
    m, spec = model_and_spec("resnet20", {}, (3, 32, 32))
    keys = {e.key for pairs in spec.groups.values() for e in pairs}
    assert any(k.endswith("running_mean") for k in keys) and any(k.endswith("running_var") for k in keys)
    assert not any(k.endswith("num_batches_tracked") for k in keys)


def test_resnet20_has_its_12_groups():
    _, spec = model_and_spec("resnet20", {}, (3, 32, 32))
    assert len(spec.groups) == 12  # 3 residual streams + 9 inner block channels
    residual = [g for g, pairs in spec.groups.items()
                if sum(e.key.endswith("conv1.weight") and e.axis == 1 for e in pairs) >= 2]
    assert len(residual) == 3


@pytest.mark.parametrize("name,kw,shape,restarts", [
    ("mlp", {}, (1, 8, 8), 0), ("vgg16", {}, (3, 32, 32), 0), ("resnet20", {}, (3, 32, 32), 2),
    # every norm variant: ln (one group) moves with its channels, gn pins them, none has nothing to move
    ("cnn", {"norm": "ln"}, (1, 8, 8), 0), ("cnn", {"norm": "gn"}, (1, 8, 8), 0), ("cnn", {"norm": "none"}, (1, 8, 8), 0),
    ("vgg11", {"norm": "ln"}, (3, 32, 32), 0), ("resnet20", {"norm": "ln"}, (3, 32, 32), 2),
])
def test_weight_matching_recovers_a_planted_permutation(name, kw, shape, restarts):
    m, spec = model_and_spec(name, kw, shape)
    randomise_bn(m)
    other, _ = permuted_copy(m, spec, seed=3)
    perm, info = weight_matching(spec, m.state_dict(), other.state_dict(), restarts=restarts)
    aligned = apply_permutation(spec, perm, other.state_dict())
    for k, v in m.state_dict().items():
        assert torch.equal(aligned[k], v), k
    assert info["sweeps"] >= 1


@pytest.mark.parametrize("name,kw,shape", [("mlp", {}, (1, 8, 8)), ("cnn", {}, (1, 8, 8)),
                                           ("cnn", {"norm": "ln"}, (1, 8, 8)), ("cnn", {"norm": "none"}, (1, 8, 8))])
def test_activation_matching_recovers_a_planted_permutation(name, kw, shape):
    m, spec = model_and_spec(name, kw, shape)
    data = torch.randn(512, *shape)
    reset_bn(m, data)
    other, _ = permuted_copy(m, spec, seed=4)
    perm = activation_matching(spec, m, other, data)
    aligned = apply_permutation(spec, perm, other.state_dict())
    for k, v in m.state_dict().items():
        assert torch.equal(aligned[k], v), k


def _dead_fraction(model, data):
    """The share of ReLU channels that never fire on `data`."""
    dead, total, hooks = [0], [0], []

    def count(_m, _i, out):
        fired = out.transpose(0, 1).reshape(out.shape[1], -1).amax(1) > 0
        dead[0] += int((~fired).sum())
        total[0] += len(fired)

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        model.eval()(data)
    for h in hooks:
        h.remove()
    return dead[0] / total[0]


def test_activation_matching_recovers_a_planted_permutation_where_many_units_are_dead():
    # random-init VGG16-BN on random inputs: a third or more of its units never fire, so their
    # correlations tie; the weight tie-break must see the neighbouring groups' permutations
    m, spec = model_and_spec("vgg16", {"norm": "bn"}, (3, 32, 32))
    data = torch.randn(256, 3, 32, 32)
    assert _dead_fraction(m, data) > 0.25
    other, planted = permuted_copy(m, spec, seed=4)
    perm = activation_matching(spec, m, other, data)
    for g in spec.groups:  # unit i of the aligned model is unit perm[g][i] of the other
        assert torch.equal(planted[g][perm[g]], torch.arange(spec.sizes[g])), g
    aligned = copy.deepcopy(m)
    aligned.load_state_dict(apply_permutation(spec, perm, other.state_dict()))
    x = torch.randn(16, 3, 32, 32)
    assert torch.allclose(aligned.eval()(x), m.eval()(x), rtol=1e-6, atol=1e-6)


def test_activations_of_the_reference_computed_once_give_the_pairwise_permutations():
    # three independently initialised models against one reference: one pass, same answers as three calls
    ref, spec = model_and_spec("cnn", {}, (1, 8, 8), seed=0)
    others = [model_and_spec("cnn", {}, (1, 8, 8), seed=s)[0] for s in (1, 2, 3)]
    data = torch.randn(300, 1, 8, 8)
    for m in (ref, *others):
        reset_bn(m, data)
    together = activation_matching_many(spec, ref, others, data, batch_size=128)
    for other, perm in zip(others, together):
        alone = activation_matching(spec, ref, other, data, batch_size=128)
        assert all(torch.equal(perm[g], alone[g]) for g in spec.groups)
    assert any(not torch.equal(p, torch.arange(len(p))) for p in together[0].values())
    with pytest.raises(ValueError, match="distinct modules"):  # one module twice would see its hooks fire twice
        activation_matching_many(spec, ref, [others[0], others[0]], data)
    # align with one template: copies are made for the other neighbours, the answers are the same
    _, via_align = align(ref, [o.state_dict() for o in others], spec, method="activation", data=data,
                         model=copy.deepcopy(ref), batch_size=128)
    assert all(torch.equal(a[g], b[g]) for a, b in zip(via_align, together) for g in spec.groups)


@pytest.mark.parametrize("weights", [[0.5, 0.5], [0.2, 0.3, 0.5]])
def test_merging_with_aligned_permuted_copies_of_itself_is_the_identity(weights):
    m, spec = model_and_spec("resnet20", {}, (3, 32, 32))
    randomise_bn(m)
    others = [permuted_copy(m, spec, seed=s)[0].state_dict() for s in range(1, len(weights))]
    aligned, _ = align(m.state_dict(), others, spec, method="weight", restarts=2)
    merged = copy.deepcopy(m)
    merged.load_state_dict(merge([m.state_dict(), *aligned], weights))
    x = torch.randn(4, 3, 32, 32)
    m.eval(), merged.eval()
    assert torch.allclose(m(x), merged(x), atol=1e-4)


def test_align_many_brings_permuted_copies_into_one_basis():
    m, spec = model_and_spec("mlp", {}, (1, 8, 8))
    states = [m.state_dict()] + [permuted_copy(m, spec, seed=s)[0].state_dict() for s in (1, 2, 3)]
    aligned, _ = align_many(states, spec)
    for s in aligned[1:]:
        for k in s:
            assert torch.equal(s[k], aligned[0][k]), k


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target)
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _train(seed, x, y, steps=600):
    # Adam's second moments of the many always-zero digit pixels decay into denormal floats,
    # which are ~30x slower on CPU: flush them (a per-thread flag, hence one thread; the MLP is tiny)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        return _train_steps(seed, x, y, steps)
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


def _train_steps(seed, x, y, steps):
    torch.manual_seed(seed)
    m = build_model("mlp", (1, 8, 8), 10, hidden=(128, 128))
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(m(x[idx]), y[idx]).backward()
        opt.step()
    return m


def test_aligned_merge_of_independently_trained_mlps_beats_the_naive_average():
    xtr, ytr, xte, yte = _digits()
    a, b = _train(0, xtr, ytr), _train(1, xtr, ytr)
    spec = PermutationSpec.from_model(a, xtr[:2])

    def acc(state):
        m = copy.deepcopy(a)
        m.load_state_dict(state)
        return float((m(xte).argmax(1) == yte).float().mean())

    naive = acc(merge([a.state_dict(), b.state_dict()], [0.5, 0.5]))
    wm = acc(merge([a.state_dict(), align(a.state_dict(), [b.state_dict()], spec)[0][0]], [0.5, 0.5]))
    am_state = align(a, [b.state_dict()], spec, method="activation", data=xtr, model=copy.deepcopy(a))[0][0]
    am = acc(merge([a.state_dict(), am_state], [0.5, 0.5]))
    msg = f"naive average {naive:.3f}, weight matching {wm:.3f}, activation matching {am:.3f}"
    assert wm > naive + 0.05 and am > naive + 0.05, msg


def test_ops_that_mix_channels_pin_and_the_self_test_passes():
    class CatNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 6), nn.Linear(8, 6)
            self.c = nn.Linear(12, 4)
            self.d = nn.Linear(4, 3)

        def forward(self, x):
            h = torch.cat([self.a(x), self.b(x)], dim=1).relu()
            return self.d(self.c(h).relu())

    spec = PermutationSpec.from_model(CatNet(), torch.randn(2, 8))  # self-tested
    owners = {e.key: (g, e) for g, pairs in spec.groups.items() for e in pairs}
    # cat: c reads a's units at positions 0-5 and b's at 6-11, each group permuted on its own
    assert owners["a.weight"][0] != owners["b.weight"][0] and "c.weight" in owners
    c_axes = sorted((e.offset, g) for g, pairs in spec.groups.items() for e in pairs if e.key == "c.weight" and e.axis == 1)
    assert c_axes == [(0, owners["a.weight"][0]), (6, owners["b.weight"][0])]


def test_a_flattened_map_moves_blockwise_and_a_sum_over_units_leaves_them_free():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc1 = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 16, 5)
            self.conv2, self.fc2 = nn.Conv2d(3, 6, 4), nn.Linear(6, 2)

        def forward(self, x):
            a = self.fc1(self.conv(x).view(x.size(0), -1))  # C×H×W into a Linear: channel c fills 16 positions
            b = self.conv2(x) * 0.5  # spatial size 1 after a 4×4 conv: passes
            return a.sum(1, keepdim=True) + self.fc2(b.reshape(x.shape[0], -1))

    spec = PermutationSpec.from_model(Net(), torch.randn(2, 3, 4, 4))  # self-tested
    owners = {(e.key, e.axis): (g, e) for g, pairs in spec.groups.items() for e in pairs}
    assert owners[("conv.weight", 0)][0] == owners[("fc1.weight", 1)][0]
    assert owners[("fc1.weight", 1)][1].repeat == 16
    assert ("fc1.weight", 0) in owners  # fc1's outputs are only summed: any order gives the same sum
    assert owners[("conv2.weight", 0)][0] == owners[("fc2.weight", 1)][0]
    assert [s.module for s in spec.consumers[owners[("conv2.weight", 0)][0]]] == ["fc2"]


def test_an_untraceable_model_gets_advice_and_a_wrong_spec_fails_its_self_test():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(SpecError, match="by hand"):
        PermutationSpec.from_model(Branchy(), torch.randn(2, 4))
    m = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    wrong = PermutationSpec(groups={"P0": (("0.weight", 0), ("0.bias", 0))}, sizes={"P0": 5})  # forgets 2.weight
    with pytest.raises(SpecError, match="P0"):
        check_spec(m, wrong, torch.randn(3, 4))
    typo = PermutationSpec(groups={"P0": (("0.weight", 0), ("2.wieght", 1))}, sizes={"P0": 5})
    with pytest.raises(SpecError, match="2.wieght"):
        check_spec(m, typo, torch.randn(3, 4))


def test_apply_permutation_on_a_partial_dict_of_optimizer_buffers():
    m, spec = model_and_spec("mlp", {}, (1, 8, 8))
    perm = random_permutation(spec, 2)
    buf = {"1.weight": torch.randn(128, 64)}
    out = apply_permutation(spec, perm, buf)
    assert torch.equal(out["1.weight"], buf["1.weight"][perm["P0"]])


def test_reset_bn_estimates_the_data_statistics():
    m = nn.Sequential(nn.Conv2d(1, 3, 1), nn.Dropout(0.5), nn.BatchNorm2d(3))
    data = torch.randn(300, 1, 4, 4) * 2 + 1
    reset_bn(m, data, batch_size=64)  # a short last batch: still the exact mean
    with torch.no_grad():
        h = m[0](data)
    assert torch.allclose(m[2].running_mean, h.mean((0, 2, 3)), atol=1e-4)  # dropout stayed off
    assert m[2].momentum == 0.1 and m.training and m[1].training
    assert int(m[2].num_batches_tracked) == 5
    m.eval()
    reset_bn(m, data)
    assert not m.training and not m[2].training
    reset_bn(nn.Sequential(nn.Linear(3, 2)), torch.randn(4, 3))  # no BatchNorm: nothing to do
