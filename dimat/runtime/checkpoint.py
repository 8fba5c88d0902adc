"""Checkpoints: every agent's full state by its host, the driver's own state, swapped in atomically.

A checkpoint is a folder: `agent_<i>.pt` per agent (weights, integer buffers,
optimizer, RNG, data position, the algorithm's per-agent state, the last sent
state when the schedule measures drift) and `driver.pt` (round, schedule and
ledger state, wall time). It is written to `checkpoint.tmp/` and renamed into
place; the previous one is kept as `checkpoint.prev`, and a damaged newest one
(e.g. a truncated file) makes `load` fall back to it. Files hold tensors and
plain values only: they load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

FOLDERS = ("checkpoint", "checkpoint.prev")


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temporary name in the same folder, then rename: never half a file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- host side
def save_agents(host, folder: str) -> None:
    """Write each hosted agent's snapshot to `folder/agent_<i>.pt`."""
    for i, a in host.agents.items():
        snap = a.snapshot()
        snap["algorithm"] = host.algorithm.agent_state(i)
        if host.spec.track_sent:
            snap["last_sent"] = torch.from_numpy(host.last_sent[i].copy())
        save_atomic(snap, Path(folder) / f"agent_{i}.pt")


def restore_agents(host, folder: str) -> None:
    """Load the hosted agents from a checkpoint folder."""
    for i, a in host.agents.items():
        snap = torch.load(Path(folder) / f"agent_{i}.pt", weights_only=True)
        a.restore(snap)
        host.algorithm.load_agent_state(i, snap["algorithm"])
        if host.spec.track_sent:
            host.last_sent[i] = snap["last_sent"].numpy().copy()


# --------------------------------------------------------------------------- driver side
def write(backend, run_dir: Path, driver_state: dict) -> None:
    """Agents (by their hosts) and the driver's state into checkpoint.tmp/, then swapped in by renames."""
    tmp, final, prev = run_dir / "checkpoint.tmp", run_dir / FOLDERS[0], run_dir / FOLDERS[1]
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    backend.run(save_agents, str(tmp))
    save_atomic(driver_state, tmp / "driver.pt")
    # keep the previous complete checkpoint: if the newest is damaged, load falls back to it
    shutil.rmtree(prev, ignore_errors=True)
    if final.exists():
        final.rename(prev)
    tmp.rename(final)


def load(backend, run_dir: Path, warn=print) -> dict | None:
    """Restore every host's agents from the newest readable checkpoint; its driver state, or None."""
    for folder in (run_dir / name for name in FOLDERS):
        if not (folder / "driver.pt").exists():
            continue
        try:
            driver = torch.load(folder / "driver.pt", weights_only=True)
            backend.run(restore_agents, str(folder))
            return driver
        except Exception as e:  # noqa: BLE001 - a truncated or corrupt file, whatever the reader raises
            warn(f"[yellow]checkpoint {folder.name} is unreadable ({type(e).__name__}); trying an older one[/]")
    return None


def saved_round(run_dir: Path) -> int | None:
    """The round of the newest readable checkpoint's driver state (without touching any agent)."""
    for folder in (run_dir / name for name in FOLDERS):
        try:
            return int(torch.load(folder / "driver.pt", weights_only=True)["round"])
        except Exception:  # noqa: BLE001 - missing or damaged: try the older one
            continue
    return None
