"""Vectorized agents (`backend.vectorize=true`): a host's agents take their local steps as one batched computation.

The flat states of the host's agents become the rows of one matrix X [agents,
state]; every agent's module tensors stay views into its row, so merging,
evaluation, checkpoints and the algorithms see ordinary agents. A local step
is one call: autograd through `vmap(loss)` over the stacked parameters (views of X) and
the stacked batches (each agent draws its own, from its own shard and RNG),
then one optimizer step over the stacked parameters — SGD with or without
momentum is elementwise, so one optimizer over the stack is exactly one
optimizer per agent. Per-agent Python work per step is one batch draw.

Limits: models without running statistics (BatchNorm's would need per-agent
updates inside vmap: use model.norm=ln|gn|none), optimizers sgd|msgd.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.func import functional_call, vmap

from dimat.agent import Agent, clip_
from dimat.flat import FlatLayout, bind
from dimat.optim import make_optimizer

AGENTS_PER_PASS = 16  # agents predicted together (their weights stay in cache through a block's batches)


def check_vectorizable(layout: FlatLayout, optimizer: str) -> None:
    """Refuse what one batched step over stacked agents cannot do (checked again before a run starts)."""
    if layout.n_params != layout.size:
        raise ValueError("backend.vectorize=true needs a model without BatchNorm statistics: set model.norm=ln, gn or none")
    if optimizer not in ("sgd", "msgd"):
        raise ValueError(f"backend.vectorize=true supports algorithm.optimizer.name=sgd|msgd, not {optimizer}")


class AgentGroup:
    """The agents of one host, trained in lockstep as one batched computation."""

    def __init__(self, agents: list[Agent]):
        first = agents[0]
        c = first.optimizer_cfg
        check_vectorizable(first.layout, c["name"])
        self.agents = agents
        n = len(agents)
        self.X = torch.stack([a.vec.detach() for a in agents])  # [agents, state]: every agent's row
        for k, a in enumerate(agents):
            a.vec = self.X[k]
            bind(a.model, a.layout, a.vec)
            a.params = list(a.model.parameters())
            a.group = (self, k)
        lay = first.layout
        entries = [(key, s, o) for key, s, o in zip(lay.keys, lay.shapes, lay.offsets) if o < lay.n_params]
        self.names = [key for key, _, _ in entries]
        self.stacked = [self.X[:, o : o + math.prod(s)].view(n, *s) for _, s, o in entries]
        self.opt = make_optimizer(self.stacked, c["name"], c["lr"], c["momentum"], c["weight_decay"])
        self.model = first.model  # the skeleton functional_call runs (its own tensors are not used)
        loss_fn = first.loss_fn

        def loss(params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return loss_fn(functional_call(self.model, params, (x,)), y)

        # the agents' losses are independent, so the gradient of their sum is every agent's own gradient:
        # plain autograd through one vmapped forward gives vmap(grad(loss)) to the bit, as fast, and without
        # torch.func.grad's import of torch._dynamo (~2 s of CPU per process)
        self._losses = vmap(loss)
        self._forward = None

    def train(self, steps: int) -> dict[int, float]:
        """`steps` optimizer steps for every agent at once; returns each agent's mean loss."""
        self.model.train()
        total = torch.zeros(len(self.agents), device=self.X.device)
        hooks = [(k, a.grad_hook) for k, a in enumerate(self.agents) if a.grad_hook is not None]
        clip = self.agents[0].clip
        for _ in range(steps):
            xs, ys = zip(*(a.next_batch() for a in self.agents))
            grads, losses = self._step(torch.stack(xs), torch.stack(ys))
            for p, g in zip(self.stacked, grads):
                p.grad = g
            if clip is not None:
                clip_([p.grad for p in self.stacked], clip)
            for k, hook in hooks:  # e.g. gradient tracking's correction, on this agent's rows (views)
                hook([p.grad[k] for p in self.stacked])
            self.opt.step()
            total += losses.detach()
        for p in self.stacked:
            p.grad = None
        for a in self.agents:
            a.steps_done += steps
        return {a.index: float(v) / steps for a, v in zip(self.agents, total)}

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Every agent's parameter gradients (in `stacked` order) and loss on its own batch."""
        leaves = [p.detach().requires_grad_() for p in self.stacked]
        losses = self._losses(dict(zip(self.names, leaves)), x, y)
        return torch.autograd.grad(losses.sum(), leaves), losses.detach()

    @torch.no_grad()
    def predict(self, x, batch_size: int) -> np.ndarray:
        """Every agent's predicted labels of `x`: [agents, samples].

        A batched pass over blocks of `AGENTS_PER_PASS` agents, each block through all the samples, so every
        weight is read once per batch rather than once per batch for all agents at once (2.4x faster for 256
        mlp agents, 1.35x faster than one agent at a time: `bench/scale.py`'s floor). Convolutional models
        are predicted one agent at a time, channels-last: vmap makes their convolutions grouped ones, several
        times slower on CPU."""
        if self.agents[0].conv:
            return np.stack([a.predict(x, batch_size) for a in self.agents])
        self.model.eval()
        if self._forward is None:
            self._forward = vmap(lambda params, xb: functional_call(self.model, params, (xb,)), in_dims=(0, None))
        xs = [torch.as_tensor(x[s : s + batch_size]).to(self.X.device) for s in range(0, len(x), batch_size)]
        blocks = []
        for lo in range(0, len(self.agents), AGENTS_PER_PASS):
            params = {k: p[lo : lo + AGENTS_PER_PASS] for k, p in zip(self.names, self.stacked)}
            blocks.append(torch.cat([self._forward(params, xb).argmax(-1).cpu() for xb in xs], dim=1))
        return torch.cat(blocks).numpy()

    # -- one agent's optimizer state (its rows of the stacked state) -------------
    def momentum(self, k: int) -> torch.Tensor:
        return torch.cat([(buf[k] if buf is not None else torch.zeros_like(p[k])).reshape(-1)
                          for p, buf in zip(self.stacked, self.opt.momentum_buffers)])

    def set_momentum(self, k: int, flat: torch.Tensor) -> None:
        off, bufs = 0, self.opt.momentum_buffers
        for j, p in enumerate(self.stacked):
            if bufs[j] is None:
                bufs[j] = torch.zeros_like(p)
            n = p[k].numel()
            bufs[j][k].copy_(flat[off : off + n].view_as(p[k]))
            off += n

    def reset(self, k: int) -> None:
        """A fresh optimizer for agent k alone: its momentum rows to zero."""
        for buf in self.opt.momentum_buffers:
            if buf is not None:
                buf[k].zero_()

