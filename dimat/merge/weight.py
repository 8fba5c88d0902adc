"""Weight matching (Git Re-Basin): permutations maximising the inner products of the weights.

Coordinate descent over the groups, each step an exact assignment problem
(`descend`, also used by activation matching to break its ties); the cost
matrices (`CostMatrices`) recompute only the terms whose coupled permutations
changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment

from dimat.merge.spec import Perm, PermutationSpec, apply_permutation, axes_by_key


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


class CostMatrices:
    """Cost matrix of every group, recomputing a term only when a permutation it depends on changed.

    Matmuls dominate weight matching; in later sweeps most permutations stay
    put, so most terms are reused.
    """

    def __init__(self, spec: PermutationSpec, ref: dict, other: dict):
        axes = axes_by_key(spec)
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


def solve_assignment(cost: torch.Tensor) -> torch.Tensor:
    """The column assigned to each row by the assignment maximising the total of `cost` (on the CPU)."""
    _, cols = linear_sum_assignment(cost.numpy(), maximize=True)
    return torch.as_tensor(cols, dtype=torch.long)


def _solve(cost: torch.Tensor, current: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The best assignment for this cost matrix, and whether it beats the current one (relative 1e-12)."""
    new = solve_assignment(cost)
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
        costs = CostMatrices(spec, ref, other)
        perm, sweeps = descend(spec, costs, start, max_sweeps, gen)
        obj = _objective(spec, costs.ref32, costs.oth32, perm)
        if best is None or obj > best[0]:
            best = (obj, perm, sweeps)
    obj, perm, sweeps = best
    return perm, {"sweeps": sweeps, "objective": obj}


def descend(spec: PermutationSpec, costs, perm: Perm, max_sweeps: int, gen,
            names: list[str] | None = None) -> tuple[Perm, int]:
    """Coordinate ascent over the groups `names` (default: all), in place on `perm`; returns it and the sweeps.

    `costs(g, perm)` is group g's cost matrix given the other groups' current
    permutations and `costs.changed(g)` says g moved. Groups outside `names` stay fixed.
    """
    names = list(spec.groups) if names is None else list(names)
    axes = axes_by_key(spec)
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
