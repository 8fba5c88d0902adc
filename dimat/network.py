"""A network clock: every round's duration on a simulated network and fleet, never this machine's time.

Pure arithmetic on what a run already knows -- each agent's local steps and the bytes every message carried
-- so the clock is the same on every run of the same config, whatever backend or machine runs it:

- each agent a compute speed (1 = nominal; a seeded log-normal spread, a seeded fraction of stragglers
  `slowdown`× slower) and each local step a cost: `step_s`, or the model's counted FLOPs for one training
  step (forward and backward, at the run's batch size) at the preset's device speed `flops`;
- each directed link a bandwidth (bit/s) and a latency (s): the preset's, spread log-normally by a seeded
  draw, or an edge list's `bandwidth` and `latency` attributes;
- a synchronous round: every agent trains; each sender's messages (one per receiver, as unicasts) leave
  through its own uplink one after another -- the first when its training ends -- each taking its bytes × 8
  / bandwidth, and arrive after the link's latency; a later phase of the exchange (a reply, a server's
  broadcast) starts when the one before has arrived everywhere; the round ends when every agent has trained
  and the last message has arrived. A server (fedavg) has the preset's link to every agent.
- `deadline_s`: an agent whose training ends after the deadline has its messages dropped for that round (the
  driver leaves it out of the plan); the round then lasts at least until the deadline.

The final global merge is not on the clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SERVER = -1


class NetworkError(ValueError):
    """An invalid network setting (one line, naming the key)."""


@dataclass(frozen=True)
class Network:
    """The simulated network of one run: per directed link (sender, receiver) a bandwidth and a latency, per
    agent a speed, the seconds of one local step at speed 1, and an optional deadline."""

    bandwidth: np.ndarray  # [n, n] bit/s, [sender, receiver]
    latency: np.ndarray  # [n, n] s
    speed: np.ndarray  # [n]
    step_s: float
    deadline_s: float | None = None
    server_bandwidth: float = 1e9
    server_latency: float = 0.0

    def train_s(self, steps: int) -> np.ndarray:
        """Seconds each agent spends on `steps` local steps."""
        return steps * self.step_s / self.speed

    def late(self, steps: int, alive: Sequence[int]) -> list[int]:
        """The agents whose training of `steps` steps ends after the deadline (their messages are dropped)."""
        if self.deadline_s is None:
            return []
        t = self.train_s(steps)
        return [i for i in alive if t[i] > self.deadline_s]

    def round_s(self, steps: int, phases: Sequence[Sequence[tuple[int, int, int]]], alive: Sequence[int]) -> float:
        """The duration of a round: `steps` local steps, then the exchange whose phases moved these
        (sender, receiver, bytes) messages (SERVER = -1 for a server)."""
        return self.timeline(steps, phases, alive)[0]

    def timeline(self, steps: int, phases: Sequence[Sequence[tuple[int, int, int]]],
                 alive: Sequence[int]) -> tuple[float, list[tuple[int, int, float, float, float]]]:
        """The round's duration and every transfer in it, (sender, receiver, start, end on the uplink, arrival):
        what `round_s` adds up (the documentation draws it)."""
        alive = list(alive)
        ready = self.train_s(steps)
        trained = max(ready[i] for i in alive) if alive else 0.0
        if self.deadline_s is not None and trained > self.deadline_s:
            trained = self.deadline_s  # the late ones are not waited for
        start = {i: float(ready[i]) for i in alive}  # when each sender's uplink is first free
        end = trained
        events: list[tuple[int, int, float, float, float]] = []
        for k, messages in enumerate(phases):
            if not messages:
                continue
            if k > 0:  # a later phase starts when the one before has arrived everywhere
                start = {i: end for i in alive}
            free = dict(start)
            up = [m for m in messages if m[1] == SERVER]
            down = [m for m in messages if m[0] == SERVER]
            arrivals = []
            for src, dst, nbytes in sorted(m for m in messages if SERVER not in m[:2]):
                t0 = free[src]
                t1 = t0 + 8.0 * nbytes / self.bandwidth[src, dst]
                free[src] = t1
                arrivals.append(t1 + self.latency[src, dst])
                events.append((src, dst, t0, t1, arrivals[-1]))
            for src, _, nbytes in sorted(up):
                t0 = free[src]
                t1 = t0 + 8.0 * nbytes / self.server_bandwidth
                free[src] = t1
                arrivals.append(t1 + self.server_latency)
                events.append((src, SERVER, t0, t1, arrivals[-1]))
            if down:  # the server sends when every upload has arrived, one agent after another
                t = max(arrivals, default=end)
                for _, dst, nbytes in sorted(down, key=lambda m: m[1]):
                    t0, t = t, t + 8.0 * nbytes / self.server_bandwidth
                    arrivals.append(t + self.server_latency)
                    events.append((SERVER, dst, t0, t, arrivals[-1]))
            end = max(end, max(arrivals, default=end))
        if self.deadline_s is not None and any(ready[i] > self.deadline_s for i in alive):
            end = max(end, self.deadline_s)
        return float(end), events


def build(n: int, *, seed: int, bandwidth: float, latency: float, step_s: float, link_sigma: float = 0.0,
          speed_sigma: float = 0.0, stragglers: float = 0.0, slowdown: float = 1.0, deadline_s: float | None = None,
          links: dict | None = None) -> Network:
    """A network for n agents, its random parts drawn from `seed`; `links` {(i, j): (bandwidth, latency)} from an
    edge list override the drawn ones (both directions)."""
    for key, value in (("bandwidth", bandwidth), ("step_s", step_s), ("slowdown", slowdown)):
        if not (value > 0 and math.isfinite(value)):
            raise NetworkError(f"network.{key}={value} must be a positive number")
    for key, value in (("latency", latency), ("link_sigma", link_sigma), ("speed_sigma", speed_sigma)):
        if not (value >= 0 and math.isfinite(value)):
            raise NetworkError(f"network.{key}={value} must be >= 0")
    if not 0 <= stragglers <= 1:
        raise NetworkError(f"network.stragglers={stragglers} is a fraction of the agents: give it in [0, 1]")
    if deadline_s is not None and not deadline_s > 0:
        raise NetworkError(f"network.deadline_s={deadline_s} must be > 0 (or null: no deadline)")
    rng = np.random.default_rng([seed, 6131])
    bw = bandwidth * np.exp(link_sigma * rng.standard_normal((n, n)))
    lat = np.full((n, n), float(latency))
    speed = np.exp(speed_sigma * rng.standard_normal(n))
    slow = rng.permutation(n)[: round(stragglers * n)]
    speed[slow] /= slowdown
    for (i, j), (b, lt) in (links or {}).items():
        for a, c in ((i, j), (j, i)):
            if b is not None:
                bw[a, c] = float(b)
            if lt is not None:
                lat[a, c] = float(lt)
    return Network(bw, lat, speed, float(step_s), deadline_s, server_bandwidth=float(bandwidth),
                   server_latency=float(latency))


def step_flops(model, example, batch_size: int) -> float:
    """FLOPs of one training step of `model` on a batch of `batch_size` samples like `example` (forward and
    backward, counted by torch; deterministic)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = example[:1].expand(batch_size, *example.shape[1:]).clone()
    was = model.training
    model.train()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x).float().sum().backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was)
    return float(counter.get_total_flops()) or float(2 * batch_size * sum(p.numel() for p in model.parameters()))


def first_reached(records: list[dict], targets: Sequence[float]) -> dict[str, float | None]:
    """For each target accuracy, the simulated time at which the agents' mean first reached it (None: never)."""
    out = {}
    for t in targets:
        hit = next((r["sim_time_s"] for r in records if r.get("acc_mean") is not None and "sim_time_s" in r
                    and r["acc_mean"] >= t), None)
        out[f"{100 * t:g}%"] = hit
    return out
