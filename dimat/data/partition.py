"""Partitioners: how the training set is split among agents (iid, classes, dirichlet, shards).

Every partitioner returns disjoint, sorted int64 index arrays, one per agent,
and is deterministic for a seed. None loops without bound.
"""

from __future__ import annotations

import numpy as np

PARTITIONS: tuple[str, ...] = ("iid", "classes", "dirichlet", "shards")


class PartitionError(ValueError):
    """A split that cannot be made; the one-line message names the setting and the fix."""


def _by_class(labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(int(labels.max()) + 1)]


def iid(labels: np.ndarray, n: int, rng: np.random.Generator) -> list[list[np.ndarray]]:
    """floor(|class c| / N) samples of every class per agent (DIMAT's protocol); leftovers dropped."""
    parts: list[list[np.ndarray]] = [[] for _ in range(n)]
    for idx in _by_class(labels, rng):
        k = len(idx) // n
        for a in range(n):
            parts[a].append(idx[a * k : (a + 1) * k])
    if any(sum(map(len, p)) == 0 for p in parts):  # too little data for per-class shares
        order = rng.permutation(len(labels))
        return [[order[a::n]] for a in range(n)]
    return parts


def classes(labels: np.ndarray, n: int, rng: np.random.Generator) -> list[list[np.ndarray]]:
    """Disjoint classes. Agent a takes class c when c ≡ a (mod N) (N ≤ C); with N > C agent a takes
    class a mod C, and the agents holding the same class split its samples evenly."""
    by_class = _by_class(labels, rng)
    C = len(by_class)
    parts: list[list[np.ndarray]] = [[] for _ in range(n)]
    if n <= C:
        for c, idx in enumerate(by_class):
            parts[c % n].append(idx)
        return parts
    for c, idx in enumerate(by_class):
        holders = [a for a in range(n) if a % C == c]
        for a, chunk in zip(holders, np.array_split(idx, len(holders))):
            parts[a].append(chunk)
    return parts


def dirichlet(labels: np.ndarray, n: int, rng: np.random.Generator, alpha: float, min_samples: int):
    """Per class, agent shares ~ Dir(alpha). `min_samples` per agent are reserved first (uniformly at
    random), so the guarantee holds without resampling; the rest follows the Dirichlet shares."""
    order = rng.permutation(len(labels))
    reserved, rest = order[: n * min_samples], order[n * min_samples :]
    parts: list[list[np.ndarray]] = [[reserved[a * min_samples : (a + 1) * min_samples]] for a in range(n)]
    for c in range(int(labels.max()) + 1):
        idx = rest[labels[rest] == c]
        if len(idx) == 0:
            continue
        shares = rng.dirichlet(np.full(n, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for a, chunk in enumerate(np.split(idx, cuts)):
            parts[a].append(chunk)
    return parts


def shards(labels: np.ndarray, n: int, rng: np.random.Generator, per_agent: int):
    """Label-sorted data cut into N·k equal shards; each agent gets k random shards."""
    order = np.argsort(labels, kind="stable")
    pieces = np.array_split(order, n * per_agent)
    deal = rng.permutation(n * per_agent)
    return [[pieces[s] for s in deal[a * per_agent : (a + 1) * per_agent]] for a in range(n)]


def partition(labels: np.ndarray, n_agents: int, method: str = "iid", *, alpha: float = 0.5,
              min_samples: int = 10, shards_per_agent: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Split sample indices among `n_agents` agents with `method` (see module docstring)."""
    labels = np.asarray(labels)
    if method not in PARTITIONS:
        raise PartitionError(f"partition={method} is unknown: use one of {', '.join(PARTITIONS)}")
    if n_agents < 1:
        raise PartitionError(f"agents={n_agents} must be >= 1")
    if n_agents > len(labels):
        raise PartitionError(
            f"agents={n_agents} but the dataset has {len(labels)} training samples: use fewer agents or more data"
        )
    rng = np.random.default_rng(seed)
    if method == "iid":
        parts = iid(labels, n_agents, rng)
    elif method == "classes":
        parts = classes(labels, n_agents, rng)
    elif method == "dirichlet":
        if not alpha > 0:
            raise PartitionError(f"partition.alpha={alpha} must be > 0 (small: skewed, large: near IID)")
        parts = dirichlet(labels, n_agents, rng, alpha, min(min_samples, len(labels) // n_agents))
    else:
        if shards_per_agent < 1 or n_agents * shards_per_agent > len(labels):
            raise PartitionError(
                f"partition.shards_per_agent={shards_per_agent} with agents={n_agents} needs "
                f"{n_agents * shards_per_agent} shards but there are {len(labels)} samples: lower it"
            )
        parts = shards(labels, n_agents, rng, shards_per_agent)
    return [np.sort(np.concatenate(p)).astype(np.int64) if p else np.empty(0, np.int64) for p in parts]


def class_histogram(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """[agents, classes] sample counts."""
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts]).astype(np.int64)
