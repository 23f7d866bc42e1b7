"""convert_layout: conv2d in NHWC or blocked NCHWc, numerics unchanged, interface unchanged."""

import numpy as np
import pytest
import torch

from compiler.errors import EdgecError
from compiler.frontends import import_torch_module
from passes import simplify_for_inference
from passes.layout import LayoutConfig, convert_layout, conv_layouts
from tests.helpers import run_relax


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 12, 3, padding=1),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(12, 4),
    ).eval()
    x = torch.randn(1, 8, 12, 12)
    mod = simplify_for_inference()(import_torch_module(net, (x,)).mod)
    (reference,) = run_relax(mod, x.numpy())
    return mod, x.numpy(), reference


@pytest.mark.parametrize(
    ("config", "layouts"),
    [
        (LayoutConfig("NCHW"), ["NCHW", "NCHW"]),
        (LayoutConfig("NHWC"), ["NHWC", "NHWC"]),
    ],
)
def test_layouts_change_and_outputs_do_not(tiny, config, layouts):
    mod, x, reference = tiny
    converted = convert_layout(config)(mod)
    assert conv_layouts(converted) == layouts
    (param,) = converted["main"].params
    assert [int(d) for d in param.ty.shape.values] == [1, 8, 12, 12]  # interface unchanged
    assert [int(d) for d in converted["main"].ret_ty.fields[0].shape.values] == [1, 4]  # torch: a tuple
    (actual,) = run_relax(converted, x)
    assert np.abs(actual - reference).max() < 1e-5


def test_bad_layout_names_the_choices():
    with pytest.raises(EdgecError, match="unknown --layout 'NWHC'; choose from: NCHW, NHWC"):
        LayoutConfig("NWHC")
