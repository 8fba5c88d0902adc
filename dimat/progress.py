"""What the user sees while a run goes: start-up facts, a live progress bar, the final table."""

from __future__ import annotations

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def _pct(x) -> str:
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{100 * x:.1f}%"


def _bytes(n: float) -> str:
    """Binary units, named as such (1 MiB = 1024² bytes)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class Display:
    """`progress=False` keeps the console quiet during the run; the final figures print either way."""

    def __init__(self, progress: bool = True):
        self.enabled = progress
        self.console = Console(highlight=False)
        self.bar: Progress | None = None

    def print(self, *args) -> None:
        if self.enabled:
            self.console.print(*args, soft_wrap=True)

    def say(self, message: str) -> None:
        """A line the user must see whether or not the progress display is on."""
        self.console.print(escape(message), soft_wrap=True)

    def warn(self, message: str) -> None:
        """A warning the user must see: printed whether or not the progress display is on."""
        self.console.print(f"[yellow]warning: {escape(message)}[/]", soft_wrap=True)

    def start_info(self, s) -> None:
        for note in getattr(s, "notes", ()):
            self.warn(note)
        c, lab = s.cfg, s.labels
        self.print(
            f"[bold]dimat[/] {lab['algorithm']} · {c['agents']} agents · {lab['data']} · {lab['model']} · "
            f"{lab['partition']} split · {lab['topology']} · backend={lab['backend']} · {s.steps_per_round} steps/round"
        )
        if c["merge"] is not None:
            where = (
                f"a shared public proxy set of {c['merge']['samples']} training samples (data no agent owns)"
                if c["merge"]["data"] == "proxy" else f"each agent's own data (up to {c['merge']['samples']} samples)"
            )
            self.print(f"merge={c['merge']['method']}: matching and BatchNorm repair use {where}")
        topo = s.topology
        if hasattr(topo, "W"):
            self.print(f"topology {topo.name}: spectral gap 1-|λ2| = {topo.spectral_gap():.4f}")
        else:
            self.print(f"topology {topo.name}: time-varying, gap of one period = {topo.spectral_gap():.4f}")
        hist = s.hist
        shown = hist if len(hist) <= 16 else hist[:16]
        self.print("class histogram per agent (rows: agents, columns: classes):")
        for i, row in enumerate(shown):
            self.print(f"  agent {i:3d}: " + " ".join(f"{v:4d}" for v in row))
        if len(hist) > 16:
            self.print(f"  … {len(hist) - 16} more agents")

    def begin(self, rounds: int, done: int = 0) -> None:
        if not self.enabled:
            return
        self.bar = Progress(
            TextColumn("round"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.description}"),
            TimeElapsedColumn(), console=self.console, transient=False,
        )
        self.task = self.bar.add_task("", total=rounds, completed=done)
        self.bar.start()

    def round(self, rec: dict) -> None:
        if self.bar is None:
            return
        desc = (
            f"acc {_pct(rec['acc_mean'])} (avg model {_pct(rec['acc_avg_model'])}) "
            f"consensus {rec['consensus']:.3g} · {_bytes(rec['bytes_total'])}"
        )
        self.bar.update(self.task, completed=rec["round"], description=desc)

    def tick(self, r: int) -> None:
        """A round without evaluation: the bar moves, the last figures stay."""
        if self.bar is not None:
            self.bar.update(self.task, completed=r)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def final(self, summary: dict, records: list[dict], run_dir=None) -> None:
        self.stop()
        if not self.enabled:  # quiet: the final figures only, one line
            parts = [f"{k}={_pct(summary[k])}" for k in ("final_acc_mean", "final_acc_global_merge") if k in summary]
            parts.append(f"bytes_total={_bytes(summary['bytes_total'])}")
            if "total_s" in summary:
                whole = f", {summary['process_s']:.1f} s the whole process" if "process_s" in summary else ""
                parts.append(f"{summary['total_s']:.1f} s ({summary['startup_s']:.1f} s start-up{whole})")
            where = f" · {run_dir}" if run_dir is not None else ""
            self.console.print(f"{summary.get('algorithm', 'run')} done: " + " · ".join(parts) + where, soft_wrap=True)
            return
        t = Table(title="dimat: per-round results")
        for col in ("round", "acc mean", "min", "max", "avg model", "consensus", "bytes"):
            t.add_column(col, justify="right")
        step = max(1, len(records) // 12)
        for r in records[::step] + ([records[-1]] if (len(records) - 1) % step else []):
            t.add_row(
                str(r["round"]), _pct(r["acc_mean"]), _pct(r["acc_min"]), _pct(r["acc_max"]),
                _pct(r["acc_avg_model"]), f"{r['consensus']:.3g}", _bytes(r["bytes_total"]),
            )
        self.console.print(t)
        s = Table(title="summary", show_header=False)
        for k, v in summary.items():
            s.add_row(k, _pct(v) if k.startswith("final_acc") else _bytes(v) if k.startswith("bytes") else f"{v:.3g}" if isinstance(v, float) else str(v))
        self.console.print(s)
