"""The same command and seed give the same numbers on the same machine, whatever else runs on it: the torch
thread count comes from the config and the machine, never from the momentary load, and is recorded."""

from __future__ import annotations

import subprocess
import sys
import time

import yaml

from dimat import run
from dimat.runtime.base import machine_cpus

FIGURES = ("acc_mean", "acc_min", "acc_max", "acc_avg_model", "consensus", "bytes_total")


def figures(res):
    return [{k: r.get(k) for k in FIGURES} for r in res.records]


def test_a_busy_machine_gives_the_same_numbers_and_the_threads_are_recorded(tiny):
    overrides = ("backend=inprocess", "data=digits", "model=mlp", "model.hidden=[64]", "rounds=3", "algorithm=dimat")
    alone = run(tiny(*overrides))
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # keeps a core busy
    try:
        time.sleep(0.5)
        busy = run(tiny(*overrides))
    finally:
        spinner.kill()
        spinner.wait()
    assert figures(busy) == figures(alone)
    for res in (alone, busy):
        assert res.summary["threads"] == machine_cpus()
        recorded = yaml.safe_load((res.run_dir / "config.yaml").read_text())["backend"]["threads"]
        assert recorded == machine_cpus()
