"""VGG-11 / VGG-16 with a width multiplier, sized for small CPU runs.

Channels are the standard VGG channels × ``width`` / 8 (rounded, min 4), so
width=1 gives 8…64 channels (cheap enough for CPU runs) and width=8 the original
64…512. Max-pools are kept only while the spatial size is > 1, so 8×8 and 28×28
inputs work; an adaptive average pool to 1×1 then feeds one Linear classifier.
"""

from __future__ import annotations

from torch import Tensor, nn

from dimat.models.layers import norm_layer

CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}


def scaled(channels: int, width: int) -> int:
    """VGG channel count for a width multiplier (base = channels / 8, min 4)."""
    return max(4, round(channels * width / 8))


class VGG(nn.Module):
    """Convolutional ``features`` (conv → norm → ReLU, pools) then one Linear ``classifier``."""

    def __init__(self, cfg: tuple[int | str, ...], input_shape: tuple[int, ...], num_classes: int,
                 width: int, norm: str) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, h, w = input_shape
        for item in cfg:
            if item == "M":
                if min(h, w) > 1:
                    layers.append(nn.MaxPool2d(2))
                    h, w = h // 2, w // 2
                continue
            out = scaled(int(item), width)
            layers += [nn.Conv2d(channels, out, 3, padding=1), norm_layer(norm, out), nn.ReLU()]
            channels = out
        # Always present (a no-op at 1×1) so the module layout does not depend on input size.
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))
