"""Inference in the faster layout: channels-last copies of convolution weights, the flat state untouched."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from dimat.agent import predict
from dimat.layout import channels_last
from dimat.flat import flatten_module
from dimat.merge import reset_bn
from dimat.models import build_model
from dimat.runtime import base

ROOT = Path(__file__).resolve().parents[2]


@torch.no_grad()
def plain_predict(model, x: np.ndarray) -> np.ndarray:
    model.eval()
    return model(torch.from_numpy(x)).argmax(1).numpy()


def test_predict_in_channels_last_gives_the_plain_predictions_and_leaves_the_flat_state_as_it_was():
    torch.manual_seed(0)
    model = build_model("resnet20", (3, 16, 16), 10, width=1)
    vec, layout = flatten_module(model)
    before = vec.clone()
    x = np.random.default_rng(0).standard_normal((300, 3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(predict(model, x, 64), plain_predict(model, x))
    # every parameter is still a view of the flat vector: writing the vector changes the model
    storage = vec.untyped_storage().data_ptr()
    assert all(p.untyped_storage().data_ptr() == storage for p in model.parameters())
    torch.testing.assert_close(vec, before, rtol=0, atol=0)
    vec.zero_()
    assert all(float(p.detach().abs().sum()) == 0 for p in model.parameters())


def test_channels_last_swaps_only_convolution_weights_and_restores_them_on_error():
    model = build_model("cnn", (1, 8, 8), 10, width=1)
    originals = {n: (p.data_ptr(), p.stride()) for n, p in model.named_parameters()}
    try:
        with channels_last(model, torch.randn(2, 1, 8, 8)) as nhwc:
            assert nhwc
            convs = {n for n, p in model.named_parameters() if p.dim() == 4}
            assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for n, p in
                                 model.named_parameters() if n in convs)
            raise RuntimeError("stop")
    except RuntimeError:
        pass
    assert all((p.data_ptr(), p.stride()) == originals[n] for n, p in model.named_parameters())
    with channels_last(build_model("mlp", (1, 8, 8), 10, hidden=[8]), torch.randn(2, 1, 8, 8)) as nhwc:
        assert not nhwc  # nothing to convert: inputs stay as they are


def test_batchnorm_reestimation_is_the_same_in_either_layout():
    torch.manual_seed(0)
    model = build_model("cnn", (1, 12, 12), 10, width=1)
    x = torch.randn(200, 1, 12, 12)
    reset_bn(model, x, batch_size=50)
    got = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    # the same passes in the model's own layout
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for s in range(0, 200, 50):  # equal batches: the cumulative average weighs them as reset_bn does
            model(x[s : s + 50])
    for k, v in model.state_dict().items():
        if "running" in k:
            torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-5)


def test_free_cpus_do_not_count_this_process_as_other_work():
    """The Ray start-up thread reads the free CPUs while the driver imports: the driver is not a competitor."""
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            sum(range(1000))

    quiet = base._busy_cpus(0.5)
    t = threading.Thread(target=spin)
    t.start()
    try:
        busy = base._busy_cpus(0.5)
    finally:
        stop.set()
        t.join()
    if quiet is None:  # no /proc/stat here
        return
    assert busy < quiet + 0.5, (quiet, busy)  # counting its own spinning thread would add about 1


def test_free_cpus_read_since_the_mark_without_waiting(monkeypatch):
    """`mark_cpus` (the CLI's first step) starts the window: the run's reading then needs no sleep, and this
    process's own work since the mark is not other work. Without a recent mark it waits its own window."""
    if base._busy_cpus(0.05) is None:  # no /proc/stat here
        return
    monkeypatch.setattr(base, "_mark", None)
    t = time.monotonic()
    base._busy_cpus(0.3)
    assert time.monotonic() - t >= 0.3  # no mark: a window of its own
    base.mark_cpus()
    t = time.monotonic()
    while time.monotonic() - t < 0.4:  # this process busy on one CPU since the mark
        sum(range(1000))
    quiet_before = base._busy_cpus(0.3)  # the mark is recent: read over the 0.4 s since it, no sleep
    assert time.monotonic() - t < 0.6
    monkeypatch.setattr(base, "_mark", None)
    assert quiet_before < base._busy_cpus(0.3) + 0.5  # its own spinning not counted (it would add about 1)
    monkeypatch.setattr(base, "_mark", (0, 0, 0.0, time.monotonic() - base.MARK_AGES[1] - 1))
    t = time.monotonic()
    base._busy_cpus(0.3)
    assert time.monotonic() - t >= 0.3  # a stale mark is not used


def test_the_layout_bench_runs_and_finds_the_same_predictions():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "layout.py"), "--images", "64", "--steps", "2"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    rows = [line.split() for line in lines[2:6]]
    assert len(rows) == 4 and all(r[-1] == "0" for r in rows), out.stdout
    assert len(lines) == 6 + 2 + 3, out.stdout  # three convolutional models trained both ways


class _Branchy(torch.nn.Module):
    """conv → BN, a ReLU whose input is read again, and data-dependent control flow when asked."""

    def __init__(self, branch: bool = False, noise: bool = False):
        super().__init__()
        self.conv, self.bn, self.relu = torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()
        self.fc = torch.nn.Linear(4, 3)
        self.branch, self.noise = branch, noise

    def forward(self, x):
        y = self.bn(self.conv(x))
        y = self.relu(y) + y  # the ReLU's input has a second reader: it must not be overwritten
        if self.branch and y.sum() > 0:  # fx cannot trace a branch on a tensor's value
            y = -y
        if self.noise:  # a copy that fx traces but that does not compute the model's outputs
            y = y + torch.rand(()) * 100
        return self.fc(y.mean((2, 3)))


def _with_statistics(model):
    with torch.no_grad():
        model.train()
        model(torch.randn(64, *((1, 8, 8) if isinstance(model, _Branchy) else (3, 16, 16))) * 3 + 1)
    return model.eval()


def test_batchnorm_is_folded_into_a_copy_for_inference_and_the_model_keeps_its_own():
    from dimat.agent import inference_model

    torch.manual_seed(0)
    model = _with_statistics(build_model("resnet20", (3, 16, 16), 10, width=1))
    vec, _ = flatten_module(model)
    x = np.random.default_rng(0).standard_normal((200, 3, 16, 16)).astype(np.float32)
    net = inference_model(model, torch.from_numpy(x[:64]))
    assert net is not model
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # every BN folded
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    np.testing.assert_array_equal(predict(model, x, 64), plain_predict(model, x))
    # the copy is made at every prediction: the model's current weights, never stale ones
    vec.mul_(-1)
    np.testing.assert_array_equal(predict(model, x, 64), plain_predict(model, x))


def test_relu_stays_out_of_place_where_its_input_is_read_again():
    from dimat.agent import inference_model

    torch.manual_seed(0)
    model = _with_statistics(_Branchy())
    x = np.random.default_rng(1).standard_normal((50, 1, 8, 8)).astype(np.float32)
    net = inference_model(model, torch.from_numpy(x))
    assert net is not model and not net.get_submodule("relu").inplace
    with torch.no_grad():
        torch.testing.assert_close(net(torch.from_numpy(x)), model(torch.from_numpy(x)), rtol=1e-4, atol=1e-5)


def test_cnn_relus_run_in_place_in_the_inference_copy():
    from dimat.agent import inference_model

    model = _with_statistics(build_model("cnn", (3, 16, 16), 10, width=1))
    net = inference_model(model, torch.randn(8, 3, 16, 16))
    assert net.get_submodule("relu").inplace and not model.relu.inplace


def test_a_model_fx_cannot_trace_or_copy_faithfully_predicts_as_it_is():
    from dimat.agent import inference_model

    torch.manual_seed(0)
    x = np.random.default_rng(2).standard_normal((40, 1, 8, 8)).astype(np.float32)
    for model in (_with_statistics(_Branchy(branch=True)), _with_statistics(_Branchy(noise=True))):
        assert inference_model(model, torch.from_numpy(x)) is model
        assert inference_model(model, torch.from_numpy(x)) is model  # the verdict is kept
        assert predict(model, x, 16).shape == (40,)
