"""FedAvg: a server replaces every agent by the shard-size-weighted mean; each agent uploads and downloads one state."""

from __future__ import annotations

import numpy as np
import pytest

from dimat import ConfigError, run
from dimat.metrics import ByteLedger


def test_server_average_weights_by_shard_size_and_counts_both_directions():
    from dimat.algorithms import SERVER, Fedavg

    payloads = {0: np.full(3, 1.0, np.float32), 1: np.full(3, 4.0, np.float32)}
    mean = Fedavg().aggregate(payloads, {0: 10, 1: 30})
    assert mean.dtype == np.float32 and np.allclose(mean, 0.25 * 1.0 + 0.75 * 4.0)
    ledger = ByteLedger(2)  # uploads to the server, downloads from it: as a server phase reports them
    assert ledger.add([(0, SERVER, 12), (1, SERVER, 12), (SERVER, 0, 12), (SERVER, 1, 12)]) == 48
    assert ledger.total == 48 and list(ledger.sent) == [12, 12] and list(ledger.recv) == [12, 12]


def test_fedavg_end_to_end(tiny):
    res = run(tiny("algorithm=fedavg", "backend=inprocess", "rounds=2", "eval.every=1"))
    state_bytes = 4 * ((64 * 32 + 32) + (32 * 4 + 4))
    assert res.summary["bytes_total"] == 2 * 2 * 4 * state_bytes  # rounds × (up + down) × agents × state
    for rec in res.records:  # after a server round every agent holds the same model
        assert rec["consensus"] < 1e-12 and rec["acc_min"] == rec["acc_max"]
    assert res.summary["final_acc_mean"] > 0.4


def test_fedavg_takes_no_budget(tiny):
    with pytest.raises(ConfigError, match="server"):
        run(tiny("algorithm=fedavg", "budget.bytes=1e6"))
