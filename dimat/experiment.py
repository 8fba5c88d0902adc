"""Build the components from a config and run the round loop on the driver.

`run(cfg) -> Result` is the whole program; the CLI only wraps it. Each round:
hosts train → the schedule plans exchanges → hosts publish and merge → hosts
evaluate → the driver records. Components are validated before anything is
written, so a bad config leaves no half-made run folder.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import topologies
from dimat.algorithms import ALGORITHMS, build_algorithm
from dimat.algorithms.final import bn_keys, global_average, pool_bn_stats, set_bn_stats
from dimat.data import class_histogram, load_dataset, own_classes, partition
from dimat.flat import FlatLayout
from dimat.loggers import build_logger, check_logger
from dimat.metrics import ByteLedger, RunWriter, accuracy, read_metrics, write_atomic
from dimat.progress import Display
from dimat.runtime import BACKENDS, build_backend
from dimat.runtime.base import HostFailure
from dimat.runtime.host import build_agent_model, save_atomic
from dimat.schedule import Ledger, Progress, build_schedule, mixing_rows, plan_size


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the setting and the fix."""


@dataclass(frozen=True)
class Result:
    run_dir: Path
    summary: dict
    records: list[dict]


def to_plain(cfg: DictConfig | dict) -> dict:
    """A resolved plain-container config (what actors receive)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


@dataclass
class Setup:
    """Everything built from the config before a run starts (nothing written yet)."""

    cfg: dict
    dataset: object
    parts: list[np.ndarray]
    hist: np.ndarray
    topology: object | None
    steps_per_round: int
    centralized: bool
    schedule: Ledger
    state_bytes: int  # one payload (a model state, plus what the algorithm sends with it)
    spec: object | None  # the permutation spec, when a permutation merge is asked for
    model_bytes: int = 0  # one model state alone (float32 parameters and statistics)


def epochs_to_steps(epochs: float, parts: list[np.ndarray], batch_size: int) -> int:
    """Steps for `epochs` passes over the mean shard: all agents step in lockstep."""
    return max(1, math.ceil(epochs * float(np.mean([len(q) for q in parts])) / batch_size))


def prepare(cfg: dict) -> Setup:
    """Validate the config and build data, partition and topology; raise ConfigError on bad input."""
    c = cfg
    algo = c["algorithm"]["name"]
    if algo not in ALGORITHMS:
        raise ConfigError(f"algorithm={algo} is unknown: use one of {', '.join(ALGORITHMS)}")
    n = c["agents"]
    if n < 2:
        raise ConfigError(f"agents={n}: a decentralized run needs at least 2 agents")
    if c["rounds"] < 1:
        raise ConfigError(f"rounds={c['rounds']} must be >= 1")
    if c["batch_size"] < 1:
        raise ConfigError(f"batch_size={c['batch_size']} must be >= 1")
    if c["eval"]["every"] < 1:
        raise ConfigError(f"eval.every={c['eval']['every']} must be >= 1")
    if not c["local_steps"] and not c["local_epochs"] > 0:
        raise ConfigError(f"local_epochs={c['local_epochs']} must be > 0 (or set local_steps)")
    if c["backend"]["name"] not in BACKENDS:
        raise ConfigError(f"backend={c['backend']['name']} is unknown: use one of {', '.join(BACKENDS)}")
    b = c["backend"]
    if b["comm"] not in ("object_store", "torch"):
        raise ConfigError(f"backend.comm={b['comm']} is unknown: use object_store or torch")
    if b["device"] not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"backend.device={b['device']} is unknown: use auto, cpu or cuda")
    if b["comm"] == "torch" and b["name"] != "ray":
        raise ConfigError("backend.comm=torch moves states between Ray actors: use backend=ray (in-process needs none)")
    if b["placement"] not in ("pack", "spread"):
        raise ConfigError(f"backend.placement={b['placement']} is unknown: use pack or spread")
    if c["merge"]["data"] not in ("local", "proxy"):
        raise ConfigError(f"merge.data={c['merge']['data']} is unknown: use local or proxy")
    if c["run"]["on_failure"] not in ("restart", "drop", "stop"):
        raise ConfigError(f"run.on_failure={c['run']['on_failure']} is unknown: use restart, drop or stop")
    if c["init"] not in ("auto", "independent", "shared"):
        raise ConfigError(f"init={c['init']} is unknown: use auto, independent or shared")
    check_logger(c["logger"])
    algorithm = build_algorithm(**c["algorithm"], merge=c["merge"])  # options checked before any host starts
    if ALGORITHMS[algo].server and (c["budget"]["bytes"] is not None or c["budget"]["exchanges"] is not None):
        raise ConfigError(
            f"algorithm={algo} averages through a server and takes no budget: drop budget.*, space its rounds "
            "with the schedule (e.g. schedule.every)"
        )
    forced = ALGORITHMS[algo].steps_per_round
    if forced and c["local_steps"] not in (None, forced):
        raise ConfigError(f"algorithm={algo} communicates every step: leave local_steps unset (it is {forced})")
    c["local_steps"] = forced or c["local_steps"]
    if c["init"] == "auto":
        c["init"] = ALGORITHMS[algo].default_init
    d = c["data"]
    dataset = load_dataset(
        d["name"], d["root"], train_samples=d["train_samples"], test_samples=d["test_samples"], seed=c["seed"],
        **d["options"],
    )
    if c["eval"]["max_samples"]:
        k = min(c["eval"]["max_samples"], len(dataset.y_test))
        keep = np.sort(np.random.default_rng(c["seed"]).permutation(len(dataset.y_test))[:k])
        dataset = replace(dataset, x_test=dataset.x_test[keep], y_test=dataset.y_test[keep])
    p = c["partition"]
    parts = partition(
        dataset.y_train, n, p["method"], alpha=p["alpha"], min_samples=p["min_samples"],
        shards_per_agent=p["shards_per_agent"], seed=c["seed"],
    )
    hist = class_histogram(dataset.y_train, parts, dataset.num_classes)
    t = c["topology"]
    topo = topologies.build(
        t["name"], n, weights=t["weights"], seed=c["seed"], p=t["p"], k=t["k"], rewire=t["rewire"],
        path=t["path"], max_tries=t["max_tries"], rows=t["rows"],
    )
    steps = c["local_steps"] or epochs_to_steps(c["local_epochs"], parts, c["batch_size"])
    # one model on the driver: its state size prices an exchange, its spec must derive
    model = build_agent_model(c, dataset, 0)
    layout = FlatLayout.of(model)
    state_bytes = 4 * algorithm.payload_floats(layout)
    if c["backend"]["vectorize"]:
        from dimat.runtime.vectorized import check_vectorizable

        if ALGORITHMS[algo].cross:
            raise ConfigError(f"algorithm={algo} takes gradients of neighbours' models one agent at a time: "
                              "set backend.vectorize=false")

        check_vectorizable(layout, c["algorithm"]["optimizer"])  # a ValueError: run() makes it one clear line
    spec = None
    if algo == "dimat" and c["merge"]["method"] != "average":
        from dimat.merge import PermutationSpec

        spec = PermutationSpec.from_model(model, torch.from_numpy(dataset.x_train[:2].copy()))
    schedule = Ledger(
        build_schedule(**{k: v for k, v in c["schedule"].items() if k != "_target_"}, seed=c["seed"]),
        state_bytes, bytes=c["budget"]["bytes"], exchanges=c["budget"]["exchanges"],
    )
    return Setup(c, dataset, parts, hist, topo, steps, algo == "centralized", schedule, state_bytes, spec,
                 4 * layout.size)


def run(cfg: DictConfig | dict, *, resume: bool = False) -> Result:
    """Run one experiment (or continue it from its last checkpoint); returns folder, summary, records."""
    c = to_plain(cfg)
    try:
        s = prepare(c)
    except (ValueError, FileNotFoundError) as e:  # component validation: bad input, nothing written
        raise ConfigError(str(e)) from e
    run_dir = Path(c["run"]["dir"] or Path("outputs") / datetime.now().strftime("%Y-%m-%d/%H-%M-%S")).resolve()
    writer = RunWriter(run_dir)
    if not resume:
        write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(c)))
    display = Display(enabled=c["run"]["progress"])
    display.start_info(s)
    # centralized: one model on all the data, the agents' combined batch, the same steps
    host_cfg, host_parts = c, s.parts
    if s.centralized:
        host_cfg = {**c, "batch_size": c["batch_size"] * c["agents"], "init": "shared"}
        host_parts = [np.sort(np.concatenate(s.parts))]
    try:
        backend = build_backend(host_cfg, s.dataset, host_parts)
    except ValueError as e:  # resources that do not fit (e.g. GPUs): one line, nothing started is left
        raise ConfigError(str(e)) from e
    try:
        _check_storage(backend, run_dir)
    except ConfigError:
        backend.shutdown()
        raise
    logger = build_logger(c["logger"], run_dir, c)
    try:
        return Driver(c, s, backend, writer, display, logger, len(host_parts)).run(resume)
    finally:
        backend.shutdown()
        display.stop()
        logger.close()


def restrict_mixing(W: np.ndarray, alive: list[int]) -> np.ndarray:
    """W without the dropped agents: their rows and columns zeroed, the others' rows renormalised."""
    mask = np.zeros(len(W), bool)
    mask[alive] = True
    out = W * mask[None, :] * mask[:, None]
    sums = out.sum(1, keepdims=True)
    return np.divide(out, sums, out=np.zeros_like(out), where=sums > 0)


def check_connected(topology, alive: list[int], dropped: list[int]) -> None:
    """Dropping agents must leave the remaining graph connected."""
    import networkx as nx

    top = topology.steps[0] if isinstance(topology, topologies.TimeVarying) else topology
    g = nx.Graph(top.graph.subgraph(alive)) if not top.directed else nx.DiGraph(top.graph.subgraph(alive))
    ok = nx.is_strongly_connected(g) if g.is_directed() else nx.is_connected(g)
    if not ok:
        raise RuntimeError(
            f"dropping agents {dropped} disconnects the {top.name} topology: use run.on_failure=restart"
        )


def _check_storage(backend, run_dir: Path) -> None:
    """On a multi-node cluster every agent host must see the run folder (checkpoints go there)."""
    blind = [h for h, ok in enumerate(backend.call("sees", str(run_dir))) if not ok]
    if blind:
        raise ConfigError(
            f"run.dir={run_dir} is not visible from the nodes of agent hosts {blind}: "
            "on a multi-node cluster set run.dir to a path every node shares (NFS, a mounted bucket)"
        )


class Driver:
    """The round loop: train, plan, exchange, measure, record, checkpoint."""

    def __init__(self, c: dict, s: Setup, backend, writer: RunWriter, display, logger, n: int):
        self.c, self.s, self.backend, self.writer, self.display, self.logger, self.n = (
            c, s, backend, writer, display, logger, n
        )
        self.schedule = s.schedule
        self.ledger = ByteLedger(n)
        self.test_counts = np.bincount(s.dataset.y_test, minlength=s.dataset.num_classes)
        self.own = np.stack([own_classes(h) for h in s.hist]) if not s.centralized else np.ones((1, s.dataset.num_classes), bool)
        self.communicates = ALGORITHMS[c["algorithm"]["name"]].communicates
        self.mixing = ALGORITHMS[c["algorithm"]["name"]].mixing
        self.server = ALGORITHMS[c["algorithm"]["name"]].server
        self.cross = ALGORITHMS[c["algorithm"]["name"]].cross
        self.records: list[dict] = []
        self.alive = list(range(n))  # agents still running (run.on_failure=drop removes some)
        self.t_start = time.perf_counter()

    def run(self, resume: bool) -> Result:
        c, R = self.c, self.c["rounds"]
        start = self.restore() if resume else None
        if start is None:
            start = 0
            self.writer.metrics_path.unlink(missing_ok=True)
            if c["pretrain_epochs"] and c["init"] == "independent":
                self.backend.call("train", epochs_to_steps(c["pretrain_epochs"], self.s.parts, c["batch_size"]))
            if c["run"]["checkpoint_every"]:
                self.checkpoint(0)  # what a failed host is restored from before the first periodic checkpoint
        self.display.begin(R, start)
        every, r, restarts = c["run"]["checkpoint_every"], start + 1, 0
        while r <= R:
            try:
                self.round(r)
                if every and (r % every == 0 or r == R):
                    self.checkpoint(r)
                r += 1
            except HostFailure as failure:
                r = self.recover(failure, r) + 1
                restarts += 1
        summary = _summarize(self.c, self.ledger, self.records)
        summary["model_bytes"] = self.s.model_bytes
        # bytes each agent sent, in model-sized units: the communication budget in the papers' terms
        summary["transfers_per_agent"] = float(self.ledger.sent.max()) / self.s.model_bytes
        if c["final_merge"] and self.communicates:
            summary.update(_final_merge(c, self.s, self.backend, len(self.alive), self.test_counts))
        summary["host_restarts"] = restarts
        summary["nodes"] = len(set(self.backend.call("node")))
        summary["wall_s"] = time.perf_counter() - self.t_start
        self.writer.write_json("summary.json", summary)
        self.logger.summary(summary)
        self.display.final(summary, self.records)
        return Result(self.writer.dir, summary, self.records)

    def round(self, r: int) -> None:
        c, s, backend, n = self.c, self.s, self.backend, len(self.alive)
        R, spr = c["rounds"], s.steps_per_round
        # cga trains inside its exchange: its gradients are taken at the models it sends
        losses = {} if self.cross else _merge_dicts(backend.call("train", spr))
        progress = Progress(r, R, r * spr, R * spr)
        due = r % c["eval"]["every"] == 0 or r == R
        top = s.topology.at(r - 1) if isinstance(s.topology, topologies.TimeVarying) else s.topology
        W = topologies.column_stochastic(top) if self.mixing == "column" else top.W
        if n < self.n:
            W = restrict_mixing(W, self.alive)
        rec: dict = {"round": r, "step": progress.step}
        measured: dict = {}
        if self.communicates and (due or self.schedule.name == "consensus"):
            measured["consensus"] = rec["consensus_before_merge"] = _consensus(backend, n)[0]
        if self.communicates and self.schedule.needs_drift:
            measured["drift"] = _merge_dicts(backend.call("drift"))
        if due and self.communicates and c["eval"]["before_merge"]:
            rec["acc_before_merge"] = float(np.mean(_agent_acc(backend, self.test_counts)))
        plan = self.schedule.plan(progress, W, measured) if self.communicates else {}
        t_exchange = time.perf_counter()
        if self.server:
            round_bytes, merge_s = (_server_average(backend, self.alive, self.s, self.ledger) if plan else 0), 0.0
        elif self.cross:
            round_bytes, merge_s, losses = _cross_exchange(backend, mixing_rows(W, plan), self.ledger)
        else:
            round_bytes, merge_s = _exchange(backend, mixing_rows(W, plan), self.ledger)
        rec["exchange_s"] = time.perf_counter() - t_exchange
        rolled_back = [i for i, v in losses.items() if v == float("inf")]
        if rolled_back:
            self.display.print(f"[yellow]round {r}: agents {rolled_back} diverged and were rolled back[/]")
        if not due:
            return
        rec.update(_measure(backend, n, self.test_counts, self.own))
        if n < self.n:
            rec["agents"] = self.alive
        rec["acc_after_merge"] = rec["acc_mean"]
        rec.update(
            bytes_total=self.ledger.total, bytes_round=round_bytes, budget_spent=self.schedule.spent_bytes,
            budget_bytes=c["budget"]["bytes"], exchanges_planned=self.schedule.last_planned,
            exchanges=plan_size(plan), merge_s=merge_s, rolled_back=rolled_back,
            loss_mean=float(np.nanmean([v for v in losses.values() if np.isfinite(v)] or [np.nan])),
            bytes_sent=self.ledger.sent, bytes_recv=self.ledger.recv, wall_s=time.perf_counter() - self.t_start,
        )
        self.writer.append(rec)
        self.records.append(_json_ready(rec))
        self.logger.log(self.records[-1])
        self.display.round(rec)

    # -- checkpoints -------------------------------------------------------
    def checkpoint(self, r: int) -> None:
        """Agents (by their hosts) and driver state into checkpoint.tmp/, then swapped in by renames."""
        run_dir = self.writer.dir
        tmp, final, prev = run_dir / "checkpoint.tmp", run_dir / "checkpoint", run_dir / "checkpoint.prev"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        self.backend.call("save", str(tmp))
        driver = {
            "round": r, "schedule": self.schedule.state(), "bytes": self.ledger.state(),
            "wall_s": time.perf_counter() - self.t_start,
        }
        save_atomic(driver, tmp / "driver.pt")
        # keep the previous complete checkpoint: if the newest is damaged, resume falls back to it
        shutil.rmtree(prev, ignore_errors=True)
        if final.exists():
            final.rename(prev)
        tmp.rename(final)

    def recover(self, failure: HostFailure, r: int) -> int:
        """A host died in round r: restart it (or drop its agents), roll back to the last checkpoint, replay."""
        mode = self.c["run"]["on_failure"]
        if mode == "stop" or not self.c["run"]["checkpoint_every"]:
            raise failure
        event: dict = {"event": f"host_{mode}", "host": failure.host, "failed_round": r}
        if mode == "restart":
            self.display.print(f"[yellow]{failure} in round {r}: restarting it from the last checkpoint[/]")
            self.backend.restart(failure.host)
        else:
            dropped = self.backend.groups[failure.host]
            alive = [i for i in self.alive if i not in dropped]
            check_connected(self.s.topology, alive, dropped)
            self.display.print(f"[yellow]{failure} in round {r}: dropping agents {dropped}, replaying without them[/]")
            self.backend.drop(failure.host)
            self.alive, event["agents_dropped"] = alive, dropped
        back = self.restore()
        if back is None:
            raise failure
        self.writer.append({"round": back, **event})
        return back

    def restore(self) -> int | None:
        """Load the newest readable checkpoint (falling back to the previous one); its round, or None."""
        run_dir = self.writer.dir
        for folder in (run_dir / "checkpoint", run_dir / "checkpoint.prev"):
            if not (folder / "driver.pt").exists():
                continue
            try:
                driver = torch.load(folder / "driver.pt", weights_only=True)
                self.backend.call("restore", str(folder))
                break
            except Exception as e:  # noqa: BLE001 - a truncated or corrupt file, whatever the reader raises
                self.display.print(f"[yellow]checkpoint {folder.name} is unreadable ({type(e).__name__}); trying an older one[/]")
        else:
            return None
        self.schedule.load(driver["schedule"])
        self.ledger.load(driver["bytes"])
        self.t_start = time.perf_counter() - driver["wall_s"]
        r = driver["round"]
        # records after the checkpoint are replayed: drop them from the file
        old = read_metrics(run_dir) if self.writer.metrics_path.exists() else []
        self.records = [rec for rec in old if rec["round"] <= r and "event" not in rec]
        kept = [rec for rec in old if rec["round"] <= r]  # events up to the checkpoint stay on file
        write_atomic(self.writer.metrics_path, "".join(json.dumps(rec) + "\n" for rec in kept))
        return r


def _merge_dicts(dicts: list[dict]) -> dict:
    out = {}
    for d in dicts:
        out.update(d)
    return dict(sorted(out.items()))


def _exchange(backend, rows: dict, ledger: ByteLedger) -> tuple[int, float]:
    """Publish the senders' states once each, let every host merge its receivers."""
    if not rows:
        return 0, 0.0
    if backend.comm == "torch":
        from dimat.runtime.p2p import host_plans

        results = backend.call_each("exchange_p2p", host_plans(backend.groups, rows))
    else:
        results = backend.call_each("exchange", _published(backend, rows))
    return _account(results, ledger)


def _published(backend, rows: dict) -> list[tuple[dict, dict]]:
    """Per host: (its agents' rows, handles of the states they read), each sender's state published once."""
    senders = {j for _, row in rows.values() for j, _ in row}
    handles = _merge_dicts(backend.call_each("publish", [([j for j in g if j in senders],) for g in backend.groups]))
    args = []
    for g in backend.groups:
        mine = {i: rows[i] for i in g if i in rows}
        need = {j for _, row in mine.values() for j, _ in row}
        args.append((mine, {j: handles[j] for j in need}))
    return args


def _account(results: list[dict], ledger: ByteLedger) -> tuple[int, float]:
    """Record the hosts' reported transfers; the round's bytes and total merge time."""
    return sum(ledger.add(res["transfers"]) for res in results), sum(sum(res["merge_s"].values()) for res in results)


def _cross_exchange(backend, rows: dict, ledger: ByteLedger) -> tuple[int, float, dict]:
    """cga's round: models out along the plan, cross-gradients back along each edge, then every agent
    steps (those without exchanges on their own gradient). Returns bytes, QP time and losses
    (+inf for an agent rolled back)."""
    incoming: dict[int, list[tuple[int, float]]] = {}  # model owner j -> [(gradient computed by i, W_ij)]
    for i, (_, row) in rows.items():
        for j, w in row:
            incoming.setdefault(j, []).append((i, w))
    into = [{j: incoming[j] for j in g if j in incoming} for g in backend.groups]
    if backend.comm == "torch":
        from dimat.runtime.p2p import host_plans, reply_plans

        args = [(*p, *b, inc) for p, b, inc in zip(host_plans(backend.groups, rows), reply_plans(backend.groups, rows), into)]
        results = backend.call_each("cross_p2p", args)
        losses = _merge_dicts([res["losses"] for res in results])
    else:
        args = _published(backend, rows) if rows else [({}, {}) for _ in backend.groups]
        first = backend.call_each("cross_gradients", args)
        grads = _merge_dicts([res["grads"] for res in first])
        second = backend.call_each(
            "cross_step", [(inc, {(i, j): grads[(i, j)] for j, src in inc.items() for i, _ in src}) for inc in into]
        )
        losses = _merge_dicts([res["losses"] for res in first])
        results = [{**a, **b, "transfers": a["transfers"] + b["transfers"]} for a, b in zip(first, second)]
    for res in results:
        losses.update({i: float("inf") for i in res["rolled_back"]})
    total, qp_s = _account(results, ledger)
    return total, qp_s, losses


def _server_average(backend, alive: list[int], s: Setup, ledger: ByteLedger) -> int:
    """fedavg: the shard-size-weighted mean of all agents' states, loaded back into every agent."""
    states = _merge_dicts(backend.call("states"))
    sizes = np.array([len(s.parts[i]) for i in alive], dtype=np.float64)
    mean = np.tensordot(sizes / sizes.sum(), np.stack([states[i] for i in alive]).astype(np.float64), axes=1)
    backend.call("assign", mean.astype(np.float32))
    return ledger.add_server_round(alive, s.state_bytes)


def _agent_acc(backend, test_counts: np.ndarray, own: np.ndarray | None = None) -> list[float]:
    correct = _merge_dicts(backend.call("evaluate"))
    return [accuracy(correct[i], test_counts, None if own is None else own[i]) for i in sorted(correct)]


def _consensus(backend, n: int) -> tuple[float, np.ndarray]:
    """Mean ‖x_i − x̄‖² over agents (parameters only), computed in two passes in float64; and x̄."""
    mean = np.sum(backend.call("state_sum"), axis=0) / n
    dists = _merge_dicts(backend.call("sq_distance", mean))
    return float(np.mean(list(dists.values()))), mean


def _measure(backend, n: int, test_counts: np.ndarray, own: np.ndarray) -> dict:
    """Accuracies of every agent and of the average model, and the consensus distance."""
    correct = _merge_dicts(backend.call("evaluate"))
    acc = [accuracy(correct[i], test_counts) for i in correct]
    acc_own = [accuracy(correct[i], test_counts, own[i]) for i in correct]
    consensus, mean = _consensus(backend, n)
    avg_correct = backend.call_one(0, "evaluate_state", mean.astype(np.float32))
    return {
        "acc_mean": float(np.mean(acc)), "acc_min": float(np.min(acc)), "acc_max": float(np.max(acc)),
        "acc_avg_model": accuracy(avg_correct, test_counts), "consensus": consensus,
        "acc": acc, "acc_own": acc_own,
    }


def _final_merge(c, s, backend, n, test_counts) -> dict:
    """All agents into one model (aligned when the run used permutation merges), BN pooled, evaluated."""
    t0 = time.perf_counter()
    states = [v for _, v in sorted(_merge_dicts(backend.call("states")).items())]
    layout = FlatLayout.of(build_agent_model(c, s.dataset, 0))
    merged = global_average(states, layout, s.spec)
    keys = bn_keys(layout)
    if keys:
        per_shard = [x for h in backend.call("bn_stats", merged, keys) for x in h]
        merged = set_bn_stats(merged, layout, pool_bn_stats(per_shard))
    acc = accuracy(backend.call_one(0, "evaluate_state", merged), test_counts)
    # every agent uploads its state and downloads the merged one
    return {
        "final_acc_global_merge": acc, "bytes_final_merge": 2 * n * s.model_bytes,
        "final_merge_s": time.perf_counter() - t0,
    }


def _summarize(c, ledger, records) -> dict:
    last = records[-1]
    return {
        "final_acc_mean": last["acc_mean"], "final_acc_min": last["acc_min"], "final_acc_max": last["acc_max"],
        "final_acc_avg_model": last["acc_avg_model"], "bytes_total": ledger.total,
        "bytes_per_agent_max": int(max(ledger.sent.max(), ledger.recv.max())), "rounds": c["rounds"],
        "agents": c["agents"], "algorithm": c["algorithm"]["name"],
    }


def _json_ready(rec: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in rec.items()}
