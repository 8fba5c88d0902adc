"""Schedules decide which exchanges happen; the ledger never overspends."""

from __future__ import annotations

import numpy as np
import pytest

from dimat.schedule import Ledger, Progress, build_schedule, full_plan, mixing_rows, plan_size

N = 6
# ring with 1/3 weights
W = np.zeros((N, N))
for i in range(N):
    W[i, i] = W[i, (i + 1) % N] = W[i, (i - 1) % N] = 1 / 3


def prog(r: int, R: int = 10) -> Progress:
    return Progress(r, R, r * 10, R * 10)


def rounds_with_exchange(sched, R=10, measured=None) -> list[int]:
    return [r for r in range(1, R + 1) if sched.plan(prog(r, R), W, measured or {})]


def test_periodic():
    assert rounds_with_exchange(build_schedule("periodic", every=3)) == [3, 6, 9]
    assert plan_size(build_schedule("periodic").plan(prog(1), W, {})) == 2 * N


def test_late_is_sparse_then_dense():
    assert rounds_with_exchange(build_schedule("late", every=4, p1=0.5)) == [4, 6, 7, 8, 9, 10]


def test_window_is_dense_inside_the_window_only():
    assert rounds_with_exchange(build_schedule("window", every=100, p1=0.3, width=0.3)) == [3, 4, 5]


def test_final_only_never_exchanges():
    assert rounds_with_exchange(build_schedule("final_only")) == []


def test_ramp_up_exchanges_more_often_late():
    got = rounds_with_exchange(build_schedule("ramp", shape="linear", direction="up", max_every=4), R=20)
    early, late = sum(r <= 10 for r in got), sum(r > 10 for r in got)
    assert late > early, got
    down = rounds_with_exchange(build_schedule("ramp", direction="down", max_every=4), R=20)
    assert sum(r <= 10 for r in down) > sum(r > 10 for r in down), down


def test_ramp_by_degree_hears_from_more_neighbours_later():
    s = build_schedule("ramp", of="degree", direction="up", seed=0)
    assert plan_size(s.plan(prog(1, 10), W, {})) == N  # ceil(0.1 * 2) = 1 neighbour each
    assert plan_size(s.plan(prog(10, 10), W, {})) == 2 * N


def test_consensus_exchanges_until_target_then_is_capped():
    s = build_schedule("consensus", target=0.5, max_every=3)
    assert s.plan(prog(1), W, {"consensus": 2.0})
    assert not s.plan(prog(2), W, {"consensus": 0.1})
    assert not s.plan(prog(3), W, {"consensus": 0.1})
    assert s.plan(prog(4), W, {"consensus": 0.1})  # 3 rounds of silence: the cap forces one


def test_event_only_triggered_senders_are_heard():
    s = build_schedule("event", threshold=1.0)
    drift = {i: 0.0 for i in range(N)} | {2: 5.0}
    plan = s.plan(prog(1), W, {"drift": drift})
    assert {i for i, src in plan.items() if src} == {1, 3}
    assert all(src == [2] for src in plan.values() if src)


def test_mixing_rows_keep_unheard_weight_with_self():
    rows = mixing_rows(W, {0: [1]})
    self_w, row = rows[0]
    assert self_w == pytest.approx(2 / 3) and row == [(1, pytest.approx(1 / 3))]
    assert mixing_rows(W, {0: []}) == {}


@pytest.mark.parametrize("name", ["periodic", "late", "window", "ramp", "consensus"])
@pytest.mark.parametrize("budget", [1000, 4000, 12345])
def test_ledger_never_exceeds_its_budget(name, budget):
    options = {"ramp": {"max_every": 2}, "consensus": {"max_every": 2}}.get(name, {"every": 2})  # each its own
    ledger = Ledger(build_schedule(name, **options), state_bytes=100, bytes=budget)
    spent = 0
    for r in range(1, 31):
        spent += plan_size(ledger.plan(prog(r, 30), W, {"consensus": 1.0})) * 100
        assert spent <= budget
    assert spent == ledger.spent_bytes
    assert budget - spent < 100 * 2 * N  # it does spend the budget when the schedule asks


def test_ledger_in_exchanges_and_its_validation():
    ledger = Ledger(build_schedule("periodic"), state_bytes=8, exchanges=5)
    assert plan_size(ledger.plan(prog(1), W, {})) == 5
    assert ledger.last_planned == 2 * N
    assert ledger.plan(prog(2), W, {}) == {}
    with pytest.raises(ValueError, match="smaller than one exchange"):
        Ledger(build_schedule("periodic"), state_bytes=100, bytes=50)


@pytest.mark.parametrize(
    "name,kw,match",
    [("periodic", {"every": 0}, "every"), ("late", {"p1": 1.5}, "p1"), ("window", {"width": 0}, "width"),
     ("ramp", {"shape": "square"}, "shape"), ("consensus", {"target": -1}, "target"), ("nope", {}, "unknown")],
)
def test_out_of_range_parameters_are_refused(name, kw, match):
    with pytest.raises(ValueError, match=match):
        build_schedule(name, **kw)


def test_full_plan_lists_in_neighbours():
    assert full_plan(W)[0] == [1, 5]


def test_a_schedule_takes_only_its_own_options():
    with pytest.raises(TypeError, match="p1"):
        build_schedule("periodic", p1=0.99)  # refused, not ignored
