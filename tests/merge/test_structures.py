"""Alignment beyond plain CNNs, on models written here (tests/merge/zoo.py): attention heads (hand-written, fused,
grouped-query, scaled_dot_product_attention, nn.MultiheadAttention), recurrent cells (unrolled by hand, nn.GRU,
nn.LSTM, nn.RNN), depthwise and grouped convolutions, concatenations, transposed convolutions, flattening.

For each: the derived spec covers the model and preserves its function (the self-test inside derivation), weight
matching and activation matching recover a planted permutation, and a model matched against an identical copy
of itself gets the identity."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dimat.merge import (
    PermutationSpec, SpecError, activation_matching, apply_permutation, check_spec, random_permutation, reset_bn,
    weight_matching,
)
from dimat.merge.spec import Axis, Site, Span, coverage

import zoo  # noqa: E402 - beside this file (pytest puts its folder on the path)

MODELS = {
    "vit": lambda: zoo.ViT(),
    "vit-fused-qkv": lambda: zoo.ViT(style="fused"),
    "vit-multihead": lambda: zoo.ViT(style="mha"),
    "vit-gqa": lambda: zoo.ViT(kv_heads=2),
    "vit-sdpa-gqa": lambda: zoo.ViT(style="sdpa", kv_heads=2),
    "rnn-unrolled": lambda: zoo.UnrolledRNN(),
    "lenet-view": lambda: zoo.LeNet(),
    "mobilenet": lambda: zoo.MobileNetish(),
    "unet": lambda: zoo.UNetish(),
    "gru": lambda: zoo.Recurrent(kind="gru"),
    "lstm": lambda: zoo.Recurrent(kind="lstm"),
    "rnn": lambda: zoo.Recurrent(kind="rnn", layers=1, bidirectional=False),
}
X = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def built(name: str, seed: int = 0) -> tuple[nn.Module, PermutationSpec]:
    torch.manual_seed(seed)
    m = MODELS[name]()
    with torch.no_grad():  # norms away from their 0/1 init, so a missed permutation shows
        for mod in m.modules():
            if isinstance(mod, (nn.LayerNorm, nn.BatchNorm2d)):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_()
    if any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules()):
        reset_bn(m, X)
    return m.eval(), PermutationSpec.from_model(m, X[:4])


def planted(m: nn.Module, spec: PermutationSpec, seed: int = 3) -> tuple[nn.Module, dict]:
    other = copy.deepcopy(m)
    perm = random_permutation(spec, seed)
    other.load_state_dict(apply_permutation(spec, perm, m.state_dict()))
    return other, perm


def assert_same_state(spec, perm, other, m):
    aligned = apply_permutation(spec, perm, other.state_dict())
    for k, v in m.state_dict().items():
        assert torch.allclose(aligned[k], v, atol=1e-6), k


@pytest.mark.parametrize("name", MODELS)
def test_the_derived_spec_covers_every_hidden_layer(name):
    m, spec = built(name)  # derivation self-tests: a random permutation of every group keeps the outputs
    share, pinned = coverage(m, spec)
    assert pinned == ["head"] or (name == "lenet-view" and pinned == ["fc2"]), (pinned, spec.notes)
    assert share > 0.95 and not spec.notes
    with torch.no_grad():  # and a planted permutation is a real change that computes the same
        other, _ = planted(m, spec)
        assert torch.allclose(other(X), m(X), atol=1e-5)
        assert any(not torch.equal(a, b) for a, b in zip(other.state_dict().values(), m.state_dict().values()))


def structure(spec: PermutationSpec) -> dict[tuple[str, int], Axis]:
    return {(e.key, e.axis): e for es in spec.groups.values() for e in es}


def test_attention_heads_move_as_blocks_with_qk_and_v_dims_in_one_family():
    m, spec = built("vit")
    fams = spec.families()
    assert len(fams) == 2  # one per block: query/key dims and value dims share the head permutation
    for groups in fams.values():
        assert len(groups) == 2 and all(spec.blocks[g][1] == 4 and spec.sizes[g] == 16 for g in groups)
    qk = next(g for g, es in spec.groups.items() if any(e.key == "blocks.0.attn.q.weight" and e.axis == 0 for e in es))
    assert {e.key for e in spec.groups[qk]} == {f"blocks.0.attn.{p}.{w}" for p in "qk" for w in ("weight", "bias")}
    stream = next(g for g, es in spec.groups.items() if any(e.key == "cls" for e in es))
    keys = {(e.key, e.axis) for e in spec.groups[stream]}
    assert {("cls", 2), ("pos", 2), ("embed.weight", 0), ("head.weight", 1), ("blocks.1.fc2.weight", 0)} <= keys


def test_a_permutation_of_query_rows_across_heads_is_not_a_symmetry():
    m, spec = built("vit")
    qk = next(g for g in spec.blocks if any(e.key == "blocks.0.attn.q.weight" for e in spec.groups[g]))
    loose = PermutationSpec({g: es for g, es in spec.groups.items()}, spec.sizes, spec.consumers,
                            {g: b for g, b in spec.blocks.items() if g != qk and spec.blocks[g][0] != spec.blocks[qk][0]})
    with pytest.raises(SpecError, match="self-test failed"):
        check_spec(m, loose, X[:4])  # the same units as one plain group: moving a dim to another head breaks it


def test_fused_qkv_and_grouped_query_layouts():
    _, fused = built("vit-fused-qkv")
    qkv = [e for es in fused.groups.values() for e in es if e.key == "blocks.0.attn.qkv.weight" and e.axis == 0]
    assert sorted((e.offset, e.tiles) for e in qkv) == [(0, 2), (32, 1)]  # q and k rows tiled, v rows after them
    _, gqa = built("vit-gqa")
    assert {gqa.sizes[g] for g in gqa.blocks} == {8}  # 2 key/value heads of 4 dims: query heads follow them
    proj = [e for es in gqa.groups.values() for e in es if e.key == "blocks.0.attn.proj.weight" and e.axis == 1]
    assert len(proj) == 1 and proj[0].copies == 2  # each value head read by two query heads


def test_recurrent_layers_stack_gates_on_one_axis():
    for kind, gates in (("gru", 3), ("lstm", 4), ("rnn", 1)):
        _, spec = built(kind)
        axes = structure(spec)
        assert axes[("rnn.weight_hh_l0", 0)].tiles == gates and axes[("rnn.weight_hh_l0", 1)].plain()
        assert axes[("rnn.bias_ih_l0", 0)].tiles == gates
    _, gru = built("gru")  # the second layer reads both directions of the first, concatenated
    ih1 = sorted(e.offset for es in gru.groups.values() for e in es if e.key == "rnn.weight_ih_l1" and e.axis == 1)
    assert ih1 == [0, 12]


def test_depthwise_convolutions_carry_the_expanded_channels():
    _, spec = built("mobilenet")
    expanded = next(g for g, es in spec.groups.items() if any(e.key == "blocks.0.expand.0.weight" and e.axis == 0
                                                               for e in es))
    keys = {(e.key, e.axis) for e in spec.groups[expanded]}
    assert {("blocks.0.dw.0.weight", 0), ("blocks.0.dw.1.weight", 0), ("blocks.0.project.0.weight", 1)} <= keys
    axes = structure(spec)
    assert axes[("dw_double.weight", 0)].repeat == 2  # a channel multiplier: each input channel feeds two outputs


def test_concatenation_transposed_convolution_and_grouped_convolution():
    _, spec = built("unet")
    fuse = sorted((e.offset, g) for g, es in spec.groups.items() for e in es if e.key == "fuse.weight" and e.axis == 1)
    assert [o for o, _ in fuse] == [0, 8] and fuse[0][1] != fuse[1][1]  # torch.cat([up, skip]): two groups
    grouped = sorted(e.offset for es in spec.groups.values() for e in es if e.key == "grouped.weight" and e.axis == 0)
    assert grouped == [0, 4, 8, 12]  # groups=4: each group's outputs move among themselves
    down2 = structure(spec)[("down2.weight", 0)]
    assert down2.tiles == 4  # a grouped conv's input: a channel's weights are shared by its place in every group


@pytest.mark.parametrize("name", MODELS)
def test_weight_matching_recovers_a_planted_permutation(name):
    m, spec = built(name)
    other, _ = planted(m, spec)
    perm, _ = weight_matching(spec, m.state_dict(), other.state_dict())
    assert_same_state(spec, perm, other, m)
    same, _ = weight_matching(spec, m.state_dict(), copy.deepcopy(m).state_dict())
    assert all(torch.equal(p, torch.arange(len(p))) for p in same.values())


@pytest.mark.parametrize("name", MODELS)
def test_activation_matching_recovers_a_planted_permutation(name):
    m, spec = built(name)
    other, _ = planted(m, spec, seed=5)
    perm = activation_matching(spec, m, other, X)
    assert_same_state(spec, perm, other, m)
    same = activation_matching(spec, m, copy.deepcopy(m), X)
    assert all(torch.equal(p, torch.arange(len(p))) for p in same.values())


def test_a_module_called_many_times_is_paired_call_by_call():
    # the recurrent Linear runs 8 times per forward: each call of the other model pairs with the same call of the
    # reference; pairing every call with the reference's last one would leave the copy's own units unmatched
    m, spec = built("rnn-unrolled")
    (g,) = spec.groups
    assert any(s.module == "rec" for s in spec.consumers[g])
    only_rec = PermutationSpec(spec.groups, spec.sizes, {g: (Site("rec"),)})
    other, truth = planted(m, spec, seed=7)
    perm = activation_matching(only_rec, m, other, X)
    assert torch.equal(perm[g], torch.argsort(truth[g]))
    assert torch.equal(activation_matching(only_rec, m, copy.deepcopy(m), X)[g], torch.arange(spec.sizes[g]))


def test_string_consumers_of_a_linear_on_a_sequence_are_read_on_its_last_axis():
    # a hand-written spec for the ViT's residual stream and MLPs only, consumers named as strings
    m, derived = built("vit")
    keep = [g for g in derived.groups if g not in derived.blocks]
    spec = PermutationSpec({g: derived.groups[g] for g in keep}, {g: derived.sizes[g] for g in keep},
                           {g: tuple(s.module for s in derived.consumers[g] if not s.output) for g in keep})
    check_spec(m, spec, X[:4])
    other, _ = planted(m, spec, seed=2)
    assert_same_state(spec, activation_matching(spec, m, other, X), other, m)


def test_the_self_test_runs_activation_matchings_hooks():
    m, spec = built("vit")
    g = next(iter(spec.groups))
    wrong = PermutationSpec(spec.groups, spec.sizes, {**spec.consumers, g: (Site("blocks.0.fc1", axis=1),)},
                            spec.blocks)
    with pytest.raises(SpecError, match="blocks.0.fc1"):
        check_spec(m, wrong, X[:4])  # fc1 reads [B, T, D]: axis 1 is tokens, which cannot hold the stream


def test_layouts_place_units_as_documented():
    assert Span(tiles=3).table(2).tolist() == [[0, 1], [2, 3], [4, 5]]  # stacked gates: [r0 r1 | z0 z1 | n0 n1]
    assert Span(repeat=2, offset=1).table(2).tolist() == [[1, 3], [2, 4]]  # channel-major flatten after a skip
    assert Span(copies=2).table(4, 2).tolist() == [[0, 1, 4, 5], [2, 3, 6, 7]]  # head h read by two query heads
    assert Span(units=(1, -1, 0)).table(2).tolist() == [[2, 0]]
    with pytest.raises(SpecError, match="equally often"):
        Span(units=(0, 0, 1)).table(2)


def test_apply_permutation_moves_stacked_gates_alike():
    gru = nn.GRU(3, 4)
    spec = PermutationSpec({"h": (Axis("weight_ih_l0", 0, tiles=3), Axis("weight_hh_l0", 0, tiles=3),
                                  ("weight_hh_l0", 1), Axis("bias_ih_l0", 0, tiles=3), Axis("bias_hh_l0", 0, tiles=3))},
                           {"h": 4})
    p = torch.tensor([2, 0, 3, 1])
    out = apply_permutation(spec, {"h": p}, gru.state_dict())
    w = gru.weight_hh_l0.detach()
    expect = torch.cat([w[gate * 4 + p] for gate in range(3)])[:, p]
    assert torch.equal(out["weight_hh_l0"], expect)
    x = torch.randn(5, 2, 3)
    moved = copy.deepcopy(gru)
    moved.load_state_dict(out)
    assert torch.allclose(moved(x)[0], gru(x)[0][..., p], atol=1e-6)  # the hidden units, reordered


def test_tied_parameters_move_as_one():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(12, 8)
            self.mix = nn.Linear(8, 8)
            self.out = nn.Linear(8, 12, bias=False)
            self.out.weight = self.emb.weight  # one parameter, two names

        def forward(self, ids):
            return self.out(torch.relu(self.mix(self.emb(ids))) + self.emb(ids))

    m = Tied()
    spec = PermutationSpec.from_model(m, torch.randint(0, 12, (4, 5)))
    keys = {(e.key, e.axis) for es in spec.groups.values() for e in es}
    assert {("emb.weight", 1), ("out.weight", 1)} <= keys  # the vocabulary axis stays put; features move


class Functional(nn.Module):
    """Weights read directly: x @ W.T + b, RMSNorm, a learned per-feature scale, interpolation, GLU."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(12, 64) * 0.1)
        self.b = nn.Parameter(torch.randn(12))
        self.norm = nn.RMSNorm(12)
        self.scale = nn.Parameter(torch.rand(12) + 0.5)
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.glu = nn.Linear(6, 8)
        self.out = nn.Linear(12 + 4, 10)

    def forward(self, x):
        h = torch.relu(self.norm(x.flatten(1) @ self.w.T + self.b) * self.scale)
        c = torch.nn.functional.interpolate(torch.relu(self.conv(x)), scale_factor=2.0, mode="bilinear")
        g = torch.nn.functional.glu(self.glu(c.mean((2, 3))), dim=-1)
        return self.out(torch.cat([h, g], dim=1))


def test_parameters_read_directly_and_functional_ops():
    m = Functional().eval()
    spec = PermutationSpec.from_model(m, X[:4])  # self-tested
    axes = structure(spec)
    hidden = next(g for g, es in spec.groups.items() if any(e.key == "w" for e in es))
    assert {("w", 0), ("b", 0), ("norm.weight", 0), ("scale", 0)} <= {(e.key, e.axis) for e in spec.groups[hidden]}
    assert ("conv.weight", 0) in axes  # bilinear interpolation acts on each channel alike
    assert axes[("glu.weight", 0)].tiles == 2  # GLU: the two halves of one unit move together
    other, _ = planted(m, spec)
    perm, _ = weight_matching(spec, m.state_dict(), other.state_dict())
    assert_same_state(spec, perm, other, m)


class HeadBias(nn.Module):
    """Attention whose scores get a learned offset per head: heads can no longer trade places."""

    def __init__(self, dim: int = 16, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))
        self.head_bias = nn.Parameter(torch.randn(heads, 1, 1))
        self.fc, self.head = nn.Linear(dim, dim), nn.Linear(dim, 10)

    def forward(self, x):
        x = x.flatten(2).transpose(1, 2).reshape(x.shape[0], 4, 16)  # 4 tokens of 16 pixels
        b, t, d = x.shape
        q, k, v = (f(x).view(b, t, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        s = (q @ k.transpose(-2, -1) + self.head_bias).softmax(-1)
        h = self.proj((s @ v).transpose(1, 2).reshape(b, t, d))
        return self.head(torch.relu(self.fc(h)).mean(1))


def test_a_per_head_parameter_pins_the_heads_and_says_so():
    m = HeadBias().eval()
    spec = PermutationSpec.from_model(m, X[:4])  # self-tested: heads held in place
    assert not spec.blocks and any("head_bias" in n for n in spec.notes)
    keys = {(e.key, e.axis) for es in spec.groups.values() for e in es}
    assert ("fc.weight", 0) in keys and ("q.weight", 0) not in keys
