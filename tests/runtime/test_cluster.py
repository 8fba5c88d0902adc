"""A 2-node Ray cluster on this machine: agents spread over both nodes, same results as one process."""

from __future__ import annotations

import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster

from dimat import run


@pytest.mark.timeout(600)
def test_agents_spread_over_two_nodes_match_the_single_node_run(tiny, tmp_path, monkeypatch):
    # a multi-node instance must not be pinned to a single loopback node
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        common = ("algorithm=dsgd", "agents=4", "rounds=2")
        spread = run(tiny(*common, "backend=ray", f"backend.address={cluster.address}", "backend.placement=spread",
                          "backend.agents_per_actor=2", f"run.dir={tmp_path}/spread"))
        assert spread.summary["nodes"] == 2
    finally:
        ray.shutdown()
        cluster.shutdown()
    single = run(tiny(*common, "backend=inprocess", f"run.dir={tmp_path}/single"))
    for a, b in zip(single.records, spread.records):
        np.testing.assert_allclose(a["acc"], b["acc"], atol=1e-6)
        assert a["bytes_total"] == b["bytes_total"]
