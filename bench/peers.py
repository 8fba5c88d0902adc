"""FedAvg side by side: the identical workload through dimat and, when Flower is installed, Flower's simulation.

    .venv/bin/python bench/peers.py [--clients 128] [--rounds 5] [--backends ray,inprocess]
                                    [--flower-python PATH] [--flower-cpus 1]

One workload, built once from dimat's own setup and written to a folder: the prepared data set, dimat's
partitioner's shards, one shared initial model (the run's factory under the run's seed), the local steps
per round (one local epoch of the mean shard), the batch size, the optimizer (momentum SGD, a fresh one
each round: dimat's `algorithm.opt_state=reset`, FedAvg as McMahan et al. run it) and the rounds. dimat
runs it as a user would (`python -m dimat algorithm=fedavg ...`); Flower runs it with
`flwr.simulation.run_simulation`, a `ClientApp` that trains that shard from the received weights and the
message-API `FedAvg` strategy (every client every round, weighted by shard size, no client-side
evaluation), with `--flower-cpus` CPUs per client. Each framework is its own process, timed whole (start to
exit: imports, data, Ray, training, the closing evaluation). Both report the final model's accuracy on the
same test set, so the identity of the work shows: a Flower client deals its batches in the order a dimat agent
does (its seed, whole shuffled epochs of its shard), so the two runs differ only in rounding (FedAvg's sum in
float64 in dimat, float32 in Flower) and agree to a sample or so, not bit for bit.

Flower is not a dependency: without `flwr` in `--flower-python` (default: this Python) its row is skipped
with a note. Flower pins its own Ray, so it usually lives in another environment, e.g.
`python -m venv /tmp/flwr && /tmp/flwr/bin/pip install torch 'flwr[simulation]'`, then
`--flower-python /tmp/flwr/bin/python` (that environment needs only torch, numpy and flwr: the child
imports the model factory from this checkout).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- the workload (driver side, dimat's env)
def dimat_overrides(a: argparse.Namespace) -> list[str]:
    """The dimat run of the workload (without the backend)."""
    out = [f"data={a.data}", f"data.test_samples={a.test_samples}", f"agents={a.clients}", f"rounds={a.rounds}",
           f"model={a.model}", f"partition={a.partition}", "algorithm=fedavg", "algorithm.opt_state=reset",
           f"algorithm.optimizer.lr={a.lr}", f"batch_size={a.batch_size}", f"local_epochs={a.local_epochs}",
           f"seed={a.seed}",
           # one evaluation, at the end, on the whole (shared) test set: dimat evaluates its agents (all holding
           # the global model after the last aggregation), Flower's server the global model
           f"eval.every={a.rounds}", "eval.max_samples=null", "eval.before_merge=false",
           "final_merge.enabled=false", "run.checkpoint_every=0", "run.progress=false"]
    if a.train_samples:
        out.append(f"data.train_samples={a.train_samples}")
    return out


def prepare(overrides: list[str], folder: Path, cpus_per_client: int) -> dict:
    """Write the workload dimat's setup builds for `overrides` into `folder`; returns its description."""
    sys.path.insert(0, str(ROOT / "bench"))
    import torch

    from _common import compose_cfg
    from dimat.api import to_plain
    from dimat.components import setup
    from dimat.runtime.host import build_agent_model

    s = setup(to_plain(compose_cfg([*overrides, "backend=inprocess"])))
    ds = s.dataset
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.save(folder / f"{name}.npy", np.ascontiguousarray(getattr(ds, name)))
    np.save(folder / "parts.npy", np.concatenate(s.parts).astype(np.int64))
    np.save(folder / "offsets.npy", np.cumsum([0, *map(len, s.parts)]).astype(np.int64))
    init = build_agent_model(s.host, ds, 0)  # the run's shared init: its factory under its seed
    np.savez(folder / "init.npz", **{k: v.numpy() for k, v in init.state_dict().items() if v.is_floating_point()})
    fn = s.host.model
    meta = {
        "model": f"{fn.func.__module__}.{fn.func.__qualname__}", "model_keys": dict(fn.keywords),
        "input_shape": list(ds.input_shape), "num_classes": ds.num_classes, "clients": len(s.parts),
        "rounds": s.cfg["rounds"], "steps": s.steps_per_round, "batch_size": s.cfg["batch_size"],
        "optimizer": s.algorithm.optimizer, "label_smoothing": s.algorithm.training["label_smoothing"],
        "seed": s.cfg["seed"], "cpus_per_client": cpus_per_client, "test_samples": len(ds.y_test),
        "train_samples": len(ds.y_train), "torch_threads": torch.get_num_threads(),
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    return meta


def timed(cmd: list[str], log: Path, timeout: float) -> tuple[float, int]:
    """Wall seconds of a whole process (start to exit) and its exit code; its output goes to `log`."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, timeout=timeout)
    return time.perf_counter() - t0, p.returncode


def tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def run_dimat(overrides: list[str], backend: str, folder: Path, timeout: float) -> dict:
    run_dir = folder / f"dimat-{backend}"
    log = folder / f"dimat-{backend}.log"
    wall, rc = timed([sys.executable, "-m", "dimat", *overrides, f"backend={backend}", f"run.dir={run_dir}"], log,
                     timeout)
    if rc != 0:
        raise RuntimeError(f"dimat backend={backend} exited {rc}:\n{tail(log)}")
    summary = json.loads((run_dir / "summary.json").read_text())
    # total_s: the run's own account (setup to the end), without the interpreter, imports and Ray's exit
    return {"wall": wall, "acc": summary["final_acc_mean"], "total_s": summary.get("total_s")}


def flower_probe(python: str) -> tuple[str | None, str | None]:
    """(Flower's version in `python`, None) when it can run the Flower side, else (None, why not)."""
    probe = "import flwr, torch, numpy; from flwr.simulation import run_simulation; print(flwr.__version__)"
    try:
        p = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=300)
    except OSError as e:
        return None, f"--flower-python {python} cannot start ({e.strerror})"
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"flwr is not importable in {python} ({last})"
    return p.stdout.strip(), None


def run_flower(python: str, folder: Path, timeout: float) -> dict:
    log = folder / "flower.log"
    wall, rc = timed([python, str(Path(__file__).resolve()), "--flower-child", str(folder)], log, timeout)
    out = folder / "flower.json"
    if rc != 0 or not out.exists():
        raise RuntimeError(f"the Flower simulation exited {rc}:\n{tail(log)}")
    return {"wall": wall, **json.loads(out.read_text())}


# --------------------------------------------------------------------------- the work itself (both sides)
def load(folder: Path) -> tuple[dict, dict]:
    """The workload's description and its arrays (memory-mapped: a client reads only its shard)."""
    meta = json.loads((folder / "meta.json").read_text())
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r")
              for name in ("x_train", "y_train", "x_test", "y_test", "parts", "offsets")}
    return meta, arrays


def build_model(meta: dict):
    """The run's model, from the factory dimat's config names (imported from this checkout)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    module, _, name = meta["model"].rpartition(".")
    factory = getattr(importlib.import_module(module), name)
    return factory(input_shape=tuple(meta["input_shape"]), num_classes=meta["num_classes"], **meta["model_keys"])


def shard(arrays: dict, client: int) -> np.ndarray:
    o = arrays["offsets"]
    return np.asarray(arrays["parts"][o[client] : o[client + 1]])


def agent_seed(seed: int, client: int) -> int:
    """dimat's per-agent seed (`dimat.runtime.host.agent_seed`; this side imports no more of dimat than the model)."""
    return int(np.random.SeedSequence([seed, client]).generate_state(1)[0])


def batch_order(meta: dict, idx: np.ndarray, client: int, rnd: int) -> np.ndarray:
    """The samples of a client's round, in dimat's order: an agent's generator deals whole shuffled epochs of its
    shard, and each round takes the next steps × batch of that stream. A Flower client keeps no state between
    rounds, so it deals the stream again up to where its round starts (a few permutations of a small shard)."""
    import torch

    gen = torch.Generator().manual_seed(agent_seed(meta["seed"], client))
    per_round = meta["steps"] * meta["batch_size"]
    start = (rnd - 1) * per_round
    epochs = -(-(start + per_round) // len(idx))
    stream = np.concatenate([idx[torch.randperm(len(idx), generator=gen).numpy()] for _ in range(epochs)])
    return stream[start : start + per_round]


def local_round(meta: dict, arrays: dict, client: int, rnd: int, state: dict) -> tuple[dict, int, float]:
    """One client's round of FedAvg: load the global weights, take the workload's local steps with a fresh
    optimizer on its shard; returns the float state, the shard size (FedAvg's weight) and the mean loss."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(meta["cpus_per_client"])
    model = build_model(meta)
    model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}, strict=False)
    o = meta["optimizer"]
    if o["name"] == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=o["lr"], weight_decay=o["weight_decay"])
    else:
        opt = torch.optim.SGD(model.parameters(), lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"])
    idx, bs = shard(arrays, client), meta["batch_size"]
    order = batch_order(meta, idx, client, rnd)
    model.train()
    total = 0.0
    for s in range(meta["steps"]):
        b = np.sort(order[s * bs : (s + 1) * bs])
        xb, yb = torch.from_numpy(arrays["x_train"][b]), torch.from_numpy(arrays["y_train"][b])
        loss = F.cross_entropy(model(xb), yb, label_smoothing=meta["label_smoothing"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach())
    out = {k: v.detach().numpy() for k, v in model.state_dict().items() if v.is_floating_point()}
    return out, len(idx), total / meta["steps"]


def accuracy(meta: dict, arrays: dict, state: dict) -> float:
    """The model `state`'s accuracy on the whole test set."""
    import torch

    model = build_model(meta)
    model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}, strict=False)
    model.eval()
    x, y, correct = arrays["x_test"], arrays["y_test"], 0
    with torch.no_grad():
        for s in range(0, len(y), 2048):
            pred = model(torch.from_numpy(np.array(x[s : s + 2048]))).argmax(1).numpy()
            correct += int((pred == y[s : s + 2048]).sum())
    return correct / len(y)


# --------------------------------------------------------------------------- Flower's side (its own process)
def flower_child(folder: Path) -> None:
    """The workload as a Flower app in the simulation engine; writes flower.json (final accuracy)."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    meta, _ = load(folder)
    n, rounds = meta["clients"], meta["rounds"]
    client_app, server_app = ClientApp(), ServerApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        _, arrays = load(folder)
        client = int(context.node_config["partition-id"])
        rnd = int(msg.content["config"]["server-round"])
        state = {k: v.numpy() for k, v in msg.content["arrays"].items()}
        new, size, loss = local_round(meta, arrays, client, rnd, state)
        content = RecordDict({"arrays": ArrayRecord({k: _array(new[k]) for k in state}),
                              "metrics": MetricRecord({"train_loss": loss, "num-examples": size})})
        return Message(content=content, reply_to=msg)

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        init = dict(np.load(folder / "init.npz"))
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n)
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord({k: _array(v) for k, v in init.items()}),
                                num_rounds=rounds)
        final = {k: v.numpy() for k, v in result.arrays.items()}
        acc = accuracy(meta, load(folder)[1], final)
        (folder / "flower.json").write_text(json.dumps({"acc": acc, "rounds": rounds}))

    cpus = len(os.sched_getaffinity(0))
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=n, backend_config={
        "client_resources": {"num_cpus": meta["cpus_per_client"], "num_gpus": 0.0},
        # a private Ray on loopback, as dimat starts its own (never a cluster's address)
        "init_args": {"num_cpus": cpus, "_node_ip_address": "127.0.0.1", "include_dashboard": False,
                      "logging_level": 30},
    })


def _array(v: np.ndarray):
    from flwr.app import Array

    return Array(np.ascontiguousarray(v))


# --------------------------------------------------------------------------- the table
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    fashion = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists()
    ap.add_argument("--data", default="fashion_mnist" if fashion else "digits")
    ap.add_argument("--train-samples", type=int, default=12000 if fashion else None)
    ap.add_argument("--test-samples", type=int, default=2000)
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--partition", default="iid")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--local-epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backends", default="ray,inprocess", help="dimat backends to run, comma-separated")
    ap.add_argument("--flower-python", default=sys.executable, help="a Python with flwr[simulation] and torch")
    ap.add_argument("--flower-cpus", type=int, default=1, help="CPUs per Flower client (Flower's default is 2)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds each framework's process may take")
    ap.add_argument("--flower-child", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.flower_child:
        return flower_child(a.flower_child)
    backends = [b for b in a.backends.split(",") if b]
    bad = [b for b in backends if b not in ("ray", "inprocess")]
    if bad or not backends:
        ap.error(f"--backends {a.backends}: choose from ray, inprocess (comma-separated)")
    cores = len(os.sched_getaffinity(0))
    if not 1 <= a.flower_cpus <= cores:
        ap.error(f"--flower-cpus {a.flower_cpus}: give 1 to {cores} (the CPUs here), or no Flower client can start")
    version, missing = flower_probe(a.flower_python)
    overrides = dimat_overrides(a)
    with tempfile.TemporaryDirectory(prefix="dimat-peers-") as tmp:
        folder = Path(tmp)
        meta = prepare(overrides, folder, a.flower_cpus)
        rows = {f"dimat ({b})": run_dimat(overrides, b, folder, a.timeout) for b in backends}
        if version:
            rows[f"Flower {version} (run_simulation, {a.flower_cpus} CPU/client)"] = \
                run_flower(a.flower_python, folder, a.timeout)
    print_table(a, meta, rows, missing)


def print_table(a: argparse.Namespace, meta: dict, rows: dict, missing: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (f"bench/peers.py · FedAvg · {meta['clients']} clients · {meta['rounds']} rounds × {meta['steps']} "
             f"local steps of {meta['batch_size']} · {a.data} {meta['train_samples']} train / "
             f"{meta['test_samples']} test · {a.model} · {len(os.sched_getaffinity(0))} cores")
    t = Table(title=title)
    first_name = next(iter(rows))
    for col in ("framework", "whole process s", f"x {first_name}", "final accuracy"):
        t.add_column(col, justify="right")
    first = rows[first_name]["wall"]
    for name, r in rows.items():
        t.add_row(name, f"{r['wall']:.1f}", f"{r['wall'] / first:.2f}", f"{100 * r['acc']:.2f}%")
    Console(width=None if sys.stdout.isatty() else 140).print(t)
    if missing:
        print(f"note: the Flower side is skipped: {missing}. Flower is not a dependency of dimat: install "
              "flwr[simulation] and torch into another environment and pass --flower-python PATH.")
    print(json.dumps({"meta": meta, "rows": rows}, default=float))


if __name__ == "__main__":
    main()
