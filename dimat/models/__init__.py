"""Models as plain `nn.Module`s: mlp, cnn, vgg11, vgg16, resnet20 (no merge logic here)."""

from __future__ import annotations

import math

from torch import nn

from dimat.models.layers import NORMS, ModelError, resolve_norm
from dimat.models.nets import CNN, MLP, VGG, ResNet20

MODELS: tuple[str, ...] = ("mlp", "cnn", "vgg11", "vgg16", "resnet20")


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    width: int = 1,
    norm: str = "bn",
    hidden: tuple[int, ...] | list[int] = (128, 128),
    batchnorm: bool | None = None,
) -> nn.Module:
    """The model `name` for inputs of shape (C, H, W) and `num_classes` outputs."""
    if name not in MODELS:
        raise ModelError(f"model={name} is unknown: use one of {', '.join(MODELS)}")
    if width < 1:
        raise ModelError(f"model.width={width} must be >= 1")
    norm = resolve_norm(norm, batchnorm)
    if name == "mlp":
        return MLP(math.prod(input_shape), tuple(h * width for h in hidden), num_classes)
    if len(input_shape) != 3:
        raise ModelError(f"model={name} needs image inputs (C, H, W), got shape {tuple(input_shape)}: use model=mlp")
    if name == "cnn":
        if min(input_shape[1:]) < 4:
            raise ModelError(f"model=cnn needs inputs of at least 4x4, got {tuple(input_shape)}")
        return CNN(tuple(input_shape), num_classes, width, norm)
    if name.startswith("vgg"):
        return VGG(name, tuple(input_shape), num_classes, width, norm)
    return ResNet20(tuple(input_shape), num_classes, width, norm)


__all__ = ["MODELS", "NORMS", "ModelError", "build_model"]
