"""Finding, applying and merging permutations: weight matching, activation matching, BN repair.

Convention: a permutation `perm[g]` maps the *other* model into the
reference's basis — unit i of the aligned model is unit `perm[g][i]` of the
other, so `apply_permutation(spec, perm, other)` is index_select along every
axis of group g.
"""

from __future__ import annotations

import copy as _copy
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from dimat.merge.activation import activation_matching
from dimat.merge.spec import Perm, PermutationSpec


def _axes_by_key(spec: PermutationSpec) -> dict[str, list[tuple[str, int]]]:
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
    axes = _axes_by_key(spec)
    out = {}
    for key, t in state.items():
        for g, axis in axes.get(key, ()):
            if g in perm:
                t = t.index_select(axis, perm[g].to(t.device))
        out[key] = t
    return out


def _is_stat(key: str) -> bool:
    return key.endswith("running_mean") or key.endswith("running_var")


@dataclass(frozen=True)
class _Term:
    """One (key, axis) of a group: it adds ref_g @ π(other)_gᵀ to the group's cost matrix.

    Both sides are stored once with the group's axis first (the other side
    unflattened, so the other groups' permutations can be applied by one
    index_select whose output reshapes for free).
    """

    ref: torch.Tensor  # [n, rest]
    other: torch.Tensor  # [n, ...]
    couplings: tuple[tuple[str, int], ...]  # (group, axis in `other`) of the tensor's other permuted axes

    @staticmethod
    def build(key: str, axis: int, ref: torch.Tensor, other: torch.Tensor, key_axes) -> _Term:
        n = ref.shape[axis]
        # movedim(axis, 0) shifts the axes before `axis` one place right
        couplings = tuple((h, ax + 1 if ax < axis else ax) for h, ax in key_axes if ax != axis)
        return _Term(ref.movedim(axis, 0).reshape(n, -1), other.movedim(axis, 0).contiguous(), couplings)

    def cost(self, perm: Perm) -> torch.Tensor:
        b = self.other
        for h, ax in self.couplings:
            b = b.index_select(ax, perm[h])
        return self.ref @ b.reshape(b.shape[0], -1).T

    def update(self, cost: torch.Tensor, old: Perm, new: Perm) -> torch.Tensor | None:
        """cost + the change from the units whose coupled permutation moved, or None if a full recompute is cheaper.

        Only the common layout (one coupled axis, right after the group's) takes this path.
        """
        if len(self.couplings) != 1 or self.couplings[0][1] != 1:
            return None
        h = self.couplings[0][0]
        moved = (old[h] != new[h]).nonzero().flatten()
        if len(moved) * 2 > len(new[h]):
            return None
        n, m = self.other.shape[:2]
        a = self.ref.reshape(n, m, -1).index_select(1, moved).reshape(n, -1)
        diff = self.other.index_select(1, new[h][moved]) - self.other.index_select(1, old[h][moved])
        return cost + a @ diff.reshape(n, -1).T


class _CostMatrices:
    """Cost matrix of every group, recomputing a term only when a permutation it depends on changed.

    Matmuls dominate weight matching; in later sweeps most permutations stay
    put, so most terms are reused.
    """

    def __init__(self, spec: PermutationSpec, ref: dict, other: dict):
        axes = _axes_by_key(spec)
        # on the CPU even for GPU models: the assignment solver is there, and these matmuls take milliseconds
        ref32 = {k: ref[k].detach().float().cpu() for k in axes if k in ref and k in other and not _is_stat(k)}
        oth32 = {k: other[k].detach().float().cpu() for k in ref32}
        self.terms = {
            g: [_Term.build(k, ax, ref32[k], oth32[k], axes[k]) for k, ax in pairs if k in ref32]
            for g, pairs in spec.groups.items()
        }
        self.sizes = spec.sizes
        self.version = {g: 0 for g in spec.groups}
        self.cache: dict[tuple[str, int], tuple[tuple[int, ...], Perm, torch.Tensor]] = {}
        self.ref32, self.oth32 = ref32, oth32

    def changed(self, g: str) -> None:
        self.version[g] += 1

    def __call__(self, g: str, perm: Perm) -> torch.Tensor:
        n = self.sizes[g]
        total = torch.zeros(n, n)
        for i, term in enumerate(self.terms[g]):
            stamp = tuple(self.version[h] for h, _ in term.couplings)
            hit = self.cache.get((g, i))
            if hit is None or hit[0] != stamp:
                cost = term.update(hit[2], hit[1], perm) if hit is not None else None
                cost = term.cost(perm) if cost is None else cost
                # perm[h] tensors are replaced, never modified, so keeping references is a snapshot
                hit = (stamp, {h: perm[h] for h, _ in term.couplings}, cost)
                self.cache[(g, i)] = hit
            total += hit[2]
        return total


def _solve(cost: torch.Tensor, current: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The best assignment for this cost matrix, and whether it beats the current one (relative 1e-12)."""
    _, cols = linear_sum_assignment(cost.numpy(), maximize=True)
    new = torch.as_tensor(cols, dtype=torch.long)
    rows = torch.arange(len(new))
    old_val, new_val = float(cost[rows, current].sum()), float(cost[rows, new].sum())
    return new, new_val > old_val + 1e-12 * max(1.0, abs(old_val))


def _objective(spec: PermutationSpec, ref: dict, other: dict, perm: Perm) -> float:
    aligned = apply_permutation(spec, perm, other)
    return float(sum((ref[k] * v).sum() for k, v in aligned.items()))


def weight_matching(
    spec: PermutationSpec,
    ref: dict[str, torch.Tensor],
    other: dict[str, torch.Tensor],
    *,
    init: Perm | None = None,
    max_sweeps: int = 100,
    restarts: int = 0,
    seed: int = 0,
) -> tuple[Perm, dict]:
    """Git Re-Basin coordinate descent: maximise Σ⟨W_ref, π(W_other)⟩ one group at a time.

    Each step is an exact assignment problem (float32 costs; BatchNorm running
    statistics excluded); sweeps visit groups in a seeded random order and stop
    when a sweep gains nothing. A group is re-solved only when a group sharing
    a tensor with it changed. With `restarts`, random starting points are also
    tried and the best objective kept; `init` warm-starts the first attempt.
    Returns the permutation mapping `other` into `ref`'s basis and
    {"sweeps", "objective"} of the best attempt.
    """
    gen = torch.Generator().manual_seed(seed)
    best: tuple[float, Perm, int] | None = None
    for attempt in range(restarts + 1):
        if attempt == 0:
            start = {g: (init[g].clone() if init and g in init else torch.arange(n)) for g, n in spec.sizes.items()}
        else:
            start = {g: torch.randperm(n, generator=gen) for g, n in spec.sizes.items()}
        costs = _CostMatrices(spec, ref, other)
        perm, sweeps = _descend(spec, costs, start, max_sweeps, gen)
        obj = _objective(spec, costs.ref32, costs.oth32, perm)
        if best is None or obj > best[0]:
            best = (obj, perm, sweeps)
    obj, perm, sweeps = best
    return perm, {"sweeps": sweeps, "objective": obj}


def _descend(spec: PermutationSpec, costs: _CostMatrices, perm: Perm, max_sweeps: int, gen) -> tuple[Perm, int]:
    names = list(spec.groups)
    axes = _axes_by_key(spec)
    # a group's cost depends only on the groups sharing a tensor with it
    coupled = {g: {h for key, _ in spec.groups[g] for h, _ in axes[key] if h != g} for g in names}
    dirty, sweeps = set(names), 0
    while dirty and sweeps < max_sweeps:
        sweeps += 1
        for gi in torch.randperm(len(names), generator=gen).tolist():
            g = names[gi]
            if g not in dirty:
                continue
            dirty.discard(g)
            new, gained = _solve(costs(g, perm), perm[g])
            if gained:
                perm[g] = new
                costs.changed(g)
                dirty |= coupled[g]
    return perm, sweeps


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
    model: nn.Module | None = None,
    init: list[Perm | None] | None = None,
    **kw,
) -> tuple[list[dict], list[Perm]]:
    """Every state in `others` permuted into the reference's basis, and the permutations found.

    method="weight": `weight_matching` (keywords such as `restarts` pass
    through; `init` warm-starts each neighbour). method="activation":
    `activation_matching` on `data`, loading each state into `model`, a
    template module (a dict `reference` is loaded into a copy of it). BatchNorm
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
                      data: torch.Tensor | None, model: nn.Module | None, **kw) -> list[Perm]:
    if data is None or model is None:
        raise ValueError("activation matching needs `data` and a template `model` to load states into")
    if not isinstance(reference, nn.Module):
        reference = _loaded(model, reference, copy=True)
    return [activation_matching(spec, reference, _loaded(model, o), data, **kw) for o in others]


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
        return [dict(states[0]), *aligned], [{g: torch.arange(n) for g, n in spec.sizes.items()}, *perms]
    if method != "weight":
        raise ValueError(f"merge.method={method} is unknown for alignment: use weight or activation")
    n = len(states)
    perms = [{g: torch.arange(k) for g, k in spec.sizes.items()} for _ in range(n)]
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
        for s in range(0, len(data), batch_size):
            xb = data[s : s + batch_size]
            for m in bns:
                m.momentum = len(xb) / (seen + len(xb))
            model(xb)
            seen += len(xb)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        for m, flag in flags.items():
            m.training = flag
