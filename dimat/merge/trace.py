"""Derive which state axes permute together: labels propagated through a torch.fx trace.

A forward pass on an example input, interpreted node by node, gives every
element of every tensor a *label* saying how it moves when hidden units are
permuted:

- NONE (label 0): it never moves -- the model's input, positional constants,
  anything that reaches the output;
- a unit: it moves with that hidden unit (a channel, a feature of a token);
- a block: it moves with a set of units as a whole (an attention score moves
  with its head; a token's mean over the residual stream with the stream);
- a variable: not known yet (a parameter read directly, ``torch.zeros``); it
  takes the label of whatever it meets.

Rules, op by op:

- Linear, Conv (groups 1), ConvTranspose, Embedding and recurrent layers make
  new units on their weight's output axis and tie their input axis to whatever
  feeds them; a depthwise convolution carries its input's units through; a
  grouped one ties its input's groups together and makes one set of units per
  group; a module called again reuses its units.
- Shape ops (view, reshape, flatten, permute, transpose, cat, stack, chunk,
  split, indexing, expand, repeat, ...) are replayed on the label tensors
  themselves, so heads, flattened maps and concatenations are followed exactly.
- Elementwise ops unify their operands' labels position by position (a residual
  add joins two streams, a gate joins its branches); an operand broadcast along
  the units of another is a constant for them.
- Norms, softmax and reductions over several units make a *block* of the units
  they mix: the whole group for LayerNorm (no constraint), one head for
  ``q @ kᵀ``, one group of channels for GroupNorm; ``scores @ v`` puts a head's
  value dims in that head's block.
- nn.MultiheadAttention, GRU, LSTM and RNN follow their internal structure;
  unknown modules and functions pin what they read (their labels join NONE),
  with a note saying which and why.

Then (`Derivation.spec`): units joined by any path are one unit; the units one
layer made, with the same role, form a group; a group whose units split into
blocks (heads, GroupNorm groups) moves block-wise, with the other groups of the
same blocks; every state axis's labels become a layout, and every read of a
group by a module an activation-matching site (`dimat.merge.spec`).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import operator
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from dimat.merge.spec import Axis, PermutationSpec, Site, SpecError, Span

NONE, VAR, UNIT, BLOCK = 0, 1, 2, 3  # label kinds; the label 0 is NONE itself


class Labels:
    """Union-find over labels, with their kinds, block memberships and the blocks made from sets of units."""

    def __init__(self) -> None:
        self.parent = np.zeros(1 << 12, np.int64)
        self.kind = np.zeros(1 << 12, np.int8)
        self.n = 1
        self.members: list[tuple[int, int]] = []  # (unit, block): the units a block was made of
        self.attached: list[tuple[int, int]] = []  # (unit, block): a unit met a block elementwise (scores @ v)
        self.memo: dict[frozenset, int] = {}  # set of units -> its block
        self.block_sets: list[frozenset] = []  # sets of blocks reduced together: must be whole families

    def new(self, count: int, kind: int) -> np.ndarray:
        need = self.n + count
        if need > len(self.parent):
            size = max(need, 2 * len(self.parent))
            self.parent = np.concatenate([self.parent, np.zeros(size - len(self.parent), np.int64)])
            self.kind = np.concatenate([self.kind, np.zeros(size - len(self.kind), np.int8)])
        ids = np.arange(self.n, need, dtype=np.int64)
        self.parent[ids] = ids
        self.kind[ids] = kind
        self.n = need
        return ids

    def find(self, ids) -> np.ndarray:
        x = np.array(ids, dtype=np.int64, copy=True).reshape(-1)
        while True:
            p = self.parent[x]
            if (p == x).all():
                return x
            gp = self.parent[p]
            self.parent[x] = gp  # path halving
            x = gp

    def root(self, i: int) -> int:
        return int(self.find([i])[0])

    def roots(self, t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.find(t.reshape(-1).numpy())).view(t.shape)

    def join(self, a: int, b: int) -> None:
        """Unify two roots: NONE stays the root (pinning), else the richer kind."""
        if a == b:
            return
        if b == NONE or (a != NONE and self.kind[b] > self.kind[a]):
            a, b = b, a
        self.parent[b] = a

    def unify(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Position by position: the two labels are the same from now on (a unit meeting a block joins the block
        instead); returns the resulting labels."""
        ra, rb = self.find(a.reshape(-1).numpy()), self.find(b.reshape(-1).numpy())
        differ = ra != rb
        if differ.any():
            pairs = np.unique(ra[differ] * (1 << 32) + rb[differ])  # one int64 per pair: a 1-d sort
            for x, y in zip(pairs >> 32, pairs & ((1 << 32) - 1)):
                x, y = self.root(int(x)), self.root(int(y))
                kx, ky = self.kind[x], self.kind[y]
                if x != NONE and y != NONE and {int(kx), int(ky)} == {UNIT, BLOCK}:
                    self.attached.append((x, y) if kx == UNIT else (y, x))
                else:
                    self.join(x, y)
        fa, fb = self.find(ra), self.find(rb)
        out = np.where((self.kind[fa] == BLOCK) & (self.kind[fb] == UNIT) & (fa != NONE), fb, fa)
        return torch.from_numpy(out).view(a.shape)

    def block_of(self, labels: np.ndarray) -> int:
        """The label of something that depends on a set of labels as a whole (a reduction over them)."""
        roots = np.unique(self.find(labels))
        roots = roots[roots != NONE]
        kinds = self.kind[roots]
        blocks, units = roots[kinds == BLOCK], roots[kinds != BLOCK]
        if len(blocks):
            if len(units):  # units and blocks mixed in one reduction: pin them all
                for r in roots:
                    self.join(NONE, int(r))
            elif len(blocks) > 1:
                self.block_sets.append(frozenset(int(b) for b in blocks))
            return NONE if len(blocks) > 1 or len(units) else int(blocks[0])
        if len(units) == 0:
            return NONE
        if len(units) == 1:
            return int(units[0])
        key = frozenset(int(u) for u in units)
        if key not in self.memo:
            b = int(self.new(1, BLOCK)[0])
            self.members.extend((int(u), b) for u in units)
            self.memo[key] = b
        return self.memo[key]


@dataclass(frozen=True)
class ParamRef:
    """A state tensor read directly (get_attr), with its axes in the order `dims` (after transposes)."""

    key: str
    dims: tuple[int, ...]


@dataclass
class _Read:
    module: str
    arg: int
    axis: int
    labels: torch.Tensor
    source: str  # the fx node read (modules reading the same tensor see the same activations)
    output: bool = False


POINTWISE_MODULES = (
    nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Hardtanh, nn.ReLU6, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.SELU, nn.CELU, nn.Softsign, nn.Tanhshrink, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity,
    nn.Threshold, nn.LogSigmoid,
)
SPATIAL_MODULES = tuple(getattr(nn, name) for name in (
    "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d",
    "Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d", "ZeroPad1d", "ZeroPad2d", "ZeroPad3d",
    "ConstantPad1d", "ConstantPad2d", "ConstantPad3d", "ReflectionPad1d", "ReflectionPad2d", "ReflectionPad3d",
    "ReplicationPad1d", "ReplicationPad2d", "ReplicationPad3d", "CircularPad1d", "CircularPad2d", "LPPool1d",
    "LPPool2d",
) if hasattr(nn, name))
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
CHANNEL_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
RMS_NORMS = (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
RNNS = {nn.GRU: 3, nn.LSTM: 4, nn.RNN: 1}

POINTWISE = {
    torch.relu, F.relu, F.relu6, F.gelu, F.silu, F.elu, F.selu, F.celu, F.leaky_relu, F.hardtanh, F.hardswish,
    F.hardsigmoid, F.mish, F.softplus, F.softsign, F.logsigmoid, F.tanhshrink, F.threshold, torch.sigmoid,
    torch.tanh, F.sigmoid, F.tanh, torch.exp, torch.log, torch.sqrt, torch.rsqrt, torch.abs, torch.neg,
    torch.square, torch.reciprocal, torch.erf, torch.sin, torch.cos, torch.clamp, torch.clip, torch.sign,
    operator.neg, operator.pos, operator.abs, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
    torch.log1p, torch.expm1, torch.exp2, torch.floor, torch.ceil, torch.round, torch.logical_not,
    torch.nan_to_num, torch.isnan, torch.isfinite,
}
POINTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "exp_", "log", "sqrt", "rsqrt", "abs", "neg",
    "square", "reciprocal", "clamp", "clamp_", "clip", "clamp_min", "clamp_max", "sign", "erf", "sin", "cos",
    "log1p", "expm1", "floor", "ceil", "round", "logical_not", "nan_to_num", "sigmoid_", "pow", "pow_",
}
# methods whose output is their input's values (other tensor arguments give only a dtype or device)
SAME_METHODS = {"contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to", "type", "cpu", "cuda",
                "requires_grad_", "type_as", "zero_", "fill_"}
ELEMENTWISE = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.pow, operator.iadd,
    operator.isub, operator.imul, operator.itruediv, operator.mod, operator.gt, operator.lt, operator.ge,
    operator.le, operator.eq, operator.ne, operator.and_, operator.or_, torch.add, torch.sub, torch.mul, torch.div,
    torch.true_divide, torch.pow, torch.maximum, torch.minimum, torch.where, torch.lerp, torch.addcmul,
    torch.addcdiv, torch.gt, torch.lt, torch.ge, torch.le, torch.eq, torch.ne, torch.logical_and, torch.logical_or,
    torch.masked_fill, torch.fmax, torch.fmin, torch.atan2, torch.hypot,
}
ELEMENTWISE_METHODS = {
    "add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_", "pow", "maximum", "minimum", "masked_fill",
    "masked_fill_", "lerp", "addcmul", "addcdiv", "gt", "lt", "ge", "le", "eq", "ne", "where", "logical_and",
    "logical_or", "true_divide", "__and__", "__or__",
}
SHAPE = {
    torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.t, torch.squeeze, torch.unsqueeze,
    torch.cat, torch.concat, torch.concatenate, torch.stack, torch.chunk, torch.split, torch.unbind,
    torch.tensor_split, torch.flip, torch.roll, torch.narrow, torch.select, torch.movedim, torch.moveaxis,
    torch.swapaxes, torch.swapdims, torch.repeat_interleave, torch.index_select, torch.gather, torch.tile,
    torch.broadcast_to, torch.hstack, torch.vstack, torch.unflatten, torch.take_along_dim, operator.getitem,
    torch.diagonal, torch.triu, torch.tril,
}
SHAPE_METHODS = {
    "view", "reshape", "flatten", "unflatten", "permute", "transpose", "t", "squeeze", "unsqueeze", "expand",
    "repeat", "repeat_interleave", "chunk", "split", "unbind", "tensor_split", "flip", "roll", "narrow", "select",
    "movedim", "moveaxis", "swapaxes", "swapdims", "index_select", "gather", "tile", "view_as", "reshape_as", "expand_as",
    "split_with_sizes", "unfold", "diagonal", "triu", "tril", "__getitem__", "take_along_dim", "mT", "T",
}
REDUCE = {torch.sum, torch.mean, torch.amax, torch.amin, torch.var, torch.std, torch.norm, torch.logsumexp,
          torch.prod, torch.max, torch.min, torch.linalg.vector_norm, torch.all, torch.any, torch.count_nonzero,
          torch.nansum, torch.nanmean, torch.median}
REDUCE_METHODS = {"sum", "mean", "amax", "amin", "var", "std", "norm", "logsumexp", "prod", "max", "min", "all",
                  "any", "count_nonzero", "nansum", "nanmean", "median"}
ALONG = {torch.softmax: "dim", F.softmax: "dim", torch.log_softmax: "dim", F.log_softmax: "dim",
         F.normalize: "dim", torch.cumsum: "dim", torch.cumprod: "dim", F.softmin: "dim"}
ALONG_METHODS = {"softmax": "dim", "log_softmax": "dim", "cumsum": "dim", "cumprod": "dim"}
MATMUL = {torch.matmul, operator.matmul, torch.bmm, torch.mm}
SPATIAL = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
           F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
           F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate, F.upsample, F.upsample_nearest,
           F.upsample_bilinear, F.lp_pool1d, F.lp_pool2d}
WILDCARDS = {torch.zeros, torch.ones, torch.full, torch.empty, torch.zeros_like, torch.ones_like, torch.full_like,
             torch.empty_like}
WILDCARD_METHODS = {"new_zeros", "new_ones", "new_full", "new_empty"}
METADATA = {"size", "dim", "numel", "ndimension", "nelement", "element_size", "get_device", "is_contiguous",
            "stride", "data_ptr", "item", "tolist"}
METADATA_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "layout", "data"}


def _kw(args: tuple, kwargs: dict, index: int, name: str, default=None):
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _dims(dim, ndim: int) -> list[int]:
    if dim is None:
        return list(range(ndim))
    if isinstance(dim, int):
        return [dim % ndim]
    return sorted({d % ndim for d in dim})


def _along(vec: torch.Tensor, dim: int, shape: Iterable[int]) -> torch.Tensor:
    """Labels of a tensor of `shape` whose axis `dim` carries `vec` (the same at every other position)."""
    shape = tuple(shape)
    dim %= len(shape)
    return vec.view([-1 if d == dim else 1 for d in range(len(shape))]).expand(shape)


class Derivation(fx.Interpreter):
    """One interpreted forward pass of a traced model, labelling every tensor (module docstring)."""

    def __init__(self, gm: fx.GraphModule, model: nn.Module) -> None:
        super().__init__(gm)
        self.L = Labels()
        self.modules = dict(gm.named_modules())
        state = model.state_dict()
        self.state = state
        # tied tensors (one parameter under two names) move as one
        first: dict[tuple, str] = {}
        self.alias = {k: first.setdefault((v.data_ptr(), tuple(v.shape), v.dtype), k) for k, v in state.items()
                      if v.numel()}
        self.lab: dict[str, object] = {}
        self.axes: dict[tuple[str, int], torch.Tensor] = {}  # (key, axis) -> labels, in first-attach order
        self.param_vars: dict[str, torch.Tensor] = {}  # key -> one variable per element (read elementwise)
        self.sources: list[np.ndarray] = []  # the units each layer made
        self.reads: list[_Read] = []
        self.notes: list[str] = []
        self.node: fx.Node | None = None

    # -- interpretation ---------------------------------------------------------------------------
    def run_node(self, n: fx.Node):
        value = super().run_node(n)
        self.node = n
        try:
            self.lab[n.name] = self.rule(n, value)
        except SpecError:
            raise
        except Exception as e:  # noqa: BLE001 - a rule that cannot follow an op pins what it reads
            self.pin_inputs(n, f"{self.where(n)} ({type(e).__name__}: {str(e).splitlines()[0][:80]})")
            self.lab[n.name] = self.none_like(value)
        for done in self.user_to_last_uses.get(n, ()):  # labels no later node reads (as the interpreter frees values)
            self.lab.pop(done.name, None)
        return value

    def where(self, n: fx.Node) -> str:
        if n.op == "call_module":
            return f"{n.target} ({type(self.modules[n.target]).__name__})"
        name = getattr(n.target, "__name__", str(n.target))
        return f"{name} at {n.name}"

    def value_of(self, a: fx.Node):
        return self.env[a]

    def labels_of(self, a: fx.Node):
        """The labels of node `a`'s value, tensors materialised (a parameter becomes its variables)."""
        v = self.env[a]
        lab = self.lab.get(a.name)
        if isinstance(v, torch.Tensor):
            return self.mat(lab, v)
        if isinstance(v, (tuple, list)) and any(isinstance(x, torch.Tensor) for x in v):
            labs = lab if isinstance(lab, (tuple, list)) else [None] * len(v)
            return type(v)(self.mat(l, x) if isinstance(x, torch.Tensor) else x for l, x in zip(labs, v))
        return v

    def mat(self, lab, value: torch.Tensor) -> torch.Tensor:
        if isinstance(lab, ParamRef):
            return self.vars_of(lab.key).permute(lab.dims) if lab.dims else self.vars_of(lab.key)
        if isinstance(lab, torch.Tensor) and tuple(lab.shape) == tuple(value.shape):
            return lab
        return torch.zeros(value.shape, dtype=torch.long)

    def none_like(self, value):
        if isinstance(value, torch.Tensor):
            return torch.zeros(value.shape, dtype=torch.long)
        if isinstance(value, (tuple, list)):
            return type(value)(self.none_like(v) for v in value)
        return None

    def vars_of(self, key: str) -> torch.Tensor:
        key = self.alias.get(key, key)
        if key not in self.param_vars:
            t = self.state[key]
            self.param_vars[key] = torch.from_numpy(self.L.new(t.numel(), VAR)).view(t.shape)
        return self.param_vars[key]

    def fresh(self, n: int) -> torch.Tensor:
        ids = self.L.new(n, UNIT)
        self.sources.append(ids)
        return torch.from_numpy(ids)

    def tensor_inputs(self, n: fx.Node) -> list[torch.Tensor]:
        out = []
        for a in n.all_input_nodes:
            lab = self.labels_of(a)
            for t in (lab if isinstance(lab, (tuple, list)) else [lab]):
                if isinstance(t, torch.Tensor) and t.dtype == torch.long and isinstance(self.env[a], (torch.Tensor,
                                                                                                      tuple, list)):
                    out.append(t)
        return out

    def pin(self, t: torch.Tensor) -> None:
        if t.numel():
            self.L.unify(t, torch.zeros_like(t))

    def pin_inputs(self, n: fx.Node, note: str | None) -> None:
        for t in self.tensor_inputs(n):
            self.pin(t)
        if note:
            self.notes.append(note)

    # -- dispatch ---------------------------------------------------------------------------------
    def rule(self, n: fx.Node, value):
        if n.op == "placeholder":
            return self.none_like(value)
        if n.op == "get_attr":
            if n.target in self.state and isinstance(value, torch.Tensor):
                return ParamRef(n.target, tuple(range(value.dim())))
            if isinstance(value, torch.Tensor) and value.numel() and bool((value == value.reshape(-1)[0]).all()):
                return torch.from_numpy(self.L.new(value.numel(), VAR)).view(value.shape)  # zeros: no position
            return self.none_like(value)
        if n.op == "output":
            for t in self.tensor_inputs(n):
                self.pin(t)
            return None
        if n.op == "call_module":
            return self.module_rule(n, self.modules[n.target], value)
        return self.op_rule(n, value)

    def args_of(self, n: fx.Node) -> tuple[tuple, dict]:
        return fx.node.map_arg(n.args, self.value_of), fx.node.map_arg(n.kwargs, self.value_of)

    def input_labels(self, n: fx.Node, i: int = 0, name: str | None = None) -> torch.Tensor:
        a = n.args[i] if len(n.args) > i else n.kwargs.get(name)
        return self.labels_of(a)

    def input_node(self, n: fx.Node, i: int = 0, name: str | None = None) -> fx.Node:
        return n.args[i] if len(n.args) > i else n.kwargs.get(name)

    def module_rule(self, n: fx.Node, m: nn.Module, value):
        name = str(n.target)
        if isinstance(m, nn.Linear):
            return self.linear(n, name, m, value)
        if isinstance(m, CONVS):
            return self.conv(n, name, m, value)
        if isinstance(m, CONV_TRANSPOSES):
            return self.conv_transpose(n, name, m, value)
        if isinstance(m, CHANNEL_NORMS):
            return self.channel_norm(n, name, m)
        if isinstance(m, nn.GroupNorm):
            return self.group_norm(n, name, m)
        if isinstance(m, (nn.LayerNorm, *RMS_NORMS)):
            return self.layer_norm(n, name, m)
        if isinstance(m, nn.Embedding):
            return self.embedding(n, name, m, value)
        if isinstance(m, nn.PReLU):
            x = self.input_labels(n)
            if m.num_parameters > 1:
                self.attach(f"{name}.weight", 0, self.axis_vector(x, 1))
            return x
        if isinstance(m, POINTWISE_MODULES):
            return self.input_labels(n)
        if isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
            x = self.input_labels(n)
            return self.normalize(x, _dims(m.dim if m.dim is not None else -1, x.dim()))
        if isinstance(m, nn.Flatten):
            return torch.flatten(self.input_labels(n), m.start_dim, m.end_dim)
        if isinstance(m, nn.Unflatten):
            return self.input_labels(n).unflatten(m.dim, m.unflattened_size)
        if isinstance(m, SPATIAL_MODULES):
            return self.spatial(self.input_labels(n), value)
        if isinstance(m, nn.MultiheadAttention):
            return self.multihead_attention(n, name, m, value)
        if type(m) in RNNS:
            return self.rnn(n, name, m, value)
        self.pin_inputs(n, f"{name} ({type(m).__name__}: no rule for this layer)")
        return self.none_like(value)

    def op_rule(self, n: fx.Node, value):
        fn, method = n.target, n.op == "call_method"
        if not method and fn is getattr:
            attr = n.args[1]
            if attr in METADATA_ATTRS or not isinstance(value, torch.Tensor):
                return None
            ref = self.lab.get(n.args[0].name)
            if isinstance(ref, ParamRef) and attr in ("T", "mT") and len(ref.dims) >= 2:
                dims = ref.dims[::-1] if attr == "T" else (*ref.dims[:-2], ref.dims[-1], ref.dims[-2])
                return ParamRef(ref.key, dims)
            return self.replay(n, value)  # .T, .mT of activations
        if method and fn in METADATA or (not isinstance(value, (torch.Tensor, tuple, list))):
            return None
        if isinstance(value, (tuple, list)) and not any(isinstance(v, torch.Tensor) for v in value):
            return None
        if (fn in WILDCARD_METHODS) if method else (fn in WILDCARDS):
            return torch.from_numpy(self.L.new(value.numel(), VAR)).view(value.shape)
        if method and fn in ("transpose", "permute", "t", "mT", "T") or (not method and fn in (torch.transpose,
                                                                                               torch.t,
                                                                                               torch.permute)):
            ref = self.lab.get(n.args[0].name)
            if isinstance(ref, ParamRef):  # a transposed weight stays a weight
                order = self.replay_dims(n, ref)
                if order is not None:
                    return ParamRef(ref.key, order)
        if method and fn in SAME_METHODS:
            return self.input_labels(n)
        if (fn in POINTWISE_METHODS) if method else (fn in POINTWISE):
            tensors = [a for a in n.all_input_nodes if isinstance(self.env[a], torch.Tensor)]
            if len(tensors) <= 1:
                return self.input_labels(n)
            return self.elementwise(n, value)
        if (fn in ELEMENTWISE_METHODS) if method else (fn in ELEMENTWISE):
            return self.elementwise(n, value)
        if (fn in SHAPE_METHODS) if method else (fn in SHAPE):
            if not method and fn is operator.getitem and isinstance(self.env[n.args[0]], (tuple, list)):
                lab = self.lab.get(n.args[0].name)
                return lab[n.args[1]] if isinstance(lab, (tuple, list)) else self.none_like(value)
            return self.replay(n, value)
        if (fn in REDUCE_METHODS) if method else (fn in REDUCE):
            return self.reduction(n, value)
        if (fn in ALONG_METHODS) if method else (fn in ALONG):
            x = self.input_labels(n)
            dim = self.value_or(_kw(n.args, n.kwargs, 1, "dim"))
            dim = -1 if dim is None else dim
            if fn in ("cumsum", "cumprod", torch.cumsum, torch.cumprod):
                return self.cumulative(x, dim)
            return self.normalize(x, _dims(dim, x.dim()))
        if not method and fn in MATMUL:
            return self.matmul_node(n, value)
        if not method and fn is F.linear:
            return self.functional_linear(n, value)
        if not method and fn in (F.conv1d, F.conv2d, F.conv3d):
            return self.functional_conv(n, value)
        if not method and fn is F.layer_norm:
            return self.functional_layer_norm(n)
        if not method and fn is F.group_norm:
            return self.functional_group_norm(n)
        if not method and fn is F.batch_norm:
            return self.functional_batch_norm(n)
        if not method and fn is F.embedding:
            return self.functional_embedding(n, value)
        if not method and fn is F.scaled_dot_product_attention:
            return self.sdpa(n, value)
        if not method and fn in SPATIAL:
            out = self.spatial(self.input_labels(n), value if isinstance(value, torch.Tensor) else value[0])
            return (out, out) if isinstance(value, tuple) else out
        if not method and fn is F.pad:
            return self.pad(n, value)
        if not method and fn is F.glu:
            return self.glu(n, value)
        if (not method and fn in (torch.argmax, torch.argmin)) or (method and fn in ("argmax", "argmin")):
            return self.arg_reduction(n, value)
        if not method and fn in (torch.arange, torch.randn, torch.rand, torch.linspace, torch.eye, torch.tensor,
                                 torch.as_tensor, torch.randint, torch.randperm):
            return self.none_like(value)
        self.pin_inputs(n, f"{self.where(n)}: no rule for this operation")
        return self.none_like(value)

    def value_or(self, x):
        return self.env[x] if isinstance(x, fx.Node) else x

    # -- label plumbing ---------------------------------------------------------------------------
    def attach(self, key: str, axis: int, vec: torch.Tensor) -> None:
        """State axis (key, axis) carries `vec`; attached twice (a module called again), both must agree."""
        key = self.alias.get(key, key)
        if key not in self.state:
            return
        axis %= max(self.state[key].dim(), 1)
        vec = vec.reshape(-1)
        old = self.axes.get((key, axis))
        self.axes[(key, axis)] = vec.clone() if old is None else self.L.unify(old, vec)

    def attached(self, key: str, axis: int) -> torch.Tensor | None:
        key = self.alias.get(key, key)
        if key in self.state:
            return self.axes.get((key, axis % max(self.state[key].dim(), 1)))
        return None

    def collapse(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """Unify every slice of `t` along `dim` with the first; returns that slice (dim removed)."""
        t = t.movedim(dim, 0)
        if t.shape[0] > 1:
            first = t[:1].expand_as(t)
            self.L.unify(t[1:].reshape(-1), first[1:].reshape(-1))
        return t[0]

    def axis_vector(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """The labels along axis `dim` of `t`, unified across every other position (a layer applies the same
        weights at every position, so each of its inputs carries the same unit at every position)."""
        dim %= t.dim()
        rows = t.movedim(dim, -1).reshape(-1, t.shape[dim])
        if rows.shape[0] > 1:
            uniq = torch.unique(torch.from_numpy(self.L.find(rows.numpy())).view(rows.shape), dim=0)
            if uniq.shape[0] > 1:
                self.L.unify(uniq[1:].reshape(-1), uniq[:1].expand(uniq.shape[0] - 1, -1).reshape(-1))
        return rows[0] if rows.shape[0] else torch.zeros(t.shape[dim], dtype=torch.long)

    def varies(self, roots: torch.Tensor, dim: int) -> bool:
        return roots.shape[dim] > 1 and not bool((roots == roots.narrow(dim, 0, 1)).all())

    def rows_to_labels(self, rows: torch.Tensor) -> torch.Tensor:
        """One label per row: the row's label where constant, else the block of its set."""
        if rows.shape[1] == 0:
            return torch.zeros(rows.shape[0], dtype=torch.long)
        roots = torch.from_numpy(self.L.find(rows.reshape(-1).numpy())).view(rows.shape)
        uniq, inverse = torch.unique(roots, dim=0, return_inverse=True)
        labels = torch.tensor([self.L.block_of(r.numpy()) for r in uniq], dtype=torch.long)
        return labels[inverse]

    def normalize(self, x: torch.Tensor, dims: list[int]) -> torch.Tensor:
        """An op over `dims` that treats their positions alike (a norm, a softmax): they form a block."""
        keep = [d for d in range(x.dim()) if d not in dims]
        rows = x.permute(*keep, *dims).reshape(-1, math.prod(x.shape[d] for d in dims) if dims else 1)
        self.rows_to_labels(rows)
        return x

    def cumulative(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """cumsum-like ops follow position order along `dim`: it must carry no units."""
        if self.varies(self.L.roots(x), dim % x.dim()):
            self.pin(x)
            self.notes.append(f"{self.where(self.node)}: a running sum over units")
        return x

    def spatial(self, x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Pooling, upsampling and padding act on dims 2.. alike for every channel: axis 1 passes on."""
        return _along(self.axis_vector(x, 1), 1, value.shape)

    def join(self, operands: list[tuple[torch.Tensor, tuple[int, ...]]], shape: tuple[int, ...]) -> torch.Tensor:
        """Labels of an elementwise op's output from its operands' labels (and their own shapes, before
        broadcasting). An operand broadcast along dims where another operand's labels vary is a constant for
        those units: where it carries no unit of its own it is pinned (it must not move) and left out."""
        shape = tuple(shape)
        full = [torch.broadcast_to(t, shape) for t, _ in operands]
        roots = [self.L.roots(f) for f in full]
        varying = [{d for d in range(len(shape)) if self.varies(r, d)} for r in roots]
        kept = []
        for i, (t, own) in enumerate(operands):
            own = (1,) * (len(shape) - len(own)) + tuple(own)
            broadcast = {d for d in range(len(shape)) if own[d] == 1 and shape[d] > 1}
            others = set().union(*[v for j, v in enumerate(varying) if j != i]) if len(varying) > 1 else set()
            if broadcast & others and bool(np.isin(self.L.kind[roots[i].reshape(-1).numpy()], (NONE, VAR)).all()):
                self.pin(t)
                continue
            kept.append(full[i])
        if not kept:
            return torch.zeros(shape, dtype=torch.long)
        out = kept[0]
        for other in kept[1:]:
            out = self.L.unify(out.contiguous(), other.contiguous())
        return out

    def elementwise(self, n: fx.Node, value) -> torch.Tensor:
        operands = []
        for a in n.all_input_nodes:
            v = self.env[a]
            if isinstance(v, torch.Tensor):
                operands.append((self.labels_of(a), tuple(v.shape)))
        if not isinstance(value, torch.Tensor):
            return None
        if not operands:
            return self.none_like(value)
        return self.join(operands, tuple(value.shape))

    def replay(self, n: fx.Node, value):
        """Run the op itself on the label tensors (shape ops move labels exactly as they move values)."""
        def contiguous(a: fx.Node):  # labels are often expanded views; a view op needs real strides
            lab = self.labels_of(a)
            if isinstance(lab, torch.Tensor):
                return lab.contiguous()
            if isinstance(lab, (tuple, list)):
                return type(lab)(t.contiguous() if isinstance(t, torch.Tensor) else t for t in lab)
            return lab

        args = fx.node.map_arg(n.args, contiguous)
        kwargs = fx.node.map_arg(n.kwargs, contiguous)
        if n.op == "call_method":
            out = getattr(args[0], n.target)(*args[1:], **kwargs)
        else:
            out = n.target(*args, **kwargs)
        return self.check_replayed(out, value)

    def check_replayed(self, out, value):
        if isinstance(value, torch.Tensor):
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(value.shape):
                raise ValueError("replay gave another shape")
            return out.long()
        if isinstance(value, (tuple, list)):
            return type(value)(self.check_replayed(o, v) for o, v in zip(out, value))
        return None

    def replay_dims(self, n: fx.Node, ref: ParamRef) -> tuple[int, ...] | None:
        """The axis order after a transpose/permute of a parameter read directly (None: another op)."""
        args = [self.value_or(a) for a in n.args[1:]]
        fn = n.target if n.op == "call_function" else None
        order = list(range(len(ref.dims)))
        try:
            if fn is torch.t or n.target in ("t", "mT", "T") or (n.target == "transpose" and not args):
                order = order[::-1] if len(order) == 2 else None
                if n.target == "mT" and order is None:
                    order = list(range(len(ref.dims) - 2)) + [len(ref.dims) - 1, len(ref.dims) - 2]
            elif n.target == "transpose" or fn is torch.transpose:
                i, j = (a % len(order) for a in args[:2])
                order[i], order[j] = order[j], order[i]
            elif n.target == "permute" or fn is torch.permute:
                ps = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
                order = [p % len(order) for p in ps]
            else:
                return None
        except Exception:  # noqa: BLE001 - an unusual call: treat the parameter as values
            return None
        return None if order is None else tuple(ref.dims[o] for o in order)

    # -- layers -----------------------------------------------------------------------------------
    def produce(self, weight: str, in_axis: int | None, out_axis: int, vec: torch.Tensor | None, n_out: int,
                bias: str | None = None) -> torch.Tensor:
        """A layer's output units: made on its first call, reused after; its input axis takes `vec`."""
        if in_axis is not None and vec is not None:
            self.attach(weight, in_axis, vec)
        out = self.attached(weight, out_axis)
        if out is None:
            out = self.fresh(n_out)
        self.attach(weight, out_axis, out)
        if bias is not None:
            self.attach(bias, 0, out)
        return self.attached(weight, out_axis)

    def read(self, n: fx.Node, module: str, axis: int, vec: torch.Tensor, arg: int = 0) -> None:
        src = self.input_node(n, arg)
        self.reads.append(_Read(module, arg, axis, vec, src.name if isinstance(src, fx.Node) else module))

    def linear(self, n: fx.Node, name: str, m: nn.Linear, value: torch.Tensor) -> torch.Tensor:
        vec = self.axis_vector(self.input_labels(n), -1)
        self.read(n, name, -1, vec)
        out = self.produce(f"{name}.weight", 1, 0, vec, m.out_features, f"{name}.bias" if m.bias is not None else None)
        self.reads.append(_Read(name, 0, -1, out, n.name, output=True))
        return _along(out, -1, value.shape)

    def conv(self, n: fx.Node, name: str, m: nn.Module, value: torch.Tensor) -> torch.Tensor:
        return self.convolution(n, name, f"{name}.weight", f"{name}.bias" if m.bias is not None else None,
                                m.groups, m.in_channels, m.out_channels, value)

    def convolution(self, n: fx.Node, name: str | None, weight: str, bias: str | None, groups: int, c_in: int,
                    c_out: int, value: torch.Tensor) -> torch.Tensor:
        vec = self.axis_vector(self.input_labels(n), 1)
        if groups == 1:
            if name is not None:
                self.read(n, name, 1, vec)
            out = self.produce(weight, 1, 0, vec, c_out, bias)
            if name is not None:
                self.reads.append(_Read(name, 0, 1, out, n.name, output=True))
        elif groups == c_in:  # depthwise: each output channel reads one input channel
            if name is not None:
                self.read(n, name, 1, vec)
            out = vec.repeat_interleave(c_out // c_in)
            self.attach(weight, 0, out)
            if bias is not None:
                self.attach(bias, 0, out)
        else:  # grouped: a channel's weights are shared by its position in every group
            per = vec.view(groups, c_in // groups)
            for g in range(1, groups):
                self.L.unify(per[g].contiguous(), per[0].contiguous())
            self.attach(weight, 1, per[0])
            out = self.attached(weight, 0)
            if out is None:
                out = torch.cat([self.fresh(c_out // groups) for _ in range(groups)])
            self.attach(weight, 0, out)
            if bias is not None:
                self.attach(bias, 0, out)
            out = self.attached(weight, 0)
        return _along(out, 1, value.shape)

    def conv_transpose(self, n: fx.Node, name: str, m: nn.Module, value: torch.Tensor) -> torch.Tensor:
        vec = self.axis_vector(self.input_labels(n), 1)
        bias = f"{name}.bias" if m.bias is not None else None
        if m.groups == 1:
            self.read(n, name, 1, vec)
            out = self.produce(f"{name}.weight", 0, 1, vec, m.out_channels, bias)
        elif m.groups == m.in_channels:
            self.read(n, name, 1, vec)
            self.attach(f"{name}.weight", 0, vec)
            out = vec.repeat_interleave(m.out_channels // m.in_channels)
            if bias is not None:
                self.attach(bias, 0, out)
        else:
            self.pin(vec)
            self.notes.append(f"{name} ({type(m).__name__} with groups={m.groups})")
            return self.none_like(value)
        return _along(out, 1, value.shape)

    def channel_norm(self, n: fx.Node, name: str, m: nn.Module) -> torch.Tensor:
        x = self.input_labels(n)
        vec = self.axis_vector(x, 1)
        for p in ("weight", "bias", "running_mean", "running_var"):
            if getattr(m, p, None) is not None:
                self.attach(f"{name}.{p}", 0, vec)
        return x

    def group_norm(self, n: fx.Node, name: str, m: nn.GroupNorm) -> torch.Tensor:
        x = self.input_labels(n)
        vec = self.axis_vector(x, 1)
        if m.num_groups != m.num_channels:
            self.rows_to_labels(vec.view(m.num_groups, -1))
        for p in ("weight", "bias"):
            if getattr(m, p, None) is not None:
                self.attach(f"{name}.{p}", 0, vec)
        return x

    def layer_norm(self, n: fx.Node, name: str, m: nn.Module) -> torch.Tensor:
        x = self.input_labels(n)
        k = len(m.normalized_shape)
        self.normalize(x, list(range(x.dim() - k, x.dim())))
        self.norm_params(x, k, [f"{name}.{p}" for p in ("weight", "bias") if getattr(m, p, None) is not None])
        return x

    def norm_params(self, x: torch.Tensor, k: int, keys: list[str]) -> None:
        """A norm's affine parameters (shape: x's last k dims) carry what those positions carry."""
        if k == 1:
            vec = self.axis_vector(x, -1)
            for key in keys:
                self.attach(key, 0, vec)
            return
        lead = x.reshape(-1, *x.shape[x.dim() - k:])
        labels = self.collapse(lead, 0) if lead.shape[0] else lead[0]
        for key in keys:
            self.L.unify(self.vars_of(key).reshape(-1), labels.reshape(-1))

    def embedding(self, n: fx.Node, name: str, m: nn.Embedding, value: torch.Tensor) -> torch.Tensor:
        out = self.produce(f"{name}.weight", None, 1, None, m.embedding_dim)
        self.reads.append(_Read(name, 0, -1, out, n.name, output=True))
        return _along(out, -1, value.shape)

    def pad(self, n: fx.Node, value: torch.Tensor) -> torch.Tensor:
        x = self.input_labels(n)
        pads = self.value_or(_kw(n.args, n.kwargs, 1, "pad"))
        if len(pads) // 2 <= x.dim() - 2:
            return self.spatial(x, value)
        return self.replay(n, value) if self.value_or(_kw(n.args, n.kwargs, 2, "mode", "constant")) == "constant" \
            else self.fail(n, value)

    def glu(self, n: fx.Node, value: torch.Tensor) -> torch.Tensor:
        x = self.input_labels(n)
        dim = self.value_or(_kw(n.args, n.kwargs, 1, "dim", -1))
        a, b = x.chunk(2, dim)
        return self.L.unify(a.contiguous(), b.contiguous())

    def fail(self, n: fx.Node, value):
        self.pin_inputs(n, f"{self.where(n)}: no rule for this use")
        return self.none_like(value)

    # -- functional layers with parameters read directly --------------------------------------------
    def param_arg(self, n: fx.Node, i: int, name: str) -> ParamRef | None:
        a = self.input_node(n, i, name)
        lab = self.lab.get(a.name) if isinstance(a, fx.Node) else None
        return lab if isinstance(lab, ParamRef) else None

    def functional_linear(self, n: fx.Node, value: torch.Tensor) -> torch.Tensor:
        w, b = self.param_arg(n, 1, "weight"), self.param_arg(n, 2, "bias")
        if w is None or len(w.dims) != 2:
            return self.fail(n, value)
        vec = self.axis_vector(self.input_labels(n), -1)
        out = self.produce(w.key, w.dims[1], w.dims[0], vec, value.shape[-1], b.key if b is not None else None)
        return _along(out, -1, value.shape)

    def functional_conv(self, n: fx.Node, value: torch.Tensor) -> torch.Tensor:
        w, b = self.param_arg(n, 1, "weight"), self.param_arg(n, 2, "bias")
        if w is None or w.dims != tuple(range(len(w.dims))):
            return self.fail(n, value)
        groups = self.value_or(_kw(n.args, n.kwargs, 6, "groups", 1))
        c_in = self.env[self.input_node(n)].shape[1]
        return self.convolution(n, None, w.key, b.key if b is not None else None, groups, c_in, value.shape[1], value)

    def functional_layer_norm(self, n: fx.Node) -> torch.Tensor:
        x = self.input_labels(n)
        k = len(self.value_or(_kw(n.args, n.kwargs, 1, "normalized_shape")))
        self.normalize(x, list(range(x.dim() - k, x.dim())))
        keys = [p.key for p in (self.param_arg(n, 2, "weight"), self.param_arg(n, 3, "bias")) if p is not None]
        self.norm_params(x, k, keys)
        return x

    def functional_group_norm(self, n: fx.Node) -> torch.Tensor:
        x = self.input_labels(n)
        groups = self.value_or(_kw(n.args, n.kwargs, 1, "num_groups"))
        vec = self.axis_vector(x, 1)
        if groups != len(vec):
            self.rows_to_labels(vec.view(groups, -1))
        for p in (self.param_arg(n, 2, "weight"), self.param_arg(n, 3, "bias")):
            if p is not None:
                self.attach(p.key, 0, vec)
        return x

    def functional_batch_norm(self, n: fx.Node) -> torch.Tensor:
        x = self.input_labels(n)
        vec = self.axis_vector(x, 1)
        for i, name in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")):
            p = self.param_arg(n, i, name)
            if p is not None:
                self.attach(p.key, 0, vec)
        return x

    def functional_embedding(self, n: fx.Node, value: torch.Tensor) -> torch.Tensor:
        w = self.param_arg(n, 1, "weight")
        if w is None or w.dims != (0, 1):
            return self.fail(n, value)
        return _along(self.produce(w.key, None, 1, None, value.shape[-1]), -1, value.shape)

    # -- products and attention -------------------------------------------------------------------
    def matmul_node(self, n: fx.Node, value: torch.Tensor) -> torch.Tensor:
        a, b = n.args[0], n.args[1]
        la, lb = self.lab.get(a.name), self.lab.get(b.name)
        if isinstance(lb, ParamRef) and not isinstance(la, ParamRef) and len(lb.dims) == 2:
            vec = self.axis_vector(self.labels_of(a), -1)
            return _along(self.produce(lb.key, lb.dims[0], lb.dims[1], vec, value.shape[-1]), -1, value.shape)
        if isinstance(la, ParamRef) and not isinstance(lb, ParamRef) and len(la.dims) == 2 and self.env[b].dim() >= 2:
            vec = self.axis_vector(self.labels_of(b), -2)
            return _along(self.produce(la.key, la.dims[1], la.dims[0], vec, value.shape[-2]), -2, value.shape)
        return self.matmul(self.labels_of(a), self.labels_of(b), tuple(value.shape))

    def matmul(self, a: torch.Tensor, b: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Labels of a @ b. Summing over positions that carry units needs both sides to carry the same unit at
        each position, and the result moves with the set (a block: one head of q @ kᵀ); summing over positions
        that carry none, the result moves with what a's rows and b's columns carry (scores @ v)."""
        va, vb = a.dim() == 1, b.dim() == 1
        a = a[None] if va else a
        b = b[:, None] if vb else b
        batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        a = a.expand(*batch, *a.shape[-2:])
        b = b.expand(*batch, *b.shape[-2:])
        ra, rb = self.L.roots(a), self.L.roots(b)
        if self.varies(ra, -1) or self.varies(rb, -2):
            cols = self.collapse(a, -2)  # [*batch, k]
            rows = self.collapse(b, -1)
            self.L.unify(cols.contiguous(), rows.contiguous())
            blocks = self.rows_to_labels(cols.reshape(-1, cols.shape[-1])).view(*batch, 1, 1)
            out = blocks.expand(*batch, a.shape[-2], b.shape[-1])
        else:
            alpha, beta = a[..., :, :1], b[..., :1, :]
            out = self.join([(alpha, tuple(alpha.shape)), (beta, tuple(beta.shape))],
                            (*batch, a.shape[-2], b.shape[-1]))
        if va:
            out = out.squeeze(-2)
        if vb:
            out = out.squeeze(-1)
        return out.reshape(shape)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                  mask_shape: tuple[int, ...] | None) -> torch.Tensor:
        """softmax(q @ kᵀ + mask) @ v on labels [..., heads, tokens, dims]."""
        scores = self.matmul(q, k.transpose(-1, -2), (*torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]),
                                                       q.shape[-2], k.shape[-2]))
        if mask is not None:
            scores = self.join([(scores, tuple(scores.shape)), (mask, mask_shape)], tuple(scores.shape))
        return self.matmul(scores, v, (*torch.broadcast_shapes(scores.shape[:-2], v.shape[:-2]),
                                       scores.shape[-2], v.shape[-1]))

    def sdpa(self, n: fx.Node, value: torch.Tensor) -> torch.Tensor:
        q, k, v = (self.input_labels(n, i, name) for i, name in enumerate(("query", "key", "value")))
        mask_node = self.input_node(n, 3, "attn_mask")
        mask = self.labels_of(mask_node) if isinstance(mask_node, fx.Node) else None
        mask_shape = tuple(self.env[mask_node].shape) if mask is not None else None
        if self.value_or(n.kwargs.get("enable_gqa", False)) and k.shape[-3] != q.shape[-3]:
            rep = q.shape[-3] // k.shape[-3]
            k, v = k.repeat_interleave(rep, -3), v.repeat_interleave(rep, -3)
        return self.attention(q, k, v, mask, mask_shape).reshape(value.shape)

    def multihead_attention(self, n: fx.Node, name: str, m: nn.MultiheadAttention, value) -> tuple:
        q, k, v = (self.input_labels(n, i, nm) for i, nm in enumerate(("query", "key", "value")))
        vq, vk, vv = (self.axis_vector(t, -1) for t in (q, k, v))
        self.read(n, name, -1, vq)
        E, H = m.embed_dim, m.num_heads
        bias = f"{name}.in_proj_bias" if m.in_proj_bias is not None else None
        if m._qkv_same_embed_dim:
            w = f"{name}.in_proj_weight"
            for vec in (vq, vk, vv):
                self.attach(w, 1, vec)
            rows = self.attached(w, 0)
            if rows is None:
                rows = torch.cat([self.fresh(E) for _ in range(3)])
            self.attach(w, 0, rows)
            if bias is not None:
                self.attach(bias, 0, rows)
            rows = self.attached(w, 0)
        else:
            parts = [self.produce(f"{name}.{p}_proj_weight", 1, 0, vec, E)
                     for p, vec in zip("qkv", (vq, vk, vv))]
            rows = torch.cat(parts)
            if bias is not None:
                self.attach(bias, 0, rows)
        qr, kr, vr = rows[:E], rows[E : 2 * E], rows[2 * E :]
        if m.bias_k is not None:
            self.L.unify(self.vars_of(f"{name}.bias_k").reshape(-1), kr)
            self.L.unify(self.vars_of(f"{name}.bias_v").reshape(-1), vr)
        heads = [t.view(H, 1, E // H) for t in (qr, kr, vr)]
        out = self.attention(*heads, None, None)  # [H, 1, hd]
        mask_node = self.input_node(n, 4, "attn_mask")
        if isinstance(mask_node, fx.Node) and self.env[mask_node] is not None and self.env[mask_node].dim() == 3:
            self.notes.append(f"{name}: a per-head attention mask keeps heads in place")
            self.pin(out)
        o = self.produce(f"{name}.out_proj.weight", 1, 0, out.reshape(E), E,
                         f"{name}.out_proj.bias" if m.out_proj.bias is not None else None)
        result = _along(o, -1, value[0].shape)
        weights = value[1]
        if weights is None:
            return (result, None)
        if weights.dim() == q.dim() + 1 and weights.shape[-3] == H:  # per head: [.., H, T, S]
            blocks = self.matmul(heads[0], heads[1].transpose(-1, -2), (H, 1, 1)).view(H)
            return (result, _along(blocks, -3, weights.shape))
        self.L.block_of(self.matmul(heads[0], heads[1].transpose(-1, -2), (H, 1, 1)).reshape(-1).numpy())
        return (result, torch.zeros(weights.shape, dtype=torch.long))

    def rnn(self, n: fx.Node, name: str, m: nn.Module, value) -> tuple:
        gates = RNNS[type(m)]
        x = self.input_labels(n)
        layer_in = self.axis_vector(x, -1)
        self.read(n, name, -1, layer_in)
        H, P = m.hidden_size, getattr(m, "proj_size", 0) or 0
        hs, cs = [], []
        for layer in range(m.num_layers):
            outs = []
            for d in range(2 if m.bidirectional else 1):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                stored = self.attached(f"{name}.weight_hh{sfx}", 0)
                cell = stored[:H] if stored is not None else self.fresh(H)
                hid = cell
                if P:
                    hid = self.attached(f"{name}.weight_hr{sfx}", 0)
                    hid = hid if hid is not None else self.fresh(P)
                    self.attach(f"{name}.weight_hr{sfx}", 0, hid)
                    self.attach(f"{name}.weight_hr{sfx}", 1, cell)
                self.attach(f"{name}.weight_ih{sfx}", 1, layer_in)
                tiled = cell.repeat(gates)
                for key in (f"weight_ih{sfx}", f"weight_hh{sfx}", f"bias_ih{sfx}", f"bias_hh{sfx}"):
                    self.attach(f"{name}.{key}", 0, tiled)
                self.attach(f"{name}.weight_hh{sfx}", 1, hid)
                outs.append(hid)
                hs.append(hid)
                cs.append(cell)
            layer_in = torch.cat(outs)
        self.reads.append(_Read(name, 0, -1, layer_in, n.name, output=True))
        out = _along(layer_in, -1, value[0].shape)
        h_n = torch.stack(hs)  # [layers * directions, H_out]
        states = value[1]
        h_val = states[0] if isinstance(states, tuple) else states
        h_lab = h_n.view(h_n.shape[0], *[1] * (h_val.dim() - 2), h_n.shape[1]).expand(h_val.shape)
        hx = self.input_node(n, 1, "hx")
        if isinstance(states, tuple):
            c_n = torch.stack(cs)
            c_lab = c_n.view(c_n.shape[0], *[1] * (states[1].dim() - 2), c_n.shape[1]).expand(states[1].shape)
            if isinstance(hx, fx.Node):
                h0, c0 = self.labels_of(hx)
                self.L.unify(h0.reshape(-1), h_lab.reshape(-1))
                self.L.unify(c0.reshape(-1), c_lab.reshape(-1))
            return (out, (h_lab, c_lab))
        if isinstance(hx, fx.Node):
            self.L.unify(self.labels_of(hx).reshape(-1), h_lab.reshape(-1))
        return (out, h_lab)

    # -- reductions -------------------------------------------------------------------------------
    def reduction(self, n: fx.Node, value):
        x = self.input_labels(n)
        dim = self.value_or(_kw(n.args, n.kwargs, 1, "dim"))
        fn = n.target
        if fn in ("norm", torch.norm) and not isinstance(dim, (int, tuple, list)):
            dim = self.value_or(_kw(n.args, n.kwargs, 2, "dim"))
        if isinstance(dim, (str, float)) or (dim is not None and not isinstance(dim, (int, tuple, list))):
            dim = None
        keepdim = bool(self.value_or(n.kwargs.get("keepdim", False)))
        if fn in ("mean", "sum", "amax", "amin", "nansum", "nanmean", torch.mean, torch.sum, torch.amax, torch.amin,
                  torch.nansum, torch.nanmean, "logsumexp", torch.logsumexp) and len(n.args) > 2:
            keepdim = bool(self.value_or(n.args[2]))
        dims = _dims(dim, x.dim()) if x.dim() else []
        keep = [d for d in range(x.dim()) if d not in dims]
        rows = x.permute(*keep, *dims).reshape(-1, math.prod(x.shape[d] for d in dims) if dims else 1)
        out = self.rows_to_labels(rows).view([x.shape[d] for d in keep])
        if keepdim:
            for d in dims:
                out = out.unsqueeze(d)
        if isinstance(value, tuple):  # max/min/median with dim: (values, indices)
            return (out.reshape(value[0].shape), self.arg_labels(rows, out).reshape(value[1].shape))
        if not isinstance(value, torch.Tensor):
            return None
        return out.reshape(value.shape)

    def arg_labels(self, rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Where a maximum lies: positional among units (pin them), the label itself along a constant axis."""
        roots = self.L.roots(rows)
        constant = (roots == roots[:, :1]).all(1)
        if not bool(constant.all()):
            self.pin(rows[~constant])
            self.notes.append(f"{self.where(self.node)}: the position of a maximum over units")
        return torch.where(constant.view(out.reshape(-1).shape), out.reshape(-1), 0).view(out.shape)

    def arg_reduction(self, n: fx.Node, value) -> torch.Tensor:
        x = self.input_labels(n)
        dim = self.value_or(_kw(n.args, n.kwargs, 1, "dim"))
        dims = _dims(dim, x.dim())
        keep = [d for d in range(x.dim()) if d not in dims]
        rows = x.permute(*keep, *dims).reshape(-1, math.prod(x.shape[d] for d in dims))
        out = self.rows_to_labels(rows)
        return self.arg_labels(rows, out).reshape(value.shape)

    # -- the result -------------------------------------------------------------------------------
    def spec(self) -> PermutationSpec:
        return _Assembly(self).spec()


class _Assembly:
    """From the labels of one interpreted pass to a PermutationSpec (groups, layouts, blocks, sites)."""

    def __init__(self, d: Derivation) -> None:
        self.d, self.L = d, d.L
        self.notes = list(dict.fromkeys(d.notes))

    def factor_parameters(self) -> None:
        """A parameter read elementwise carries units along one axis: the axis whose slices hold the fewest
        distinct labels; every slice is then one label."""
        for key, var in self.d.param_vars.items():
            roots = self.L.roots(var)
            kinds = self.L.kind[roots.reshape(-1).numpy()]
            if not np.isin(kinds, (NONE, UNIT, BLOCK)).any() or (kinds == NONE).all():
                continue
            candidates = [k for k in range(var.dim()) if var.shape[k] > 1] or [max(var.dim() - 1, 0)]
            if var.dim() == 0:
                continue

            def score(k: int) -> int:
                rows = roots.movedim(k, 0).reshape(var.shape[k], -1)
                return sum(len(torch.unique(r)) for r in rows)

            axis = min(reversed(candidates), key=score)
            rows = var.movedim(axis, 0).reshape(var.shape[axis], -1)
            if rows.shape[1] > 1:
                self.L.unify(rows[:, 1:].reshape(-1), rows[:, :1].expand(-1, rows.shape[1] - 1).reshape(-1))
            self.d.attach(key, axis, rows[:, 0])

    def spec(self) -> PermutationSpec:
        self.factor_parameters()
        L = self.L
        axes = {ka: L.find(v.numpy()) for ka, v in self.d.axes.items()}
        for (key, axis), r in axes.items():  # an axis carrying blocks (a per-head parameter) pins them
            blocks = r[(L.kind[r] == BLOCK) & (r != NONE)]
            for b in np.unique(blocks):
                L.join(NONE, int(b))
                self.notes.append(f"{key} (a parameter per block of units, e.g. per head)")
        axes = {ka: L.find(v.numpy()) for ka, v in self.d.axes.items()}
        groups = self.groups(axes)
        blocked, families = self.blocks(groups)
        return self.assemble(axes, groups, blocked, families)

    # units -> groups -------------------------------------------------------------------------------
    def groups(self, axes: dict) -> list[list[int]]:
        """Units (class roots) that one layer made, with the same role, in first-seen order per group."""
        L = self.L
        sources = [L.find(s) for s in self.d.sources]
        owner: dict[int, int] = {}  # class root -> group-level union-find parent (over class roots)

        def find(c: int) -> int:
            while owner[c] != c:
                owner[c] = owner[owner[c]]
                c = owner[c]
            return c

        first: dict[int, tuple[int, int]] = {}
        counts: dict[int, dict[int, int]] = {}
        for si, s in enumerate(sources):
            live = [int(c) for c in s if c != NONE and L.kind[c] == UNIT]
            for pos, c in enumerate(live):
                owner.setdefault(c, c)
                first.setdefault(c, (si, pos))
                counts.setdefault(c, {})
                counts[c][si] = counts[c].get(si, 0) + 1
            for c in live[1:]:
                a, b = find(live[0]), find(c)
                if a != b:
                    owner[b] = a
        # block memberships of each class (blocks with the same members are one): the units a block was made
        # of, and the units of other groups that met it elementwise (a head's value dims); a unit of the
        # block's own group outside the set it was made of marks that group as telling the set apart
        self.block_members: dict[int, set[int]] = {}
        pinned: set[int] = set()  # blocks held in place (they joined NONE): keyed by their own label

        def block_key(b: int) -> int:
            r = L.root(b)
            if r == NONE:
                pinned.add(b)
                return b
            return r

        for u, b in L.members:
            u, b = L.root(u), block_key(b)
            if u != NONE and L.kind[u] == UNIT:
                self.block_members.setdefault(b, set()).add(u)
        apart: set[int] = set()
        made = {b: frozenset(mem) for b, mem in self.block_members.items()}
        for u, b in L.attached:
            u, b = L.root(u), block_key(b)
            if u == NONE or L.kind[u] != UNIT or u not in owner:
                continue
            made_of = made.get(b, frozenset())
            if u in made_of:
                continue
            role = lambda c: (find(c), tuple(sorted(counts[c].items())))  # noqa: E731 - a layer's units, one role
            if role(u) in {role(d) for d in made_of if d in owner}:
                apart.add(find(u))
            else:
                self.block_members.setdefault(b, set()).add(u)
        if apart:
            self.notes.append("units combined with a reduction over only some of their group")
        self.class_blocks: dict[int, set[int]] = {}
        canon: dict[frozenset, int] = {}
        for b, mem in self.block_members.items():
            rep = canon.setdefault(frozenset(mem), b)
            for u in mem:
                self.class_blocks.setdefault(u, set()).add(rep)
        self.pinned_blocks = {canon[frozenset(mem)] for b, mem in self.block_members.items() if b in pinned}
        comps: dict[int, list[int]] = {}
        for c in sorted(owner, key=lambda c: first[c]):
            if find(c) not in apart:
                comps.setdefault(find(c), []).append(c)
        out = []
        for members in comps.values():
            block_size = {c: tuple(sorted(len(self.block_members.get(b, ())) for b in self.class_blocks.get(c, ())))
                          for c in members}
            split: dict[tuple, list[int]] = {}
            for c in members:
                split.setdefault((tuple(sorted(counts[c].items())), block_size[c]), []).append(c)
            out.extend(split.values())
        return out

    def blocks(self, groups: list[list[int]]) -> tuple[dict[int, int], list[list[int]]]:
        """Blocked groups (index -> block size) and block families (lists of group indices); groups whose
        blocks do not partition them evenly are emptied (pinned)."""
        proper: dict[int, dict[int, set[int]]] = {}
        blocked: dict[int, int] = {}
        for gi, members in enumerate(groups):
            S = set(members)
            parts: dict[int, set[int]] = {}
            for c in members:
                for b in self.class_blocks.get(c, ()):
                    mem = self.block_members.get(b, set())
                    if not S <= mem:
                        parts.setdefault(b, set()).add(c)
            if not parts:
                continue
            sizes = {len(p) for p in parts.values()}
            covered = sorted(c for p in parts.values() for c in p)
            if len(sizes) != 1 or covered != sorted(members) or len(parts) < 2:
                self.notes.append(f"{len(members)} units mixed in uneven sets by a norm or reduction")
                groups[gi] = []
                continue
            proper[gi] = parts
            blocked[gi] = sizes.pop()
        # families: groups sharing blocks
        fam_of: dict[int, int] = {}
        families: list[list[int]] = []
        for gi, parts in proper.items():
            hits = {fam_of[b] for b in parts if b in fam_of}
            if hits:
                fi = min(hits)
                for other in hits - {fi}:
                    families[fi].extend(families[other])
                    for b, f in list(fam_of.items()):
                        if f == other:
                            fam_of[b] = fi
                    families[other] = []
            else:
                fi = len(families)
                families.append([])
            families[fi].append(gi)
            for b in parts:
                fam_of[b] = fi
        out = []
        for fam in families:
            if not fam:
                continue
            block_ids = [set(proper[g]) for g in fam]
            pinned = any(b in self.pinned_blocks for ids in block_ids for b in ids)
            bad_sets = any(0 < len(s & block_ids[0]) < len(block_ids[0]) for s in self.L.block_sets)
            if pinned or any(ids != block_ids[0] for ids in block_ids) or bad_sets:
                self.notes.append("attention heads (or other blocks) held in place by an op that reads them one "
                                  "by one")
                for g in fam:
                    groups[g] = []
                    blocked.pop(g, None)
                continue
            # canonical order: blocks in first-seen order of the family's first group, units within by first-seen
            order = {}
            for c in groups[fam[0]]:
                b = next(b for b in self.class_blocks[c] if b in proper[fam[0]])
                order.setdefault(b, len(order))
            for g in fam:
                rank = {c: i for i, c in enumerate(groups[g])}
                blk = {c: next(b for b in self.class_blocks[c] if b in proper[g]) for c in groups[g]}
                groups[g] = sorted(groups[g], key=lambda c: (order[blk[c]], rank[c]))
            out.append(fam)
        return blocked, out

    # layouts ---------------------------------------------------------------------------------------
    def assemble(self, axes: dict, groups: list[list[int]], blocked: dict[int, int],
                 families: list[list[int]]) -> PermutationSpec:
        index = {c: (gi, i) for gi, members in enumerate(groups) for i, c in enumerate(members)}
        bad: set[int] = set()
        found: dict[tuple[str, int], dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        for ka, r in axes.items():
            per: dict[int, list[tuple[int, int]]] = {}
            for pos, c in enumerate(r.tolist()):
                if c in index:
                    gi, u = index[c]
                    per.setdefault(gi, []).append((pos, u))
            found[ka] = {}
            for gi, pu in per.items():
                pos = np.array([p for p, _ in pu])
                units = np.array([u for _, u in pu])
                counts = np.bincount(units, minlength=len(groups[gi]))
                if counts.min() != counts.max() or counts.min() == 0:
                    bad.add(gi)
                found[ka][gi] = (pos, units)
        for fam in families:  # a family moves together: one bad member pins them all
            if bad & set(fam):
                bad |= set(fam)
        if bad:
            self.notes.append(f"{len(bad)} group(s) whose units a layer uses unevenly")
        live = [gi for gi in range(len(groups)) if groups[gi] and gi not in bad]
        # group order: the first state axis (in first-attach order) carrying each
        order: list[int] = []
        for ka in axes:
            for gi in sorted(found[ka], key=lambda g: found[ka][g][0][0]):
                if gi in live and gi not in order:
                    order.append(gi)
        name = {gi: f"P{i}" for i, gi in enumerate(order)}
        fam_name = {gi: f"F{fi}" for fi, fam in enumerate(f for f in families if name.get(f[0])) for gi in fam}
        entries: dict[str, list[Axis]] = {name[gi]: [] for gi in order}
        for (key, axis), per in found.items():
            for gi, (pos, units) in sorted(per.items(), key=lambda kv: kv[1][0][0]):
                if gi not in name:
                    continue
                n, block = len(groups[gi]), blocked.get(gi, len(groups[gi]))
                span = _fit(pos, units, n, block)
                alone = sum(g in name for g in per) == 1
                if span.plain() and alone and self.d.state[key].shape[axis] != n:  # a plain entry is the whole axis
                    span = Span(units=tuple(int(u) for u in units[np.argsort(pos)]))
                for k in [key, *(a for a, c in self.d.alias.items() if c == key and a != key)]:
                    entries[name[gi]].append(Axis(k, axis, **span.layout_kwargs()))
        sizes = {name[gi]: len(groups[gi]) for gi in order}
        blocks = {name[gi]: (fam_name[gi], blocked[gi]) for gi in order if gi in blocked}
        consumers = self.sites(index, name, groups, blocked)
        return PermutationSpec({g: tuple(es) for g, es in entries.items()}, sizes,
                               {g: tuple(s) for g, s in consumers.items()}, blocks, tuple(dict.fromkeys(self.notes)))

    def sites(self, index: dict, name: dict, groups: list[list[int]], blocked: dict[int, int]) -> dict[str, list]:
        """Where activation matching reads each group: module inputs (one per tensor read), else the outputs
        of the layers that make it."""
        reads: dict[str, list[Site]] = {}
        outputs: dict[str, list[Site]] = {}
        seen: dict[str, set] = {}
        for rd in self.d.reads:
            r = self.L.find(rd.labels.numpy())
            per: dict[int, list[tuple[int, int]]] = {}
            for pos, c in enumerate(r.tolist()):
                if c in index and index[c][0] in name:
                    per.setdefault(index[c][0], []).append((pos, index[c][1]))
            for gi, pu in per.items():
                g, n = name[gi], len(groups[gi])
                units = np.array([u for _, u in pu])
                counts = np.bincount(units, minlength=n)
                if counts.min() == 0 or counts.min() != counts.max():
                    continue
                span = _fit(np.array([p for p, _ in pu]), units, n, blocked.get(gi, n))
                site = Site(rd.module, axis=rd.axis, output=rd.output, arg=rd.arg, **span.layout_kwargs())
                target = outputs if rd.output else reads
                key = (rd.source, rd.output)
                if key in seen.setdefault(g, set()) or site in target.get(g, []):
                    continue
                if any(s.module == rd.module and s.output == rd.output for s in target.get(g, [])):
                    continue
                seen[g].add(key)
                target.setdefault(g, []).append(site)
        return {g: reads.get(g) or outputs.get(g, []) for g in name.values()}


def _fit(pos: np.ndarray, units: np.ndarray, n: int, block: int) -> Span:
    """The compact layout (offset, tiles, repeat, copies) giving these positions and units, or an explicit one."""
    order = np.argsort(pos, kind="stable")
    pos, units = pos[order], units[order]
    offset, span = int(pos[0]), int(pos[-1] - pos[0] + 1)
    if span == len(pos):
        run = int(np.argmax(units != units[0])) if (units != units[0]).any() else len(units)
        for repeat in sorted({run, 1}, reverse=True):
            if len(units) % repeat or not (units == np.repeat(units[::repeat], repeat)).all():
                continue
            v = units[::repeat]
            for tiles in range(1, len(v) // n + 1):
                if len(v) % (n * tiles):
                    continue
                copies = len(v) // (n * tiles)
                if copies > 1 and block == n:
                    continue
                cand = Span(offset=offset, tiles=tiles, repeat=repeat, copies=copies)
                try:
                    table = cand.table(n, block)
                except SpecError:
                    continue
                expect = np.empty(len(units), np.int64)
                expect[(table - offset).numpy().T.reshape(-1)] = np.repeat(np.arange(n), table.shape[0])
                if (expect == units).all():
                    return cand
    explicit = -np.ones(span, np.int64)
    explicit[pos - offset] = units
    return Span(offset=offset, units=tuple(int(u) for u in explicit))


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


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with the layers dimat has rules for as leaves (MultiheadAttention, RNNs included)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.MultiheadAttention, *RNNS)):
            return True
        return super().is_leaf_module(m, qualname)


class _SizedProxy(fx.Proxy):
    """A proxy that knows its value's real shape (`_ShapeTracer`)."""

    def _value(self):
        return self.tracer.values[self.node]

    @property
    def shape(self):
        return self._value().shape

    @property
    def ndim(self) -> int:
        return self._value().dim()

    def size(self, dim: int | None = None):
        return self._value().size() if dim is None else self._value().size(dim)

    def dim(self) -> int:
        return self._value().dim()

    def __len__(self) -> int:
        return len(self._value())


class _ShapeTracer(_Tracer):
    """A tracer that runs every op on the example as it records it, so questions about sizes get numbers:
    ``for t in range(x.shape[1])`` unrolls and ``if x.dim() == 4`` takes its branch (the graph holds for inputs
    of the example's shape, all the derivation needs). Control flow on values still fails."""

    def __init__(self, example: torch.Tensor) -> None:
        super().__init__()
        self.example = example
        self.values: dict[fx.Node, object] = {}
        self.placeholders = 0

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _SizedProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        self.values[proxy.node] = self.execute(proxy.node)
        return proxy

    def execute(self, node: fx.Node):
        def value(a: fx.Node):  # constants made while tracing are attributes without a proxy
            if a not in self.values:
                self.values[a] = self.execute(a)
            return self.values[a]

        args, kwargs = fx.node.map_arg(node.args, value), fx.node.map_arg(node.kwargs, value)
        if node.op == "placeholder":
            self.placeholders += 1
            if self.placeholders == 1:
                return self.example
            params = list(inspect.signature(self.root.forward).parameters.values())
            default = params[self.placeholders - 1].default if self.placeholders - 1 < len(params) else None
            return None if default is inspect.Parameter.empty else default
        if node.op == "get_attr":  # by the modules' own dicts: the tracer has patched attribute access
            obj = self.root
            for part in str(node.target).split("."):
                found = [d[part] for d in (obj.__dict__, getattr(obj, "_parameters", {}), getattr(obj, "_buffers", {}),
                                          getattr(obj, "_modules", {})) if part in d]
                obj = found[0] if found else object.__getattribute__(obj, part)
            return obj
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "call_module":  # forward, not __call__: the tracer has patched module calls
            return self.root.get_submodule(node.target).forward(*args, **kwargs)
        return None


def trace(model: nn.Module, example: torch.Tensor | None = None) -> fx.GraphModule:
    """The model's fx graph: symbolic tracing, or, where sizes steer its control flow, tracing with the example's
    sizes (`_ShapeTracer`)."""
    try:
        graph = _Tracer().trace(model)
    except Exception:  # noqa: BLE001 - e.g. a loop over x.shape[1]: retry with real sizes
        if example is None:
            raise
        with eval_mode(model), torch.no_grad():
            graph = _ShapeTracer(example).trace(model)
    return fx.GraphModule(model, graph, type(model).__name__)


def derive(model: nn.Module, example: torch.Tensor) -> PermutationSpec:
    """The permutation spec of `model`, from one interpreted pass on (two samples of) `example`."""
    x = example[:2] if isinstance(example, torch.Tensor) and example.dim() > 0 and len(example) > 2 else example
    try:
        gm = trace(model, x)
    except Exception as e:  # noqa: BLE001 - any tracing failure gets the same advice
        raise SpecError(
            f"{type(model).__name__} cannot be traced by torch.fx ({type(e).__name__}: {str(e).splitlines()[0]}): "
            "build a PermutationSpec(groups=..., sizes=..., consumers=...) by hand and check it with check_spec"
        ) from e
    d = Derivation(gm, model)
    with eval_mode(model), torch.no_grad():
        d.run(x)
    return d.spec()
