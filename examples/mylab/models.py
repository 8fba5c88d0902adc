"""A residual MLP: the kind of model a user brings. dimat derives its permutation spec by tracing it."""

from __future__ import annotations

import math

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(h)))


class ResidualMLP(nn.Module):
    """stem → `blocks` residual blocks (h + block(h)) → head. Any factory taking input_shape= and
    num_classes= (and its own keys) and returning an nn.Module is a dimat model."""

    def __init__(self, input_shape, num_classes: int, width: int = 32, blocks: int = 2):
        super().__init__()
        self.stem = nn.Linear(math.prod(input_shape), width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(blocks))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x.flatten(1))
        for block in self.blocks:
            h = h + block(h)  # one residual stream: every block's output shares its permutation
        return self.head(torch.relu(h))
