"""A local Ray and a run's bare actors, started while the driver is still getting ready.

The CLI composes its config before it imports torch; when the run will start
a private local Ray (`backend=ray`, no `backend.address`), `start` brings up
Ray and the run's actors on a thread of their own, so that Ray's processes
start and the actors' processes import torch while the driver imports its
own modules, composes the config again in Hydra and loads the data. The run's
`RayBackend` then takes them over (`take`) when its placement is the one they
were started for; otherwise, and when the run stops before it gets there,
they are shut down (`discard`). This module is light: Ray and torch are
imported on the thread.

The thread stays until Ray is shut down: Ray's processes are started with the
parent-death signal, which Linux sends when the *thread* that started them
ends.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from dimat.runtime.base import descendants

# the Ray backend's keys that decide what `start` starts (the rest only matter once the hosts are built)
KEYS = ("num_cpus", "agents_per_actor", "placement", "gpus_per_actor", "device", "timeout_s")

_pending: Prestart | None = None


class Prestart:
    def __init__(self, n_agents: int, options: dict[str, Any]):
        self.key = (n_agents, tuple(sorted(options.items())))
        self.started: Any = None  # ray_backend.Started
        self.error: BaseException | None = None
        self._ready, self._released = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(n_agents, options), name="dimat-prestart",
                                        daemon=True)
        self._thread.start()

    def _serve(self, n_agents: int, options: dict[str, Any]) -> None:
        try:
            from dimat.runtime import ray_backend

            self.started = ray_backend.Started(n_agents, **options)
        except BaseException as e:  # noqa: BLE001 - raised by `take`, in the run's own thread
            self.error = e
        finally:
            self._ready.set()
        self._released.wait()

    def wait(self, timeout_s: float) -> bool:
        return self._ready.wait(timeout_s)

    def release(self) -> None:
        """Ray is shut down: the thread may end."""
        self._released.set()


def start(n_agents: int, options: dict[str, Any]) -> None:
    """Start a local Ray and the bare actors of a run of `n_agents` with these placement options."""
    global _pending
    discard()
    # what ray.init does on the main thread (and only warns about elsewhere): SIGTERM exits through the
    # `finally` blocks, so that Ray is shut down
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
    _pending = Prestart(n_agents, options)


def take(n_agents: int, options: dict[str, Any], timeout_s: float) -> Prestart | None:
    """The started Ray and actors, when they were started for this placement (else shut down, and None);
    where starting them for this placement failed, that error."""
    global _pending
    p, _pending = _pending, None
    if p is None:
        return None
    ready, same = p.wait(timeout_s), p.key == (n_agents, tuple(sorted(options.items())))
    if ready and same and p.error is None:
        return p
    _stop(p)
    if ready and same and p.error is not None:
        raise p.error  # what the run's own start would raise with these options, without starting Ray again
    return None


def pending() -> bool:
    """Whether `start` started something that no run has taken over (yet)."""
    return _pending is not None


def abandon(code: int) -> None:
    """End this process now (exit code `code`) and what `start` started with it, without waiting for Ray to
    come up only to shut it down: for a run that stops on bad input. Where Ray is already up it is shut down
    as usual; otherwise its processes so far (this process's descendants) are killed."""
    global _pending
    p = _pending
    if p is not None and not p.wait(0):
        sys.stdout.flush()
        sys.stderr.flush()
        for pid in descendants(os.getpid()):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        os._exit(code)
    discard()
    sys.exit(code)


def discard() -> None:
    """Shut down what `start` started, unless a run took it over (then its backend shuts it down)."""
    global _pending
    p, _pending = _pending, None
    if p is not None:
        _stop(p)


def _stop(p: Prestart, timeout_s: float = 60.0) -> None:
    p.wait(timeout_s)
    try:
        if p.started is not None:
            p.started.shutdown()
    finally:
        p.release()
