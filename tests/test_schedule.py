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


def test_late_is_sparse_then_dense_from_p1_on():
    assert rounds_with_exchange(build_schedule("late", every=4, p1=0.5)) == [4, 5, 6, 7, 8, 9, 10]  # p >= p1


def test_window_is_dense_inside_the_window_and_at_the_final_round():
    assert rounds_with_exchange(build_schedule("window", every=100, p1=0.3, width=0.3)) == [3, 4, 5, 10]


def test_final_only_never_exchanges():
    assert rounds_with_exchange(build_schedule("final_only")) == []


def test_ramp_up_exchanges_more_often_late():
    got = rounds_with_exchange(build_schedule("ramp", shape="linear", direction="up", max_every=4), R=20)
    early, late = sum(r <= 10 for r in got), sum(r > 10 for r in got)
    assert late > early, got
    down = rounds_with_exchange(build_schedule("ramp", direction="down", max_every=4), R=20)
    assert sum(r <= 10 for r in down) > sum(r > 10 for r in down), down


def test_ramp_by_degree_pulls_from_low_to_high_with_uniform_weights():
    s = build_schedule("ramp", of="degree", direction="up", seed=0)  # low 0, high: all (2 on this ring)
    pulls = [plan_size(s.plan(prog(r, 1000), W, {})) for r in range(1, 1001)]
    assert pulls[-1] == 2 * N and sum(pulls[:10]) < N  # nothing early (0 allowed), everyone at the end
    assert sum(pulls) == pytest.approx(N * sum(2 * r / 1000 for r in range(1, 1001)), rel=0.02)
    rows = s.mix(W, {0: [1]})
    assert rows == {0: (0.5, [(1, 0.5)])}  # 1/(k+1) for itself and each neighbour pulled
    fixed = build_schedule("ramp", of="degree", low=1, high=1)
    assert all(plan_size(fixed.plan(prog(r), W, {})) == N for r in range(1, 11))
    with pytest.raises(ValueError, match="max_every applies to schedule.of=frequency"):
        build_schedule("ramp", of="degree", max_every=4)


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


# -- the single-merge paper's degree budget r(p) ----------------------------------------------------------
from dimat.schedule import RULES, budget_r  # noqa: E402

def ring(n: int) -> np.ndarray:
    M = np.zeros((n, n))
    for i in range(n):
        M[i, i] = M[i, (i + 1) % n] = M[i, (i - 1) % n] = 1 / 3
    return M


@pytest.mark.parametrize("rule,p,r_start,r_end,extra,expected", [
    # values of the paper's compute_r (core/communication.py) at progress p
    ("fixed", 1.0, 0.2, 31, {}, 0.2),
    ("linear", 0.25, 4.0, 0.0, {}, 3.0),
    ("cosine", 0.5, 4.0, 0.0, {}, 2.0),
    ("cosine", 0.25, 4.0, 0.0, {}, 2.0 * (1 + np.cos(np.pi / 4))),
    ("slow_decrease", 0.1, 4.0, 0.0, {}, 4.0 * np.exp(-1.0)),
    ("slow_grow", 0.99, 0.2, 16.0, {}, 0.2 + 15.8 * np.log10(1 + 9 * 0.99**80)),
    ("slow_grow", 0.5, 0.2, 16.0, {}, 0.2 + 15.8 * np.log10(1 + 9 * 0.5**80)),
    ("truncate", 0.996, 0.2, 31, {"p1": 0.997}, 0.2),
    ("truncate", 0.997, 0.2, 31, {"p1": 0.997}, 31),
    ("truncate_v2", 0.92, 0.2, 31, {"p1": 0.9, "window": 0.05}, 31),
    ("truncate_v2", 0.96, 0.2, 31, {"p1": 0.9, "window": 0.05}, 0.2),
    ("truncate_v2", 1.0, 0.2, 31, {"p1": 0.9, "window": 0.05}, 31),  # the final round: r_end
    ("linear", 1.0, 4.0, 9.0, {}, 9.0),
    ("linear", 0.5, 0.0, -2.0, {}, 0.0),  # never negative
])
def test_budget_r_follows_the_papers_rules(rule, p, r_start, r_end, extra, expected):
    assert budget_r(rule, p, r_start, r_end, **extra) == pytest.approx(expected, rel=1e-12)


def expected_pulls(r: float, degree: int) -> float:
    return float(degree) if r >= degree else int(r) + (r - int(r))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("r_start,r_end", [(0.0, 2.0), (2.0, 0.0), (0.3, 1.7)])
def test_each_agent_pulls_the_expected_number_of_neighbours_over_a_run(rule, r_start, r_end):
    n, R = 16, 400
    Wr = ring(n)
    s = build_schedule("degree", rule=rule, r_start=r_start, r_end=r_end, p1=0.6, window=0.2, seed=1)
    pulls = np.zeros(n)
    for r in range(1, R + 1):
        for i, src in s.plan(Progress(r, R, r, R), Wr, {}).items():
            pulls[i] += len(src)
    expected = sum(expected_pulls(s.r(r / R), 2) for r in range(1, R + 1))
    integer = all(float(s.r(r / R)).is_integer() for r in range(1, R + 1))
    if integer:
        assert (pulls == expected).all(), (pulls, expected)  # exactly, for integer budgets
    else:
        assert abs(pulls.mean() - expected) < 4 * np.sqrt(R * 0.25 / n) + 1e-9, (pulls.mean(), expected)


def test_truncate_switches_exactly_at_p1_and_weights_are_uniform():
    n, R = 8, 10
    s = build_schedule("degree", rule="truncate", r_start=0, r_end=2, p1=0.5)
    sizes = [plan_size(s.plan(Progress(r, R, r, R), ring(n), {})) for r in range(1, R + 1)]
    assert sizes == [0, 0, 0, 0] + [2 * n] * 6  # rounds 5..10 have p >= 0.5
    plan = build_schedule("degree", r_start=1).plan(Progress(1, R, 1, R), np.full((n, n), 1 / n), {})
    rows = build_schedule("degree").mix(None, plan)
    assert all(len(src) == 1 for src in plan.values()) and all(w == 0.5 for w, _ in rows.values())
    every = build_schedule("degree", r_start=1, every=3)
    assert [bool(every.plan(Progress(r, R, r, R), ring(n), {})) for r in range(1, 7)] == [False, False, True] * 2


def test_a_budget_running_out_mid_round_is_shared_in_a_seeded_random_order():
    firsts = []
    for seed in range(6):
        ledger = Ledger(build_schedule("periodic"), state_bytes=1, exchanges=3, seed=seed)
        firsts.append(tuple(sorted(ledger.plan(prog(1), W, {}))))
    assert len(set(firsts)) > 1  # not always the low-index receivers
    again = Ledger(build_schedule("periodic"), state_bytes=1, exchanges=3, seed=0)
    assert tuple(sorted(again.plan(prog(1), W, {}))) == firsts[0]  # seeded
