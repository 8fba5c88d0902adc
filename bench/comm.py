"""Exchange time per round: Ray's object store vs torch.distributed point-to-point (`backend.comm`).

    .venv/bin/python bench/comm.py [--rounds 4]

A ring of 8 agents, one agent per Ray actor (so every neighbour state crosses
processes), D-SGD with one local step per round, an MLP of ~1M and ~10M
parameters. Prints the median per-round exchange time (publish/fetch or
send/recv, plus the gossip arithmetic, which is the same for both) and the
merge arithmetic alone, side by side in one run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from rich.console import Console
from rich.table import Table

from _common import compose_cfg, run

MODELS = {"1M": "[1000,1000]", "10M": "[3150,3150]"}  # 64 inputs → hidden → 4 classes


def measure(hidden: str, comm: str, rounds: int, tmp: str) -> dict:
    cfg = compose_cfg([
        "data=synthetic", "model=mlp", f"model.hidden={hidden}", "agents=8", "topology=ring", "algorithm=dsgd",
        "local_steps=1", f"rounds={rounds}", "backend=ray", "backend.num_cpus=2", "backend.agents_per_actor=1",
        f"backend.comm={comm}", "eval.every=1", "eval.max_samples=64", "eval.before_merge=false",
        "final_merge.enabled=false", "run.checkpoint_every=0", "run.progress=false", f"run.dir={tmp}/{time.monotonic_ns()}",
    ])
    res = run(cfg)
    recs = res.records[1:] or res.records  # the first exchange also warms up connections
    return {"exchange": statistics.median(r["exchange_s"] for r in recs),
            "merge": statistics.median(r["merge_s"] for r in recs) / 8,  # per agent (merges run in parallel actors)
            "bytes": res.records[-1]["bytes_round"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    a = ap.parse_args()
    t = Table(title="bench/comm.py · ring of 8 agents, 1 agent per actor, 2 cores · median per round")
    for col in ("model", "comm", "bytes/round", "exchange ms", "merge math ms/agent"):
        t.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for name, hidden in MODELS.items():
            for comm in ("object_store", "torch"):
                m = measure(hidden, comm, a.rounds, tmp)
                t.add_row(name, comm, f"{m['bytes']:,}", f"{1000 * m['exchange']:.0f}", f"{1000 * m['merge']:.1f}")
                print(name, comm, m, flush=True)
    Console().print(t)


if __name__ == "__main__":
    main()
