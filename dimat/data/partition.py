"""Partitioners: how the training set is split among agents (iid, classes, dirichlet, shards).

Every partitioner returns disjoint, sorted int64 index arrays, one per agent, and is
deterministic for a seed. ``classes``, ``dirichlet`` and ``shards`` cover every sample;
``iid`` drops the per-class remainders. None loops without bound.
"""

from __future__ import annotations

import numpy as np

PARTITIONS: tuple[str, ...] = ("iid", "classes", "dirichlet", "shards")

_Parts = list[list[np.ndarray]]  # per agent, the chunks it was dealt


class PartitionError(ValueError):
    """A split that cannot be made; the one-line message names the setting and the fix."""


def _by_class(labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled sample indices of each class 0..max(label)."""
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(int(labels.max()) + 1)]


def _iid(labels: np.ndarray, n: int, rng: np.random.Generator) -> _Parts:
    """floor(|class c| / N) samples of every class per agent (DIMAT's protocol); leftovers dropped."""
    parts: _Parts = [[] for _ in range(n)]
    for idx in _by_class(labels, rng):
        k = len(idx) // n
        for a in range(n):
            parts[a].append(idx[a * k : (a + 1) * k])
    if any(sum(map(len, p)) == 0 for p in parts):  # every class smaller than N: no per-class share
        order = rng.permutation(len(labels))
        return [[order[a::n]] for a in range(n)]
    return parts


def _classes(labels: np.ndarray, n: int, rng: np.random.Generator) -> _Parts:
    """Disjoint classes. N <= C: agent a takes every class c with c mod N == a. N > C: agent a
    takes class a mod C, and the agents {c, c+C, c+2C, ...} split class c's samples evenly."""
    by_class = _by_class(labels, rng)
    C = len(by_class)
    parts: _Parts = [[] for _ in range(n)]
    for c, idx in enumerate(by_class):
        holders = [c % n] if n <= C else list(range(c, n, C))
        for a, chunk in zip(holders, np.array_split(idx, len(holders))):
            parts[a].append(chunk)
    return parts


def _dirichlet(labels: np.ndarray, n: int, rng: np.random.Generator, alpha: float, min_samples: int) -> _Parts:
    """Per class, agent shares ~ Dir(alpha). ``min_samples`` per agent are reserved first (uniformly
    at random), so the guarantee holds without any resampling; the rest follows the shares."""
    order = rng.permutation(len(labels))
    reserved, rest = order[: n * min_samples], order[n * min_samples :]
    parts: _Parts = [[reserved[a * min_samples : (a + 1) * min_samples]] for a in range(n)]
    for c in range(int(labels.max()) + 1):
        idx = rest[labels[rest] == c]
        if len(idx) == 0:
            continue
        shares = rng.dirichlet(np.full(n, alpha))
        if not np.isfinite(shares).all() or shares.sum() <= 0:  # all gammas underflowed at tiny alpha
            shares = np.eye(n)[rng.integers(n)]
        cuts = np.round(np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for a, chunk in enumerate(np.split(idx, cuts)):
            parts[a].append(chunk)
    return parts


def _shards(labels: np.ndarray, n: int, rng: np.random.Generator, per_agent: int) -> _Parts:
    """Label-sorted data (random order within a class) cut into N*k equal shards; k random shards each."""
    perm = rng.permutation(len(labels))
    order = perm[np.argsort(labels[perm], kind="stable")]
    pieces = np.array_split(order, n * per_agent)
    deal = rng.permutation(n * per_agent)
    return [[pieces[s] for s in deal[a * per_agent : (a + 1) * per_agent]] for a in range(n)]


def _start(labels: np.ndarray, n_agents: int) -> np.ndarray:
    labels = np.asarray(labels).reshape(-1)
    if n_agents < 1:
        raise PartitionError(f"agents={n_agents} must be >= 1")
    if n_agents > len(labels):
        raise PartitionError(f"agents={n_agents} but the dataset has {len(labels)} training samples: "
                             "use fewer agents or more data")
    return labels


def iid(labels: np.ndarray, n_agents: int, *, seed: int = 0) -> list[np.ndarray]:
    """floor(|class c| / N) samples of every class per agent (DIMAT's protocol); leftovers dropped."""
    labels = _start(labels, n_agents)
    return check_parts(_iid(labels, n_agents, np.random.default_rng(seed)), len(labels), n_agents, "iid")


def classes(labels: np.ndarray, n_agents: int, *, seed: int = 0) -> list[np.ndarray]:
    """Disjoint classes: class c goes to agent c mod N (split evenly when N > C)."""
    labels = _start(labels, n_agents)
    return check_parts(_classes(labels, n_agents, np.random.default_rng(seed)), len(labels), n_agents, "classes")


def dirichlet(labels: np.ndarray, n_agents: int, *, alpha: float = 0.5, min_samples: int = 10,
              seed: int = 0) -> list[np.ndarray]:
    """Per class, agent shares ~ Dir(alpha) after ``min_samples`` per agent (lowered to
    ``len(labels) // n_agents`` when the data cannot give every agent that many)."""
    labels = _start(labels, n_agents)
    if not alpha > 0:
        raise PartitionError(f"partition.alpha={alpha} must be > 0 (small: skewed, large: near IID)")
    if min_samples < 0:
        raise PartitionError(f"partition.min_samples={min_samples} must be >= 0")
    # too few samples to give everyone min_samples: an equal floor instead (>= 1, since n_agents <= n)
    parts = _dirichlet(labels, n_agents, np.random.default_rng(seed), alpha, min(min_samples, len(labels) // n_agents))
    return check_parts(parts, len(labels), n_agents, "dirichlet")


def shards(labels: np.ndarray, n_agents: int, *, shards_per_agent: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Label-sorted data cut into N*k equal shards; k random shards per agent."""
    labels = _start(labels, n_agents)
    if shards_per_agent < 1 or n_agents * shards_per_agent > len(labels):
        raise PartitionError(f"partition.shards_per_agent={shards_per_agent} with agents={n_agents} needs "
                             f"{n_agents * shards_per_agent} shards but the dataset has {len(labels)} samples: "
                             "lower it")
    parts = _shards(labels, n_agents, np.random.default_rng(seed), shards_per_agent)
    return check_parts(parts, len(labels), n_agents, "shards")


PARTITIONERS = {"iid": iid, "classes": classes, "dirichlet": dirichlet, "shards": shards}


def partition(labels: np.ndarray, n_agents: int, method: str = "iid", **options) -> list[np.ndarray]:
    """Split the indices of ``labels`` among ``n_agents`` agents with ``method`` (one of :data:`PARTITIONS`);
    ``options`` are that method's own (``alpha``/``min_samples`` for dirichlet, ``shards_per_agent`` for
    shards, ``seed`` for all). Returns one sorted int64 index array per agent; raises
    :class:`PartitionError` when the split cannot be made (including when some agent would get no data)."""
    if method not in PARTITIONERS:
        raise PartitionError(f"partition={method} is unknown: use one of {', '.join(PARTITIONS)}")
    return PARTITIONERS[method](labels, n_agents, **options)


def check_parts(parts, n_samples: int, n_agents: int, name: str) -> list[np.ndarray]:
    """Any partitioner's output as sorted int64 index arrays, checked: one per agent, disjoint, in range,
    none empty. ``parts`` may hold, per agent, an index array or a list of chunks."""
    def indices(p) -> np.ndarray:
        if isinstance(p, (list, tuple)):  # chunks
            return np.concatenate([np.asarray(c).reshape(-1) for c in p]) if p else np.empty(0, np.int64)
        return np.asarray(p).reshape(-1)

    try:
        out = [np.sort(indices(p)) for p in parts]
    except (TypeError, ValueError) as e:
        raise PartitionError(f"partition {name} returned {type(parts).__name__}: return one index array "
                             f"per agent ({e})") from None
    if len(out) != n_agents:
        raise PartitionError(f"partition {name} returned {len(out)} index arrays for agents={n_agents}: "
                             "return one per agent")
    for a, p in enumerate(out):
        if len(p) and not np.issubdtype(p.dtype, np.integer):
            raise PartitionError(f"partition {name}: agent {a}'s indices are {p.dtype}, not integers")
        if len(p) and (p[0] < 0 or p[-1] >= n_samples):
            raise PartitionError(f"partition {name}: agent {a} has indices outside [0, {n_samples})")
    out = [p.astype(np.int64) for p in out]
    total = sum(len(p) for p in out)
    if total and len(np.unique(np.concatenate(out))) != total:
        raise PartitionError(f"partition {name} gives some samples to several agents: make the shards disjoint")
    empty = [a for a, p in enumerate(out) if len(p) == 0]
    if empty:  # e.g. classes with more agents than a class has samples
        raise PartitionError(f"partition={name} leaves agents {empty[:5]} without samples: "
                             "use fewer agents, more data or another partition")
    return out


def class_histogram(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """``[agents, classes]`` sample counts (int64)."""
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts]).astype(np.int64)


def own_classes(hist_row: np.ndarray) -> np.ndarray:
    """Bool mask of the classes an agent really holds: at least half of a uniform share
    (count >= 0.5 * total / num_classes). An agent with no samples owns none."""
    hist_row = np.asarray(hist_row)
    total = hist_row.sum()
    if total == 0:
        return np.zeros(hist_row.shape, bool)
    return hist_row >= 0.5 * total / len(hist_row)
