"""init_from=DIR: every method starts from the same saved agents (a run folder or agent_<i>.pt state dicts)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from cfg_helpers import compose_cfg, tiny_overrides
from dimat import ConfigError, run
from dimat.api import to_plain
from dimat.components import setup
from dimat.flat import FlatLayout
from dimat.runtime.host import build_agent_model

PHASE_ONE = ["algorithm=local", "init=independent", "rounds=2", "backend=inprocess", "run.checkpoint_every=1"]


@pytest.fixture(scope="module")
def phase_one(tmp_path_factory):
    """Agents trained alone from their own inits: the folder every phase-two method starts from."""
    d = tmp_path_factory.mktemp("phase_one")
    res = run(compose_cfg(tiny_overrides([f"run.dir={d}/run", *PHASE_ONE])))
    return res


def saved_state_dicts(run_dir, cfg) -> list[dict]:
    """The phase-one agents as plain state dicts, rebuilt from the run's checkpoint."""
    s = setup(to_plain(cfg))
    model = build_agent_model(s.host, s.dataset, 0)
    layout = FlatLayout.of(model)
    out = []
    for i in range(cfg.agents):
        snap = torch.load(run_dir / "checkpoint" / f"agent_{i}.pt", weights_only=True)
        sd = {k: v.clone() for k, v in layout.views(snap["vec"]).items()}
        out.append({**sd, **snap["ints"]})
    return out


def test_every_method_starts_from_the_same_agents_on_both_backends(phase_one, tiny, tmp_path):
    src = f"init_from={phase_one.run_dir}"
    a = run(tiny(src, "algorithm=dsgd", "backend=inprocess", "rounds=1", f"run.dir={tmp_path}/a"))
    b = run(tiny(src, "algorithm=dimat", "backend=inprocess", "rounds=1", f"run.dir={tmp_path}/b"))
    c = run(tiny(src, "algorithm=cdsgd", "backend=ray", "backend.num_cpus=2", f"run.dir={tmp_path}/c"))
    first = [r.records[0] for r in (a, b, c)]
    assert [f["round"] for f in first] == [0, 0, 0]
    # round 0 is the agents as loaded: the last evaluation of phase one, whatever the method or backend
    assert first[0]["acc"] == first[1]["acc"] == first[2]["acc"] == phase_one.records[-1]["acc"]
    assert first[0]["consensus"] == pytest.approx(phase_one.records[-1]["consensus"], rel=1e-6)
    assert first[0]["bytes_total"] == 0
    # the run goes on from there (pretraining defaults to 0 with init_from)
    assert a.records[-1]["round"] == 1 and b.summary["rounds"] == 1


def test_a_folder_of_state_dicts_equals_the_run_folder(phase_one, tiny, tmp_path):
    cfg = tiny(f"init_from={phase_one.run_dir}", "algorithm=dsgd", "backend=inprocess", "rounds=1")
    folder = tmp_path / "dicts"
    folder.mkdir()
    for i, sd in enumerate(saved_state_dicts(phase_one.run_dir, cfg)):
        torch.save(sd, folder / f"agent_{i}.pt")
    a = run(tiny(f"init_from={phase_one.run_dir}", "algorithm=dsgd", "backend=inprocess", "rounds=1",
                 f"run.dir={tmp_path}/a"))
    b = run(tiny(f"init_from={folder}", "algorithm=dsgd", "backend=inprocess", "rounds=1", f"run.dir={tmp_path}/b"))
    def untimed(records):
        return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in records]

    assert untimed(a.records) == untimed(b.records)


def test_optimizer_state_starts_fresh_and_the_run_config_decides_the_rest(phase_one, tiny, tmp_path):
    # phase one used msgd; this run's Adam must start with empty moments, at its own learning rate
    res = run(tiny(f"init_from={phase_one.run_dir}", "algorithm=dsgd", "backend=inprocess", "rounds=1",
                   "algorithm.optimizer.name=adam", "algorithm.optimizer.lr=0.001", "batch_size=8"))
    assert res.records[0]["acc"] == phase_one.records[-1]["acc"]
    assert res.summary["rounds"] == 1


def test_the_checkpoint_falls_back_to_the_previous_one(phase_one, tiny, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(phase_one.run_dir, copy)
    # phase one checkpoints every round: checkpoint.prev holds round 1; damage the newest
    (copy / "checkpoint" / "agent_2.pt").write_bytes(b"truncated")
    res = run(tiny(f"init_from={copy}", "algorithm=dsgd", "backend=inprocess", "rounds=1"))
    assert res.records[0]["acc"] == phase_one.records[0]["acc"]  # round 1 of phase one


@pytest.mark.parametrize("make, expected", [
    (lambda d, sds: None, "no such folder"),
    (lambda d, sds: (d / "notes.txt").write_text("x"), "neither a dimat run folder .* nor a folder of agent_"),
    (lambda d, sds: [torch.save(sd, d / f"agent_{i}.pt") for i, sd in enumerate(sds[:3])], "agents=4"),
    (lambda d, sds: [torch.save(sd, d / f"agent_{i}.pt") for i, sd in enumerate(sds)]
     + [torch.save({"x": 1}, d / "agent_1.pt")], "not a tensor"),
    (lambda d, sds: [torch.save(sd, d / f"agent_{i}.pt") for i, sd in enumerate(sds)]
     + [torch.save(torch.nn.Linear(2, 2), d / "agent_0.pt")], "weights_only"),
    (lambda d, sds: [torch.save({**sd, "extra.weight": torch.zeros(1)}, d / f"agent_{i}.pt")
                     for i, sd in enumerate(sds)], "extra.weight"),
])
def test_bad_folders_get_one_line_before_anything_is_written(phase_one, tiny, tmp_path, make, expected):
    sds = saved_state_dicts(phase_one.run_dir, tiny("algorithm=dsgd", "backend=inprocess"))
    folder = tmp_path / "init"
    if expected != "no such folder":
        folder.mkdir()
        make(folder, sds)
    cfg = tiny(f"init_from={folder}", "algorithm=dsgd", "backend=inprocess")
    with pytest.raises(ConfigError, match=expected) as info:
        run(cfg)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


def test_shape_mismatch_and_init_are_refused(phase_one, tiny, tmp_path):
    with pytest.raises(ConfigError, match="floats, this run's model has"):
        run(tiny(f"init_from={phase_one.run_dir}", "model.hidden=[16]", "algorithm=dsgd", "backend=inprocess"))
    with pytest.raises(ConfigError, match="drop init"):
        run(tiny(f"init_from={phase_one.run_dir}", "init=shared", "algorithm=dsgd", "backend=inprocess"))
    (tmp_path / "nockpt").mkdir()
    (tmp_path / "nockpt" / "config.yaml").write_text("agents: 4\n")
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        run(tiny(f"init_from={tmp_path / 'nockpt'}", "algorithm=dsgd", "backend=inprocess"))
    assert not (tmp_path / "run").exists()


def test_the_cli_exits_2_with_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "dimat", *tiny_overrides([f"run.dir={tmp_path}/run", "backend=inprocess",
                                                         f"init_from={tmp_path}/missing"])],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "init_from" in out.stderr
    assert not (tmp_path / "run").exists()


def test_centralized_starts_from_agent_0(phase_one, tiny):
    res = run(tiny(f"init_from={phase_one.run_dir}", "algorithm=centralized", "backend=inprocess", "rounds=1"))
    assert res.records[0]["acc"] == [phase_one.records[-1]["acc"][0]]
    assert np.isfinite(res.summary["final_acc_mean"])


def test_unaligned_averaging_of_independent_agents_is_named_and_the_init_recorded(phase_one, tiny, capsys):
    import yaml

    res = run(tiny(f"init_from={phase_one.run_dir}", "algorithm=cga", "backend=inprocess", "rounds=1"))
    assert yaml.safe_load((res.run_dir / "config.yaml").read_text())["init"] == "independent"  # as the source's
    warnings = [ln for ln in capsys.readouterr().out.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "without aligning" in warnings[0] and "algorithm=cga" in warnings[0]
    run(tiny(f"init_from={phase_one.run_dir}", "algorithm=dimat", "backend=inprocess", "rounds=1"))
    assert "without aligning" not in capsys.readouterr().out  # dimat aligns them


def test_a_loader_function_is_a_dataset_too(tiny):
    from dimat.data import synthetic

    res = run(tiny("backend=inprocess", "rounds=1", "algorithm=dsgd"), dataset=synthetic)
    cfg = (res.run_dir / "config.yaml").read_text()
    assert "_target_: dimat.data.datasets.synthetic" in cfg and res.records
