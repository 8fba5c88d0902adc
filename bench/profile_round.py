"""Where a round's time goes: cProfile of one run, summed per host method (train, evaluate, publish, ...).

    .venv/bin/python bench/profile_round.py agents=256 model=mlp backend.vectorize=true

Runs in-process (so the profile sees the hosts' work) on the Fashion-MNIST 8,000-image subsample of
bench/scale.py, 2 rounds, and prints each phase's share of the run's wall time.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import tempfile
import time

from _common import compose_cfg, run

PHASES = ("setup", "AgentHost.__init__", "train", "evaluate", "evaluate_state", "run_exchange", "moments",
          "_final_merge")


def main() -> None:
    overrides = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_cfg(["data=fashion_mnist", "data.train_samples=8000", "partition=iid", "rounds=2",
                           "algorithm=dsgd", "batch_size=16", "eval.max_samples=2000", "eval.before_merge=false",
                           "run.checkpoint_every=0", "run.progress=false", *overrides, "backend=inprocess",
                           f"run.dir={tmp}/run"])
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.runcall(run, cfg)
        wall = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats
    print(f"{' '.join(overrides)}: {wall:.2f} s")
    for phase in PHASES:
        name_of = phase.split(".")[-1]
        cum = sum(v[3] for (path, _, name), v in stats.items()
                  if name == name_of and any(p in path for p in ("runtime", "experiment.py", "components.py")))
        print(f"  {phase:14s} {cum:7.2f} s  {100 * cum / wall:5.1f}%")


if __name__ == "__main__":
    main()
