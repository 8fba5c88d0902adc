"""Config helpers shared by the tests (a unique module name: every test folder may have a conftest)."""

from __future__ import annotations

import os

import dimat

CONF = os.path.join(os.path.dirname(__file__), "..", "conf")

# tiny, fast settings any end-to-end test can start from
TINY = ["data=synthetic", "model=mlp", "model.hidden=[32]", "rounds=2", "agents=4", "batch_size=16", "run.progress=false",
        "eval.every=1"]


def tiny_overrides(overrides: list[str]) -> list[str]:
    """TINY under `overrides`: a test that picks another model drops the mlp's keys; Ray runs get a short timeout."""
    base = [o for o in TINY if not (o.startswith("model") and any(x.startswith("model=") for x in overrides))]
    if not any(x == "backend=inprocess" for x in overrides):
        base.append("backend.timeout_s=120")
    return [*base, *overrides]


def crash_at(cfg, at: int) -> None:
    """Run `cfg` until round `at` is interrupted as Ctrl-C would interrupt it (its folder is left to resume)."""
    import pytest

    from dimat import experiment

    real = experiment.Driver.round

    def crash(self, r):
        if r == at:
            raise KeyboardInterrupt("killed")
        real(self, r)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(experiment.Driver, "round", crash)
        with pytest.raises(KeyboardInterrupt):
            dimat.run(cfg)


def compose_cfg(overrides: list[str] = ()):
    return dimat.compose(list(overrides))
