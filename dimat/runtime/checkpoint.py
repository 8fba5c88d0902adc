"""Checkpoints: every agent's full state by its host, the driver's own state, swapped in atomically.

A checkpoint is a folder: `agent_<i>.pt` per agent (weights, integer buffers,
optimizer, RNG, data position, the algorithm's per-agent state, the last sent
state when the schedule measures drift) and `driver.pt` (round, schedule and
ledger state, wall time). It is written to `checkpoint.tmp/` and renamed into
place; the previous one is kept as `checkpoint.prev`, and a damaged newest one
(e.g. a truncated file) makes `load` fall back to it -- every file of a folder
is read before anything is restored from it, so a resume never mixes two
checkpoints, and with no readable one nothing is restored at all. Files hold
tensors and plain values only: they load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from dimat.metrics import replace_atomic

FOLDERS = ("checkpoint", "checkpoint.prev")


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temporary name in the same folder, then rename: never half a file (on a full disk:
    OSError(ENOSPC) naming the file, `dimat.metrics.replace_atomic`)."""
    replace_atomic(Path(path), lambda tmp: torch.save(obj, tmp))


# --------------------------------------------------------------------------- host side
def save_agents(host, folder: str) -> None:
    """Write each hosted agent's snapshot to `folder/agent_<i>.pt`."""
    for i, a in host.agents.items():
        snap = a.snapshot()
        snap["algorithm"] = host.algorithm.agent_state(i)
        if host.spec.track_sent:
            snap["last_sent"] = torch.from_numpy(host.last_sent[i].copy())
        if host.codec is not None:  # its generator and error-feedback memory
            codec = host.codec.state(i)
            snap["codec"] = {"rng": codec["rng"], "memory": None if codec["memory"] is None
                             else torch.from_numpy(codec["memory"])}
        save_atomic(snap, Path(folder) / f"agent_{i}.pt")


def restore_agents(host, folder: str) -> None:
    """Load the hosted agents from a checkpoint folder."""
    for i, a in host.agents.items():
        snap = torch.load(Path(folder) / f"agent_{i}.pt", weights_only=True)
        a.restore(snap)
        host.algorithm.load_agent_state(i, snap["algorithm"])
        if host.spec.track_sent:
            host.last_sent[i] = snap["last_sent"].numpy().copy()
        if host.codec is not None:
            codec = snap["codec"]
            host.codec.load(i, {"rng": codec["rng"], "memory": None if codec["memory"] is None
                                else codec["memory"].numpy()})


# --------------------------------------------------------------------------- driver side
def write(backend, run_dir: Path, driver_state: dict) -> None:
    """Agents (by their hosts) and the driver's state into checkpoint.tmp/, then swapped in by renames."""
    tmp, final, prev = run_dir / "checkpoint.tmp", run_dir / FOLDERS[0], run_dir / FOLDERS[1]
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        backend.run(save_agents, str(tmp))
        save_atomic(driver_state, tmp / "driver.pt")
    except BaseException:  # a full disk, a failed host: the checkpoints in place stay as they are
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # keep the previous complete checkpoint: if the newest is damaged, load falls back to it
    shutil.rmtree(prev, ignore_errors=True)
    if final.exists():
        final.rename(prev)
    tmp.rename(final)


def newest_complete(run_dir: Path, agents=None) -> tuple[Path | None, list[str]]:
    """The newest checkpoint folder whose every file reads (driver.pt and an agent_<i>.pt for every agent i in
    `agents`, by default agent_0.. with no gap), read on this machine without any host; and why each newer one
    was passed over. Nothing is restored from a folder that fails here, so a resume never mixes two
    checkpoints."""
    problems = []
    for folder in (Path(run_dir) / name for name in FOLDERS):
        if not (folder / "driver.pt").exists():
            if folder.exists():
                problems.append(f"{folder.name}: no driver.pt")
            continue
        try:
            torch.load(folder / "driver.pt", weights_only=True)
            files = sorted(folder.glob("agent_*.pt"))
            ids = sorted(int(f.stem[len("agent_"):]) for f in files if f.stem[len("agent_"):].isdigit())
            missing = sorted(set(range(len(ids)) if agents is None else agents) - set(ids))
            if missing or not ids:
                raise FileNotFoundError(f"agent_{missing[0] if missing else 0}.pt is missing")
            for f in files:
                torch.load(f, weights_only=True, map_location="cpu")
            return folder, problems
        except Exception as e:  # noqa: BLE001 - a truncated or corrupt file, whatever the reader raises
            problems.append(f"{folder.name}: {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}")
    return None, problems


def load(backend, run_dir: Path, warn=print, agents=None) -> dict | None:
    """Restore every host's agents from the newest checkpoint whose every file reads; its driver state, or None
    (then nothing was restored). `warn` says which newer one was unreadable and which is used instead."""
    folder, problems = newest_complete(run_dir, agents)
    if folder is None:
        return None
    for problem in problems:
        warn(f"checkpoint {problem}; using {folder.name} instead")
    driver = torch.load(folder / "driver.pt", weights_only=True)
    backend.run(restore_agents, str(folder))
    return driver


def saved_round(run_dir: Path, name: str | None = None) -> int | None:
    """The round of the newest readable checkpoint's driver state (or of checkpoint folder `name`), without
    touching any agent."""
    for folder in (run_dir / name for name in ((name,) if name else FOLDERS)):
        try:
            return int(torch.load(folder / "driver.pt", weights_only=True)["round"])
        except Exception:  # noqa: BLE001 - missing or damaged: try the older one
            continue
    return None


# --------------------------------------------------------------------------- init_from
def initial_states(source: str, n: int, model: torch.nn.Module, warn=print) -> list[tuple[torch.Tensor, dict]]:
    """`init_from=DIR`: agent i's starting weights, as (flat float32 vector, integer buffers) per agent.

    DIR is a dimat run folder (its newest readable checkpoint, falling back as resume does), a checkpoint
    folder itself, or a folder of `agent_<i>.pt` state dicts (one per agent, loaded with weights_only=True).
    `model` is this run's architecture: every file must match it key for key and shape for shape. Raises
    ValueError with one line naming the problem and the fix.
    """
    from dimat.flat import FlatLayout

    folder = Path(source).expanduser()  # an existing folder: the config's resolution checked it
    layout = FlatLayout.of(model)
    ints = {k: v for k, v in model.state_dict().items() if not v.is_floating_point()}
    candidates = [folder / name for name in FOLDERS if (folder / name / "driver.pt").exists()]
    if not candidates and ((folder / "config.yaml").exists() or (folder / "checkpoint.tmp").exists()):
        raise ValueError(f"init_from={source}: this dimat run has no complete checkpoint (was it run with "
                         "run.checkpoint_every=0, or stopped before its first one?): rerun it with checkpoints")
    if not candidates and not any(folder.glob("agent_*.pt")):
        raise ValueError(f"init_from={source}: {folder} is neither a dimat run folder (config.yaml and checkpoint/) "
                         "nor a folder of agent_<i>.pt state dicts: give one of those")
    if not candidates:
        candidates = [folder]
    errors = []
    for k, candidate in enumerate(candidates):
        try:
            states = _read_agents(candidate, n, layout, ints, source)
        except _Unreadable as e:
            errors.append(str(e))
            if k + 1 < len(candidates):
                warn(f"init_from: {candidate.name} is unreadable ({e}); trying {candidates[k + 1].name}")
            continue
        return states
    raise ValueError(errors[-1])


class _Unreadable(ValueError):
    """A file that cannot be read at all (truncated, not a torch file): an older checkpoint may do."""


def _read_agents(folder: Path, n: int, layout, ints: dict, source: str) -> list[tuple[torch.Tensor, dict]]:
    files = sorted(folder.glob("agent_*.pt"))
    found = sorted(int(f.stem[len("agent_"):]) for f in files if f.stem[len("agent_"):].isdigit())
    if found != list(range(n)):
        have = f"agent_0..agent_{found[-1]}" if found == list(range(len(found))) and found else \
            (", ".join(f"agent_{i}" for i in found[:6]) or "no agent_<i>.pt file")
        raise ValueError(f"init_from={source}: {folder} holds {have} ({len(found)} agents) but this run has "
                         f"agents={n}: give agents={len(found)} or a folder with agent_0.pt..agent_{n - 1}.pt")
    out = []
    for i in range(n):
        path = folder / f"agent_{i}.pt"
        try:
            obj = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as e:  # noqa: BLE001 - truncated, not a torch file, or pickled objects beyond tensors
            raise _Unreadable(f"init_from={source}: {path.name} cannot be loaded with weights_only=True "
                              f"({type(e).__name__}): save plain state dicts of tensors") from e
        out.append(_as_state(obj, path, layout, ints, source))
    return out


def _as_state(obj, path: Path, layout, ints: dict, source: str) -> tuple[torch.Tensor, dict]:
    """A dimat snapshot ({vec, ints, ...}) or a plain state dict, checked against this run's model."""
    where = f"init_from={source}: {path.name}"
    if isinstance(obj, dict) and "vec" in obj and "ints" in obj:  # one of dimat's own checkpoints
        vec = obj["vec"]
        if not isinstance(vec, torch.Tensor) or vec.dim() != 1 or vec.numel() != layout.size:
            size = vec.numel() if isinstance(vec, torch.Tensor) else type(vec).__name__
            raise ValueError(f"{where} holds a model of {size} floats, this run's model has {layout.size}: "
                             "choose the model (and its keys) the saved run was trained with")
        state_ints = dict(obj["ints"])
    elif isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj):
        bad = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
        if bad is not None:
            raise ValueError(f"{where}: {bad} is a {type(obj[bad]).__name__}, not a tensor: save "
                             "model.state_dict()")
        expected = set(layout.keys) | set(ints)
        missing = [k for k in (*layout.keys, *ints) if k not in obj]
        unexpected = [k for k in obj if k not in expected]
        if missing or unexpected:
            what = (f"lacks {missing[0]}, which this run's model has" if missing
                    else f"has {unexpected[0]}, which this run's model does not have")
            raise ValueError(f"{where} {what}: choose the model the weights were trained with (state dicts "
                             "must match key for key)")
        for k, shape in zip(layout.keys, layout.shapes):
            if tuple(obj[k].shape) != shape:
                raise ValueError(f"{where}: {k} has shape {tuple(obj[k].shape)}, this run's model has {shape}: "
                                 "choose the model (and its keys) the weights were trained with")
        vec = layout.flatten(obj)
        state_ints = {k: obj[k] for k in ints}
    else:
        raise ValueError(f"{where} is a {type(obj).__name__}, not a state dict: save model.state_dict() "
                         "(tensors by name)")
    if not bool(torch.isfinite(vec).all()):
        raise ValueError(f"{where} holds non-finite weights: start from another folder")
    if set(state_ints) != set(ints):
        raise ValueError(f"{where}: its integer buffers {sorted(state_ints)[:3]} differ from this run's model's "
                         f"{sorted(ints)[:3]}: choose the model the weights were trained with")
    return vec.float().contiguous(), state_ints
