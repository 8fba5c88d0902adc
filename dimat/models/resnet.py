"""CIFAR-style ResNet-20 (He et al. 2016, option B shortcuts) with a width multiplier."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from dimat.models.layers import norm_layer


class BasicBlock(nn.Module):
    """Two conv3x3 + norm; 1×1 conv (+norm) shortcut where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = norm_layer(norm, cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          norm_layer(norm, cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out)


class ResNet20(nn.Module):
    """Stem conv → 3 stages × 3 blocks (16w, 32w, 64w channels) → global average pool → Linear."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int, norm: str,
                 blocks: int = 3) -> None:
        super().__init__()
        chans = [16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(input_shape[0], chans[0], 3, padding=1, bias=False)
        self.bn1 = norm_layer(norm, chans[0])
        stages, cin = [], chans[0]
        for i, cout in enumerate(chans):
            layers = [BasicBlock(cin if b == 0 else cout, cout, 2 if i > 0 and b == 0 else 1, norm)
                      for b in range(blocks)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(chans[2], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))
