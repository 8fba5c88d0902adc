"""The algorithm interface: what an agent sends, and what it does with what it receives.

An algorithm is one class, a subclass of :class:`Algorithm`, named by the config
(`algorithm._target_=pkg.mod.Class`, its keys passed to the constructor). It is
built once on the driver (to check its options and price an exchange) and once
on every agent host, where it lives next to the agents. The driver decides
*when* and *with whom* (the schedule); the algorithm decides *what* travels and
*how* it is combined — including its message pattern, a tuple of :class:`Phase`:

- ``gossip`` — every planned sender's ``send`` method (default `payload`) makes
  one message, delivered to each of its planned receivers; each receiver's
  ``receive`` method (default `combine`) gets ``(agent, self_weight, received)``
  and may return replies ``{source: array}`` for a following ``reply`` phase.
- ``reply`` — the previous phase's replies travel back along each edge; the
  source's ``receive`` method gets them (``Received.source`` is the replier).
- ``server`` — every agent's ``send`` message goes to the driver, where
  `aggregate` makes one array that every agent then receives (weight 1, self
  weight 0).

What every algorithm must do around a merge is done once, by the framework:
with ``opt_state=reset`` an agent that received messages gets a fresh
optimizer before the round's last phase handles them; an agent whose weights
become non-finite is rolled back to its state before that phase; every message
is counted in the bytes; `agent_state` goes into checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from dimat.agent import OPTIMIZERS, Agent
from dimat.flat import FlatLayout, as_tensor
from dimat.metrics import SERVER  # the source (or destination) of a server phase's messages: the driver


@dataclass(frozen=True)
class Received:
    """One message an agent received this round, with its mixing weight."""

    source: int
    state: np.ndarray  # flat float32 vector, read-only (the object store, or a buffer reused next exchange)
    weight: float


@dataclass(frozen=True)
class Phase:
    """One step of an exchange's message pattern (see the module docstring)."""

    kind: str = "gossip"  # gossip | reply | server
    send: str = "payload"  # method (agent) -> np.ndarray making a sender's message (gossip, server)
    receive: str = "combine"  # method (agent, self_weight, received) -> replies | None
    every_agent: bool = False  # also call `receive` for agents that got nothing (and run on rounds without a plan)

    def __post_init__(self) -> None:
        if self.kind not in ("gossip", "reply", "server"):
            raise ValueError(f"Phase(kind={self.kind!r}) is unknown: use gossip, reply or server")


def gossip_average(own: torch.Tensor, self_weight: float, received: list[Received]) -> torch.Tensor:
    """In place: own ← w_ii·own + Σ_j w_ij·x_j (float32, the mixing-matrix row)."""
    own.mul_(self_weight)
    for r in received:
        own.add_(as_tensor(r.state).to(own.device, own.dtype), alpha=r.weight)
    return own


MAX_LR = 10.0  # a step size above this diverges every model dimat has met: refused as a slip


def optimizer_settings(cfg: Mapping | None) -> dict:
    """The `algorithm.optimizer` node checked and completed: {name, lr, momentum, weight_decay}."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - {"name", "lr", "momentum", "weight_decay"})
    if unknown:
        raise ValueError(f"algorithm.optimizer.{unknown[0]} is not an optimizer option: use name, lr, momentum "
                         "or weight_decay")
    name, lr, momentum = cfg.get("name", "msgd"), cfg.get("lr", 0.05), cfg.get("momentum")
    weight_decay = cfg.get("weight_decay", 0.0)
    if name not in OPTIMIZERS:
        raise ValueError(f"algorithm.optimizer.name={name} is unknown: use one of {', '.join(OPTIMIZERS)}")
    if not (isinstance(lr, (int, float)) and 0 < lr <= MAX_LR):  # nan and inf fail too
        raise ValueError(f"algorithm.optimizer.lr={lr} is out of range: give 0 < lr <= {MAX_LR:g} (typical: 0.1 for "
                         "SGD, 0.001 for Adam)")
    if not 0 <= weight_decay < 1:
        raise ValueError(f"algorithm.optimizer.weight_decay={weight_decay} must be in [0, 1)")
    if momentum is not None and name != "msgd":
        raise ValueError(f"algorithm.optimizer.momentum applies to name=msgd, not {name}: drop it or use msgd")
    if name == "msgd":
        momentum = 0.9 if momentum is None else momentum
        if not 0 <= momentum < 1:
            raise ValueError(f"algorithm.optimizer.momentum={momentum} must be in [0, 1)")
    return {"name": name, "lr": float(lr), "momentum": float(momentum or 0.0), "weight_decay": float(weight_decay)}


class Algorithm:
    """Base class: the hooks a host calls, and defaults that make it D-SGD.

    The defaults gossip the agent's flat state once per exchange and average what
    arrives with the mixing row. A new algorithm overrides what differs: `payload`
    and `combine` for a different message or merge, `phases` (and the methods they
    name) for a different message pattern, `train` for a different local step.
    """

    name: str = ""  # label in records and the console (default: the class name)
    communicates: bool = True  # False: agents never exchange (no schedule, budget or final merge by default)
    default_init: str = "shared"  # used when the top-level `init` is `auto`
    steps_per_round: int | None = None  # forces local_steps (e.g. 1 for per-step consensus methods)
    mixing: str = "row"  # row: the topology's W; column: its column-stochastic push-sum matrix
    uses_merge: bool = False  # takes the `merge` group's options as `merge=` (permutation merges)
    phases: tuple[Phase, ...] = (Phase(),)
    # set by the framework when the run compresses its gossip messages (`compress=`), before `prepare`
    compressed: bool = False
    # every exchange must reach every edge of a fixed graph (algorithms that keep public copies)
    every_edge: bool = False

    def __init__(self, *, optimizer: Mapping | None = None, opt_state: str = "keep", label_smoothing: float = 0.0,
                 clip: float | None = None):
        if opt_state not in ("keep", "reset"):
            raise ValueError(f"algorithm.opt_state={opt_state} is unknown: use keep or reset")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"algorithm.label_smoothing={label_smoothing} must be in [0, 1)")
        if clip is not None and not clip > 0:
            raise ValueError(f"algorithm.clip={clip} must be > 0 (or null: no clipping)")
        self.optimizer = optimizer_settings(optimizer)
        self.opt_state = opt_state
        # how every agent trains: what `Agent` takes besides its optimizer
        self.training = {"label_smoothing": float(label_smoothing), "clip": None if clip is None else float(clip)}

    @property
    def label(self) -> str:
        return self.name or type(self).__name__

    # -- on a host ---------------------------------------------------------
    def start(self, dataset, seed: int, device: str) -> None:
        """Once per host, before its agents are built (e.g. choose a shared proxy set from `dataset`)."""

    def prepare(self, agent: Agent, example: torch.Tensor) -> None:
        """Once per agent on its host, before training (e.g. attach a gradient hook)."""

    def before_train(self, agent: Agent) -> None:
        """Just before the agent's local steps of a round."""

    def train(self, agent: Agent, steps: int) -> float:
        """The agent's local work of a round; returns its mean loss. Overriding it rules out backend.vectorize."""
        return agent.train(steps)

    def payload(self, agent: Agent) -> np.ndarray:
        """What the agent sends its neighbours: its flat state, as a read-only view (the transport copies a
        message once, into the object store or a snapshot; subclasses may add more)."""
        state = agent.state()
        state.flags.writeable = False  # a subclass that edits it in place would edit the agent
        return state

    def combine(self, agent: Agent, self_weight: float, received: list[Received]) -> dict | None:
        """Merge the received messages into `agent` (default: the gossip average with the mixing row)."""
        gossip_average(agent.vec, self_weight, received)
        return None

    def aggregate(self, payloads: dict[int, np.ndarray], sizes: dict[int, int]) -> np.ndarray:
        """On the driver, for a server phase: one array from every agent's message (sizes: shard sizes)."""
        raise NotImplementedError(f"{self.label} has a server phase but no aggregate method")

    # -- sizes (price an exchange before the run starts) -------------------
    def message_floats(self, phase: int, layout: FlatLayout) -> int:
        """Float32 values in one message of phase `phase` (default: the flat state)."""
        return layout.size

    def payload_floats(self, layout: FlatLayout) -> int:
        """Float32 values one exchange moves along one edge, over every neighbour phase (budgets price it)."""
        return sum(self.message_floats(k, layout) for k, p in enumerate(self.phases) if p.kind != "server")

    def payload_bytes(self, layout: FlatLayout, compressor=None) -> int:
        """Bytes one exchange moves along one edge: its neighbour phases' messages, encoded by `compressor`
        where one is given (gossip phases: see `dimat.compress`)."""
        return sum(compressor.nbytes(self.message_floats(k, layout)) if compressor is not None and p.kind == "gossip"
                   else 4 * self.message_floats(k, layout) for k, p in enumerate(self.phases) if p.kind != "server")

    def compress_problem(self) -> str | None:
        """Why this algorithm (with these options) cannot take compressed messages, or None."""
        return None

    def sent(self, agent: Agent, phase: int, message: np.ndarray) -> None:
        """Called with what agent's receivers will decode from its phase-`phase` message, when messages are
        compressed (before any of them is received): algorithms that keep public copies update theirs."""

    # -- checkpoints -------------------------------------------------------
    def agent_state(self, index: int) -> dict:
        """What the algorithm remembers about agent `index` (tensors and plain values: saved in checkpoints)."""
        return {}

    def load_agent_state(self, index: int, state: dict) -> None:
        pass
