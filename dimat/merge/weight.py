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

from dimat.merge.spec import Perm, PermutationSpec, apply_permutation, axis_permutation, compose_blocks


def _is_stat(key: str) -> bool:
    return key.endswith("running_mean") or key.endswith("running_var")


Items = list[tuple[str, torch.Tensor]]  # the (group, where[k, n]) pairs on one axis (`PermutationSpec.tables`)


@dataclass(frozen=True)
class _Term:
    """One entry of a group (a state axis carrying its units): it adds ref_g @ π(other)_gᵀ to the group's cost.

    Both sides are stored once with the group's units first (the other side
    unflattened, so the other axes' permutations can be applied by one
    index_select each whose output reshapes for free). Where a unit occurs
    several times on the axis (stacked gates, a flattened map), its
    occurrences are summed like any other axis.
    """

    ref: torch.Tensor  # [n, rest]
    other: torch.Tensor  # [n, ...]
    couplings: tuple[tuple[int, int, tuple], ...]  # (axis in `other`, its length, the groups on it)
    plain: bool  # one unit per position over the whole axis (the incremental update applies)

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(g for _, _, items in self.couplings for g, _ in items)

    @staticmethod
    def build(axis: int, where: torch.Tensor, ref: torch.Tensor, other: torch.Tensor,
              key_axes: list[tuple[int, Items]]) -> _Term:
        axis %= ref.dim()
        k, n = where.shape
        plain = k == 1 and where.shape[1] == ref.shape[axis] and bool((where[0] == torch.arange(n)).all())
        if plain:
            # movedim(axis, 0) shifts the axes before `axis` one place right
            moved = lambda j: j + 1 if j < axis else j  # noqa: E731
            r, o = ref.movedim(axis, 0).reshape(n, -1), other.movedim(axis, 0).contiguous()
        else:
            moved = lambda j: j + 1  # noqa: E731 - [n, axes before, occurrences, axes after]
            sel = where.reshape(-1)
            r = ref.index_select(axis, sel).unflatten(axis, (k, n)).movedim(axis + 1, 0).reshape(n, -1)
            o = other.index_select(axis, sel).unflatten(axis, (k, n)).movedim(axis + 1, 0).contiguous()
        couplings = tuple((moved(ax % ref.dim()), ref.shape[ax % ref.dim()], tuple(items))
                          for ax, items in key_axes if ax % ref.dim() != axis)
        return _Term(r, o, couplings, plain)

    def cost(self, perm: Perm) -> torch.Tensor:
        b = self.other
        for ax, length, items in self.couplings:
            rho = axis_permutation(list(items), length, perm)
            if rho is not None:
                b = b.index_select(ax, rho)
        return self.ref @ b.reshape(b.shape[0], -1).T

    def update(self, cost: torch.Tensor, old: Perm, new: Perm) -> torch.Tensor | None:
        """cost + the change from the units whose coupled permutation moved, or None if a full recompute is cheaper.

        Only the common layout (one plain group coupled, on the axis right after the group's) takes this path.
        """
        if not self.plain or len(self.couplings) != 1 or self.couplings[0][0] != 1:
            return None
        _, length, items = self.couplings[0]
        if len(items) != 1 or items[0][1].shape != (1, length):
            return None
        h = items[0][0]
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
        by_key = spec.by_key()
        # on the CPU even for GPU models: the assignment solver is there, and these matmuls take milliseconds
        ref32 = {k: ref[k].detach().float().cpu() for k in by_key if k in ref and k in other and not _is_stat(k)}
        oth32 = {k: other[k].detach().float().cpu() for k in ref32}
        self.terms: dict[str, list[_Term]] = {g: [] for g in spec.groups}
        for g, entries in spec.groups.items():
            for e in entries:
                if e.key in ref32:
                    where = e.table(spec.sizes[g], spec.block(g))
                    self.terms[g].append(_Term.build(e.axis, where, ref32[e.key], oth32[e.key], by_key[e.key]))
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
            stamp = tuple(self.version[h] for h in term.groups)
            hit = self.cache.get((g, i))
            if hit is None or hit[0] != stamp:
                cost = term.update(hit[2], hit[1], perm) if hit is not None else None
                cost = term.cost(perm) if cost is None else cost
                # perm[h] tensors are replaced, never modified, so keeping references is a snapshot
                hit = (stamp, {h: perm[h] for h in term.groups if h in perm}, cost)
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


def solve_blocks(costs: list[torch.Tensor], blocks: list[int]) -> list[torch.Tensor]:
    """The best permutations of a block family's groups: one permutation of the blocks shared by all, and one
    inside each block per group (exact: for every pair of blocks the best inner assignments, then the best
    assignment of blocks on their summed values)."""
    nb = costs[0].shape[0] // blocks[0]
    value = torch.zeros(nb, nb, dtype=torch.float64)
    inner: list[list[list[torch.Tensor]]] = []
    for cost, b in zip(costs, blocks):
        c = cost.double().view(nb, b, nb, b).permute(0, 2, 1, 3)  # [ref block, other block, b, b]
        best = [[solve_assignment(c[i, j].contiguous()) for j in range(nb)] for i in range(nb)]
        rows = torch.arange(b)
        value += torch.tensor([[float(c[i, j][rows, best[i][j]].sum()) for j in range(nb)] for i in range(nb)],
                              dtype=torch.float64)
        inner.append(best)
    sigma = solve_assignment(value)
    return [compose_blocks(sigma, [best[i][int(sigma[i])] for i in range(nb)], b) for best, b in zip(inner, blocks)]


def _value(cost: torch.Tensor, perm: torch.Tensor) -> float:
    return float(cost[torch.arange(len(perm)), perm].double().sum())


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
            start = random_start(spec, gen)
        costs = CostMatrices(spec, ref, other)
        perm, sweeps = descend(spec, costs, start, max_sweeps, gen)
        obj = _objective(spec, costs.ref32, costs.oth32, perm)
        if best is None or obj > best[0]:
            best = (obj, perm, sweeps)
    obj, perm, sweeps = best
    return perm, {"sweeps": sweeps, "objective": obj}


def random_start(spec: PermutationSpec, gen: torch.Generator) -> Perm:
    """A random permutation of every group (blocks moved together), drawn from `gen` in `sizes` order."""
    out: Perm = {}
    families = spec.families()
    for g, n in spec.sizes.items():
        if g in out:
            continue
        if g not in spec.blocks:
            out[g] = torch.randperm(n, generator=gen)
            continue
        members = families[spec.blocks[g][0]]
        sigma = torch.randperm(n // spec.block(g), generator=gen)
        for h in members:
            b = spec.block(h)
            out[h] = compose_blocks(sigma, [torch.randperm(b, generator=gen) for _ in range(len(sigma))], b)
    return out


def descend(spec: PermutationSpec, costs, perm: Perm, max_sweeps: int, gen,
            names: list[str] | None = None) -> tuple[Perm, int]:
    """Coordinate ascent over the groups `names` (default: all), in place on `perm`; returns it and the sweeps.

    `costs(g, perm)` is group g's cost matrix given the other groups' current
    permutations and `costs.changed(g)` says g moved. Groups outside `names` stay fixed. A block family is
    one step: its groups are solved together (`solve_blocks`).
    """
    names = set(spec.groups if names is None else names)
    steps = [s for s in spec.steps() if set(s) <= names]
    by_key = spec.by_key()
    # a group's cost depends only on the groups sharing a tensor with it
    touching = {g: {h for e in spec.groups[g] for _, items in by_key[e.key] for h, _ in items} for g in spec.groups}
    coupled = {s: {t for t in steps if t != s and any(h in touching[g] for g in s for h in t)} for s in steps}
    dirty, sweeps = set(steps), 0
    while dirty and sweeps < max_sweeps:
        sweeps += 1
        for si in torch.randperm(len(steps), generator=gen).tolist():
            step = steps[si]
            if step not in dirty:
                continue
            dirty.discard(step)
            if step[0] not in spec.blocks:
                new, gained = _solve(costs(step[0], perm), perm[step[0]])
                news = [new]
            else:
                mats = [costs(g, perm) for g in step]
                news = solve_blocks(mats, [spec.block(g) for g in step])
                old_val = sum(_value(c, perm[g]) for c, g in zip(mats, step))
                new_val = sum(_value(c, p) for c, p in zip(mats, news))
                gained = new_val > old_val + 1e-12 * max(1.0, abs(old_val))
            if gained:
                for g, new in zip(step, news):
                    perm[g] = new
                    costs.changed(g)
                dirty |= coupled[step]
    return perm, sweeps
