"""dimat.models: plain ``nn.Module`` models and the factories the configs name.

A model factory is any callable ``factory(input_shape=..., num_classes=..., **options)``
returning an ``nn.Module`` (`model._target_` in the config); the built-in ones are
below. No merge logic lives here: ``dimat.merge`` derives permutation specs from
these modules by tracing them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import nn

from dimat.models.cnn import CNN
from dimat.models.layers import NORMS, ModelError, resolve_norm
from dimat.models.mlp import MLP
from dimat.models.mobilenet import MobileNet
from dimat.models.resnet import ResNet20
from dimat.models.vgg import CONFIGS, VGG
from dimat.models.vit import ViT

__all__ = ["MODELS", "NORMS", "CNN", "MLP", "MobileNet", "VGG", "ModelError", "ResNet20", "ViT", "build_model", "cnn",
           "mlp", "mobilenet", "resnet20", "vgg11", "vgg16", "vit"]


def _shape(input_shape: Sequence[int], num_classes: int, width: int, *, image: str | None = None) -> tuple[int, ...]:
    """Validate what every factory gets; a one-line ``ModelError`` for a request no model can serve."""
    shape = tuple(int(s) for s in input_shape)
    if width < 1 or num_classes < 1:
        raise ModelError(f"width and num_classes must be >= 1, got width={width}, num_classes={num_classes}")
    if image is not None and len(shape) != 3:
        raise ModelError(f"{image} needs input_shape (C, H, W), got {shape}")
    return shape


def _conv_norm(norm: str, groups: int | None) -> str:
    norm = resolve_norm(norm)
    if groups is not None:
        if norm != "gn" or groups < 1:
            raise ModelError(f"model.groups={groups} needs model.norm=gn and groups >= 1 (ln is one group)")
        norm = f"gn{groups}"
    return norm


def mlp(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (128, 128), width: int = 1) -> MLP:
    """Flatten → (Linear → ReLU) per hidden size × ``width`` → Linear(num_classes)."""
    if any(int(h) < 1 for h in hidden):
        raise ModelError(f"mlp: hidden={list(hidden)} needs every layer >= 1 unit")
    return MLP(math.prod(_shape(input_shape, num_classes, width)), num_classes, [h * width for h in hidden])


def cnn(input_shape: Sequence[int], num_classes: int, width: int = 1, norm: str = "bn",
        groups: int | None = None) -> CNN:
    """Two conv3x3 → norm → ReLU → pool blocks (32w, 64w channels), then two Linear layers.

    ``norm`` is one of ``NORMS``; ``groups`` sets GroupNorm's group count for ``norm="gn"``
    (default: 8, 4 or 2, whichever divides the channels).
    """
    shape = _shape(input_shape, num_classes, width, image="cnn")
    if min(shape[1:]) < 4:
        raise ModelError(f"cnn needs H, W >= 4 (two 2x2 pools), got {shape}")
    return CNN(shape, num_classes, width, _conv_norm(norm, groups))


def vgg11(input_shape: Sequence[int], num_classes: int, width: int = 1, norm: str = "bn",
          groups: int | None = None) -> VGG:
    """VGG-11 with standard channels × width / 8 (width=8: the original)."""
    return VGG(CONFIGS["vgg11"], _shape(input_shape, num_classes, width, image="vgg11"), num_classes, width,
               _conv_norm(norm, groups))


def vgg16(input_shape: Sequence[int], num_classes: int, width: int = 1, norm: str = "bn",
          groups: int | None = None) -> VGG:
    """VGG-16 with standard channels × width / 8 (width=8: the original)."""
    return VGG(CONFIGS["vgg16"], _shape(input_shape, num_classes, width, image="vgg16"), num_classes, width,
               _conv_norm(norm, groups))


def resnet20(input_shape: Sequence[int], num_classes: int, width: int = 1, norm: str = "bn",
             groups: int | None = None) -> ResNet20:
    """CIFAR-style ResNet-20 (16w, 32w, 64w channels), option-B shortcuts."""
    return ResNet20(_shape(input_shape, num_classes, width, image="resnet20"), num_classes, width,
                    _conv_norm(norm, groups))


def vit(input_shape: Sequence[int], num_classes: int, patch: int | None = None, dim: int = 64, depth: int = 2,
        heads: int = 4, mlp_ratio: float = 2.0) -> ViT:
    """A small vision transformer: `patch`×`patch` patches (None: the smallest dividing the image into at most 16,
    e.g. 7 on 28×28, 2 on 8×8, 8 on 32×32), `depth` pre-LN blocks of `heads` heads over `dim` features, MLPs of
    `dim` × `mlp_ratio` hidden units (defaults: ~72k parameters on 28×28 images)."""
    shape = _shape(input_shape, num_classes, 1, image="vit")
    if patch is None:
        patch = next((p for p in range(1, min(shape[1:]) + 1) if shape[1] % p == 0 and shape[2] % p == 0
                      and (shape[1] // p) * (shape[2] // p) <= 16), min(shape[1:]))
    if patch < 1 or shape[1] % patch or shape[2] % patch:
        raise ModelError(f"vit: patch={patch} must divide the image size {shape[1]}×{shape[2]}")
    if heads < 1 or dim % heads:
        raise ModelError(f"vit: heads={heads} must divide dim={dim}")
    if depth < 1 or mlp_ratio <= 0:
        raise ModelError(f"vit: depth={depth} must be >= 1 and mlp_ratio={mlp_ratio} > 0")
    return ViT(shape, num_classes, patch, dim, depth, heads, mlp_ratio)


def mobilenet(input_shape: Sequence[int], num_classes: int, width: int = 1, expand: int = 4,
              norm: str = "bn") -> MobileNet:
    """A small MobileNetV2 (depthwise-separable inverted residuals, ReLU6; ~29k parameters at width 1 on 28×28 images)."""
    shape = _shape(input_shape, num_classes, width, image="mobilenet")
    if expand < 1:
        raise ModelError(f"mobilenet: expand={expand} must be >= 1")
    return MobileNet(shape, num_classes, width, expand, _conv_norm(norm, None))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp, "cnn": cnn, "vgg11": vgg11, "vgg16": vgg16, "resnet20": resnet20, "vit": vit, "mobilenet": mobilenet,
}


def build_model(name: str, input_shape: Sequence[int], num_classes: int, **options) -> nn.Module:
    """The built-in model ``name`` (one of ``MODELS``) with that factory's ``options``."""
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    return MODELS[name](input_shape, num_classes, **options)
