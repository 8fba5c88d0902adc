"""Permutation specs: which state axes move together when hidden units are permuted.

`PermutationSpec.from_model(model, example_input)` derives one with torch.fx
(rules in `dimat.merge.trace`: Linear/Conv outputs start a group; norms,
activations, pooling and dropout pass it; residual add/sub and gates merge
groups; flatten passes only at spatial size 1; cat, other reshapes, grouped
conv, GroupNorm with several groups and unknown ops pin — as do the model's
input and output), then runs the self-test `check_spec`.

A hand-written spec is the same value, e.g. for ``Sequential(Linear(4, 5),
BatchNorm1d(5), ReLU(), Linear(5, 3))``::

    hidden = (("0.weight", 0), ("0.bias", 0), ("1.weight", 0), ("1.bias", 0),
              ("1.running_mean", 0), ("1.running_var", 0), ("3.weight", 1))
    spec = PermutationSpec(groups={"hidden": hidden}, sizes={"hidden": 5},
                           consumers={"hidden": ("3",)})
    check_spec(model, spec, example_input)   # SpecError names a wrong group

Write one where a model cannot be traced (data-dependent control flow) and
keep it beside the model. `apply_permutation(spec, perm, state)` permutes a
state by a spec (every matching method's result is applied with it).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from dimat.merge.trace import Derivation, trace


class SpecError(ValueError):
    """A permutation spec could not be derived or fails its self-test."""


Perm = dict[str, torch.Tensor]  # group -> int64 index vector: unit i of the aligned model is unit perm[g][i]


@dataclass(frozen=True)
class PermutationSpec:
    """Which state axes permute together.

    - `groups[g]`: the (state key, axis) pairs permuted by group g, e.g.
      ``(("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1))``. BatchNorm
      weight, bias, running_mean and running_var belong here; integer buffers
      (num_batches_tracked) never do.
    - `sizes[g]`: the permutation length (the common length of those axes).
    - `consumers[g]`: modules (names from `named_modules`) whose *input*
      channels are group g; activation matching hooks their inputs. A residual
      stream has several consumers.

    Keys absent from the spec are left alone by `apply_permutation`.
    """

    groups: dict[str, tuple[tuple[str, int], ...]]
    sizes: dict[str, int]
    consumers: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: nn.Module, example_input: torch.Tensor, *, self_test: bool = True) -> PermutationSpec:
        """Derive the spec by tracing `model` on `example_input` (a batch); SpecError if untraceable or wrong."""
        spec = _derive(model, example_input)
        if self_test:
            check_spec(model, spec, example_input)
        return spec

    def axes_of(self, key: str) -> list[tuple[str, int]]:
        """(group, axis) pairs that permute state tensor `key`."""
        return [(g, ax) for g, pairs in self.groups.items() for k, ax in pairs if k == key]


def spec_for(model: nn.Module, example_input: torch.Tensor) -> PermutationSpec:
    """The permutation spec of `model`: its own `permutation_spec()` method's, when it has one (a spec
    written by hand beside the model), else derived by torch.fx; either way self-tested (`check_spec`)."""
    own = getattr(model, "permutation_spec", None)
    if not callable(own):
        return PermutationSpec.from_model(model, example_input)
    spec = own()
    if not isinstance(spec, PermutationSpec):
        raise SpecError(f"{type(model).__name__}.permutation_spec() returned {type(spec).__name__}: "
                        "return a dimat.merge.PermutationSpec")
    check_spec(model, spec, example_input)
    return spec


def _derive(model: nn.Module, example: torch.Tensor) -> PermutationSpec:
    try:
        gm = trace(model, example)
    except Exception as e:  # noqa: BLE001 - any tracing failure gets the same advice
        raise SpecError(
            f"{type(model).__name__} cannot be traced by torch.fx ({type(e).__name__}: {str(e).splitlines()[0]}): "
            "build a PermutationSpec(groups=..., sizes=..., consumers=...) by hand and check it with check_spec"
        ) from e
    found, state = Derivation(gm), model.state_dict()
    groups, sizes, consumers = {}, {}, {}
    for i, (root, pairs) in enumerate(found.groups(state).items()):
        lengths = {state[k].shape[ax] for k, ax in pairs}
        if len(lengths) != 1:
            raise SpecError(f"group P{i} mixes axes of different lengths {sorted(lengths)}: {pairs[:4]}")
        groups[f"P{i}"], sizes[f"P{i}"] = tuple(pairs), lengths.pop()
        consumers[f"P{i}"] = tuple(found.consumers_of(root))
    return PermutationSpec(groups, sizes, consumers)


def _check_structure(spec: PermutationSpec, state: dict[str, torch.Tensor], modules: dict[str, nn.Module]) -> None:
    """Keys, axes and sizes must exist (a hand-written spec's typos would otherwise pass silently)."""
    owner: dict[tuple[str, int], str] = {}
    for g, pairs in spec.groups.items():
        if g not in spec.sizes:
            raise SpecError(f"group {g} has no entry in sizes")
        for key, axis in pairs:
            if owner.setdefault((key, axis), g) != g:
                raise SpecError(f"{key} axis {axis} is in two groups, {owner[(key, axis)]} and {g}")
            if key not in state:
                raise SpecError(f"group {g}: state key {key!r} is not in the model")
            t = state[key]
            if not t.is_floating_point() or not -t.dim() <= axis < t.dim() or t.shape[axis] != spec.sizes[g]:
                raise SpecError(
                    f"group {g}: {key} (shape {tuple(t.shape)}, {t.dtype}) has no axis {axis} of length {spec.sizes[g]}"
                )
        for name in spec.consumers.get(g, ()):
            if name not in modules:
                raise SpecError(f"group {g}: consumer module {name!r} is not in the model")


def axes_by_key(spec: PermutationSpec) -> dict[str, list[tuple[str, int]]]:
    """(group, axis) pairs of every state key the spec permutes."""
    out: dict[str, list[tuple[str, int]]] = {}
    for g, pairs in spec.groups.items():
        for key, axis in pairs:
            out.setdefault(key, []).append((g, axis))
    return out


def apply_permutation(spec: PermutationSpec, perm: Perm, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A new state with every tensor permuted along its groups' axes.

    Keys outside the spec, and groups missing from `perm`, are left as they
    are, so a partial dict (e.g. optimizer buffers keyed by parameter name) works.
    """
    axes = axes_by_key(spec)
    out = {}
    for key, t in state.items():
        for g, axis in axes.get(key, ()):
            if g in perm:
                t = t.index_select(axis, perm[g].to(t.device))
        out[key] = t
    return out


def random_permutation(spec: PermutationSpec, seed: int = 0) -> Perm:
    """A seeded random permutation for every group (self-tests, planted-permutation tests)."""
    gen = torch.Generator().manual_seed(seed)
    return {g: torch.randperm(n, generator=gen) for g, n in spec.sizes.items()}


def check_spec(model: nn.Module, spec: PermutationSpec, example_input: torch.Tensor, *, seed: int = 0) -> None:
    """The self-test: a randomly permuted copy must compute the same outputs (eval mode).

    Runs in float64 where the model allows, with randomised norm statistics and
    affine parameters (at init they are 0/1, which would hide a missed
    permutation). Raises SpecError naming the first group that breaks it.
    """
    state = model.state_dict()
    _check_structure(spec, state, dict(model.named_modules()))
    ref, x, tol = _test_copy(model, example_input, seed)
    permuted = copy.deepcopy(ref)
    perm = random_permutation(spec, seed)

    def same(p: dict[str, torch.Tensor]) -> bool:
        permuted.load_state_dict(apply_permutation(spec, p, ref.state_dict()))
        return _same_outputs(ref, permuted, x, tol)

    if same(perm):
        return
    for g in spec.groups:  # locate the first group whose permutation alone breaks equivalence
        if not same({g: perm[g]}):
            layers = sorted({k.rsplit(".", 1)[0] for k, _ in spec.groups[g]})
            raise SpecError(
                f"permutation spec self-test failed: permuting group {g} (layers {', '.join(layers[:6])}) "
                "changes the model's outputs; a layer there mixes channels in a way the spec misses"
            )
    raise SpecError("permutation spec self-test failed: permuting all groups together changes the outputs")


def _test_copy(model: nn.Module, x: torch.Tensor, seed: int) -> tuple[nn.Module, torch.Tensor, float]:
    """An eval-mode copy with random norm parameters, in float64 if it runs there (else float32)."""
    ref = _randomise_norms(copy.deepcopy(model).eval(), seed)
    if x.is_floating_point():
        try:
            with torch.no_grad():
                ref.double()(x.double())
            return ref, x.double(), 1e-9
        except Exception:  # noqa: BLE001 - some ops have no float64 kernel: test in float32
            ref.float()
    return ref, x, 1e-4


@torch.no_grad()
def _randomise_norms(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed + 1)
    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
    for m in model.modules():
        if not isinstance(m, norms):
            continue
        for name, make in (("running_mean", torch.randn), ("bias", torch.randn)):
            if getattr(m, name, None) is not None:
                getattr(m, name).copy_(make(getattr(m, name).shape, generator=gen))
        for name in ("running_var", "weight"):
            if getattr(m, name, None) is not None:
                getattr(m, name).copy_(torch.rand(getattr(m, name).shape, generator=gen) + 0.5)
    return model


@torch.no_grad()
def _same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor, tol: float) -> bool:
    """Every output tensor (nested outputs included) agrees to ``tol`` relative to its scale."""
    outs = [(u, v) for u, v in zip(tree_leaves(a(x)), tree_leaves(b(x))) if isinstance(u, torch.Tensor)]
    return all(torch.allclose(u, v, rtol=tol, atol=tol * (1.0 + float(u.abs().max()))) for u, v in outs)
