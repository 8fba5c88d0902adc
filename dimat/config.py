"""Typed schemas for every config group, registered with Hydra's ConfigStore.

`conf/config.yaml` starts its defaults list with `dimat_schema`, so the whole
config is a structured config: a misspelt key, or a value of the wrong type,
fails when Hydra composes the config — not an hour into a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from hydra.core.config_store import ConfigStore


@dataclass
class DataConf:
    _target_: str = "dimat.data.load_dataset"
    name: str = "digits"
    root: str | None = None
    train_samples: int | None = None
    test_samples: int | None = None
    # extra keyword arguments for the loader (e.g. synthetic's n_train)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PartitionConf:
    _target_: str = "dimat.data.partition"
    method: str = "dirichlet"
    alpha: float = 0.5
    min_samples: int = 10
    shards_per_agent: int = 2


@dataclass
class ModelConf:
    _target_: str = "dimat.models.build_model"
    name: str = "mlp"
    width: int = 1
    norm: str = "bn"  # bn | gn | ln (GroupNorm, one group) | none
    groups: int | None = None  # GroupNorm groups for norm=gn (default: 8, 4 or 2 dividing the channels)
    hidden: list[int] = field(default_factory=lambda: [128, 128])


@dataclass
class TopologyConf:
    _target_: str = "topologies.build"
    name: str = "ring"
    weights: str = "uniform"
    p: float = 0.3
    k: int = 4
    rewire: float = 0.1
    path: str | None = None
    rows: int | None = None
    max_tries: int = 100


@dataclass
class AlgorithmConf:
    _target_: str = "dimat.algorithms.build_algorithm"
    name: str = "dimat"
    optimizer: str = "sgd"  # sgd | msgd | adam
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    # what happens to optimizer state when an agent's weights are replaced by a merge
    opt_state: str = "keep"  # keep | reset
    gossip_momentum: bool = False  # dsgd: send and mix the momentum buffer too
    correction: str = "none"  # dimat: none | gt (gradient tracking) | qgm (quasi-global momentum)
    # cga: each cross-gradient's least share in the aggregate (0: project the own gradient only)
    qp_margin: float = 0.5
    qp_per_layer: bool = True  # cga: one QP per parameter tensor (false: one over the whole model)


@dataclass
class MergeConf:
    method: str = "weight"  # weight | activation | average
    data: str = "local"  # local | proxy
    samples: int = 512  # samples used for activation matching and BatchNorm repair
    restarts: int = 0
    warm_start: bool = True
    bn_repair: bool = True


@dataclass
class ScheduleConf:
    _target_: str = "dimat.schedule.build_schedule"
    name: str = "periodic"
    every: int = 1  # rounds between exchanges (periodic, and the sparse phase of late/window)
    p1: float = 0.5  # progress at which late/window switch
    width: float = 0.2  # window width in progress units
    shape: str = "linear"  # ramp: linear | cosine
    direction: str = "up"  # ramp: up (sparse -> dense) | down
    target: float = 0.0  # consensus target distance
    threshold: float = 0.0  # event trigger: squared drift threshold
    max_every: int = 8  # ramp: sparsest period; consensus: longest silence
    of: str = "frequency"  # ramp: frequency | degree


@dataclass
class BudgetConf:
    bytes: float | None = None  # total bytes all agents may send; null = unlimited
    exchanges: int | None = None  # or: total neighbour transfers


@dataclass
class BackendConf:
    name: str = "ray"  # ray | inprocess
    address: str | None = None  # null: start a local Ray on loopback; "auto", "ray://..", "host:port" join a cluster
    agents_per_actor: int | None = None  # null: spread agents over the CPUs available
    num_cpus: int | None = None  # CPUs of a local Ray instance (null: all)
    threads_per_actor: int | None = None
    placement: str = "pack"  # pack | spread
    comm: str = "object_store"  # object_store | torch (torch.distributed point-to-point between actors)
    device: str = "auto"  # auto (a GPU when there is one) | cpu | cuda
    vectorize: bool = False  # a host's agents take their local steps as one batched (vmap) computation
    gpus_per_actor: float | None = None  # null: the cluster's GPUs shared evenly by the actors (fractions allowed)
    timeout_s: float = 600.0  # every ray.get waits at most this long


@dataclass
class EvalConf:
    every: int = 1  # evaluate every k rounds (and always at the end)
    max_samples: int | None = None  # null: the full test set
    batch_size: int = 1024
    before_merge: bool = True  # also evaluate just before each merge (acc_before_merge)


@dataclass
class RunConf:
    dir: str | None = None  # null: Hydra's output folder
    checkpoint_every: int = 5  # rounds between checkpoints (and one at the end); 0: none
    progress: bool = True
    # restart: new actor, all agents back to the last checkpoint, replay | drop: go on without its agents | stop
    on_failure: str = "restart"


@dataclass
class Config:
    agents: int = 5
    rounds: int = 10
    seed: int = 0
    init: str = "auto"  # auto (the algorithm's own: dimat independent, others shared) | independent | shared
    pretrain_epochs: float = 0.0
    local_epochs: float = 1.0
    local_steps: int | None = None  # overrides local_epochs when set
    batch_size: int = 32
    final_merge: bool = True
    resume: str | None = None  # a run folder to continue from its last checkpoint, with its own config
    logger: str = "none"  # none | tensorboard | mlflow: where per-round records also go
    data: DataConf = field(default_factory=DataConf)
    partition: PartitionConf = field(default_factory=PartitionConf)
    model: ModelConf = field(default_factory=ModelConf)
    topology: TopologyConf = field(default_factory=TopologyConf)
    algorithm: AlgorithmConf = field(default_factory=AlgorithmConf)
    merge: MergeConf = field(default_factory=MergeConf)
    schedule: ScheduleConf = field(default_factory=ScheduleConf)
    budget: BudgetConf = field(default_factory=BudgetConf)
    backend: BackendConf = field(default_factory=BackendConf)
    eval: EvalConf = field(default_factory=EvalConf)
    run: RunConf = field(default_factory=RunConf)


def register() -> None:
    """Register the top-level schema; every group node below it is typed."""
    ConfigStore.instance().store(name="dimat_schema", node=Config)
