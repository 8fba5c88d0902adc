"""Small two-block convolutional network for digits / Fashion-MNIST / CIFAR."""

from __future__ import annotations

from torch import Tensor, nn

from dimat.models.layers import norm_layer


class CNN(nn.Module):
    """conv3x3 → norm → ReLU → maxpool2, twice (32w, 64w channels) → Linear(128w) → ReLU → Linear.

    The flatten keeps the spatial map (2×2 for 8×8 inputs, 7×7 for 28×28).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int, norm: str) -> None:
        super().__init__()
        c, h, w = input_shape
        c1, c2, f = 32 * width, 64 * width, 128 * width
        self.conv1 = nn.Conv2d(c, c1, 3, padding=1)
        self.norm1 = norm_layer(norm, c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.norm2 = norm_layer(norm, c2)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(c2 * (h // 4) * (w // 4), f)
        self.fc2 = nn.Linear(f, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.relu(self.norm1(self.conv1(x))))
        x = self.pool(self.relu(self.norm2(self.conv2(x))))
        x = self.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)
