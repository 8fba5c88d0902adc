"""Derive which state axes permute together: torch.fx trace, shape propagation, union-find.

Every tensor flowing through the traced graph gets a *label*: the union-find
element of its channel axis (axis 1, or the feature axis of a 2-d tensor).
Rules, one handler each:

- Linear (2-d input) and Conv1d/2d/3d with ``groups == 1`` start a new element
  for their output axis; their input axis joins the element of whatever feeds
  them.
- BatchNorm, InstanceNorm, GroupNorm with one group or one channel per group,
  and LayerNorm over all non-batch dims pass the element on and permute their
  parameters (and running statistics) with it.
- Activations, pooling, dropout, identity, arithmetic with plain numbers and
  reductions over spatial dims pass it on.
- Elementwise add/sub/mul/div of same-shaped tensors (residual streams,
  gates) merge their operands' elements.
- Flatten/view/reshape to ``[B, C]`` passes only at spatial size 1.
- Everything else (cat, other reshapes, grouped conv, GroupNorm with several
  groups, attention, unknown modules or functions) *pins* its inputs: they are
  joined with the PIN element, whose group is never permuted. The model's
  inputs, parameters read directly (``get_attr``) and outputs are pinned too.

A state axis registered twice (a module called twice) joins both elements, so
shared layers stay consistent.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

PIN = 0  # union-find element of every axis that must stay in the identity basis

PASS_MODULES = (
    nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Hardtanh, nn.ReLU6, nn.Mish,
    nn.Hardswish, nn.Softplus, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity,
)
PASS_FUNCTIONS: set[Callable] = {
    torch.relu, F.relu, F.relu6, F.gelu, F.silu, F.elu, F.leaky_relu, F.hardtanh, F.hardswish, F.mish, F.softplus,
    torch.sigmoid, torch.tanh, F.sigmoid, F.tanh, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d,
    F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.dropout,
    F.dropout1d, F.dropout2d, operator.neg, torch.neg,
}
PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "neg", "contiguous", "clone", "detach", "float"}
ELEMENTWISE_FUNCTIONS: set[Callable] = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub, operator.imul,
    torch.add, torch.sub, torch.mul, torch.div,
}
ELEMENTWISE_METHODS = {"add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_"}
RESHAPE_FUNCTIONS: set[Callable] = {torch.flatten, torch.reshape}
RESHAPE_METHODS = {"flatten", "view", "reshape"}
REDUCE_FUNCTIONS: set[Callable] = {torch.mean, torch.sum, torch.amax}
REDUCE_METHODS = {"mean", "sum", "amax"}
# metadata queries read no values: they neither pass nor pin a group
SHAPE_METHODS = {"size", "dim"}
NORM_PARAMS = ("weight", "bias", "running_mean", "running_var")


class UnionFind:
    """Disjoint sets of integer elements; element 0 is PIN."""

    def __init__(self) -> None:
        self.parent: list[int] = [PIN]

    def make(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if rb == PIN:  # keep PIN its own root, so "pinned" is one comparison
            ra, rb = rb, ra
        self.parent[rb] = ra
        return ra


class Derivation:
    """One walk over a shape-propagated fx graph, collecting axes per union-find element."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.modules = dict(gm.named_modules())
        self.uf = UnionFind()
        self.label: dict[str, int] = {}  # fx node name -> element of its channel axis
        self.entries: dict[tuple[str, int], int] = {}  # (state key, axis) -> element, in graph order
        self.consumers: list[tuple[int, str, str]] = []  # (element, module, name of its input node)
        for node in gm.graph.nodes:
            self.visit(node)

    # -- helpers -------------------------------------------------------------------------------------
    @staticmethod
    def shape(node: fx.Node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None

    def tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        return [a for a in node.all_input_nodes if a.name in self.label]

    def attach(self, key: str, axis: int, element: int) -> None:
        """Register a state axis with an element; an axis seen before joins the two (shared modules)."""
        if (key, axis) in self.entries:
            element = self.uf.union(self.entries[(key, axis)], element)
        self.entries[(key, axis)] = element

    def pin(self, node: fx.Node) -> None:
        for a in self.tensor_inputs(node):
            self.uf.union(PIN, self.label[a.name])
        if self.shape(node) is not None:
            self.label[node.name] = PIN

    def pass_on(self, node: fx.Node) -> None:
        """The first tensor input's element flows to the output; any other tensor input is pinned."""
        first, *rest = self.tensor_inputs(node) or [None]
        if first is None or self.shape(node) is None:
            return self.pin(node)
        for a in rest:
            self.uf.union(PIN, self.label[a.name])
        self.label[node.name] = self.label[first.name]

    # -- dispatch ------------------------------------------------------------------------------------
    def visit(self, node: fx.Node) -> None:
        if node.op in ("placeholder", "get_attr"):
            if self.shape(node) is not None:
                self.label[node.name] = PIN
        elif node.op == "call_module":
            self.call_module(node, self.modules[node.target])
        elif node.op in ("call_function", "call_method"):
            self.call_op(node)
        elif node.op == "output":
            self.pin(node)

    def call_module(self, node: fx.Node, m: nn.Module) -> None:
        if self.is_producer(node, m):
            self.produce(node, m)
        elif self.is_channel_norm(node, m):
            self.norm(node, m)
        elif isinstance(m, PASS_MODULES):
            self.pass_on(node)
        elif isinstance(m, nn.Flatten):
            self.reshape(node)
        else:
            self.pin(node)

    def call_op(self, node: fx.Node) -> None:
        fn, method = node.target, node.op == "call_method"
        if fn in (ELEMENTWISE_METHODS if method else ELEMENTWISE_FUNCTIONS):
            self.elementwise(node)
        elif fn in (PASS_METHODS if method else PASS_FUNCTIONS):
            self.pass_on(node)
        elif fn in (RESHAPE_METHODS if method else RESHAPE_FUNCTIONS):
            self.reshape(node)
        elif fn in (REDUCE_METHODS if method else REDUCE_FUNCTIONS):
            self.reduce(node)
        elif self.shape(node) is None and (fn is getattr or (method and fn in SHAPE_METHODS)):
            return
        else:
            self.pin(node)

    # -- rules ---------------------------------------------------------------------------------------
    def is_producer(self, node: fx.Node, m: nn.Module) -> bool:
        x = self.shape(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        if isinstance(m, nn.Linear):
            return x is not None and len(x) == 2
        convs = {nn.Conv1d: 3, nn.Conv2d: 4, nn.Conv3d: 5}
        return type(m) in convs and m.groups == 1 and x is not None and len(x) == convs[type(m)]

    def produce(self, node: fx.Node, m: nn.Module) -> None:
        x = node.args[0]
        self.attach(f"{node.target}.weight", 1, self.label[x.name])
        self.consumers.append((self.label[x.name], node.target, x.name))
        out = self.uf.make()
        for name in ("weight", "bias"):
            if getattr(m, name) is not None:
                self.attach(f"{node.target}.{name}", 0, out)
        self.label[node.name] = self.entries[(f"{node.target}.weight", 0)]

    def is_channel_norm(self, node: fx.Node, m: nn.Module) -> bool:
        """Norms that treat every channel alike, so a channel permutation commutes with them."""
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
            return True
        if isinstance(m, nn.GroupNorm):
            return m.num_groups in (1, m.num_channels)
        if isinstance(m, nn.LayerNorm):
            x = self.shape(node.args[0])
            return x is not None and tuple(m.normalized_shape) == x[1:]
        return False

    def norm(self, node: fx.Node, m: nn.Module) -> None:
        self.pass_on(node)
        for name in NORM_PARAMS:
            if getattr(m, name, None) is not None:
                self.attach(f"{node.target}.{name}", 0, self.label[node.name])

    def elementwise(self, node: fx.Node) -> None:
        """Same-shaped tensor operands share one basis (residual add, gating); plain numbers commute."""
        tensors, out = self.tensor_inputs(node), self.shape(node)
        if not tensors or out is None or len(out) < 2 or any(self.shape(a) != out for a in tensors):
            return self.pin(node)
        element = self.label[tensors[0].name]
        for a in tensors[1:]:
            element = self.uf.union(element, self.label[a.name])
        self.label[node.name] = element

    def reshape(self, node: fx.Node) -> None:
        """Passes when nothing moves: [B, C, 1, ...] -> [B, C], or a no-op reshape."""
        x, out = self.shape(node.args[0]), self.shape(node)
        if x is not None and out is not None and (x == out or (out == x[:2] and all(s == 1 for s in x[2:]))):
            return self.pass_on(node)
        self.pin(node)

    def reduce(self, node: fx.Node) -> None:
        """mean/sum/amax over spatial dims keep [B, C] in place (e.g. global average pooling)."""
        x, out = self.shape(node.args[0]), self.shape(node)
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = (dims,) if isinstance(dims, int) else dims
        if x is None or out is None or not isinstance(dims, (tuple, list)) or len(x) < 3:
            return self.pin(node)
        if {d % len(x) for d in dims}.isdisjoint({0, 1}) and out[:2] == x[:2]:
            return self.pass_on(node)
        self.pin(node)

    # -- result --------------------------------------------------------------------------------------
    def groups(self, state: dict[str, torch.Tensor]) -> dict[int, list[tuple[str, int]]]:
        """Free (unpinned) roots -> their (key, axis) pairs, in graph order."""
        out: dict[int, list[tuple[str, int]]] = {}
        for (key, axis), element in self.entries.items():
            root = self.uf.find(element)
            if root != PIN and key in state:
                out.setdefault(root, []).append((key, axis))
        return out

    def consumers_of(self, root: int) -> list[str]:
        """Modules reading a group's channels, one per distinct input tensor (they see the same activations).

        A module called twice is listed once: a forward hook keeps only its last input.
        """
        seen: dict[str, str] = {}
        for element, module, source in self.consumers:
            if self.uf.find(element) == root and module not in seen.values():
                seen.setdefault(source, module)
        return list(seen.values())


@contextlib.contextmanager
def eval_mode(*models: nn.Module, hooks: Iterable = ()) -> Iterator[None]:
    """The models in eval mode inside the block; after it every module's training flag is restored and the
    `hooks` (handles of hooks registered for the block) are removed, whatever happened inside."""
    flags = {m: m.training for model in models for m in model.modules()}
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        for m, flag in flags.items():
            m.training = flag


def trace(model: nn.Module, example_input: torch.Tensor) -> fx.GraphModule:
    """symbolic_trace + ShapeProp on ``example_input`` in eval mode (no statistics are updated)."""
    gm = fx.symbolic_trace(model)
    with eval_mode(model), torch.no_grad():
        ShapeProp(gm).propagate(example_input)
    return gm
