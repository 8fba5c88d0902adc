"""One agent: a model over a flat state vector, an optimizer, and its shard of data.

An agent never talks to other agents. It trains for a number of steps,
evaluates, and hands out or takes in its state as a flat float32 vector.
"""

from __future__ import annotations

import functools
import weakref

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dimat.flat import FlatLayout, as_tensor, flatten_module, to_numpy
from dimat.layout import channels_last, channels_last_ok, has_convolutions, nhwc
from dimat.optim import OPTIMIZERS, Optimizer, make_optimizer


class Agent:
    """A model whose float state is one flat vector, trained on `indices` of shared data."""

    def __init__(
        self,
        index: int,
        model: nn.Module,
        x: np.ndarray,
        y: np.ndarray,
        indices: np.ndarray,
        *,
        batch_size: int,
        optimizer: dict,  # {name, lr, momentum, weight_decay}: `Algorithm.optimizer`
        seed: int,
        device: str = "cpu",
        label_smoothing: float = 0.0,
        clip: float | None = None,
    ):
        self.index = index
        self.model = model.to(device)
        self.device = device
        self.vec, self.layout = flatten_module(self.model)
        self.x, self.y = x, y  # shared (possibly read-only) arrays; never written
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = batch_size
        self.optimizer_cfg = dict(optimizer)
        self._opt: Optimizer | None = None  # built on first use (the driver's check agent never needs it)
        self.gen = torch.Generator().manual_seed(seed)
        self._order = np.empty(0, dtype=np.int64)
        self._pos = 0
        self.params = list(self.model.parameters())  # in flat-vector order (parameters first)
        self._param_names = [k for k, o in zip(self.layout.keys, self.layout.offsets) if o < self.layout.n_params]
        # optional: called with the parameters' gradients after each backward pass, before the
        # optimizer step (gradient tracking adds its correction and accumulates here)
        self.grad_hook = None
        self.steps_done = 0  # optimizer steps taken so far
        # (model output, labels) -> scalar loss
        self.loss_fn = (functools.partial(F.cross_entropy, label_smoothing=label_smoothing) if label_smoothing
                        else F.cross_entropy)
        self.clip = clip  # every gradient element clipped to [-clip, clip] before a step (None: no clipping)
        # (AgentGroup, row) when the host trains its agents as one batched computation
        # (backend.vectorize): the group then owns this agent's optimizer state
        self.group = None
        # convolutions train faster on CPU on channels-last inputs (their output, and what follows, then takes
        # that layout; the weights stay views of the flat vector): 1.15-1.4x for the cnn, vgg and resnet
        # (checked once per architecture: a model that flattens with `x.view(...)` trains in the default layout)
        self.conv = has_convolutions(self.model)
        self.nhwc_inputs = self.conv and channels_last_ok(self.model, as_tensor(x[:4]).to(device))

    @property
    def opt(self) -> Optimizer:
        if self._opt is None:
            self._opt = self._new_optimizer()
        return self._opt

    @opt.setter
    def opt(self, value: Optimizer) -> None:
        self._opt = value

    # -- data ------------------------------------------------------------
    def _new_optimizer(self) -> Optimizer:
        c = self.optimizer_cfg
        return make_optimizer(self.model.parameters(), c["name"], c["lr"], c["momentum"], c["weight_decay"])

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next mini-batch of an endless sequence of shuffled epochs (always `batch_size` samples:
        a shard smaller than a batch contributes several epochs to it)."""
        if self._pos + self.batch_size > len(self._order):
            if len(self.indices) == 0:
                raise ValueError(f"agent {self.index} has no training samples: raise partition.min_samples")
            parts = [self._order[self._pos :]]
            while sum(map(len, parts)) < self.batch_size:
                parts.append(self.indices[torch.randperm(len(self.indices), generator=self.gen).numpy()])
            self._order = np.concatenate(parts)
            self._pos = 0
        idx = np.sort(self._order[self._pos : self._pos + self.batch_size])
        self._pos += self.batch_size
        xb = torch.from_numpy(self.x[idx]).to(self.device, non_blocking=True)
        yb = torch.from_numpy(self.y[idx]).to(self.device, non_blocking=True)
        return xb, yb

    def local_samples(self, k: int) -> torch.Tensor:
        """The first `k` samples of the agent's own shard (for merging and BatchNorm repair)."""
        return torch.from_numpy(self.x[self.indices[:k]]).to(self.device)

    # -- training --------------------------------------------------------
    def train(self, steps: int) -> float:
        """`steps` optimizer steps; returns the mean training loss (nan if no data)."""
        if steps <= 0 or len(self.indices) == 0:
            return float("nan")
        self.model.train()
        total = torch.zeros((), device=self.device)
        for _ in range(steps):
            xb, yb = self.next_batch()
            loss = self.loss_fn(self.model(nhwc(xb) if self.nhwc_inputs else xb), yb)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.clip is not None:
                clip_([p.grad for p in self.params if p.grad is not None], self.clip)
            if self.grad_hook is not None:
                self.grad_hook([p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params])
            self.opt.step()
            total += loss.detach()
        self.opt.zero_grad(set_to_none=True)  # gradients are not kept between rounds: one model's worth less memory
        self.steps_done += steps
        return float(total) / steps

    def gradient(
        self, xb: torch.Tensor, yb: torch.Tensor, state: np.ndarray | None = None
    ) -> tuple[torch.Tensor, float]:
        """The flat parameter gradient of the loss on (xb, yb) and the loss, in train mode.

        At the agent's own weights (its running statistics update, as in a training step), or at
        `state`, another model's flat state (e.g. a neighbour's): then on a copy, nothing of the
        agent changes.
        """
        self.model.train()
        if state is None:
            loss = self.loss_fn(self.model(xb), yb)
            grads = torch.autograd.grad(loss, self.params)
            return self._clipped(torch.cat([g.reshape(-1) for g in grads])), float(loss.detach())
        n = self.layout.n_params
        full = as_tensor(state).to(self.device, copy=True)
        leaf = full[:n].clone().requires_grad_()
        tensors = self.layout.views(full)  # buffers: views of the copy (BatchNorm may update them)
        tensors.update(zip(self._param_names, self.param_views(leaf)))
        loss = self.loss_fn(torch.func.functional_call(self.model, tensors, (xb,)), yb)
        (g,) = torch.autograd.grad(loss, leaf)
        return self._clipped(g), float(loss.detach())

    def _clipped(self, g: torch.Tensor) -> torch.Tensor:
        return g if self.clip is None else g.clamp_(-self.clip, self.clip)

    def apply_gradient(self, flat: torch.Tensor) -> None:
        """One optimizer step with `flat` (parameter-sized) as the gradient."""
        for p, g in zip(self.params, self.param_views(flat)):
            p.grad = g
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.steps_done += 1

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return predict(self.model, x, batch_size, self.device)

    # -- state -----------------------------------------------------------
    def state(self) -> np.ndarray:
        """The live flat state (a view: copy it before the agent trains on)."""
        return to_numpy(self.vec)

    def load(self, vec: np.ndarray | torch.Tensor) -> None:
        src = as_tensor(vec) if isinstance(vec, np.ndarray) else vec
        self.vec.copy_(src.to(self.vec.device))

    def state_dict_views(self, vec: np.ndarray | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.layout.views(self.vec if vec is None else vec)

    def snapshot(self) -> dict:
        """Everything needed to continue exactly: weights, integer buffers, optimizer, RNG, data position.

        Plain tensors and numbers only, so it loads with `torch.load(weights_only=True)`.
        """
        ints = {k: v.clone() for k, v in self.model.state_dict().items() if not v.is_floating_point()}
        opt = self.opt.state_dict() if self.group is None else {"momentum": self.momentum().cpu()}
        return {
            "vec": self.vec.detach().cpu().clone(), "ints": ints, "opt": opt,
            "rng": self.gen.get_state(), "order": torch.from_numpy(self._order.copy()), "pos": self._pos,
            "steps_done": self.steps_done,
        }

    def restore(self, snap: dict) -> None:
        self.load(snap["vec"])
        self.load_ints(snap["ints"])
        if self.group is not None:
            self.set_momentum(snap["opt"]["momentum"].to(self.vec.device))
        else:
            self.opt = self._new_optimizer()
            self.opt.load_state_dict(snap["opt"])
        self.gen.set_state(snap["rng"])
        self._order, self._pos = snap["order"].numpy().copy(), int(snap["pos"])
        self.steps_done = int(snap.get("steps_done", 0))

    def load_ints(self, ints: dict[str, torch.Tensor]) -> None:
        """Set the integer buffers (e.g. BatchNorm's num_batches_tracked) by state-dict name."""
        for k, v in ints.items():
            owner_name, _, attr = k.rpartition(".")
            (self.model.get_submodule(owner_name) if owner_name else self.model)._buffers[attr].copy_(v)

    def param_views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Views into a parameter-sized flat vector, shaped like the parameters (in order)."""
        out, off = [], 0
        for p in self.params:
            out.append(flat[off : off + p.numel()].view_as(p))
            off += p.numel()
        return out

    def momentum(self) -> torch.Tensor:
        """The optimizer's momentum buffers as one flat vector over the parameters (zeros where none yet)."""
        if self.group is not None:
            return self.group[0].momentum(self.group[1])
        bufs = self.opt.momentum_buffers
        return torch.cat([(b if b is not None else torch.zeros_like(p)).detach().reshape(-1)
                          for p, b in zip(self.params, bufs)])

    def set_momentum(self, flat: torch.Tensor) -> None:
        if self.group is not None:
            return self.group[0].set_momentum(self.group[1], flat)
        self.opt.momentum_buffers = [v.clone() for v in self.param_views(flat)]

    def reset_optimizer(self) -> None:
        if self.group is not None:
            return self.group[0].reset(self.group[1])
        self.opt = self._new_optimizer()



def clip_(grads: list[torch.Tensor], value: float) -> None:
    """In place: every element of every gradient into [-value, value]."""
    if grads:
        torch._foreach_clamp_min_(grads, -value)
        torch._foreach_clamp_max_(grads, value)


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 256, device: str = "cpu") -> np.ndarray:
    """Predicted labels of `x` in eval mode (on CPU through `inference_model`, channels-last)."""
    model.eval()
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    net = inference_model(model, as_tensor(x[: min(batch_size, 32)]).to(device))
    out = []
    with channels_last(net, as_tensor(x[: min(batch_size, 4)]).to(device)) as fast:
        for s in range(0, len(x), batch_size):
            xb = as_tensor(x[s : s + batch_size]).to(device)
            out.append(net(nhwc(xb) if fast else xb).argmax(1).cpu())
    return torch.cat(out).numpy()


# model -> whether its folded copy computes its outputs (checked once per model, on its first predictions)
_FOLDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@torch.no_grad()
def inference_model(model: nn.Module, probe: torch.Tensor) -> nn.Module:
    """What predicts for `model` (in eval mode) on CPU: a copy with every BatchNorm that follows a convolution
    or linear layer folded into its weights, and ReLUs in place where nothing else reads their input
    (torch.fx: 1.1-1.5x faster inference for the cnn, VGG-11 and ResNet-20, `bench/layout.py`); `model` itself
    where there is nothing to fold, on a GPU, or where fx cannot trace it. A copy is used only once it has
    given `model`'s outputs on `probe` (checked once per model): a user's model fx mis-traces is run as is."""
    if (probe.device.type != "cpu" or _FOLDS.get(model) is False
            or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())):
        return model
    from torch.fx.experimental.optimization import fuse

    try:
        net = fuse(model)  # a copy: the model's own weights are views of its agent's flat state
        _relu_in_place(net)
        if model not in _FOLDS:
            ref = model(probe)
            _FOLDS[model] = bool(torch.allclose(net(probe), ref, rtol=1e-3, atol=1e-4 * (1 + float(ref.abs().max()))))
    except Exception:  # noqa: BLE001 - any failure to trace or run the copy: predict with the model itself
        _FOLDS[model] = False
    return net if _FOLDS[model] else model


def _relu_in_place(gm: torch.fx.GraphModule) -> None:
    """ReLU modules of a traced model compute in place where every input they get has no other reader."""
    sites: dict[str, list[bool]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.ReLU):
            arg = node.args[0]
            sites.setdefault(node.target, []).append(
                isinstance(arg, torch.fx.Node) and arg.op != "placeholder" and len(arg.users) == 1)
    for name, alone in sites.items():
        if all(alone):
            gm.get_submodule(name).inplace = True


def correct_by_class(pred: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """Number of correct predictions per true class."""
    return np.bincount(y[pred == y], minlength=num_classes)


__all__ = ["Agent", "FlatLayout", "OPTIMIZERS", "Optimizer", "channels_last", "correct_by_class", "inference_model", "make_optimizer", "nhwc", "predict"]
