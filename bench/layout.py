"""Inference and training layouts on CPU: dimat's inference and training steps against the plain ones, side by side.

    .venv/bin/python bench/layout.py [--images 4000] [--steps 30] [--threads 2]

For each model (the CNN on Fashion-MNIST-shaped inputs, VGG-11 and ResNet-20 on
CIFAR-shaped ones, an MLP; BatchNorm statistics from a pass over random inputs),
the time to predict `--images` random inputs: batches of 2048 in the model's own
layout (dimat's default before 2026-12-02), batches of 256, batches of 256 with
channels-last copies of the convolution weights and channels-last inputs
(dimat's inference from 2026-12-02), and batches of 256 through
`dimat.agent.predict` (since 2026-12-06 also BatchNorm folded into the
convolutions of a copy, ReLUs in place: `dimat.agent.inference_model`). Ratios
are to the first column. All give the same predictions up to float rounding:
the script counts how many of them differ from the first.

Training: `--steps` SGD steps (batch 32, momentum 0.9) of the same model on
default-layout inputs and on channels-last inputs (`dimat.layout.nhwc`, what an
agent feeds a convolutional model; the weights stay in their default layout,
as views of the agent's flat state).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dimat.agent import predict  # noqa: E402
from dimat.layout import channels_last, nhwc  # noqa: E402
from dimat.models import CONFIGS  # noqa: E402
from dimat.models.cnn import CNN  # noqa: E402
from dimat.models.mlp import MLP  # noqa: E402
from dimat.models.resnet import ResNet20  # noqa: E402
from dimat.models.vgg import VGG  # noqa: E402


@torch.no_grad()
def plain(model: torch.nn.Module, x: np.ndarray, batch_size: int) -> np.ndarray:
    model.eval()
    xt = torch.from_numpy(x)
    return torch.cat([model(xt[s : s + batch_size]).argmax(1) for s in range(0, len(x), batch_size)]).numpy()


@torch.no_grad()
def channels_last_only(model: torch.nn.Module, x: np.ndarray, batch_size: int) -> np.ndarray:
    model.eval()
    xt = torch.from_numpy(x)
    with channels_last(model, xt[:4]) as fast:
        return torch.cat([model(nhwc(xt[s : s + batch_size]) if fast else xt[s : s + batch_size]).argmax(1)
                          for s in range(0, len(x), batch_size)]).numpy()


def best_of(fn, reps: int = 3) -> tuple[float, np.ndarray]:
    out = fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def train_steps(model: torch.nn.Module, xs: list, ys: list, channels_last: bool):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()

    def run() -> None:
        for x, y in zip(xs, ys):
            loss = torch.nn.functional.cross_entropy(model(nhwc(x) if channels_last else x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    models = {
        "cnn 28×28×1": (CNN((1, 28, 28), 10, 1, "bn"), (1, 28, 28)),
        "vgg11 32×32×3": (VGG(CONFIGS["vgg11"], (3, 32, 32), 10, 1, "bn"), (3, 32, 32)),
        "resnet20 32×32×3": (ResNet20((3, 32, 32), 10, 1, "bn"), (3, 32, 32)),
        "mlp 784-256-256": (MLP(784, 10, [256, 256]), (784,)),
    }
    print(f"bench/layout.py · {a.images} images · {a.threads} threads · best of 3")
    print(f"{'model':>18} {'2048 plain s':>13} {'256 plain s':>12} {'256 ch-last s':>14} {'256 predict s':>14} "
          f"{'speed-up':>9} {'predict / ch-last':>18} {'differ':>7}")
    for name, (model, shape) in models.items():
        x = rng.standard_normal((a.images, *shape)).astype(np.float32)
        with torch.no_grad():  # BatchNorm statistics that are not the identity, so folding them is measured
            model.train()
            model(torch.from_numpy(x[:256]) * 2 + 0.5)
        t_old, p_old = best_of(lambda: plain(model, x, 2048))
        t_256, _ = best_of(lambda: plain(model, x, 256))
        t_cl, p_cl = best_of(lambda: channels_last_only(model, x, 256))
        t_new, p_new = best_of(lambda: predict(model, x, 256))
        differ = max(int((p_old != p_cl).sum()), int((p_old != p_new).sum()))
        print(f"{name:>18} {t_old:13.2f} {t_256:12.2f} {t_cl:14.2f} {t_new:14.2f} {t_old / t_new:8.2f}x "
              f"{t_cl / t_new:17.2f}x {differ:7d}")
    print(f"training: {a.steps} steps of batch 32")
    print(f"{'model':>18} {'default s':>10} {'channels-last input s':>22} {'speed-up':>9}")
    for name, (model, shape) in models.items():
        if len(shape) != 3:
            continue
        xs = [torch.randn(32, *shape) for _ in range(a.steps)]
        ys = [torch.randint(0, 10, (32,)) for _ in range(a.steps)]
        t_default, _ = best_of(train_steps(model, xs, ys, False))
        t_nhwc, _ = best_of(train_steps(model, xs, ys, True))
        print(f"{name:>18} {t_default:10.2f} {t_nhwc:22.2f} {t_default / t_nhwc:8.2f}x")


if __name__ == "__main__":
    main()
