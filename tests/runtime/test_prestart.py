"""Ray and a run's actors started ahead, while the driver gets ready (`dimat.runtime.prestart`, the CLI's
`start_ray_early`): taken over by the run they were started for, shut down otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dimat.cli import start_ray_early
from dimat.runtime import prestart

ROOT = Path(__file__).resolve().parents[2]


def prestart_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "dimat-prestart"]


@pytest.fixture
def count_starts(monkeypatch):
    """How many times Ray and actors were started (ahead or by the run itself)."""
    from dimat.runtime import ray_backend

    calls = []
    original = ray_backend.Started.__init__

    def counted(self, n_agents, **options):
        calls.append(n_agents)
        original(self, n_agents, **options)

    monkeypatch.setattr(ray_backend.Started, "__init__", counted)
    yield calls
    prestart.discard()


def test_the_run_takes_over_the_ray_and_actors_started_for_it(tiny, count_starts):
    import ray

    import dimat

    cfg = tiny("backend=ray", "algorithm=dsgd")
    assert start_ray_early(cfg)
    result = dimat.run(cfg)
    assert count_starts == [4]  # started once, ahead, and used
    assert result.summary["final_acc_mean"] > 0.2
    assert not ray.is_initialized()
    deadline = time.monotonic() + 10
    while prestart_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not prestart_threads()  # the thread ends once Ray is shut down


def test_a_run_placed_otherwise_shuts_them_down_and_starts_its_own(tiny, count_starts):
    import ray

    import dimat

    cfg = tiny("backend=ray", "algorithm=dsgd")
    prestart.start(3, {k: cfg.backend[k] for k in prestart.KEYS})  # not this run's 4 agents
    result = dimat.run(cfg)
    assert count_starts == [3, 4]
    assert result.summary["rounds"] == 2
    assert not ray.is_initialized()


def test_only_a_local_ray_run_starts_early(tiny):
    assert not start_ray_early(tiny("backend=inprocess"))
    assert not start_ray_early(tiny("backend=ray", "backend.address=127.0.0.1:6379"))
    assert prestart._pending is None


def test_discard_leaves_no_ray_behind(tiny):
    import ray

    cfg = tiny("backend=ray")
    start_ray_early(cfg)
    prestart.discard()
    assert not ray.is_initialized()
    assert prestart._pending is None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_a_cli_run_that_stops_before_its_hosts_leaves_no_ray_processes(tmp_path):
    """Bad input found while the run is built (after the config composed) still ends in one line, exit 2,
    and the Ray started ahead is gone with the process."""
    missing = tmp_path / "no_such_run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "dimat", "data=synthetic", "model.hidden=[8]", "agents=2", "rounds=1",
           "backend=ray", f"init_from={missing}", f"run.dir={tmp_path / 'run'}", "run.progress=false"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    assert stderr.strip().splitlines()[-1].startswith("error: init_from="), stderr
    assert not (tmp_path / "run").exists()
    # Ray names its session folder after the driver's pid: none of that session's processes may outlive it
    mark = f"_{proc.pid}/"
    deadline = time.monotonic() + 10
    while (left := [c for c in map(_cmdline, Path("/proc").iterdir()) if "/session_" in c and mark in c]) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, left


def _cmdline(p: Path) -> str:
    if not p.name.isdigit():
        return ""
    try:
        return (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_a_start_that_failed_ahead_is_reported_once_without_starting_ray_again(tiny, count_starts):
    import ray
    import torch

    import dimat
    from dimat.configure import ConfigError

    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    cfg = tiny("backend=ray", "backend.device=cuda")
    assert start_ray_early(cfg)
    with pytest.raises(ConfigError, match="backend.device=cuda but no GPU is visible"):
        dimat.run(cfg)
    assert count_starts == [4]  # the run raised the thread's error instead of starting Ray a second time
    assert not ray.is_initialized()


def test_the_start_up_thread_starts_ray_without_importing_torch():
    """Ray's processes start while the driver imports torch: the modules the thread imports do not, and the
    actors import it as they are made."""
    code = ("import sys, dimat.runtime.prestart, dimat.runtime.ray_backend as rb\n"
            "print('torch' in sys.modules, 'dimat.runtime.host' in rb.HostActor.__init__.__code__.co_names)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]
