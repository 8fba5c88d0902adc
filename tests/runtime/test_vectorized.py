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


def _agents(n: int, model, seed: int = 0):
    from dimat.agent import Agent

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((300, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 4, 300)
    opt = dict(name="sgd", lr=0.1, momentum=0.0, weight_decay=0.0)
    return x, [Agent(i, model(), x, y, np.arange(i, 300, n), batch_size=8, optimizer=opt, seed=i) for i in range(n)]


@pytest.mark.parametrize("n", [1, 16, 21])  # one block, exactly one full block, a full block and a partial one
def test_the_groups_batched_prediction_is_each_agents_own(n):
    import torch

    from dimat.models import mlp
    from dimat.runtime.vectorized import AgentGroup

    torch.manual_seed(0)
    x, agents = _agents(n, lambda: mlp((1, 8, 8), 4, hidden=(16,)))
    own = np.stack([a.predict(x, 64) for a in agents])
    group = AgentGroup(agents)
    got = group.predict(x, 64)
    assert got.shape == (n, len(x))
    np.testing.assert_array_equal(got, own)
    assert len({tuple(row) for row in own}) > 1 or n == 1  # the agents differ: rows are not mixed up unseen


def test_the_groups_prediction_of_a_conv_model_is_each_agents_own_channels_last():
    import torch

    from dimat.models import cnn
    from dimat.runtime.vectorized import AgentGroup

    torch.manual_seed(0)
    x, agents = _agents(3, lambda: cnn((1, 8, 8), 4, norm="ln"))
    own = np.stack([a.predict(x, 64) for a in agents])
    np.testing.assert_array_equal(AgentGroup(agents).predict(x, 64), own)
