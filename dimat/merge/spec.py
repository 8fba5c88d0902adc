"""Permutation specs, derived from the model by torch.fx, and checked by a self-test.

A spec says which state tensors' axes move together when hidden units are
permuted. `PermutationSpec.from_model` traces the model and runs union-find
over channel axes: Linear/Conv outputs start a group; BatchNorm, activations,
pooling, dropout and GroupNorm(1, C) pass it on; residual add/sub merge the
groups of their operands; flatten passes it only at spatial size 1; anything
else (cat, reshape, grouped conv, GroupNorm with several groups, unknown ops)
pins its input — as do the model's input and output.

Hand-written specs use the same structure: `groups` maps a group name to
the (state key, axis) pairs it permutes, `sizes` its length, and `consumers`
the modules whose *input* channels belong to it (activation matching hooks
them). Check one with `check_spec(model, spec, example_input)`.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.fx import symbolic_trace
from torch.fx.passes.shape_prop import ShapeProp


class SpecError(ValueError):
    """A permutation spec could not be derived or fails its self-test."""


PASS_MODULES = (
    nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Hardtanh, nn.ReLU6,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d, nn.Identity,
)
PASS_FUNCTIONS = {
    torch.relu, torch.nn.functional.relu, torch.nn.functional.gelu, torch.sigmoid, torch.tanh,
    torch.nn.functional.max_pool2d, torch.nn.functional.avg_pool2d, torch.nn.functional.adaptive_avg_pool2d,
    torch.nn.functional.dropout, torch.nn.functional.silu, torch.nn.functional.leaky_relu,
}
PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "detach"}
# shape queries read no values, so they neither pass nor pin a group
SHAPE_METHODS = {"size", "dim"}
# elementwise arithmetic with a plain number commutes with any channel permutation
SCALAR_FUNCTIONS = {operator.mul, operator.truediv, operator.add, operator.sub, operator.neg, torch.mul}
SCALAR_METHODS = {"mul", "div", "add", "sub", "neg"}
MERGE_FUNCTIONS = {operator.add, operator.sub, operator.iadd, operator.isub, torch.add, torch.sub}
MERGE_METHODS = {"add", "sub", "add_", "sub_"}


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
        spec = _derive(model, example_input)
        if self_test:
            check_spec(model, spec, example_input)
        return spec

    def axes_of(self, key: str) -> list[tuple[str, int]]:
        """(group, axis) pairs that permute state tensor `key`."""
        return [(g, ax) for g, pairs in self.groups.items() for k, ax in pairs if k == key]


class _UnionFind:
    def __init__(self):
        self.parent: dict[int, int] = {}

    def make(self) -> int:
        i = len(self.parent)
        self.parent[i] = i
        return i

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        self.parent[rb] = ra
        return ra


def _derive(model: nn.Module, example: torch.Tensor) -> PermutationSpec:
    try:
        gm = symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure gets the same advice
        raise SpecError(
            f"{type(model).__name__} cannot be traced by torch.fx ({type(e).__name__}: {str(e).splitlines()[0]}): "
            "build a PermutationSpec(groups=..., sizes=..., consumers=...) by hand and check it with check_spec"
        ) from e
    was_training = model.training
    gm.eval()
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    model.train(was_training)
    uf = _UnionFind()
    pinned: set[int] = set()
    group_of: dict[str, int | None] = {}  # fx node name -> channel group of its output (None: identity)
    # (root id, key, axis) entries and consumer modules, resolved to groups at the end
    entries: list[tuple[int, str, int]] = []
    consumers: list[tuple[int, str]] = []
    modules = dict(gm.named_modules())

    def shape(node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else ()

    def inp(node, i=0):
        a = node.args[i] if len(node.args) > i else None
        return group_of.get(a.name) if isinstance(a, torch.fx.Node) else None

    def pin_inputs(node):
        for a in node.all_input_nodes:
            g = group_of.get(a.name)
            if g is not None:
                pinned.add(uf.find(g))

    for node in gm.graph.nodes:
        g_out: int | None = None
        if node.op == "placeholder":
            g_out = None
        elif node.op == "call_module":
            m = modules[node.target]
            g_in = inp(node)
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv1d)) and getattr(m, "groups", 1) == 1:
                if g_in is not None:
                    entries.append((g_in, f"{node.target}.weight", 1))
                    consumers.append((g_in, node.target))
                g_out = uf.make()
                entries.append((g_out, f"{node.target}.weight", 0))
                if m.bias is not None:
                    entries.append((g_out, f"{node.target}.bias", 0))
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                g_out = g_in
                if g_in is not None:
                    names = [n for n in ("weight", "bias") if getattr(m, n) is not None]
                    names += [n for n in ("running_mean", "running_var") if getattr(m, n) is not None]
                    entries += [(g_in, f"{node.target}.{n}", 0) for n in names]
            elif isinstance(m, nn.GroupNorm) and m.num_groups == 1:
                g_out = g_in
                if g_in is not None and m.affine:
                    entries += [(g_in, f"{node.target}.{n}", 0) for n in ("weight", "bias")]
            elif isinstance(m, PASS_MODULES):
                g_out = g_in
            elif isinstance(m, nn.Flatten):
                g_out = g_in if _spatial_one(shape(node.args[0])) else None
                if g_out is None:
                    pin_inputs(node)
            else:
                pin_inputs(node)
        elif node.op in ("call_function", "call_method"):
            fn = node.target
            if fn is getattr or (node.op == "call_method" and fn in SHAPE_METHODS):
                g_out = None
            elif _scalar_op(node):
                g_out = inp(node)
            elif fn in MERGE_FUNCTIONS or (node.op == "call_method" and fn in MERGE_METHODS):
                gs = [group_of.get(a.name) for a in node.args if isinstance(a, torch.fx.Node)]
                if len(gs) == 2 and None not in gs:
                    g_out = uf.union(gs[0], gs[1])
                else:  # an operand from an identity-basis tensor pins the whole stream
                    pin_inputs(node)
            elif fn in PASS_FUNCTIONS or (node.op == "call_method" and fn in PASS_METHODS):
                g_out = inp(node)
            elif fn in (torch.flatten,) or (node.op == "call_method" and fn in ("flatten", "view", "reshape")):
                src = node.args[0]
                g_out = inp(node) if _spatial_one(shape(src)) and len(shape(node)) == 2 else None
                if g_out is None:
                    pin_inputs(node)
            else:
                pin_inputs(node)
        elif node.op == "output":
            pin_inputs(node)
        if g_out is not None:
            group_of[node.name] = g_out
    return _assemble(model, uf, pinned, entries, consumers)


def _scalar_op(node) -> bool:
    """x * 2, x - 0.5, -x: one tensor operand and otherwise plain numbers."""
    known = node.target in (SCALAR_METHODS if node.op == "call_method" else SCALAR_FUNCTIONS)
    tensors = [a for a in node.args if isinstance(a, torch.fx.Node)]
    numbers = [a for a in node.args if isinstance(a, (int, float))]
    return known and not node.kwargs and len(tensors) == 1 and len(tensors) + len(numbers) == len(node.args)


def _spatial_one(shape: tuple[int, ...]) -> bool:
    return len(shape) >= 2 and all(s == 1 for s in shape[2:])


def _assemble(model, uf, pinned, entries, consumers) -> PermutationSpec:
    state = model.state_dict()
    pinned_roots = {uf.find(p) for p in pinned}
    roots = sorted({uf.find(g) for g, _, _ in entries} - pinned_roots)
    name = {r: f"P{i}" for i, r in enumerate(roots)}
    groups: dict[str, list[tuple[str, int]]] = {name[r]: [] for r in roots}
    cons: dict[str, list[str]] = {name[r]: [] for r in roots}
    for g, key, axis in entries:
        r = uf.find(g)
        if r in name and (key, axis) not in groups[name[r]]:
            groups[name[r]].append((key, axis))
    for g, module in consumers:
        r = uf.find(g)
        if r in name and module not in cons[name[r]]:
            cons[name[r]].append(module)
    sizes = {}
    for gname, pairs in groups.items():
        lengths = {state[k].shape[ax] for k, ax in pairs}
        if len(lengths) != 1:
            raise SpecError(f"group {gname} mixes axes of different lengths {sorted(lengths)}: {pairs[:4]}")
        sizes[gname] = lengths.pop()
    return PermutationSpec(
        {g: tuple(p) for g, p in groups.items()}, sizes, {g: tuple(c) for g, c in cons.items()}
    )


def _check_structure(spec: PermutationSpec, state: dict[str, torch.Tensor], modules: dict[str, nn.Module]) -> None:
    """Keys, axes and sizes must exist (a hand-written spec's typos would otherwise pass silently)."""
    for g, pairs in spec.groups.items():
        if g not in spec.sizes:
            raise SpecError(f"group {g} has no entry in sizes")
        for key, axis in pairs:
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


def random_permutation(spec: PermutationSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded random permutation for every group (self-tests, planted-permutation tests)."""
    gen = torch.Generator().manual_seed(seed)
    return {g: torch.randperm(n, generator=gen) for g, n in spec.sizes.items()}


def check_spec(model: nn.Module, spec: PermutationSpec, example_input: torch.Tensor, *, seed: int = 0) -> None:
    """A randomly permuted copy (with randomised BN statistics) must compute the same outputs in eval mode."""
    from dimat.merge.permute import apply_permutation

    _check_structure(spec, model.state_dict(), dict(model.named_modules()))
    ref = copy.deepcopy(model).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # random BN statistics, so a wrongly permuted buffer shows
        for m in ref.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    permuted = copy.deepcopy(ref)
    perm = random_permutation(spec, seed)
    permuted.load_state_dict(apply_permutation(spec, perm, ref.state_dict()))
    with torch.no_grad():
        a, b = ref(example_input), permuted(example_input)
    if torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()) + 1e-5):
        return
    # locate the first group whose permutation alone breaks equivalence
    for g in spec.groups:
        single = {h: (p if h == g else torch.arange(spec.sizes[h])) for h, p in perm.items()}
        permuted.load_state_dict(apply_permutation(spec, single, ref.state_dict()))
        with torch.no_grad():
            if not torch.allclose(ref(example_input), permuted(example_input), rtol=1e-4, atol=1e-4):
                layers = sorted({k.rsplit(".", 1)[0] for k, _ in spec.groups[g]})
                raise SpecError(
                    f"permutation spec self-test failed: permuting group {g} (layers {', '.join(layers[:6])}) "
                    "changes the model's outputs; a layer there mixes channels in a way the spec misses"
                )
    raise SpecError("permutation spec self-test failed: a permuted copy computes different outputs")
