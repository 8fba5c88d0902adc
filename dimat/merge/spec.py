"""Permutation specs: which state axes move together when hidden units are permuted.

`PermutationSpec.from_model(model, example_input)` derives one with torch.fx
(`dimat.merge.trace`: every element of every tensor of a forward pass is
labelled with the unit it carries), then runs the self-test `check_spec`.

A group is a set of hidden units permuted by one permutation. Each of its
entries says where the units sit along one axis of one state tensor: the
plain form ``(key, axis)`` -- one unit per position, in order -- or an `Axis`
with a layout (`Span`):

- ``offset``: the units start there (``torch.cat`` of several groups' units);
- ``tiles``: the span is that many copies of the units one after another (an
  RNN's gates stacked on one axis: ``Axis("gru.weight_ih_l0", 0, tiles=3)``);
- ``repeat``: each unit fills that many consecutive positions (a ``[C, H, W]``
  map flattened channel-major: ``Axis("fc.weight", 1, repeat=H * W)``);
- ``copies``: in a blocked group, each block appears that many times in a row
  (query heads sharing one key/value head);
- ``units``: any other layout, as the unit at each position of the span (-1
  where the position belongs to another group).

A blocked group (``blocks[g] = (family, size)``) moves its units in blocks of
``size`` consecutive units, with a permutation inside each block: attention
heads. Groups naming the same family move their blocks together (a head's
query/key dims and its value dims). Everything else is a plain permutation.

A hand-written spec is the same value, e.g. for ``Sequential(Linear(4, 5),
BatchNorm1d(5), ReLU(), Linear(5, 3))``::

    hidden = (("0.weight", 0), ("0.bias", 0), ("1.weight", 0), ("1.bias", 0),
              ("1.running_mean", 0), ("1.running_var", 0), ("3.weight", 1))
    spec = PermutationSpec(groups={"hidden": hidden}, sizes={"hidden": 5},
                           consumers={"hidden": ("3",)})
    check_spec(model, spec, example_input)   # SpecError names a wrong group

``consumers[g]`` names where activation matching reads group g's units: a
module name (its first input, on the axis that module type reads: the last for
``Linear``/``LayerNorm``, 1 for convolutions and BatchNorm) or a `Site`. Write
a spec where a model cannot be traced (data-dependent control flow) and keep it
beside the model, as a ``permutation_spec()`` method. `apply_permutation(spec,
perm, state)` permutes a state by a spec (every matching method's result is
applied with it).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._pytree import tree_leaves


class SpecError(ValueError):
    """A permutation spec could not be derived or fails its self-test."""


Perm = dict[str, torch.Tensor]  # group -> int64 index vector: unit i of the aligned model is unit perm[g][i]


@dataclass(frozen=True, kw_only=True)
class Span:
    """Where a group's units sit along one axis; the default is the whole axis, one unit per position, in order.

    Positions from ``offset`` hold ``tiles`` × blocks × ``copies`` × units of a block × ``repeat`` (module
    docstring), or, with ``units``, the unit at each position (-1: not this group's).
    """

    offset: int = 0
    tiles: int = 1
    repeat: int = 1
    copies: int = 1
    units: tuple[int, ...] | None = None

    def plain(self) -> bool:
        return self.offset == 0 and self.tiles == self.repeat == self.copies == 1 and self.units is None

    def layout_kwargs(self) -> dict:
        """The non-default layout fields (for printing a spec as code)."""
        base = Span()
        return {k: getattr(self, k) for k in ("offset", "tiles", "repeat", "copies", "units")
                if getattr(self, k) != getattr(base, k)}

    def table(self, n: int, block: int | None = None) -> torch.Tensor:
        """``where[c, u]``: the position of unit u's c-th occurrence (in position order), an int64 [k, n]."""
        return _table(self.offset, self.tiles, self.repeat, self.copies, self.units, n, block or n)

    def length(self, n: int) -> int:
        """The number of positions the span covers."""
        return len(self.units) if self.units is not None else self.tiles * self.copies * n * self.repeat


@functools.lru_cache(maxsize=4096)
def _table(offset: int, tiles: int, repeat: int, copies: int, units: tuple[int, ...] | None, n: int,
           block: int) -> torch.Tensor:
    if min(tiles, repeat, copies) < 1 or offset < 0:
        raise SpecError(f"a layout needs offset >= 0 and tiles, repeat, copies >= 1 (got offset={offset}, "
                        f"tiles={tiles}, repeat={repeat}, copies={copies})")
    if units is not None:
        u = torch.tensor(units, dtype=torch.long)
        pos = (u >= 0).nonzero().flatten()
        unit = u[pos]
        if len(unit) and int(unit.max()) >= n:
            raise SpecError(f"a layout's units name unit {int(unit.max())} of a group of {n}")
    else:
        if n % block:
            raise SpecError(f"a group of {n} units does not split into blocks of {block}")
        nb = n // block
        unit = (torch.arange(nb)[:, None] * block + torch.arange(block)[None, :])  # [nb, block]
        unit = unit[None, :, None, :, None].expand(tiles, nb, copies, block, repeat).reshape(-1)
        pos = torch.arange(len(unit))
    counts = torch.bincount(unit, minlength=n)
    k = int(counts[0]) if n else 0
    if n == 0 or k == 0 or not bool((counts == k).all()):
        raise SpecError(f"a layout must hold every unit of its group equally often (counts {counts.tolist()[:8]})")
    order = torch.argsort(unit * (len(unit) + 1) + pos)
    return (pos[order] + offset).view(n, k).T.contiguous()


@dataclass(frozen=True, repr=False)
class Axis(Span):
    """One axis of one state tensor carrying a group's units, e.g. ``Axis("gru.weight_hh_l0", 0, tiles=3)``."""

    key: str
    axis: int

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.layout_kwargs().items())
        return f"Axis({self.key!r}, {self.axis}{extra})"


@dataclass(frozen=True, repr=False)
class Site(Span):
    """Where activation matching reads a group's units: module `module`'s input ``arg`` (``output=True``: its
    output, item ``arg`` when it returns a tuple), on axis `axis` (None: the axis the module type reads --
    the last for Linear, LayerNorm, attention and recurrent layers, 1 for convolutions and BatchNorm), with
    the group's units laid out along it as the span says. Extra positions (tokens, spatial positions, a
    unit's copies) count as samples. A module called several times contributes every call."""

    module: str
    axis: int | None = None
    output: bool = False
    arg: int = 0

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in (("axis", self.axis), ("output", self.output), ("arg", self.arg))
                        if v != {"axis": None, "output": False, "arg": 0}[k])
        extra += "".join(f", {k}={v!r}" for k, v in self.layout_kwargs().items())
        return f"Site({self.module!r}{extra})"


def _entry(e) -> Axis:
    if isinstance(e, Axis):
        return e
    key, axis = e  # the plain form (key, axis)
    return Axis(key, int(axis))


def _site(s) -> Site:
    return s if isinstance(s, Site) else Site(str(s))


@dataclass(frozen=True)
class PermutationSpec:
    """Which state axes permute together.

    - `groups[g]`: the axes permuted by group g, each ``(key, axis)`` or an `Axis` with a layout, e.g.
      ``(("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1))``. BatchNorm weight, bias, running_mean
      and running_var belong here; integer buffers (num_batches_tracked) never do. Stored as `Axis`.
    - `sizes[g]`: the permutation's length (the number of units).
    - `consumers[g]`: where activation matching reads the units (module names or `Site`s; stored as
      `Site`). A residual stream has several. A group without any is matched by its weights.
    - `blocks[g]`: ``(family, block size)`` for a group whose units move in blocks (module docstring).
    - `notes`: why a derived spec left units pinned (for the start-up report).

    Keys absent from the spec are left alone by `apply_permutation`.
    """

    groups: dict[str, tuple[Axis, ...]]
    sizes: dict[str, int]
    consumers: dict[str, tuple[Site, ...]] = field(default_factory=dict)
    blocks: dict[str, tuple[str, int]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", {g: tuple(_entry(e) for e in es) for g, es in self.groups.items()})
        object.__setattr__(self, "consumers", {g: tuple(_site(s) for s in ss) for g, ss in self.consumers.items()})
        object.__setattr__(self, "sizes", {g: int(n) for g, n in self.sizes.items()})

    @classmethod
    def from_model(cls, model: nn.Module, example_input: torch.Tensor, *, self_test: bool = True) -> PermutationSpec:
        """Derive the spec by tracing `model` on `example_input` (a batch); SpecError if untraceable or wrong."""
        from dimat.merge.trace import derive

        spec = derive(model, example_input)
        if self_test:
            check_spec(model, spec, example_input)
        return spec

    def axes_of(self, key: str) -> list[tuple[str, Axis]]:
        """(group, entry) pairs that permute state tensor `key`."""
        return [(g, e) for g, es in self.groups.items() for e in es if e.key == key]

    def block(self, g: str) -> int:
        """Group g's block size (its size where it is not blocked)."""
        return self.blocks[g][1] if g in self.blocks else self.sizes[g]

    def families(self) -> dict[str, tuple[str, ...]]:
        """Block family -> its groups, in group order."""
        out: dict[str, list[str]] = {}
        for g in self.groups:
            if g in self.blocks:
                out.setdefault(self.blocks[g][0], []).append(g)
        return {f: tuple(gs) for f, gs in out.items()}

    def steps(self) -> list[tuple[str, ...]]:
        """The units a matcher solves at once, in group order: a plain group alone, a block family together."""
        seen, out = set(), []
        fams = self.families()
        for g in self.groups:
            step = fams[self.blocks[g][0]] if g in self.blocks else (g,)
            if step not in seen:
                seen.add(step)
                out.append(step)
        return out

    @functools.cached_property
    def tables(self) -> dict[tuple[str, int], list[tuple[str, torch.Tensor]]]:
        """(key, axis) -> [(group, where[k, n])] for every axis the spec permutes (axis as written)."""
        out: dict[tuple[str, int], list[tuple[str, torch.Tensor]]] = {}
        for g, es in self.groups.items():
            for e in es:
                out.setdefault((e.key, e.axis), []).append((g, e.table(self.sizes[g], self.block(g))))
        return out

    def by_key(self) -> dict[str, list[tuple[int, list[tuple[str, torch.Tensor]]]]]:
        """key -> [(axis, [(group, where)])]."""
        out: dict[str, list] = {}
        for (key, axis), items in self.tables.items():
            out.setdefault(key, []).append((axis, items))
        return out

    def identity(self) -> Perm:
        return {g: torch.arange(n) for g, n in self.sizes.items()}


def spec_for(model: nn.Module, example_input: torch.Tensor) -> PermutationSpec:
    """The permutation spec of `model`: its own `permutation_spec()` method's, when it has one (a spec
    written by hand beside the model), else derived by torch.fx; either way self-tested (`check_spec`)."""
    own = getattr(model, "permutation_spec", None)
    if not callable(own):
        return PermutationSpec.from_model(model, example_input)
    spec = own()
    if not isinstance(spec, PermutationSpec):
        raise SpecError(f"{type(model).__name__}.permutation_spec() returned {type(spec).__name__}: "
                        "return a dimat.merge.PermutationSpec")
    check_spec(model, spec, example_input)
    return spec


def _plain_fast(items: list[tuple[str, torch.Tensor]], length: int) -> str | None:
    """The group when one plain entry covers the whole axis (then the axis permutation is the group's)."""
    if len(items) == 1:
        g, where = items[0]
        if where.shape == (1, length) and bool((where[0] == torch.arange(length)).all()):
            return g
    return None


def axis_permutation(items: list[tuple[str, torch.Tensor]], length: int, perm: Perm) -> torch.Tensor | None:
    """The permutation of an axis of `length` positions induced by the groups in `perm` (None: no group
    moves it): position where[c, u] takes the value at where[c, perm[u]]."""
    moving = [(g, w) for g, w in items if g in perm]
    if not moving:
        return None
    if len(moving) == 1 and _plain_fast(moving, length):
        return perm[moving[0][0]]
    rho = torch.arange(length)
    for g, where in moving:
        rho[where.reshape(-1)] = where[:, perm[g]].reshape(-1)
    return rho


def apply_permutation(spec: PermutationSpec, perm: Perm, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A new state with every tensor permuted along its groups' axes.

    Keys outside the spec, and groups missing from `perm`, are left as they
    are, so a partial dict (e.g. optimizer buffers keyed by parameter name) works.
    """
    axes = spec.by_key()
    out = {}
    for key, t in state.items():
        for axis, items in axes.get(key, ()):
            rho = axis_permutation(items, t.shape[axis], perm)
            if rho is not None:
                t = t.index_select(axis, rho.to(t.device))
        out[key] = t
    return out


def compose_blocks(sigma: torch.Tensor, inner: list[torch.Tensor], block: int) -> torch.Tensor:
    """The permutation of a blocked group: aligned unit (a, i) is unit (sigma[a], inner[a][i]) of the other."""
    return torch.cat([int(s) * block + inner[a] for a, s in enumerate(sigma.tolist())])


def random_permutation(spec: PermutationSpec, seed: int = 0) -> Perm:
    """A seeded random permutation of every group, blocks moved together (self-tests, planted permutations)."""
    gen = torch.Generator().manual_seed(seed)
    out: Perm = {}
    for step in spec.steps():
        g0 = step[0]
        if g0 not in spec.blocks:
            out[g0] = torch.randperm(spec.sizes[g0], generator=gen)
            continue
        nb = spec.sizes[g0] // spec.block(g0)
        sigma = torch.randperm(nb, generator=gen)
        for g in step:
            b = spec.block(g)
            out[g] = compose_blocks(sigma, [torch.randperm(b, generator=gen) for _ in range(nb)], b)
    return out


def _movers(spec: PermutationSpec, perm: Perm) -> list[tuple[str, Perm]]:
    """Parts of `perm` that are valid alone, to locate a failing one: each plain group; per blocked group, its
    in-block permutations; per family, its block permutation on all its groups."""
    out = []
    for step in spec.steps():
        g0 = step[0]
        if g0 not in spec.blocks:
            out.append((f"group {g0}", {g0: perm[g0]}))
            continue
        sigma = perm[g0][:: spec.block(g0)] // spec.block(g0)
        for g in step:
            b = spec.block(g)
            inner = perm[g].view(-1, b) % b
            out.append((f"group {g} (within its blocks)", {g: compose_blocks(torch.arange(len(sigma)), list(inner), b)}))
        fam = spec.blocks[g0][0]
        moved = {g: compose_blocks(sigma, [torch.arange(spec.block(g))] * len(sigma), spec.block(g)) for g in step}
        out.append((f"block family {fam} (groups {', '.join(step)})", moved))
    return out


def _check_structure(spec: PermutationSpec, state: dict[str, torch.Tensor], modules: dict[str, nn.Module]) -> None:
    """Keys, axes, sizes, layouts and blocks must fit the model (a hand-written spec's typos would otherwise
    pass silently); no position of an axis may carry two groups."""
    fams: dict[str, int] = {}
    for g, (fam, b) in spec.blocks.items():
        if g not in spec.groups:
            raise SpecError(f"blocks names group {g}, which is not in groups")
        if b < 1 or spec.sizes.get(g, 0) % b:
            raise SpecError(f"group {g}: its {spec.sizes.get(g)} units do not split into blocks of {b}")
        if fams.setdefault(fam, spec.sizes[g] // b) != spec.sizes[g] // b:
            raise SpecError(f"block family {fam}: its groups have different numbers of blocks")
    owner: dict[tuple[str, int, int], str] = {}
    for g, es in spec.groups.items():
        if g not in spec.sizes:
            raise SpecError(f"group {g} has no entry in sizes")
        for e in es:
            if e.key not in state:
                raise SpecError(f"group {g}: state key {e.key!r} is not in the model")
            t = state[e.key]
            n = spec.sizes[g]
            if not t.is_floating_point() or not -t.dim() <= e.axis < t.dim():
                raise SpecError(f"group {g}: {e.key} (shape {tuple(t.shape)}, {t.dtype}) has no axis {e.axis}")
            axis = e.axis % t.dim()
            shared = any(f.key == e.key and f.axis % t.dim() == axis for h, fs in spec.groups.items() if h != g
                         for f in fs)
            if e.plain() and t.shape[axis] != n and not shared:  # a plain entry is the whole axis
                raise SpecError(
                    f"group {g}: {e.key} (shape {tuple(t.shape)}, {t.dtype}) has no axis {e.axis} of length {n}")
            try:
                where = e.table(n, spec.block(g))
            except SpecError as err:
                raise SpecError(f"group {g}: {e.key} axis {e.axis}: {err}") from None
            if int(where.max()) >= t.shape[axis]:
                raise SpecError(f"group {g}: {e.key} axis {e.axis} has {t.shape[axis]} positions; the layout "
                                f"{e.layout_kwargs() or '(plain)'} of {n} units needs {int(where.max()) + 1}")
            for p in where.reshape(-1).tolist():
                if owner.setdefault((e.key, axis, p), g) != g:
                    raise SpecError(f"{e.key} axis {e.axis} position {p} is in two groups, "
                                    f"{owner[(e.key, axis, p)]} and {g}")
        for s in spec.consumers.get(g, ()):
            if s.module not in modules:
                raise SpecError(f"group {g}: consumer module {s.module!r} is not in the model")


def check_spec(model: nn.Module, spec: PermutationSpec, example_input: torch.Tensor, *, seed: int = 0) -> None:
    """The self-test: a randomly permuted copy must compute the same outputs (eval mode), and activation
    matching must be able to read every consumer on the example input.

    Runs in float64 where the model allows, with randomised norm statistics and
    affine parameters (at init they are 0/1, which would hide a missed
    permutation). Raises SpecError naming the first group that breaks it.
    """
    state = model.state_dict()
    _check_structure(spec, state, dict(model.named_modules()))
    ref, x, tol = _test_copy(model, example_input, seed)
    permuted = copy.deepcopy(ref)
    perm = random_permutation(spec, seed)

    def same(p: Perm) -> bool:
        permuted.load_state_dict(apply_permutation(spec, p, ref.state_dict()))
        return _same_outputs(ref, permuted, x, tol)

    if not same(perm):
        for what, part in _movers(spec, perm):  # locate the first part whose permutation alone breaks equivalence
            if not same(part):
                gs = list(part)
                layers = sorted({e.key.rsplit(".", 1)[0] for g in gs for e in spec.groups[g]})
                raise SpecError(
                    f"permutation spec self-test failed: permuting {what} (layers {', '.join(layers[:6])}) "
                    "changes the model's outputs; a layer there mixes units in a way the spec misses"
                )
        raise SpecError("permutation spec self-test failed: permuting all groups together changes the outputs")
    if any(spec.consumers.values()):
        from dimat.merge.activation import read_sites

        read_sites(spec, ref, permuted, x)


def _test_copy(model: nn.Module, x: torch.Tensor, seed: int) -> tuple[nn.Module, torch.Tensor, float]:
    """An eval-mode copy with random norm parameters, in float64 if it runs there (else float32)."""
    ref = _randomise_norms(copy.deepcopy(model).eval(), seed)
    if x.is_floating_point():
        try:
            with torch.no_grad():
                ref.double()(x.double())
            return ref, x.double(), 1e-9
        except Exception:  # noqa: BLE001 - some ops have no float64 kernel: test in float32
            ref.float()
    return ref, x, 1e-4


NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm,
              *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))


@torch.no_grad()
def _randomise_norms(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if not isinstance(m, NORM_TYPES):
            continue
        for name, make in (("running_mean", torch.randn), ("bias", torch.randn)):
            if getattr(m, name, None) is not None:
                getattr(m, name).copy_(make(getattr(m, name).shape, generator=gen))
        for name in ("running_var", "weight"):
            if getattr(m, name, None) is not None:
                getattr(m, name).copy_(torch.rand(getattr(m, name).shape, generator=gen) + 0.5)
    return model


@torch.no_grad()
def _same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor, tol: float) -> bool:
    """Every output tensor (nested outputs included) agrees to ``tol`` relative to its scale."""
    outs = [(u, v) for u, v in zip(tree_leaves(a(x)), tree_leaves(b(x))) if isinstance(u, torch.Tensor)]
    return all(torch.allclose(u, v, rtol=tol, atol=tol * (1.0 + float(u.abs().max()))) for u, v in outs)


def coverage(model: nn.Module, spec: PermutationSpec) -> tuple[float, list[str]]:
    """The share of the model's floating-point parameter elements that some group permutes (on some axis),
    and the modules owning parameters no group touches (in model order)."""
    covered = {e.key for es in spec.groups.values() for e in es}
    total = moved = 0
    pinned: list[str] = []
    for name, p in model.named_parameters():
        if not p.is_floating_point():
            continue
        total += p.numel()
        if name in covered:
            moved += p.numel()
        else:
            owner = name.rsplit(".", 1)[0] if "." in name else name
            if owner not in pinned:
                pinned.append(owner)
    return (moved / total if total else 1.0), pinned


def alignment_report(model: nn.Module, spec: PermutationSpec, method: str) -> str | None:
    """One line for the start of a run when a permutation merge would align little of `model` (no group, or
    less than half of its parameters): which layers stay pinned and why; None when the spec covers most of it."""
    share, pinned = coverage(model, spec)
    if spec.groups and share >= 0.5:
        return None
    name = type(model).__name__
    why = "; ".join(spec.notes[:3]) or "no rule moves their units"
    shown = ", ".join(pinned[:4]) + (f" and {len(pinned) - 4} more" if len(pinned) > 4 else "")
    if not spec.groups:
        return (f"merge={method}: {name} has no hidden units the permutation spec can move, so this merge is plain "
                f"averaging (pinned: {shown}; {why}); give the model a permutation_spec() to align it")
    return (f"merge={method}: {name}'s permutation spec moves only {share:.0%} of its parameters; pinned: {shown} "
            f"({why}); those layers merge by plain averaging")
