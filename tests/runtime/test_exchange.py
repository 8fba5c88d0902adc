"""One exchange on each backend: the gossip average of the states before it, exactly; messages copied once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dimat.algorithms import Algorithm
from dimat.api import to_plain
from dimat.components import setup
from dimat.runtime import ops
from dimat.runtime.exchange import run_exchange, split_senders
from dimat.schedule import full_plan, mixing_rows


def ring_rows(n: int) -> dict:
    return {i: (0.5, [((i - 1) % n, 0.25), ((i + 1) % n, 0.25)]) for i in range(n)}


def test_split_senders_puts_only_what_another_host_reads():
    remote, local = split_senders([[0, 1, 2], [3, 4, 5]], ring_rows(6))
    assert remote == [[0, 2], [3, 5]]  # each host's ends of the ring: read by the other host
    assert local == [[1], [4]]  # read only by their own host's agents: kept there


def test_split_senders_leaves_out_agents_nobody_reads():
    rows = {0: (0.5, [(1, 0.5)]), 1: (1.0, [])}  # only 0 hears, from 1 (on the other host)
    assert split_senders([[0], [1, 2]], rows) == ([[], [1]], [[], []])


def test_the_default_payload_is_a_read_only_view_of_the_state(tiny):
    s = setup(to_plain(tiny("algorithm=dsgd", "backend=inprocess")))
    backend = s.backend(s.host, s.dataset, s.parts)
    agent = backend.hosts[0].agents[0]
    msg = Algorithm().payload(agent)
    assert np.shares_memory(msg, agent.state())  # no copy: the transport copies it once
    with pytest.raises(ValueError, match="read-only"):
        msg[0] = 1.0  # a subclass editing it in place would have edited the agent


def gossip_reference(states: dict[int, np.ndarray], rows: dict) -> dict[int, np.ndarray]:
    """own·w_ii + Σ_j w_ij·x_j over the states before the exchange, in the order `gossip_average` adds them."""
    out = {}
    for i, (self_w, row) in rows.items():
        own = torch.from_numpy(states[i].copy()).mul_(self_w)
        for j, w in row:
            own.add_(torch.from_numpy(states[j]), alpha=w)
        out[i] = own.numpy()
    return out


@pytest.mark.parametrize("backend", ["inprocess", pytest.param("ray", marks=pytest.mark.timeout(600))])
def test_an_exchange_is_the_gossip_average_of_the_states_before_it(tiny, backend):
    # 6 agents on a ring; with Ray two hosts of 3: agents 0, 2, 3, 5 are read across hosts, 1 and 4 only at home
    extra = ["backend.num_cpus=2", "backend.agents_per_actor=3"] if backend == "ray" else []
    s = setup(to_plain(tiny("algorithm=dsgd", "agents=6", "topology=ring", f"backend={backend}", *extra)))
    b = s.backend(s.host, s.dataset, s.parts)
    try:
        b.run(ops.train, 2)  # distinct states: every agent trained on its own shard
        before = {i: v for h in b.run(ops.states) for i, v in h.items()}
        assert len({v.tobytes() for v in before.values()}) == 6
        rows = mixing_rows(s.topology.W, full_plan(s.topology.W))
        out = run_exchange(b, s.algorithm, rows, list(range(6)), {i: len(p) for i, p in enumerate(s.parts)})
        after = {i: v for h in b.run(ops.states) for i, v in h.items()}
    finally:
        b.shutdown()
    expected = gossip_reference(before, rows)
    for i in range(6):
        np.testing.assert_array_equal(after[i], expected[i])  # bit for bit: every message is the state before
    assert sorted((src, dst) for src, dst, _ in out.transfers) == sorted((j, i) for i, (_, r) in rows.items()
                                                                        for j, _ in r)
