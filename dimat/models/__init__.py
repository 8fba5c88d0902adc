"""dimat.models: plain ``nn.Module`` models (mlp, cnn, vgg11, vgg16, resnet20) built by name.

No merge logic lives here; ``dimat.merge`` derives permutation specs from these
modules by tracing them.
"""

from __future__ import annotations

from torch import nn

from dimat.models.cnn import CNN
from dimat.models.layers import NORMS, ModelError, resolve_norm
from dimat.models.mlp import MLP, mlp
from dimat.models.resnet import ResNet20
from dimat.models.vgg import CONFIGS, VGG

MODELS: tuple[str, ...] = ("mlp", "cnn", "vgg11", "vgg16", "resnet20")

__all__ = ["MODELS", "NORMS", "CNN", "MLP", "VGG", "ModelError", "ResNet20", "build_model"]


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, *, width: int = 1,
                norm: str = "bn", hidden: tuple[int, ...] | list[int] = (128, 128),
                batchnorm: bool | None = None, groups: int | None = None) -> nn.Module:
    """Build model ``name`` for inputs of ``input_shape`` ((C, H, W) for images).

    ``width`` multiplies every hidden size; ``norm`` is one of ``NORMS`` (mlp
    ignores it); ``batchnorm`` is a legacy alias (False → "none", True → "bn").
    ``groups`` sets GroupNorm's group count for ``norm="gn"`` (default: 8, 4 or 2,
    whichever divides the channels).
    """
    norm = resolve_norm(norm, batchnorm)
    if groups is not None:
        if norm != "gn" or groups < 1:
            raise ModelError(f"model.groups={groups} needs model.norm=gn and groups >= 1 (ln is one group)")
        norm = f"gn{groups}"
    input_shape = tuple(int(s) for s in input_shape)
    _validate(name, input_shape, num_classes, width)
    if name == "mlp":
        return mlp(input_shape, num_classes, hidden, width)
    if name == "cnn":
        return CNN(input_shape, num_classes, width, norm)
    if name in CONFIGS:
        return VGG(CONFIGS[name], input_shape, num_classes, width, norm)
    return ResNet20(input_shape, num_classes, width, norm)


def _validate(name: str, input_shape: tuple[int, ...], num_classes: int, width: int) -> None:
    """Raise a one-line ``ModelError`` for a request no model can serve."""
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    if width < 1 or num_classes < 1:
        raise ModelError(f"width and num_classes must be >= 1, got width={width}, num_classes={num_classes}")
    if name != "mlp" and len(input_shape) != 3:
        raise ModelError(f"{name} needs input_shape (C, H, W), got {input_shape}")
    if name == "cnn" and min(input_shape[1:]) < 4:
        raise ModelError(f"cnn needs H, W >= 4 (two 2x2 pools), got {input_shape}")
