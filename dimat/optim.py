"""The agents' optimizers: SGD, SGD with heavy-ball momentum, Adam.

The same arithmetic as `torch.optim.SGD` / `torch.optim.Adam` with `foreach=True`
(the same `torch._foreach_*` calls in the same order, so the same results to the
bit: `tests/test_optim.py`), and the same `state_dict` format, so checkpoints
written with either load into the other. Why not torch.optim itself: its methods
import `torch._dynamo` on their first call, about 2 s of CPU in every process that
trains (each Ray actor, and the driver of an in-process run), which on a small
machine is most of a small run's start-up. One optimizer holds one list of
tensors (an agent's parameters, or a host's stacked agents) and one set of
hyperparameters.
"""

from __future__ import annotations

import torch
from torch import Tensor

OPTIMIZERS = ("sgd", "msgd", "adam")


class Optimizer:
    """`sgd` (no momentum), `msgd` (heavy-ball momentum, no dampening) or `adam` (L2 weight decay added to the
    gradient, as torch.optim.Adam) over `params`; each step reads their `.grad` (parameters without one are
    skipped, as torch.optim does)."""

    def __init__(self, params, name: str, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if name not in OPTIMIZERS:
            raise ValueError(f"algorithm.optimizer.name={name} is unknown: use one of {', '.join(OPTIMIZERS)}")
        self.params: list[Tensor] = list(params)
        self.name = name
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.momentum = float(momentum) if name == "msgd" else 0.0
        self.betas, self.eps = (float(betas[0]), float(betas[1])), float(eps)
        n = len(self.params)
        self.momentum_buffers: list[Tensor | None] = [None] * n  # msgd
        self.exp_avg: list[Tensor | None] = [None] * n  # adam
        self.exp_avg_sq: list[Tensor | None] = [None] * n
        self.steps = [0] * n  # adam: steps taken per tensor (bias correction)

    # -- stepping ----------------------------------------------------------
    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        for group in self._by_device(live):
            params = [self.params[i] for i in group]
            grads = [self.params[i].grad for i in group]
            if self.weight_decay != 0:
                grads = torch._foreach_add(grads, params, alpha=self.weight_decay)
            if self.name == "adam":
                self._adam(group, params, grads)
            else:
                if self.momentum != 0:
                    grads = self._momentum(group, grads)
                torch._foreach_add_(params, grads, alpha=-self.lr)

    def _momentum(self, group: list[int], grads: list[Tensor]) -> list[Tensor]:
        bufs = [self.momentum_buffers[i] for i in group]
        if all(b is not None for b in bufs):
            torch._foreach_mul_(bufs, self.momentum)
            torch._foreach_add_(bufs, grads, alpha=1.0)
            return bufs
        for k, (i, g) in enumerate(zip(group, grads)):
            if bufs[k] is None:
                bufs[k] = self.momentum_buffers[i] = g.detach().clone()
            else:
                bufs[k].mul_(self.momentum).add_(g, alpha=1.0)
        return bufs

    def _adam(self, group: list[int], params: list[Tensor], grads: list[Tensor]) -> None:
        beta1, beta2 = self.betas
        for i in group:
            if self.exp_avg[i] is None:
                self.exp_avg[i] = torch.zeros_like(self.params[i], memory_format=torch.preserve_format)
                self.exp_avg_sq[i] = torch.zeros_like(self.params[i], memory_format=torch.preserve_format)
            self.steps[i] += 1
        avgs = [self.exp_avg[i] for i in group]
        sqs = [self.exp_avg_sq[i] for i in group]
        torch._foreach_lerp_(avgs, grads, 1 - beta1)
        torch._foreach_mul_(sqs, beta2)
        torch._foreach_addcmul_(sqs, grads, grads, 1 - beta2)
        step_size = [(self.lr / (1 - beta1 ** float(self.steps[i]))) * -1 for i in group]
        bc2_sqrt = [(1 - beta2 ** float(self.steps[i])) ** 0.5 for i in group]
        denom = torch._foreach_sqrt(sqs)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, avgs, denom, step_size)

    def _by_device(self, live: list[int]) -> list[list[int]]:
        """Indices grouped by (device, dtype): one foreach call per group, as torch.optim groups them."""
        groups: dict = {}
        for i in live:
            p = self.params[i]
            groups.setdefault((p.device, p.dtype), []).append(i)
        return list(groups.values())

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    # -- state ---------------------------------------------------------------
    def state_dict(self) -> dict:
        """torch.optim's format: {"state": {index: {...}}, "param_groups": [{hyperparameters, "params": [...]}]}."""
        state: dict[int, dict] = {}
        for i in range(len(self.params)):
            if self.momentum_buffers[i] is not None:
                state[i] = {"momentum_buffer": self.momentum_buffers[i]}
            elif self.exp_avg[i] is not None:
                state[i] = {"step": torch.tensor(float(self.steps[i])), "exp_avg": self.exp_avg[i],
                            "exp_avg_sq": self.exp_avg_sq[i]}
        group = {"lr": self.lr, "weight_decay": self.weight_decay, "params": list(range(len(self.params)))}
        if self.name == "adam":
            group.update(betas=self.betas, eps=self.eps)
        else:
            group.update(momentum=self.momentum, dampening=0.0, nesterov=False)
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, sd: dict) -> None:
        """The buffers of `state_dict()` (this class's or torch.optim's, for the same parameters), copied to the
        parameters' devices and dtypes; the hyperparameters stay this optimizer's own (the run's config)."""
        ids = [i for g in sd["param_groups"] for i in g["params"]]
        if len(ids) != len(self.params):
            raise ValueError(f"optimizer state for {len(ids)} tensors, this optimizer has {len(self.params)}")
        n = len(self.params)
        self.momentum_buffers, self.exp_avg, self.exp_avg_sq, self.steps = [None] * n, [None] * n, [None] * n, [0] * n
        for k, i in enumerate(ids):
            s = sd["state"].get(i, {})
            p = self.params[k]
            if s.get("momentum_buffer") is not None:
                self.momentum_buffers[k] = s["momentum_buffer"].to(p.device, p.dtype, copy=True)
            if "exp_avg" in s:
                self.exp_avg[k] = s["exp_avg"].to(p.device, p.dtype, copy=True)
                self.exp_avg_sq[k] = s["exp_avg_sq"].to(p.device, p.dtype, copy=True)
                self.steps[k] = int(float(s["step"]))


def make_optimizer(params, name: str, lr: float, momentum: float = 0.9, weight_decay: float = 0.0) -> Optimizer:
    """`sgd` (no momentum), `msgd` (heavy-ball momentum) or `adam`."""
    return Optimizer(params, name, lr, momentum, weight_decay)


__all__ = ["OPTIMIZERS", "Optimizer", "make_optimizer"]
