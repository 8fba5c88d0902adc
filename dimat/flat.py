"""Flat float32 state vectors: one contiguous buffer per model.

A model's float parameters, then its float buffers (BatchNorm running
statistics), live in one float32 vector; the module's tensors are views into
it. Sending a state is then one zero-copy numpy array, gossip is a weighted
sum of vectors, and consensus distance is a vector norm. Integer buffers
(`num_batches_tracked`) stay outside: they are bookkeeping, not model state.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class FlatLayout:
    """Where each float tensor of a model's state_dict lives in the flat vector."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    n_params: int  # parameters occupy [0, n_params); float buffers follow
    size: int

    @classmethod
    def of(cls, model: nn.Module) -> FlatLayout:
        param_ids = {id(p) for p in model.parameters()}
        entries = [(k, v) for k, v in model.state_dict(keep_vars=True).items() if v.is_floating_point()]
        # parameters first so that the optimised part is one contiguous prefix
        entries.sort(key=lambda kv: id(kv[1]) not in param_ids)
        keys, shapes, offsets, off, n_params = [], [], [], 0, 0
        for k, v in entries:
            keys.append(k)
            shapes.append(tuple(v.shape))
            offsets.append(off)
            off += v.numel()
            if id(v) in param_ids:
                n_params = off
        return cls(tuple(keys), tuple(shapes), tuple(offsets), n_params, off)

    def views(self, vec: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        """State-dict-shaped views into `vec` (no copy)."""
        t = as_tensor(vec) if isinstance(vec, np.ndarray) else vec
        return {
            k: t[o : o + int(np.prod(s, dtype=np.int64))].view(s)
            for k, s, o in zip(self.keys, self.shapes, self.offsets)
        }

    def flatten(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """A new flat float32 vector from a state dict (extra keys ignored)."""
        return torch.cat([state[k].detach().reshape(-1).float() for k in self.keys])


def flatten_module(model: nn.Module) -> tuple[torch.Tensor, FlatLayout]:
    """Move every float parameter and buffer of `model` into one flat vector.

    Afterwards the module's tensors are views into the returned vector, so
    `vec` is the live state: optimizers, BatchNorm updates and loads all
    write through to it.
    """
    layout = FlatLayout.of(model)
    flat = layout.flatten(model.state_dict())
    bind(model, layout, flat)
    return flat, layout


def bind(model: nn.Module, layout: FlatLayout, flat: torch.Tensor) -> None:
    """Make the module's float parameters and buffers views into `flat` (which holds their values)."""
    for name, tensor in layout.views(flat).items():
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        if attr in owner._parameters:
            owner._parameters[attr].data = tensor
        else:
            owner._buffers[attr] = tensor


def to_numpy(vec: torch.Tensor) -> np.ndarray:
    """A zero-copy numpy view of a CPU tensor (a copy if it lives elsewhere)."""
    return vec.detach().cpu().numpy()


def as_tensor(arr: np.ndarray) -> torch.Tensor:
    """A tensor over a (possibly read-only, object-store) numpy array, without a copy.

    The caller must not write to it; torch warns about read-only memory, which
    is exactly the contract here, so the warning is silenced.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)
