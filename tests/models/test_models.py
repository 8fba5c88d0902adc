"""Every model fits every input shape, scales with width, traces with torch.fx."""

import pytest
import torch

from dimat.models import MODELS, NORMS, ModelError, build_model

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", SHAPES)
def test_output_shape_and_tracing(name, shape):
    model = build_model(name, shape, 7)
    assert model(torch.randn(3, *shape)).shape == (3, 7)
    traced = torch.fx.symbolic_trace(model)
    model.eval()
    x = torch.randn(2, *shape)
    assert torch.allclose(traced(x), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_width_scales_parameters(name):
    count = lambda w: sum(p.numel() for p in build_model(name, (3, 32, 32), 10, width=w).parameters())
    assert count(2) > 1.5 * count(1)


@pytest.mark.parametrize("name", ["cnn", "resnet20", "vgg11"])
@pytest.mark.parametrize("norm", NORMS)
def test_every_norm(name, norm):
    model = build_model(name, (1, 8, 8), 4, norm=norm)
    kinds = {type(m).__name__ for m in model.modules()}
    expected = {"bn": "BatchNorm2d", "gn": "GroupNorm", "ln": "GroupNorm", "none": None}[norm]
    if expected:
        assert expected in kinds
    else:
        assert not kinds & {"BatchNorm2d", "GroupNorm"}
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4)


def test_ln_is_groupnorm_with_one_group_and_batchnorm_alias():
    m = build_model("cnn", (1, 8, 8), 4, norm="ln")
    assert all(g.num_groups == 1 for g in m.modules() if isinstance(g, torch.nn.GroupNorm))
    m = build_model("vgg11", (1, 8, 8), 4, batchnorm=False)
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())


def test_errors_are_one_line_and_name_the_fix():
    with pytest.raises(ModelError, match="use one of"):
        build_model("transformer", (1, 8, 8), 10)
    with pytest.raises(ModelError, match="norm"):
        build_model("cnn", (1, 8, 8), 10, norm="batch")
