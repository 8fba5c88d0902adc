"""Tables and plots from run folders: `python -m dimat.report DIR... [--out DIR]`.

DIR may be a run folder (holding `metrics.jsonl`) or any folder above run
folders (a Hydra multirun folder). Runs are labelled by the config values
that differ between them, so a sweep's lines say what was swept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from dimat.metrics import flatten_dict, read_metrics


def find_runs(paths: list[str]) -> list[Path]:
    runs = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist: pass run folders or a multirun folder")
        found = [p] if (p / "metrics.jsonl").exists() else sorted(m.parent for m in p.rglob("metrics.jsonl"))
        runs += found
    if not runs:
        raise FileNotFoundError(f"no metrics.jsonl under {', '.join(paths)}: pass run folders or a multirun folder")
    return runs


def labels(runs: list[Path]) -> list[str]:
    """Each run's label: the config entries that differ across the runs (run folder name if none)."""
    flat = []
    for r in runs:
        cfg_path = r / "config.yaml"
        cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else {}
        flat.append({k: v for k, v in flatten_dict(cfg).items() if not k.startswith("run.")})
    keys = sorted({k for f in flat for k in f})
    differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]
    return [", ".join(f"{k}={f.get(k)}" for k in differing) or r.name for f, r in zip(flat, runs)]


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "—"
    return f"{100 * v:.1f}%" if pct else (f"{v:.4g}" if isinstance(v, float) else str(v))


def table(runs: list[Path], names: list[str]) -> str:
    cols = ["run", "final acc mean", "avg model", "global merge", "bytes total", "bytes/agent max", "wall s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r, name in zip(runs, names):
        s = json.loads((r / "summary.json").read_text()) if (r / "summary.json").exists() else {}
        lines.append(
            "| " + " | ".join([
                name, _fmt(s.get("final_acc_mean"), True), _fmt(s.get("final_acc_avg_model"), True),
                _fmt(s.get("final_acc_global_merge"), True), _fmt(s.get("bytes_total")),
                _fmt(s.get("bytes_per_agent_max")), _fmt(s.get("wall_s")),
            ]) + " |"
        )
    return "\n".join(lines) + "\n"


def plots(runs: list[Path], names: list[str], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [read_metrics(r) for r in runs]
    made = []
    for fname, x, y, xlabel, ylabel in (
        ("acc_vs_round.png", "round", "acc_mean", "round", "mean agent accuracy"),
        ("acc_vs_bytes.png", "bytes_total", "acc_mean", "cumulative bytes sent", "mean agent accuracy"),
        ("consensus_vs_round.png", "round", "consensus", "round", "consensus distance"),
    ):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for recs, name in zip(series, names):
            pts = [(r[x], r[y]) for r in recs if r.get(y) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if y == "consensus":
            ax.set_yscale("symlog", linthresh=1e-6)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        made.append(out / fname)
    return made


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dimat.report", description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", help="run folders or multirun folders")
    ap.add_argument("--out", help="where to write report.md and the plots (default: the first DIR)")
    a = ap.parse_args(argv)
    try:
        runs = find_runs(a.dirs)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out or a.dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    names = labels(runs)
    md = table(runs, names)
    made = plots(runs, names, out)
    (out / "report.md").write_text(md + "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in made) + "\n")
    print(md)
    print(f"wrote {out / 'report.md'} and {len(made)} plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
