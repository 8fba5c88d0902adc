"""Same 8-agent D-SGD experiment on both backends, and centralized training of equal sample passes.

    .venv/bin/python bench/backends.py [--data fashion_mnist] [--model cnn] [--rounds 3]

Prints wall times (start-up included) and ratios to the centralized run, all
measured side by side in one process (this machine is noisy).
"""

from __future__ import annotations

import argparse
import tempfile

from rich.console import Console
from rich.table import Table

from _common import fashion_available, timed_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fashion_mnist" if fashion_available() else "digits")
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--agents", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train-samples", type=int, default=None)
    a = ap.parse_args()
    common = [
        f"data={a.data}", f"model={a.model}", f"agents={a.agents}", f"rounds={a.rounds}", "partition=iid",
        "topology=ring", "backend.num_cpus=2",
        # time the training and the exchange: evaluate once at the end, on 2,000 test images
        f"eval.every={a.rounds}", "eval.max_samples=2000", "eval.before_merge=false", "final_merge.enabled=false",
        "run.checkpoint_every=0",
    ]
    if a.train_samples:
        common.append(f"data.train_samples={a.train_samples}")
    runs = {
        "centralized (inprocess)": ["algorithm=centralized", "backend=inprocess"],
        "dsgd inprocess": ["algorithm=dsgd", "backend=inprocess"],
        "dsgd ray": ["algorithm=dsgd", "backend=ray"],
    }
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in runs.items():
            out[name] = timed_run(common + extra, f"{tmp}/{len(out)}")
    base = out["centralized (inprocess)"][0]
    t = Table(title=f"{a.agents} agents · {a.data} · {a.model} · {a.rounds} rounds of 1 local epoch")
    for col in ("run", "wall s", "× centralized", "final acc mean", "bytes"):
        t.add_column(col, justify="right")
    for name, (wall, s) in out.items():
        t.add_row(name, f"{wall:.1f}", f"{wall / base:.2f}", f"{100 * s['final_acc_mean']:.1f}%", str(s["bytes_total"]))
    Console().print(t)


if __name__ == "__main__":
    main()
