"""What alignment buys on the models people train now: a ViT and a MobileNet trained alone, merged in pairs.

    .venv/bin/python bench/alignment.py [--models vit,mobilenet] [--seeds 4] [--train-samples 12000]
                                        [--epochs vit=10,mobilenet=6] [--legacy-root DIR] [--cache DIR]
    .venv/bin/python bench/alignment.py --study rounds [--rounds 6]

Study `pairs` (the default): per model, `--seeds` copies train alone on the same Fashion-MNIST training
images (Adam 1e-3, batch 100: DIMAT's phase one) from their own inits; every pair is merged 1/2 each, side by
side in one process, and evaluated on the full test set (10,000 images):
- plain average; weight matching (dimat's derived spec); activation matching (512 training images, the merge
  samples of a run); activation matching followed by REPAIR where the model gives it a place (the ViT's MLP
  hidden layers; every BatchNorm of the MobileNet);
- the same two matchings with only the groups an older dimat derives (`--legacy-root`: a checkout of it, e.g.
  ``git worktree add /tmp/legacy f964814``): what the new derivation rules add;
- BatchNorm statistics re-estimated on the 512 samples after every merge where the model has BatchNorm (a
  run's default, merge.bn_repair);
- the accuracy barrier at λ = 0.5: the endpoints' mean minus the merge's accuracy;
- the seconds of each matching call.

Study `rounds`: DIMAT's iterative setting -- the presets `experiment=dimat_fashion_vit` and
`dimat_fashion_mobilenet` (agents from independent inits, pre-trained alone, then merge -> train rounds) with
merge=average, weight and activation, accuracy after each round.

Each study writes its table to bench/results/alignment_<study>.md with the command, date, machine and tree.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import _common  # noqa: F401 - puts the repository on sys.path
from dimat.agent import Agent, correct_by_class, predict
from dimat.algorithms.base import optimizer_settings
from dimat.data import load_dataset
from dimat.merge import (
    PermutationSpec, activation_matching, apply_permutation, channel_stats, interpolate, merge, repair_merged,
    repair_points, reset_bn, spec_for, weight_matching,
)
from dimat.models import build_model

ROOT = Path(__file__).resolve().parent.parent
SAMPLES, BATCH = 512, 100
LEGACY = """
import importlib.util, json, sys, torch
from dimat.merge import PermutationSpec
name, path, cls, shape = sys.argv[1], sys.argv[2], sys.argv[3], tuple(json.loads(sys.argv[4]))
spec = importlib.util.spec_from_file_location("bench_model_" + name, path)
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
model = getattr(mod, cls)(*json.loads(sys.argv[5]))
s = PermutationSpec.from_model(model, torch.randn(2, *shape))
print(json.dumps({"groups": {g: [list(p) for p in ps] for g, ps in s.groups.items()}, "sizes": s.sizes,
                  "consumers": {g: list(c) for g, c in s.consumers.items()}}))
"""
# the constructor arguments of the built-in models at their defaults (what --legacy-root rebuilds)
CTOR = {"vit": ("ViT", lambda shape: [list(shape), 10, 7, 64, 2, 4, 2.0]),
        "mobilenet": ("MobileNet", lambda shape: [list(shape), 10, 1, 4, "bn"])}


def provenance(cmd: str) -> str:
    """Command, date, machine and tree: the header every table of this bench carries."""
    tree = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    import os
    import platform

    return (f"`{cmd}`\n\n{time.strftime('%Y-%m-%d')} · {platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__} · tree {tree}{' (uncommitted changes)' if dirty else ''}\n")


def train(name: str, ds, seed: int, epochs: float, cache: str | None = None) -> Agent:
    """A model trained alone from its own init (`cache`: a folder keeping trained states between runs)."""
    torch.manual_seed(seed)
    model = build_model(name, ds.input_shape, ds.num_classes)
    idx = np.arange(len(ds.y_train))
    agent = Agent(seed, model, ds.x_train, ds.y_train, idx, batch_size=BATCH,
                  optimizer=optimizer_settings({"name": "adam", "lr": 1e-3}), seed=seed)
    path = Path(cache) / f"{name}_{len(idx)}_{epochs:g}_{seed}.pt" if cache else None
    if path is not None and path.exists():
        agent.model.load_state_dict(torch.load(path, weights_only=True))
        return agent
    agent.train(int(np.ceil(epochs * len(idx) / BATCH)))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(agent.model.state_dict(), path)
    return agent


def accuracy(model: torch.nn.Module, ds) -> float:
    return float(correct_by_class(predict(model, ds.x_test, 1000, "cpu"), ds.y_test, ds.num_classes).sum()
                 / len(ds.y_test))


def legacy_spec(name: str, root: str, shape) -> PermutationSpec | None:
    """The spec an older dimat (a checkout at `root`) derives for the same model (built from this tree's file)."""
    cls, args = CTOR[name]
    path = ROOT / "dimat" / "models" / f"{name}.py"
    out = subprocess.run([sys.executable, "-c", LEGACY, name, str(path), cls, json.dumps(list(shape)),
                          json.dumps(args(shape))], capture_output=True, text=True, env={"PYTHONPATH": root},
                         cwd=root)
    if out.returncode:
        print(out.stderr[-2000:], file=sys.stderr)
        return None
    d = json.loads(out.stdout)
    return PermutationSpec({g: [tuple(p) for p in ps] for g, ps in d["groups"].items()}, d["sizes"],
                           {g: tuple(c) for g, c in d["consumers"].items()})


class Pair:
    """Two trained models of one architecture and the merges of them, evaluated on the test set."""

    def __init__(self, a: Agent, b: Agent, ds, data: torch.Tensor):
        self.a, self.b, self.ds, self.data = a.model.eval(), b.model.eval(), ds, data
        self.bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self.a.modules())
        self.scratch = copy.deepcopy(self.a)

    def merged(self, other_state: dict, repair: list | None = None) -> float:
        """The accuracy of ½ a + ½ other (other in a's basis), BatchNorm re-estimated (or REPAIR)."""
        m = self.scratch
        ends = [self.a.state_dict(), other_state]
        m.load_state_dict(merge(ends, [0.5, 0.5]))
        if repair:
            stats = []
            for s in ends:
                probe = copy.deepcopy(self.a)
                probe.load_state_dict(s)
                stats.append(channel_stats(probe, repair, self.data))
            repair_merged(m, repair, interpolate(stats, [0.5, 0.5]), self.data)
        elif self.bn:
            reset_bn(m, self.data)
        return accuracy(m, self.ds)

    def weight(self, spec: PermutationSpec) -> tuple[dict, float]:
        t = time.perf_counter()
        perm, _ = weight_matching(spec, self.a.state_dict(), self.b.state_dict())
        return apply_permutation(spec, perm, self.b.state_dict()), time.perf_counter() - t

    def activation(self, spec: PermutationSpec) -> tuple[dict, float]:
        t = time.perf_counter()
        perm = activation_matching(spec, self.a, self.b, self.data)
        return apply_permutation(spec, perm, self.b.state_dict()), time.perf_counter() - t


def repair_sites(model: torch.nn.Module, spec: PermutationSpec, example: torch.Tensor) -> list | None:
    """REPAIR's points where the model gives them a place: every norm-free hidden group with a bias (the ViT's
    MLP hidden layers), or every group (BatchNorm models); None where there is none."""
    try:
        return repair_points(model, spec, example)
    except ValueError:
        pass
    keep = {}
    for g in spec.groups:
        try:
            repair_points(model, PermutationSpec({g: spec.groups[g]}, {g: spec.sizes[g]}), example)
            keep[g] = spec.groups[g]
        except ValueError:
            continue
    if not keep:
        return None
    return repair_points(model, PermutationSpec(keep, {g: spec.sizes[g] for g in keep}), example)


def pairs_study(a) -> None:
    ds = load_dataset("fashion_mnist", train_samples=a.train_samples, seed=0)
    data = torch.from_numpy(ds.x_train[:SAMPLES])
    epochs = dict(kv.split("=") for kv in a.epochs.split(","))
    lines = [provenance(" ".join(["bench/alignment.py", *sys.argv[1:]])), ""]
    summary = {}
    for name in a.models.split(","):
        t0 = time.perf_counter()
        agents = [train(name, ds, seed, float(epochs[name]), a.cache) for seed in range(a.seeds)]
        train_s = time.perf_counter() - t0
        own = [accuracy(ag.model.eval(), ds) for ag in agents]
        spec = spec_for(agents[0].model, data[:2])
        legacy = legacy_spec(name, a.legacy_root, ds.input_shape) if a.legacy_root else None
        points = repair_sites(agents[0].model, spec, data[:2])
        cols = ["pair", "a", "b", "average", "legacy WM", "legacy AM", "WM", "AM", "AM+REPAIR", "barrier avg",
                "barrier best", "WM s", "AM s"]
        rows = []
        for i, j in itertools.combinations(range(a.seeds), 2):
            p = Pair(agents[i], agents[j], ds, data)
            r = {"pair": f"{i}-{j}", "a": own[i], "b": own[j], "average": p.merged(p.b.state_dict())}
            if legacy is not None and legacy.groups:
                r["legacy WM"] = p.merged(p.weight(legacy)[0])
                r["legacy AM"] = p.merged(p.activation(legacy)[0])
            elif legacy is not None:  # no group at all: both are the plain average
                r["legacy WM"] = r["legacy AM"] = r["average"]
            wm, r["WM s"] = p.weight(spec)
            am, r["AM s"] = p.activation(spec)
            r["WM"], r["AM"] = p.merged(wm), p.merged(am)
            if points:
                r["AM+REPAIR"] = p.merged(am, points)
            ends = (own[i] + own[j]) / 2
            r["barrier avg"] = ends - r["average"]
            r["barrier best"] = ends - max(r["WM"], r["AM"], r.get("AM+REPAIR", 0.0))
            rows.append(r)
            print(name, r, flush=True)
        mean = {c: float(np.mean([r[c] for r in rows])) for c in cols[1:] if all(c in r for r in rows)}
        summary[name] = mean
        lines += [f"### {name} ({sum(x.numel() for x in agents[0].model.parameters()):,} parameters, "
                  f"{len(spec.groups)} groups, {len(spec.families())} head families; legacy: "
                  f"{len(legacy.groups) if legacy else 'not measured'} groups) · {a.seeds} models trained alone "
                  f"{epochs[name]} epochs on {a.train_samples} images ({train_s:.0f} s) · test: 10,000 images", "",
                  "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in [*rows, {"pair": "mean", **mean}]:
            cells = [r["pair"]]
            for c in cols[1:]:
                v = r.get(c)
                cells.append("—" if v is None else (f"{v:.2f}" if c.endswith(" s") else
                                                    f"{100 * v:+.1f}" if c.startswith("barrier") else f"{100 * v:.1f}%"))
            lines.append("| " + " | ".join(cells) + " |")
        best = max(mean["WM"], mean["AM"], mean.get("AM+REPAIR", 0.0))
        lines += ["", f"Best aligned merge {100 * best:.1f}% against plain averaging {100 * mean['average']:.1f}%: "
                  f"{100 * (best - mean['average']):+.1f} points (mean over {len(rows)} pairs).", ""]
    write(a.out, "pairs", lines)
    print(json.dumps(summary, indent=1))


def rounds_study(a) -> None:
    import dimat

    lines = [provenance(" ".join(["bench/alignment.py", *sys.argv[1:]])), ""]
    for preset in ("dimat_fashion_vit", "dimat_fashion_mobilenet"):
        curves = {}
        for method in ("average", "weight", "activation"):
            with tempfile.TemporaryDirectory() as tmp:
                res = dimat.run(dimat.compose([f"experiment={preset}", f"merge={method}", f"rounds={a.rounds}",
                                               "eval.every=1", "eval.before_merge=true", "run.progress=false",
                                               "backend=inprocess", f"run.dir={tmp}/run"]))
                curves[method] = {r["round"]: (r["acc_before_merge"], r["acc_mean"]) for r in res.records
                                  if r.get("acc_mean") is not None}
                curves[method]["global"] = res.summary.get("final_acc_global_merge")
        rounds = sorted(r for r in curves["average"] if r != "global")
        lines += [f"### experiment={preset}: the agents' mean accuracy before → after each round's merge "
                  f"(2,000 test images; the last round and the final global merge: all 10,000)", "",
                  "| merge | " + " | ".join(f"round {r}" for r in rounds) + " | global merge |",
                  "|" + "---|" * (len(rounds) + 2)]
        for method, c in curves.items():
            cells = [f"{100 * c[r][0]:.1f} → {100 * c[r][1]:.1f}%" for r in rounds]
            glob = c["global"]
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {'—' if glob is None else f'{100 * glob:.1f}%'} |")
        lines.append("")
    write(a.out, "rounds", lines)


def write(out: str, study: str, lines: list[str]) -> None:
    path = Path(out) / f"alignment_{study}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text(), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="pairs", choices=("pairs", "rounds"))
    ap.add_argument("--models", default="vit,mobilenet")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--train-samples", type=int, default=12000)
    ap.add_argument("--epochs", default="vit=10,mobilenet=6")
    ap.add_argument("--legacy-root", default=None)
    ap.add_argument("--cache", default=None, help="a folder keeping the trained models between runs")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    (pairs_study if a.study == "pairs" else rounds_study)(a)


if __name__ == "__main__":
    main()
