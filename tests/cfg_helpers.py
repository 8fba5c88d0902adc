"""Config helpers shared by the tests (a unique module name: every test folder may have a conftest)."""

from __future__ import annotations

import os

from hydra import compose, initialize_config_dir

from dimat.config import register

CONF = os.path.join(os.path.dirname(__file__), "..", "conf")
register()

# tiny, fast settings any end-to-end test can start from
TINY = [
    "data=synthetic", "model=mlp", "model.hidden=[32]", "rounds=2", "agents=4", "batch_size=16",
    "run.progress=false", "backend.timeout_s=120",
]


def compose_cfg(overrides: list[str] = (), config_name: str = "config"):
    with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))
