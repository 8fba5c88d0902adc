"""Shapes, width scaling, norms and errors of dimat.models.build_model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dimat.models import MODELS, NORMS, ModelError, build_model

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", SHAPES)
def test_output_shape(name: str, shape: tuple[int, ...]) -> None:
    model = build_model(name, shape, 7).eval()
    assert model(torch.randn(3, *shape)).shape == (3, 7)


@pytest.mark.parametrize("name", [m for m in MODELS if m != "vit"])  # the vit is sized by dim, depth, heads
def test_width_scales_parameters(name: str) -> None:
    assert n_params(build_model(name, (3, 32, 32), 10, width=2)) > n_params(build_model(name, (3, 32, 32), 10))


@pytest.mark.parametrize("name", ["cnn", "vgg11", "resnet20"])
@pytest.mark.parametrize("norm", NORMS)
def test_every_norm(name: str, norm: str) -> None:
    model = build_model(name, (1, 8, 8), 10, norm=norm)
    model(torch.randn(4, 1, 8, 8)).sum().backward()  # train mode
    kinds = {type(m) for m in model.modules()}
    expected = {"bn": nn.BatchNorm2d, "gn": nn.GroupNorm, "ln": nn.GroupNorm, "none": None}[norm]
    assert expected is None or expected in kinds
    if norm == "none":
        assert not kinds & {nn.BatchNorm2d, nn.GroupNorm}


def test_norm_groups() -> None:
    gns = [m for m in build_model("cnn", (1, 8, 8), 10, norm="gn").modules() if isinstance(m, nn.GroupNorm)]
    assert gns and all(m.num_groups == 8 for m in gns)  # 32 and 64 channels: largest of (8, 4, 2)
    vgg = build_model("vgg11", (1, 8, 8), 10, norm="gn")
    assert all(m.num_groups >= 2 and m.num_channels % m.num_groups == 0
               for m in vgg.modules() if isinstance(m, nn.GroupNorm))
    lns = [m for m in build_model("cnn", (1, 8, 8), 10, norm="ln").modules() if isinstance(m, nn.GroupNorm)]
    assert lns and all(m.num_groups == 1 for m in lns)


def test_vgg_channels_scale_with_width() -> None:
    def channels(width: int) -> list[int]:
        model = build_model("vgg16", (3, 32, 32), 10, width=width)
        return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert channels(1)[0] == 8 and max(channels(1)) == 64
    assert channels(8)[0] == 64 and max(channels(8)) == 512


def test_options_belong_to_their_model() -> None:
    with pytest.raises(TypeError, match="norm"):
        build_model("mlp", (1, 8, 8), 10, norm="bn")  # the mlp has no norm layers: refused, not ignored
    with pytest.raises(TypeError, match="hidden"):
        build_model("cnn", (1, 8, 8), 10, hidden=[32])


def test_mlp_hidden_and_width() -> None:
    model = build_model("mlp", (1, 8, 8), 10, hidden=[32, 16], width=2)
    sizes = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    assert sizes == [64, 32, 10]


def test_deterministic_and_float32() -> None:
    states = []
    for _ in range(2):
        torch.manual_seed(3)
        states.append(build_model("resnet20", (3, 32, 32), 10).state_dict())
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key])
        assert not value.is_floating_point() or value.dtype == torch.float32


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"name": "resnet18"}, "valid: mlp, cnn"),
    ({"norm": "batch"}, "unknown norm"),
    ({"width": 0}, "width"),
    ({"input_shape": (64,)}, "C, H, W"),
    ({"input_shape": (1, 2, 2)}, "H, W >= 4"),
])
def test_errors(kwargs: dict, match: str) -> None:
    args = {"name": "cnn", "input_shape": (1, 8, 8), "num_classes": 10} | kwargs
    assert issubclass(ModelError, ValueError)
    with pytest.raises(ModelError, match=match):
        build_model(**args)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("norm", NORMS)
def test_fx_traceable(name: str, norm: str) -> None:
    if name in ("mlp", "vit") and norm != "none":
        pytest.skip(f"the {name} has no norm option")
    model = build_model(name, (1, 8, 8), 10, **({} if name in ("mlp", "vit") else {"norm": norm})).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(traced(x), model(x))
