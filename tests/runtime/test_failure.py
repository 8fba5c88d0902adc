"""A killed agent-host actor is restarted from the last checkpoint and the run replays to the same result."""

from __future__ import annotations

import numpy as np
import pytest
import ray

from dimat import experiment
from dimat import run
from dimat.metrics import read_metrics

COMMON = ("algorithm=dsgd", "backend=ray", "backend.num_cpus=2", "backend.agents_per_actor=2", "rounds=4",
          "run.checkpoint_every=2")


def test_a_killed_actor_is_restarted_and_the_run_replays(tiny, tmp_path, monkeypatch):
    clean = run(tiny(*COMMON, f"run.dir={tmp_path}/clean"))
    real_round, killed = experiment.Driver.round, []

    def kill_in_round_3(self, r):
        if r == 3 and not killed:
            ray.kill(self.backend.hosts[1])  # the process hosting agents 2 and 3 dies
            killed.append(r)
        real_round(self, r)

    monkeypatch.setattr(experiment.Driver, "round", kill_in_round_3)
    res = run(tiny(*COMMON, f"run.dir={tmp_path}/killed"))
    assert killed == [3] and res.summary["host_restarts"] == 1
    events = [r for r in read_metrics(res.run_dir) if "event" in r]
    assert events == [{"round": 2, "event": "host_restart", "host": 1, "failed_round": 3}]
    assert [r["round"] for r in res.records] == [1, 2, 3, 4]
    for a, b in zip(clean.records, res.records):
        np.testing.assert_allclose(a["acc"], b["acc"], atol=1e-6)
        assert a["bytes_total"] == b["bytes_total"]


def test_on_failure_stop_raises(tiny, monkeypatch):
    real_round = experiment.Driver.round

    def kill(self, r):
        if r == 2:
            ray.kill(self.backend.hosts[0])
        real_round(self, r)

    monkeypatch.setattr(experiment.Driver, "round", kill)
    with pytest.raises(experiment.HostFailure, match="agent host 0 died"):
        run(tiny(*COMMON, "run.on_failure=stop"))


def test_a_run_folder_the_hosts_cannot_see_is_refused(tiny, monkeypatch):
    from dimat.runtime import ops

    monkeypatch.setattr(ops, "sees", lambda host, folder: False)  # as if run.dir were node-local elsewhere
    with pytest.raises(experiment.ConfigError, match="every node shares"):
        run(tiny("algorithm=dsgd", "backend=inprocess"))


def test_drop_goes_on_without_the_dead_hosts_agents(tiny, monkeypatch):
    real_round = experiment.Driver.round

    def kill(self, r):
        if r == 3 and len(self.backend.hosts) == 3:
            ray.kill(self.backend.hosts[1])  # agents 2 and 3
        real_round(self, r)

    monkeypatch.setattr(experiment.Driver, "round", kill)
    res = run(tiny(*COMMON, "agents=6", "run.on_failure=drop"))
    events = [r for r in read_metrics(res.run_dir) if "event" in r]
    assert events == [{"round": 2, "event": "host_drop", "host": 1, "failed_round": 3, "agents_dropped": [2, 3]}]
    assert [r["round"] for r in res.records] == [1, 2, 3, 4]
    assert res.records[-1]["agents"] == [0, 1, 4, 5] and len(res.records[-1]["acc"]) == 4
    assert res.records[-1]["bytes_sent"][2] == res.records[1]["bytes_sent"][2]  # dropped agents send no more


def test_a_drop_that_would_disconnect_the_graph_stops_the_run():
    import topologies

    ring = topologies.build("ring", 6)
    experiment.check_connected(ring, [0, 1, 2, 3], [4, 5])  # a path: still connected
    with pytest.raises(RuntimeError, match="disconnects"):
        experiment.check_connected(ring, [0, 1, 3, 4], [2, 5])
