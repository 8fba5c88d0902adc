"""Multi-layer perceptron: flatten, then Linear/ReLU per hidden size."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class MLP(nn.Sequential):
    """Flatten → (Linear → ReLU) per hidden size → Linear(num_classes). No norm, no dropout.

    A plain ``nn.Sequential``, so state keys are short: ``1.weight``, ``3.weight``, ...
    """

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int]) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for size in hidden:
            layers += [nn.Linear(prev, size), nn.ReLU()]
            prev = size
        layers.append(nn.Linear(prev, num_classes))
        super().__init__(*layers)

