"""Normalisation choice shared by the convolutional models.

``norm`` names one of ``NORMS``. GroupNorm with several groups ("gn") only
allows channel permutations within a group, so merge code pins it; "ln" (one
group, i.e. LayerNorm over channels and space) keeps channel permutations valid
and survives skewed local batches, unlike BatchNorm.
"""

from __future__ import annotations

from torch import nn

NORMS: tuple[str, ...] = ("bn", "gn", "ln", "none")


class ModelError(ValueError):
    """Invalid model request (unknown name, bad norm, bad shape)."""


def resolve_norm(norm: str) -> str:
    """Validate ``norm`` (one of ``NORMS``)."""
    if norm not in NORMS:
        raise ModelError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
    return norm


def gn_groups(channels: int) -> int:
    """Groups for "gn": the largest of (8, 4, 2) dividing ``channels``, else 1.

    A small fixed cap keeps each group several channels wide at width=1, so its
    statistics stay stable; every built-in channel count is even, so "gn" always
    has at least 2 groups (odd counts fall back to 1, i.e. "ln").
    """
    return next((g for g in (8, 4, 2) if channels % g == 0), 1)


def norm_layer(norm: str, channels: int) -> nn.Module:
    """A 2-d normalisation layer over ``channels`` channels ("gnK": GroupNorm with K groups)."""
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm.startswith("gn"):
        groups = int(norm[2:]) if norm[2:] else gn_groups(channels)
        if channels % groups:
            raise ModelError(f"model.groups={groups} does not divide a layer of {channels} channels: pick a divisor")
        return nn.GroupNorm(groups, channels)
    if norm == "ln":
        return nn.GroupNorm(1, channels)
    return nn.Identity()
