"""Typed schemas: one per option of every config group, registered with Hydra's ConfigStore.

Each component group (`data`, `partition`, `model`, `topology`, `algorithm`,
`schedule`, `backend`) builds its object from `_target_`; every option's YAML
in `conf/<group>/` extends its schema here (`/schema/<group>/<option>`), so an
option the chosen component does not take fails when Hydra composes the
config. Where dimat supplies runtime arguments (input shape and class count,
labels and agent count, the number of agents, ...) the node says
`_partial_: true`. Keys that dimat itself applies to any component of a group
(a dataset's `train_samples`, a graph's mixing `weights`) are listed in
`FRAMEWORK_KEYS`; every other key goes to the target.

`conf/<group>/custom.yaml` is an untyped node for a user's own component:
`model=custom model._target_=pkg.mod.Factory +model.depth=3`; its keys are
checked against the target's signature before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, SI

SEED = SI("${seed}")  # a component's seed follows the run's unless set

# keys of a group node that dimat consumes itself (not passed to the target)
FRAMEWORK_KEYS: dict[str, tuple[str, ...]] = {
    "data": ("train_samples", "test_samples"),
    "topology": ("weights",),
}
GROUPS = ("data", "partition", "model", "topology", "algorithm", "merge", "schedule", "backend")
COMPONENTS = ("data", "partition", "model", "topology", "algorithm", "schedule", "backend")


# --------------------------------------------------------------------------- data
@dataclass
class DataConf:
    """A loader returning a `dimat.data.Dataset`; dimat then subsamples (class-stratified, seeded)."""

    _target_: str = MISSING
    train_samples: int | None = None  # a class-stratified, seeded subsample of the training set (null: all of it)
    test_samples: int | None = None  # likewise of the test set (the final figures are on it)


@dataclass
class DigitsConf(DataConf):
    _target_: str = "dimat.data.digits"


@dataclass
class FileDataConf(DataConf):
    root: str | None = None  # where the downloaded files are (null: the usual places)


@dataclass
class FashionMnistConf(FileDataConf):
    _target_: str = "dimat.data.fashion_mnist"


@dataclass
class MnistConf(FileDataConf):
    _target_: str = "dimat.data.mnist"


@dataclass
class Cifar10Conf(FileDataConf):
    _target_: str = "dimat.data.cifar10"


@dataclass
class Cifar100Conf(FileDataConf):
    _target_: str = "dimat.data.cifar100"


@dataclass
class SyntheticConf(DataConf):
    _target_: str = "dimat.data.synthetic"
    n_train: int = 512  # training samples
    n_test: int = 256  # test samples
    num_classes: int = 4  # Gaussian clusters, one per class
    shape: list[int] = field(default_factory=lambda: [1, 8, 8])  # each sample's shape (channels, height, width)
    noise: float = 1.0  # the clusters' standard deviation around their centres
    seed: int = SEED  # the run's seed unless set


# --------------------------------------------------------------------------- partition
@dataclass
class PartitionConf:
    """Called as `fn(labels, n_agents, **keys)`; returns one index array per agent."""

    _target_: str = MISSING
    _partial_: bool = True
    seed: int = SEED  # the run's seed unless set


@dataclass
class IidConf(PartitionConf):
    _target_: str = "dimat.data.iid"


@dataclass
class ClassesConf(PartitionConf):
    _target_: str = "dimat.data.classes"


@dataclass
class DirichletConf(PartitionConf):
    _target_: str = "dimat.data.dirichlet"
    alpha: float = 0.5  # Dirichlet concentration: 0.1 is very skewed, 100 nearly IID
    min_samples: int = 10  # samples reserved for every agent (uniformly at random) before the Dirichlet shares


@dataclass
class ShardsConf(PartitionConf):
    _target_: str = "dimat.data.shards"
    shards_per_agent: int = 2  # label-sorted shards each agent holds


# --------------------------------------------------------------------------- model
@dataclass
class ModelConf:
    """Called as `factory(input_shape=..., num_classes=..., **keys)`; returns an `nn.Module`."""

    _target_: str = MISSING
    _partial_: bool = True


@dataclass
class MlpConf(ModelConf):
    _target_: str = "dimat.models.mlp"
    hidden: list[int] = field(default_factory=lambda: [128, 128])  # hidden layer sizes
    width: int = 1  # multiplies every hidden size


@dataclass
class ConvConf(ModelConf):
    width: int = 1  # multiplies every layer's channels
    norm: str = "bn"  # bn | gn | ln (GroupNorm, one group) | none
    groups: int | None = None  # GroupNorm groups for norm=gn (default: 8, 4 or 2 dividing the channels)


@dataclass
class VitConf(ModelConf):
    _target_: str = "dimat.models.vit"
    patch: int | None = None  # patch side in pixels (null: the smallest dividing the image into at most 16)
    dim: int = 64  # features per token (the residual stream)
    depth: int = 2  # transformer blocks
    heads: int = 4  # attention heads (must divide dim)
    mlp_ratio: float = 2.0  # MLP hidden units per feature


@dataclass
class MobilenetConf(ModelConf):
    _target_: str = "dimat.models.mobilenet"
    width: int = 1  # multiplies every layer's channels
    expand: int = 4  # inverted residuals' expansion ratio
    norm: str = "bn"  # bn | gn | ln (GroupNorm, one group) | none


@dataclass
class CnnConf(ConvConf):
    _target_: str = "dimat.models.cnn"


@dataclass
class Vgg11Conf(ConvConf):
    _target_: str = "dimat.models.vgg11"


@dataclass
class Vgg16Conf(ConvConf):
    _target_: str = "dimat.models.vgg16"


@dataclass
class ResNet20Conf(ConvConf):
    _target_: str = "dimat.models.resnet20"


# --------------------------------------------------------------------------- topology
@dataclass
class TopologyConf:
    """Called as `fn(n, **keys)`; returns a networkx graph, a `topologies.Topology` or a `TimeVarying`."""

    _target_: str = MISSING
    _partial_: bool = True


@dataclass
class GraphConf(TopologyConf):
    weights: str = "uniform"  # uniform | metropolis_hastings | file: the mixing matrix dimat builds on the graph


@dataclass
class RingConf(GraphConf):
    _target_: str = "topologies.ring"


@dataclass
class FullConf(GraphConf):
    _target_: str = "topologies.full"


@dataclass
class StarConf(GraphConf):
    _target_: str = "topologies.star"


@dataclass
class BipartiteConf(GraphConf):
    _target_: str = "topologies.bipartite"


@dataclass
class ExponentialConf(GraphConf):
    _target_: str = "topologies.exponential"


@dataclass
class TorusConf(GraphConf):
    _target_: str = "topologies.torus"
    rows: int | None = None  # null: the most square grid


@dataclass
class ErdosRenyiConf(GraphConf):
    _target_: str = "topologies.erdos_renyi"
    p: float = 0.3  # probability of each edge
    max_tries: int = 100  # draws until a connected graph (else refused)
    seed: int = SEED  # the run's seed unless set


@dataclass
class SmallWorldConf(GraphConf):
    _target_: str = "topologies.small_world"
    k: int = 4  # each node joined to its k nearest neighbours on a ring
    rewire: float = 0.1  # probability of rewiring each edge (Watts-Strogatz)
    max_tries: int = 100  # draws until a connected graph (else refused)
    seed: int = SEED  # the run's seed unless set


@dataclass
class EdgelistConf(GraphConf):
    _target_: str = "topologies.edgelist"
    path: str = MISSING  # a file of `u v [weight] [bandwidth=..] [latency=..]` lines, nodes 0..agents-1


@dataclass
class OnePeerExponentialConf(TopologyConf):
    _target_: str = "topologies.one_peer_exponential"


# --------------------------------------------------------------------------- algorithm
@dataclass
class OptimizerConf:
    """The agents' local optimizer; every algorithm that trains has one."""

    name: str = "msgd"  # sgd | msgd (heavy-ball momentum) | adam
    lr: float = 0.05  # learning rate, in (0, 10]
    momentum: float | None = None  # msgd only (null: 0.9)
    weight_decay: float = 0.0  # L2 penalty, in [0, 1)


@dataclass
class AlgorithmConf:
    """A subclass of `dimat.algorithms.Algorithm`, called with these keys (and `merge=` if it merges)."""

    _target_: str = MISSING
    _partial_: bool = True
    optimizer: OptimizerConf = field(default_factory=OptimizerConf)
    label_smoothing: float = 0.0  # of the cross-entropy loss
    clip: float | None = None  # clip every gradient element to [-clip, clip] before the step


@dataclass
class ExchangingConf(AlgorithmConf):
    # what happens to optimizer state when an agent's weights are replaced by a merge (done by the framework)
    opt_state: str = "keep"  # keep | reset


@dataclass
class DimatConf(ExchangingConf):
    _target_: str = "dimat.algorithms.Dimat"
    correction: str = "none"  # none | gt (gradient tracking) | qgm (quasi-global momentum)


@dataclass
class DsgdConf(ExchangingConf):
    _target_: str = "dimat.algorithms.Dsgd"
    gossip_momentum: bool = False  # send and mix the momentum buffer too


@dataclass
class ChocoConf(ExchangingConf):
    _target_: str = "dimat.algorithms.Choco"
    gamma: float = 1.0  # the consensus step size in (0, 1]: shrink it as compression gets coarser


@dataclass
class CdsgdConf(ExchangingConf):
    _target_: str = "dimat.algorithms.Cdsgd"


@dataclass
class CdmsgdConf(ExchangingConf):
    _target_: str = "dimat.algorithms.Cdmsgd"


@dataclass
class SgpConf(ExchangingConf):
    _target_: str = "dimat.algorithms.Sgp"


@dataclass
class CgaConf(ExchangingConf):
    _target_: str = "dimat.algorithms.Cga"
    qp_margin: float = 0.5  # each cross-gradient's least share in the aggregate (0: project the own gradient)
    qp_per_layer: bool = True  # one QP per parameter tensor (false: one over the whole model)


@dataclass
class GtConf(ExchangingConf):
    _target_: str = "dimat.algorithms.Gt"


@dataclass
class D2Conf(ExchangingConf):
    _target_: str = "dimat.algorithms.D2"


@dataclass
class QgmConf(ExchangingConf):
    _target_: str = "dimat.algorithms.Qgm"


@dataclass
class FedavgConf(ExchangingConf):
    _target_: str = "dimat.algorithms.Fedavg"


@dataclass
class LocalConf(AlgorithmConf):
    _target_: str = "dimat.algorithms.Local"


@dataclass
class CentralizedConf(AlgorithmConf):
    _target_: str = "dimat.algorithms.Centralized"


@dataclass
class MergeConf:
    """How permutation-merging algorithms (dimat) align and merge neighbours; refused by the others."""

    method: str = "weight"  # weight | activation | average
    data: str = "local"  # local | proxy: samples for activation matching and BatchNorm repair
    samples: int = 512  # samples used for activation matching and BatchNorm repair
    restarts: int | None = None  # weight matching only (null: 0): extra random starts, best objective kept
    warm_start: bool | None = None  # weight matching only (null: true): start from last round's permutation
    bn_repair: bool = True  # re-estimate BatchNorm statistics on the merge samples after each merge
    # REPAIR: each merged channel gets the interpolated mean and std of the merged models' (every method; the
    # final global merge too); refused where the model has no place for the correction (dimat.merge.repair)
    repair: bool = False


# --------------------------------------------------------------------------- compress
@dataclass
class CompressConf:
    """A `dimat.compress.Compressor`: how each neighbour message is encoded (none: the float32 vector)."""

    _target_: str = MISSING
    error_feedback: bool = False  # send later what compression dropped (a memory per sender; lossy ones only)


@dataclass
class NoneCompressConf(CompressConf):
    _target_: str = "dimat.compress.Compressor"


@dataclass
class TopkConf(CompressConf):
    _target_: str = "dimat.compress.TopK"
    ratio: float = 0.01  # the share of coordinates sent: the largest in magnitude, with their indices


@dataclass
class RandomkConf(CompressConf):
    _target_: str = "dimat.compress.RandomK"
    ratio: float = 0.01  # the share of coordinates sent, at indices drawn from a seed sent along


@dataclass
class QsgdConf(CompressConf):
    _target_: str = "dimat.compress.QSGD"
    bits: int = 4  # bits per coordinate: 2, 4, 8 (32: the float32 vector)
    bucket: int = 512  # coordinates that share one norm (QSGD's bucketing)


@dataclass
class SignConf(CompressConf):
    _target_: str = "dimat.compress.Sign"


@dataclass
class LowrankConf(CompressConf):
    _target_: str = "dimat.compress.LowRank"
    rank: int = 4  # rank of each matrix-shaped tensor's approximation (PowerSGD's step)


# --------------------------------------------------------------------------- network
@dataclass
class NetworkConf:
    """A simulated network and fleet (`dimat.network`): every round's duration in simulated seconds."""

    enabled: bool = False  # none: no clock
    bandwidth: float = 1e9  # bit/s of each link (and of a server's)
    latency: float = 0.0  # s of each link
    flops: float | None = None  # device FLOP/s: a local step costs the model's counted FLOPs / flops
    step_s: float | None = None  # or the seconds of one local step at speed 1 (instead of flops: not both)
    link_sigma: float = 0.0  # log-normal spread of the links' bandwidths (seeded)
    speed_sigma: float = 0.0  # log-normal spread of the agents' compute speeds (seeded)
    stragglers: float = 0.0  # the fraction of agents `slowdown` times slower (seeded)
    slowdown: float = 1.0  # how many times slower a straggler computes
    deadline_s: float | None = None  # an agent still training after it has its messages dropped that round
    targets: list[float] = field(default_factory=lambda: [0.5, 0.7, 0.8, 0.9])  # summary: when each is reached


# --------------------------------------------------------------------------- schedule
@dataclass
class ScheduleConf:
    """A `dimat.schedule.Schedule`: which exchanges each round makes."""

    _target_: str = MISSING


@dataclass
class PeriodicConf(ScheduleConf):
    _target_: str = "dimat.schedule.Periodic"
    every: int = 1  # rounds between exchanges


@dataclass
class LateConf(ScheduleConf):
    _target_: str = "dimat.schedule.Late"
    every: int = 4  # rounds between exchanges before p1
    p1: float = 0.5  # progress after which every round exchanges


@dataclass
class WindowConf(ScheduleConf):
    _target_: str = "dimat.schedule.Window"
    every: int = 4  # rounds between exchanges outside the window
    p1: float = 0.5  # the window's start, in progress units
    width: float = 0.2  # the window's width, in progress units


@dataclass
class RampConf(ScheduleConf):
    _target_: str = "dimat.schedule.Ramp"
    shape: str = "linear"  # linear | cosine
    direction: str = "up"  # up (sparse -> dense) | down
    of: str = "frequency"  # frequency | degree
    max_every: int | None = None  # of=frequency: the sparsest period (null: 8)
    low: float | None = None  # of=degree: neighbours pulled at the sparse end (null: 0)
    high: float | None = None  # of=degree: neighbours pulled at the dense end (null: all of them)
    seed: int = SEED  # which neighbours are pulled (of=degree)


@dataclass
class FinalOnlyConf(ScheduleConf):
    _target_: str = "dimat.schedule.FinalOnly"


@dataclass
class ConsensusConf(ScheduleConf):
    _target_: str = "dimat.schedule.Consensus"
    target: float = 0.01  # exchange while the consensus distance is above this
    max_every: int = 8  # longest silence


@dataclass
class EventConf(ScheduleConf):
    _target_: str = "dimat.schedule.Event"
    threshold: float = 0.01  # squared drift since the last send that triggers a send


@dataclass
class DegreeConf(ScheduleConf):
    """The single-merge paper's budget r(p): extra neighbours pulled per agent per gossip round."""

    _target_: str = "dimat.schedule.Degree"
    rule: str = "fixed"  # fixed | linear | cosine | slow_decrease | slow_grow | truncate | truncate_v2
    r_start: float = 1.0  # neighbours pulled per agent at the start (fractions: one more with that probability)
    r_end: float = 1.0  # reached at the final round by every rule but fixed
    p1: float = 0.5  # truncate: the switch; truncate_v2: the window's start
    window: float = 0.1  # truncate_v2: the window's width (progress units)
    every: int = 1  # a gossip round every k rounds
    seed: int = SEED  # which neighbours are pulled


@dataclass
class FinalMergeConf:
    """The closing global merge of all agents, optionally after pure-gossip post-merge rounds."""

    enabled: bool | None = None  # null: on when the algorithm communicates
    rounds: int = 0  # gossip rounds (no training) before the global merge, on `topology`
    topology: str | None = None  # a built-in topology for those rounds (null: the run's)


@dataclass
class BudgetConf:
    bytes: float | None = None  # total bytes all agents may send; null = unlimited
    exchanges: int | None = None  # or: total neighbour transfers


# --------------------------------------------------------------------------- backend
@dataclass
class BackendConf:
    """Hosts the agents: called with (spec, dataset, parts) and these keys."""

    _target_: str = MISSING
    _partial_: bool = True
    device: str = "auto"  # auto (a GPU when there is one) | cpu | cuda
    vectorize: bool = False  # a host's agents take their local steps as one batched (vmap) computation
    threads: int | None = None  # torch threads (per actor with Ray); null: the machine's CPUs (per actor: its share)


@dataclass
class InProcessConf(BackendConf):
    _target_: str = "dimat.runtime.InProcessBackend"


@dataclass
class RayConf(BackendConf):
    _target_: str = "dimat.runtime.RayBackend"
    address: str | None = None  # null: a private Ray on loopback; "auto", "ray://..", "host:port" join a cluster
    agents_per_actor: int | None = None  # null: spread agents over the CPUs available
    num_cpus: int | None = None  # CPUs of a local Ray instance (null: all)
    placement: str = "pack"  # pack | spread
    comm: str = "object_store"  # object_store | torch (torch.distributed point-to-point between actors)
    gpus_per_actor: float | None = None  # null: the cluster's GPUs shared evenly by the actors (fractions allowed)
    timeout_s: float = 600.0  # every ray.get waits at most this long


# --------------------------------------------------------------------------- the rest
@dataclass
class EvalConf:
    """Evaluation during the run is on a fixed class-stratified subsample; the final figures on the full test set."""

    # evaluate every k rounds, and always the last round (on the full test set, every agent); null: the k that keeps
    # evaluation during the run within a fifth of the run (an evaluated sample costs a third of a trained one)
    every: int | None = None
    max_samples: int | None = 2000  # the subsample evaluated during the run (null: the full test set)
    agents: int | None = None  # evaluate K agents per evaluated round, rotating (null: every agent)
    batch_size: int = 256  # inference batch (convolutions run 1.5-2.5x slower on CPU at 2048: bench/layout.py)
    # also evaluate the agents just before each merge (acc_before_merge); null: for algorithms that merge by
    # permutations (dimat), where before and after differ by more than an average
    before_merge: bool | None = None


@dataclass
class RunConf:
    dir: str | None = None  # null: Hydra's output folder
    checkpoint_every: int = 5  # rounds between checkpoints (and one at the end); 0: none
    progress: bool = True  # live progress bar and start-up facts (the final figures print either way)
    # restart: new actor, all agents back to the last checkpoint, replay | drop: go on without its agents | stop
    on_failure: str = "restart"


@dataclass
class Config:
    agents: int = 5  # how many agents (at least 2)
    rounds: int = 10  # rounds of local training and exchange
    seed: int = 0  # seeds everything: inits, shards, batches, schedules, the network
    init: str = "auto"  # auto (the algorithm's own: dimat independent, others shared) | independent | shared
    pretrain_epochs: float | None = None  # null: 5 local epochs when init is independent (DIMAT's protocol), else 0
    # start agent i from agent i's weights in a run folder (its newest checkpoint) or a folder of agent_<i>.pt
    # state dicts; the optimizers start fresh, pretrain_epochs defaults to 0, and round 0 is evaluated
    init_from: str | None = None
    local_epochs: float | None = None  # local epochs per round (null: 1, unless local_steps is set)
    local_steps: int | None = None  # local steps per round, instead of local_epochs
    batch_size: int = 32  # each agent's local batch
    # a round is local training then the exchange; true: the exchange first, then training (DIMAT's code: merge,
    # then train, then evaluate), so a round's record is after both
    exchange_first: bool = False
    final_merge: FinalMergeConf = field(default_factory=FinalMergeConf)
    resume: str | None = None  # a run folder to continue from its last checkpoint, with its own config
    logger: str = "none"  # none | tensorboard | mlflow: where per-round records also go
    data: Any = MISSING
    partition: Any = MISSING
    model: Any = MISSING
    topology: Any = MISSING
    algorithm: Any = MISSING
    merge: MergeConf = field(default_factory=MergeConf)
    compress: Any = MISSING
    network: NetworkConf = field(default_factory=NetworkConf)
    schedule: Any = MISSING
    budget: BudgetConf = field(default_factory=BudgetConf)
    backend: Any = MISSING
    eval: EvalConf = field(default_factory=EvalConf)
    run: RunConf = field(default_factory=RunConf)


# option name -> schema, per group (conf/<group>/<option>.yaml extends /schema/<group>/<option>)
SCHEMAS: dict[str, dict[str, type]] = {
    "data": {"digits": DigitsConf, "fashion_mnist": FashionMnistConf, "mnist": MnistConf, "cifar10": Cifar10Conf,
             "cifar100": Cifar100Conf, "synthetic": SyntheticConf},
    "partition": {"iid": IidConf, "classes": ClassesConf, "dirichlet": DirichletConf, "shards": ShardsConf},
    "model": {"mlp": MlpConf, "cnn": CnnConf, "vgg11": Vgg11Conf, "vgg16": Vgg16Conf, "resnet20": ResNet20Conf,
              "vit": VitConf, "mobilenet": MobilenetConf},
    "topology": {"ring": RingConf, "full": FullConf, "star": StarConf, "bipartite": BipartiteConf,
                 "exponential": ExponentialConf, "torus": TorusConf, "erdos_renyi": ErdosRenyiConf,
                 "small_world": SmallWorldConf, "edgelist": EdgelistConf,
                 "one_peer_exponential": OnePeerExponentialConf},
    "algorithm": {"dimat": DimatConf, "dsgd": DsgdConf, "choco": ChocoConf, "cdsgd": CdsgdConf, "cdmsgd": CdmsgdConf, "sgp": SgpConf,
                  "cga": CgaConf, "gt": GtConf, "d2": D2Conf, "qgm": QgmConf, "fedavg": FedavgConf,
                  "local": LocalConf, "centralized": CentralizedConf, "base": ExchangingConf},
    "schedule": {"periodic": PeriodicConf, "late": LateConf, "window": WindowConf, "ramp": RampConf,
                 "final_only": FinalOnlyConf, "consensus": ConsensusConf, "event": EventConf, "degree": DegreeConf},
    "backend": {"inprocess": InProcessConf, "ray": RayConf},
    "compress": {"none": NoneCompressConf, "topk": TopkConf, "randomk": RandomkConf, "qsgd": QsgdConf,
                 "sign": SignConf, "lowrank": LowrankConf},
    "optimizer": {"default": OptimizerConf},
}


def register() -> None:
    """Register the top-level schema and every option's schema (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="dimat_schema", node=Config)
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            cs.store(group=f"schema/{group}", name=name, node=node)
