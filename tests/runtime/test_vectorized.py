"""backend.vectorize: a host's agents trained as one vmapped computation give the per-agent results."""

from __future__ import annotations

import numpy as np
import pytest

from dimat import ConfigError, run


@pytest.mark.parametrize("extra", [
    ("algorithm=dsgd",),
    ("algorithm=dsgd", "algorithm.gossip_momentum=true"),  # momentum rows gossiped through the group
    ("algorithm=gt",),  # per-agent gradient hooks on the stacked gradients' rows
    ("algorithm=qgm",),  # momentum rows rebuilt after each merge
])
def test_vectorized_matches_per_agent_training(tiny, tmp_path, extra):
    common = ("backend=inprocess", "agents=4", "rounds=3", "topology=ring", "algorithm.optimizer.name=msgd", *extra)
    a = run(tiny(*common, f"run.dir={tmp_path}/loop"))
    b = run(tiny(*common, "backend.vectorize=true", f"run.dir={tmp_path}/vmap"))
    for ra, rb in zip(a.records, b.records):
        np.testing.assert_allclose(ra["acc"], rb["acc"], atol=1e-6)
        assert ra["consensus"] == pytest.approx(rb["consensus"], rel=1e-3, abs=1e-7)
        assert ra["loss_mean"] == pytest.approx(rb["loss_mean"], rel=1e-4)
        assert ra["bytes_total"] == rb["bytes_total"]


def test_vectorized_conv_model_with_layernorm(tiny, tmp_path):
    common = ("backend=inprocess", "agents=3", "rounds=2", "algorithm=dsgd", "data=digits", "model=cnn",
              "model.norm=ln", "data.train_samples=600")
    a = run(tiny(*common, f"run.dir={tmp_path}/loop"))
    b = run(tiny(*common, "backend.vectorize=true", f"run.dir={tmp_path}/vmap"))
    np.testing.assert_allclose(a.records[-1]["acc"], b.records[-1]["acc"], atol=2e-3)
    assert a.records[-1]["loss_mean"] == pytest.approx(b.records[-1]["loss_mean"], rel=1e-3)


@pytest.mark.parametrize("bad,message", [(("data=digits", "model=cnn"), "model.norm=ln"),
                                         (("algorithm.optimizer.name=adam",), "sgd|msgd")])
def test_vectorized_refuses_what_it_cannot_batch(tiny, bad, message):
    with pytest.raises(ConfigError, match=message):
        run(tiny("backend=inprocess", "backend.vectorize=true", *bad))
