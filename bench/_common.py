"""Helpers shared by the bench scripts: compose a config, run it, time it; and the floor of its arithmetic.

The floor (`work_of`, `floor`) repeats a configuration's arithmetic by hand in bare torch — the run's model,
agents, local steps, batches, optimizer and evaluation passes, the gossip as one weighted sum of the stacked
rows — so a bench can print dimat's time as a ratio to it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dimat  # noqa: E402
import topologies  # noqa: E402
from dimat import run  # noqa: E402
from dimat.layout import nhwc  # noqa: E402 - the same layout the agents use
from dimat.runtime.vectorized import AGENTS_PER_PASS  # noqa: E402 - the same blocks a vectorized host predicts in

RAY_ONLY = ("backend.address", "backend.agents_per_actor", "backend.num_cpus",
            "backend.placement", "backend.comm", "backend.gpus_per_actor", "backend.timeout_s")


def compose_cfg(overrides: list[str]):
    """`dimat.compose`, where a run the bench switches to backend=inprocess drops the shared Ray-only keys."""
    choices = [o.split("=", 1)[1] for o in overrides if o.startswith("backend=")]
    if choices and choices[-1] == "inprocess":
        overrides = [o for o in overrides if not o.startswith(RAY_ONLY)]
    return dimat.compose(overrides)


def timed_run(overrides: list[str], run_dir: str) -> tuple[float, dict]:
    """Wall time of a whole run (start-up included) and its summary."""
    cfg = compose_cfg([*overrides, f"run.dir={run_dir}", "run.progress=false"])
    t0 = time.perf_counter()
    res = run(cfg)
    return time.perf_counter() - t0, res.summary


def fashion_available() -> bool:
    return os.path.exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


# --------------------------------------------------------------------------- the floor
# What a configuration's arithmetic costs written by hand in bare torch, in this process: the same model
# (built by the run's own factory), agents, local steps, batch size and optimizer, the same evaluation
# passes, and the gossip as one weighted sum of the stacked rows. A run's time over it is dimat's overhead.


@dataclass(frozen=True)
class Work:
    """One configuration's arithmetic, read from the setup its dimat run builds."""

    make_model: Callable[[], nn.Module]  # the run's model factory (the floor starts every agent from its shared init)
    parts: list[np.ndarray]  # each agent's training indices
    x_train: np.ndarray
    y_train: np.ndarray
    batch_size: int
    steps: int  # local steps per round
    pretrain: int  # local steps before the first round
    rounds: int
    optimizer: dict  # {name, lr, momentum, weight_decay}
    label_smoothing: float
    clip: float | None
    mixes: list[np.ndarray | None]  # per round: the mixing matrix of its exchange (None: no exchange)
    # per round: what it evaluates — (inputs, labels, agents) — or None; the last round every agent on the
    # full test set, earlier evaluated rounds eval.agents of them on the subsample
    evals: list[tuple[np.ndarray, np.ndarray, int] | None]
    eval_batch: int
    communicates: bool  # an evaluated round also measures the consensus distance before its exchange
    # per round: what the agents are evaluated on just before its exchange (eval.before_merge) — the subsample
    # (the last round: every agent) — or None
    before: list[tuple[np.ndarray, np.ndarray, int] | None]
    seed: int = 0  # the run's seed: the shared initial weights


def work_of(overrides: list[str]) -> Work:
    """The arithmetic of the run `overrides` configures, from the same `setup` the run itself builds."""
    from dimat.api import to_plain
    from dimat.components import setup
    from dimat.schedule import Progress

    s = setup(to_plain(compose_cfg(overrides)))
    if s.centralized:
        raise ValueError("the floor is the agents' arithmetic: algorithm=centralized has its own row")
    c, ds, n, R = s.cfg, s.dataset, len(s.parts), s.cfg["rounds"]
    if s.schedule is not None and s.schedule.needs:
        raise ValueError(f"schedule={s.schedule.name} plans from measurements; the floor replays plans that need none")
    server = any(p.kind == "server" for p in s.algorithm.phases)
    sizes = np.array([len(p) for p in s.parts], dtype=np.float64)
    mixes: list[np.ndarray | None] = []
    for r in range(1, R + 1):
        if s.schedule is None:
            mixes.append(None)
            continue
        top = s.topology.at(r - 1) if isinstance(s.topology, topologies.TimeVarying) else s.topology
        W = topologies.column_stochastic(top) if s.algorithm.mixing == "column" else top.W
        plan = s.schedule.plan(Progress(r, R, r * s.steps_per_round, R * s.steps_per_round), W, {})
        if not plan:
            mixes.append(None)
        elif server:  # a server phase (fedavg): every agent gets the shard-size-weighted mean
            mixes.append(np.tile(sizes / sizes.sum(), (n, 1)))
        else:
            mixes.append(mixing_matrix(n, s.schedule.mix(W, plan)))
    every, idx = c["eval"]["every"], s.host.eval_index
    during = ((ds.x_test, ds.y_test) if idx is None else (ds.x_test[idx], ds.y_test[idx])) + (
        min(n, c["eval"]["agents"] or n),)
    evals = [(ds.x_test, ds.y_test, n) if r == R else during if r % every == 0 else None for r in range(1, R + 1)]
    before = [None if e is None or not c["eval"]["before_merge"] else during if r < R else (*during[:2], n)
              for r, e in enumerate(evals, 1)]
    return Work(
        make_model=functools.partial(s.host.model, input_shape=ds.input_shape, num_classes=ds.num_classes),
        parts=s.parts, x_train=ds.x_train, y_train=ds.y_train, batch_size=c["batch_size"], steps=s.steps_per_round,
        pretrain=s.pretrain_steps, rounds=R, optimizer=s.algorithm.optimizer,
        label_smoothing=s.algorithm.training["label_smoothing"], clip=s.algorithm.training["clip"], mixes=mixes,
        evals=evals, eval_batch=c["eval"]["batch_size"], communicates=s.algorithm.communicates,
        before=before, seed=s.host.seed,
    )


def mixing_matrix(n: int, rows: dict[int, tuple[float, list[tuple[int, float]]]]) -> np.ndarray:
    """The n×n matrix of a round's mixing rows (an agent without a row keeps its own state)."""
    W = np.eye(n)
    for i, (own, heard) in rows.items():
        W[i, i] = own
        for j, w in heard:
            W[i, j] = w
    return W


class Stack:
    """n models whose float tensors are the rows of one matrix X [n, size] (parameters first): the layout a
    hand-written vmap trains, a gossip mixes in one product, and a per-agent loop views one row at a time."""

    def __init__(self, make_model: Callable[[], nn.Module], n: int):
        self.base = make_model()  # every agent starts from this one init (the shared init of the run)
        sd = self.base.state_dict()
        names = {name for name, _ in self.base.named_parameters()}
        floats = sorted((k for k, v in sd.items() if v.is_floating_point()), key=lambda k: k not in names)
        sizes = [sd[k].numel() for k in floats]
        self.n, self.n_params = n, sum(s for k, s in zip(floats, sizes) if k in names)
        self.X = torch.cat([sd[k].reshape(-1).float() for k in floats]).repeat(n, 1)
        self.params, self.buffers, off = {}, {}, 0
        for k, size in zip(floats, sizes):
            view = self.X[:, off : off + size].view(n, *sd[k].shape)
            (self.params if k in names else self.buffers)[k] = view
            off += size
        # integer buffers (BatchNorm's batch counter) are bookkeeping: stacked beside X, never mixed
        self.buffers.update({k: v.repeat(n, *[1] * v.dim()) for k, v in sd.items() if not v.is_floating_point()})

    def modules(self, make_model: Callable[[], nn.Module]) -> list[nn.Module]:
        """One module per agent whose tensors are views of its row (what a per-agent loop trains)."""
        out = []
        for i in range(self.n):
            m = make_model()
            for k, v in {**self.params, **self.buffers}.items():
                owner_name, _, attr = k.rpartition(".")
                owner = m.get_submodule(owner_name) if owner_name else m
                if attr in owner._parameters:
                    owner._parameters[attr].data = v[i]
                else:
                    owner._buffers[attr] = v[i]
            out.append(m)
        return out


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def _optimizer(params: list[torch.Tensor], o: dict) -> torch.optim.Optimizer:
    """The run's optimizer: elementwise, so one over the stacked tensors is one per agent."""
    if o["name"] == "adam":
        return torch.optim.Adam(params, lr=o["lr"], weight_decay=o["weight_decay"], foreach=True)
    return torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"], foreach=True)


class Batches:
    """Every agent's batch indices, drawn for a whole round at once from its own shard: [steps, agents, batch]."""

    def __init__(self, parts: list[np.ndarray], batch_size: int, seed: int = 0):
        lens = [len(p) for p in parts]
        self.padded = torch.zeros(len(parts), max(lens), dtype=torch.int64)
        for i, p in enumerate(parts):
            self.padded[i, : len(p)] = torch.from_numpy(np.asarray(p, dtype=np.int64))
        self.lens = torch.tensor(lens, dtype=torch.float64)[:, None]
        self.batch_size, self.seed, self.gen = batch_size, seed, torch.Generator().manual_seed(seed)

    def draw(self, steps: int) -> torch.Tensor:
        n = len(self.padded)
        pos = (torch.rand(steps, n, self.batch_size, generator=self.gen, dtype=torch.float64) * self.lens).long()
        return self.padded[torch.arange(n)[:, None], pos]


def inference_model(m: torch.nn.Module, conv: bool) -> torch.nn.Module:
    """The model in eval mode; a convolutional one as a channels-last copy, with its BatchNorms folded into the
    convolutions where it has any (torch.fx's fuse): the faster inference on CPU."""
    m.eval()
    if not conv:
        return m
    if not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules()):
        return copy.deepcopy(m).to(memory_format=torch.channels_last)  # nothing to fold: no trace to pay for
    from torch.fx.experimental.optimization import fuse

    return fuse(m).to(memory_format=torch.channels_last)


class Kernels:
    """The floor's two ways through the same arithmetic: a hand-written vmap over the stacked agents,
    and a plain per-agent loop (one module per agent, views of the same rows)."""

    def __init__(self, w: Work, kind: str, seed: int = 0):
        self.w, self.kind = w, kind
        torch.manual_seed(w.seed)  # the run's shared init, as `build_agent_model` seeds it
        self.stack = Stack(w.make_model, len(w.parts))
        self.conv = has_conv(self.stack.base)
        self.x = torch.from_numpy(np.ascontiguousarray(w.x_train))
        self.y = torch.from_numpy(np.ascontiguousarray(w.y_train))
        self.batches = Batches(w.parts, w.batch_size, seed)
        loss_fn = functools.partial(F.cross_entropy, label_smoothing=w.label_smoothing)
        if kind == "vmap":
            base, self.opt = self.stack.base, _optimizer(list(self.stack.params.values()), w.optimizer)

            def loss(params, buffers, xb, yb):
                return loss_fn(functional_call(base, {**params, **buffers}, (xb,)), yb)

            self._step = vmap(grad(loss))
            self._forward = vmap(lambda p, b, xb: functional_call(base, {**p, **b}, (xb,)), in_dims=(0, 0, None))
        else:
            self.models = self.stack.modules(w.make_model)
            self.opts = [_optimizer(list(m.parameters()), w.optimizer) for m in self.models]
            self.loss_fn = loss_fn
        self.mix_with = "dense"  # or "csr": whichever product is faster (`choose_mix`)
        self._avg: nn.Module | None = None

    def warm_up(self, x: np.ndarray, y: np.ndarray) -> None:
        """One training step and one small evaluation, then every state back as it was: the first call of a
        transform or kernel pays one-time costs (imports, dispatch set-up) that are no part of the floor."""
        saved = self.stack.X.clone(), {k: v.clone() for k, v in self.stack.buffers.items()}
        self.train(1)
        self.correct(x[:8], y[:8], self.stack.n)
        self.stack.X.copy_(saved[0])
        for k, v in saved[1].items():
            self.stack.buffers[k].copy_(v)
        for opt in [self.opt] if self.kind == "vmap" else self.opts:
            opt.state.clear()  # momentum buffers start again from none, as a fresh optimizer's
        self.batches.gen.manual_seed(self.batches.seed)

    def train(self, steps: int) -> None:
        if steps <= 0:
            return
        idx = self.batches.draw(steps)
        if self.kind == "vmap":
            self.stack.base.train()
            # BatchNorm's batched running-statistics update writes only into contiguous tensors: the
            # statistics live in contiguous copies during the steps and go back into their rows after
            buffers = {k: v.contiguous() for k, v in self.stack.buffers.items()}
            for s in range(steps):
                grads = self._step(self.stack.params, buffers, self.x[idx[s]], self.y[idx[s]])
                for k, p in self.stack.params.items():
                    p.grad = grads[k].clamp_(-self.w.clip, self.w.clip) if self.w.clip else grads[k]
                self.opt.step()
            for k, v in buffers.items():
                if v.data_ptr() != self.stack.buffers[k].data_ptr():
                    self.stack.buffers[k].copy_(v)
            return
        for i, (m, opt) in enumerate(zip(self.models, self.opts)):  # agent-major, as a host trains its agents
            m.train()
            for s in range(steps):
                xb = self.x[idx[s, i]]
                loss = self.loss_fn(m(nhwc(xb) if self.conv else xb), self.y[idx[s, i]])  # the faster layout
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if self.w.clip:
                    for p in m.parameters():
                        p.grad.clamp_(-self.w.clip, self.w.clip)
                opt.step()

    @torch.no_grad()
    def correct(self, x: np.ndarray, y: np.ndarray, agents: int) -> torch.Tensor:
        """Correct predictions of the first `agents` agents on (x, y), in the dimat host's inference batches."""
        xt, yt, bs = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), self.w.eval_batch
        if self.kind == "vmap":
            self.stack.base.eval()
            # blocks of agents, each through every inference batch: a block's weights stay in cache across
            # its batches (all agents per batch would read every weight once per batch); convolutional models
            # one agent per block (their activations are large, and vmapped convolutions are grouped ones)
            block, out = 1 if self.conv else AGENTS_PER_PASS, []
            for lo in range(0, agents, block):
                hi = min(agents, lo + block)
                p = {k: v[lo:hi] for k, v in self.stack.params.items()}
                b = {k: v[lo:hi] for k, v in self.stack.buffers.items()}
                out.append(sum(((self._forward(p, b, xt[s : s + bs]).argmax(-1) == yt[s : s + bs]).sum(1)
                                for s in range(0, len(x), bs)), torch.zeros(hi - lo, dtype=torch.int64)))
            return torch.cat(out)
        out = []
        xt = nhwc(xt) if self.conv else xt
        for m in self.models[:agents]:
            m = inference_model(m, self.conv)
            out.append(sum(int((m(xt[s : s + bs]).argmax(1) == yt[s : s + bs]).sum()) for s in range(0, len(x), bs)))
        return torch.tensor(out)

    @torch.no_grad()
    def consensus(self) -> float:
        """Mean squared distance of the agents' parameters to their mean."""
        X = self.stack.X[:, : self.stack.n_params]
        return float((X - X.mean(0)).pow_(2).sum(1).mean())

    @torch.no_grad()
    def evaluate(self, x: np.ndarray, y: np.ndarray, agents: int) -> None:
        """What an evaluated round computes: the agents' accuracies, the consensus distance, the average model."""
        self.correct(x, y, agents)
        self.consensus()
        if self._avg is None:  # a spare model for the average, built once (as a host keeps a scratch model)
            self._avg = self.w.make_model()
        sd = {k: v.mean(0) if v.is_floating_point() else v[0] for k, v in {**self.stack.params,
                                                                              **self.stack.buffers}.items()}
        self._avg.load_state_dict(sd)
        avg = inference_model(self._avg, self.conv)
        xt = torch.from_numpy(np.ascontiguousarray(x))
        xt = nhwc(xt) if self.conv else xt
        for s in range(0, len(x), self.w.eval_batch):
            avg(xt[s : s + self.w.eval_batch]).argmax(1)

    @torch.no_grad()
    def choose_mix(self, W: np.ndarray) -> None:
        """Keep the faster of the dense and the sparse product for this mixing matrix (timed once, untimed)."""
        Wd, times = torch.from_numpy(W).float(), {}
        for how in ("dense", "csr"):
            t0 = time.perf_counter()
            self._product(Wd, how)
            times[how] = time.perf_counter() - t0
        self.mix_with = min(times, key=times.get)

    @torch.no_grad()
    def mix(self, W: np.ndarray) -> None:
        """X ← W X: the gossip as one weighted sum of the stacked rows."""
        self.stack.X.copy_(self._product(torch.from_numpy(W).float(), self.mix_with))

    def _product(self, Wd: torch.Tensor, how: str) -> torch.Tensor:
        if how == "dense":
            return Wd @ self.stack.X
        with warnings.catch_warnings():  # sparse CSR is "beta" in torch; the product is what we time
            warnings.simplefilter("ignore", UserWarning)
            return Wd.to_sparse_csr() @ self.stack.X


@contextlib.contextmanager
def torch_threads(threads: int | None = None):
    """torch's threads for a floor: `threads`, else the CPUs free to this process, as dimat chooses its own (on a
    busy machine a thread more than that makes every small kernel wait on a descheduled one: a small CNN's
    step took 3 ms with 1 thread and 250 ms with 2 here). Yields the count; restores the previous one."""
    from dimat.runtime.base import free_cpus

    before, threads = torch.get_num_threads(), threads or free_cpus()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def floor(w: Work, kinds: tuple[str, ...] | None = None, threads: int | None = None) -> dict:
    """Time `w` by hand, once per kernel kind; the floor takes the faster kernel for each part of the work.

    Returns seconds per part ({train, mix, eval}) for each kind, which kernel each part took, and the floor's
    `run_s`: what a run's rounds cost (pretraining, every round's steps, exchange and evaluation).
    Kinds: both by default — vmap wins with many small models, a plain loop of small steps with few agents or
    convolutions (vmap's per-step transform overhead is tens of milliseconds on a busy CPU).
    """
    kinds = kinds or ("vmap", "loop")
    with torch_threads(threads) as threads:
        parts = {kind: _time_parts(Kernels(w, kind), w) for kind in kinds}
    best = {part: min(kinds, key=lambda k: parts[k][part]) for part in ("train", "mix", "eval")}
    t = {part: parts[best[part]][part] for part in best}
    return {"kinds": parts, "best": best, **t, "run_s": t["train"] + t["mix"] + t["eval"], "threads": threads}


def _time_parts(k: Kernels, w: Work) -> dict[str, float]:
    """Run `w` through kernel `k` as the run does (pretrain; per round: steps, exchange, evaluation) and add
    up the seconds of each part."""
    t = {"train": 0.0, "mix": 0.0, "eval": 0.0}
    k.warm_up(w.x_train, w.y_train)
    first = next((W for W in w.mixes if W is not None), None)
    if first is not None:
        k.choose_mix(first)

    def timed(part: str, fn, *args) -> None:
        t0 = time.perf_counter()
        fn(*args)
        t[part] += time.perf_counter() - t0

    timed("train", k.train, w.pretrain)
    for W, ev, before in zip(w.mixes, w.evals, w.before):
        timed("train", k.train, w.steps)
        if ev is not None and w.communicates:  # what the driver measures before an evaluated round's exchange
            timed("eval", k.consensus)
            if before is not None:
                timed("eval", k.correct, *before)
        if W is not None:
            timed("mix", k.mix, W)
        if ev is not None:
            timed("eval", k.evaluate, *ev)
    return t


def exchange_floor(w: Work, repeats: int = 3) -> float:
    """Seconds of one exchange done by hand: every agent's state copied once (what must cross between
    processes) and the weighted sum of the stacked rows; the best of `repeats`."""
    W = next((W for W in w.mixes if W is not None), None)
    if W is None:
        raise ValueError("the run makes no exchange: nothing to floor")
    k, best = Kernels(w, "vmap"), float("inf")
    with torch_threads():
        k.choose_mix(W)
        for _ in range(repeats):
            t0 = time.perf_counter()
            k.stack.X.clone()  # the sender's copy (shared memory, a message)
            k.mix(W)
            best = min(best, time.perf_counter() - t0)
    return best
