"""Activation matching: pair hidden units by the Pearson correlation of what the next layers read.

For every group, forward hooks on its consumer layers (modules whose input
channels are the group) see the same data flow through the reference and the
other model. Only sufficient statistics are kept — sums, squares and one
cross-product matmul per consumer and batch — so the cost stays close to the
two forward passes themselves. Activations are shifted by a few samples'
means first, which keeps E[xy] − E[x]E[y] accurate in float32 matmuls.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from dimat.merge.spec import Perm, PermutationSpec


def _centred_channels_first(x: Tensor, shift: Tensor) -> Tensor:
    """[B, C, *spatial] − shift → a fresh float32 [C, B·spatial] (channels × samples), in one pass."""
    xt = x.detach().transpose(0, 1)
    out = torch.empty(xt.shape, dtype=torch.float32, device=x.device)
    torch.sub(xt, shift.view(-1, *[1] * (xt.dim() - 1)), out=out)
    return out.view(x.shape[1], -1)


class _Moments:
    """Running sums of one consumer's inputs in both models (x: reference, y: other)."""

    def __init__(self) -> None:
        self.n = 0
        self.shift: list[Tensor | None] = [None, None]
        self.sums: list[Tensor | float] = [0.0, 0.0]
        self.squares: list[Tensor | float] = [0.0, 0.0]
        self.cross: Tensor | float = 0.0
        self.pending: list[Tensor] = []  # reference batches waiting for the other model's (FIFO)

    def _centred(self, side: int, x: Tensor) -> Tensor:
        if self.shift[side] is None:  # a few samples' means: enough to avoid cancellation
            self.shift[side] = _centred_channels_first(x[:8], torch.zeros(x.shape[1], device=x.device)).mean(1)
        c = _centred_channels_first(x, self.shift[side])
        self.sums[side] = self.sums[side] + c.sum(1).double()  # float32 is fine on centred data
        self.squares[side] = self.squares[side] + torch.linalg.vector_norm(c, dim=1).double() ** 2
        return c

    def add_reference(self, x: Tensor) -> None:
        self.pending.append(self._centred(0, x))

    def add_other(self, y: Tensor) -> None:
        x, y = self.pending.pop(0), self._centred(1, y)
        self.cross = self.cross + (x @ y.T).double()
        self.n += y.shape[1]

    def correlation(self, eps: float) -> Tensor:
        """Pearson correlation [C_ref, C_other]; rows/columns of constant units are 0."""
        mx, my = self.sums[0] / self.n, self.sums[1] / self.n
        cov = self.cross / self.n - mx[:, None] * my[None, :]
        sx = (self.squares[0] / self.n - mx * mx).clamp_min(0).sqrt()
        sy = (self.squares[1] / self.n - my * my).clamp_min(0).sqrt()
        corr = (cov / (sx[:, None] * sy[None, :] + eps)).clamp(-1.0, 1.0)
        # a unit whose spread is float noise (dead, constant) correlates with nothing
        corr[sx <= 1e-6 * float(sx.max()), :] = 0.0
        corr[:, sy <= 1e-6 * float(sy.max())] = 0.0
        return corr


def _hook(moments: dict[str, _Moments], name: str, reference: bool):
    def fn(_module: nn.Module, inputs: tuple, _output: object) -> None:
        (moments[name].add_reference if reference else moments[name].add_other)(inputs[0])

    return fn


@torch.no_grad()
def _collect(spec: PermutationSpec, ref_model: nn.Module, other_model: nn.Module, data: Tensor,
             batch_size: int) -> dict[str, _Moments]:
    names = {m for mods in spec.consumers.values() for m in mods}
    moments = {name: _Moments() for name in names}
    handles, flags = [], {}
    for model, reference in ((ref_model, True), (other_model, False)):
        modules = dict(model.named_modules())
        missing = names - modules.keys()
        if missing:
            raise ValueError(f"activation matching: consumer modules {sorted(missing)[:3]} are not in the model")
        handles += [modules[n].register_forward_hook(_hook(moments, n, reference)) for n in names]
        flags |= {m: m.training for m in model.modules()}
        model.eval()
    try:
        for s in range(0, len(data), batch_size):
            ref_model(data[s : s + batch_size])
            other_model(data[s : s + batch_size])
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag
    return moments


def activation_matching(spec: PermutationSpec, ref_model: nn.Module, other_model: nn.Module, data: Tensor, *,
                        batch_size: int = 256, eps: float = 1e-8) -> Perm:
    """The permutation mapping ``other_model`` into ``ref_model``'s basis, from activations on ``data``.

    Both models run in eval mode (flags restored), so BatchNorm statistics
    should be meaningful (``reset_bn`` first). Per group: the correlations of
    all its consumers are summed (a residual stream has several), then one
    ``linear_sum_assignment``. Dead or constant units get correlation 0, never
    NaN; a tiny weight-similarity term breaks their ties.
    """
    if not spec.consumers:
        raise ValueError("activation matching needs spec.consumers (module names whose inputs carry each group)")
    moments = _collect(spec, ref_model, other_model, data, batch_size)
    ref_state, other_state = ref_model.state_dict(), other_model.state_dict()
    perm = {}
    for g, n in spec.sizes.items():
        mods = spec.consumers.get(g, ())
        if not mods:  # nothing reads this group (hand-written spec): keep it in place
            perm[g] = torch.arange(n)
            continue
        corr = sum(moments[m].correlation(eps) for m in mods)
        corr = corr + 1e-3 * _weight_similarity(spec, g, ref_state, other_state)
        _, cols = linear_sum_assignment(corr.cpu().numpy(), maximize=True)  # statistics on the model's device
        perm[g] = torch.as_tensor(cols, dtype=torch.long)
    return perm


def _weight_similarity(spec: PermutationSpec, g: str, ref: dict, other: dict) -> Tensor:
    """Cosine similarity of the units' weights (all tensors of the group, other axes unpermuted)."""
    n = spec.sizes[g]
    pairs = [(k, ax) for k, ax in spec.groups[g] if not k.endswith(("running_mean", "running_var"))]
    a = torch.cat([ref[k].detach().float().movedim(ax, 0).reshape(n, -1) for k, ax in pairs], 1)
    b = torch.cat([other[k].detach().float().movedim(ax, 0).reshape(n, -1) for k, ax in pairs], 1)
    return (nn.functional.normalize(a, dim=1) @ nn.functional.normalize(b, dim=1).T).double()
