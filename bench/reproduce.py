"""The papers' comparisons on this machine: a method grid, the single-merge study, and the non-IID study.

    .venv/bin/python bench/reproduce.py --quick                 # digits, every study (about 15 min)
    .venv/bin/python bench/reproduce.py --study noniid          # Fashion-MNIST, one study (about 20 min)
    .venv/bin/python bench/reproduce.py                         # Fashion-MNIST, every study (about 1 h: background)

Studies (each writes bench/results/reproduce[_quick]_<study>.md, and the grid its plots):
- grid: methods × splits {iid, classes, dirichlet α=0.1} × topologies {ring, full}, 5 agents, equal sample
  passes (Fashion-MNIST: a 4,000-image subsample, cnn with `ln`, 3 rounds of 1 local epoch) (per-step methods gossip after each step); final mean accuracy, global-merge accuracy, total bytes,
  bytes per agent, wall time; where DIMAT's claim holds or fails.
- single: the single-merge paper's protocol (presets single_merge_figure1/2: 16 agents, Dirichlet α=0.1, a
  BatchNorm CNN from a shared init, SGD lr 0.01 + momentum, weight decay, label smoothing, clipping, each agent
  pulling r=0.2 random neighbours per gossip round): one dense last round (Figure 1), dense windows early, in
  the middle and late at equal budget (Figure 2), sparse gossip only, no gossip, and centralized training.
- protocol: DIMAT's own protocol (presets dimat_protocol/*): phase one trains every agent alone from its own
  init (Adam 1e-3, batch 100); phase two starts DIMAT (activation and weight matching), plain weight averaging,
  D-SGD, CDSGD, CDMSGD, SGP and CGA from those same agents (init_from), 8 epochs, ring and full graph, IID and 2
  disjoint classes per agent; Fashion-MNIST with a VGG-11 (width 2, BatchNorm), and CIFAR-10 when its files are
  under data.root. One table and two plots (accuracy against epochs and against bytes) per split; a verdict on
  "faster and higher initial gain" and "lower communication" per topology (about 2 h).
- noniid: 5 agents, ring, 2 disjoint classes per agent, 625 local steps, at most 125 model-sized transfers per
  agent (a payload twice a model's size exchanges half as often); D-SGD, the corrected methods, CGA (one
  step per round, exchanging on every 20th), DIMAT.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import ROOT, compose_cfg, run
from dimat.api import to_plain
from dimat.components import epochs_to_steps, setup

GRID_METHODS = {
    "dimat-activation": ["algorithm=dimat", "merge=activation", "init=independent"],
    "dimat-weight": ["algorithm=dimat", "merge=weight", "init=independent"],
    "dimat-average": ["algorithm=dimat", "merge=average", "init=independent"],
    "dsgd": ["algorithm=dsgd"],
    "cdsgd": ["algorithm=cdmsgd"],
    "sgp": ["algorithm=sgp"],
    "cga": ["algorithm=cga"],
    "gt": ["algorithm=gt"],
    "d2": ["algorithm=d2"],
    "qgm": ["algorithm=qgm"],
    "fedavg": ["algorithm=fedavg"],
    "local": ["algorithm=local"],
    "centralized": ["algorithm=centralized"],
}
PER_STEP = ("cdsgd", "cga")  # a round is one step
SPLITS = {"iid": ["partition=iid"], "classes": ["partition=classes"],
          "dirichlet0.1": ["partition=dirichlet", "partition.alpha=0.1"]}
TOPOLOGIES = ("ring", "full")

# non-IID study: (overrides, payload in model sizes); the exchange period scales with the payload
NONIID_METHODS = {
    "dsgd (BatchNorm)": (["algorithm=dsgd", "model.norm=bn"], 1),
    "dsgd": (["algorithm=dsgd"], 1),
    "dsgd + momentum gossip": (["algorithm=dsgd", "algorithm.gossip_momentum=true"], 2),
    "qgm": (["algorithm=qgm"], 1),
    "d2": (["algorithm=d2"], 1),
    "cga (msgd, lr 0.05)": (["algorithm=cga"], 2),
    "cga (sgd, lr 0.05)": (["algorithm=cga", "algorithm.optimizer.name=sgd", "algorithm.optimizer.lr=0.05"], 2),
    "gt (sgd, lr 0.05)": (["algorithm=gt", "algorithm.optimizer.name=sgd", "algorithm.optimizer.lr=0.05"], 2),
    "gt (msgd, lr 0.02)": (["algorithm=gt", "algorithm.optimizer.lr=0.02"], 2),
    "dimat-weight": (["algorithm=dimat", "merge=weight"], 1),
    "dimat-weight + gt (sgd, lr 0.05)": (["algorithm=dimat", "merge=weight", "algorithm.correction=gt",
                                          "algorithm.optimizer.name=sgd", "algorithm.optimizer.lr=0.05"], 2),
    "centralized": (["algorithm=centralized"], 0),
}

COMMON = ["run.progress=false", "run.checkpoint_every=0", "backend=inprocess", "eval.before_merge=false"]


def one(overrides: list[str], tmp: str, name: str) -> dict:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    res = run(compose_cfg([*overrides, f"run.dir={tmp}/{safe}", *COMMON]))
    s = res.summary
    return {"name": name, "acc": s["final_acc_mean"], "global": s.get("final_acc_global_merge"),
            "bytes": s["bytes_total"], "bytes_agent": s["bytes_per_agent_max"], "wall": s["wall_s"],
            "transfers": s["transfers_per_agent"], "avg_model": s["final_acc_avg_model"],
            "curve": [(r["bytes_total"], r["acc_mean"]) for r in res.records], "records": res.records}


def pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def grid(quick: bool, tmp: str, out: Path, topologies: tuple[str, ...] = TOPOLOGIES) -> None:
    data = ["data=digits", "model=mlp"] if quick else ["data=fashion_mnist", "model=cnn", "model.norm=ln",
                                                       "data.train_samples=4000", "eval.max_samples=2000"]
    rounds = 6 if quick else 3
    base = [*data, "agents=5", f"rounds={rounds}", "local_epochs=1", "pretrain_epochs=0",
            "algorithm.optimizer.name=msgd", "algorithm.optimizer.lr=0.05"]
    rows = []
    for split, sp in SPLITS.items():
        for topo in topologies:
            for method, mo in GRID_METHODS.items():
                extra = mo
                if method in PER_STEP:  # same sample passes: one round per step, one exchange per step
                    steps = setup(to_plain(compose_cfg([*base, *sp, "algorithm=dsgd"]))).steps_per_round * rounds
                    extra = [*mo, f"rounds={steps}", f"eval.every={steps}", "local_epochs=null"]
                r = one([*base, *sp, f"topology={topo}", *extra], tmp, f"{method}-{split}-{topo}")
                r.update(method=method, split=split, topology=topo)
                rows.append(r)
                print(f"{method:17s} {split:13s} {topo:5s} acc {pct(r['acc']):>6s}  merge {pct(r['global']):>6s} "
                      f"bytes {r['bytes']:>13,}", flush=True)
    lines = ["| method | split | topology | final acc mean | global merge | bytes total | bytes/agent max | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['split']} | {r['topology']} | {pct(r['acc'])} | {pct(r['global'])} | "
                     f"{r['bytes']:,} | {r['bytes_agent']:,} | {r['wall']:.1f} |")
    claims = []
    for split in SPLITS:
        get = lambda m: next(r for r in rows if r["method"] == m and r["split"] == split and r["topology"] == "ring")
        d, g, c, x = get("dimat-activation"), get("dsgd"), get("cdsgd"), get("cga")
        holds = d["acc"] >= max(c["acc"], x["acc"]) and d["bytes"] < min(c["bytes"], x["bytes"])
        claims.append(f"- {split}, ring: DIMAT (activation) {pct(d['acc'])} with {d['bytes']:,} B vs CDSGD "
                      f"{pct(c['acc'])} with {c['bytes']:,} B, CGA {pct(x['acc'])} with {x['bytes']:,} B and D-SGD "
                      f"{pct(g['acc'])}: DIMAT's claim (more accurate for far fewer bytes than gradient gossip) "
                      f"{'holds' if holds else 'does not hold'} here.")
        if split != "iid":
            better = x["acc"] > c["acc"]
            claims.append(f"- {split}, ring: CGA {pct(x['acc'])} vs CDSGD {pct(c['acc'])}: CGA's claim (better than "
                          f"consensus SGD on non-IID shards) {'holds' if better else 'does not hold'} here.")
    args = "" if topologies == TOPOLOGIES else f" --topologies {','.join(topologies)}"
    write_md(out, "grid", quick, base, lines, claims, args)
    plot(rows, out, quick)


SINGLE_ROUNDS = 24  # gossip rounds of the presets (conf/experiment/single_merge_figure*.yaml)
WINDOWS = {"early": 3 / 24, "middle": 12 / 24, "late": 20 / 24 - 0.003}  # two dense rounds each: 3-4, 12-13, 20-21


def single(quick: bool, tmp: str, out: Path) -> None:
    """The single-merge paper's two findings, in its protocol (the presets single_merge_figure1/2)."""
    small = ["data=digits", "data.train_samples=null", "local_steps=10"] if quick else []
    base = ["experiment=single_merge_figure1", *small]
    window = ["schedule.rule=truncate_v2", "schedule.window=0.08"]
    central = centralized_like(base, small)
    variants = {
        "sparse r=0.2, the last round dense (Figure 1)": base,
        "sparse r=0.2 throughout": [*base, "schedule.rule=fixed"],
        "no gossip: the final merge only": [*base, "schedule.rule=fixed", "schedule.r_start=0"],
        **{f"dense window {k} (Figure 2)": [*base, *window, f"schedule.p1={p1:.4f}"] for k, p1 in WINDOWS.items()},
        "centralized (same sample passes)": central,
    }
    lines = ["| variant | model-sized transfers heard per agent | agents (no merge) | global merge | wall s |",
             "|---|---|---|---|---|"]
    rows = {}
    for name, overrides in variants.items():
        r = one(overrides, tmp, f"single-{len(rows)}")
        rows[name] = r
        merged = r["global"] if r["global"] is not None else r["acc"]
        print(f"{name:48s} heard {r['transfers']:6.1f}  agents {pct(r['acc']):>6s}  merged {pct(merged):>6s}", flush=True)
        lines.append(f"| {name} | {r['transfers']:.1f} | {pct(r['acc'])} | {pct(merged)} | {r['wall']:.0f} |")
    central = rows["centralized (same sample passes)"]["acc"]
    fig1 = rows["sparse r=0.2, the last round dense (Figure 1)"]
    win = {k: rows[f"dense window {k} (Figure 2)"] for k in WINDOWS}
    gap = central - fig1["global"]
    late_best = win["late"]["global"] > max(win["early"]["global"], win["middle"]["global"])
    claims = [
        f"- (1) One global merge after a small budget: sparse gossip (r=0.2, {fig1['transfers']:.1f} transfers heard "
        f"per agent) and a dense last round give {pct(fig1['global'])} after the merge against centralized "
        f"{pct(central)} ({abs(100 * gap):.1f} points {'below' if gap > 0 else 'above'}); the agents alone reach "
        f"{pct(fig1['acc'])}. The claim (within a few points, here 3, of centralized) "
        f"{'holds' if gap <= 0.03 else 'does not hold'} here.",
        f"- (2) The same budget (a window of two dense rounds) spent early / in the middle / late gives "
        f"{pct(win['early']['global'])} / {pct(win['middle']['global'])} / {pct(win['late']['global'])} after the "
        f"global merge: spending it late {'beats' if late_best else 'does not beat'} spending it earlier here.",
    ]
    write_md(out, "single", quick, base, lines, claims)
    plot_single(rows, win, central, out, quick)


def centralized_like(preset: list[str], small: list[str]) -> list[str]:
    """The preset's protocol with algorithm=centralized (a preset's schedule keys cannot go with a run that has
    no schedule), checked to agree with the preset on everything but the algorithm and the schedule."""
    from dimat.api import to_plain
    from dimat.metrics import flatten_dict

    protocol = ["data=fashion_mnist", "model=cnn", "model.norm=bn", "partition=dirichlet", "partition.alpha=0.1", "topology=full",
                "agents=16", f"rounds={SINGLE_ROUNDS}", "local_steps=25", "batch_size=32", "init=shared",
                "data.train_samples=12000", "eval.every=4", "eval.max_samples=2000"]
    training = ["algorithm.optimizer.name=msgd", "algorithm.optimizer.lr=0.01", "algorithm.optimizer.momentum=0.9",
                "algorithm.optimizer.weight_decay=0.0005", "algorithm.label_smoothing=0.1", "algorithm.clip=1.0"]
    central = ["algorithm=centralized", *protocol, *training, *small]
    a, b = (flatten_dict(to_plain(compose_cfg(o))) for o in (preset, central))
    differ = [k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and not k.startswith(("schedule.", "algorithm."))]
    differ += [k for k in a if k.startswith("algorithm.") and k != "algorithm._target_" and k in b and a[k] != b[k]]
    if differ:
        raise SystemExit(f"bench/reproduce.py: the centralized reference no longer matches the preset: {sorted(differ)}")
    return central


def plot_single(rows: dict, win: dict, central: float, out: Path, quick: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = [WINDOWS[k] for k in win]
    ax.plot(xs, [100 * win[k]["global"] for k in win], "o-", label="global merge, dense window at p")
    ax.plot(xs, [100 * win[k]["acc"] for k in win], "s--", label="agents (no merge), dense window at p")
    for name, style in (("sparse r=0.2, the last round dense (Figure 1)", "g:"), ("no gossip: the final merge only", "r:")):
        ax.axhline(100 * rows[name]["global"], ls=style[1], color=style[0], label=f"{name}: global merge")
    ax.axhline(100 * central, color="k", lw=1, label="centralized (same sample passes)")
    ax.set_xlabel("progress p at which the dense window starts")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"reproduce_{'quick_' if quick else ''}single.png", dpi=110)
    plt.close(fig)


def noniid(quick: bool, tmp: str, out: Path) -> None:
    if quick:
        base = ["data=digits", "model=mlp", "partition=classes", "agents=5", "topology=ring", "init=shared",
                "pretrain_epochs=0", "batch_size=32", "algorithm.optimizer.name=msgd", "algorithm.optimizer.lr=0.05"]
        steps, period = 300, 10
    else:
        base = ["experiment=noniid_classes", "algorithm.optimizer.name=msgd", "algorithm.optimizer.lr=0.05"]
        steps, period = 620, 10
    base = [*base, "eval.every=1000"]
    lines = ["| method | exchange every (steps) | model-sized transfers per agent | mean agent acc | "
             "global average acc | wall s |", "|---|---|---|---|---|---|"]
    rows = []
    for name, (extra, size) in NONIID_METHODS.items():
        if quick and "BatchNorm" in name:
            continue
        every = period * max(size, 1)
        if any(f"algorithm={m}" in extra for m in PER_STEP):  # a step per round; exchanges on every `every`-th
            pace = [f"rounds={steps}", "local_steps=null", "schedule=periodic", f"schedule.every={every}"]
        else:
            pace = [f"local_steps={every}", f"rounds={steps // every}", "schedule=periodic", "schedule.every=1"]
        r = one([*base, *extra, *pace], tmp, f"noniid-{name}")
        rows.append((name, r))
        print(f"{name:26s} every {every:3d}  transfers {r['transfers']:6.1f}  acc {pct(r['acc']):>6s}  "
              f"global {pct(r['global'] or r['avg_model']):>6s}", flush=True)
        lines.append(f"| {name} | {every if size else '—'} | {r['transfers']:.0f} | {pct(r['acc'])} | "
                     f"{pct(r['global'] or r['avg_model'])} | {r['wall']:.0f} |")
    central = dict(rows)["centralized"]["acc"]
    decentral = [(n, r) for n, r in rows if n != "centralized"]
    best = max(decentral, key=lambda nr: nr[1]["global"] or 0)
    goal = best[1]["global"] >= central - 0.05 and best[1]["acc"] >= 0.80
    claims = [f"- Centralized (same steps): {pct(central)}. Best decentralized global average: {best[0]} "
              f"{pct(best[1]['global'])}, its agents {pct(best[1]['acc'])}: the goal (within 5 points of "
              f"centralized, agents ≥ 80%, ≤ 125 transfers per agent) is {'met' if goal else 'not met'} here."]
    write_md(out, "noniid", quick, base, lines, claims)


# DIMAT's protocol (presets conf/experiment/dimat_protocol/): phase one trains every agent alone, phase two
# starts every method from those agents (init_from); per-step methods get the same epochs in steps
PROTOCOL_METHODS = {
    "dimat (activation matching)": "dimat", "dimat (weight matching)": "dimat_wm", "wa (plain averaging)": "wa",
    "dsgd (local epochs)": "dsgd", "cdsgd": "cdsgd", "cdmsgd": "cdmsgd", "sgp": "sgp", "cga": "cga",
}
PROTOCOL_SPLITS = {"iid": ["partition=iid"], "classes": ["partition=classes"]}
PROTOCOL_EPOCHS = 8  # phase two: 4 DIMAT rounds of 2 local epochs


def protocol(quick: bool, tmp: str, out: Path, datasets: tuple[str, ...] = ("fashion_mnist", "cifar10")) -> None:
    """DIMAT's claims in its own protocol: every method from the same agents trained alone."""
    for data in datasets:
        size = (["data=digits", "data.train_samples=null", "model=cnn", "batch_size=32", "rounds=20"] if quick
                else [f"data={data}"])
        if not quick and data != "fashion_mnist" and not _available(size):
            print(f"protocol: {data} skipped (its files are not under data.root; see docs/guide/data.md)")
            continue
        for split, sp in PROTOCOL_SPLITS.items():
            _protocol_split(quick, tmp, out, data, split, [*size, *sp])
        if quick:
            break


def _available(overrides: list[str]) -> bool:
    from dimat.components import ConfigError

    try:
        setup(to_plain(compose_cfg(["experiment=dimat_protocol/alone", *overrides, "backend=inprocess"])))
        return True
    except ConfigError:
        return False


def _protocol_split(quick: bool, tmp: str, out: Path, data: str, split: str, base: list[str]) -> None:
    name = f"protocol_{data}_{split}" if not quick else f"quick_protocol_{split}"
    data = "digits" if quick else data
    alone_dir = f"{tmp}/{name}-alone"
    alone = run(compose_cfg(["experiment=dimat_protocol/alone", *base, f"run.dir={alone_dir}", *COMMON[:1],
                             "backend=inprocess"]))
    print(f"{data} {split}: phase one (alone) {pct(alone.summary['final_acc_mean'])} after "
          f"{alone.summary['rounds']} epochs", flush=True)
    phase_two = [b for b in base if not b.startswith("rounds=")]
    spe = None  # local steps per epoch of this split (per-step methods take the same epochs in steps)
    rows = []
    for topo in ("ring", "full"):
        for label, preset in PROTOCOL_METHODS.items():
            over = [f"experiment=dimat_protocol/{preset}", *phase_two, f"topology={topo}", f"init_from={alone_dir}"]
            s = setup(to_plain(compose_cfg([*over, *COMMON])))
            if spe is None:
                spe = epochs_to_steps(1.0, s.parts, s.cfg["batch_size"])
            if s.steps_per_round == 1:  # one step per round (cdsgd, cdmsgd, sgp, cga): the same epochs in steps
                steps = PROTOCOL_EPOCHS * spe
                over += [f"rounds={steps}", f"eval.every={2 * spe}"]
            else:
                over += [f"rounds={PROTOCOL_EPOCHS // 2}", "local_epochs=2"]
            r = one(over, tmp, f"{name}-{preset}-{topo}")
            recs = r.pop("records")
            n = len(recs[0]["acc"])
            # (epochs after phase one, mean agent accuracy on the evaluation subsample, bytes received per agent)
            curve = [(rec["step"] / spe, rec["acc_mean"], rec["bytes_total"] / n) for rec in recs]
            r.update(method=label, topology=topo, curve=curve, start=curve[0][1])
            rows.append(r)
            print(f"{label:30s} {topo:5s} start {pct(r['start']):>6s} first {pct(curve[1][1]):>6s} final "
                  f"{pct(r['acc']):>6s} bytes/agent {curve[-1][2]:>14,.0f}", flush=True)
    lines = ["| method | topology | start (epoch 0) | after 2 epochs (DIMAT: 1st merge) | gain | after 8 epochs | "
             "final, full test set | bytes received per agent | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        first = r["curve"][1][1]
        lines.append(f"| {r['method']} | {r['topology']} | {pct(r['start'])} | {pct(first)} | "
                     f"{100 * (first - r['start']):+.1f} | {pct(r['curve'][-1][1])} | {pct(r['acc'])} | "
                     f"{r['curve'][-1][2]:,.0f} | {r['wall']:.0f} |")
    claims = _protocol_claims(rows, alone.summary["final_acc_mean"])
    write_md(out, "protocol", quick, [*base, f"phase one: {alone.summary['rounds']} epochs alone"], lines, claims,
             file=name)
    _plot_protocol(rows, out, name, f"{data}, {split}")


def _protocol_claims(rows: list[dict], alone: float) -> list[str]:
    claims = [f"- Phase one: agents trained alone reach {pct(alone)} (mean); every phase-two method starts there."]
    for topo in ("ring", "full"):
        get = {r["method"]: r for r in rows if r["topology"] == topo}
        d = get["dimat (activation matching)"]
        others = {k: v for k, v in get.items() if k != "dimat (activation matching)"}
        gain = lambda r: r["curve"][1][1] - r["start"]
        best_other = max(others, key=lambda k: gain(others[k]))
        holds = gain(d) >= gain(others[best_other])
        claims.append(
            f"- {topo}: initial gain (2 epochs, DIMAT's first merge): DIMAT-AM {100 * gain(d):+.1f} points "
            f"(to {pct(d['curve'][1][1])}), best other {best_other} {100 * gain(others[best_other]):+.1f} (to "
            f"{pct(others[best_other]['curve'][1][1])}): \"faster and higher initial gain\" "
            f"{'holds' if holds else 'does not hold'} here.")
        d_bytes = d["curve"][-1][2]
        verdicts = []
        for k in ("cdsgd", "cdmsgd", "sgp", "cga"):
            o = get[k]
            # the other method's accuracy at its first evaluation that had spent at least DIMAT's whole budget
            at = next(((e, a, b) for e, a, b in o["curve"][1:] if b >= d_bytes), o["curve"][-1])
            verdicts.append((k, at, d["curve"][-1][1] >= at[1]))
        wins = [k for k, _, ok in verdicts if ok]
        detail = "; ".join(f"{k} {pct(a)} after {e:.0f} epochs and {b / d_bytes:.0f}× DIMAT's bytes"
                           for k, (e, a, b), _ in verdicts)
        claims.append(
            f"- {topo}: communication: DIMAT-AM ends at {pct(d['curve'][-1][1])} with {d_bytes:,.0f} B per agent; the "
            f"per-step methods, at their first evaluation past that budget: {detail}. \"Lower communication "
            f"overhead\" (at least as accurate for fewer bytes) holds against {', '.join(wins) or 'none'} here. "
            f"At equal bytes, D-SGD with local epochs ends at {pct(get['dsgd (local epochs)']['curve'][-1][1])}. "
            f"At equal epochs (8) the per-step methods end at "
            + ", ".join(f"{k} {pct(get[k]['curve'][-1][1])}" for k in ("cdsgd", "cdmsgd", "sgp", "cga"))
            + f" with {get['cdsgd']['curve'][-1][2] / d_bytes:.0f}–{get['cga']['curve'][-1][2] / d_bytes:.0f}× "
            "DIMAT's bytes.")
    return claims


def _plot_protocol(rows: list[dict], out: Path, name: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for x, xlabel, suffix, xscale in ((0, "epochs after phase one", "epochs", "linear"),
                                      (2, "bytes received per agent", "bytes", "symlog")):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        for ax, topo in zip(axes, ("ring", "full")):
            for r in rows:
                if r["topology"] == topo:
                    ax.plot([p[x] for p in r["curve"]], [100 * p[1] for p in r["curve"]], marker="o", ms=3,
                            label=r["method"])
            ax.set_xscale(xscale)
            ax.set_xlabel(xlabel)
            ax.set_title(f"{title}, {topo}")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("mean agent accuracy (%)")
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"reproduce_{name}_{suffix}.png", dpi=110)
        plt.close(fig)


def write_md(out: Path, study: str, quick: bool, base: list[str], lines: list[str], claims: list[str],
             args: str = "", file: str | None = None) -> None:
    """`file`: the table's name when one study writes several (default: the study's)."""
    out.mkdir(parents=True, exist_ok=True)
    md = out / (f"reproduce_{file}.md" if file else f"reproduce_{'quick_' if quick else ''}{study}.md")
    cmd = f".venv/bin/python bench/reproduce.py {'--quick ' if quick else ''}--study {study}{args}"
    md.write_text(f"`{cmd}` (base overrides: `{' '.join(base)}`)\n\n" + "\n".join(lines) + "\n\n"
                  + "\n".join(claims) + "\n")
    print(md.read_text(), flush=True)


def plot(rows: list[dict], out: Path, quick: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for split in SPLITS:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for r in rows:
            if r["split"] == split and r["topology"] == "ring" and r["curve"]:
                ax.plot(*zip(*r["curve"]), marker="o", ms=3, label=r["method"])
        ax.set_xscale("symlog")
        ax.set_xlabel("cumulative bytes sent")
        ax.set_ylabel("mean agent accuracy")
        ax.set_title(f"{split}, ring")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"reproduce_{'quick_' if quick else ''}{split}.png", dpi=110)
        plt.close(fig)


STUDIES = {"grid": grid, "single": single, "noniid": noniid, "protocol": protocol}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="digits and short schedules")
    ap.add_argument("--study", choices=[*STUDIES, "all"], default="all")
    ap.add_argument("--topologies", default=",".join(TOPOLOGIES), help="grid topologies (comma-separated)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name, study in STUDIES.items():
            if a.study in (name, "all"):
                extra = {"topologies": tuple(a.topologies.split(","))} if name == "grid" else {}
                study(a.quick, tmp, Path(a.out), **extra)


if __name__ == "__main__":
    main()
