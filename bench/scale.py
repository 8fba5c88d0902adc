"""Many agents on one machine: cost against centralized training of the same sample passes.

    .venv/bin/python bench/scale.py [--train-samples 12000] [--rounds 3] [--only overhead,many,exchange]

Four measurements (issue targets in brackets), each run side by side with its
centralized reference in this process:
1. overhead: 8 agents, fashion_mnist, cnn, one exchange per local epoch, ray backend:
   dsgd [≤ 1.25× centralized] and dimat with activation matching [≤ 1.5×];
2. many: 64 agents (cnn) and 256 agents (mlp), ring and torus: time per round [≤ 1.5×], peak memory [≤ 8 GiB];
   The vectorized group (backend.vectorize) is measured on the mlp rows beside the per-agent loop;
3. exchange: a ring of 16 agents with a ~1M-parameter model: exchange time per round beyond merge arithmetic [≤ 50 ms];
4. memory per agent: extra peak memory per added agent [≤ 3× model + optimizer state].
Peak memory is the OS's proportional set size (PSS: shared pages split among the processes that map
them) of this process and all its descendants (Ray workers), sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time

from rich.console import Console
from rich.table import Table

from _common import compose_cfg, run


def pss(pid: int) -> int:
    """Proportional set size (bytes): shared pages (the object store, the dataset) split among their users."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss(root: int) -> int:
    """Memory (bytes) of `root` and all its descendants, from /proc (Linux): the sum of their
    proportional set sizes, so pages shared through Ray's object store are counted once, not per reader."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)  # fields[1] is the parent pid
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += pss(pid)
        todo += children.get(pid, [])
    return total


class PeakRSS:
    """Samples the summed RSS of this process tree every 50 ms."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(os.getpid()))
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def measure(overrides: list[str], tmp: str) -> dict:
    cfg = compose_cfg([*overrides, f"run.dir={tmp}/{time.monotonic_ns()}", "run.progress=false",
                       "run.checkpoint_every=0", "final_merge.enabled=false", "eval.before_merge=false"])
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        res = run(cfg)
        wall = time.perf_counter() - t0
    recs = res.records
    rounds = len(recs)
    return {
        "wall": wall, "peak_gib": mem.peak / 2**30, "acc": res.summary["final_acc_mean"],
        "round_s": (recs[-1]["wall_s"]) / max(1, rounds),
        "exchange_s": sum(r.get("exchange_s", 0) for r in recs) / rounds,
        "merge_s": sum(r.get("merge_s", 0) for r in recs) / rounds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-samples", type=int, default=12000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="overhead,many,exchange,memory")
    a = ap.parse_args()
    only = set(a.only.split(","))
    base = ["data=fashion_mnist", f"data.train_samples={a.train_samples}", f"rounds={a.rounds}", "partition=iid",
            "backend=ray", "backend.num_cpus=2", f"eval.every={a.rounds}", "eval.max_samples=2000"]
    rows = []
    t = Table(expand=True, title=f"bench/scale.py · fashion_mnist {a.train_samples} train samples · {a.rounds} rounds · 2 cores")
    for col in ("configuration", "dimat s", "centralized s", "ratio", "peak GiB", "note"):
        t.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        def pair(label, overrides, central_overrides, per_round=False, note=""):
            m = measure(overrides, tmp)
            c = measure(central_overrides, tmp)
            key = "round_s" if per_round else "wall"
            ratio = m[key] / c[key]
            t.add_row(label, f"{m[key]:.1f}", f"{c[key]:.1f}", f"{ratio:.2f}", f"{m['peak_gib']:.2f}", note)
            rows.append({"label": label, "run": m, "centralized": c, "ratio": ratio})
            return m

        if "overhead" in only:
            common = [*base, "model=cnn", "agents=8", "topology=ring"]
            central = [*common, "algorithm=centralized", "backend=inprocess"]
            pair("8 agents cnn dsgd (total wall)", [*common, "algorithm=dsgd"], central, note="target ≤ 1.25")
            pair("8 agents cnn dimat activation", [*common, "algorithm=dimat", "merge=activation", "init=shared"],
                 central, note="target ≤ 1.5")
            # the vectorized group (vmap over stacked agents) on a model it suits, and on the cnn
            mlp = [*base, "model=mlp", "agents=8", "topology=ring"]
            pair("8 agents mlp dsgd, vectorized in-process", [*mlp, "algorithm=dsgd", "backend=inprocess",
                 "backend.vectorize=true"], [*mlp, "algorithm=centralized", "backend=inprocess"], note="target ≤ 1.25")
            pair("8 agents mlp dsgd, per-agent loop in-process", [*mlp, "algorithm=dsgd", "backend=inprocess"],
                 [*mlp, "algorithm=centralized", "backend=inprocess"], note="for comparison")
        if "many" in only:
            for model, n in (("cnn", 64), ("mlp", 256)):
                for topo in ("ring", "torus"):
                    common = [*base, f"model={model}", f"agents={n}", f"topology={topo}", "batch_size=16"]
                    pair(f"{n} agents {model} {topo} dsgd (per round)", [*common, "algorithm=dsgd"],
                         [*common, "algorithm=centralized", "backend=inprocess"], per_round=True,
                         note="target ≤ 1.5, ≤ 8 GiB")
                    if model == "mlp":
                        pair(f"{n} agents mlp {topo} dsgd, vectorized (per round)",
                             [*common, "algorithm=dsgd", "backend=inprocess", "backend.vectorize=true"],
                             [*common, "algorithm=centralized", "backend=inprocess"], per_round=True,
                             note="target ≤ 1.5, ≤ 8 GiB")
        if "memory" in only:
            # extra peak memory per added agent: 256 vs 32 mlp agents (fixed Ray cost cancels)
            common = [*base, "model=mlp", "topology=ring", "algorithm=dsgd", "rounds=1", "batch_size=16"]
            small, big = measure([*common, "agents=32"], tmp), measure([*common, "agents=256"], tmp)
            per_agent = (big["peak_gib"] - small["peak_gib"]) * 2**30 / (256 - 32)
            params = 784 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10
            model_opt = 2 * 4 * params  # weights + momentum, float32
            t.add_row("memory per agent (mlp, 256 vs 32 agents)", f"{per_agent / 2**20:.2f} MiB", "", "",
                      f"{big['peak_gib']:.2f}", f"{per_agent / model_opt:.1f}× model+optimizer (target ≤ 3)")
            rows.append({"label": "memory", "per_agent_bytes": per_agent, "model_opt_bytes": model_opt})
        if "exchange" in only:
            common = [*base, "model=mlp", "model.hidden=[640,640]", "agents=16", "topology=ring", "local_steps=1",
                      "algorithm=dsgd"]
            m = measure(common, tmp)
            hosts = 2
            over = m["exchange_s"] - m["merge_s"] / hosts
            t.add_row("16-agent ring, 0.92M params: exchange/round", f"{1000 * m['exchange_s']:.0f} ms", "",
                      "", f"{m['peak_gib']:.2f}", f"beyond merge math: {1000 * over:.0f} ms (target ≤ 50)")
            rows.append({"label": "exchange", "run": m, "overhead_ms": 1000 * over})
    Console().print(t)
    print(json.dumps(rows, indent=1, default=float)[:4000])


if __name__ == "__main__":
    main()
