"""What a local Ray leaves behind when its driver dies without shutting it down, reaped at once.

Ray fate-shares its GCS and raylet with the driver, but the raylet's own children — its dashboard and
runtime-env agents — learn of the raylet's death by polling, then try to report it to the dead GCS and wait out
a 60 s timeout before they exit: a driver killed by SIGKILL during start-up left them running, reparented to
init, for 30–60 s. `watch(raylet_pid)` starts this file as a small process of its own (standard library only,
its own session, so a signal to the driver's process group does not reach it) that holds the read end of a pipe
whose write end only the driver has. It notes the raylet's children as they appear (pid and start time); when the
pipe closes — the driver exited, was killed, or let go after `ray.shutdown()` — it kills those that are still the
same processes, and exits. Linux only (it reads /proc); elsewhere `watch` does nothing.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys

_PIPE: int | None = None  # the driver's write end


def _stat(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2:].split()  # fields from the state on: [0] state, [1] ppid, [19] start time


def children(pid: int) -> dict[int, bytes]:
    """The processes whose parent is `pid`, with their start times (a pid reused later has another)."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat(int(name))
            if fields is not None and int(fields[1]) == pid:
                out[int(name)] = fields[19]
    return out


def reap(known: dict[int, bytes]) -> list[int]:
    """SIGKILL each known process that is still the one noted; returns those killed."""
    killed = []
    for pid, start in known.items():
        fields = _stat(pid)
        if fields is not None and fields[19] == start and fields[0] != b"Z":
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
    return killed


def watch(raylet_pid: int) -> bool:
    """Start the reaper of `raylet_pid`'s children (once per driver); False where it cannot run."""
    global _PIPE
    if _PIPE is not None or not os.path.isdir("/proc"):
        return False
    read, write = os.pipe()
    try:
        subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__), str(raylet_pid)], stdin=read,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                         close_fds=True)
    except OSError:
        os.close(write)
        return False
    finally:
        os.close(read)
    _PIPE = write
    return True


def release() -> None:
    """Let the reaper go (after `ray.shutdown()`): it kills what is left of the raylet's children and exits."""
    global _PIPE
    if _PIPE is not None:
        os.close(_PIPE)
        _PIPE = None


def main(raylet_pid: int, tick: float = 0.5) -> None:
    known: dict[int, bytes] = {}
    while True:
        known.update(children(raylet_pid))
        ready, _, _ = select.select([0], [], [], tick)
        if ready and not os.read(0, 64):  # end of file: the driver is gone, or let go
            break
    known.update(children(raylet_pid))
    reap(known)


if __name__ == "__main__":
    main(int(sys.argv[1]))
