"""Components from the config: every group's `_target_` built once on the driver and checked.

`setup(cfg)` turns a composed config into a :class:`Setup` — the dataset, the
shards, the topology, the driver's algorithm, the schedule, and the factories
the agent hosts build their agents from (`HostSpec`) — or raises
:class:`ConfigError` with one line naming the setting and the fix, before
anything is written or any host starts. Every user component goes through the
same path as a built-in: its `_target_` is imported, its keys are checked
against its signature, it is called with the runtime arguments dimat supplies,
and what it returns is checked (a `Dataset`, disjoint shards, a connected
topology, a model whose outputs have one column per class and whose
permutation spec passes its self-test, ...).
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import topologies
from dimat.algorithms import Algorithm, Centralized
from dimat.config import FRAMEWORK_KEYS, MergeConf, PeriodicConf
from dimat.configure import ConfigError
from dimat.data import Dataset, check_parts, class_histogram, prepare_dataset, stratified
from dimat.runtime.base import machine_cpus
from dimat.flat import FlatLayout
from dimat.runtime import checkpoint
from dimat.runtime.host import HostSpec, build_agent_model
from dimat.schedule import Periodic, Ledger, Schedule

DEFAULT_MERGE = asdict(MergeConf())
DEFAULT_SCHEDULE = {k: v for k, v in asdict(PeriodicConf()).items()}
RESERVED = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


def one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


# --------------------------------------------------------------------------- _target_ nodes
def locate(group: str, node: dict) -> Callable:
    """The callable a group node's `_target_` names (imported here rather than by Hydra's get_object, which
    logs its own multi-line error before raising)."""
    target = node.get("_target_")
    if not target or target == "???":
        raise ConfigError(f"{group}._target_ is missing: set {group}._target_=pkg.module.Name")
    obj = _import(group, target)
    if not callable(obj):
        raise ConfigError(f"{group}._target_={target} is not callable: name a class or a function")
    return obj


def _import(group: str, target: str) -> Any:
    """`pkg.module.Name`: walked as Python's import would (an attribute of what is imported so far, else a
    submodule); ConfigError (one line) naming what is missing, with a near miss where there is one."""
    import difflib
    import importlib
    import pkgutil

    first, *rest = target.split(".")
    try:
        obj = importlib.import_module(first)
    except ModuleNotFoundError as err:
        if err.name != first:  # the module is there, one it imports is not
            raise ConfigError(f"{group}._target_={target}: importing {first} fails (no module named {err.name}): "
                              "install it") from err
        raise ConfigError(f"{group}._target_={target} cannot be imported (no module named {first}): check the name, "
                          "and that its module is importable (the working directory or PYTHONPATH)") from err
    except Exception as err:  # noqa: BLE001 - the module itself fails while importing
        raise ConfigError(f"{group}._target_={target}: importing {first} fails ({type(err).__name__}: "
                          f"{one_line(err)}): fix that module") from err
    where = first
    for name in rest:
        if not hasattr(obj, name) and hasattr(obj, "__path__"):  # a package: maybe a submodule not imported yet
            try:
                importlib.import_module(f"{where}.{name}")
            except ModuleNotFoundError:
                pass
            except Exception as err:  # noqa: BLE001
                raise ConfigError(f"{group}._target_={target}: importing {where}.{name} fails "
                                  f"({type(err).__name__}: {one_line(err)}): fix that module") from err
        if not hasattr(obj, name):
            names = [n for n in dir(obj) if not n.startswith("_")]
            names += [m.name for m in pkgutil.iter_modules(obj.__path__)] if hasattr(obj, "__path__") else []
            lower: dict[str, list[str]] = {}  # case-insensitive (Vitt -> ViT), the same first-letter case first
            for n in names:
                lower.setdefault(n.lower(), []).append(n)
            close = difflib.get_close_matches(name.lower(), list(lower), n=1)
            pick = sorted(lower[close[0]], key=lambda n: n[0].isupper() != name[0].isupper())[0] if close else None
            hint = f" did you mean {pick}?" if pick else ""
            raise ConfigError(f"{group}._target_={target}: {where} has no {name}:{hint} check the name")
        obj, where = getattr(obj, name), f"{where}.{name}"
    return obj


def _nested(value: Any) -> Any:
    """Nested `_target_` nodes inside a component's keys are built (Hydra's instantiate)."""
    if isinstance(value, dict) and "_target_" in value:
        from hydra.utils import instantiate

        return instantiate(value, _convert_="all")
    if isinstance(value, dict):
        return {k: _nested(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nested(v) for v in value]
    return value


def factory(group: str, node: dict, runtime: tuple[str, ...] = ()) -> functools.partial:
    """A partial of the node's target with its own keys (Hydra's `instantiate(node, _partial_=True)`, less
    the group's FRAMEWORK_KEYS); the `runtime` keywords are dimat's to supply. Keys the target does not
    take are refused here (a `_target_` swapped under another option's keys, or a key forced in with `+`)."""
    if node.get("_partial_") is False and runtime:
        raise ConfigError(f"{group}._partial_=false: dimat calls the {group} with {', '.join(runtime)}; "
                          f"leave _partial_ true")
    target = locate(group, node)
    keys = {k: v for k, v in node.items() if k not in RESERVED and k not in FRAMEWORK_KEYS.get(group, ())}
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        sig = None
    if sig is not None and not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        unknown = [k for k in keys if k not in sig.parameters]
        if unknown:
            raise ConfigError(
                f"{group}.{unknown[0]} is not an argument of {node['_target_']}: drop it, or start from "
                f"{group}=custom {group}._target_={node['_target_']} and add its own keys with +{group}.KEY=VALUE"
            )
    try:
        return functools.partial(target, **_nested(keys))
    except Exception as e:  # noqa: BLE001 - a nested target that fails
        raise ConfigError(f"{group}: {one_line(e)}") from e


def call(group: str, fn: Callable, *args, **kwargs) -> Any:
    """Call a component; its error becomes one line (a user component's named by its target)."""
    try:
        return fn(*args, **kwargs)
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError) as e:  # the component's own message names its setting
        raise ConfigError(one_line(e)) from e
    except Exception as e:  # noqa: BLE001 - anything a user's component raises
        raise ConfigError(f"{group}: {_name(fn)} raised {type(e).__name__}: {one_line(e)}") from e


def _name(fn: Callable) -> str:
    f = fn.func if isinstance(fn, functools.partial) else fn
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', repr(f))}"


def _target_class(fn: Callable):
    f = fn.func if isinstance(fn, functools.partial) else fn
    return f if inspect.isclass(f) else None


def describe(obj: Any) -> dict:
    """The config node that records an object passed to `dimat.run` (its import path, a partial's keywords)."""
    if isinstance(obj, functools.partial):
        return {"_target_": _name(obj), **obj.keywords}
    if callable(obj):
        return {"_target_": _name(obj)}
    return {"_target_": None, "object": repr(obj)[:200]}


# --------------------------------------------------------------------------- the setup
@dataclass
class Setup:
    """Everything built from the config before a run starts (nothing written yet)."""

    cfg: dict  # the resolved config (what config.yaml records)
    dataset: Dataset
    parts: list[np.ndarray]
    hist: np.ndarray
    topology: Any
    algorithm: Algorithm  # the driver's instance: options checked, exchanges priced, server phases aggregated
    host: HostSpec  # what every agent host builds its agents from
    backend: Callable  # backend factory(spec, dataset, parts)
    schedule: Ledger | None
    steps_per_round: int
    pretrain_steps: int
    centralized: bool
    state_bytes: int  # one exchange along one edge (all neighbour phases)
    model_bytes: int  # one model state alone (float32 parameters and statistics)
    perm_spec: Any  # the permutation spec when the algorithm merges by permutations (aligns the final merge)
    labels: dict[str, str]
    post_topology: Any = None  # the topology of post-merge gossip rounds (final_merge.rounds > 0)
    init_states: list | None = None  # init_from: (flat vector, integer buffers) per agent
    started: float = 0.0  # time.perf_counter() when setup began (start-up = data, checks, hosts)
    notes: tuple[str, ...] = ()  # warnings for the start of the run (e.g. a model alignment cannot cover)
    network: Any = None  # the simulated network whose clock times every round (dimat.network), or None


def epochs_to_steps(epochs: float, parts: list[np.ndarray], batch_size: int) -> int:
    """Steps for `epochs` passes over the mean shard: all agents step in lockstep."""
    return max(1, math.ceil(epochs * float(np.mean([len(q) for q in parts])) / batch_size))


def _check_scalars(c: dict) -> None:
    checks = [
        (c["agents"] >= 2, f"agents={c['agents']}: a decentralized run needs at least 2 agents"),
        (c["rounds"] >= 1, f"rounds={c['rounds']} must be >= 1"),
        (c["batch_size"] >= 1, f"batch_size={c['batch_size']} must be >= 1"),
        (c["eval"]["every"] is None or c["eval"]["every"] >= 1,
         f"eval.every={c['eval']['every']} must be >= 1 (or null: spaced to keep evaluation within a fifth of the run)"),
        (c["eval"]["batch_size"] >= 1, f"eval.batch_size={c['eval']['batch_size']} must be >= 1"),
        (c["eval"]["max_samples"] is None or c["eval"]["max_samples"] >= 1,
         f"eval.max_samples={c['eval']['max_samples']} must be >= 1 (or null: the full test set)"),
        (c["eval"]["agents"] is None or c["eval"]["agents"] >= 1,
         f"eval.agents={c['eval']['agents']} must be >= 1 (or null: every agent)"),
        (c["local_epochs"] is None or c["local_epochs"] > 0, f"local_epochs={c['local_epochs']} must be > 0"),
        (c["local_steps"] is None or c["local_steps"] >= 1, f"local_steps={c['local_steps']} must be >= 1"),
        (not (c["local_epochs"] and c["local_steps"]),
         f"local_epochs={c['local_epochs']} and local_steps={c['local_steps']}: set one of them"),
        (c["pretrain_epochs"] is None or c["pretrain_epochs"] >= 0,
         f"pretrain_epochs={c['pretrain_epochs']} must be >= 0"),
        (c["init"] in ("auto", "independent", "shared"),
         f"init={c['init']} is unknown: use auto, independent or shared"),
        (c["run"]["on_failure"] in ("restart", "drop", "stop"),
         f"run.on_failure={c['run']['on_failure']} is unknown: use restart, drop or stop"),
        (c["run"]["checkpoint_every"] >= 0, f"run.checkpoint_every={c['run']['checkpoint_every']} must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _algorithm(c: dict, given: Callable | None) -> tuple[Algorithm, Callable]:
    """The driver's algorithm and the factory hosts build theirs from; the merge group resolved."""
    make = given if given is not None else factory("algorithm", c["algorithm"], runtime=("merge",))
    cls = _target_class(make)
    uses_merge = bool(getattr(cls or make, "uses_merge", False))
    if uses_merge:
        c["merge"] = {**DEFAULT_MERGE, **(c["merge"] or {})}
        make = functools.partial(make, merge=dict(c["merge"]))
    elif c["merge"] is not None:
        changed = [k for k, v in c["merge"].items() if DEFAULT_MERGE.get(k, object()) != v]
        if changed:
            raise ConfigError(f"merge.{changed[0]}={c['merge'][changed[0]]}: {_name(make)} does not merge by "
                              "permutations; merge options apply to algorithm=dimat: drop it")
        c["merge"] = None
    algorithm = call("algorithm", make)
    if not isinstance(algorithm, Algorithm):
        raise ConfigError(f"algorithm: {_name(make)} built a {type(algorithm).__name__}, not a subclass of "
                          "dimat.algorithms.Algorithm")
    return algorithm, make


def _resolve(c: dict, algo: Algorithm) -> None:
    """Fill the `auto`/null top-level settings from the algorithm, refusing what it cannot use."""
    forced = algo.steps_per_round
    if forced:
        if c["local_epochs"] is not None or c["local_steps"] not in (None, forced):
            raise ConfigError(f"algorithm={algo.label} communicates every step: leave local_steps and local_epochs "
                              f"unset (a round is {forced} step)")
        c["local_steps"] = forced
    elif c["local_steps"] is None and c["local_epochs"] is None:
        c["local_epochs"] = 1.0
    if c["init_from"] is not None:
        if c["init"] != "auto":
            raise ConfigError(f"init={c['init']} with init_from={c['init_from']}: the agents start from the saved "
                              "weights, so there is no init to choose: drop init")
        folder = Path(c["init_from"]).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"init_from={c['init_from']}: no such folder; give a dimat run folder (phase one's) "
                              "or a folder of agent_<i>.pt state dicts")
        c["init_from"] = str(folder.resolve())
        c["init"] = _source_init(folder) or c["init"]  # how the agents it holds were initialised, recorded
    if c["init"] == "auto":
        c["init"] = algo.default_init
    if c["pretrain_epochs"] is None:
        c["pretrain_epochs"] = 5.0 if c["init"] == "independent" and c["init_from"] is None else 0.0
    fm = c["final_merge"]
    if fm["enabled"] is None:
        fm["enabled"] = algo.communicates
    elif fm["enabled"] and isinstance(algo, Centralized):
        raise ConfigError("final_merge.enabled=true: algorithm=centralized trains one model, there is nothing to merge")
    if fm["rounds"] < 0 or (fm["rounds"] and not fm["enabled"]):
        raise ConfigError(f"final_merge.rounds={fm['rounds']}: post-merge gossip rounds precede an enabled final "
                          "merge; give rounds >= 0 with final_merge.enabled=true")
    if fm["topology"] is not None and not fm["rounds"]:
        raise ConfigError(f"final_merge.topology={fm['topology']} is the topology of post-merge rounds: set "
                          "final_merge.rounds too")
    if fm["rounds"] and algo.uses_merge:
        raise ConfigError(f"final_merge.rounds={fm['rounds']}: post-merge rounds are plain gossip averaging, and "
                          f"algorithm={algo.label}'s agents do not share one basis: use final_merge.rounds=0")
    if c["exchange_first"] and not algo.communicates:
        raise ConfigError(f"exchange_first=true: algorithm={algo.label} never exchanges: drop it")
    if not algo.communicates:
        budget = {k: v for k, v in c["budget"].items() if v is not None}
        if budget:
            raise ConfigError(f"budget.{next(iter(budget))}: algorithm={algo.label} does not communicate: drop it")
        if c["schedule"] is not None and c["schedule"] != DEFAULT_SCHEDULE:
            raise ConfigError(f"schedule: algorithm={algo.label} does not communicate, so it has no schedule: "
                              "drop the schedule override")
        c["schedule"] = None
    servers = [p for p in algo.phases if p.kind == "server"]
    if algo.communicates and servers:
        budget = {k: v for k, v in c["budget"].items() if v is not None}
        if budget:
            raise ConfigError(f"algorithm={algo.label} averages through a server and takes no budget: drop "
                              f"budget.{next(iter(budget))}, space its rounds with the schedule (e.g. schedule.every)")
        if c["backend"].get("comm") == "torch":
            raise ConfigError(f"algorithm={algo.label} exchanges through a server (the driver); backend.comm=torch "
                              "moves neighbour messages only: use backend.comm=object_store")


EVAL_SHARE = 0.2  # evaluation may take this share of a run (eval.every=null)
EVAL_COST = 1 / 3  # an evaluated sample (a forward pass) against a trained one (forward and backward)


def _resolve_eval(c: dict, algo: Algorithm, steps: int, eval_samples: int, full_samples: int,
                  pretrain_samples: int) -> None:
    """eval.before_merge=null: on for permutation merges. eval.every=null: the smallest spacing for which the
    whole run's evaluation — the evaluated rounds during it, and the last round's, always every agent on the
    full test set (and the global merge, and the post-merge rounds') — costs at most EVAL_SHARE of the run.
    Samples are counted, not timed, so the evaluated rounds are the same on every run. Where the last round's
    evaluation alone exceeds that share (many agents, little data each), only the last round is evaluated."""
    e = c["eval"]
    if e["before_merge"] is None:
        e["before_merge"] = bool(algo.uses_merge and algo.communicates)
    if e["every"] is None:
        n = 1 if isinstance(algo, Centralized) else c["agents"]
        per_agent = 2 if e["before_merge"] and algo.communicates else 1  # before and after the merge
        during = EVAL_COST * eval_samples * (min(n, e["agents"] or n) * per_agent + 1)  # + the average model
        models_last = n + 1  # the last round on the full test set: every agent after its merge, the average
        if c["final_merge"]["enabled"]:
            models_last += 1  # the global merge
            if c["final_merge"]["rounds"]:
                models_last += n + 1  # the post-merge rounds' agents and their average
        # ... and every agent before its merge, on the subsample
        last = EVAL_COST * (full_samples * models_last + eval_samples * n * (per_agent - 1))
        rounds = c["rounds"]
        trained = c["agents"] * steps * c["batch_size"] * rounds + pretrain_samples
        budget = EVAL_SHARE / (1 - EVAL_SHARE) * trained - last
        fit = max(0, math.floor(budget / during))  # evaluated rounds before the last one that fit the budget
        e["every"] = 1 if fit >= rounds - 1 else (rounds - 1) // (fit + 1) + 1


def _dataset(c: dict, given: Dataset | Callable | None) -> Dataset:
    """The run's dataset: the config's loader's, or one given to `dimat.run` -- a Dataset, or a loader called
    with no arguments (like `model=`, a callable is recorded by its import path)."""
    d = c["data"]
    if given is None:
        raw = call("data", factory("data", d))
    elif callable(given) and not isinstance(given, Dataset):
        raw = call("data", given)
    else:
        raw = given
    return call("data", prepare_dataset, raw, train_samples=d.get("train_samples"),
                test_samples=d.get("test_samples"), seed=c["seed"])


def _compressor(c: dict, algo: Algorithm, layout) -> Any:
    """The compressor of every gossip message (None: plain float32 messages), checked against the algorithm."""
    from dimat.compress import Compressor

    comp = call("compress", factory("compress", c["compress"]))
    if not isinstance(comp, Compressor):
        raise ConfigError(f"compress: {c['compress'].get('_target_')} built a {type(comp).__name__}, not a "
                          "dimat.compress.Compressor")
    if comp.name == "none" and type(comp) is Compressor:
        return None
    label = f"compress={comp.name}"
    if not algo.communicates:
        raise ConfigError(f"{label}: algorithm={algo.label} sends nothing to compress: drop compress")
    other = sorted({p.kind for p in algo.phases} - {"gossip"})
    if other:
        raise ConfigError(f"{label}: algorithm={algo.label} has {other[0]} phases, and compression applies to "
                          "gossip messages: use a gossip algorithm (dsgd, choco, gt, d2, qgm, sgp, cdsgd, dimat)")
    problem = algo.compress_problem()
    if problem:
        raise ConfigError(f"{label}: {problem}")
    algo.compressed = True
    if c["final_merge"]["rounds"]:
        raise ConfigError(f"{label}: final_merge.rounds gossips whole states after training: drop one of them")
    call("compress", comp.setup, layout.shapes)
    return comp


def _network(c: dict, algo: Algorithm, topo, model: torch.nn.Module, example: torch.Tensor) -> Any:
    """The simulated network of the run (None: network=none), its keys checked."""
    from dimat.config import NetworkConf
    from dimat.network import build, step_flops

    nc, default = c["network"], asdict(NetworkConf())
    if not nc["enabled"]:
        changed = [k for k, v in nc.items() if k != "enabled" and v != default[k]]
        if changed:
            raise ConfigError(f"network.{changed[0]} sets a simulated network, and network=none has none: choose "
                              "network=custom or a preset (datacenter, wan, edge)")
        return None
    if not algo.communicates:
        raise ConfigError(f"network: algorithm={algo.label} sends nothing for a network clock to time: drop network")
    if not all(0 < t <= 1 for t in nc["targets"]):
        raise ConfigError(f"network.targets={list(nc['targets'])} are accuracies: give values in (0, 1]")
    if nc["deadline_s"] is not None:
        if algo.every_edge:
            raise ConfigError(f"network.deadline_s drops late agents' messages, which algorithm={algo.label}'s public "
                              "copies cannot miss: drop the deadline")
        if any(p.kind != "gossip" for p in algo.phases):
            raise ConfigError(f"network.deadline_s drops late agents' gossip messages; algorithm={algo.label} has "
                              "other phases: drop the deadline")
    if nc["step_s"] is not None and nc["flops"] is not None:
        raise ConfigError(f"network.step_s={nc['step_s']:g} and network.flops={nc['flops']:g} both price a local step: "
                          "give one (network.flops=null to time steps by step_s, network.step_s=null by FLOPs)")
    if nc["slowdown"] != 1 and not nc["stragglers"]:
        raise ConfigError(f"network.slowdown={nc['slowdown']:g} slows the stragglers, and network.stragglers=0 makes "
                          "none: give network.stragglers (a fraction of the agents)")
    step_s = nc["step_s"]
    if step_s is None:
        if nc["flops"] is None or not nc["flops"] > 0:
            raise ConfigError("network: give network.step_s (seconds of one local step) or network.flops (the "
                              "device's FLOP/s: a step then costs the model's counted FLOPs)")
        step_s = step_flops(model, example, c["batch_size"]) / nc["flops"]
    links = {}
    graph = getattr(topo, "graph", None)
    if graph is not None:
        for i, j, data in graph.edges(data=True):
            if "bandwidth" in data or "latency" in data:
                links[(int(i), int(j))] = (data.get("bandwidth"), data.get("latency"))
    return call("network", build, c["agents"], seed=c["seed"], bandwidth=nc["bandwidth"], latency=nc["latency"],
                step_s=step_s, link_sigma=nc["link_sigma"], speed_sigma=nc["speed_sigma"],
                stragglers=nc["stragglers"], slowdown=nc["slowdown"], deadline_s=nc["deadline_s"], links=links)


def _source_init(folder: Path) -> str | None:
    """`init` of the dimat run in `folder` (None: not a run, or its config does not say)."""
    try:
        from omegaconf import OmegaConf

        init = OmegaConf.load(folder / "config.yaml").get("init")
    except Exception:  # noqa: BLE001 - a folder of state dicts, or an unreadable config: nothing to record
        return None
    return init if init in ("independent", "shared") else None


def eval_subsample(y_test: np.ndarray, k: int | None, seed: int) -> np.ndarray | None:
    """The test indices evaluated during the run: `k` of them, class-stratified and seeded (None: all)."""
    if not k or k >= len(y_test):
        return None
    kept, _ = stratified(np.arange(len(y_test)), y_test, k, np.random.default_rng([seed, 3301]))
    return kept


def _topology(c: dict, given: Any) -> Any:
    n, t = c["agents"], c["topology"]
    out = given if given is not None else call("topology", factory("topology", t, runtime=("n",)), n)
    weights = t.get("weights")
    if isinstance(out, (topologies.Topology, topologies.TimeVarying)):
        if weights not in (None, "uniform"):
            raise ConfigError(f"topology.weights={weights}: the topology brings its own mixing matrix: drop it")
        return call("topology", topologies.validate, out, n_expected=n)
    import networkx as nx

    if not isinstance(out, (nx.Graph, nx.DiGraph)):
        raise ConfigError(f"topology: the builder returned {type(out).__name__}: return a networkx graph or a "
                          "topologies.Topology")
    name = (t.get("_target_") or "graph").rsplit(".", 1)[-1]
    return call("topology", topologies.from_graph, out, weights or "uniform", name=name, n=n)


def _model_check(make: Callable, ds: Dataset, example: torch.Tensor) -> torch.nn.Module:
    model = call("model", make, input_shape=ds.input_shape, num_classes=ds.num_classes)
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model: {_name(make)} returned {type(model).__name__}, not a torch.nn.Module")
    try:
        out = model.eval()(example)
    except Exception as e:  # noqa: BLE001 - the model cannot run on this data
        raise ConfigError(f"model: {_name(make)} fails on inputs of shape {tuple(example.shape)} "
                          f"({type(e).__name__}: {one_line(e)})") from e
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(example), ds.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model: {_name(make)} returns {shape} for {len(example)} inputs: dimat needs logits of "
                          f"shape ({len(example)}, num_classes={ds.num_classes})")
    if not bool(torch.isfinite(out).all()):
        raise ConfigError(f"model: {_name(make)} returns non-finite logits on the first training samples at "
                          "initialisation: check its init and forward (nothing could train)")
    return model


def setup(cfg: dict, *, model: Callable | None = None, dataset: Dataset | Callable | None = None,
          algorithm: Callable | None = None, topology: Any = None) -> Setup:
    """Validate the config and build every component; raise ConfigError on bad input (nothing is written)."""
    started = time.perf_counter()
    c = cfg
    _check_scalars(c)
    from dimat.loggers import check_logger

    try:
        check_logger(c["logger"])
    except ValueError as e:
        raise ConfigError(str(e)) from e
    algo, make_algorithm = _algorithm(c, algorithm)
    _resolve(c, algo)
    labels = {"algorithm": algo.label}
    if algorithm is not None:
        c["algorithm"] = describe(algorithm)
    ds = _dataset(c, dataset)
    if dataset is not None:
        c["data"] = {**describe(dataset), "name": ds.name, **{k: c["data"].get(k) for k in FRAMEWORK_KEYS["data"]}}
    labels["data"] = ds.name
    n = c["agents"]
    p = c["partition"]
    split = factory("partition", p, runtime=("labels", "n_agents"))
    parts = call("partition", check_parts, call("partition", split, ds.y_train, n), len(ds.y_train), n,
                 _name(split).rsplit(".", 1)[-1])
    labels["partition"] = _name(split).rsplit(".", 1)[-1]
    hist = class_histogram(ds.y_train, parts, ds.num_classes)
    topo = _topology(c, topology)
    if topology is not None:
        c["topology"] = describe(topology)
    labels["topology"] = topo.name
    make_model = model if model is not None else factory("model", c["model"], runtime=("input_shape", "num_classes"))
    if model is not None:
        c["model"] = describe(model)
    labels["model"] = _name(make_model).rsplit(".", 1)[-1]
    steps = c["local_steps"] or epochs_to_steps(c["local_epochs"], parts, c["batch_size"])
    eval_index = eval_subsample(ds.y_test, c["eval"]["max_samples"], c["seed"])
    pretrain = epochs_to_steps(c["pretrain_epochs"], parts, c["batch_size"]) if c["pretrain_epochs"] else 0
    _resolve_eval(c, algo, steps, len(ds.y_test) if eval_index is None else len(eval_index), len(ds.y_test),
                  pretrain * c["batch_size"] * c["agents"])

    # one agent on the driver, built as every host will build its own: the model runs on the data,
    # the optimizer accepts its settings, the algorithm prepares it (a permutation spec derives and self-tests)
    host = HostSpec(model=make_model, algorithm=make_algorithm, batch_size=c["batch_size"], seed=c["seed"],
                    independent_init=c["init"] == "independent", eval_batch_size=c["eval"]["batch_size"],
                    eval_index=eval_index)
    example = torch.from_numpy(np.ascontiguousarray(ds.x_train[:2]))
    torch.manual_seed(c["seed"])
    _model_check(make_model, ds, example)
    from dimat.agent import Agent

    agent = call("algorithm", Agent, 0, build_agent_model(host, ds, 0), ds.x_train, ds.y_train, parts[0],
                 batch_size=c["batch_size"], optimizer=algo.optimizer, seed=0, **algo.training)
    call("algorithm", algo.start, ds, c["seed"], "cpu")
    call("algorithm", algo.prepare, agent, example)
    layout = agent.layout
    init_states = None
    if c["init_from"] is not None:  # every file read and checked against this model before anything starts
        init_states = call("init_from", checkpoint.initial_states, c["init_from"], n, agent.model)
    perm_spec = getattr(algo, "spec", None) if algo.uses_merge else None
    notes = []
    b = c["backend"]
    if b.get("num_cpus") and not b.get("address") and b["num_cpus"] > machine_cpus():
        notes.append(f"backend.num_cpus={b['num_cpus']} is more than this machine's {machine_cpus()} CPUs: Ray will "
                     "place that many actors' work on them, slower than backend.num_cpus=null")
    aligns = algo.uses_merge and c["merge"]["method"] != "average"
    if c["init_from"] is not None and c["init"] == "independent" and algo.communicates and not aligns:
        notes.append(f"init_from={c['init_from']}: its agents were trained from independent inits, and "
                     f"algorithm={algo.label} averages them without aligning their hidden units: expect their first "
                     "merge to collapse (algorithm=dimat with merge=weight or activation aligns them)")
    if perm_spec is not None:
        from dimat.merge.spec import alignment_report

        note = alignment_report(agent.model, perm_spec, c["merge"]["method"])
        notes += [note] if note else []

    b = c["backend"]
    if b.get("vectorize"):
        from dimat.runtime.vectorized import check_vectorizable

        if type(algo).train is not Algorithm.train:
            raise ConfigError(f"algorithm={algo.label} takes its own local steps (it overrides Algorithm.train): "
                              "set backend.vectorize=false")
        call("backend", check_vectorizable, layout, algo.optimizer["name"])
    backend = factory("backend", b, runtime=("spec", "dataset", "parts"))
    labels["backend"] = getattr(_target_class(backend), "name", None) or _name(backend).rsplit(".", 1)[-1]
    compressor = _compressor(c, algo, layout)
    host = replace(host, compressor=compressor)
    state_bytes = algo.payload_bytes(layout, compressor)
    schedule = None
    if algo.communicates:
        sched = call("schedule", factory("schedule", c["schedule"]))
        if not isinstance(sched, Schedule):
            raise ConfigError(f"schedule: {c['schedule'].get('_target_')} built a {type(sched).__name__}, not a "
                              "subclass of dimat.schedule.Schedule")
        unknown = sorted(set(sched.needs) - {"consensus", "drift"})
        if unknown:
            raise ConfigError(f"schedule: {c['schedule'].get('_target_')} needs {unknown[0]!r}, which dimat does not "
                              "measure: use consensus and/or drift")
        if algo.mixing == "column" and type(sched).mix is not Schedule.mix:
            raise ConfigError(f"schedule: {c['schedule'].get('_target_')} weights what each agent pulls 1/(k+1), "
                              f"but algorithm={algo.label} needs column-stochastic (push-sum) weights: use a "
                              "schedule that keeps the topology's weights")
        budget = c["budget"]
        if getattr(algo, "every_edge", False):  # public copies (choco): every neighbour hears every message
            why = ("a schedule that picks edges" if type(sched) is not Periodic else
                   "a byte or exchange budget" if budget["bytes"] or budget["exchanges"] else
                   "a time-varying topology" if isinstance(topo, topologies.TimeVarying) else None)
            if why:
                raise ConfigError(f"algorithm={algo.label} keeps public copies that every neighbour must update "
                                  f"alike, so each exchange reaches every edge: {why} breaks that; use "
                                  "schedule=periodic (schedule.every spaces the exchanges), no budget, a fixed graph")
        schedule = call("budget", Ledger, sched, state_bytes, bytes=budget["bytes"], exchanges=budget["exchanges"],
                        seed=c["seed"])
        host = replace(host, track_sent="drift" in sched.needs)
    network = _network(c, algo, topo, agent.model, example)
    post_topology = None
    if c["final_merge"]["rounds"]:
        name = c["final_merge"]["topology"]
        post_topology = topo if name is None else call("final_merge", topologies.build, name, n)
    return Setup(
        cfg=c, dataset=ds, parts=parts, hist=hist, topology=topo, algorithm=algo, host=host, backend=backend,
        schedule=schedule, steps_per_round=steps, pretrain_steps=pretrain,
        centralized=isinstance(algo, Centralized),
        state_bytes=state_bytes, model_bytes=4 * layout.size, perm_spec=perm_spec, labels=labels,
        post_topology=post_topology, init_states=init_states, started=started, notes=tuple(notes), network=network,
    )
