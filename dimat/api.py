"""The Python API: the CLI's config and behaviour, from Python.

    import dimat

    cfg = dimat.compose(["algorithm=dsgd", "agents=8", "backend=inprocess"])  # what `python -m dimat ...` composes
    result = dimat.run(cfg)                                   # -> Result(run_dir, summary, records)
    result = dimat.run(cfg, model=MyNet, dataset=my_data)     # objects instead of their config groups
    result = dimat.run({"agents": 3, "algorithm": "dsgd"})    # a mapping: group choices and values
    result = dimat.resume("outputs/2026-12-02/10-00-00", ["rounds=20"])

Bad input raises :class:`ConfigError` with the one line the CLI prints.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dimat.components import setup
from dimat.config import GROUPS
from dimat.configure import ConfigError, compose, conf_dir, explain  # noqa: F401 - the API's names
from dimat.experiment import Result, execute
from dimat.metrics import flatten_dict
from dimat.runtime import checkpoint

# settings a resumed run may change: more rounds continue the run; the rest only affects how it is watched
RESUMABLE = ("rounds", "eval.every", "eval.batch_size", "eval.before_merge", "run.progress", "run.checkpoint_every",
             "run.on_failure", "backend.timeout_s")


def _as_config(cfg: Any) -> DictConfig | dict:
    if cfg is None:
        return compose()
    if isinstance(cfg, DictConfig):
        return cfg
    if isinstance(cfg, Mapping):
        return from_mapping(cfg)
    if isinstance(cfg, Sequence) and not isinstance(cfg, str):
        return compose(list(cfg))
    raise TypeError(f"dimat.run takes a composed config, a mapping or a list of overrides, not {type(cfg).__name__}")


def from_mapping(values: Mapping) -> DictConfig:
    """A config from a mapping: a group given by a string picks that option, everything else is merged in
    (checked by the schemas), e.g. {"algorithm": "dsgd", "agents": 3, "eval": {"every": 2}}."""
    choices = [f"{k}={v}" for k, v in values.items() if (k in GROUPS or k == "experiment") and isinstance(v, str)]
    rest = {k: v for k, v in values.items() if not ((k in GROUPS or k == "experiment") and isinstance(v, str))}
    cfg = compose(choices)
    try:
        return OmegaConf.merge(cfg, rest) if rest else cfg
    except Exception as e:  # noqa: BLE001 - a key no schema has, a value of the wrong type
        raise ConfigError(explain(e).replace("\n", " ")) from e


def to_plain(cfg: DictConfig | Mapping) -> dict:
    """A resolved plain-container config (what components and actors receive)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return OmegaConf.to_container(OmegaConf.create(dict(cfg)), resolve=True)


def run(cfg: DictConfig | Mapping | Sequence[str] | None = None, *, model=None, dataset=None, algorithm=None,
        topology=None) -> Result:
    """Run one experiment and return its folder, summary and per-round records.

    `cfg`: a config from `compose` (None: the defaults), a mapping (see `from_mapping`) or a list of
    overrides. Objects replace their config group: `model` a factory called as
    `model(input_shape=..., num_classes=...)`, `dataset` a `dimat.data.Dataset` or a loader called with no
    arguments that returns one (then resumable by its import path), `algorithm` a zero-argument
    factory of an `Algorithm` (a class or a `functools.partial`), `topology` a networkx graph or a
    `topologies.Topology`; the run's config.yaml records their import paths. With `cfg.resume` set, the run
    continues that folder (see `resume`).
    """
    cfg = _as_config(cfg)
    objects = {"model": model, "dataset": dataset, "algorithm": algorithm, "topology": topology}
    c = to_plain(cfg)
    if c.get("resume"):
        return resume(c["resume"], changes=_changed(c), **objects)
    return execute(setup(c, **objects))


def _changed(c: dict) -> dict[str, Any]:
    """The settings a config changes relative to a plain `resume=DIR` (what the user asked to change)."""
    base = flatten_dict(to_plain(compose([f"resume={c['resume']}"])))
    mine = flatten_dict(c)
    return {k: v for k, v in mine.items() if k not in ("resume", "run.dir") and base.get(k, ...) != v}


def resume(run_dir: str | os.PathLike, overrides: Sequence[str] = (), *, changes: Mapping[str, Any] | None = None,
           **objects) -> Result:
    """Continue the run in `run_dir` from its last checkpoint, with its own config.yaml.

    `overrides` ("key=value") may change only `RESUMABLE` settings — more `rounds` continue the run;
    anything else is refused, as is fewer rounds than the checkpoint holds. Objects passed to the original
    `dimat.run` must be passed again (its config records only their import paths).
    """
    folder = Path(run_dir).resolve()
    path = folder / "config.yaml"
    if not path.exists():
        raise ConfigError(f"resume={run_dir}: no config.yaml there; pass the folder of a dimat run")
    saved = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    wanted = dict(changes or {})
    for o in overrides:
        key, sep, value = o.partition("=")
        if not sep:
            raise ConfigError(f"resume override {o!r}: write key=value")
        wanted[key.lstrip("+")] = _parse(value)
    flat = flatten_dict(saved)
    for key, value in wanted.items():
        if flat.get(key, ...) == value:
            continue
        if key not in RESUMABLE:
            was = flat.get(key, "(not set)")
            raise ConfigError(f"resume={run_dir}: {key} cannot change when a run resumes (it was {was}); only "
                              f"{', '.join(RESUMABLE)} may: start a new run for anything else")
        node = saved
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    usable, problems = checkpoint.newest_complete(folder)
    if usable is None:  # refuse before anything starts or is written: the run folder stays as it is
        why = "; ".join(problems) or "it has no checkpoint (run.checkpoint_every=0, or stopped before its first)"
        raise ConfigError(f"resume={run_dir}: no readable checkpoint ({why}); nothing was changed: start a new run "
                          "in another run.dir")
    done = checkpoint.saved_round(usable.parent, usable.name)
    if done is not None and saved["rounds"] < done:
        raise ConfigError(f"resume={run_dir}: rounds={saved['rounds']} but the checkpoint is at round {done}: "
                          f"give rounds >= {done}")
    for group, obj in (("data", "dataset"), ("model", "model"), ("algorithm", "algorithm"), ("topology", "topology")):
        if saved.get(group, {}).get("_target_", "") is None and objects.get(obj) is None:
            raise ConfigError(f"resume={run_dir}: this run's {group} was an object passed to dimat.run(); resume it "
                              f"from Python with dimat.resume(DIR, {obj}=...)")
    saved["run"]["dir"], saved["resume"] = str(folder), None
    return execute(setup(saved, **{k: v for k, v in objects.items() if v is not None}), resume=True)


def _parse(value: str) -> Any:
    """An override's value as Hydra would type it (numbers, booleans, null, lists), else the string."""
    import yaml

    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value
