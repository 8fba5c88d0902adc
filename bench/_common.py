"""Helpers shared by the bench scripts: compose a config, run it, time it, print a table."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dimat.config import register  # noqa: E402
from dimat.experiment import run  # noqa: E402

register()


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def timed_run(overrides: list[str], run_dir: str) -> tuple[float, dict]:
    """Wall time of a whole run (start-up included) and its summary."""
    cfg = compose_cfg([*overrides, f"run.dir={run_dir}", "run.progress=false"])
    t0 = time.perf_counter()
    res = run(cfg)
    return time.perf_counter() - t0, res.summary


def fashion_available() -> bool:
    return os.path.exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
