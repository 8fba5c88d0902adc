"""Activation matching: pair hidden units by the Pearson correlation of what the next layers read.

For every group, forward hooks on its consumer layers (modules whose input
channels are the group) see the same data flow through the reference and the
other models. Only sufficient statistics are kept — sums, squares and one
cross-product matmul per consumer, batch and other model — so the cost stays
close to the forward passes themselves: the reference runs once per batch for
all the models matched against it. Activations are shifted by a few samples'
means first, which keeps E[xy] − E[x]E[y] accurate in float32 matmuls.

A residual stream is read by several layers (every block's first conv and
shortcut); its correlation is the sum over all of them. The official DIMAT
code hooks a single point per stream; restricted to that point dimat's
matching agrees with it exactly, and summing over every reader merged two
independently trained ResNet-20 pairs 2–7 points more accurately.

Units whose activation is constant on the data (dead ReLUs, common in a
random-init network) correlate with nothing, so the correlations leave them
tied. The tie is broken by weight similarity, as weight matching measures it:
the other groups' permutations are applied first and the groups are solved in
turn until none changes (coordinate ascent of correlation + a small weight
term), so a planted permutation is recovered exactly even where units are dead.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from dimat.agent import channels_last, nhwc

from dimat.merge.spec import Perm, PermutationSpec
from dimat.merge.trace import eval_mode
from dimat.merge.weight import CostMatrices, descend, solve_assignment

TIE_WEIGHT = 1e-3  # the weight term's largest possible entry: below any correlation difference that matters


def _centred_channels_first(x: Tensor, shift: Tensor) -> Tensor:
    """[B, C, *spatial] − shift → a fresh float32 [C, B·spatial] (channels × samples), in one pass."""
    xt = x.detach().transpose(0, 1)
    out = torch.empty(xt.shape, dtype=torch.float32, device=x.device)
    torch.sub(xt, shift.view(-1, *[1] * (xt.dim() - 1)), out=out)
    return out.view(x.shape[1], -1)


class _Side:
    """One model's running sums and squares of a consumer's (shifted) inputs."""

    def __init__(self) -> None:
        self.shift: Tensor | None = None
        self.sums: Tensor | float = 0.0
        self.squares: Tensor | float = 0.0

    def centred(self, x: Tensor) -> Tensor:
        if self.shift is None:  # a few samples' means: enough to avoid cancellation
            self.shift = _centred_channels_first(x[:8], torch.zeros(x.shape[1], device=x.device)).mean(1)
        c = _centred_channels_first(x, self.shift)
        self.sums = self.sums + c.sum(1).double()  # float32 is fine on centred data
        self.squares = self.squares + torch.linalg.vector_norm(c, dim=1).double() ** 2
        return c

    def spread(self, n: int) -> tuple[Tensor, Tensor]:
        mean = self.sums / n
        return mean, (self.squares / n - mean * mean).clamp_min(0).sqrt()


class _Moments:
    """One consumer's inputs: the reference's sums once, and each other model's sums and cross-products."""

    def __init__(self, others: int) -> None:
        self.n = 0
        self.ref = _Side()
        self.others = [_Side() for _ in range(others)]
        self.cross: list[Tensor | float] = [0.0] * others
        self.current: Tensor | None = None  # the reference's centred batch, read by every other model

    def add_reference(self, x: Tensor) -> None:
        self.current = self.ref.centred(x)
        self.n += self.current.shape[1]

    def add_other(self, k: int, y: Tensor) -> None:
        self.cross[k] = self.cross[k] + (self.current @ self.others[k].centred(y).T).double()

    def correlation(self, k: int, eps: float) -> Tensor:
        """Pearson correlation [C_ref, C_other] with other model k; rows/columns of constant units are 0.

        A unit is constant when its spread is below `eps` × the largest in its layer (dead, or float noise).
        """
        (mx, sx), (my, sy) = self.ref.spread(self.n), self.others[k].spread(self.n)
        cov = self.cross[k] / self.n - mx[:, None] * my[None, :]
        live_x, live_y = sx > eps * float(sx.max()), sy > eps * float(sy.max())
        # no additive epsilon: it would pull a quiet unit's correlation with itself below 1
        denom = (sx[:, None] * sy[None, :]).clamp_min(torch.finfo(torch.float64).tiny)
        corr = (cov / denom).clamp(-1.0, 1.0)
        corr[~live_x, :] = 0.0
        corr[:, ~live_y] = 0.0
        return corr


def _hook(moments: dict[str, _Moments], name: str, other: int | None):
    def fn(_module: nn.Module, inputs: tuple, _output: object) -> None:
        if other is None:
            moments[name].add_reference(inputs[0])
        else:
            moments[name].add_other(other, inputs[0])

    return fn


@torch.no_grad()
def _collect(spec: PermutationSpec, ref_model: nn.Module, other_models: list[nn.Module], data: Tensor,
             batch_size: int) -> dict[str, _Moments]:
    """One pass over `data`: per batch the reference once, then every other model."""
    names = {m for mods in spec.consumers.values() for m in mods}
    moments = {name: _Moments(len(other_models)) for name in names}
    models = [ref_model, *other_models]
    modules = [dict(model.named_modules()) for model in models]
    for found in modules:
        missing = names - found.keys()
        if missing:
            raise ValueError(f"activation matching: consumer modules {sorted(missing)[:3]} are not in the model")
    handles = [found[n].register_forward_hook(_hook(moments, n, k - 1 if k else None))
               for k, found in enumerate(modules) for n in names]
    with eval_mode(*models, hooks=handles), contextlib.ExitStack() as stack:
        fast = all([stack.enter_context(channels_last(model)) for model in models])  # faster convolutions
        for s in range(0, len(data), batch_size):
            xb = nhwc(data[s : s + batch_size]) if fast else data[s : s + batch_size]
            ref_model(xb)
            for model in other_models:
                model(xb)
    return moments


def activation_matching(spec: PermutationSpec, ref_model: nn.Module, other_model: nn.Module, data: Tensor, *,
                        batch_size: int = 256, eps: float = 1e-6) -> Perm:
    """The permutation mapping ``other_model`` into ``ref_model``'s basis, from activations on ``data``.

    Both models run in eval mode (flags restored), so BatchNorm statistics
    should be meaningful (``reset_bn`` first). Per group: the correlations of
    all its consumers are summed (a residual stream has several), then one
    assignment; units left tied (dead, constant) are paired by weight
    similarity with the other groups' permutations applied (module docstring).
    """
    return activation_matching_many(spec, ref_model, [other_model], data, batch_size=batch_size, eps=eps)[0]


def activation_matching_many(spec: PermutationSpec, ref_model: nn.Module, other_models: list[nn.Module],
                             data: Tensor, *, batch_size: int = 256, eps: float = 1e-6) -> list[Perm]:
    """`activation_matching` of several models against one reference, whose activations are computed once.

    The other models must be distinct modules. Each result equals the pairwise call's.
    """
    if not spec.consumers:
        raise ValueError("activation matching needs spec.consumers (module names whose inputs carry each group)")
    if len({id(m) for m in (ref_model, *other_models)}) != len(other_models) + 1:
        raise ValueError("activation matching runs every model on each batch: pass distinct modules (copies)")
    moments = _collect(spec, ref_model, other_models, data, batch_size)
    ref_state = ref_model.state_dict()
    out = []
    for k, other in enumerate(other_models):
        # statistics on the model's device, the assignment solver on the CPU
        corr = {g: sum(moments[m].correlation(k, eps) for m in mods).double().cpu()
                for g, mods in spec.consumers.items() if mods and g in spec.sizes}
        out.append(_tie_broken(spec, corr, ref_state, other.state_dict()))
    return out


class _WithTies:
    """Group g's cost: its correlations plus the weight-matching term scaled below every entry's TIE_WEIGHT."""

    def __init__(self, corr: dict[str, Tensor], weights: CostMatrices):
        self.corr, self.weights = corr, weights
        self.scale = TIE_WEIGHT / _entry_bound(weights)

    def __call__(self, g: str, perm: Perm) -> Tensor:
        return self.corr[g] + self.scale * self.weights(g, perm).double()

    def changed(self, g: str) -> None:
        self.weights.changed(g)


def _entry_bound(weights: CostMatrices) -> float:
    """max |entry| any group's weight cost can reach (Cauchy–Schwarz on its units' weight norms)."""
    bound = 0.0
    for terms in weights.terms.values():
        if terms:
            a = sum(t.ref.square().sum(1) for t in terms).sqrt().max()
            b = sum(t.other.reshape(t.other.shape[0], -1).square().sum(1) for t in terms).sqrt().max()
            bound = max(bound, float(a * b))
    return bound or 1.0


def _tie_broken(spec: PermutationSpec, corr: dict[str, Tensor], ref: dict, other: dict, *,
                max_sweeps: int = 100) -> Perm:
    """Coordinate ascent of Σ_g corr_g + weight term over the groups that have consumers (the rest stay put).

    One objective for all groups (a single scale for the weight term), so every
    accepted step raises it and the ascent ends. It starts from each group's
    correlation optimum: where nothing is tied, the first sweep confirms it.
    """
    perm = {g: torch.arange(n) for g, n in spec.sizes.items()}
    perm |= {g: solve_assignment(c) for g, c in corr.items()}
    gen = torch.Generator().manual_seed(0)
    descend(spec, _WithTies(corr, CostMatrices(spec, ref, other)), perm, max_sweeps, gen, names=list(corr))
    return perm
