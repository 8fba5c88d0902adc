"""DIMAT: align each neighbour into the agent's own basis, merge with W, repair BatchNorm.

Per agent m and round: θ_m ← W_mm·θ_m + Σ_j W_mj·P_j(θ_j), where P_j is the
permutation found by weight matching (default) or activation matching on the
agent's own data (`merge.data=local`), or the identity (`merge.method=average`).
BatchNorm statistics are then re-estimated on local data. With `merge.repair=true`
(REPAIR, `dimat.merge.repair`) every hidden channel of the merged model also gets
the interpolation, with the same row of W, of the channel's mean and std in the
agent's and its aligned neighbours' models on that data (plain averaging too:
its collapse of the channels' spread is what REPAIR undoes); the statistics are
the agent's own, so nothing more travels.

With `algorithm.correction=gt` the agents also track the mean gradient (K-GT,
see `dimat.algorithms.tracking`): each neighbour's tracked direction is
permuted with the same permutation as its weights, so it lands in the agent's
basis. With `correction=qgm` the momentum buffer is rebuilt from the agent's
net displacement (merges included); its own basis never changes, so no
permutation is needed.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from dimat import merge as mergelib
from dimat.agent import Agent
from dimat.algorithms.base import Algorithm, Received
from dimat.algorithms.public import PublicCopies
from dimat.algorithms.tracking import GradientTracking, QuasiGlobalMomentum, split, with_extra
from dimat.flat import FlatLayout, as_tensor

METHODS = ("weight", "activation", "average")
MERGE_KEYS = {"method", "data", "samples", "restarts", "warm_start", "bn_repair", "repair"}


def proxy_indices(seed: int, n_train: int, samples: int) -> np.ndarray:
    """`samples` training indices shared by all agents for `merge.data=proxy` (seeded)."""
    rng = np.random.default_rng([seed, 7919])
    return np.sort(rng.choice(n_train, size=min(samples, n_train), replace=False))


class Dimat(Algorithm):
    name = "dimat"
    default_init = "independent"
    uses_merge = True

    def __init__(self, *, merge: dict | None = None, correction: str = "none", **options):
        super().__init__(**options)
        merge = dict(merge or {})
        unknown = sorted(set(merge) - MERGE_KEYS)
        if unknown:
            raise ValueError(f"merge.{unknown[0]} is not a merge option: use one of {', '.join(sorted(MERGE_KEYS))}")
        self.method = merge.get("method", "weight")
        if self.method not in METHODS:
            raise ValueError(f"merge.method={self.method} is unknown: use one of {', '.join(METHODS)}")
        for key in ("restarts", "warm_start"):
            if merge.get(key) is not None and self.method != "weight":
                raise ValueError(f"merge.{key} applies to weight matching: drop it for merge={self.method}")
        self.data_source = merge.get("data", "local")
        if self.data_source not in ("local", "proxy"):
            raise ValueError(f"merge.data={self.data_source} is unknown: use local or proxy")
        self.samples = int(merge.get("samples", 512))
        if self.samples < 1:
            raise ValueError(f"merge.samples={self.samples} must be >= 1")
        self.restarts = int(merge.get("restarts") or 0)
        self.warm_start = merge.get("warm_start") is not False
        self.bn_repair = bool(merge.get("bn_repair", True))
        self.repair = bool(merge.get("repair", False))
        if self.repair and not self.bn_repair:
            raise ValueError("merge.repair=true re-estimates BatchNorm statistics itself: drop merge.bn_repair=false")
        if correction not in ("none", "gt", "qgm"):
            raise ValueError(f"algorithm.correction={correction} is unknown: use none, gt or qgm")
        self.correction = correction
        self.spec: mergelib.PermutationSpec | None = None
        self.templates: list[torch.nn.Module] = []  # modules the neighbours' states load into (matching, REPAIR)
        self.points: list[mergelib.RepairPoint] = []  # where REPAIR corrects the merged model
        self._prev: dict[tuple[int, int], mergelib.Perm] = {}  # (agent, neighbour) -> last permutation
        self.proxy = None  # optional shared public data for matching and BN repair
        self.public: PublicCopies | None = None  # compressed messages: the neighbours' public copies are merged
        self.tracking = GradientTracking() if self.correction == "gt" else None
        self.qgm = QuasiGlobalMomentum(self.optimizer, "algorithm.correction=qgm") if self.correction == "qgm" else None

    def start(self, dataset, seed: int, device: str) -> None:
        if self.data_source == "proxy":  # one shared public subset, the same on every host
            idx = proxy_indices(seed, len(dataset.y_train), self.samples)
            self.proxy = torch.from_numpy(dataset.x_train[idx]).to(device)

    @property
    def every_edge(self) -> bool:  # public copies need every neighbour to hear every message
        return self.compressed

    def compress_problem(self) -> str | None:
        if self.correction != "none":
            return (f"algorithm=dimat with correction={self.correction} sends more than its model; compressed "
                    "messages carry the model alone: use algorithm.correction=none")
        return None

    def prepare(self, agent: Agent, example: torch.Tensor) -> None:
        if self.compressed and self.public is None:
            self.public = PublicCopies()
        if self.tracking is not None:
            self.tracking.attach(agent)
        if self.qgm is not None:
            self.qgm.attach(agent)
        if self.spec is None and self.method != "average":
            # one spec per host: every agent has the same architecture
            self.spec = mergelib.spec_for(agent.model, example)
        if not self.templates and (self.method == "activation" or self.repair):
            self.templates.append(copy.deepcopy(agent.model))
        if self.repair and not self.points:
            # plain averaging has no spec of its own: REPAIR still needs one to find the hidden layers
            spec = self.spec or mergelib.spec_for(agent.model, example)
            self.points = mergelib.repair_points(agent.model, spec, example)

    def message_floats(self, phase: int, layout: FlatLayout) -> int:
        return layout.size + (layout.n_params if self.tracking is not None else 0)

    def payload(self, agent: Agent):
        if self.public is not None:  # the compressed difference to the agent's public copy
            return self.public.payload(agent)
        if self.tracking is None:
            return super().payload(agent)
        return with_extra(agent, self.tracking.direction(agent))

    def before_train(self, agent: Agent) -> None:
        if self.qgm is not None:
            self.qgm.before_train(agent)

    def sent(self, agent: Agent, phase: int, message) -> None:
        if self.public is not None:
            self.public.sent(agent, message)

    def agent_state(self, index: int) -> dict:
        # the warm-start permutations, keyed by neighbour (strings: checkpoint-friendly)
        out = {"perms": {str(j): dict(p) for (i, j), p in self._prev.items() if i == index}}
        if self.public is not None:
            out["public"] = self.public.state(index)
        if self.tracking is not None:
            out["gt"] = self.tracking.state(index)
        if self.qgm is not None:
            out["qgm"] = self.qgm.state(index)
        return out

    def load_agent_state(self, index: int, state: dict) -> None:
        self._prev.update({(index, int(j)): dict(p) for j, p in state["perms"].items()})
        if self.public is not None:
            self.public.load(index, state["public"])
        if self.tracking is not None:
            self.tracking.load(index, state["gt"])
        if self.qgm is not None:
            self.qgm.load(index, state["qgm"])

    def _aligned_directions(self, agent: Agent, dirs: list[Received], perms: list | None) -> list[Received]:
        """The neighbours' tracked directions in the agent's basis (permuted like their weights)."""
        if perms is None:
            return dirs
        n, out = agent.layout.n_params, []
        for r, p in zip(dirs, perms):
            full = torch.zeros(agent.layout.size)
            full[:n] = torch.from_numpy(np.asarray(r.state, dtype=np.float32))
            moved = agent.layout.flatten(mergelib.apply_permutation(self.spec, p, agent.layout.views(full)))
            out.append(Received(r.source, moved[:n].numpy(), r.weight))
        return out

    def _templates(self, k: int) -> list[torch.nn.Module]:
        """k modules to load states into, made once per host (activation matching runs one per neighbour,
        so that the agent's own activations are computed once for all of them)."""
        self.templates += [copy.deepcopy(self.templates[0]) for _ in range(k - len(self.templates))]
        return self.templates[:k]

    def _repair_targets(self, agent: Agent, others: list[dict], weights: list[float], data: torch.Tensor) -> dict:
        """REPAIR's target per channel: the mixing row's interpolation of the agent's and its aligned
        neighbours' channel statistics on `data` (the agent's model still holds its own state)."""
        stats = [mergelib.channel_stats(agent.model, self.points, data)]
        scratch = self._templates(1)[0]
        for o in others:
            scratch.load_state_dict(o, strict=False)
            stats.append(mergelib.channel_stats(scratch, self.points, data))
        return mergelib.interpolate(stats, weights)

    def merge_data(self, agent: Agent) -> torch.Tensor:
        """Samples for activation matching and BN repair: the agent's own, or a shared proxy set."""
        if self.proxy is not None:
            return self.proxy
        return agent.local_samples(self.samples)

    def combine(self, agent: Agent, self_weight: float, received: list[Received]) -> None:
        if self.public is not None:  # merge with the neighbours' public copies, advanced by their messages
            received = self.public.receive(agent, received)
        dirs: list[Received] = []
        if self.tracking is not None:
            received, dirs = split(received, agent.layout.size)
        perms = None
        own = agent.state_dict_views()
        on = (lambda v: v) if agent.device == "cpu" else (lambda v: as_tensor(v).to(agent.device))
        others = [agent.state_dict_views(on(r.state)) for r in received]
        data = self.merge_data(agent) if (self.method == "activation" or self.bn_repair or self.repair) else None
        if self.method != "average" and others:
            init = [self._prev.get((agent.index, r.source)) if self.warm_start else None for r in received]
            kw = {"restarts": self.restarts} if self.method == "weight" else {}
            others, perms = mergelib.align(
                agent.model if self.method == "activation" else own,
                others,
                self.spec,
                method=self.method,
                data=data,
                model=self._templates(len(others)) if self.method == "activation" else None,
                init=init,
                **kw,
            )
            for r, p in zip(received, perms):
                self._prev[(agent.index, r.source)] = p
        weights = [self_weight] + [r.weight for r in received]
        targets = self._repair_targets(agent, others, weights, data) if self.repair and others else None
        merged = mergelib.merge([own] + others, weights)
        if self.tracking is not None:  # own direction first: the merge overwrites nothing it reads
            self.tracking.update(agent, self.tracking.direction(agent), self_weight,
                                 self._aligned_directions(agent, dirs, perms))
        agent.load(agent.layout.flatten(merged))
        if targets is not None:  # REPAIR re-estimates the BatchNorm statistics in the same pass
            mergelib.repair_merged(agent.model, self.points, targets, data)
        elif self.bn_repair:
            mergelib.reset_bn(agent.model, data)
        if self.qgm is not None:
            self.qgm.after_merge(agent)
