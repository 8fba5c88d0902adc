"""Shared fixtures: composing configs in tiny mode."""

from __future__ import annotations

import pytest

from cfg_helpers import compose_cfg, tiny_overrides


@pytest.fixture
def tiny(tmp_path):
    """Compose a tiny config writing into a temporary run folder: `run` for the first config, `run2`, `run3`, …
    for the next ones (a run never writes over another)."""
    made = [0]

    def make(*overrides: str):
        made[0] += 1
        folder = f"{tmp_path}/run" if made[0] == 1 else f"{tmp_path}/run{made[0]}"
        return compose_cfg(tiny_overrides([f"run.dir={folder}", *overrides]))

    return make
