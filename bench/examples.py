"""How long the example commands of docs/benchmarks.md take, and how much of it is evaluation.

    .venv/bin/python bench/examples.py [--only NAME,NAME] [--out DIR] [--json]

Runs each example command as a fresh `python -m dimat` process, one after the other
(`run.progress=false run.dir=<DIR>/<name>` added), times it as a user waits for it, and prints per
command the whole time and `summary.json`'s `startup_s`, `wall_s`, `eval_s` (evaluation during the run),
`final_eval_s` (the final figures, on the full test set) and their share of `wall_s`, with the final
accuracies. DIMAT's protocol phase two starts from phase one's folder (both run, in that order, when
`protocol_dimat` is asked for). Issue 18 asks for evaluation at most a fifth of a run with default
settings. Timing: run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent

EXAMPLES = {  # name → the documented overrides
    "defaults": [],
    "dsgd_inprocess": ["algorithm=dsgd", "backend=inprocess", "agents=4", "rounds=3"],
    "torus32_ray": ["agents=32", "topology=torus", "backend=ray", "model=mlp", "rounds=2"],
    "vectorized64": ["agents=64", "algorithm=dsgd", "backend=inprocess", "backend.vectorize=true"],
    "dimat_fashion_ring_iid": ["experiment=dimat_fashion_ring_iid"],
    "noniid_classes": ["experiment=noniid_classes"],
    "protocol_alone": ["experiment=dimat_protocol/alone"],
    "protocol_dimat": ["experiment=dimat_protocol/dimat", "init_from={protocol_alone}"],
    "fashion_classes_activation": ["data=fashion_mnist", "model=cnn", "partition=classes", "merge=activation"],
}
NEEDS = {"protocol_dimat": "protocol_alone"}


def run_one(name: str, out: Path, extra: list[str]) -> dict:
    """One example as a fresh process: its whole time, exit code and summary (empty where it failed)."""
    folder = out / name
    args = [a.format(**{k: str(out / k) for k in EXAMPLES}) for a in EXAMPLES[name]]
    cmd = [sys.executable, "-m", "dimat", *args, *extra, "run.progress=false", f"run.dir={folder}"]
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    whole = time.perf_counter() - t
    summary = folder / "summary.json"
    return {"name": name, "args": args, "rc": p.returncode, "whole_s": whole,
            "summary": json.loads(summary.read_text()) if p.returncode == 0 and summary.exists() else {},
            "error": p.stderr.strip().splitlines()[-1:] if p.returncode else []}


def eval_share(summary: dict) -> float | None:
    """Evaluation (during the run and the final figures) over the run's `wall_s`."""
    wall = summary.get("wall_s")
    if not wall:
        return None
    return ((summary.get("eval_s") or 0.0) + (summary.get("final_eval_s") or 0.0)) / wall


def order(names: list[str]) -> list[str]:
    """The names asked for, each after the one it starts from."""
    out = []
    for n in names:
        if n in NEEDS and NEEDS[n] not in out:
            out.append(NEEDS[n])
        if n not in out:
            out.append(n)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=None, help="comma-separated names (default: all): " + ",".join(EXAMPLES))
    ap.add_argument("--out", default=None, help="where the runs' folders go (default: a temporary folder)")
    ap.add_argument("--json", action="store_true", help="also print the rows as one JSON line")
    ap.add_argument("extra", nargs="*", help="overrides added to every command (after --)")
    a = ap.parse_args(argv)
    names = list(EXAMPLES) if a.only is None else a.only.split(",")
    unknown = [n for n in names if n not in EXAMPLES]
    if unknown:
        ap.error(f"--only {','.join(unknown)}: unknown; the examples are {','.join(EXAMPLES)}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out or tmp)
        with open("/proc/loadavg") as f:
            load = f.read().split()[0]
        rows = [run_one(n, out, a.extra) for n in order(names)]
    table = Table(title=f"the documented examples (load at start {load})")
    for col in ("command", "whole s", "startup_s", "wall_s", "eval_s", "final_eval_s", "eval / wall_s",
                "acc mean", "global merge"):
        table.add_column(col, justify="left" if col == "command" else "right")
    for r in rows:
        s, share = r["summary"], eval_share(r["summary"])
        fmt = (lambda k: "—" if s.get(k) is None else f"{s[k]:.2f}")
        pct = (lambda k: "—" if s.get(k) is None else f"{100 * s[k]:.1f}%")
        table.add_row(" ".join(r["args"]) or "(defaults)", f"{r['whole_s']:.1f}" + ("" if r["rc"] == 0 else
                      f" (exit {r['rc']}: {' '.join(r['error'])})"), fmt("startup_s"), fmt("wall_s"),
                      fmt("eval_s"), fmt("final_eval_s"), "—" if share is None else f"{100 * share:.0f}%",
                      pct("final_acc_mean"), pct("final_acc_global_merge"))
    Console(width=200).print(table)
    if a.json:
        print(json.dumps([{k: r[k] for k in ("name", "rc", "whole_s")} | {"eval_share": eval_share(r["summary"]),
                          **{k: r["summary"].get(k) for k in ("startup_s", "wall_s", "eval_s", "final_eval_s",
                                                              "final_acc_mean", "final_acc_global_merge")}}
                          for r in rows]))
    return rows


if __name__ == "__main__":
    rows = main()
    sys.exit(max((r["rc"] for r in rows), default=0))
