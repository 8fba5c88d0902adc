"""A dataset loader of the user's own: interleaved spirals in the plane, one arm per class."""

from __future__ import annotations

import numpy as np

from dimat.data import Dataset


def spirals(classes: int = 3, n_train: int = 1500, n_test: int = 600, noise: float = 0.15, seed: int = 0) -> Dataset:
    """`classes` spiral arms; returns a dimat Dataset (inputs [N, 2], labels 0..classes-1)."""
    rng = np.random.default_rng(seed)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, n)
        r = rng.uniform(0.1, 1.0, n)
        angle = 3.0 * r + 2 * np.pi * y / classes
        x = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1) + noise * r[:, None] * rng.standard_normal((n, 2))
        return x.astype(np.float32), y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return Dataset("spirals", x_train, y_train, x_test, y_test, num_classes=classes, normalize=True)
