"""Helpers shared by the bench scripts: compose a config, run it, time it, print a table."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dimat  # noqa: E402
from dimat import run  # noqa: E402

RAY_ONLY = ("backend.address", "backend.agents_per_actor", "backend.num_cpus",
            "backend.placement", "backend.comm", "backend.gpus_per_actor", "backend.timeout_s")


def compose_cfg(overrides: list[str]):
    """`dimat.compose`, where a run the bench switches to backend=inprocess drops the shared Ray-only keys."""
    choices = [o.split("=", 1)[1] for o in overrides if o.startswith("backend=")]
    if choices and choices[-1] == "inprocess":
        overrides = [o for o in overrides if not o.startswith(RAY_ONLY)]
    return dimat.compose(overrides)


def timed_run(overrides: list[str], run_dir: str) -> tuple[float, dict]:
    """Wall time of a whole run (start-up included) and its summary."""
    cfg = compose_cfg([*overrides, f"run.dir={run_dir}", "run.progress=false"])
    t0 = time.perf_counter()
    res = run(cfg)
    return time.perf_counter() - t0, res.summary


def fashion_available() -> bool:
    return os.path.exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
