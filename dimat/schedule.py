"""Communication schedules and the budget ledger: *when* and *with whom* agents exchange.

A schedule never touches tensors. After each round of local training the
driver asks it for a plan: which agents receive from which in-neighbours.
Decisions depend on progress p = step / T and on what the run measured
(consensus distance, each agent's drift since its last send). A schedule's
`mix` turns its plan into mixing weights: by default (`mixing_rows`) the
weight of a neighbour not heard from this round stays with the agent itself,
so every row still sums to one; schedules that pull a random number of
neighbours (`degree`, `ramp` of degree) weight the agent and each pulled
neighbour 1/(k+1), as "A Single Merging Suffices" does.

The `Ledger` wraps any schedule with a total budget (bytes or pulls) that is
never exceeded; when it runs out mid-round the receivers are served in a
seeded random order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Plan = dict[int, list[int]]  # receiver -> the neighbours it receives from this round


@dataclass(frozen=True)
class Progress:
    """Where the run stands after round `round` of `rounds`: step s of T; p = s / T."""

    round: int
    rounds: int
    step: int
    total_steps: int

    @property
    def p(self) -> float:
        return self.step / max(1, self.total_steps)


def full_plan(W: np.ndarray) -> Plan:
    """Every agent receives from all its in-neighbours."""
    n = len(W)
    return {i: [j for j in range(n) if j != i and W[i, j] > 0] for i in range(n)}


def plan_size(plan: Plan) -> int:
    return sum(len(v) for v in plan.values())


def uniform_rows(plan: Plan) -> dict[int, tuple[float, list[tuple[int, float]]]]:
    """Pull weights: an agent that heard k neighbours gives itself and each of them 1/(k+1)."""
    return {i: (1.0 / (len(src) + 1), [(j, 1.0 / (len(src) + 1)) for j in src]) for i, src in plan.items() if src}


RULES = ("fixed", "linear", "cosine", "slow_decrease", "slow_grow", "truncate", "truncate_v2")


def budget_r(rule: str, p: float, r_start: float, r_end: float, p1: float = 0.5, window: float = 0.1) -> float:
    """The single-merge paper's budget r(p): expected extra neighbours per agent per gossip round at progress
    p = step / total (here round / rounds). Every rule but `fixed` reaches r_end at the final round (p = 1)."""
    if rule == "fixed":
        return max(r_start, 0.0)
    if p >= 1.0:
        return max(r_end, 0.0)
    if rule == "linear":
        r = r_start - (r_start - r_end) * p
    elif rule == "cosine":
        r = r_end + 0.5 * (r_start - r_end) * (1 + math.cos(math.pi * p))
    elif rule == "slow_decrease":
        r = r_end + (r_start - r_end) * math.exp(-10 * p)
    elif rule == "slow_grow":
        r = r_start + (r_end - r_start) * math.log10(1 + 9 * p**80)
    elif rule == "truncate":
        r = r_start if p < p1 else r_end
    elif rule == "truncate_v2":
        r = r_end if p1 <= p < p1 + window else r_start
    else:
        raise ValueError(f"schedule.rule={rule} is unknown: use one of {', '.join(RULES)}")
    return max(r, 0.0)


def pull(rng: np.random.Generator, r: float, candidates: list[int]) -> list[int]:
    """⌊r⌋ of `candidates` drawn uniformly without replacement, one more with probability frac(r)
    (never more than there are)."""
    k = min(int(r), len(candidates))
    if k < len(candidates) and rng.random() < r - int(r):
        k += 1
    return sorted(int(j) for j in rng.choice(candidates, size=k, replace=False)) if k else []


def pull_plan(rng: np.random.Generator, W: np.ndarray, r) -> Plan:
    """Every agent pulls from `r` (a number, or a function of its in-neighbour count) of its in-neighbours."""
    plan = {}
    for i, nbrs in full_plan(W).items():
        k = pull(rng, r(len(nbrs)) if callable(r) else r, nbrs)
        if k:
            plan[i] = k
    return plan


def mixing_rows(W: np.ndarray, plan: Plan) -> dict[int, tuple[float, list[tuple[int, float]]]]:
    """Mixing rows restricted to the plan: (self weight, [(neighbour, weight)]).

    The weight of an in-neighbour not heard from this round stays with the agent
    (W_ii plus those weights), so a row-stochastic row still sums to one.
    """
    rows = {}
    for i, sources in plan.items():
        if sources:
            row = [(j, float(W[i, j])) for j in sources]
            unheard = sum(float(W[i, j]) for j in np.flatnonzero(W[i]) if j != i and j not in sources)
            rows[i] = (float(W[i, i]) + unheard, row)
    return rows


class Schedule:
    """Base: `plan` returns this round's exchanges; an empty plan means no exchange.

    Subclass it for a schedule of your own (`schedule._target_=pkg.mod.Class`): implement `plan`,
    and `state`/`load` if it remembers anything between rounds (checkpoints). `needs` names what
    the driver must measure before each plan and pass in `measured`: "consensus" (the mean squared
    distance to the average model) and/or "drift" ({agent: squared distance to the state it last sent}).
    """

    name = "base"
    needs: frozenset[str] = frozenset()

    def mix(self, W: np.ndarray, plan: Plan) -> dict[int, tuple[float, list[tuple[int, float]]]]:
        """The plan's mixing rows (self weight, [(neighbour, weight)]): W's, unheard weight kept by the agent."""
        return mixing_rows(W, plan)

    def plan(self, progress: Progress, W: np.ndarray, measured: dict) -> Plan:
        raise NotImplementedError

    def state(self) -> dict:
        return {}

    def load(self, state: dict) -> None:
        pass


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


class Periodic(Schedule):
    """Exchange with every neighbour once every `every` rounds."""

    name = "periodic"

    def __init__(self, every: int = 1):
        _check(every >= 1, f"schedule.every={every} must be >= 1")
        self.every = every

    def plan(self, progress, W, measured):
        return full_plan(W) if progress.round % self.every == 0 else {}


class Late(Schedule):
    """Sparse (every `every` rounds) until progress p1, then dense (every round from p >= p1)."""

    name = "late"

    def __init__(self, every: int = 4, p1: float = 0.5):
        _check(every >= 1, f"schedule.every={every} must be >= 1")
        _check(0.0 <= p1 <= 1.0, f"schedule.p1={p1} must be in [0, 1]")
        self.every, self.p1 = every, p1

    def plan(self, progress, W, measured):
        dense = progress.p >= self.p1
        return full_plan(W) if dense or progress.round % self.every == 0 else {}


class Window(Schedule):
    """Dense inside the progress window [p1, p1 + width) and at the final round, sparse (every `every`
    rounds) elsewhere (the paper's truncate_v2 boundaries)."""

    name = "window"

    def __init__(self, every: int = 4, p1: float = 0.5, width: float = 0.2):
        _check(every >= 1, f"schedule.every={every} must be >= 1")
        _check(0.0 <= p1 <= 1.0, f"schedule.p1={p1} must be in [0, 1]")
        _check(0.0 < width <= 1.0, f"schedule.width={width} must be in (0, 1]")
        self.every, self.p1, self.width = every, p1, width

    def plan(self, progress, W, measured):
        dense = self.p1 <= progress.p < self.p1 + self.width or progress.p >= 1.0
        return full_plan(W) if dense or progress.round % self.every == 0 else {}


class Ramp(Schedule):
    """Frequency or degree grows (`up`) or decays (`down`) with progress, linearly or by a cosine.

    The intensity f(p) goes from 0 to 1 (up) or 1 to 0 (down). For frequency
    the period is round(max_every − f·(max_every − 1)) (max_every null: 8).
    For degree each agent pulls r = low + f·(high − low) of its in-neighbours
    (⌊r⌋ drawn at random, one more with probability frac(r); low null: 0, high
    null: all of them) and weights itself and each pulled one 1/(k+1).
    """

    name = "ramp"

    def __init__(self, shape: str = "linear", direction: str = "up", max_every: int | None = None,
                 of: str = "frequency", low: float | None = None, high: float | None = None, seed: int = 0):
        _check(shape in ("linear", "cosine"), f"schedule.shape={shape} is unknown: use linear or cosine")
        _check(direction in ("up", "down"), f"schedule.direction={direction} is unknown: use up or down")
        _check(of in ("frequency", "degree"), f"schedule.of={of} is unknown: use frequency or degree")
        if of == "frequency":
            _check(low is None and high is None, "schedule.low/high apply to schedule.of=degree: drop them")
            max_every = 8 if max_every is None else max_every
            _check(max_every >= 1, f"schedule.max_every={max_every} must be >= 1")
        else:
            _check(max_every is None, "schedule.max_every applies to schedule.of=frequency: drop it")
            _check(low is None or low >= 0, f"schedule.low={low} must be >= 0")
            _check(high is None or high >= (low or 0), f"schedule.high={high} must be >= schedule.low")
        self.shape, self.direction, self.max_every, self.of = shape, direction, max_every, of
        self.low, self.high = float(low or 0.0), high
        self.rng = np.random.default_rng(seed)
        self._last = 0  # round of the last exchange (frequency mode)

    def intensity(self, p: float) -> float:
        f = p if self.shape == "linear" else 0.5 * (1.0 - math.cos(math.pi * p))
        return f if self.direction == "up" else 1.0 - f

    def plan(self, progress, W, measured):
        f = self.intensity(progress.p)
        if self.of == "frequency":
            period = round(self.max_every - f * (self.max_every - 1))
            if progress.round - self._last < period:
                return {}
            self._last = progress.round
            return full_plan(W)
        return pull_plan(self.rng, W, lambda deg: self.low + f * ((deg if self.high is None else self.high) - self.low))

    def mix(self, W, plan):
        return uniform_rows(plan) if self.of == "degree" else mixing_rows(W, plan)

    def state(self):
        return {"last": self._last, "rng": self.rng.bit_generator.state}

    def load(self, state):
        self._last = state["last"]
        self.rng.bit_generator.state = state["rng"]


class FinalOnly(Schedule):
    """No exchange during training: only the final global merge (if on) communicates."""

    name = "final_only"

    def plan(self, progress, W, measured):
        return {}


class Consensus(Schedule):
    """Exchange while the measured consensus distance is above `target`.

    Capped: never more than `max_every` rounds without an exchange, so a run
    that reached the target is still kept from drifting apart for long.
    """

    name = "consensus"
    needs = frozenset({"consensus"})

    def __init__(self, target: float = 0.0, max_every: int = 8):
        _check(target >= 0, f"schedule.target={target} must be >= 0")
        _check(max_every >= 1, f"schedule.max_every={max_every} must be >= 1")
        self.target, self.max_every = target, max_every
        self._last = 0

    def plan(self, progress, W, measured):
        far = measured.get("consensus", math.inf) > self.target
        if far or progress.round - self._last >= self.max_every:
            self._last = progress.round
            return full_plan(W)
        return {}

    def state(self):
        return {"last": self._last}

    def load(self, state):
        self._last = state["last"]


class Event(Schedule):
    """Event-triggered (SPARQ-style): agent j sends only if ‖x_j − x̂_j‖² > threshold.

    x̂_j is j's state when it last sent; its neighbours then receive from it.
    """

    name = "event"
    needs = frozenset({"drift"})

    def __init__(self, threshold: float = 0.0):
        _check(threshold >= 0, f"schedule.threshold={threshold} must be >= 0")
        self.threshold = threshold

    def plan(self, progress, W, measured):
        drift = measured["drift"]
        senders = {j for j, d in drift.items() if d > self.threshold}
        return {i: [j for j in nbrs if j in senders] for i, nbrs in full_plan(W).items()}


class Degree(Schedule):
    """The single-merge paper's budget: on every `every`-th round each agent pulls from r(p) neighbours.

    r(p) follows `rule` (see `budget_r`: fixed, linear, cosine, slow_decrease, slow_grow, truncate,
    truncate_v2) from r_start to r_end; an agent pulls ⌊r⌋ of its in-neighbours drawn uniformly at random
    plus one more with probability frac(r), and gives itself and each of the k it pulled the weight
    1/(k+1) (rows sum to one; columns need not). On topology=full that is the paper's `random` topology;
    on a ring or an exponential graph, its `ring+random` / `exponential+random`.
    """

    name = "degree"

    def __init__(self, rule: str = "fixed", r_start: float = 1.0, r_end: float = 1.0, p1: float = 0.5,
                 window: float = 0.1, every: int = 1, seed: int = 0):
        _check(rule in RULES, f"schedule.rule={rule} is unknown: use one of {', '.join(RULES)}")
        _check(r_start >= 0 and r_end >= 0, f"schedule.r_start={r_start}, r_end={r_end}: budgets must be >= 0")
        _check(0.0 <= p1 <= 1.0, f"schedule.p1={p1} must be in [0, 1]")
        _check(0.0 < window <= 1.0, f"schedule.window={window} must be in (0, 1]")
        _check(every >= 1, f"schedule.every={every} must be >= 1")
        self.rule, self.r_start, self.r_end, self.p1, self.window, self.every = rule, r_start, r_end, p1, window, every
        self.rng = np.random.default_rng([seed, 4441])

    def r(self, p: float) -> float:
        return budget_r(self.rule, p, self.r_start, self.r_end, self.p1, self.window)

    def plan(self, progress, W, measured):
        if progress.round % self.every:
            return {}
        return pull_plan(self.rng, W, self.r(progress.p))

    def mix(self, W, plan):
        return uniform_rows(plan)

    def state(self):
        return {"rng": self.rng.bit_generator.state}

    def load(self, state):
        self.rng.bit_generator.state = state["rng"]


SCHEDULES: dict[str, type[Schedule]] = {
    s.name: s for s in (Periodic, Late, Window, Ramp, FinalOnly, Consensus, Event, Degree)
}


class Ledger(Schedule):
    """A budget wrapped around a schedule: spends at most `bytes` (or `exchanges` transfers) in all.

    A transfer is one pull (a receiver hearing one sender). When the budget covers the whole plan it is
    granted; when it runs out mid-round the receivers are served in a seeded random order (each takes
    what is left, in its plan's order) and the rest of the plan is dropped. Planned and granted counts
    are kept so records can show both.
    """

    def __init__(self, inner: Schedule, state_bytes: int, bytes: float | None = None, exchanges: int | None = None,
                 seed: int = 0):
        self.inner, self.state_bytes = inner, int(state_bytes)
        self.rng = np.random.default_rng([seed, 9127])  # who is served first when the budget runs out
        self.name, self.needs = inner.name, frozenset(inner.needs)
        self.bytes_limit = None if bytes is None else float(bytes)
        self.exchange_limit = exchanges
        if self.bytes_limit is not None and self.bytes_limit < self.state_bytes:
            raise ValueError(
                f"budget.bytes={bytes:g} is smaller than one exchange ({self.state_bytes} bytes): raise the budget"
            )
        if exchanges is not None and exchanges < 1:
            raise ValueError(f"budget.exchanges={exchanges} must be >= 1")
        self.spent_bytes = 0
        self.spent_exchanges = 0
        self.last_planned = 0

    def remaining_transfers(self) -> float:
        left = math.inf
        if self.bytes_limit is not None:
            left = (self.bytes_limit - self.spent_bytes) // self.state_bytes
        if self.exchange_limit is not None:
            left = min(left, self.exchange_limit - self.spent_exchanges)
        return left

    def plan(self, progress, W, measured):
        wanted = self.inner.plan(progress, W, measured)
        self.last_planned = plan_size(wanted)
        left = self.remaining_transfers()
        granted: Plan = {}
        order = sorted(wanted) if left >= self.last_planned else self.rng.permutation(sorted(wanted)).tolist()
        for i in order:
            take = wanted[i][: int(max(0, min(left, len(wanted[i]))))]
            if take:
                granted[i] = take
                left -= len(take)
        n = plan_size(granted)
        self.spent_exchanges += n
        self.spent_bytes += n * self.state_bytes
        return granted

    def mix(self, W, plan):
        return self.inner.mix(W, plan)

    def state(self):
        return {"inner": self.inner.state(), "bytes": self.spent_bytes, "exchanges": self.spent_exchanges,
                "rng": self.rng.bit_generator.state}

    def load(self, state):
        self.inner.load(state["inner"])
        self.spent_bytes, self.spent_exchanges = state["bytes"], state["exchanges"]
        self.rng.bit_generator.state = state["rng"]


def build_schedule(name: str, **options) -> Schedule:
    """The built-in schedule called `name` with its own options (a TypeError names one it does not take)."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule={name} is unknown: use one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name](**options)
