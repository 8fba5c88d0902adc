"""The same components through the Python API: objects instead of `_target_`s.

    cd examples && python run_api.py [overrides...]
"""

from __future__ import annotations

import functools
import sys

import dimat
from mylab.algorithms import TrimmedMean
from mylab.data import spirals
from mylab.models import ResidualMLP


def main(overrides: list[str]) -> dimat.Result:
    cfg = dimat.compose(["agents=6", "rounds=5", "topology=torus", "backend=inprocess", "partition=iid", *overrides])
    return dimat.run(
        cfg,
        model=functools.partial(ResidualMLP, width=32),  # called with input_shape= and num_classes=
        dataset=spirals(classes=3),  # a dimat.data.Dataset
        algorithm=functools.partial(TrimmedMean, trim=1, optimizer={"name": "msgd", "lr": 0.05}),
    )


if __name__ == "__main__":
    result = main(sys.argv[1:])
    print(f"{result.run_dir}: final accuracy {result.summary['final_acc_mean']:.3f}, "
          f"global merge {result.summary['final_acc_global_merge']:.3f}, model {result.summary['model_bytes']} bytes")
