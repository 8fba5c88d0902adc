"""Every option of every group composes and builds its component; typos fail at compose time; every preset runs."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import dimat
import topologies
from cfg_helpers import CONF, compose_cfg
from dimat import ConfigError, run
from dimat.algorithms import Algorithm
from dimat.api import to_plain
from dimat.components import factory
from dimat.runtime import Backend
from dimat.schedule import Schedule

GROUPS = ["data", "partition", "model", "topology", "algorithm", "merge", "schedule", "backend"]


def options(group: str) -> list[str]:
    """The group's options, those in subfolders too (experiment=dimat_protocol/dimat)."""
    root = os.path.join(CONF, group)
    return sorted(os.path.relpath(p, root)[:-5] for p in glob.glob(os.path.join(root, "**", "*.yaml"), recursive=True))


CASES = [(g, o) for g in GROUPS for o in options(g) if o != "custom"]


@pytest.mark.parametrize("group,name", CASES)
def test_every_option_composes_and_builds(group, name, tmp_path):
    extra = {("topology", "edgelist"): [f"topology.path={tmp_path}/edges.txt"]}.get((group, name), [])
    (tmp_path / "edges.txt").write_text("".join(f"{i} {(i + 1) % 8}\n" for i in range(8)))
    node = to_plain(compose_cfg([f"{group}={name}", *extra]))[group]
    if group == "merge":
        assert isinstance(dimat.algorithms.Dimat(merge=node), Algorithm)
        return
    runtime = {"data": (), "partition": ("labels", "n_agents"), "model": ("input_shape", "num_classes"),
               "topology": ("n",), "algorithm": ("merge",), "schedule": (), "backend": ("spec", "dataset", "parts")}
    make = factory(group, node, runtime=runtime[group])  # import, signature check, partial
    if group == "data":
        if name in ("digits", "synthetic"):
            assert isinstance(make(), dimat.Dataset)
        return  # the file datasets' readers are tested on generated files in tests/data
    if group == "partition":
        parts = make(np.arange(400) % 10, 8)
        assert len(parts) == 8 and sum(map(len, parts)) <= 400
    elif group == "model":
        out = make(input_shape=(1, 8, 8), num_classes=10).eval()(torch.randn(2, 1, 8, 8))
        assert out.shape == (2, 10)
    elif group == "topology":
        top = make(8)
        assert isinstance(top, topologies.TimeVarying) or top.number_of_nodes() == 8
    elif group == "algorithm":
        algo = make(merge=to_plain(compose_cfg())["merge"]) if getattr(make.func, "uses_merge", False) else make()
        assert isinstance(algo, Algorithm)
    elif group == "schedule":
        assert isinstance(make(), Schedule)
    else:
        assert issubclass(make.func, Backend)


def test_defaults_are_the_documented_ones():
    cfg = compose_cfg()
    assert (cfg.data._target_, cfg.agents, cfg.topology._target_) == ("dimat.data.digits", 5, "topologies.ring")
    assert (cfg.partition._target_, cfg.algorithm._target_) == ("dimat.data.dirichlet", "dimat.algorithms.Dimat")
    assert (cfg.merge.method, cfg.backend._target_) == ("weight", "dimat.runtime.RayBackend")


@pytest.mark.parametrize("override,message", [
    ("topology.pp=0.5", "topology.pp is not an option"),
    ("algorithm.learning_rate=0.1", "algorithm.learning_rate is not an option"),
    ("model.norm=bn", "model.norm is not an option of this model (MlpConf)"),  # the mlp has no norm
    ("agents=five", "agents=five: Value 'five'"),
    ("algorithm=nope", "algorithm=nope is unknown: use one of cdmsgd, cdsgd"),
    ("algorithm=dimt", "algorithm=dimt is unknown: did you mean algorithm=dimat?"),
    ("agnets=4", "agnets is not a setting of dimat: did you mean agents?"),
    ("model.hiddn=[3]", "did you mean model.hidden? Otherwise drop it"),
    ("backend.thread=2", "did you mean backend.threads?"),
])
def test_a_misspelt_or_inapplicable_key_fails_at_compose_time(override, message):
    with pytest.raises(ConfigError) as err:
        compose_cfg([override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_options_belong_to_their_component():
    # the options of other algorithms and schedules are not accepted (each has its own schema)
    for bad in (["algorithm=dsgd", "algorithm.qp_margin=9"], ["schedule=periodic", "schedule.p1=0.99"],
                ["backend=inprocess", "backend.placement=spread"], ["topology=one_peer_exponential",
                                                                   "topology.weights=metropolis_hastings"]):
        with pytest.raises(ConfigError, match="is not an option"):
            compose_cfg(bad)


TINY_PRESET = ["data=synthetic", "rounds=2", "agents=4", "batch_size=16", "run.progress=false", "backend=inprocess"]


@pytest.fixture(scope="module")
def phase_one(tmp_path_factory):
    """A tiny phase one of DIMAT's protocol: the folder the phase-two presets start from."""
    d = tmp_path_factory.mktemp("alone")
    run(compose_cfg(["experiment=dimat_protocol/alone", *TINY_PRESET, f"run.dir={d}"]))
    return d


@pytest.mark.parametrize("preset", options("experiment"))
def test_every_preset_runs_in_a_tiny_mode(preset, tmp_path, request):
    overrides = [f"experiment={preset}", *TINY_PRESET, f"run.dir={tmp_path}"]
    if compose_cfg(overrides).init_from is not None:  # phase two of a protocol: it names its phase one
        overrides.append(f"init_from={request.getfixturevalue('phase_one')}")
    res = run(compose_cfg(overrides))
    assert res.records and res.records[-1]["round"] == 2


def test_an_experiment_preset_overrides_the_top_level_defaults():
    cfg = compose_cfg(["experiment=single_merge_dirichlet"])
    assert (cfg.agents, cfg.rounds) == (16, 20)  # the preset's, not conf/config.yaml's 5 and 10
    assert compose_cfg(["experiment=single_merge_dirichlet", "rounds=3"]).rounds == 3  # the command line still wins


def test_compose_is_what_the_cli_composes(tmp_path):
    """`dimat.compose(overrides)` and `python -m dimat <overrides> --cfg job` give the same config."""
    from omegaconf import OmegaConf

    overrides = ["algorithm=cga", "topology=torus", "agents=8", "algorithm.qp_margin=0.25", "experiment=noniid_classes"]
    p = subprocess.run([sys.executable, "-m", "dimat", *overrides, "--cfg", "job"], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert OmegaConf.create(p.stdout) == compose_cfg(overrides)
    # and the schema's defaults are the CLI's: the structured default no longer disagrees with conf/config.yaml
    assert compose_cfg().pretrain_epochs is None
