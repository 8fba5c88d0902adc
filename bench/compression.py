"""Accuracy per byte and per simulated second: compressed D-SGD, CHOCO-SGD and DIMAT over compressed channels.

    .venv/bin/python bench/compression.py [--agents 16] [--rounds 20] [--train-samples 8000] [--quick]

Fashion-MNIST, `--agents` agents on a ring, the cnn, IID shards, one local epoch per round, the same seeds and
sample passes for every method, all on the `wan` network preset (its clock needs no extra run):

- D-SGD exact (float32 messages);
- D-SGD with top-1%, random-1%, QSGD 4-bit and scaled sign, each without and with error feedback;
- CHOCO-SGD with the same four compressors, γ on a small grid (every γ shown; the plots keep each
  compressor's best);
- DIMAT (weight matching, independent inits) at 32 bits (uncompressed), QSGD 8 and 4 bits, top-10% and
  top-1% of its public copies.

The `edge` preset's clock is replayed from each run's bytes (every round on the ring moves two messages of
one size per agent: `replay`), and checked against the run's own `wan` clock replayed the same way. A
second table times the compressors themselves on a 1M-float state against a whole exchange of that state.
Writes bench/results/compression.md (command, date, machine, tree) and compression_bytes.png /
compression_time.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import _common  # noqa: F401 - puts the repository on sys.path
from alignment import provenance
from dimat import compose, run
from dimat.compress import COMPRESSORS
from dimat.experiment import Diverged

ROOT = Path(__file__).resolve().parent.parent
COMPRESSORS_1PCT = {"top-1%": ["compress=topk", "compress.ratio=0.01"],
                    "random-1%": ["compress=randomk", "compress.ratio=0.01"],
                    "qsgd 4-bit": ["compress=qsgd", "compress.bits=4"],
                    "sign": ["compress=sign"]}
DIMAT_CHANNELS = {"32 bits": [], "qsgd 8-bit": ["compress=qsgd", "compress.bits=8"],
                  "qsgd 4-bit": ["compress=qsgd", "compress.bits=4"],
                  "top-10%": ["compress=topk", "compress.ratio=0.1"], "top-1%": ["compress=topk", "compress.ratio=0.01"]}


def base(a) -> list[str]:
    return ["data=fashion_mnist", f"data.train_samples={a.train_samples}", "model=cnn", f"agents={a.agents}",
            "topology=ring", "partition=iid", f"rounds={a.rounds}", "local_epochs=1", f"eval.every={a.every}",
            "eval.max_samples=2000", "backend=inprocess", "network=wan", "run.progress=false",
            "run.checkpoint_every=0", "final_merge.enabled=false"]


def one(a, label: str, overrides: list[str], tmp: str) -> dict:
    t0 = time.perf_counter()
    try:
        res = run(compose([*base(a), *overrides, f"run.dir={tmp}/{time.monotonic_ns()}"]))
    except Diverged as e:  # a compressor too coarse for this method: a row that says so, and the study goes on
        print(json.dumps({"label": label, "diverged": str(e)}), flush=True)
        return {"label": label, "overrides": " ".join(overrides), "diverged": True, "acc": float("nan"),
                "bytes": 0, "rounds": [], "curve": [], "bytes_curve": [], "wan_s": [float("nan")],
                "edge_s": [float("nan")], "all": [], "wall": time.perf_counter() - t0}
    recs = [r for r in res.records if "acc_mean" in r]
    out = {"label": label, "overrides": " ".join(overrides), "acc": res.summary["final_acc_mean"],
           "bytes": res.summary["bytes_total"], "rounds": [r["round"] for r in recs],
           "curve": [r["acc_mean"] for r in recs], "bytes_curve": [r["bytes_total"] for r in recs],
           "wan_s": [r["sim_time_s"] for r in recs], "all": res.records, "wall": time.perf_counter() - t0}
    steps = res.records[0]["step"] // res.records[0]["round"]  # local steps per round
    out["edge_s"] = replay(res.records, steps, a, "edge")
    assert np.allclose(replay(res.records, steps, a, "wan"), out["wan_s"]), "the replayed clock is off"
    print(json.dumps({k: v for k, v in out.items() if k not in ("all", "curve", "bytes_curve", "wan_s",
                                                                 "edge_s", "rounds")}), flush=True)
    return out


def replay(records: list[dict], steps: int, a, preset: str) -> list[float]:
    """The clock of `preset` over a run's rounds: on the ring every agent sends its two neighbours one message
    each, of the round's bytes / (2 · agents)."""
    net = _network(a, preset)
    n, t, out, last = a.agents, 0.0, [], 0
    for r in records:
        if "acc_mean" not in r:
            continue
        while last < r["round"]:  # rounds between evaluations: same bytes per round (a fixed-size codec)
            last += 1
            per = r["bytes_round"] // (2 * n)
            msgs = [(i, (i + d) % n, per) for i in range(n) for d in (1, -1)] if per else []
            t += net.round_s(steps, [msgs], list(range(n)))
        out.append(t)
    return out


NETWORKS: dict = {}


def _network(a, preset: str):
    """The preset's network for this setup, as a run builds it (its FLOP-derived step cost for this model)."""
    if preset not in NETWORKS:
        from omegaconf import OmegaConf

        from dimat.components import setup

        cfg = OmegaConf.to_container(compose([*base(a), f"network={preset}", "run.dir=/nonexistent"]), resolve=True)
        NETWORKS[preset] = setup(cfg).network
    return NETWORKS[preset]


def codec_times(n: int = 1_000_000, repeats: int = 3) -> list[tuple[str, float, int]]:
    """Seconds to encode and decode an n-float vector, per compressor (best of `repeats`), and message bytes."""
    v = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    rng = np.random.default_rng(1)
    out = []
    for label, cls, kw in (("top-1%", "topk", {"ratio": 0.01}), ("random-1%", "randomk", {"ratio": 0.01}),
                           ("qsgd 4-bit", "qsgd", {"bits": 4}), ("sign", "sign", {})):
        c = COMPRESSORS[cls](**kw)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            c.decode(c.encode(v, rng), n)
            best = min(best, time.perf_counter() - t0)
        out.append((label, best, c.nbytes(n)))
    return out


def exchange_time(a, tmp: str) -> float:
    """The median exchange of a 1M-parameter MLP's state among 8 agents on a ring (float32, in-process)."""
    res = run(compose(["data=synthetic", "model=mlp", "model.hidden=[1000,1000]", "agents=8", "topology=ring",
                       "algorithm=dsgd", "local_steps=1", "rounds=4", "backend=inprocess", "eval.every=1",
                       "eval.max_samples=64", "final_merge.enabled=false", "run.checkpoint_every=0",
                       "run.progress=false", f"run.dir={tmp}/exchange"]))
    return statistics.median(r["exchange_s"] for r in res.records[1:]) / 8  # per agent's share of the round


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--every", type=int, default=5, help="evaluate every this many rounds")
    ap.add_argument("--train-samples", type=int, default=8000)
    ap.add_argument("--gammas", default="0.1,0.5")
    ap.add_argument("--quick", action="store_true", help="a tiny version (tests): 4 agents, 2 rounds")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args()
    if a.quick:
        a.agents, a.rounds, a.every, a.train_samples, a.gammas = 4, 2, 1, 800, "0.5"
    gammas = [float(g) for g in a.gammas.split(",")]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        exact = one(a, "D-SGD exact", ["algorithm=dsgd"], tmp)
        rows.append(exact)
        for label, comp in COMPRESSORS_1PCT.items():
            for ef in (False, True):
                extra = ["compress.error_feedback=true"] if ef else []
                rows.append(one(a, f"D-SGD {label}{' + EF' if ef else ''}", ["algorithm=dsgd", *comp, *extra], tmp))
        for label, comp in COMPRESSORS_1PCT.items():
            for g in gammas:
                rows.append(one(a, f"CHOCO {label} γ={g:g}", ["algorithm=choco", f"algorithm.gamma={g}", *comp], tmp))
        for label, comp in DIMAT_CHANNELS.items():
            rows.append(one(a, f"DIMAT {label}", ["algorithm=dimat", "init=independent", "pretrain_epochs=0",
                                                   *comp], tmp))
        timing = codec_times(200_000 if a.quick else 1_000_000)
        per_exchange = exchange_time(a, tmp)
    write(a, rows, exact, timing, per_exchange, gammas, 200_000 if a.quick else 1_000_000)


def write(a, rows: list[dict], exact: dict, timing, per_exchange: float, gammas: list[float], n: int) -> None:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = " ".join(["bench/compression.py", *sys.argv[1:]])
    lines = [provenance(cmd), "",
             f"Fashion-MNIST ({a.train_samples} training images), {a.agents} agents on a ring, cnn, IID, "
             f"{a.rounds} rounds of one local epoch; accuracy of the agents (mean) on the full test set after the "
             f"last round; simulated time on the `wan` preset and replayed on `edge`.", "",
             "| method | final acc | vs exact | MiB sent | bytes vs exact | wan s | edge s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("diverged"):
            lines.append(f"| {r['label']} | diverged (every agent rolled back 3 rounds in a row) | | | | | |")
            continue
        lines.append(f"| {r['label']} | {100 * r['acc']:.1f}% | {100 * (r['acc'] - exact['acc']):+.1f} | "
                     f"{r['bytes'] / 2**20:.1f} | {exact['bytes'] / max(r['bytes'], 1):.0f}× fewer | "
                     f"{r['wan_s'][-1]:.1f} | {r['edge_s'][-1]:.1f} |")
    best = {}
    for r in rows:
        if r["label"].startswith("CHOCO") and not r.get("diverged"):
            key = r["label"].rsplit(" γ=", 1)[0]
            if key not in best or r["acc"] > best[key]["acc"]:
                best[key] = r
    lines += ["", f"CHOCO's γ grid: {', '.join(f'{g:g}' for g in gammas)} (every run above; the plots keep each "
              "compressor's best)."]
    goal = [r for k, r in best.items() if ("1%" in k or "sign" in k)]
    for r in goal:
        ok = r["acc"] >= exact["acc"] - 0.03 and exact["bytes"] >= 10 * r["bytes"]
        lines.append(f"- {r['label']}: {100 * (r['acc'] - exact['acc']):+.1f} points from exact D-SGD for "
                     f"{exact['bytes'] / max(r['bytes'], 1):.0f}× fewer bytes: the goal (within 3 points, ≥10× "
                     f"fewer) {'holds' if ok else 'does not hold'}.")
    lines += ["", f"Encoding and decoding one {n:,}-float state, against one agent's share of an exchange of a 1M-parameter "
              f"state (float32, in-process: {1000 * per_exchange:.1f} ms):", "",
              "| compressor | encode + decode ms | bytes | of the exchange |", "|---|---|---|---|"]
    for label, s, nbytes in timing:
        lines.append(f"| {label} | {1000 * s:.1f} | {nbytes:,} | {s / per_exchange:.2f}× |")
    (out / "compression.md").write_text("\n".join(lines) + "\n")
    plot(rows, best, exact, out)
    print((out / "compression.md").read_text(), flush=True)


def plot(rows: list[dict], best: dict, exact: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    rows = [r for r in rows if not r.get("diverged")]
    shown = [exact, *[r for r in rows if r["label"].startswith("D-SGD") and r is not exact and "EF" in r["label"]],
             *best.values(), *[r for r in rows if r["label"].startswith("DIMAT")]]
    for fname, x, xlabel, log in (("compression_bytes.png", "bytes_curve", "MiB sent by all agents (log)", True),
                                  ("compression_time.png", "wan_s", "simulated seconds, wan preset", False),
                                  ("compression_time_edge.png", "edge_s", "simulated seconds, edge preset", False)):
        fig, ax = plt.subplots(figsize=(8, 4.6))
        for k, r in enumerate(shown):
            xs = [v / 2**20 for v in r[x]] if x == "bytes_curve" else r[x]
            ax.plot(xs, [100 * v for v in r["curve"]], marker="osD^v<>pXh*"[k % 11], ms=4,
                    ls=("-", "--", "-.", ":")[k % 4], label=r["label"])
        if log:
            ax.set_xscale("log")
        ax.set_title("Compressed gossip: accuracy against " + ("bytes" if log else "simulated time"))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean agent accuracy (test set)")
        ax.yaxis.set_major_formatter(PercentFormatter(decimals=None))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110, bbox_inches="tight")
        plt.close(fig)


if __name__ == "__main__":
    main()
