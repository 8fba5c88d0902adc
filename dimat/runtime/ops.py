"""What a host does for the driver, besides messages and checkpoints: train, evaluate, measure.

Each is a plain function `op(host, *args)` that the driver runs on every host
with `backend.run(op, ...)`; the results come back in host order.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from dimat.agent import Agent, correct_by_class, predict
from dimat.flat import as_tensor


def rolled_back(agent: Agent, good: torch.Tensor) -> bool:
    """If the agent's weights are not finite, put `good` back with a fresh optimizer; whether it did."""
    # a finite sum proves every weight finite (NaN and inf propagate) in one pass without a boolean
    # tensor; a non-finite sum (NaN/inf, or finite weights that overflow) gets the element-wise check
    if math.isfinite(agent.vec.sum().item()) or bool(torch.isfinite(agent.vec).all()):
        return False
    agent.load(good)
    agent.reset_optimizer()
    return True


def train(host, steps: int) -> dict[int, float]:
    """Every hosted agent's local work of a round; one that diverges (non-finite loss or weights) is
    rolled back to its last good state with a fresh optimizer and reports a loss of +inf, so its
    neighbours never see the bad state."""
    algo = host.algorithm

    def checked(a: Agent, good: torch.Tensor, loss: float) -> float:
        if not (np.isfinite(loss) or len(a.indices) == 0):
            a.load(good)
            a.reset_optimizer()
            return float("inf")
        return float("inf") if rolled_back(a, good) else loss

    if host.group is None or steps <= 0:
        out = {}
        for i, a in host.agents.items():  # one agent at a time: a single rollback copy is alive at once
            good = a.vec.detach().clone()
            algo.before_train(a)
            out[i] = checked(a, good, algo.train(a, steps))
        return out
    goods = {}
    for i, a in host.agents.items():
        goods[i] = a.vec.detach().clone()
        algo.before_train(a)
    trained = host.group.train(steps)
    return {i: checked(a, goods[i], trained[i]) for i, a in host.agents.items()}


def test_set(host, full: bool) -> tuple[np.ndarray, np.ndarray]:
    """The test inputs and labels: the run's evaluation subsample, or (`full`) the whole test set."""
    d, idx = host.dataset, host.spec.eval_index
    if full or idx is None:
        return d.x_test, d.y_test
    if getattr(host, "_test_subset", None) is None:
        host._test_subset = (np.ascontiguousarray(d.x_test[idx]), d.y_test[idx])
    return host._test_subset


def evaluate(host, full: bool = False, ids: list[int] | None = None) -> dict[int, np.ndarray]:
    """Correct predictions per class of the hosted agents `ids` (None: all), on the subsample or the full set.
    A vectorized host predicts for its agents in batched blocks (`AgentGroup.predict`)."""
    x, y = test_set(host, full)
    ids = [i for i in host.agents if ids is None or i in ids]
    classes, bs = host.dataset.num_classes, host.spec.eval_batch_size
    if host.group is not None and ids:
        preds = host.group.predict(x, bs)
        return {i: correct_by_class(preds[k], y, classes) for k, i in enumerate(host.agents) if i in ids}
    return {i: correct_by_class(host.agents[i].predict(x, bs), y, classes) for i in ids}


def evaluate_state(host, vec: np.ndarray, full: bool = False, part: tuple[int, int] | None = None) -> np.ndarray:
    """Correct predictions per class of a given flat state (e.g. the average model), on the test samples
    [part[0], part[1]) (None: all of them)."""
    x, y = test_set(host, full)
    if part is not None:
        x, y = x[part[0] : part[1]], y[part[0] : part[1]]
    if len(x) == 0:
        return np.zeros(host.dataset.num_classes, dtype=np.int64)
    model, flat = host.scratch_model()
    flat.copy_(as_tensor(vec))
    return correct_by_class(predict(model, x, host.spec.eval_batch_size, host.device), y, host.dataset.num_classes)


def evaluate_with(host, full: bool, ids: list[int] | None, vec: np.ndarray, part: tuple[int, int]
                  ) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """`evaluate` of the hosted agents, and `evaluate_state` of `vec` on this host's part of the test samples:
    the hosts share one extra model's evaluation in the same call (`dimat.experiment.spread`)."""
    return evaluate(host, full, ids), evaluate_state(host, vec, full, part)


def bn_stats(host, vec: np.ndarray, keys: list[str], samples: int) -> list[tuple[int, dict[str, np.ndarray]]]:
    """BatchNorm statistics of the model `vec` on each hosted agent's own data (nothing else leaves)."""
    from dimat.merge import reset_bn

    model, flat = host.scratch_model()
    out = []
    for a in host.agents.values():
        flat.copy_(as_tensor(vec))
        x = a.local_samples(samples)
        reset_bn(model, x)
        views = a.layout.views(flat)
        out.append((len(x), {k: views[k].cpu().numpy().copy() for k in keys}))
    return out


def drift(host) -> dict[int, float]:
    """‖x_i − x̂_i‖² since each agent last sent its state (schedules that need "drift")."""
    out = {}
    for i, a in host.agents.items():
        d = a.state().astype(np.float64) - host.last_sent[i]
        out[i] = float(d @ d)
    return out


def moments(host) -> tuple[int, int, np.ndarray, float]:
    """The hosted agents' count, their parameter count (the flat states' prefix), the float64 sum of their
    flat states, and their scatter about their own mean over the parameters, Σ‖x_i − m‖². The driver pools
    every host's moments into the average model and the consensus distance in one call
    (`dimat.experiment._consensus`); each state is read twice, here."""
    vecs = [a.vec.detach() for a in host.agents.values()]
    n = host.layout().n_params
    total = torch.zeros(vecs[0].shape, dtype=torch.float64, device=vecs[0].device)
    for v in vecs:
        total += v
    scatter = 0.0
    if len(vecs) > 1:
        mean = total[:n] / len(vecs)
        for v in vecs:
            d = v[:n].double() - mean
            scatter += float(d @ d)
    return len(vecs), n, total.cpu().numpy(), scatter


def states(host) -> dict[int, np.ndarray]:
    return {i: a.state().copy() for i, a in host.agents.items()}


def sees(host, folder: str) -> bool:
    """Whether this host's node sees the run folder (it must be shared on a cluster)."""
    return Path(folder).is_dir()


def node(host) -> str:
    """The Ray node this host runs on ('local' outside Ray)."""
    if host.transport != "ray":
        return "local"
    import ray

    return ray.get_runtime_context().get_node_id()


def load_init(host, states: dict[int, tuple]) -> None:
    """`init_from`: the hosted agents start from the given (flat vector, integer buffers), fresh optimizers."""
    for i, (vec, ints) in states.items():
        a = host.agents[i]
        a.load(vec)
        a.load_ints(ints)
        a.reset_optimizer()
        if host.spec.track_sent:
            host.last_sent[i] = a.state().copy()
