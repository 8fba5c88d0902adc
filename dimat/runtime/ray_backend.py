"""Ray backend: a few actors, each hosting a block of agents.

One actor costs a process (~280 MB, ~1.5 s to start on 2 cores), so agents
are grouped: by default one actor per CPU, each with a block of agents and a
torch thread count equal to the CPUs it owns. The dataset is put in the
object store once and read zero-copy by every actor on the node.

Start-up is most of what a small run costs, so a local run starts a lean
private Ray (`start_local_ray`: loopback only, none of the Ray components a
simulation on one machine leaves unused), and the actors start bare: their
processes import torch and dimat while the driver gets ready, then build
their agents (`HostActor`). From the CLI, Ray and the bare actors (`Started`)
start on a thread as soon as the config is composed, before the driver
imports torch (`dimat.runtime.prestart`); the backend takes them over.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from dimat.runtime import prestart
from dimat.runtime.base import Backend, HostFailure, assign_agents, free_cpus, resolve_device

if TYPE_CHECKING:  # torch: imported by the actors as they start (`HostActor`) and by the driver's run, not here,
    # so that the start-up thread starts Ray without waiting for torch
    from dimat.runtime.host import AgentHost, HostSpec


# Ray components a local simulation never uses, each started by a function that Ray looks up while ray.init
# runs (module, attribute, stand-in): the dashboard head, which with include_dashboard=False only reports usage
# statistics yet holds ray.init until it is up (~2-3 s); the autoscaler's monitor (one node, fixed resources);
# and the dashboard agent's metrics, HTTP and reporter modules, which Ray's minimal install runs without. The
# raylet refuses to start without its dashboard agent and runtime-env agent, so those two processes stay.
LEAN = (
    ("ray._private.services", "start_api_server", lambda *args, **kwargs: (None, None)),
    ("ray._private.node", "Node.start_monitor", lambda self: None),
    ("ray._private.utils", "get_dashboard_dependency_error", lambda: "a local dimat run loads no dashboard modules"),
)


def _once_registered(get_node: Callable) -> Callable:
    """Ray's `services.get_node`, which ray.init calls to wait for the raylet it started: that lookup tries
    once a second, and the raylet registers about 0.6 s in, so ray.init idled for the rest of the second.
    Here it first waits for the registration in 50 ms steps (on any error, straight to Ray's lookup)."""
    def wait_then_get(gcs_address: str, node_id: str, *args: Any, **kwargs: Any):
        try:
            from ray._raylet import GcsClient

            client, deadline = GcsClient(address=gcs_address), time.monotonic() + 30.0
            while time.monotonic() < deadline and not any(
                    n.hex() == node_id for n in client.get_all_node_info(timeout=5)):
                time.sleep(0.05)
        except Exception:  # noqa: BLE001 - an internal API of Ray's that moved: its own lookup still works
            pass
        return get_node(gcs_address, node_id, *args, **kwargs)

    return wait_then_get


# functions of Ray's that a local start calls, wrapped (module, attribute, wrapper of the original)
SOONER = (("ray._private.services", "get_node", _once_registered),)

# Ray's local socket clients retry a connection every `raylet_client_connect_timeout_milliseconds` (1 s),
# `raylet_client_num_connect_attempts` times (10): the raylet's first connection to its own object store,
# made while the store's thread is still starting, missed about every other start and cost it a second.
# Retried every 50 ms within the same 10 s (a client that tries 300 times waits 15 s, not 300 s).
SYSTEM_CONFIG = {"raylet_client_connect_timeout_milliseconds": 50, "raylet_client_num_connect_attempts": 200}


@contextlib.contextmanager
def lean_ray():
    """Within it, ray.init starts a local instance without the components `LEAN` names, and with `SOONER`'s
    waits. One that this Ray version does not have where they say is left alone (the run works, with that
    component running, or waiting as Ray does)."""
    saved = []
    patches = [(module, path, lambda original, stand_in=stand_in: stand_in) for module, path, stand_in in LEAN]
    for module, path, replace in patches + list(SOONER):
        owner = importlib.import_module(module)
        *parents, name = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent, None)
        if owner is not None and callable(getattr(owner, name, None)):
            original = getattr(owner, name)
            saved.append((owner, name, original))
            setattr(owner, name, replace(original))
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


# Ray's notices that say nothing to a user of a private local Ray: token authentication is on (it stays on),
# and, from `dimat.runtime.prestart`'s thread, that ray.init did not set the SIGTERM handler (prestart sets
# that handler itself, on the main thread)
QUIET = (
    ("ray._private.authentication.authentication_token_setup", "Token authentication is enabled"),
    ("ray._private.worker", "SIGTERM handler is not set"),
)


class _Drop(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextlib.contextmanager
def _quiet():
    filters = [(logging.getLogger(name), _Drop(text)) for name, text in QUIET]
    for log, f in filters:
        log.addFilter(f)
    try:
        yield
    finally:
        for log, f in filters:
            log.removeFilter(f)


def start_local_ray(num_cpus: int | None) -> bool:
    """A private, lean Ray instance bound to 127.0.0.1 (see `LEAN`); returns the flag to restore.

    Ray listens on the host's address unless clusters are disabled: the child
    processes read the environment variable, and the driver reads a constant
    that Ray computed at import time, so both are set (restored at shutdown).
    """
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    with lean_ray(), _quiet():
        ray.init(
            # "local": always a new instance; without it Ray joins a cluster it finds on this machine (one that
            # `ray start` left in /tmp/ray/ray_current_cluster, or RAY_ADDRESS) instead of starting a private one
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            logging_level=logging.WARNING,
            log_to_driver=True,
            _system_config=dict(SYSTEM_CONFIG),  # a copy: ray.init adds to it (a second init would warn)
        )
    _watch_raylet()
    return before


def _watch_raylet() -> None:
    """A driver killed without shutting Ray down leaves nothing running: the raylet's agents are reaped as soon
    as the driver is gone (`dimat.runtime.reaper`)."""
    from dimat.runtime import reaper

    try:
        node = ray._private.worker._global_node
        raylet = node.all_processes["raylet"][0].process.pid
    except (AttributeError, KeyError, IndexError):  # another Ray version's internals: Ray's own cleanup only
        return
    reaper.watch(raylet)


def check_options(*, placement: str, comm: str, timeout_s: float, **counts) -> None:
    """The Ray backend's own options, checked before Ray starts (one line each)."""
    if placement not in ("pack", "spread"):
        raise ValueError(f"backend.placement={placement} is unknown: use pack or spread")
    if comm not in ("object_store", "torch"):
        raise ValueError(f"backend.comm={comm} is unknown: use object_store or torch")
    if not timeout_s > 0:
        raise ValueError(f"backend.timeout_s={timeout_s} must be > 0")
    for key, value in counts.items():
        if value is not None and not value > 0:
            raise ValueError(f"backend.{key}={value} must be > 0 (or null)")


def connect(address: str) -> None:
    """Join an existing cluster: its resources are the cluster's, never passed here."""
    ray.init(address=address, logging_level=logging.WARNING)


def gpu_share(device: str, gpus_per_actor: float | None, gpus: float, n_hosts: int) -> float:
    """GPUs per actor: `backend.gpus_per_actor`, or the visible GPUs shared evenly (at most one each)."""
    if device == "cpu":
        return 0.0
    if gpus_per_actor is not None:
        if gpus_per_actor * n_hosts > gpus + 1e-9:
            raise ValueError(
                f"backend.gpus_per_actor={gpus_per_actor:g} × {n_hosts} actors needs more than the cluster's "
                f"{gpus:g} GPUs: lower it, or set backend.agents_per_actor so fewer actors start"
            )
        return float(gpus_per_actor)
    return min(1.0, gpus / n_hosts) if gpus else 0.0


class HostActor:
    """The actor around an `AgentHost`. It starts bare, and its process imports torch and dimat as it is
    made, while the driver puts the dataset and the other actors start; `build` then makes the host, and
    `run` is the host's one entry point."""

    def __init__(self):
        import dimat.runtime.host  # noqa: F401 - torch and dimat, ahead of `build`

        self.host: AgentHost | None = None

    def build(self, *args: Any, **kwargs: Any) -> int:
        from dimat.runtime.host import AgentHost

        self.host = AgentHost(*args, **kwargs)
        return len(self.host.agents)

    def run(self, fn: Callable, *args: Any) -> Any:
        return self.host.run(fn, *args)


class Started:
    """Ray (started here unless one is already up in this process) and a run's bare actors, one per block of
    agents, in a placement group. The Ray backend starts it, or takes over the one that the CLI started on
    a thread while the driver was getting ready (`dimat.runtime.prestart`)."""

    def __init__(self, n_agents: int, *, address: str | None = None, num_cpus: int | None = None,
                 agents_per_actor: int | None = None, placement: str = "pack", gpus_per_actor: float | None = None,
                 device: str = "auto", timeout_s: float = 600.0):
        self.owns_ray = not ray.is_initialized()
        self.cluster_flag: bool | None = None
        # a local run's CPUs free of other work, read before our own Ray processes start
        self.free = free_cpus() if self.owns_ray and not address else None
        if self.owns_ray:
            if address:
                connect(address)
            else:
                self.cluster_flag = start_local_ray(num_cpus)
        self.hosts: list = []
        self.pg = None
        try:
            cpus = float(ray.available_resources().get("CPU", 1.0))
            n_hosts = math.ceil(n_agents / agents_per_actor) if agents_per_actor else max(1, min(n_agents, int(cpus)))
            self.groups = assign_agents(n_agents, n_hosts)
            self.cpus_each = cpus / len(self.groups)
            gpus_each = gpu_share(device, gpus_per_actor, float(ray.available_resources().get("GPU", 0.0)),
                                  len(self.groups))
            self.device = resolve_device(device, gpus_each > 0)
            self.bundle = {"CPU": self.cpus_each, **({"GPU": gpus_each} if self.device == "cuda" else {})}
            self.pg = placement_group([self.bundle] * len(self.groups),
                                      strategy={"pack": "PACK", "spread": "SPREAD"}[placement])
            try:
                ray.get(self.pg.ready(), timeout=timeout_s)
            except ray.exceptions.GetTimeoutError:
                raise ValueError(f"Ray did not reserve the run's {len(self.groups)} actor slots of {self.bundle} "
                                 f"within backend.timeout_s={timeout_s:g}s: raise backend.timeout_s, or ask for "
                                 "fewer CPUs or GPUs per actor") from None
            self.hosts = [self.start(h) for h in range(len(self.groups))]
        except BaseException:
            self.shutdown()  # nothing left behind: no actors, no placement group, no Ray of ours
            raise

    def start(self, h: int):
        """A bare actor in bundle `h` (its process imports torch and dimat; `HostActor.build` makes the host)."""
        return ray.remote(HostActor).options(
            num_cpus=self.cpus_each,
            num_gpus=self.bundle.get("GPU", 0),
            scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=h),
        ).remote()

    def shutdown(self) -> None:
        for h in self.hosts:
            ray.kill(h)
        if self.pg is not None:
            remove_placement_group(self.pg)
        if self.owns_ray:
            ray.shutdown()
            from dimat.runtime import reaper

            reaper.release()
        if self.cluster_flag is not None:
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = self.cluster_flag


class RayBackend(Backend):
    """Agent hosts as Ray actors (`backend=ray`); the keys are `conf/backend/ray.yaml`'s."""

    name = "ray"

    def __init__(self, spec: HostSpec, dataset, parts, *, address: str | None = None,
                 agents_per_actor: int | None = None, num_cpus: int | None = None,
                 threads: int | None = None, placement: str = "pack", comm: str = "object_store",
                 gpus_per_actor: float | None = None, timeout_s: float = 600.0, device: str = "auto",
                 vectorize: bool = False):
        check_options(placement=placement, comm=comm, timeout_s=timeout_s, agents_per_actor=agents_per_actor,
                      num_cpus=num_cpus, threads=threads, gpus_per_actor=gpus_per_actor)
        self.timeout_s = float(timeout_s)
        self.comm = comm
        options = dict(num_cpus=num_cpus, agents_per_actor=agents_per_actor, placement=placement,
                       gpus_per_actor=gpus_per_actor, device=device, timeout_s=timeout_s)  # prestart.KEYS
        self._prestart = None if address else prestart.take(len(parts), options, self.timeout_s)
        self.started = self._prestart.started if self._prestart else Started(len(parts), address=address, **options)
        self.hosts, self.groups, self.device = self.started.hosts, self.started.groups, self.started.device
        try:
            self._build_hosts(spec, dataset, parts, threads, vectorize)
        except BaseException:
            self.shutdown()  # nothing left behind: no actors, no placement group, no Ray of ours
            raise

    def _build_hosts(self, spec, dataset, parts, threads, vectorize) -> None:
        # torch threads per actor: its CPUs (not the momentary load: the same numbers on a busy machine)
        threads = threads or max(1, int(self.started.cpus_each))
        self.threads, self.free = threads, self.started.free
        data_ref = ray.put(dataset)  # while the actors' processes import torch

        def build(h: int):
            return self.hosts[h].build.remote(spec, data_ref, {i: parts[i] for i in self.groups[h]}, transport="ray",
                                              threads=threads, timeout_s=self.timeout_s, device=self.device,
                                              vectorize=vectorize)

        self._build = build
        self._get([build(h) for h in range(len(self.hosts))], list(range(len(self.hosts))))
        if self.comm == "torch":
            self._init_comm()

    def _init_comm(self) -> None:
        """All hosts join one torch.distributed group; host 0 names the address and port."""
        from dimat.runtime import p2p

        loopback = self.started.cluster_flag is not None  # a local Ray of ours: everything on 127.0.0.1
        addr, port = self.run_one(0, p2p.address, loopback)
        world = len(self.hosts)
        self.run_each(p2p.join, [(r, world, addr, port, loopback) for r in range(world)])

    def _reset_comm(self) -> None:
        """After a host changed: the survivors leave the old group, and every host joins a new one."""
        if self.comm == "torch":
            from dimat.runtime import p2p

            self.run(p2p.leave)
            self._init_comm()

    def restart(self, host: int) -> None:
        """A fresh actor for a dead host's agents (their state comes back from a checkpoint)."""
        ray.kill(self.hosts[host])
        self.hosts[host] = self.started.start(host)
        self._get([self._build(host)], [host])
        self._reset_comm()

    def drop(self, host: int) -> None:
        """Forget a dead host and its agents for the rest of the run."""
        ray.kill(self.hosts.pop(host))
        self.groups.pop(host)
        self._reset_comm()

    def _get(self, refs: list, hosts: list[int]) -> list[Any]:
        """Results in order; a dead or hung actor becomes HostFailure naming its host."""
        out = []
        for ref, h in zip(refs, hosts):
            try:
                out.append(ray.get(ref, timeout=self.timeout_s))
            except ray.exceptions.GetTimeoutError as e:
                raise HostFailure(h, f"did not answer within backend.timeout_s={self.timeout_s:g}s") from e
            except ray.exceptions.RayActorError as e:
                raise HostFailure(h, "died") from e
        return out

    def run_each(self, fn: Callable, args: Sequence[tuple]) -> list[Any]:
        refs = [h.run.remote(fn, *a) for h, a in zip(self.hosts, args)]
        return self._get(refs, list(range(len(refs))))

    def run_one(self, host: int, fn: Callable, *args: Any) -> Any:
        return self._get([self.hosts[host].run.remote(fn, *args)], [host])[0]

    def put(self, array) -> Any:
        return ray.put(array)

    def fetch(self, handles: dict) -> dict:
        keys = list(handles)
        return dict(zip(keys, ray.get([handles[k] for k in keys], timeout=self.timeout_s)))

    def shutdown(self) -> None:
        try:
            self.started.shutdown()
        finally:
            if self._prestart is not None:
                self._prestart.release()
