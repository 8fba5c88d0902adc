"""Start-up cost of the Ray backend: the same tiny job in-process and on Ray, side by side.

    .venv/bin/python bench/startup.py [--reps 3] [--root DIR [--root DIR]] [-- OVERRIDE ...]

Runs `python -m dimat data=synthetic model.hidden=[16] agents=4 rounds=2
algorithm=dsgd` (plus any OVERRIDEs) as a fresh process per run, alternating
backend=inprocess and backend=ray, and prints per run: the process wall time
(what a user waits for: Python imports, config, data, hosts, learning,
shutdown), the CPU seconds of its whole process tree (Ray's processes
included, sampled every 0.1 s: the work, which other load on the machine
changes little), and
from summary.json `total_s` (setup to summary), `startup_s` (setup: data,
checks, starting the hosts) and `wall_s` (the rounds). The last rows are the
medians and Ray minus in-process. Issue 18 asks for a Ray run costing at most
4 s more than in-process. This machine is shared: read the figures of one
invocation against each other, and note the load printed.
`--root` runs another checkout of dimat; `--root A --root B` runs both, their
runs alternated in one loop (to compare before and after a change).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dimat.runtime.base import descendants, proc_stats

ROOT = Path(__file__).resolve().parent.parent
TINY = ["data=synthetic", "model.hidden=[16]", "agents=4", "rounds=2", "algorithm=dsgd", "run.progress=false"]
KEYS = ("total_s", "startup_s", "wall_s")


def tree_cpu(root: int, seen: dict[int, float]) -> None:
    """Record in `seen` the CPU seconds so far of `root` and every process below it (from /proc)."""
    tick, stats = os.sysconf("SC_CLK_TCK"), proc_stats()
    for pid in [root, *descendants(root, stats)]:
        if pid in stats:
            fields = stats[pid]
            seen[pid] = max(seen.get(pid, 0.0), (int(fields[11]) + int(fields[12])) / tick)  # utime + stime


def run_once(root: Path, backend: str, extra: list[str], run_dir: Path) -> dict:
    """One `python -m dimat` process: its wall time and the summary's timings."""
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "dimat", *TINY, f"backend={backend}", *extra, f"run.dir={run_dir}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[int, float] = {}  # CPU seconds per process of the run's tree, sampled (Ray's are not reaped by us)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            tree_cpu(proc.pid, seen)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-2000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"process_s": wall, "cpu_s": sum(seen.values()), **{k: summary.get(k, float("nan")) for k in KEYS}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="runs per backend, alternating (default 3)")
    ap.add_argument("--root", type=Path, action="append",
                    help="a dimat checkout to run (default: this one); give it twice to compare two checkouts, "
                         "their runs alternated in the same loop")
    ap.add_argument("overrides", nargs="*", help="extra config overrides for both backends (after --)")
    a = ap.parse_args()
    if a.reps < 1:
        raise SystemExit(f"--reps={a.reps} must be >= 1")
    roots = [r.resolve() for r in (a.root or [ROOT])]
    load = os.getloadavg()[0]
    runs = {(root, b): [] for root in roots for b in ("inprocess", "ray")}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.reps):
            for k, (root, backend) in enumerate(runs):
                runs[root, backend].append(run_once(root, backend, a.overrides, Path(tmp) / f"{k}-{backend}-{rep}"))
                print(f"rep {rep + 1}/{a.reps} {root.name} {backend}: {runs[root, backend][-1]['process_s']:.1f} s",
                      file=sys.stderr)

    def name(root: Path, what: str) -> str:
        return f"{root.name} {what}" if len(roots) > 1 else what

    cols = ("process_s", "cpu_s", *KEYS)
    t = Table(title=f"bench/startup.py · tiny job · {os.cpu_count()} CPUs · load {load:.1f} at start → "
                    f"{os.getloadavg()[0]:.1f} at end · {', '.join(map(str, roots))}")
    t.add_column("run")
    for c in cols:
        t.add_column(c, justify="right")
    for rep in range(a.reps):
        for (root, backend), rs in runs.items():
            t.add_row(name(root, f"{backend} #{rep + 1}"), *(f"{rs[rep][c]:.2f}" for c in cols))
    med = {key: {c: statistics.median(r[c] for r in rs) for c in cols} for key, rs in runs.items()}
    out = {}
    for root in roots:
        for backend in ("inprocess", "ray"):
            t.add_row(name(root, f"{backend} median"), *(f"{med[root, backend][c]:.2f}" for c in cols), style="bold")
        t.add_row(name(root, "ray − inprocess"),
                  *(f"{med[root, 'ray'][c] - med[root, 'inprocess'][c]:+.2f}" for c in cols), style="bold")
        out[str(root)] = {"median": {b: med[root, b] for b in ("inprocess", "ray")},
                          "ray_minus_inprocess_process_s": med[root, "ray"]["process_s"]
                          - med[root, "inprocess"]["process_s"]}
    Console().print(t)
    print(json.dumps({**(out[str(roots[0])] if len(roots) == 1 else {"roots": out}), "target_s": 4.0, "load": load}))


if __name__ == "__main__":
    main()
