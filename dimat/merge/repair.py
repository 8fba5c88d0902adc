"""REPAIR (Jordan et al., 2022): give each merged channel the interpolated statistics of the endpoints.

Merging K aligned models with weights w_k shrinks the spread of many hidden
channels (their units are not perfectly matched, so their weights partly
cancel). REPAIR measures every channel's mean and standard deviation in each
endpoint on the same data, interpolates them (Σ_k w_k·mean_k, Σ_k w_k·std_k),
and rescales and shifts the merged model's channel to that target:
y' = a·y + b with a = std*/std_merged, b = mean* − a·mean_merged, folded into
parameters so the merged model keeps its architecture:

- a BatchNorm layer's output, through its affine weight and bias; its running
  statistics are re-estimated on the same data in the same pass (kind "bn");
- a normalisation layer with a per-channel affine (GroupNorm, "ln" included,
  InstanceNorm, BatchNorm without running statistics), through that affine
  (kind "norm");
- a hidden Linear/Conv whose channels reach no norm layer (the permutation
  spec's group of its outputs has none), through its weight and bias:
  W' = a·W, bias' = a·bias + b, exact since a > 0 is applied before the
  activation (kind "layer").

The correction of a channel changes what every later layer sees, so the
points are corrected in forward order on the already-corrected model:
`repair_merged` does it in one forward pass with the data as one batch (each hook
measures its point, folds the correction and passes the corrected output on);
`point_stats` + `pool` + `correct` do the same one point at a time when the
data lies on several hosts (the final global merge: only statistics travel).
Where the structure gives no place to put a correction — a norm without
affine parameters, a hidden layer without a bias, several layers adding into
one norm-free channel (a residual stream without norms) — `repair_points`
refuses with one line.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dimat.merge.spec import PermutationSpec
from dimat.merge.trace import eval_mode

NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
Moments = tuple[float, Tensor, Tensor]  # (count, per-channel mean, per-channel variance), float64
Target = tuple[Tensor, Tensor]  # (per-channel mean, per-channel std), float64


class RepairError(ValueError):
    """The model gives REPAIR no exact place for a correction."""


@dataclass(frozen=True)
class RepairPoint:
    """A module whose per-channel output REPAIR corrects."""

    name: str  # in `named_modules`
    kind: str  # bn | norm | layer (module docstring)
    channels: int
    axis: int = 1  # the channel axis of its output (-1 for a Linear)
    eps: float = 0.0  # a BatchNorm's epsilon (its output's spread depends on it)


def repair_points(model: nn.Module, spec: PermutationSpec, example: Tensor) -> list[RepairPoint]:
    """Every point REPAIR corrects, in the order the forward pass reaches them (RepairError if unsupported)."""
    modules = dict(model.named_modules())
    points = {name: _norm_point(name, m) for name, m in modules.items() if isinstance(m, NORMS)}
    for g, entries in spec.groups.items():
        owners = {e.key.rsplit(".", 1)[0] for e in entries if e.axis == 0 and e.key.endswith(".weight") and e.plain()}
        if owners & points.keys():
            continue  # a norm layer carries this group's correction
        other_norms = sorted(o for o in owners if isinstance(modules.get(o), nn.LayerNorm))
        if other_norms:
            raise RepairError(f"merge.repair: {other_norms[0]} (LayerNorm) normalises across the channels REPAIR "
                              "corrects one by one: set merge.repair=false")
        producers = sorted(o for o in owners if isinstance(modules.get(o), LAYERS))
        if len(producers) > 1:
            raise RepairError(f"merge.repair: layers {', '.join(producers[:3])} add into one channel group without a "
                              "norm layer (a norm-free residual stream), so no layer carries its correction: use a "
                              "model with norm layers or merge.repair=false")
        if producers:
            layer = modules[producers[0]]
            if layer.bias is None:
                raise RepairError(f"merge.repair: layer {producers[0]} has no bias to carry the shift of its "
                                  "channels: give it a bias or a norm layer, or set merge.repair=false")
            axis = -1 if isinstance(layer, nn.Linear) else 1
            points[producers[0]] = RepairPoint(producers[0], "layer", spec.sizes[g], axis)
    return _in_forward_order(model, points, example)


def _norm_point(name: str, m: nn.Module) -> RepairPoint:
    if m.weight is None or m.bias is None:
        raise RepairError(f"merge.repair: {name} ({type(m).__name__}) has no affine weight and bias to carry the "
                          "correction: build it with affine=True or set merge.repair=false")
    bn = isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    return RepairPoint(name, "bn" if bn else "norm", m.weight.shape[0], eps=float(m.eps) if bn else 0.0)


@torch.no_grad()
def _in_forward_order(model: nn.Module, points: dict[str, RepairPoint], example: Tensor) -> list[RepairPoint]:
    order: list[str] = []
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_pre_hook(lambda _m, _i, n=n: order.append(n)) for n in points]
    with eval_mode(model, hooks=hooks):
        model(example)
    twice = sorted({n for n in order if order.count(n) > 1})
    if twice:
        raise RepairError(f"merge.repair: module {twice[0]} runs more than once per forward pass, so one correction "
                          "cannot fit every use: set merge.repair=false")
    return [points[n] for n in order]


# --------------------------------------------------------------------------- statistics
class _Accumulator:
    """Per-channel count, mean and variance over batches (float64 sums, shifted by the first batch's mean)."""

    def __init__(self) -> None:
        self.n, self.shift, self.sums, self.squares = 0, None, 0.0, 0.0

    def add(self, x: Tensor, axis: int) -> None:
        c = x.detach().movedim(axis, 0).reshape(x.shape[axis], -1).double()
        if self.shift is None:
            self.shift = c.mean(1)
        c = c - self.shift[:, None]
        self.n += c.shape[1]
        self.sums = self.sums + c.sum(1)
        self.squares = self.squares + c.square().sum(1)

    def moments(self) -> Moments:
        mean = self.sums / self.n
        return float(self.n), (self.shift + mean).cpu(), (self.squares / self.n - mean * mean).clamp_min(0).cpu()


@torch.no_grad()
def channel_stats(model: nn.Module, points: list[RepairPoint], data: Tensor, *,
                  batch_size: int = 256) -> dict[str, Moments]:
    """Each point's per-channel output moments over `data` (batches and positions), the model in eval mode."""
    acc = {p.name: _Accumulator() for p in points}
    modules = dict(model.named_modules())
    hooks = [modules[p.name].register_forward_hook(lambda _m, _i, y, p=p: acc[p.name].add(y, p.axis))
             for p in points]
    with eval_mode(model, hooks=hooks):
        for s in range(0, len(data), batch_size):
            model(data[s : s + batch_size])
    return {name: a.moments() for name, a in acc.items()}


def interpolate(stats: list[dict[str, Moments]], weights: list[float]) -> dict[str, Target]:
    """The target of every point: Σ_k w_k·mean_k and Σ_k w_k·std_k over the endpoints' statistics."""
    w = [float(x) for x in weights]
    if len(w) != len(stats):
        raise ValueError(f"REPAIR needs one weight per endpoint: {len(w)} weights for {len(stats)} endpoints")
    return {name: (sum(wk * s[name][1] for wk, s in zip(w, stats)),
                   sum(wk * s[name][2].sqrt() for wk, s in zip(w, stats))) for name in stats[0]}


def pool(parts: list[Moments]) -> Moments:
    """Moments of the union of several sets from theirs (count-weighted means, law of total variance)."""
    n = sum(p[0] for p in parts)
    mean = sum(p[0] * p[1] for p in parts) / n
    var = sum(p[0] * (p[2] + (p[1] - mean) ** 2) for p in parts) / n
    return n, mean, var


# --------------------------------------------------------------------------- correction
@torch.no_grad()
def correct(state: dict[str, Tensor], point: RepairPoint, measured: Moments, target: Target) -> tuple[Tensor, Tensor]:
    """Fold one point's correction into `state` (in place); returns the (a, b) applied to its output.

    `measured`: for kind "bn" the moments of the layer's *input* (they become its
    running statistics, and fix its output's moments); otherwise of its output.
    """
    w, b = state[f"{point.name}.weight"], state[f"{point.name}.bias"]
    _, mean, var = measured
    if point.kind == "bn":
        state[f"{point.name}.running_mean"].copy_(mean)
        state[f"{point.name}.running_var"].copy_(var)
        out_mean = b.double().cpu()
        out_std = w.double().cpu().abs() * (var / (var + point.eps)).sqrt()
    else:
        out_mean, out_std = mean, var.sqrt()
    goal_mean, goal_std = target
    # a channel constant in the merged model keeps its scale: only its mean can move
    live = out_std > 1e-12 * max(float(out_std.max()), 1e-30)
    scale = torch.where(live, goal_std / torch.where(live, out_std, 1.0), torch.ones_like(out_std))
    shift = goal_mean - scale * out_mean
    a, s = scale.to(w), shift.to(b)
    w.mul_(a.view(-1, *[1] * (w.dim() - 1)))
    b.mul_(a).add_(s)
    return a, s


@torch.no_grad()
def repair_merged(model: nn.Module, points: list[RepairPoint], targets: dict[str, Target], data: Tensor) -> None:
    """Correct every point of `model` (in place) to its target on `data`, in one forward pass (one batch).

    Each point is measured on the model as corrected so far, so the result is
    exact for `data`: afterwards every point's per-channel mean and std on it
    are the targets, and BatchNorm running statistics are those of `data`.
    """
    state, modules = model.state_dict(), dict(model.named_modules())

    def before(p: RepairPoint):
        def fn(_m, inputs):
            acc = _Accumulator()
            acc.add(inputs[0], 1)
            correct(state, p, acc.moments(), targets[p.name])

        return fn

    def after(p: RepairPoint):
        def fn(_m, _i, y):
            acc = _Accumulator()
            acc.add(y, p.axis)
            a, b = correct(state, p, acc.moments(), targets[p.name])
            shape = [1] * y.dim()
            shape[p.axis] = -1
            return y * a.view(shape) + b.view(shape)

        return fn

    hooks = [modules[p.name].register_forward_pre_hook(before(p)) if p.kind == "bn"
             else modules[p.name].register_forward_hook(after(p)) for p in points]
    with eval_mode(model, hooks=hooks):
        model(data)


class _Stop(Exception):
    """Ends a forward pass once the point measured has been reached."""


@torch.no_grad()
def point_stats(model: nn.Module, point: RepairPoint, data: Tensor, *, batch_size: int = 256) -> Moments:
    """What `correct` needs at one point on `data` (a BatchNorm's input, another point's output); the
    forward passes stop there. For the final merge, where each host measures its own agents' data."""
    acc, module = _Accumulator(), dict(model.named_modules())[point.name]

    def record(x: Tensor, axis: int) -> None:
        acc.add(x, axis)
        raise _Stop

    if point.kind == "bn":
        hook = module.register_forward_pre_hook(lambda _m, inputs: record(inputs[0], 1))
    else:
        hook = module.register_forward_hook(lambda _m, _i, y: record(y, point.axis))
    with eval_mode(model, hooks=[hook]):
        for s in range(0, len(data), batch_size):
            try:
                model(data[s : s + batch_size])
            except _Stop:
                pass
    return acc.moments()
