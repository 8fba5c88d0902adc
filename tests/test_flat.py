"""Flat state vectors: the module's tensors are views into one float32 buffer."""

import numpy as np
import torch
from torch import nn

from dimat.algorithms import Received, gossip_average
from dimat.flat import FlatLayout, flatten_module


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def test_flatten_keeps_the_function_and_makes_views():
    net = _net()
    x = torch.randn(5, 1, 8, 8)
    net.eval()
    before = net(x)
    flat, layout = flatten_module(net)
    assert torch.allclose(net(x), before)
    # parameters first: the optimised prefix is contiguous
    n_params = sum(p.numel() for p in net.parameters())
    assert layout.n_params == n_params
    assert layout.size == n_params + 8  # BN running mean + var; num_batches_tracked stays out
    flat.zero_()
    assert all(float(p.detach().abs().sum()) == 0 for p in net.parameters())
    assert float(net[1].running_var.abs().sum()) == 0


def test_training_writes_through_to_the_flat_vector():
    net = _net()
    flat, _ = flatten_module(net)
    snapshot = flat.clone()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net.train()
    net(torch.randn(4, 1, 8, 8)).sum().backward()
    opt.step()
    assert not torch.equal(flat, snapshot)  # weights and BN statistics both moved
    views = FlatLayout.of(net).views(flat)
    assert torch.equal(views["4.weight"], net[4].weight)


def test_gossip_average_matches_numpy():
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(100).astype(np.float32) for _ in range(4)]
    w = [0.4, 0.3, 0.2, 0.1]
    own = torch.from_numpy(xs[0].copy())
    received = [Received(j, xs[j], w[j]) for j in (1, 2, 3)]
    gossip_average(own, w[0], received)
    expected = sum(wj * x.astype(np.float64) for wj, x in zip(w, xs))
    np.testing.assert_allclose(own.numpy(), expected, rtol=1e-6, atol=1e-6)
