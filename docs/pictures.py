"""The documentation's pictures, drawn by dimat's own code at build time (docs/hooks.py puts them in the site).

- `topologies.png`: four of the built-in graphs for 16 agents, with the spectral gap of their mixing matrices;
- `round.png`: one synchronous round on the `edge` network preset, as `dimat.network.Network.timeline` computes
  it — every agent's local training, then its messages leaving its uplink one after another — for float32
  messages and for top-1% messages;
- `alignment.png`: a hidden layer of a model, the same model with its hidden units shuffled, and the shuffled one
  aligned back by weight matching (`dimat.merge.weight_matching`).
"""

from __future__ import annotations

import io

import numpy as np


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def topologies_png() -> bytes:
    import networkx as nx

    import topologies

    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.2))
    for ax, name in zip(axes, ("ring", "torus", "exponential", "erdos_renyi")):
        top = topologies.build(name, 16, seed=0) if name == "erdos_renyi" else topologies.build(name, 16)
        g = nx.from_numpy_array((np.asarray(top.W) > 0).astype(int) - np.eye(16, dtype=int))
        pos = nx.circular_layout(g)
        nx.draw_networkx(g, pos, ax=ax, node_size=140, font_size=6, node_color="#5c6bc0", font_color="white",
                         edge_color="#9e9e9e")
        ax.set_title(f"topology={name}\nspectral gap {top.spectral_gap():.3f}", fontsize=9)
        ax.set_axis_off()
    return _png(fig)


def round_png() -> bytes:
    from dimat.network import build

    plt = _plt()
    n, floats, steps = 8, 100_000, 20
    # the edge preset's links and fleet (conf/network/edge.yaml), a step of 20 ms at speed 1
    net = build(n, seed=0, bandwidth=1e7, latency=0.1, step_s=0.02, link_sigma=0.5, speed_sigma=0.5,
                stragglers=0.1, slowdown=4.0)
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), sharey=True)
    for ax, (label, nbytes) in zip(axes, (("float32 messages", 4 * floats), ("top-1% messages", 8 * floats // 100))):
        ring = [(i, (i + d) % n, nbytes) for i in range(n) for d in (1, -1)]
        end, events = net.timeline(steps, [ring], range(n))
        train = net.train_s(steps)
        for i in range(n):
            ax.barh(i, train[i], color="#9fa8da", label="local training" if i == 0 else None)
        for k, (src, _dst, t0, t1, arrival) in enumerate(events):
            ax.barh(src, t1 - t0, left=t0, color="#ef6c00" if k % 2 else "#ffa726", edgecolor="white",
                    label="a message on the sender's uplink" if k == 0 else None)
            ax.plot([t1, arrival], [src, src], color="#424242", lw=0.8,
                    label="latency until it arrives" if k == 0 else None)
        ax.axvline(end, color="#c62828", ls="--", label=f"the round ends: {end:.2f} s")
        ax.set_title(f"one round on network=edge, 8 agents on a ring, {label}", fontsize=9)
        ax.set_xlabel("simulated seconds")
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("agent")
    axes[0].set_yticks(range(n))
    return _png(fig)


def alignment_png() -> bytes:
    import torch
    from torch import nn

    from dimat.merge import apply_permutation, spec_for, weight_matching

    plt = _plt()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    spec = spec_for(model, torch.randn(2, 12))
    a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    (group,) = spec.sizes
    shuffle = {group: torch.randperm(16, generator=torch.Generator().manual_seed(1))}
    b = apply_permutation(spec, shuffle, a)
    b = {k: v + 0.05 * torch.randn_like(v) for k, v in b.items()}  # the same features, trained a little apart
    perm, _ = weight_matching(spec, a, b)
    aligned = apply_permutation(spec, perm, b)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
    for ax, (title, state) in zip(axes, (("agent i: hidden units of layer 1", a),
                                         ("neighbour j: the same units, another order", b),
                                         ("j aligned to i by weight matching", aligned))):
        ax.imshow(state["0.weight"].numpy(), cmap="RdBu", vmin=-0.35, vmax=0.35, aspect="auto")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("input")
        ax.set_ylabel("hidden unit")
    return _png(fig)


PICTURES = {"topologies.png": topologies_png, "round.png": round_png, "alignment.png": alignment_png}
