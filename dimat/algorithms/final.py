"""The final global merge: all agents into one model, BatchNorm re-estimated on pooled statistics.

After a permutation-merging run the agents do not share one basis (each
aligned its neighbours into its own), so a plain average collapses; they are
first brought into a common basis with multi-model weight matching
(`dimat.merge.align_many`). BatchNorm statistics of the merged model are then
estimated on every agent's own data and pooled exactly (count-weighted means,
law of total variance), so no agent's samples leave it.
"""

from __future__ import annotations

import numpy as np
import torch

from dimat.flat import FlatLayout


def global_average(states: list[np.ndarray], layout: FlatLayout, spec=None) -> np.ndarray:
    """Mean of all agents' flat states, after aligning them into one basis when `spec` is given."""
    if spec is None or len(states) < 2:
        return np.mean(np.stack(states).astype(np.float64), axis=0).astype(np.float32)
    from dimat import merge as mergelib

    dicts = [layout.views(s) for s in states]
    aligned, _ = mergelib.align_many(dicts, spec, method="weight")
    merged = mergelib.merge(aligned, [1.0 / len(aligned)] * len(aligned))
    return layout.flatten(merged).numpy()


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
