"""What hosts measure for the driver: the moments the consensus distance and the average model pool from."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dimat.experiment import _consensus
from dimat.flat import FlatLayout
from dimat.runtime import ops


class _Agent:
    def __init__(self, vec: np.ndarray):
        self.vec = torch.from_numpy(vec)


class _Host(SimpleNamespace):
    def run(self, fn, *args):
        return fn(self, *args)

    def layout(self):
        return self._layout


class _Backend:
    """Hosts in a list, as a backend runs an op on each."""

    def __init__(self, hosts):
        self.hosts, self.groups = hosts, [list(h.agents) for h in hosts]

    def run(self, fn, *args):
        return [h.run(fn, *args) for h in self.hosts]


@pytest.mark.parametrize("split", [[1, 1, 1, 1, 1], [5], [2, 3], [4, 1]])
def test_pooled_moments_give_the_direct_consensus_distance_and_mean(split):
    rng = np.random.default_rng(0)
    n_params, size = 40, 46  # parameters, then 6 float buffers (BatchNorm statistics)
    layout = FlatLayout(("w", "stats"), ((40,), (6,)), (0, 40), n_params, size)
    states = (100 + rng.standard_normal((5, size))).astype(np.float32)  # far from 0: pooling must be stable
    hosts, start = [], 0
    for k in split:
        hosts.append(_Host(agents={i: _Agent(states[i].copy()) for i in range(start, start + k)}, _layout=layout))
        start += k
    consensus, mean = _consensus(_Backend(hosts), 5)
    x = states.astype(np.float64)
    direct_mean = x.mean(0)
    direct = np.mean(np.sum((x[:, :n_params] - direct_mean[:n_params]) ** 2, axis=1))
    np.testing.assert_allclose(mean, direct_mean, rtol=1e-14)
    assert consensus == pytest.approx(direct, rel=1e-10)
    assert direct > 1  # the buffers are left out, the parameters counted


def test_identical_agents_have_exactly_zero_consensus_distance():
    layout = FlatLayout(("w",), ((7,),), (0,), 7, 7)
    vec = np.random.default_rng(1).standard_normal(7).astype(np.float32) * 1e3
    hosts = [_Host(agents={0: _Agent(vec.copy()), 1: _Agent(vec.copy())}, _layout=layout),
             _Host(agents={2: _Agent(vec.copy())}, _layout=layout)]
    consensus, mean = _consensus(_Backend(hosts), 3)
    assert consensus == 0.0
    np.testing.assert_array_equal(mean, vec.astype(np.float64))
    assert ops.moments(hosts[0])[3] == 0.0
