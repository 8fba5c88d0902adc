"""Run model tests single-threaded: these tensors are tiny, and on a busy 2-core
box intra-op threads oversubscribe the CPU (~100x slower resnet20 steps)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
