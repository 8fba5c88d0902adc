"""The round loop on the driver: train, plan, exchange, measure, record, checkpoint.

`execute(setup)` runs what `dimat.components.setup` built. Each round: hosts
train → the schedule (wrapped by the budget ledger) plans exchanges → the
algorithm's phases run over the plan (`dimat.runtime.exchange`) → hosts
evaluate → the driver records. The driver knows no algorithm by name: what
travels, and how often, is the algorithm's and the schedule's.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

import topologies
from dimat.algorithms.final import bn_keys, global_alignment, pool_bn_stats, repair_global, set_bn_stats
from dimat.components import ConfigError, Setup
from dimat.data import own_classes
from dimat.flat import FlatLayout
from dimat.loggers import build_logger
from dimat.metrics import ByteLedger, RunWriter, accuracy, read_metrics, write_atomic
from dimat.network import first_reached
from dimat.progress import Display
from dimat.runtime import checkpoint, ops
from dimat.runtime.base import HostFailure, busy_warning
from dimat.runtime.exchange import Outcome, run_exchange
from dimat.runtime.host import build_agent_model
from dimat.schedule import Progress, full_plan, mixing_rows, plan_size

__all__ = ["ConfigError", "Diverged", "Driver", "HostFailure", "Result", "check_connected", "execute",
           "restrict_mixing"]


@dataclass(frozen=True)
class Result:
    run_dir: Path
    summary: dict
    records: list[dict]


def execute(s: Setup, *, resume: bool = False) -> Result:
    """Run one experiment (or continue it from its last checkpoint); returns folder, summary, records."""
    c = s.cfg
    run_dir = Path(c["run"]["dir"] or Path("outputs") / datetime.now().strftime("%Y-%m-%d/%H-%M-%S")).resolve()
    if not resume:
        check_run_dir(run_dir)
    display = Display(progress=c["run"]["progress"])
    display.start_info(s)
    display.print(f"run folder: {run_dir}")
    # centralized: one model on all the data, the agents' combined batch, the same steps
    spec, parts = s.host, s.parts
    if s.centralized:
        spec = replace(spec, batch_size=c["batch_size"] * c["agents"], independent_init=False)
        parts = [np.sort(np.concatenate(s.parts))]
    try:
        backend = s.backend(spec, s.dataset, parts)
    except ValueError as e:  # resources that do not fit (e.g. GPUs): one line, nothing started is left
        raise ConfigError(str(e).splitlines()[0]) from e
    made = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        _check_storage(backend, run_dir)
    except BaseException:
        backend.shutdown()
        if made:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    writer = RunWriter(run_dir)
    c["backend"]["threads"] = backend.threads  # the threads used, recorded: a resume and a rerun use the same
    if backend.free is not None and backend.name == "inprocess":  # Ray's actors have their CPUs reserved
        note = busy_warning(backend.threads * len(backend.groups), backend.free)
        if note:
            display.warn(note)
    if not resume:
        write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(c)))
    logger = build_logger(c["logger"], run_dir, c)
    try:
        return Driver(s, backend, writer, display, logger, len(parts)).run(resume)
    finally:
        backend.shutdown()
        display.stop()
        logger.close()


DIVERGED_ROUNDS = 3


class Diverged(RuntimeError):
    """Every agent was rolled back (non-finite loss or weights) several rounds in a row."""


RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", *checkpoint.FOLDERS)


def check_run_dir(run_dir: Path) -> None:
    """A new run never writes over another: run.dir must be new, or an empty folder."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run.dir={run_dir} is a file: give a folder path (it is created)")
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if found:
        raise ConfigError(f"run.dir={run_dir} holds a run already ({found[0]}): continue it with resume={run_dir}, "
                          "or give another run.dir")


def restrict_mixing(W: np.ndarray, alive: list[int]) -> np.ndarray:
    """W without the dropped agents: their rows and columns zeroed, the others' rows renormalised."""
    mask = np.zeros(len(W), bool)
    mask[alive] = True
    out = W * mask[None, :] * mask[:, None]
    sums = out.sum(1, keepdims=True)
    return np.divide(out, sums, out=np.zeros_like(out), where=sums > 0)


def check_connected(topology, alive: list[int], dropped: list[int]) -> None:
    """Dropping agents must leave the remaining graph connected (for a time-varying topology: the union of
    its steps, which is what the agents mix over in one period)."""
    import networkx as nx

    g = topologies.union_graph(topology).subgraph(alive)
    ok = nx.is_strongly_connected(g) if g.is_directed() else nx.is_connected(g)
    if not ok:
        raise RuntimeError(
            f"dropping agents {dropped} disconnects the {topology.name} topology: use run.on_failure=restart"
        )


def _check_storage(backend, run_dir: Path) -> None:
    """On a multi-node cluster every agent host must see the run folder (checkpoints go there)."""
    blind = [h for h, ok in enumerate(backend.run(ops.sees, str(run_dir))) if not ok]
    if blind:
        raise ConfigError(
            f"run.dir={run_dir} is not visible from the nodes of agent hosts {blind}: "
            "on a multi-node cluster set run.dir to a path every node shares (NFS, a mounted bucket)"
        )


def _merge_dicts(dicts: list[dict]) -> dict:
    out = {}
    for d in dicts:
        out.update(d)
    return dict(sorted(out.items()))


class Driver:
    """The round loop: train, plan, exchange, measure, record, checkpoint."""

    def __init__(self, s: Setup, backend, writer: RunWriter, display, logger, n: int):
        self.c, self.s, self.backend, self.writer, self.display, self.logger, self.n = (
            s.cfg, s, backend, writer, display, logger, n
        )
        self.algorithm = s.algorithm
        self.schedule = s.schedule
        self.ledger = ByteLedger(n)
        classes, idx = s.dataset.num_classes, s.host.eval_index
        self.full_counts = np.bincount(s.dataset.y_test, minlength=classes)
        # what the run is evaluated on: a fixed class-stratified subsample of the test set (eval.max_samples)
        self.test_counts = self.full_counts if idx is None else np.bincount(s.dataset.y_test[idx], minlength=classes)
        self.eval_cursor = 0  # eval.agents: where the rotating subset of evaluated agents starts
        self.own = (np.ones((1, s.dataset.num_classes), bool) if s.centralized
                    else np.stack([own_classes(h) for h in s.hist]))
        self.sizes = {i: len(p) for i, p in enumerate(s.parts)}
        self.records: list[dict] = []
        self.alive = list(range(n))  # agents still running (run.on_failure=drop removes some)
        # seconds spent evaluating and measuring: during the rounds (eval_s), the final figures (final_eval_s)
        self.eval_s = {False: 0.0, True: 0.0}
        self.t_start = time.perf_counter()
        self.all_rolled_back = 0  # consecutive rounds in which every agent was rolled back
        self.network = s.network  # the simulated network's clock (dimat.network), or None
        self.sim_time = 0.0  # simulated seconds so far

    def run(self, resume: bool) -> Result:
        c, R = self.c, self.c["rounds"]
        self.resumed = resume
        start = self.restore() if resume else None
        if resume and start is None:  # never start over in a run's folder: its records would be erased
            raise ConfigError(f"resume={self.writer.dir}: no readable checkpoint; nothing was changed")
        if resume:
            self.display.say(f"resumed {self.writer.dir} from its checkpoint of round {start}; rounds {start + 1}-{R} "
                             "follow")
        if start is None:
            start = 0
            self.writer.metrics_path.unlink(missing_ok=True)
            if self.s.init_states is not None:  # init_from: each host gets its own agents' saved weights
                states = self.s.init_states
                self.backend.run_each(ops.load_init, [({i: states[i] for i in g},) for g in self.backend.groups])
            if self.s.pretrain_steps:
                self.backend.run(ops.train, self.s.pretrain_steps)
                if self.network is not None:  # the agents train alone first: on the clock too
                    self.sim_time = self.network.round_s(self.s.pretrain_steps, [], self.alive)
            if c["run"]["checkpoint_every"]:
                self.checkpoint(0)  # what a failed host is restored from before the first periodic checkpoint
        self.display.begin(R, start)
        if not resume and start == 0 and c["init_from"] is not None:  # round 0: the agents as they start
            self.record({"round": 0, "step": 0}, {}, Outcome(), {}, [])
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
        # the last round was evaluated on the full test set and every agent, whatever eval.* chose during the run
        summary = _summarize(c, self.s, self.ledger, self.records)
        summary.update(final_eval_samples=self.records[-1]["eval_samples"], eval_s=self.eval_s[False],
                       final_eval_s=self.eval_s[True])
        if c["final_merge"]["rounds"]:  # counted in bytes_total; transfers_per_agent stays the training budget
            summary.update(self.post_merge(c["final_merge"]["rounds"]), bytes_total=self.ledger.total,
                           bytes_per_agent_max=int(max(self.ledger.sent.max(), self.ledger.recv.max())))
        if c["final_merge"]["enabled"]:
            summary.update(_final_merge(c, self.s, self.backend, len(self.alive), self.full_counts))
        summary["host_restarts"] = restarts
        recorded = read_metrics(self.writer.dir)  # evaluated rounds and event lines alike
        summary["rollbacks"] = sum(len(rec.get("rolled_back") or ()) for rec in recorded)
        summary["threads"] = self.backend.threads
        if self.network is not None:  # the simulated total (the final global merge is not on the clock)
            summary["sim_time_s"] = self.sim_time
            summary["time_to_acc"] = first_reached(self.records, c["network"]["targets"])
            summary["late_rounds"] = sum(1 for rec in recorded if rec.get("late"))
        summary["nodes"] = len(set(self.backend.run(ops.node)))
        summary["wall_s"] = time.perf_counter() - self.t_start  # the rounds, evaluation and final merge
        if self.s.started and not self.resumed:  # and everything before them: data, checks, starting the hosts
            summary["startup_s"] = self.t_start - self.s.started
            summary["total_s"] = time.perf_counter() - self.s.started
        age = _process_age()
        if age is not None:  # the whole command: interpreter, imports, composing the config, then the above
            summary["process_s"] = age
        self.writer.write_json("summary.json", summary)
        self.logger.summary(summary)
        self.display.final(summary, self.records, self.writer.dir)
        return Result(self.writer.dir, summary, self.records)

    def round(self, r: int) -> None:
        c, backend = self.c, self.backend
        R, spr = c["rounds"], self.s.steps_per_round
        progress = Progress(r, R, r * spr, R * spr)
        due = r % c["eval"]["every"] == 0 or r == R
        rec: dict = {"round": r, "step": progress.step}
        talk = self.algorithm.communicates
        if c["exchange_first"] and talk:  # DIMAT's own order: merge with the neighbours, then train
            plan, outcome = self.communicate(r, progress, due, rec, full=r == R)
            losses = _merge_dicts(backend.run(ops.train, spr))
        else:
            losses = _merge_dicts(backend.run(ops.train, spr))
            plan, outcome = self.communicate(r, progress, due, rec, full=r == R) if talk else ({}, Outcome())
        rolled_back = sorted({i for i, v in losses.items() if v == float("inf")} | set(outcome.rolled_back))
        if rolled_back:
            self.display.warn(f"round {r}: agents {rolled_back} diverged and were rolled back")
        if self.network is not None:  # the round on the simulated network's clock
            self.sim_time += self.network.round_s(spr, outcome.phases, self.alive)
            rec["sim_time_s"] = self.sim_time
        if due:
            self.record(rec, plan, outcome, losses, rolled_back, full=r == R)
        else:
            events = {k: rec[k] for k in ("late",) if rec.get(k)}
            if rolled_back:
                events["rolled_back"] = rolled_back
            if events:  # recorded whether or not the round is evaluated
                self.writer.append({"round": r, "event": "+".join(sorted(events)), **events})
            self.display.tick(r)
        self.check_divergence(r, rolled_back)

    def check_divergence(self, r: int, rolled_back: list[int]) -> None:
        """A run in which every agent is rolled back `DIVERGED_ROUNDS` rounds in a row cannot train: stop."""
        everyone = set(rolled_back) >= set(self.alive)
        self.all_rolled_back = self.all_rolled_back + 1 if everyone else 0
        if self.all_rolled_back >= DIVERGED_ROUNDS:
            raise Diverged(f"the run diverged: every agent's loss or weights were non-finite in rounds "
                           f"{r - DIVERGED_ROUNDS + 1}-{r} (each time rolled back): lower algorithm.optimizer.lr or "
                           "check the model")

    def record(self, rec: dict, plan: dict, outcome: Outcome, losses: dict, rolled_back: list[int], *,
               full: bool = False) -> None:
        """Evaluate (the subsample and the agents due; `full`: the whole test set and every agent), complete
        the round's record and write it."""
        c, backend = self.c, self.backend
        ids = None if full else self.evaluated_agents()
        t0 = time.perf_counter()
        counts = self.full_counts if full else self.test_counts
        rec.update(_measure(backend, len(self.alive), counts, self.own, c["eval"]["batch_size"], ids=ids, full=full))
        self.eval_s[full] += time.perf_counter() - t0
        rec["eval_samples"] = int(counts.sum())
        if ids is not None:
            rec["evaluated_agents"] = ids
        if len(self.alive) < self.n:
            rec["agents"] = self.alive
        rec.update(
            acc_after_merge=rec["acc_mean"], bytes_total=self.ledger.total, bytes_round=rec.pop("bytes_round", 0),
            budget_spent=self.schedule.spent_bytes if self.schedule else 0, budget_bytes=c["budget"]["bytes"],
            exchanges_planned=self.schedule.last_planned if self.schedule else 0, exchanges=plan_size(plan),
            merge_s=outcome.merge_s, rolled_back=rolled_back,
            loss_mean=_finite_mean(losses.values()),
            bytes_sent=self.ledger.sent, bytes_recv=self.ledger.recv, wall_s=time.perf_counter() - self.t_start,
        )
        self.writer.append(rec)
        self.records.append(_json_ready(rec))
        self.logger.log(self.records[-1])
        self.display.round(rec)

    def communicate(self, r: int, progress: Progress, due: bool, rec: dict, full: bool = False
                    ) -> tuple[dict, Outcome]:
        """Measure what the schedule needs, let it plan, run the algorithm's phases over the plan."""
        s, backend, algo, n = self.s, self.backend, self.algorithm, len(self.alive)
        top = s.topology.at(r - 1) if isinstance(s.topology, topologies.TimeVarying) else s.topology
        W = topologies.column_stochastic(top) if algo.mixing == "column" else top.W
        if n < self.n:
            W = restrict_mixing(W, self.alive)
        measured: dict = {}
        t0 = time.perf_counter()
        if due or "consensus" in self.schedule.needs:
            measured["consensus"] = rec["consensus_before_merge"] = _consensus(backend, n)[0]
        if "drift" in self.schedule.needs:
            measured["drift"] = _merge_dicts(backend.run(ops.drift))
        if due and self.c["eval"]["before_merge"]:  # the agents evaluated after the merge, on the subsample
            # (in the last round too: the final figures are the after-merge ones, on the full test set)
            ids = None if full else self.evaluated_agents(advance=False)
            acc = _agent_acc(backend, self.test_counts, ids)
            rec["acc_before_merge"] = float(np.mean(acc))
            rec["eval_samples_before_merge"] = int(self.test_counts.sum())
        self.eval_s[full] += time.perf_counter() - t0
        plan = self.schedule.plan(progress, W, measured)
        if self.network is not None and plan:  # agents still training at the deadline: their messages dropped
            late = self.network.late(self.s.steps_per_round, self.alive)
            if late:
                plan = {i: [j for j in src if j not in late] for i, src in plan.items()}
                rec["late"] = late
        rows = self.schedule.mix(W, plan)
        t0 = time.perf_counter()
        outcome = (run_exchange(backend, algo, rows, self.alive, self.sizes)
                   if rows or any(p.every_agent for p in algo.phases) else Outcome())
        rec["exchange_s"] = time.perf_counter() - t0
        rec["bytes_round"] = self.ledger.add(outcome.transfers)
        return plan, outcome

    def evaluated_agents(self, advance: bool = True) -> list[int] | None:
        """The agents evaluated this round: all (None), or eval.agents of them, rotating through the alive ones."""
        k = self.c["eval"]["agents"]
        if not k or k >= len(self.alive):
            return None
        ids = sorted(self.alive[(self.eval_cursor + j) % len(self.alive)] for j in range(k))
        if advance:
            self.eval_cursor = (self.eval_cursor + k) % len(self.alive)
        return ids

    def post_merge(self, rounds: int) -> dict:
        """Pure-gossip rounds (no training) on the post-merge topology before the global merge; bytes counted."""
        top = self.s.post_topology
        before = self.ledger.total
        for t in range(rounds):
            step = top.at(t) if isinstance(top, topologies.TimeVarying) else top
            W = step.W if len(self.alive) == self.n else restrict_mixing(step.W, self.alive)
            outcome = run_exchange(self.backend, self.algorithm, mixing_rows(W, full_plan(W)), self.alive, self.sizes,
                                   plain=True)
            self.ledger.add(outcome.transfers)
        after = _measure(self.backend, len(self.alive), self.full_counts, self.own, self.c["eval"]["batch_size"],
                         full=True)
        return {"post_merge_rounds": rounds, "bytes_post_merge": self.ledger.total - before,
                "post_merge_acc_mean": after["acc_mean"], "post_merge_acc_avg_model": after["acc_avg_model"],
                "post_merge_consensus": after["consensus"]}

    # -- checkpoints -------------------------------------------------------
    def checkpoint(self, r: int) -> None:
        checkpoint.write(self.backend, self.writer.dir, {
            "round": r, "schedule": self.schedule.state() if self.schedule else {}, "bytes": self.ledger.state(),
            "wall_s": time.perf_counter() - self.t_start, "sim_time": self.sim_time,
        })

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
        driver = checkpoint.load(self.backend, self.writer.dir, self.display.warn, self.alive)
        if driver is None:
            return None
        if self.schedule:
            self.schedule.load(driver["schedule"])
        self.ledger.load(driver["bytes"])
        self.t_start = time.perf_counter() - driver["wall_s"]
        self.sim_time = float(driver.get("sim_time", 0.0))
        r = driver["round"]
        # records after the checkpoint are replayed: drop them from the file
        old = read_metrics(self.writer.dir) if self.writer.metrics_path.exists() else []
        self.records = [rec for rec in old if rec["round"] <= r and "event" not in rec]
        kept = [rec for rec in old if rec["round"] <= r]  # events up to the checkpoint stay on file
        write_atomic(self.writer.metrics_path, "".join(json.dumps(rec) + "\n" for rec in kept))
        return r


def _agent_acc(backend, test_counts: np.ndarray, ids: list[int] | None = None) -> list[float]:
    """The agents' `ids` (None: all) accuracies on the run's evaluation subsample."""
    correct = _merge_dicts(backend.run(ops.evaluate, False, ids))
    return [accuracy(correct[i], test_counts) for i in sorted(correct)]


def _consensus(backend, n: int) -> tuple[float, np.ndarray]:
    """Mean ‖x_i − x̄‖² over agents (parameters only), and x̄, in float64: the hosts' moments pooled exactly
    in one call (each host's scatter about its own mean, plus its count times its mean's distance to x̄)."""
    counts, params, sums, scatters = zip(*backend.run(ops.moments))
    mean = np.sum(sums, axis=0) / n
    p = params[0]
    between = sum(k * float(np.sum((s[:p] / k - mean[:p]) ** 2)) for k, s in zip(counts, sums))
    return (float(np.sum(scatters)) + between) / n, mean


def _measure(backend, n: int, test_counts: np.ndarray, own: np.ndarray, batch_size: int, *, full: bool = False,
             ids: list[int] | None = None) -> dict:
    """Accuracies of the agents `ids` (None: all) and of the average model, and the consensus distance.

    One call per host evaluates its agents and its share of the average model's test samples (`spread`)."""
    consensus, mean = _consensus(backend, n)
    m = int(test_counts.sum())
    loads = [m * sum(1 for i in g if ids is None or i in ids) for g in backend.groups]
    handle = backend.put(mean.astype(np.float32))
    out = backend.run_each(ops.evaluate_with, [(full, ids, handle, p) for p in spread(loads, m, batch_size)])
    correct = _merge_dicts([agents for agents, _ in out])
    avg_correct = np.sum([counts for _, counts in out], axis=0)
    acc = [accuracy(correct[i], test_counts) for i in correct]
    acc_own = [accuracy(correct[i], test_counts, own[i]) for i in correct]
    return {
        "acc_mean": float(np.mean(acc)), "acc_min": float(np.min(acc)), "acc_max": float(np.max(acc)),
        "acc_avg_model": accuracy(avg_correct, test_counts), "consensus": consensus,
        "acc": acc, "acc_own": acc_own,
    }


def _evaluate_state(backend, vec: np.ndarray, m: int, batch_size: int) -> np.ndarray:
    """Correct predictions per class of one model on the full test set (m samples), every host taking a part."""
    handle = backend.put(np.asarray(vec, dtype=np.float32))
    parts = spread([0] * len(backend.groups), m, batch_size)
    return np.sum(backend.run_each(ops.evaluate_state, [(handle, True, p) for p in parts]), axis=0)


def spread(loads: list[int], m: int, batch_size: int) -> list[tuple[int, int]]:
    """One extra model's m test samples split between hosts already busy with `loads` samples each: contiguous
    slices of whole batches (so every batch is the one a single pass would predict), each batch going to the
    host that would finish first. Host order is kept; a host may get an empty slice."""
    n_batches = -(-m // batch_size)
    total = list(loads)
    take = [0] * len(loads)
    for _ in range(n_batches):
        h = min(range(len(total)), key=lambda k: (total[k] + batch_size, k))
        total[h] += batch_size
        take[h] += 1
    parts, lo = [], 0
    for t in take:
        hi = min(m, lo + t * batch_size)
        parts.append((lo, hi))
        lo = hi
    return parts


def _final_merge(c: dict, s: Setup, backend, n: int, test_counts: np.ndarray) -> dict:
    """All agents into one model (aligned when the run merged by permutations), BN pooled or REPAIRed, evaluated."""
    t0 = time.perf_counter()
    ids, states = zip(*sorted(_merge_dicts(backend.run(ops.states)).items()))
    model = build_agent_model(s.host, s.dataset, 0)
    layout = FlatLayout.of(model)
    merged, perms = global_alignment(list(states), layout, s.perm_spec)
    samples = c["merge"]["samples"] if c["merge"] else 512
    repair_bytes = 0
    if c["merge"] and c["merge"]["repair"]:
        perms = dict(zip(ids, perms)) if perms is not None else None
        merged, repair_bytes = repair_global(backend, merged, model, perms, s.perm_spec, s.dataset.x_train[:2],
                                             samples)
    elif keys := bn_keys(layout):
        per_shard = [x for h in backend.run(ops.bn_stats, merged, keys, samples) for x in h]
        merged = set_bn_stats(merged, layout, pool_bn_stats(per_shard))
    acc = accuracy(_evaluate_state(backend, merged, int(test_counts.sum()), c["eval"]["batch_size"]), test_counts)
    # every agent uploads its state and downloads the merged one (and REPAIR's statistics travel)
    return {
        "final_acc_global_merge": acc, "bytes_final_merge": 2 * n * s.model_bytes + repair_bytes,
        "final_merge_s": time.perf_counter() - t0,
    }


def _summarize(c: dict, s: Setup, ledger: ByteLedger, records: list[dict]) -> dict:
    last = records[-1]
    return {
        "final_acc_mean": last["acc_mean"], "final_acc_min": last["acc_min"], "final_acc_max": last["acc_max"],
        "final_acc_avg_model": last["acc_avg_model"], "bytes_total": ledger.total,
        "bytes_per_agent_max": int(max(ledger.sent.max(), ledger.recv.max())), "rounds": c["rounds"],
        "agents": c["agents"], "algorithm": s.labels["algorithm"], "model_bytes": s.model_bytes,
        # what an agent heard, in model-sized transfers (mean, and the most any agent heard): the papers' budget
        "transfers_per_agent": float(ledger.recv.mean()) / s.model_bytes,
        "transfers_per_agent_max": float(ledger.recv.max()) / s.model_bytes,
    }


def _process_age() -> float | None:
    """Seconds since this process started (Linux: /proc), None elsewhere."""
    import os

    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time after boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _finite_mean(values) -> float | None:
    """The mean of the finite values (a diverged agent reports +inf), None when there are none."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _json_ready(rec: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in rec.items()}
