"""Device choice and GPU sharing: what a GPU cluster would get (checked without a GPU)."""

from __future__ import annotations

import pytest

from dimat.runtime.base import resolve_device
from dimat.runtime.ray_backend import gpu_share


def test_auto_uses_a_gpu_only_when_there_is_one():
    assert resolve_device("auto", False) == "cpu"
    assert resolve_device("auto", True) == "cuda"
    assert resolve_device("cpu", True) == "cpu"
    with pytest.raises(ValueError, match="no GPU is visible"):
        resolve_device("cuda", False)


def test_actors_share_the_gpus_evenly_with_fractions():
    assert gpu_share("auto", None, gpus=1, n_hosts=4) == 0.25  # four actors (and their agents) on one GPU
    assert gpu_share("auto", None, gpus=8, n_hosts=4) == 1.0  # never more than one GPU per actor
    assert gpu_share("auto", None, gpus=0, n_hosts=4) == 0.0
    assert gpu_share("cpu", None, gpus=2, n_hosts=2) == 0.0
    assert gpu_share("auto", 0.5, gpus=1, n_hosts=2) == 0.5
    with pytest.raises(ValueError, match="gpus_per_actor=0.5 × 4 actors"):
        gpu_share("auto", 0.5, gpus=1, n_hosts=4)
