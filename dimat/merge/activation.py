"""Activation matching: pair hidden units by the Pearson correlation of what the next layers read.

For every group, forward hooks at its sites (`dimat.merge.spec.Site`: the
inputs of the modules that read its units -- or, for attention's query/key
dims, the outputs of the layers that make them) see the same data flow through
the reference and the other models. Each site is read on the axis that module
reads (the last axis for a Linear or LayerNorm on a sequence: tokens count as
samples; axis 1 for a convolution: spatial positions count as samples), with
the group's units picked out of it by the site's layout (a flattened map's
positions, one group's part of a concatenation). A module called several times
in one forward (an RNN cell unrolled by hand) is paired call by call: the k-th
call of each other model with the reference's k-th call.

Only sufficient statistics are kept -- sums, squares and one cross-product
matmul per site, call, batch and other model -- so the cost stays close to the
forward passes themselves: the reference runs once per batch for all the
models matched against it. Activations are shifted by a few samples' means
first, which keeps E[xy] − E[x]E[y] accurate in float32 matmuls.

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
A group with no site (heads inside nn.MultiheadAttention, the inner layers of
an nn.GRU) is solved by that weight term alone, i.e. by weight matching with
the other groups' permutations fixed. Blocked groups (attention heads) are
matched as blocks, then unit by unit inside each block (`solve_blocks`).
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from torch import Tensor, nn

from dimat.layout import channels_last, nhwc
from dimat.merge.spec import Perm, PermutationSpec, Site, SpecError
from dimat.merge.trace import eval_mode
from dimat.merge.weight import CostMatrices, descend, solve_assignment, solve_blocks

TIE_WEIGHT = 1e-3  # the weight term's largest possible entry: below any correlation difference that matters
FEATURE_LAST = (nn.Linear, nn.LayerNorm, nn.Embedding, nn.MultiheadAttention, nn.GRU, nn.LSTM, nn.RNN,
                *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))


def site_axis(site: Site, module: nn.Module) -> int:
    """The feature axis a site reads: its own, else the module type's (last for Linear-like layers, else 1)."""
    if site.axis is not None:
        return site.axis
    return -1 if isinstance(module, FEATURE_LAST) else 1


def _centred_channels_first(x: Tensor, shift: Tensor) -> Tensor:
    """[B, C, *spatial] − shift → a fresh float32 [C, B·spatial] (channels × samples), in one pass."""
    xt = x.detach().transpose(0, 1)
    out = torch.empty(xt.shape, dtype=torch.float32, device=x.device)
    torch.sub(xt, shift.view(-1, *[1] * (xt.dim() - 1)), out=out)
    return out.view(x.shape[1], -1)


class _Reader:
    """A site's tensor as its group's units × samples (centred by `shift`, float32)."""

    def __init__(self, axis: int, where: Tensor, what: str) -> None:
        self.axis, self.where, self.what = axis, where, what
        k, n = where.shape
        self.prefix = k == 1 and bool((where[0] == torch.arange(n)).all())  # the units are the axis' first n

    def __call__(self, x: Tensor, shift: Tensor | None) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() == 0:
            raise SpecError(f"activation matching reads {self.what}, which is not a floating-point tensor")
        axis = self.axis % x.dim()
        k, n = self.where.shape
        whole = self.prefix and x.shape[axis] == n
        if int(self.where.max()) >= x.shape[axis]:
            raise SpecError(f"activation matching reads {self.what} on axis {self.axis}, of length {x.shape[axis]}: "
                            f"the group's {n} units (layout: {k} occurrence(s)) do not fit it")
        if shift is None:
            shift = torch.zeros(n, device=x.device)
        if whole and axis == 1:
            return _centred_channels_first(x, shift)
        f = x.detach().movedim(axis, -1)
        if not whole:
            f = f.index_select(-1, self.where.to(x.device).reshape(-1))
        f = f.reshape(-1, n).T  # occurrences, tokens and positions count as samples
        out = torch.empty(f.shape, dtype=torch.float32, device=x.device)
        torch.sub(f, shift[:, None], out=out)
        return out


class _Side:
    """One model's running sums and squares of a site's (shifted) units."""

    def __init__(self) -> None:
        self.shift: Tensor | None = None
        self.sums: Tensor | float = 0.0
        self.squares: Tensor | float = 0.0

    def centred(self, read: _Reader, x: Tensor) -> Tensor:
        if self.shift is None:  # a few samples' means: enough to avoid cancellation
            self.shift = read(x[:8], None).mean(1)
        c = read(x, self.shift)
        self.sums = self.sums + c.sum(1).double()  # float32 is fine on centred data
        self.squares = self.squares + torch.linalg.vector_norm(c, dim=1).double() ** 2
        return c

    def spread(self, n: int) -> tuple[Tensor, Tensor]:
        mean = self.sums / n
        return mean, (self.squares / n - mean * mean).clamp_min(0).sqrt()


class _Moments:
    """One site: the reference's sums once, and each other model's sums and cross-products, call by call."""

    def __init__(self, others: int, read: _Reader) -> None:
        self.read = read
        self.n = 0
        self.ref = _Side()
        self.others = [_Side() for _ in range(others)]
        self.cross: list[Tensor | float] = [0.0] * others
        self.current: list[Tensor] = []  # the reference's centred calls of this batch, read by every other model
        self.calls = 0

    def begin(self, reference: bool) -> None:
        if reference:
            self.current = []
        self.calls = 0

    def add_reference(self, x: Tensor) -> None:
        c = self.ref.centred(self.read, x)
        self.current.append(c)
        self.n += c.shape[1]

    def add_other(self, k: int, y: Tensor) -> None:
        if self.calls >= len(self.current):
            raise SpecError(f"activation matching: {self.read.what} runs more often in another model than in the "
                            "reference on the same batch (data-dependent control flow)")
        self.cross[k] = self.cross[k] + (self.current[self.calls] @ self.others[k].centred(self.read, y).T).double()
        self.calls += 1

    def end(self) -> None:
        if self.calls != len(self.current):
            raise SpecError(f"activation matching: {self.read.what} runs {len(self.current)} times in the reference "
                            f"and {self.calls} times in another model on the same batch")

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


def _site_tensor(module: nn.Module, site: Site, args: tuple, kwargs: dict, output) -> Tensor:
    if site.output:
        return output[site.arg] if isinstance(output, (tuple, list)) else output
    if site.arg < len(args):
        return args[site.arg]
    names = [p for p in inspect.signature(module.forward).parameters]
    return kwargs.get(names[site.arg]) if site.arg < len(names) else None


def _hook(entries: list[tuple[Site, _Moments]], other: int | None):
    def fn(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        for site, moments in entries:
            x = _site_tensor(module, site, args, kwargs, output)
            if other is None:
                moments.add_reference(x)
            else:
                moments.add_other(other, x)

    return fn


def _sites(spec: PermutationSpec, modules: dict[str, nn.Module]) -> list[tuple[str, Site, _Reader]]:
    out = []
    for g, sites in spec.consumers.items():
        if g not in spec.sizes:
            continue
        for s in sites:
            if s.module not in modules:
                raise ValueError(f"activation matching: consumer module {s.module!r} is not in the model")
            what = f"group {g} at {s.module}'s {'output' if s.output else 'input'}" + (f" {s.arg}" if s.arg else "")
            where = s.table(spec.sizes[g], spec.block(g))
            out.append((g, s, _Reader(site_axis(s, modules[s.module]), where, what)))
    return out


@torch.no_grad()
def _collect(spec: PermutationSpec, ref_model: nn.Module, other_models: list[nn.Module], data: Tensor,
             batch_size: int, layout: bool = True) -> dict[str, list[_Moments]]:
    """One pass over `data`: per batch the reference once, then every other model. Group -> its sites' moments."""
    models = [ref_model, *other_models]
    modules = [dict(model.named_modules()) for model in models]
    sites = _sites(spec, modules[0])
    moments = [_Moments(len(other_models), read) for _, _, read in sites]
    per_module: dict[str, list[tuple[Site, _Moments]]] = {}
    for (_, s, _), m in zip(sites, moments):
        per_module.setdefault(s.module, []).append((s, m))
    for found in modules[1:]:
        missing = per_module.keys() - found.keys()
        if missing:
            raise ValueError(f"activation matching: consumer modules {sorted(missing)[:3]} are not in the model")
    handles = [found[name].register_forward_hook(_hook(entries, k - 1 if k else None), with_kwargs=True)
               for k, found in enumerate(modules) for name, entries in per_module.items()]
    probe = data[: min(len(data), 4)]
    with eval_mode(*models, hooks=handles), contextlib.ExitStack() as stack:
        # faster convolutions (`layout`: worth its one-off check on real data, not on the self-test's example)
        fast = layout and all([stack.enter_context(channels_last(model, probe)) for model in models])
        for s in range(0, len(data), batch_size):
            xb = nhwc(data[s : s + batch_size]) if fast else data[s : s + batch_size]
            for m in moments:
                m.begin(reference=True)
            ref_model(xb)
            for model in other_models:
                for m in moments:
                    m.begin(reference=False)
                model(xb)
                for m in moments:
                    m.end()
    out: dict[str, list[_Moments]] = {}
    for (g, _, _), m in zip(sites, moments):
        out.setdefault(g, []).append(m)
    return out


def read_sites(spec: PermutationSpec, ref_model: nn.Module, other_model: nn.Module, data: Tensor) -> None:
    """Run activation matching's hooks once on `data` (the self-test): SpecError where a site cannot be read."""
    try:
        _collect(spec, ref_model, [other_model], data, len(data), layout=False)
    except SpecError:
        raise
    except Exception as e:  # noqa: BLE001 - a hook's failure on a model's own input: say where
        raise SpecError(f"activation matching cannot read the spec's sites ({type(e).__name__}: "
                        f"{str(e).splitlines()[0]}): fix spec.consumers") from e


def activation_matching(spec: PermutationSpec, ref_model: nn.Module, other_model: nn.Module, data: Tensor, *,
                        batch_size: int = 256, eps: float = 1e-6) -> Perm:
    """The permutation mapping ``other_model`` into ``ref_model``'s basis, from activations on ``data``.

    Both models run in eval mode (flags restored), so BatchNorm statistics
    should be meaningful (``reset_bn`` first). Per group: the correlations of
    all its sites are summed (a residual stream has several), then one
    assignment; units left tied (dead, constant) are paired by weight
    similarity with the other groups' permutations applied (module docstring).
    """
    return activation_matching_many(spec, ref_model, [other_model], data, batch_size=batch_size, eps=eps)[0]


def activation_matching_many(spec: PermutationSpec, ref_model: nn.Module, other_models: list[nn.Module],
                             data: Tensor, *, batch_size: int = 256, eps: float = 1e-6) -> list[Perm]:
    """`activation_matching` of several models against one reference, whose activations are computed once.

    The other models must be distinct modules. Each result equals the pairwise call's.
    """
    if len({id(m) for m in (ref_model, *other_models)}) != len(other_models) + 1:
        raise ValueError("activation matching runs every model on each batch: pass distinct modules (copies)")
    moments = _collect(spec, ref_model, other_models, data, batch_size)
    ref_state = ref_model.state_dict()
    out = []
    for k, other in enumerate(other_models):
        # statistics on the model's device, the assignment solver on the CPU
        corr = {g: sum(m.correlation(k, eps) for m in ms).double().cpu() for g, ms in moments.items()}
        out.append(_tie_broken(spec, corr, ref_state, other.state_dict()))
    return out


class _WithTies:
    """Group g's cost: its correlations plus the weight-matching term scaled below every entry's TIE_WEIGHT."""

    def __init__(self, corr: dict[str, Tensor], weights: CostMatrices):
        self.corr, self.weights = corr, weights
        self.scale = TIE_WEIGHT / _entry_bound(weights)

    def __call__(self, g: str, perm: Perm) -> Tensor:
        w = self.scale * self.weights(g, perm).double()
        return self.corr[g] + w if g in self.corr else w

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
    """Coordinate ascent of Σ_g corr_g + weight term over every group (a group without sites: the weight term
    alone).

    One objective for all groups (a single scale for the weight term), so every
    accepted step raises it and the ascent ends. It starts from each group's
    correlation optimum: where nothing is tied, the first sweep confirms it.
    """
    perm = spec.identity()
    for step in spec.steps():
        if not all(g in corr for g in step):
            continue
        if step[0] in spec.blocks:
            perm |= dict(zip(step, solve_blocks([corr[g] for g in step], [spec.block(g) for g in step])))
        else:
            perm[step[0]] = solve_assignment(corr[step[0]])
    gen = torch.Generator().manual_seed(0)
    descend(spec, _WithTies(corr, CostMatrices(spec, ref, other)), perm, max_sweeps, gen)
    return perm
