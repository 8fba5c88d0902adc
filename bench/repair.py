"""REPAIR's effect on merges of independently trained agents, side by side with it off (issue 17).

    .venv/bin/python bench/repair.py [--train-samples 8000] [--epochs 4] [--width 1] [--norms bn,ln]
                                     [--test-samples 2000] [--threads 2]

Five agents each get an IID shard of a Fashion-MNIST subsample and train a ResNet-20 alone from their own
init (Adam 1e-3, batch 100: DIMAT's phase one). Then, with merge.repair=false and =true:
- 2-model merge: agent 0 and agent 1 (weight matching, 1/2 each);
- first ring merge: agent 0 with its ring neighbours 1 and 4 (weight matching, 1/3 each: DIMAT's first merge),
  and the same with plain averaging (merge=average), which REPAIR also applies to;
- final global merge: all five aligned into one basis (MergeMany weight matching) and averaged.
The merges run through dimat's own code — `Dimat.combine` on agent 0 (BatchNorm statistics re-estimated or
REPAIR on its 512 merge samples) and `dimat.algorithms.final` (BatchNorm statistics pooled, or REPAIR pooled,
over every agent's 512 samples) — and are evaluated on a fixed test subsample. Prints one table per norm
(`bn`: BatchNorm, `ln`: GroupNorm with one group) with both columns and the endpoints' mean accuracy.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import _common  # noqa: F401 - puts the repository on sys.path
from dimat.agent import Agent, correct_by_class, predict
from dimat.algorithms.base import Received, optimizer_settings
from dimat.algorithms.dimat import Dimat
from dimat.algorithms.final import bn_keys, global_alignment, pool_bn_stats, repair_global, set_bn_stats
from dimat.data import load_dataset, partition
from dimat.flat import flatten_module
from dimat.merge import spec_for
from dimat.models import build_model
from dimat.runtime import ops

AGENTS, SAMPLES, BATCH = 5, 512, 100


class Host:
    """What `dimat.algorithms.final`'s host operations read of an agent host: its agents and a spare model."""

    def __init__(self, agents: dict[int, Agent]):
        self.agents = agents
        model = copy.deepcopy(agents[0].model)
        self._scratch = (model, flatten_module(model)[0])

    def scratch_model(self):
        return self._scratch


class Backend:
    """One in-process host: `run(op, *args)` as the driver calls it."""

    def __init__(self, host: Host):
        self.host = host

    def run(self, fn, *args):
        return [fn(self.host, *args)]


def train_alone(ds, parts, norm: str, width: int, epochs: float) -> list[Agent]:
    agents = []
    for i, idx in enumerate(parts):
        torch.manual_seed(1000 + i)  # every agent its own init
        model = build_model("resnet20", ds.input_shape, ds.num_classes, width=width, norm=norm)
        a = Agent(i, model, ds.x_train, ds.y_train, idx, batch_size=BATCH,
                  optimizer=optimizer_settings({"name": "adam", "lr": 1e-3}), seed=i)
        a.train(int(np.ceil(epochs * len(idx) / BATCH)))
        agents.append(a)
    return agents


def accuracy(agent: Agent, vec, x: np.ndarray, y: np.ndarray, classes: int) -> float:
    model = copy.deepcopy(agent.model)
    flatten_module(model)[0].copy_(torch.as_tensor(vec))
    return float(correct_by_class(predict(model, x, 1000, "cpu"), y, classes).sum() / len(y))


def ring_merge(agents: list[Agent], neighbours: list[int], method: str, repair: bool) -> np.ndarray:
    """Agent 0's state after `Dimat.combine` with `neighbours` (equal weights), as a run's first merge."""
    a = agents[0]
    saved = a.state().copy()
    algo = Dimat(merge={"method": method, "samples": SAMPLES, "repair": repair})
    algo.prepare(a, torch.from_numpy(a.x[:2]))
    w = 1.0 / (len(neighbours) + 1)
    algo.combine(a, w, [Received(j, agents[j].state().copy(), w) for j in neighbours])
    out = a.state().copy()
    a.load(saved)
    return out


def global_merge(agents: list[Agent], repair: bool) -> np.ndarray:
    """The final global merge as `dimat.experiment._final_merge` makes it, over one in-process host."""
    layout, example = agents[0].layout, torch.from_numpy(agents[0].x[:2])
    spec = spec_for(agents[0].model, example)
    merged, perms = global_alignment([a.state().copy() for a in agents], layout, spec)
    backend = Backend(Host({a.index: a for a in agents}))
    if repair:
        return repair_global(backend, merged, copy.deepcopy(agents[0].model), dict(enumerate(perms)), spec,
                             agents[0].x[:2], SAMPLES)[0]
    keys = bn_keys(layout)
    if keys:
        merged = set_bn_stats(merged, layout, pool_bn_stats(backend.run(ops.bn_stats, merged, keys, SAMPLES)[0]))
    return merged


def study(ds, parts, norm: str, a) -> dict:
    t0 = time.perf_counter()
    agents = train_alone(ds, parts, norm, a.width, a.epochs)
    train_s = time.perf_counter() - t0
    x, y, k = ds.x_test, ds.y_test, ds.num_classes
    own = [accuracy(ag, ag.state(), x, y, k) for ag in agents]
    rows = {}
    for label, fn in (("2-model merge (agents 0, 1), weight matching", lambda r: ring_merge(agents, [1], "weight", r)),
                      ("first ring merge (0 with 1, 4), weight matching", lambda r: ring_merge(agents, [1, 4], "weight", r)),
                      ("first ring merge (0 with 1, 4), plain average", lambda r: ring_merge(agents, [1, 4], "average", r)),
                      ("final global merge (all 5), weight matching", lambda r: global_merge(agents, r))):
        rows[label] = {f"repair={r}": accuracy(agents[0], fn(r), x, y, k) for r in (False, True)}
    return {"norm": norm, "endpoints_mean": float(np.mean(own)), "endpoints": own, "rows": rows,
            "train_s": train_s, "merge_s": time.perf_counter() - t0 - train_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-samples", type=int, default=8000)
    ap.add_argument("--test-samples", type=int, default=2000)
    ap.add_argument("--epochs", type=float, default=4)
    ap.add_argument("--width", type=int, default=1)
    ap.add_argument("--norms", default="bn,ln")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ds = load_dataset("fashion_mnist", train_samples=a.train_samples, test_samples=a.test_samples, seed=0)
    parts = partition(ds.y_train, AGENTS, "iid", seed=0)
    results = []
    for norm in a.norms.split(","):
        r = study(ds, parts, norm, a)
        results.append(r)
        t = Table(title=f"bench/repair.py · ResNet-20 width {a.width} norm={norm} · {AGENTS} agents trained alone "
                        f"{a.epochs:g} epochs on {a.train_samples} Fashion-MNIST images · test {a.test_samples} · "
                        f"endpoints {100 * r['endpoints_mean']:.1f}% · train {r['train_s']:.0f} s, "
                        f"merges {r['merge_s']:.0f} s")
        for col in ("merge", "repair off", "repair on", "gain"):
            t.add_column(col, justify="right")
        for label, v in r["rows"].items():
            off, on = v["repair=False"], v["repair=True"]
            t.add_row(label, f"{100 * off:.1f}%", f"{100 * on:.1f}%", f"{100 * (on - off):+.1f}")
        Console().print(t)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
