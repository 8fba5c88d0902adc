"""A driver killed without shutting Ray down leaves nothing running: the raylet's children are reaped at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dimat.runtime import reaper

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="the reaper reads /proc (Linux)")


def _alive(pid: int) -> bool:
    fields = reaper._stat(pid)
    return fields is not None and fields[0] != b"Z"


def _wait(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def test_the_reaper_kills_the_watched_processes_children_when_the_pipe_closes():
    # a stand-in raylet with a child that outlives it (as Ray's agents do), and a process we must not touch
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                               "time.sleep(60)"])
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert _wait(lambda: reaper.children(parent.pid), 10)
        (child,) = reaper.children(parent.pid)
        r, w = os.pipe()
        proc = subprocess.Popen([sys.executable, "-I", "-S", reaper.__file__, str(parent.pid)], stdin=r)
        os.close(r)
        time.sleep(1.0)  # the reaper notes the child
        parent.kill()
        parent.wait()
        assert _alive(child)  # orphaned, still running
        os.close(w)  # the driver is gone
        assert proc.wait(timeout=10) == 0
        assert _wait(lambda: not _alive(child), 5)
        assert bystander.poll() is None
    finally:
        for p in (parent, bystander):
            p.kill()
            p.wait()


@pytest.mark.timeout(120)
def test_a_driver_killed_during_start_up_leaves_no_ray_process(tmp_path):
    """SIGKILL of `python -m dimat` while Ray starts: its agents went on for 30-60 s; now they are reaped."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    driver = subprocess.Popen([sys.executable, "-m", "dimat", f"run.dir={tmp_path}/run", "run.progress=false",
                               "rounds=50"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)

    def watched() -> int | None:  # the raylet pid our reaper watches, once both exist
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if any(a.endswith(b"dimat/runtime/reaper.py") for a in argv) and argv[-2].isdigit():  # [.., pid, ""]
                    return int(argv[-2])
        return None

    try:
        assert _wait(lambda: watched() is not None, 60), "the reaper never started"
        raylet = watched()
        assert _wait(lambda: len(reaper.children(raylet)) >= 2, 60)  # the agents (and maybe workers)
        time.sleep(0.6)
        kids = list(reaper.children(raylet))
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    assert _wait(lambda: not any(_alive(k) for k in kids), 10), [k for k in kids if _alive(k)]
