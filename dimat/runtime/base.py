"""The backend interface shared by the in-process and Ray runtimes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any


def assign_agents(n_agents: int, n_hosts: int) -> list[list[int]]:
    """Contiguous blocks of agents per host (ring neighbours mostly share a host)."""
    n_hosts = max(1, min(n_hosts, n_agents))
    bounds = [round(h * n_agents / n_hosts) for h in range(n_hosts + 1)]
    return [list(range(bounds[h], bounds[h + 1])) for h in range(n_hosts)]


def proc_stats() -> dict[int, list[str]]:
    """Every process's fields of /proc/<pid>/stat after its command name ([1] is the parent pid, [11] and [12]
    user and system CPU ticks); empty where there is no /proc."""
    out = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    out[int(entry)] = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
    return out


def descendants(root: int, stats: dict[int, list[str]] | None = None) -> list[int]:
    """The processes below `root` (children first, then theirs), from `proc_stats()`."""
    children: dict[int, list[int]] = {}
    for pid, fields in (proc_stats() if stats is None else stats).items():
        children.setdefault(int(fields[1]), []).append(pid)
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _cpu_reading() -> tuple[int, int, float, float]:
    """(all CPU ticks, idle ticks) from /proc/stat, this process's CPU seconds, the time."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0), time.process_time(), time.monotonic()


# the first reading of `_busy_cpus`' window, taken where a process starts (`mark_cpus`), so that the run's
# later reading needs no wait; used while it is between these ages (seconds)
_mark: tuple[int, int, float, float] | None = None
MARK_AGES = (0.1, 30.0)


def mark_cpus() -> None:
    """Start `free_cpus`' window now (the CLI does, first thing): its reading then spans the time since,
    instead of sleeping for a window of its own."""
    global _mark
    try:
        _mark = _cpu_reading()
    except (OSError, ValueError, IndexError):
        _mark = None


def _busy_cpus(window_s: float = 0.25) -> float | None:
    """How many CPUs other work keeps busy right now, from two readings of /proc/stat (None off Linux): since
    `mark_cpus()` where that is recent, else over `window_s` of sleep. This process's own threads (the driver
    importing and loading while Ray starts) are not other work."""
    try:
        first = _mark
        if first is None or not MARK_AGES[0] <= time.monotonic() - first[3] <= MARK_AGES[1]:
            first = _cpu_reading()
            time.sleep(window_s)
        (total0, idle0, own0, t0), (total1, idle1, own1, t1) = first, _cpu_reading()
    except (OSError, ValueError, IndexError):
        return None
    dt = total1 - total0
    if dt <= 0:
        return None
    busy = (1.0 - (idle1 - idle0) / dt) * (os.cpu_count() or 1)
    return max(0.0, busy - (own1 - own0) / max(t1 - t0, 1e-3))


def machine_cpus() -> int:
    """The CPUs this process may run on (its affinity), whatever else is running: the default torch thread
    count, so the same command gives the same numbers on a busy machine as on an idle one."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def busy_warning(threads: int, free: int | None = None) -> str | None:
    """A line for the start of a run when other work keeps CPUs busy that this run's `threads` (in all) use."""
    free = free_cpus() if free is None else free
    if free >= threads:
        return None
    return (f"other processes keep {machine_cpus() - free} of {machine_cpus()} CPUs busy; this run uses {threads} "
            f"torch thread{'s' if threads > 1 else ''} as it would on an idle machine (the same numbers): "
            "backend.threads=1 may run faster, with different rounding")


def free_cpus() -> int:
    """CPUs this run may use without competing with other busy processes (at least 1): torch threads beyond
    them do not add speed, they make every step wait on a descheduled thread."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    busy = _busy_cpus()
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except OSError:
            busy = 0.0
    return max(1, min(n, round(n - busy)))


def resolve_device(device: str, gpu_available: bool) -> str:
    """`backend.device` → the torch device the agents use ("auto": cuda when a GPU is there)."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"backend.device={device} is unknown: use auto, cpu or cuda")
    if device == "cuda" and not gpu_available:
        raise ValueError("backend.device=cuda but no GPU is visible: use backend.device=auto or cpu")
    return "cuda" if device == "cuda" or (device == "auto" and gpu_available) else "cpu"


class HostFailure(RuntimeError):
    """An agent host died or stopped answering; `host` is its index."""

    def __init__(self, host: int, what: str):
        super().__init__(f"agent host {host} {what}")
        self.host = host


class Backend:
    """Hosts agents; `groups[h]` lists the agents living on host h.

    The driver's only verbs: run a plain function `fn(host, *args)` on every host
    (`run`, `run_each` with per-host arguments) or on one (`run_one`), and move
    arrays between itself and the hosts (`put`, `fetch`).
    """

    name = "backend"
    groups: list[list[int]]
    comm: str = "object_store"  # how neighbour messages travel: object_store | torch
    threads: int = 1  # torch threads per host (recorded in config.yaml and summary.json)
    free: int | None = None  # CPUs other work left free when the run started (for a warning), if read

    def run(self, fn: Callable, *args: Any) -> list[Any]:
        """`fn(host, *args)` on every host; results in host order."""
        return self.run_each(fn, [args] * len(self.groups))

    def run_each(self, fn: Callable, args: Sequence[tuple]) -> list[Any]:
        raise NotImplementedError

    def run_one(self, host: int, fn: Callable, *args: Any) -> Any:
        raise NotImplementedError

    def put(self, array) -> Any:
        """A handle hosts can fetch (the array itself in-process)."""
        return array

    def fetch(self, handles: dict) -> dict:
        """The arrays behind handles, on the driver."""
        return handles

    def restart(self, host: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot restart a host")

    def drop(self, host: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot drop a host")

    def shutdown(self) -> None:
        pass
