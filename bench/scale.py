"""Many agents on one machine: cost against centralized training of the same sample passes, and against the floor.

    .venv/bin/python bench/scale.py [--train-samples 12000] [--rounds 3] [--test-samples N]
                                    [--only overhead,many,exchange,memory]

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

Every timed row also gets its floor, timed in this process right after the run (`_common.floor`): the same
arithmetic written by hand in bare torch — the run's model from its own factory, its agents, local steps,
batch size and optimizer (vmap(grad) over the stacked agents, and a plain per-agent loop over the same
rows: the faster kernel taken for each part), the same evaluation passes (the subsample and
eval.agents during the run, every agent on the full test set in the last round, the consensus distance and
the average model), and the gossip as one weighted sum of the stacked rows with the round's mixing matrix.
`x floor` is dimat's time over it: the lead, measured. A per-round row compares the rounds with their
evaluations over the rounds, a total row the whole run (start-up included) with the floor's rounds; the
exchange row compares the exchange with one copy of every state plus the weighted sum. The floor has no
matching: DIMAT's permutation alignment is dimat's extra work.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import threading
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from _common import compose_cfg, exchange_floor, fashion_available, floor, run, work_of
from dimat.runtime.base import descendants


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
    return sum(pss(pid) for pid in [root, *descendants(root)])


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


# what every measured run sets: timed work only (no checkpoints, no closing merge, no before-merge evaluation)
TIMED = ["run.progress=false", "run.checkpoint_every=0", "final_merge.enabled=false", "eval.before_merge=false"]


def measure(overrides: list[str], tmp: str) -> dict:
    cfg = compose_cfg([*overrides, f"run.dir={tmp}/{time.monotonic_ns()}", *TIMED])
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        res = run(cfg)
        wall = time.perf_counter() - t0
    recs = res.records  # the evaluated rounds only (eval.every)
    return {
        "wall": wall, "peak_gib": mem.peak / 2**30, "acc": res.summary["final_acc_mean"],
        # the last record's wall_s counts every round so far: per round over all of them, not over the records
        "round_s": recs[-1]["wall_s"] / max(1, res.summary["rounds"]),
        "exchange_s": sum(r.get("exchange_s", 0) for r in recs) / len(recs),  # each record: its own round's
        "merge_s": sum(r.get("merge_s", 0) for r in recs) / len(recs),
    }


def signature(w) -> str:
    """What makes two configurations the same arithmetic (rows that differ only in how dimat runs it share a floor)."""
    h = hashlib.sha1()
    fn = w.make_model
    evals = [None if e is None else (len(e[1]), e[2]) for e in [*w.evals, *w.before]]
    h.update(repr((fn.func, sorted(fn.keywords.items()), w.batch_size, w.steps, w.pretrain, w.rounds,
                   sorted(w.optimizer.items()), w.label_smoothing, w.clip, evals, w.eval_batch, w.communicates,
                   w.seed)).encode())
    for a in [*w.parts, *(W for W in w.mixes if W is not None), w.x_train[:64]]:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


class Floors:
    """The floor of each configuration, timed once per distinct arithmetic."""

    def __init__(self):
        self.cache: dict[str, dict] = {}

    def of(self, overrides: list[str]) -> dict:
        w = work_of([*overrides, *TIMED])
        key = signature(w)
        if key not in self.cache:
            self.cache[key] = {**floor(w), "rounds": w.rounds}
        return self.cache[key]


def floor_seconds(f: dict, per_round: bool) -> float:
    """The floor of what a row reports: per round (the rounds with their evaluations, over the rounds, as the
    last record's wall_s counts them) or the whole run."""
    return f["run_s"] / f["rounds"] if per_round else f["run_s"]


def kernels_note(f: dict) -> str:
    """Which hand-written kernel the floor took, on how many threads, e.g. "floor: loop train, vmap eval, 2 thr"."""
    train, ev = f["best"]["train"], f["best"]["eval"]
    kernels = train if train == ev else f"{train} train, {ev} eval"
    return f"floor: {kernels}, {f['threads']} thr"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fashion_mnist" if fashion_available() else "digits")
    ap.add_argument("--train-samples", type=int, default=12000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--test-samples", type=int, default=None,
                    help="a class-stratified test subsample (data.test_samples; default: the whole test set, on "
                         "which every agent is evaluated in the last round)")
    ap.add_argument("--only", default="overhead,many,exchange,memory")
    a = ap.parse_args()
    only = set(a.only.split(","))
    unknown = only - {"overhead", "many", "exchange", "memory"}
    if unknown:
        ap.error(f"--only {','.join(sorted(unknown))}: choose from overhead, many, exchange, memory")
    base = [f"data={a.data}", f"data.train_samples={a.train_samples}", f"rounds={a.rounds}", "partition=iid",
            "backend=ray", "backend.num_cpus=2", f"eval.every={a.rounds}", "eval.max_samples=2000"]
    if a.test_samples:
        base.append(f"data.test_samples={a.test_samples}")
    rows, floors = [], Floors()
    t = Table(expand=True, title=f"bench/scale.py · {a.data} {a.train_samples} train samples · {a.rounds} rounds · "
                                 f"{len(os.sched_getaffinity(0))} cores")
    for col in ("configuration", "dimat s", "centralized s", "x centralized", "floor s", "x floor", "peak GiB",
                "note"):
        t.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        def pair(label, overrides, central_overrides, per_round=False, note=""):
            m = measure(overrides, tmp)
            c = measure(central_overrides, tmp)
            f = floors.of(overrides)
            key = "round_s" if per_round else "wall"
            ratio, fs = m[key] / c[key], floor_seconds(f, per_round)
            t.add_row(label, f"{m[key]:.1f}", f"{c[key]:.1f}", f"{ratio:.2f}", f"{fs:.1f}", f"{m[key] / fs:.2f}",
                      f"{m['peak_gib']:.2f}", f"{note}; {kernels_note(f)}")
            rows.append({"label": label, "run": m, "centralized": c, "ratio": ratio, "floor_s": fs,
                         "x_floor": m[key] / fs, "floor": f})
            return m

        if "overhead" in only:
            common = [*base, "model=cnn", "agents=8", "topology=ring"]
            central = [*common, "algorithm=centralized", "backend=inprocess"]
            pair("8 agents cnn dsgd (total wall)", [*common, "algorithm=dsgd"], central, note="target ≤ 1.25")
            pair("8 agents cnn dimat activation", [*common, "algorithm=dimat", "merge=activation", "init=shared"],
                 central, note="target ≤ 1.5; the floor has no matching")
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
            params = sum(p.numel() for p in work_of([*common, "agents=32", *TIMED]).make_model().parameters())
            model_opt = 2 * 4 * params  # weights + momentum, float32
            t.add_row("memory per agent (mlp, 256 vs 32 agents)", f"{per_agent / 2**20:.2f} MiB", "", "", "", "",
                      f"{big['peak_gib']:.2f}", f"{per_agent / model_opt:.1f}× model+optimizer (target ≤ 3)")
            rows.append({"label": "memory", "per_agent_bytes": per_agent, "model_opt_bytes": model_opt})
        if "exchange" in only:
            common = [*base, "model=mlp", "model.hidden=[640,640]", "agents=16", "topology=ring", "local_steps=1",
                      "algorithm=dsgd"]
            m = measure(common, tmp)
            hosts = 2
            over = m["exchange_s"] - m["merge_s"] / hosts
            fx = exchange_floor(work_of([*common, *TIMED]))
            t.add_row("16-agent ring, 0.92M params: exchange/round", f"{1000 * m['exchange_s']:.0f} ms", "", "",
                      f"{1000 * fx:.0f} ms", f"{m['exchange_s'] / fx:.2f}", f"{m['peak_gib']:.2f}",
                      f"beyond merge math: {1000 * over:.0f} ms (target ≤ 50); floor: copy every state + W·X")
            rows.append({"label": "exchange", "run": m, "overhead_ms": 1000 * over, "floor_s": fx,
                         "x_floor": m["exchange_s"] / fx})
    # piped output (a log, a test) gets a table wide enough for its eight columns
    Console(width=None if sys.stdout.isatty() else 180).print(t)
    print(json.dumps(rows, default=float))  # one line, whole: what a script reads back


if __name__ == "__main__":
    main()
