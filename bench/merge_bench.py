"""Weight and activation matching cost per pair: resnet20 ×1/×4/×8 and vgg16-bn.

    .venv/bin/python bench/merge_bench.py [--threads 2] [--samples 512] [--repeats 1]

Two independently initialised models per row. Activation matching is compared
with its floor, a plain forward pass of both models over the same data.
Targets (2 cores): weight matching resnet20×4 ≤ 0.4 s, ×8 ≤ 2 s; activation
matching ≤ 1.5× the forward passes.
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from dimat.layout import channels_last, nhwc
from dimat.merge import PermutationSpec, activation_matching, weight_matching
from dimat.models import build_model


def best_of(fn, repeats: int) -> tuple[float, object]:
    out, best = None, float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=1, help="best of this many timings per cell")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    shape = (3, 32, 32)
    data = torch.randn(a.samples, *shape)
    t = Table(title=f"permutation matching per pair · {a.threads} threads · {a.samples} samples for activations")
    for col in ("model", "params", "WM s", "sweeps", "AM s", "forward both s", "AM / forward"):
        t.add_column(col, justify="right")
    console = Console()
    for name, width in (("resnet20", 1), ("resnet20", 4), ("resnet20", 8), ("vgg16", 8)):
        row = bench_pair(name, width, data, a.repeats)
        console.print(" · ".join(row), highlight=False)  # progress: the big rows take minutes
        t.add_row(*row)
    console.print(t)


def bench_pair(name: str, width: int, data: torch.Tensor, repeats: int) -> list[str]:
    """One table row: two independently initialised models of this architecture."""
    torch.manual_seed(0)
    a_model, b_model = (build_model(name, tuple(data.shape[1:]), 10, width=width).eval() for _ in range(2))
    spec = PermutationSpec.from_model(a_model, data[:2])
    # best of at least 2: the first call also pays one-off warm-up (thread pool, scipy)
    wm_s, (_, info) = best_of(lambda: weight_matching(spec, a_model.state_dict(), b_model.state_dict()),
                              max(2, repeats))

    def forward_both() -> None:  # in the faster layout for convolutions on CPU, as activation matching runs them
        with torch.no_grad(), channels_last(a_model, data[:4]), channels_last(b_model, data[:4]):
            x = nhwc(data)
            for s in range(0, len(x), 256):
                a_model(x[s : s + 256]), b_model(x[s : s + 256])

    fw_s, _ = best_of(forward_both, repeats)
    am_s, _ = best_of(lambda: activation_matching(spec, a_model, b_model, data), repeats)
    params = sum(p.numel() for p in a_model.parameters())
    label = f"{name}×{width}" if name == "resnet20" else f"{name}-bn×{width}"  # ×8: the standard 64…512 channels
    return [label, f"{params / 1e6:.2f}M", f"{wm_s:.3f}", str(info["sweeps"]), f"{am_s:.3f}", f"{fw_s:.3f}",
            f"{am_s / fw_s:.2f}"]


if __name__ == "__main__":
    main()
