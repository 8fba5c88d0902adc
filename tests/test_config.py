"""Every config composes; typos fail at compose time; every preset runs in a tiny mode."""

from __future__ import annotations

import glob
import os

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError

from cfg_helpers import CONF, TINY, compose_cfg
from dimat.experiment import run

GROUPS = ["data", "partition", "model", "topology", "algorithm", "merge", "schedule", "backend"]


def options(group: str) -> list[str]:
    return sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(CONF, group, "*.yaml")))


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes(group):
    for name in options(group):
        cfg = compose_cfg([f"{group}={name}"])
        assert cfg[group] is not None


def test_defaults_are_the_documented_ones():
    cfg = compose_cfg()
    assert (cfg.data.name, cfg.agents, cfg.topology.name, cfg.partition.method) == ("digits", 5, "ring", "dirichlet")
    assert (cfg.algorithm.name, cfg.merge.method, cfg.backend.name) == ("dimat", "weight", "ray")


def test_a_misspelt_key_fails_at_compose_time():
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose_cfg(["topology.pp=0.5"])
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose_cfg(["algorithm.learning_rate=0.1"])


def test_a_wrong_type_fails_at_compose_time():
    with pytest.raises(Exception, match="agents"):
        compose_cfg(["agents=five"])


@pytest.mark.parametrize("preset", options("experiment"))
def test_every_preset_runs_in_a_tiny_mode(preset, tmp_path):
    cfg = compose_cfg([f"experiment={preset}", *TINY, "backend=inprocess", f"run.dir={tmp_path}"])
    res = run(cfg)
    assert res.records and res.records[-1]["round"] == 2


def test_an_experiment_preset_overrides_the_top_level_defaults():
    from cfg_helpers import compose_cfg

    cfg = compose_cfg(["experiment=single_merge_dirichlet"])
    assert (cfg.agents, cfg.rounds) == (16, 20)  # the preset's, not conf/config.yaml's 5 and 10
    assert compose_cfg(["experiment=single_merge_dirichlet", "rounds=3"]).rounds == 3  # the command line still wins
