"""The final global merge: all agents into one model, BatchNorm re-estimated on pooled statistics.

After a permutation-merging run the agents do not share one basis (each
aligned its neighbours into its own), so a plain average collapses; they are
first brought into a common basis with multi-model weight matching
(`dimat.merge.align_many`). BatchNorm statistics of the merged model are then
estimated on every agent's own data and pooled exactly (count-weighted means,
law of total variance), so no agent's samples leave it.

With `merge.repair=true` REPAIR replaces that BatchNorm step (`repair_global`):
every agent measures its own aligned model's channel statistics on its own
data, their uniform average is the target, and the merged model is corrected
one point at a time in forward order, each point measured on every agent's
data (as corrected so far) and pooled. Only per-channel moments and the
corrections travel; the result is what one pass over the union of the
agents' samples would give.
"""

from __future__ import annotations

import numpy as np
import torch

from dimat import merge as mergelib
from dimat.flat import FlatLayout, as_tensor
from dimat.merge.repair import Moments, RepairPoint, correct, pool, point_stats


def global_alignment(states: list[np.ndarray], layout: FlatLayout, spec=None) -> tuple[np.ndarray, list | None]:
    """The mean of all agents' flat states, after aligning them into one basis when `spec` is given (multi-model
    weight matching), and the permutation that brought each state there (None: no spec)."""
    if spec is None or len(states) < 2:
        return np.mean(np.stack(states).astype(np.float64), axis=0).astype(np.float32), None
    dicts = [layout.views(s) for s in states]
    aligned, perms = mergelib.align_many(dicts, spec, method="weight")
    merged = mergelib.merge(aligned, [1.0 / len(aligned)] * len(aligned))
    return layout.flatten(merged).numpy(), perms


def repair_global(backend, merged: np.ndarray, model: torch.nn.Module, perms: dict[int, dict] | None, spec,
                  example: np.ndarray, samples: int) -> tuple[np.ndarray, int]:
    """REPAIR of the final merge (module docstring): `model` is one of the agents' architecture, `perms` each
    agent's permutation into the common basis (None: no alignment), `spec` the run's permutation spec (None
    after plain averaging: derived here to find the hidden layers). Returns the repaired state and the bytes
    that travelled."""
    example_t = torch.from_numpy(np.ascontiguousarray(example))
    spec = spec if spec is not None else mergelib.spec_for(model, example_t)
    points = mergelib.repair_points(model, spec, example_t)
    layout = FlatLayout.of(model)
    stats = [x for h in backend.run(endpoint_stats, perms, spec, points, samples) for x in h]
    targets = mergelib.interpolate(stats, [1.0 / len(stats)] * len(stats))
    vec = torch.from_numpy(merged.copy())
    state = layout.views(vec)
    for p in points:  # in forward order: each point is measured on the model corrected up to it
        parts = [x for h in backend.run(merged_point_stats, vec.numpy(), p, samples) for x in h]
        correct(state, p, pool(parts), targets[p.name])
    # per agent: moments (2 per channel and a count) up twice, a correction (2 per channel) down, per point
    floats = sum(2 * (2 * p.channels + 1) + 2 * p.channels for p in points)
    return vec.numpy(), 4 * floats * len(stats)


def endpoint_stats(host, perms: dict[int, dict] | None, spec, points: list[RepairPoint],
                   samples: int) -> list[dict[str, Moments]]:
    """Host op: each hosted agent's own model, in the common basis, measured on its own data."""
    model, flat = host.scratch_model()
    out = []
    for i, a in host.agents.items():
        vec = as_tensor(a.state())
        if perms is not None:
            vec = a.layout.flatten(mergelib.apply_permutation(spec, perms[i], a.layout.views(vec)))
        flat.copy_(vec)
        out.append(mergelib.channel_stats(model, points, a.local_samples(samples)))
    return out


def merged_point_stats(host, vec: np.ndarray, point: RepairPoint, samples: int) -> list[Moments]:
    """Host op: what REPAIR needs at one point of the merged model, on each hosted agent's own data."""
    model, flat = host.scratch_model()
    flat.copy_(as_tensor(vec))
    return [point_stats(model, point, a.local_samples(samples)) for a in host.agents.values()]


def bn_keys(layout: FlatLayout) -> list[str]:
    return [k for k in layout.keys if k.endswith("running_mean") or k.endswith("running_var")]


def pool_bn_stats(per_shard: list[tuple[int, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """Exact pooled mean and variance from per-shard (count, {running_mean, running_var}).

    var = Σ n_a (var_a + (mean_a − mean)²) / Σ n_a for each BatchNorm layer.
    """
    counts = np.array([n for n, _ in per_shard], dtype=np.float64)
    total = counts.sum()
    out = {}
    for key in per_shard[0][1]:
        if not key.endswith("running_mean"):
            continue
        prefix = key[: -len("running_mean")]
        means = np.stack([s[key] for _, s in per_shard]).astype(np.float64)
        vars_ = np.stack([s[prefix + "running_var"] for _, s in per_shard]).astype(np.float64)
        mean = counts @ means / total
        var = counts @ (vars_ + (means - mean) ** 2) / total
        out[key], out[prefix + "running_var"] = mean.astype(np.float32), var.astype(np.float32)
    return out


def set_bn_stats(vec: np.ndarray, layout: FlatLayout, stats: dict[str, np.ndarray]) -> np.ndarray:
    """A copy of `vec` with the given BatchNorm statistics written in."""
    out = torch.from_numpy(vec.copy())
    views = layout.views(out)
    for k, v in stats.items():
        views[k].copy_(torch.from_numpy(v))
    return out.numpy()
