"""FedAvg: a server replaces every agent by the shard-size-weighted mean; each agent uploads and downloads one state."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from dimat.experiment import ConfigError, _server_average, run
from dimat.metrics import ByteLedger


class StubBackend:
    def __init__(self, states):
        self.states, self.assigned = states, None

    def call(self, method, *args):
        if method == "states":
            return [self.states]
        self.assigned = args[0]
        return [None]


def test_server_average_weights_by_shard_size_and_counts_both_directions():
    states = {0: np.full(3, 1.0, np.float32), 1: np.full(3, 4.0, np.float32)}
    setup = SimpleNamespace(parts=[np.arange(10), np.arange(30)], state_bytes=12)
    ledger = ByteLedger(2)
    backend = StubBackend(states)
    assert _server_average(backend, [0, 1], setup, ledger) == 2 * 2 * 12
    assert np.allclose(backend.assigned, 0.25 * 1.0 + 0.75 * 4.0)
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
