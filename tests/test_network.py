"""The network clock: a hand-computed round, the same simulated time on every run and backend, a deadline that
drops exactly the late agents' messages, and a resumed clock that goes on where it stopped."""

from __future__ import annotations

import numpy as np
import pytest

from cfg_helpers import crash_at
import dimat
from dimat import ConfigError, run
from dimat.metrics import read_metrics
from dimat.network import SERVER, Network, build, first_reached


def test_a_three_agent_round_by_hand():
    # agents 0, 1, 2 with speeds 1, 2, 0.5; a step costs 0.1 s at speed 1; 4 steps: trained at 0.4, 0.2, 0.8 s
    bw = np.array([[1, 8e6, 4e6], [8e6, 1, 8e6], [2e6, 8e6, 1]], dtype=float)  # bit/s, [sender, receiver]
    lat = np.array([[0, 0.01, 0.02], [0.01, 0, 0.01], [0.05, 0.01, 0]])
    net = Network(bw, lat, np.array([1.0, 2.0, 0.5]), 0.1)
    msgs = [(0, 1, 100_000), (0, 2, 100_000), (1, 0, 50_000), (2, 0, 100_000)]
    # agent 0: to 1 takes 0.1 s (0.4 -> 0.5, +0.01 = 0.51), then to 2 takes 0.2 s (0.5 -> 0.7, +0.02 = 0.72)
    # agent 1: to 0 takes 0.05 s (0.2 -> 0.25, +0.01 = 0.26); agent 2: to 0 takes 0.4 s (0.8 -> 1.2, +0.05 = 1.25)
    assert net.round_s(4, [msgs], [0, 1, 2]) == pytest.approx(1.25)
    assert net.round_s(4, [], [0, 1, 2]) == pytest.approx(0.8)  # no exchange: the slowest agent's training
    # a server phase: uploads, then the server's sends one after another at its own bandwidth
    server = Network(bw, lat, np.ones(3), 0.1, server_bandwidth=8e6, server_latency=0.01)
    up = [(i, SERVER, 100_000) for i in range(3)]  # each 0.1 s after training (0.1 s): arrive at 0.21
    down = [(SERVER, i, 100_000) for i in range(3)]  # from 0.21: 0.31, 0.41, 0.51 (+0.01 each)
    assert server.round_s(1, [up, down], [0, 1, 2]) == pytest.approx(0.52)
    # the transfers that make up the round (what the documentation's picture of a round draws)
    end, events = net.timeline(4, [msgs], [0, 1, 2])
    assert end == pytest.approx(1.25)
    assert [(s, d) for s, d, *_ in events] == [(0, 1), (0, 2), (1, 0), (2, 0)]
    np.testing.assert_allclose([e[2:] for e in events], [(0.4, 0.5, 0.51), (0.5, 0.7, 0.72), (0.2, 0.25, 0.26),
                                                         (0.8, 1.2, 1.25)])


def test_a_deadline_drops_only_the_late_and_the_round_waits_for_it():
    net = Network(np.full((3, 3), 8e6), np.zeros((3, 3)), np.array([1.0, 1.0, 0.25]), 0.1, deadline_s=0.5)
    assert net.late(2, [0, 1, 2]) == [2]  # trained at 0.2, 0.2, 0.8 s
    msgs = [(0, 1, 100_000), (1, 0, 100_000)]  # arrive at 0.3 s
    assert net.round_s(2, [msgs], [0, 1, 2]) == pytest.approx(0.5)


def test_seeded_draws_and_edge_list_links():
    a = build(6, seed=1, bandwidth=1e8, latency=0.01, step_s=0.1, link_sigma=0.5, speed_sigma=0.5, stragglers=0.5,
              slowdown=4.0)
    b = build(6, seed=1, bandwidth=1e8, latency=0.01, step_s=0.1, link_sigma=0.5, speed_sigma=0.5, stragglers=0.5,
              slowdown=4.0)
    assert np.array_equal(a.bandwidth, b.bandwidth) and np.array_equal(a.speed, b.speed)
    uniform = build(6, seed=1, bandwidth=1e8, latency=0.01, step_s=0.1, stragglers=0.5, slowdown=4.0)
    assert sorted(uniform.speed.tolist()) == [0.25] * 3 + [1.0] * 3  # half the fleet 4x slower
    c = build(3, seed=0, bandwidth=1e8, latency=0.01, step_s=0.1, links={(0, 1): (5e6, 0.2)})
    assert c.bandwidth[0, 1] == c.bandwidth[1, 0] == 5e6 and c.latency[1, 0] == 0.2 and c.latency[0, 2] == 0.01


def test_first_reached():
    recs = [{"acc_mean": 0.4, "sim_time_s": 1.0}, {"acc_mean": 0.75, "sim_time_s": 2.0}, {"event": "late"}]
    assert first_reached(recs, [0.5, 0.7, 0.9]) == {"50%": 2.0, "70%": 2.0, "90%": None}


def test_the_clock_is_the_same_on_every_backend_and_run(tiny):
    base = ("algorithm=dsgd", "rounds=2", "pretrain_epochs=0", "network=edge", "eval.every=1")
    local, again = run(tiny(*base, "backend=inprocess")), run(tiny(*base, "backend=inprocess"))
    on_ray = run(tiny(*base, "backend=ray", "backend.num_cpus=2"))
    times = [[r["sim_time_s"] for r in res.records] for res in (local, again, on_ray)]
    assert times[0] == times[1] == times[2] and times[0][0] > 0
    assert local.summary["sim_time_s"] == on_ray.summary["sim_time_s"] == times[0][-1]


def test_a_deadline_in_a_run_drops_the_stragglers_messages_and_records_them(tiny):
    # half the agents 50x slower: they miss a deadline the others meet
    net = ("network=custom", "network.step_s=0.01", "network.stragglers=0.5", "network.slowdown=50",
           "network.deadline_s=0.5", "network.bandwidth=1e9")
    res = run(tiny("algorithm=dsgd", "backend=inprocess", "rounds=2", "pretrain_epochs=0", "eval.every=1",
                   "topology=full", *net))
    full = run(tiny("algorithm=dsgd", "backend=inprocess", "rounds=2", "pretrain_epochs=0", "eval.every=1",
                    "topology=full", "network=custom", "network.step_s=0.01", "network.bandwidth=1e9"))
    late = res.records[0]["late"]
    assert len(late) == 2 and res.summary["late_rounds"] == 2
    # every agent hears only the on-time ones: 4 agents, 2 senders on time, each to 3 receivers
    per_message = full.records[0]["bytes_round"] // 12
    assert res.records[0]["bytes_round"] == 2 * 3 * per_message
    assert res.records[0]["sim_time_s"] == pytest.approx(0.5, rel=1e-3)  # the round waits for the deadline


def test_a_resumed_clock_goes_on_where_it_stopped(tiny, tmp_path):
    base = ("algorithm=dsgd", "backend=inprocess", "rounds=4", "run.checkpoint_every=2", "pretrain_epochs=0",
            "eval.every=1", "network=wan", "compress=topk", "compress.ratio=0.1")
    full = run(tiny(*base, f"run.dir={tmp_path}/full"))
    crash_at(tiny(*base, f"run.dir={tmp_path}/crash"), at=3)
    resumed = dimat.resume(tmp_path / "crash")
    assert [r["sim_time_s"] for r in read_metrics(tmp_path / "crash")] == [r["sim_time_s"] for r in full.records]
    assert resumed.summary["sim_time_s"] == full.summary["sim_time_s"]


@pytest.mark.parametrize("overrides,match", [
    (["network.bandwidth=1e6"], "network=none has none"),
    (["network=custom", "network.step_s=null"], "network.step_s"),
    (["network=custom", "network.deadline_s=1", "algorithm=choco"], "public copies"),
    (["network=custom", "network.stragglers=2"], "network.stragglers=2"),
    (["network=custom", "algorithm=local"], "sends nothing"),
    (["network=wan", "network.step_s=0.1"], "both price a local step"),
    (["network=custom", "network.slowdown=4"], "network.stragglers=0 makes none"),
])
def test_network_settings_that_cannot_apply_are_refused(tiny, overrides, match):
    with pytest.raises(ConfigError, match=match):
        run(tiny("backend=inprocess", *overrides))


def test_the_report_plots_accuracy_against_simulated_time(tiny, tmp_path):
    from dimat.report import main as report_main

    for net in ("wan", "edge"):
        run(tiny("algorithm=dsgd", "backend=inprocess", "rounds=2", "eval.every=1", f"network={net}",
                 f"run.dir={tmp_path}/sweep/{net}"))
    assert report_main([str(tmp_path / "sweep")]) == 0
    assert (tmp_path / "sweep" / "acc_vs_time.png").stat().st_size > 1000
    md = (tmp_path / "sweep" / "report.md").read_text()
    header, _, *rows = [line for line in md.splitlines() if line.startswith("|")]
    col = header.split("|").index(" sim s ")
    assert len(rows) == 2 and all(float(r.split("|")[col]) > 0 for r in rows)  # each run's simulated seconds
