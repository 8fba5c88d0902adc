"""A small MobileNetV2: depthwise-separable inverted residual blocks with linear bottlenecks."""

from __future__ import annotations

from torch import Tensor, nn

from dimat.models.layers import norm_layer

# (expansion, output channels, blocks, stride of the first) at width 1, for 28×28 or 32×32 inputs
STAGES = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2))


class InvertedResidual(nn.Module):
    """1×1 expand → norm → ReLU6 → depthwise 3×3 → norm → ReLU6 → 1×1 project → norm (+ x when shapes match)."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int, norm: str) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(c_in, hidden, 1, bias=False), norm_layer(norm, hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), norm_layer(norm, hidden),
                   nn.ReLU6(), nn.Conv2d(hidden, c_out, 1, bias=False), norm_layer(norm, c_out)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNet(nn.Module):
    """Stem conv 3×3 (16w) → inverted residual stages `STAGES` (channels × width, expansion `expand` where it is
    not 1) → 1×1 conv (64w) → global average pool → Linear."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int, expand: int, norm: str) -> None:
        super().__init__()
        c = 16 * width
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], c, 3, 1, 1, bias=False), norm_layer(norm, c), nn.ReLU6())
        blocks = []
        for t, channels, n, stride in STAGES:
            for i in range(n):
                blocks.append(InvertedResidual(c, channels * width, stride if i == 0 else 1, expand if t > 1 else 1,
                                               norm))
                c = channels * width
        self.blocks = nn.Sequential(*blocks)
        self.last = nn.Sequential(nn.Conv2d(c, 64 * width, 1, bias=False), norm_layer(norm, 64 * width), nn.ReLU6())
        self.head = nn.Linear(64 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.last(self.blocks(self.stem(x))).mean((2, 3)))
