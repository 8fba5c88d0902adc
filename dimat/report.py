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
    """Each run's label: what differs across the runs, short -- a group whose component differs as
    ``group=option`` (``schedule=periodic``, not its expanded keys), other settings as ``key=value`` (the run
    folder's name if nothing differs)."""
    flat = []
    for r in runs:
        cfg_path = r / "config.yaml"
        cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else {}
        flat.append({k: v for k, v in flatten_dict(cfg).items() if not k.startswith("run.")})
    keys = sorted({k for f in flat for k in f})
    differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]
    swapped = {k.rsplit(".", 1)[0] for k in differing if k.endswith("._target_")}  # groups whose component differs
    out = []
    for f, r in zip(flat, runs):
        parts = [f"{g}={_option(g, f.get(f'{g}._target_'), f)}" for g in sorted(swapped)]
        parts += [f"{k}={f.get(k)}" for k in differing
                  if not k.endswith("._target_") and not any(k.startswith(g + ".") for g in swapped)]
        out.append(", ".join(parts) or r.name)
    return out


def _option(group: str, target, flat: dict) -> str:
    """The config option (conf/<group>/<name>.yaml) that builds `target`, else the target's last name."""
    if not target:
        return "(object)"
    from dimat.configure import conf_dir

    best, score = None, -1
    for path in sorted((conf_dir() / group.split(".")[0]).glob("*.yaml")) if "." not in group else []:
        node = yaml.safe_load(path.read_text()) or {}
        if node.get("_target_") != target:
            continue
        agree = sum(flat.get(f"{group}.{k}") == v for k, v in node.items() if k not in ("defaults", "_target_"))
        if agree > score:
            best, score = path.stem, agree
    return best or str(target).rsplit(".", 1)[-1].lower()


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "—"
    return f"{100 * v:.1f}%" if pct else (f"{v:.4g}" if isinstance(v, float) else str(v))


def summary_of(run_dir: Path) -> dict:
    """A run's final figures: summary.json, or for a run stopped before writing it, its last round's record."""
    path = run_dir / "summary.json"
    if path.exists():
        return json.loads(path.read_text())
    recs = [r for r in read_metrics(run_dir) if "acc_mean" in r]
    if not recs:
        return {}
    last = recs[-1]
    return {"final_acc_mean": last.get("acc_mean"), "final_acc_avg_model": last.get("acc_avg_model"),
            "bytes_total": last.get("bytes_total"), "sim_time_s": last.get("sim_time_s"), "wall_s": last.get("wall_s"),
            "stopped_at": last["round"]}


def table(runs: list[Path], names: list[str]) -> str:
    cols = ["run", "final acc mean", "avg model", "global merge", "MiB total", "MiB/agent max", "sim s", "wall s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r, name in zip(runs, names):
        s = summary_of(r)
        mib = lambda v: None if v is None else v / 2**20  # noqa: E731
        stopped = f" (stopped at round {s['stopped_at']})" if "stopped_at" in s else ""
        lines.append(
            "| " + " | ".join([
                name + stopped, _fmt(s.get("final_acc_mean"), True), _fmt(s.get("final_acc_avg_model"), True),
                _fmt(s.get("final_acc_global_merge"), True), _fmt(mib(s.get("bytes_total"))),
                _fmt(mib(s.get("bytes_per_agent_max"))), _fmt(s.get("sim_time_s")), _fmt(s.get("wall_s")),
            ]) + " |"
        )
    return "\n".join(lines) + "\n"


MARKERS = "osD^v<>pXh"
STYLES = ("-", "--", "-.", ":")


def plots(runs: list[Path], names: list[str], out: Path) -> list[Path]:
    """Accuracy against rounds and against MiB sent, consensus distance against rounds: titled, units on the
    axes, percentages as in the console, a marker and line style per run (identical curves stay visible), the
    legend beside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    series = [read_metrics(r) for r in runs]
    made = []
    figures = [
        ("acc_vs_round.png", "Accuracy over rounds", "round", "acc_mean", "round", "mean agent accuracy (test set)"),
        ("acc_vs_bytes.png", "Accuracy against communication", "bytes_total", "acc_mean",
         "MiB sent by all agents (cumulative)", "mean agent accuracy (test set)"),
        ("consensus_vs_round.png", "Consensus distance over rounds", "round", "consensus", "round",
         "consensus distance, mean ‖xᵢ − x̄‖² (log scale)"),
    ]
    if any("sim_time_s" in r for recs in series for r in recs):  # runs on a simulated network (network=...)
        figures.insert(2, ("acc_vs_time.png", "Accuracy against simulated time", "sim_time_s", "acc_mean",
                           "simulated seconds (network clock)", "mean agent accuracy (test set)"))
    for fname, title, x, y, xlabel, ylabel in figures:
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        for k, (recs, name) in enumerate(zip(series, names)):
            pts = [(r[x], r[y]) for r in recs if r.get(y) is not None and r.get(x) is not None]
            if not pts:
                continue
            xs, ys = zip(*pts)
            xs = [v / 2**20 for v in xs] if x == "bytes_total" else list(xs)
            ys = [100 * v for v in ys] if y == "acc_mean" else list(ys)
            ax.plot(xs, ys, marker=MARKERS[k % len(MARKERS)], ms=4, ls=STYLES[k % len(STYLES)], lw=1.4, alpha=0.85,
                    label=name)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if y == "acc_mean":
            ax.yaxis.set_major_formatter(PercentFormatter(decimals=None))
        if y == "consensus":  # log: labelled minor ticks where the curves span less than a decade
            positive = all(v > 0 for line in ax.lines for v in line.get_ydata())
            ax.set_yscale("log") if positive else ax.set_yscale("symlog", linthresh=1e-6)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        fig.savefig(out / fname, dpi=110, bbox_inches="tight")  # the box grows to hold the legend
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
