"""The bench scripts: the floor of scale.py, the FedAvg workload of peers.py, the prepared GPU check.

Fast tests run the new code paths at a tiny size; the end-to-end runs of the scripts are slow (-m slow).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import topologies

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import _common  # noqa: E402
import peers  # noqa: E402

TINY = ["data=synthetic", "data.n_train=192", "data.n_test=96", "agents=4", "rounds=2", "backend=inprocess",
        "algorithm=dsgd", "partition=iid", "eval.max_samples=48", "eval.before_merge=false", "batch_size=16"]


# --------------------------------------------------------------------------- scale.py's floor
def test_the_floor_replays_the_runs_plan_and_evaluations():
    w = _common.work_of([*TINY, "rounds=3", "eval.every=2", "eval.agents=2", "schedule.every=2", "topology=ring"])
    ring = topologies.build("ring", 4).W
    assert [W is not None for W in w.mixes] == [False, True, False]  # exchanges every second round
    np.testing.assert_allclose(w.mixes[1], ring)
    assert [e is not None for e in w.evals] == [False, True, True]  # every second round, and the last
    assert (len(w.evals[1][1]), w.evals[1][2]) == (48, 2)  # during the run: the subsample, eval.agents of them
    assert (len(w.evals[2][1]), w.evals[2][2]) == (96, 4)  # the last round: the full test set, every agent
    assert w.steps == int(np.ceil(np.mean([len(p) for p in w.parts]) / 16))  # one local epoch of the mean shard
    assert sorted(np.concatenate(w.parts).tolist()) == list(range(len(w.y_train)))
    assert w.before == [None, None, None]  # eval.before_merge=false
    merged = _common.work_of([*TINY, "rounds=3", "eval.every=2", "eval.agents=2", "eval.before_merge=true"])
    # before each evaluated round's merge: the subsample, the agents due; in the last round too, every agent
    assert [None if b is None else (len(b[1]), b[2]) for b in merged.before] == [None, (48, 2), (48, 4)]


def test_the_floors_vmap_and_loop_predict_the_same():
    w = _common.work_of([*TINY, "agents=20", "model=mlp", "rounds=1"])  # 20 agents: a full block and a partial one
    k_vmap, k_loop = _common.Kernels(w, "vmap"), _common.Kernels(w, "loop")
    rows = torch.randn_like(k_vmap.stack.X) * 0.3  # agents that differ
    k_vmap.stack.X.copy_(rows)
    k_loop.stack.X.copy_(rows)
    got = k_vmap.correct(w.x_train, w.y_train, 20)
    assert got.tolist() == k_loop.correct(w.x_train, w.y_train, 20).tolist()
    assert len(set(got.tolist())) > 1


def test_the_floor_of_a_server_round_is_the_shard_weighted_mean():
    w = _common.work_of([*TINY, "algorithm=fedavg", "partition=dirichlet", "partition.min_samples=5"])
    sizes = np.array([len(p) for p in w.parts], float)
    np.testing.assert_allclose(w.mixes[0], np.tile(sizes / sizes.sum(), (4, 1)))


def test_the_floors_loop_and_vmap_compute_the_same_run():
    """A per-agent loop and a vmap over stacked agents (BatchNorm statistics included) reach the same state."""
    w = _common.work_of([*TINY, "model=cnn", "rounds=1", "data.n_train=96"])
    states = {}
    for kind in ("vmap", "loop"):
        k = _common.Kernels(w, kind)
        x0 = k.stack.X.clone()
        times = _common._time_parts(k, w)
        assert times["train"] > 0 and times["mix"] > 0 and times["eval"] > 0
        assert not torch.equal(k.stack.X, x0)
        states[kind] = k.stack.X
    torch.testing.assert_close(states["vmap"], states["loop"], rtol=1e-4, atol=1e-5)
    f = _common.floor(w)
    assert set(f["kinds"]) == {"vmap", "loop"}  # both kernels timed, the faster kept
    assert f["train"] == min(f["kinds"]["vmap"]["train"], f["kinds"]["loop"]["train"])
    assert f["run_s"] == pytest.approx(f["train"] + f["mix"] + f["eval"]) and f["threads"] >= 1


def test_the_floors_gossip_is_the_weighted_sum_of_rows():
    w = _common.work_of([*TINY, "topology=torus"])
    for how in ("dense", "csr"):
        k = _common.Kernels(w, "vmap")
        k.stack.X.copy_(torch.randn_like(k.stack.X))
        before = k.stack.X.double().numpy().copy()
        k.mix_with = how
        k.mix(w.mixes[0])
        np.testing.assert_allclose(k.stack.X.numpy(), w.mixes[0] @ before, rtol=1e-5, atol=1e-6)
    f = _common.floor(w, kinds=("vmap",))
    assert f["kinds"].keys() == {"vmap"} and f["best"]["train"] == "vmap"
    assert _common.exchange_floor(w) > 0


def test_the_floor_refuses_what_it_does_not_replay():
    with pytest.raises(ValueError, match="centralized"):
        _common.work_of([*TINY, "algorithm=centralized"])


# --------------------------------------------------------------------------- peers.py
def tiny_fedavg(**kw) -> argparse.Namespace:
    base = dict(data="digits", test_samples=2000, clients=4, rounds=2, model="mlp", partition="iid", lr=0.05,
                batch_size=32, local_epochs=1.0, seed=0, train_samples=None)
    return argparse.Namespace(**{**base, **kw})


def test_the_peers_workload_done_by_hand_is_dimats_fedavg(tmp_path):
    """What a Flower client computes (peers.local_round), averaged by shard size, is dimat's FedAvg run."""
    import dimat

    overrides = peers.dimat_overrides(tiny_fedavg())
    meta = peers.prepare(overrides, tmp_path, 1)
    _, arrays = peers.load(tmp_path)
    assert meta["clients"] == 4 and meta["steps"] >= 1
    state = dict(np.load(tmp_path / "init.npz"))
    for rnd in range(1, meta["rounds"] + 1):
        outs = [peers.local_round(meta, arrays, c, rnd, state) for c in range(meta["clients"])]
        w = np.array([size for _, size, _ in outs], float)
        state = {k: np.tensordot(w / w.sum(), np.stack([o[k] for o, _, _ in outs]).astype(np.float64), axes=1)
                 .astype(np.float32) for k in state}
    by_hand = peers.accuracy(meta, arrays, state)
    res = dimat.run(dimat.compose([*overrides, "backend=inprocess", f"run.dir={tmp_path}/run"]))
    assert by_hand > 0.3  # it learned (10 classes)
    assert abs(by_hand - res.summary["final_acc_mean"]) <= 2 / meta["test_samples"]


def test_the_peers_batch_order_is_a_dimat_agents():
    from dimat.runtime.host import agent_seed

    assert peers.agent_seed(7, 3) == agent_seed(7, 3)
    meta = {"seed": 0, "steps": 5, "batch_size": 4}
    idx = np.arange(100, 107)
    r1, r2 = peers.batch_order(meta, idx, 0, 1), peers.batch_order(meta, idx, 0, 2)
    stream = np.concatenate([r1, r2])
    # whole shuffled epochs of the shard, continuing across rounds
    for e in range(len(stream) // len(idx)):
        assert sorted(stream[e * 7 : (e + 1) * 7]) == list(idx)


def run_peers(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "peers.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_peers_skips_flower_with_a_note_when_it_is_absent():
    if peers.flower_probe(sys.executable)[0]:
        pytest.skip("flwr is importable here: the absent path cannot be exercised")
    p = run_peers("--clients", "3", "--rounds", "1", "--data", "digits", "--backends", "inprocess")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "the Flower side is skipped" in p.stdout
    rows = json.loads(p.stdout.strip().splitlines()[-1])["rows"]
    assert list(rows) == ["dimat (inprocess)"] and rows["dimat (inprocess)"]["acc"] > 0.3


def test_peers_refuses_an_unknown_backend():
    p = run_peers("--backends", "spark")
    assert p.returncode == 2 and "--backends spark: choose from ray, inprocess" in p.stderr


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not os.environ.get("DIMAT_FLOWER_PYTHON"), reason="set DIMAT_FLOWER_PYTHON to a Python with flwr")
def test_peers_runs_flower_on_the_same_work():
    p = run_peers("--clients", "8", "--rounds", "2", "--data", "digits", "--backends", "inprocess",
                  "--flower-python", os.environ["DIMAT_FLOWER_PYTHON"], timeout=1200)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    (dimat_row, flower_row) = out["rows"].values()
    assert abs(dimat_row["acc"] - flower_row["acc"]) <= 2 / out["meta"]["test_samples"]


# --------------------------------------------------------------------------- end to end (slow)
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_scale_prints_its_floor_column():
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "scale.py"), "--data", "digits", "--train-samples",
                        "400", "--rounds", "1", "--only", "exchange"], cwd=ROOT, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "x floor" in p.stdout
    rows = json.loads(p.stdout.strip().splitlines()[-1])
    assert rows[0]["label"] == "exchange" and rows[0]["floor_s"] > 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_gpu_script_runs_dry_on_the_cpu():
    p = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run"], cwd=ROOT, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    lines = [ln for ln in p.stdout.splitlines() if ln[:2] in ("1 ", "2 ", "3 ", "4 ", "5 ")]
    assert len(lines) == 5 and "same bytes and accuracies" in lines[-1], p.stdout


# --------------------------------------------------------------------------- examples.py
def test_the_examples_bench_runs_the_readmes_commands_and_reads_their_evaluation_share(tmp_path, capsys):
    import examples

    assert examples.order(["protocol_dimat", "defaults"]) == ["protocol_alone", "protocol_dimat", "defaults"]
    assert examples.eval_share({"wall_s": 10.0, "eval_s": 1.0, "final_eval_s": 1.5}) == pytest.approx(0.25)
    assert examples.eval_share({}) is None
    rows = examples.main(["--only", "dsgd_inprocess", "--out", str(tmp_path), "--json", "--",
                          "data=synthetic", "model.hidden=[16]"])
    (row,) = rows
    assert row["rc"] == 0 and row["args"] == examples.EXAMPLES["dsgd_inprocess"]
    assert (tmp_path / "dsgd_inprocess" / "summary.json").exists()
    assert row["summary"]["rounds"] == 3 and row["whole_s"] > row["summary"]["wall_s"] > 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed[0]["name"] == "dsgd_inprocess" and 0 <= printed[0]["eval_share"] <= 1
    with pytest.raises(SystemExit):
        examples.main(["--only", "nonesuch"])


# --------------------------------------------------------------------------- compression.py (slow: ~2 min)
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_compression_bench_writes_its_table(tmp_path):
    p = subprocess.run([sys.executable, "compression.py", "--quick", "--out", str(tmp_path)], cwd=ROOT / "bench",
                       capture_output=True, text=True, timeout=580)
    assert p.returncode == 0, p.stderr[-3000:]
    table = (tmp_path / "compression.md").read_text()
    for row in ("D-SGD exact", "D-SGD top-1% + EF", "CHOCO sign", "DIMAT qsgd 4-bit", "| sign |"):
        assert row in table
    assert (tmp_path / "compression_bytes.png").is_file() and (tmp_path / "compression_time.png").is_file()
