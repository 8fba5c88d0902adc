"""The launch folder: cluster YAMLs ship and install the repository; submit.py joins the cluster."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

LAUNCH = Path(__file__).resolve().parents[2] / "launch"


def _submit():
    spec = importlib.util.spec_from_file_location("submit", LAUNCH / "submit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_submit_joins_the_cluster_unless_told_otherwise():
    sub = _submit()
    assert sub.overrides_for(["--", "agents=8"]) == ["agents=8", "backend.address=auto"]
    assert sub.overrides_for(["backend.address=ray://h:10001"]) == ["backend.address=ray://h:10001"]


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-aws.yaml"])
def test_cluster_yamls_ship_and_install_the_repository(name):
    cfg = yaml.safe_load((LAUNCH / name).read_text())
    assert "." in cfg["file_mounts"].values()
    assert any("pip install" in c and "-e" in c for c in cfg["setup_commands"])
    assert ".venv" in cfg["rsync_exclude"] and "outputs" in cfg["rsync_exclude"]


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-aws.yaml"])
def test_cluster_yamls_pass_rays_own_schema_validation(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(yaml.safe_load((LAUNCH / name).read_text())))  # raises if invalid


def test_runtime_env_excludes_outputs():
    env = yaml.safe_load((LAUNCH / "runtime_env.yaml").read_text())
    assert {"outputs/", ".venv/"} <= set(env["excludes"])


def test_a_local_ray_instance_lives_on_loopback():
    import ray

    from dimat.runtime.ray_backend import start_local_ray

    before = start_local_ray(num_cpus=1)
    try:
        from ray._private import services

        assert services.get_node_ip_address() == "127.0.0.1"
        assert [n["NodeManagerAddress"] for n in ray.nodes()] == ["127.0.0.1"]
    finally:
        ray.shutdown()
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = before
