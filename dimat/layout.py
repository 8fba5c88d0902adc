"""Memory layout on CPU: channels-last convolutions, used only where a model computes the same in that layout.

Convolutions run 1.15-1.7x faster on CPU on channels-last (NHWC) tensors (`bench/layout.py`). Agents train on
channels-last inputs (the weights stay views of the flat state vector), and inference and merge passes also
convert the weights for the duration of a block (`channels_last`). A model that reads its input's memory order
-- the LeNet-style ``x.view(x.size(0), -1)`` after a convolution -- fails or computes differently in that layout,
so `channels_last_ok` checks once per architecture (class, state shapes, input shape) that a channels-last
forward and backward give what the default layout gives; where they do not, the model runs as it is.

This module sits below both the agent and the pure merge layer, which both use it.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

# architecture signature -> whether channels-last computes what the default layout computes
_CHECKED: dict[tuple, bool] = {}


def nhwc(t: torch.Tensor) -> torch.Tensor:
    """A 4-D tensor in channels-last strides, spelled out even where a size-1 dimension would let
    `.contiguous(memory_format=...)` keep the default ones (a 1-channel input or weight: convolutions then
    pick their layout from those strides, and a default-strided weight keeps the whole network in the slower
    one); other tensors as they are."""
    if t.dim() != 4:
        return t
    return torch.empty_like(t, memory_format=torch.channels_last).copy_(t)


def has_convolutions(model: nn.Module) -> bool:
    """Whether the model has 4-D parameters on the CPU (2-d convolutions: where channels-last can pay)."""
    return any(p.dim() == 4 and p.device.type == "cpu" for p in model.parameters())


def _signature(model: nn.Module, probe: torch.Tensor) -> tuple:
    return (type(model), tuple((k, tuple(v.shape)) for k, v in model.state_dict().items()), tuple(probe.shape[1:]),
            probe.dtype)


def channels_last_ok(model: nn.Module, probe: torch.Tensor) -> bool:
    """Whether `model` computes the same outputs and gradients on channels-last inputs (weights as they are, as
    in training) and with channels-last weights (as in inference) as in the default layout, on `probe` (a
    batch). False where a layout has nothing to gain (no convolutions on the CPU or no 4-D input). Checked on a
    copy in eval mode (no statistics change), once per architecture."""
    if probe.dim() != 4 or not probe.is_floating_point() or not has_convolutions(model):
        return False
    key = _signature(model, probe)
    if key not in _CHECKED:
        _CHECKED[key] = _same_in_both_layouts(model, probe[:4])
    return _CHECKED[key]


def _same_in_both_layouts(model: nn.Module, x: torch.Tensor) -> bool:
    net = copy.deepcopy(model).eval()
    params = [p for p in net.parameters() if p.requires_grad]

    def run(inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = net(inputs)
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            raise TypeError("not a floating-point tensor output")
        weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype, device=out.device).view_as(out)
        grads = torch.autograd.grad((out * weights).sum(), params, allow_unused=True) if params else []
        return out.detach(), [g for g in grads if g is not None]

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        scale = 1.0 + float(torch.nan_to_num(a, posinf=0.0, neginf=0.0).abs().max())
        return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-3, atol=1e-4 * scale, equal_nan=True))

    try:
        with torch.enable_grad():  # callers often run under no_grad (inference, merges)
            ref, ref_grads = run(x)
            trained, trained_grads = run(nhwc(x))
            with _swapped(net):
                inferred, _ = run(nhwc(x))
    except Exception:  # noqa: BLE001 - any failure in channels-last (a view of a non-contiguous tensor): not ok
        return False
    return (close(ref, trained) and close(ref, inferred) and len(ref_grads) == len(trained_grads)
            and all(close(a, b.contiguous()) for a, b in zip(ref_grads, trained_grads)))


@contextlib.contextmanager
def _swapped(model: nn.Module):
    swapped = [(p, p.data) for p in model.parameters() if p.dim() == 4 and p.device.type == "cpu"]
    try:
        for p, data in swapped:
            p.data = nhwc(data)
        yield bool(swapped)
    finally:
        for p, data in swapped:
            p.data = data


@contextlib.contextmanager
def channels_last(model: nn.Module, probe: torch.Tensor):
    """Within it, the model's 4-D weights (convolutions) are channels-last copies, where `channels_last_ok`
    says the model computes the same that way; it yields whether they are (then inputs should be channels-last
    too: `nhwc`). An agent's parameters are views of its flat state vector, so they cannot be converted for
    good; for inference the copies pay: convolutions run 1.3-1.7x faster on CPU (`bench/layout.py`). On a GPU
    the model is left as it is."""
    if not channels_last_ok(model, probe):
        yield False
        return
    with _swapped(model) as fast:
        yield fast
