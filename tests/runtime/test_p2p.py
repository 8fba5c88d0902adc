"""backend.comm=torch: states move by torch.distributed point-to-point messages; same results as the object store."""

from __future__ import annotations

import numpy as np
import pytest

from dimat import run
from dimat.runtime.p2p import host_plans, reply_plans


def test_host_plans_send_each_payload_once_per_host_pair():
    groups = [[0, 1], [2, 3], [4]]
    # ring of 5: agent i hears i-1 and i+1
    rows = {i: (1 / 3, [((i - 1) % 5, 1 / 3), ((i + 1) % 5, 1 / 3)]) for i in range(5)}
    plans = host_plans(groups, rows)
    mine, to, frm = plans[0]
    assert set(mine) == {0, 1}
    assert to == {1: [1], 2: [0]}  # host 1 needs agent 1 (for 2); host 2 needs agent 0 (for 4)
    assert frm == {1: [2], 2: [4]}
    # what a host sends is what its peer expects to receive, host pair by host pair
    for a, (_, to_a, _) in enumerate(plans):
        for b, ids in to_a.items():
            assert plans[b][2][a] == ids


def test_reply_plans_send_each_cross_gradient_back_to_its_models_host():
    groups = [[0, 1], [2, 3], [4]]
    rows = {i: (1 / 3, [((i - 1) % 5, 1 / 3), ((i + 1) % 5, 1 / 3)]) for i in range(5)}
    plans = reply_plans(groups, rows)
    to, frm = plans[0]
    # host 0's agents computed gradients of agent 2's model (by 1) and of agent 4's (by 0)
    assert to == {1: [(1, 2)], 2: [(0, 4)]}
    assert frm == {1: [(2, 1)], 2: [(4, 0)]}
    for a, (to_a, _) in enumerate(plans):
        for b, keys in to_a.items():
            assert plans[b][1][a] == keys


@pytest.mark.parametrize("algorithm", ["dsgd", "cga"])  # cga: models out and cross-gradients back
def test_torch_comm_matches_the_object_store(tiny, tmp_path, algorithm):
    common = (f"algorithm={algorithm}", "agents=4", "rounds=3", "topology=ring", "backend=ray", "backend.num_cpus=2",
              "backend.agents_per_actor=1")  # one agent per actor: every exchange crosses hosts
    a = run(tiny(*common, f"run.dir={tmp_path}/store"))
    b = run(tiny(*common, "backend.comm=torch", f"run.dir={tmp_path}/torch"))
    assert len(a.records) == len(b.records) == 3
    for ra, rb in zip(a.records, b.records):
        np.testing.assert_allclose(ra["acc"], rb["acc"], atol=1e-6)
        assert ra["consensus"] == pytest.approx(rb["consensus"], rel=1e-4, abs=1e-8)
        assert ra["bytes_total"] == rb["bytes_total"]
        assert ra["bytes_sent"] == rb["bytes_sent"]
