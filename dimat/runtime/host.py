"""An agent host: one or more agents in one process, the same code in-process and in a Ray actor.

The host only orchestrates: it builds agents, runs their training, publishes
their flat states, fetches the neighbour states the driver tells it to, and
hands them to the algorithm. States travel as handles: the array itself
in-process, an `ObjectRef` from one `ray.put` per agent per round with Ray.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dimat.agent import Agent, correct_by_class, predict
from dimat.algorithms import Received, build_algorithm
from dimat.data import Dataset
from dimat.flat import as_tensor, flatten_module
from dimat.models import build_model


def agent_seed(seed: int, index: int) -> int:
    """A per-agent seed, independent of which host the agent lives on."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def build_agent_model(cfg: dict, dataset: Dataset, index: int) -> torch.nn.Module:
    """Agent `index`'s initial model: its own init (`independent`) or the shared one."""
    independent = cfg["init"] == "independent"
    torch.manual_seed(cfg["seed"] + index if independent else cfg["seed"])
    m = cfg["model"]
    return build_model(
        m["name"], dataset.input_shape, dataset.num_classes, width=m["width"], norm=m["norm"], hidden=tuple(m["hidden"]),
        groups=m["groups"],
    )


def proxy_indices(cfg: dict, n_train: int) -> np.ndarray:
    """`merge.samples` training indices shared by all agents for `merge.data=proxy` (seeded)."""
    rng = np.random.default_rng([cfg["seed"], 7919])
    return np.sort(rng.choice(n_train, size=min(cfg["merge"]["samples"], n_train), replace=False))


class AgentHost:
    """Hosts the agents `parts` (agent index → its sample indices) of one experiment."""

    def __init__(
        self,
        cfg: dict,
        dataset: Dataset,
        parts: dict[int, np.ndarray],
        *,
        transport: str = "local",
        threads: int | None = None,
        timeout_s: float = 600.0,
        device: str = "cpu",
    ):
        if threads:
            torch.set_num_threads(threads)
        # Adam's second moments of always-zero inputs (digit borders) decay into denormal
        # floats, which are ~30x slower on CPU; flushing them to zero changes nothing that matters
        torch.set_flush_denormal(True)
        self.cfg = cfg
        self.transport = transport
        self.timeout_s = timeout_s
        self.dataset = dataset
        self.algorithm = build_algorithm(**cfg["algorithm"], merge=cfg["merge"])
        if cfg["merge"]["data"] == "proxy":  # one shared public subset, the same on every host
            self.algorithm.proxy = torch.from_numpy(dataset.x_train[proxy_indices(cfg, len(dataset.y_train))]).to(device)
        self.agents: dict[int, Agent] = {}
        example = torch.from_numpy(dataset.x_train[:2].copy())
        for i, idx in parts.items():
            model = build_agent_model(cfg, dataset, i)
            agent = Agent(
                i,
                model,
                dataset.x_train,
                dataset.y_train,
                idx,
                batch_size=cfg["batch_size"],
                optimizer=self.algorithm.optimizer,
                seed=agent_seed(cfg["seed"], i),
                device=device,
            )
            self.algorithm.prepare(agent, example.to(device))
            self.agents[i] = agent
        self.device = device
        self.group = None
        if cfg["backend"]["vectorize"]:
            from dimat.runtime.vectorized import AgentGroup

            self.group = AgentGroup(list(self.agents.values()))
        from dimat.schedule import SCHEDULES

        # the state each agent last sent, kept only for event-triggered schedules (one model per agent)
        self._tracks_sent = SCHEDULES[cfg["schedule"]["name"]].needs_drift
        self._last_sent = {i: a.state().copy() for i, a in self.agents.items()} if self._tracks_sent else {}
        self._scratch: tuple[torch.nn.Module, torch.Tensor] | None = None

    # -- training and exchange ---------------------------------------------
    def train(self, steps: int) -> dict[int, float]:
        """Train every hosted agent; one that diverges (non-finite loss or weights) is rolled back.

        A rolled-back agent keeps its last good state, gets a fresh optimizer, and
        reports a loss of +inf, so the driver can log it; its neighbours never see
        the bad state.
        """
        if self.group is None or steps <= 0:
            # one agent at a time: a single rollback copy is alive at once
            return {i: self._checked(a, a.vec.detach().clone(), self._train_one(a, steps)) for i, a in self.agents.items()}
        goods = {}
        for i, a in self.agents.items():
            goods[i] = a.vec.detach().clone()
            self.algorithm.before_train(a)
        trained = self.group.train(steps)
        return {i: self._checked(a, goods[i], trained[i]) for i, a in self.agents.items()}

    def _train_one(self, a: Agent, steps: int) -> float:
        self.algorithm.before_train(a)
        return a.train(steps)

    def _checked(self, a: Agent, good: torch.Tensor, loss: float) -> float:
        """The agent's loss, or +inf after rolling it back to `good` if it diverged."""
        if not (np.isfinite(loss) or len(a.indices) == 0) or not bool(torch.isfinite(a.vec).all()):
            a.load(good)
            a.reset_optimizer()
            return float("inf")
        return loss

    def _payloads(self, ids) -> dict[int, np.ndarray]:
        snaps = {i: self.algorithm.payload(self.agents[i]) for i in ids}
        if self._tracks_sent:
            self._last_sent.update({i: v[: self.agents[i].layout.size] for i, v in snaps.items()})
        return snaps

    def publish(self, ids: list[int] | None = None) -> dict[int, Any]:
        """A snapshot of each agent's state, as a handle the other hosts can fetch."""
        return self._put(self._payloads(list(self.agents) if ids is None else ids))

    def _put(self, arrays: dict) -> dict:
        """Handles other hosts can fetch: object-store references with Ray, the arrays themselves in-process."""
        if self.transport == "ray":
            import ray

            return {k: ray.put(v) for k, v in arrays.items()}
        return arrays

    def _fetch(self, handles: dict[int, Any]) -> dict[int, np.ndarray]:
        if self.transport == "ray":
            import ray

            keys = list(handles)
            return dict(zip(keys, ray.get([handles[k] for k in keys], timeout=self.timeout_s)))
        return handles

    def exchange(self, plan: dict[int, tuple[float, list[tuple[int, float]]]], handles: dict[int, Any]) -> dict:
        """Merge each planned agent with the neighbour states it receives.

        plan: agent → (self weight, [(neighbour, weight), ...]). Returns the
        transfers that happened as (source, destination, bytes) and merge times.
        """
        return self._combine(plan, self._fetch(handles))

    def _combine(self, plan: dict, states: dict[int, np.ndarray]) -> dict:
        transfers, merge_s = [], {}
        for i, (self_w, row) in plan.items():
            received = [Received(j, states[j], w) for j, w in row]
            transfers += [(r.source, i, int(r.state.nbytes)) for r in received]
            t0 = time.perf_counter()
            info = self.algorithm.combine(self.agents[i], self_w, received)
            merge_s[i] = info.get("merge_s", time.perf_counter() - t0)
        return {"transfers": transfers, "merge_s": merge_s}

    # -- cross-gradient exchange (algorithm=cga): models out, gradients back ----
    def cross_gradients(self, plan: dict, handles: dict[int, Any]) -> dict:
        """Phase one: every hosted agent takes its own gradient; each planned one also, on the same batch,
        the gradient of every neighbour model it receives. Returns those as handles keyed (computed by,
        model of), the model transfers and each agent's loss."""
        return self._cross_begin(plan, self._fetch(handles), put=True)

    def cross_step(self, incoming: dict[int, list[tuple[int, float]]], handles: dict) -> dict:
        """Phase two: each hosted agent aggregates the cross-gradients `incoming` names (source, weight),
        mixes with the models it received and steps."""
        return self._cross_finish(incoming, self._fetch(handles))

    def _cross_begin(self, plan: dict, states: dict[int, np.ndarray], put: bool) -> dict:
        grads, transfers, losses = {}, [], {}
        for i, a in self.agents.items():
            self_w, row = plan.get(i, (1.0, []))
            received = [Received(j, states[j], w) for j, w in row]
            transfers += [(r.source, i, int(r.state.nbytes)) for r in received]
            losses[i], out = self.algorithm.begin(a, self_w, received)
            grads.update({(i, j): g for j, g in out.items()})
        return {"transfers": transfers, "losses": losses, "grads": self._put(grads) if put else grads}

    def _cross_finish(self, incoming: dict, grads: dict) -> dict:
        transfers, merge_s, rolled_back = [], {}, []
        for i, a in self.agents.items():
            cross = [Received(k, grads[(k, i)], w) for k, w in incoming.get(i, [])]
            transfers += [(r.source, i, int(r.state.nbytes)) for r in cross]
            good = a.vec.detach().clone()
            merge_s[i] = self.algorithm.finish(a, cross)["qp_s"]
            if self._checked(a, good, 0.0) == float("inf"):
                rolled_back.append(i)
        return {"transfers": transfers, "merge_s": merge_s, "rolled_back": rolled_back}

    def cross_p2p(self, plan: dict, send_to: dict, recv_from: dict, back_to: dict, back_from: dict,
                  incoming: dict) -> dict:
        """Both phases in one call, the models and the cross-gradients moved by point-to-point messages."""
        from dimat.runtime import p2p

        layout = next(iter(self.agents.values())).layout
        first = self._cross_begin(plan, self._swap_payloads(plan, send_to, recv_from, layout.size), put=False)
        grads = first["grads"]
        second = self._cross_finish(incoming, {**grads, **p2p.swap(grads, back_to, back_from, layout.n_params, self.device)})
        return {**second, "transfers": first["transfers"] + second["transfers"], "losses": first["losses"]}

    # -- torch.distributed exchange (backend.comm=torch) ---------------------
    def comm_address(self, loopback: bool) -> tuple[str, int]:
        from dimat.runtime import p2p

        return p2p.free_address(loopback)

    def init_comm(self, rank: int, world: int, addr: str, port: int, loopback: bool) -> None:
        from dimat.runtime import p2p

        p2p.init_group(rank, world, addr, port, device=self.device, timeout_s=self.timeout_s, loopback=loopback)

    def destroy_comm(self) -> None:
        from dimat.runtime import p2p

        p2p.destroy_group()

    def exchange_p2p(self, plan: dict, send_to: dict[int, list[int]], recv_from: dict[int, list[int]]) -> dict:
        """Like `exchange`, with remote payloads moved by point-to-point messages (see `dimat.runtime.p2p`)."""
        size = self.algorithm.payload_floats(next(iter(self.agents.values())).layout)
        return self._combine(plan, self._swap_payloads(plan, send_to, recv_from, size))

    def _swap_payloads(self, plan: dict, send_to: dict, recv_from: dict, size: int) -> dict[int, np.ndarray]:
        """The payloads `plan` reads: hosted ones directly, the others by point-to-point messages (each of
        this host's payloads that another host needs goes to it once)."""
        from dimat.runtime import p2p

        local = {j for _, row in plan.values() for j, _ in row if j in self.agents}
        payloads = self._payloads(sorted(local.union(*send_to.values())))
        return {**payloads, **p2p.swap(payloads, send_to, recv_from, size, self.device)}

    # -- measurement -------------------------------------------------------
    def evaluate(self) -> dict[int, np.ndarray]:
        """Per agent: correct predictions per class on the (full) test set."""
        d = self.dataset
        return {
            i: correct_by_class(a.predict(d.x_test, self.cfg["eval"]["batch_size"]), d.y_test, d.num_classes)
            for i, a in self.agents.items()
        }

    def _scratch_model(self) -> tuple[torch.nn.Module, torch.Tensor]:
        """A spare model of the agents' architecture over its own flat vector, built once."""
        if self._scratch is None:
            model = build_agent_model(self.cfg, self.dataset, 0).to(self.device)
            self._scratch = (model, flatten_module(model)[0])
        return self._scratch

    def evaluate_state(self, vec: np.ndarray) -> np.ndarray:
        """Correct predictions per class of a given flat state (e.g. the average model)."""
        model, flat = self._scratch_model()
        flat.copy_(as_tensor(vec))
        d = self.dataset
        pred = predict(model, d.x_test, self.cfg["eval"]["batch_size"], self.device)
        return correct_by_class(pred, d.y_test, d.num_classes)

    def bn_stats(self, vec: np.ndarray, keys: list[str]) -> list[tuple[int, dict[str, np.ndarray]]]:
        """BatchNorm statistics of the model `vec` on each hosted agent's own data (nothing else leaves)."""
        from dimat.merge import reset_bn

        model, flat = self._scratch_model()
        out = []
        for a in self.agents.values():
            flat.copy_(as_tensor(vec))
            x = a.local_samples(self.cfg["merge"]["samples"])
            reset_bn(model, x)
            views = a.layout.views(flat)
            out.append((len(x), {k: views[k].cpu().numpy().copy() for k in keys}))
        return out

    def drift(self) -> dict[int, float]:
        """‖x_i − x̂_i‖² since each agent last sent its state (event-triggered schedules)."""
        out = {}
        for i, a in self.agents.items():
            d = a.state().astype(np.float64) - self._last_sent[i]
            out[i] = float(d @ d)
        return out

    def state_sum(self) -> np.ndarray:
        """Sum of the hosted agents' flat states, in float64."""
        return np.sum([a.state().astype(np.float64) for a in self.agents.values()], axis=0)

    def sq_distance(self, mean: np.ndarray, params_only: bool = True) -> dict[int, float]:
        """‖x_i − x̄‖² per hosted agent (over the parameters by default)."""
        out = {}
        for i, a in self.agents.items():
            n = a.layout.n_params if params_only else a.layout.size
            diff = a.state()[:n].astype(np.float64) - mean[:n]
            out[i] = float(diff @ diff)
        return out

    def save(self, folder: str) -> None:
        """Write each hosted agent's snapshot to `folder/agent_<i>.pt` (temporary name, then rename)."""
        for i, a in self.agents.items():
            snap = a.snapshot()
            snap["algorithm"] = self.algorithm.agent_state(i)
            if self._tracks_sent:
                snap["last_sent"] = torch.from_numpy(self._last_sent[i].copy())
            save_atomic(snap, Path(folder) / f"agent_{i}.pt")

    def restore(self, folder: str) -> None:
        """Load the hosted agents from a checkpoint folder (tensors only: weights_only=True)."""
        for i, a in self.agents.items():
            snap = torch.load(Path(folder) / f"agent_{i}.pt", weights_only=True)
            a.restore(snap)
            self.algorithm.load_agent_state(i, snap["algorithm"])
            if self._tracks_sent:
                self._last_sent[i] = snap["last_sent"].numpy().copy()

    def assign(self, vec: np.ndarray) -> None:
        """Load one state into every hosted agent (a server's average)."""
        for a in self.agents.values():
            a.load(vec)
            self.algorithm.after_merge(a)

    def states(self) -> dict[int, np.ndarray]:
        return {i: a.state().copy() for i, a in self.agents.items()}

    def ping(self) -> int:
        return len(self.agents)

    def sees(self, folder: str) -> bool:
        """Whether this host's node sees the run folder (it must be shared on a cluster)."""
        return Path(folder).is_dir()

    def node(self) -> str:
        """The Ray node this host runs on ('local' outside Ray)."""
        if self.transport != "ray":
            return "local"
        import ray

        return ray.get_runtime_context().get_node_id()


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temporary name in the same folder, then rename: never half a file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
