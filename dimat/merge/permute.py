"""Aligning and merging models: `align` (weight or activation matching), `align_many`, `merge`, `reset_bn`.

Convention: a permutation `perm[g]` maps the *other* model into the
reference's basis — unit i of the aligned model is unit `perm[g][i]` of the
other, so `apply_permutation(spec, perm, other)` is index_select along every
axis of group g.
"""

from __future__ import annotations

import copy as _copy

import torch
from torch import nn

from dimat.layout import channels_last, nhwc
from dimat.merge.activation import activation_matching, activation_matching_many
from dimat.merge.spec import Perm, PermutationSpec, apply_permutation
from dimat.merge.weight import weight_matching

__all__ = ["activation_matching", "activation_matching_many", "align", "align_many", "apply_permutation", "merge", "reset_bn", "weight_matching"]


def merge(states: list[dict[str, torch.Tensor]], weights: list[float] | torch.Tensor) -> dict[str, torch.Tensor]:
    """Σ_k w_k·state_k for float tensors (accumulated in float32, returned in their dtype).

    Integer buffers (num_batches_tracked) are not averaged: they come from states[0].
    """
    w = [float(x) for x in weights]
    if len(w) != len(states) or not states:
        raise ValueError(f"merge needs one weight per state: {len(w)} weights for {len(states)} states")
    out = {}
    for key, t in states[0].items():
        if t.is_floating_point():
            acc = t.detach().float() * w[0]
            for wk, s in zip(w[1:], states[1:]):
                acc = acc + s[key].detach().float() * wk
            out[key] = acc.to(t.dtype)
        else:
            out[key] = t.detach().clone()
    return out


def align(
    reference: nn.Module | dict,
    others: list[dict],
    spec: PermutationSpec,
    method: str = "weight",
    *,
    data: torch.Tensor | None = None,
    model: nn.Module | list[nn.Module] | None = None,
    init: list[Perm | None] | None = None,
    **kw,
) -> tuple[list[dict], list[Perm]]:
    """Every state in `others` permuted into the reference's basis, and the permutations found.

    method="weight": `weight_matching` (keywords such as `restarts` pass
    through; `init` warm-starts each neighbour). method="activation":
    `activation_matching_many` on `data`, loading each state into `model`, a
    template module, or a list of them to reuse (one per neighbour; copies are
    made for the rest; a dict `reference` is loaded into a copy). BatchNorm
    statistics are used as they are: `reset_bn` beforehand if they are stale.
    """
    init = init or [None] * len(others)
    if method == "weight":
        ref = reference.state_dict() if isinstance(reference, nn.Module) else reference
        perms = [weight_matching(spec, ref, o, init=p, **kw)[0] for o, p in zip(others, init)]
    elif method == "activation":
        perms = _activation_perms(reference, others, spec, data, model, **kw)
    else:
        raise ValueError(f"merge.method={method} is unknown for alignment: use weight or activation")
    return [apply_permutation(spec, p, o) for p, o in zip(perms, others)], perms


def _activation_perms(reference: nn.Module | dict, others: list[dict], spec: PermutationSpec,
                      data: torch.Tensor | None, model: nn.Module | list[nn.Module] | None, **kw) -> list[Perm]:
    if data is None or model is None:
        raise ValueError("activation matching needs `data` and a template `model` to load states into")
    templates = list(model) if isinstance(model, (list, tuple)) else [model]
    if not isinstance(reference, nn.Module):
        reference = _loaded(templates[0], reference, copy=True)
    # one module per neighbour: the reference's activations are computed once and read by all of them
    templates += [_copy.deepcopy(templates[0]) for _ in range(len(others) - len(templates))]
    return activation_matching_many(spec, reference, [_loaded(t, o) for t, o in zip(templates, others)], data, **kw)


def _loaded(template: nn.Module, state: dict, *, copy: bool = False) -> nn.Module:
    # strict=False: flat-vector states may leave out integer buffers (num_batches_tracked)
    module = _copy.deepcopy(template) if copy else template
    module.load_state_dict(state, strict=False)
    return module


def align_many(
    states: list[dict],
    spec: PermutationSpec,
    *,
    method: str = "weight",
    max_iters: int = 20,
    seed: int = 0,
    data: torch.Tensor | None = None,
    model: nn.Module | None = None,
) -> tuple[list[dict], list[Perm]]:
    """All states in one common basis, for a final global merge; returns them and their permutations.

    method="weight": MergeMany — each model in turn (seeded order) is weight-matched
    to the mean of the others, warm-started, until a full pass changes nothing or
    `max_iters` passes. method="activation": every model is activation-matched to
    states[0] on `data` (template `model`), whose basis is then the common one.
    """
    if method == "activation":
        aligned, perms = align(states[0], states[1:], spec, "activation", data=data, model=model)
        return [dict(states[0]), *aligned], [spec.identity(), *perms]
    if method != "weight":
        raise ValueError(f"merge.method={method} is unknown for alignment: use weight or activation")
    n = len(states)
    perms = [spec.identity() for _ in range(n)]
    aligned = [apply_permutation(spec, p, s) for p, s in zip(perms, states)]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(max_iters):
        changed = False
        for k in torch.randperm(n, generator=gen).tolist():
            rest = [aligned[j] for j in range(n) if j != k]
            target = merge(rest, [1.0 / len(rest)] * len(rest))
            new, _ = weight_matching(spec, target, states[k], init=perms[k], seed=seed)
            if any(not torch.equal(new[g], perms[k][g]) for g in new):
                perms[k], changed = new, True
                aligned[k] = apply_permutation(spec, new, states[k])
        if not changed:
            break
    return aligned, perms


@torch.no_grad()
def reset_bn(model: nn.Module, data: torch.Tensor | None, *, batch_size: int = 256) -> None:
    """Re-estimate BatchNorm running statistics: reset, then one pass over `data`.

    Only the BatchNorm layers run in train mode (dropout stays off, so the
    statistics are those the eval-mode network sees). Each batch is weighted by
    its size (momentum b / (seen + b)): the cumulative average of momentum=None,
    but exact also when the last batch is short. Training flags and momenta
    are restored; without BatchNorm this is a no-op.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or data is None or len(data) == 0:
        return
    flags = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
    model.eval()
    for m in bns:
        m.train()
    try:
        seen = 0
        with channels_last(model, data[:4]) as fast:  # faster convolutions
            for s in range(0, len(data), batch_size):
                xb = data[s : s + batch_size]
                for m in bns:
                    m.momentum = len(xb) / (seen + len(xb))
                model(nhwc(xb) if fast else xb)
                seen += len(xb)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        for m, flag in flags.items():
            m.training = flag
