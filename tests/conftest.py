"""Shared fixtures: composing configs in tiny mode."""

from __future__ import annotations

import pytest

from cfg_helpers import compose_cfg, tiny_overrides


@pytest.fixture
def tiny(tmp_path):
    """Compose a tiny config writing into a temporary run folder."""

    def make(*overrides: str):
        return compose_cfg(tiny_overrides([f"run.dir={tmp_path}/run", *overrides]))

    return make
