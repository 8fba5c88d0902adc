"""A local run's private Ray: only the processes a simulation uses, every listener on loopback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dimat.runtime import base


def descendants(root: int) -> dict[int, str]:
    """pid → command line of every process below `root` (from /proc)."""
    out = {}
    for pid in base.descendants(root):
        try:
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return out


def listening_addresses(pids) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp* writes them) of the TCP sockets these processes listen on."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                out.add(f[1].rsplit(":", 1)[0])
    return out


UNREACHABLE = "127.0.0.1:9"  # nothing listens there


@pytest.fixture(scope="module")
def local_ray():
    import ray
    from ray._private import ray_constants

    from dimat.runtime.ray_backend import start_local_ray

    # a cluster named by the environment (or left by `ray start`) must not be joined: the run's Ray is its own
    saved = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = UNREACHABLE
    try:
        before = start_local_ray(num_cpus=1)
    finally:
        if saved is None:
            del os.environ["RAY_ADDRESS"]
        else:
            os.environ["RAY_ADDRESS"] = saved
    try:
        yield descendants(os.getpid())
    finally:
        ray.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = before


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_a_local_ray_starts_only_what_a_simulation_uses(local_ray):
    cmds = list(local_ray.values())
    # what a run needs is there: the GCS, the raylet (and the two agents it insists on)
    assert any("gcs_server" in c for c in cmds) and any("/raylet " in c for c in cmds)
    # neither the dashboard head nor the autoscaler's monitor
    assert not [c for c in cmds if "dashboard/dashboard.py" in c or "autoscaler/_private/monitor.py" in c], cmds
    # the dashboard agent runs without its metrics and HTTP modules (as in Ray's minimal install)
    raylet = next(c for c in cmds if "/raylet " in c)
    agent = raylet.split("--dashboard_agent_command=", 1)[1].split(" --runtime_env_agent_command=")[0]
    assert "dashboard/agent.py" in agent and "--minimal" in agent


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc/net (Linux)")
def test_every_listener_of_a_local_ray_is_on_loopback(local_ray):
    addresses = listening_addresses(local_ray)
    assert addresses, "found none of Ray's listening sockets"
    # 0100007F: 127.0.0.1 (tcp); IPv6 ::1 or an IPv4-mapped 127.0.0.1 (tcp6)
    loopback = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}
    assert addresses <= loopback, addresses


def test_a_local_ray_is_its_own_whatever_cluster_the_environment_names(local_ray):
    import ray

    assert ray.is_initialized()
    assert ray.get_runtime_context().gcs_address != UNREACHABLE
    assert any("gcs_server" in cmd for cmd in local_ray.values())  # started here, below this process


def test_a_local_ray_retries_its_socket_connections_often_within_rays_budget(local_ray):
    """The raylet's first connection to its object store misses about every other start: retried every 50 ms
    rather than every second, within the same 10 s."""
    from ray._raylet import Config

    from dimat.runtime.ray_backend import SYSTEM_CONFIG

    assert Config.raylet_client_connect_timeout_milliseconds() == 50
    assert Config.raylet_client_connect_timeout_milliseconds() * Config.raylet_client_num_connect_attempts() == 10_000
    assert SYSTEM_CONFIG["raylet_client_num_connect_attempts"] == Config.raylet_client_num_connect_attempts()


class FakeNodeId:
    def __init__(self, hex_id: str):
        self.hex_id = hex_id

    def hex(self) -> str:
        return self.hex_id


def test_ray_init_looks_the_node_up_once_it_has_registered(monkeypatch):
    """`_once_registered`: polls the GCS until the raylet's node is there, then Ray's own lookup (which waits a
    whole second per miss) finds it at its first try; where the poll fails, Ray's lookup runs as it would."""
    import ray._raylet

    from dimat.runtime.ray_backend import _once_registered

    polls, lookups = [], []

    class Gcs:
        def __init__(self, address):
            assert address == "127.0.0.1:1234"

        def get_all_node_info(self, timeout):
            polls.append(timeout)
            return {FakeNodeId("ab" if len(polls) >= 3 else "other"): None}

    def lookup(gcs_address, node_id):
        lookups.append(len(polls))
        return {"node_id": node_id}

    monkeypatch.setattr(ray._raylet, "GcsClient", Gcs)
    assert _once_registered(lookup)("127.0.0.1:1234", "ab") == {"node_id": "ab"}
    assert lookups == [3]  # looked up once, after the poll that saw the node

    class Broken:
        def __init__(self, address):
            raise RuntimeError("no such API")

    monkeypatch.setattr(ray._raylet, "GcsClient", Broken)
    assert _once_registered(lookup)("127.0.0.1:1234", "ab") == {"node_id": "ab"}
    assert lookups == [3, 3]
