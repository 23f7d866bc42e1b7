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


# --- what real architectures bring: each case failed inside Relax's ConvertLayout before --------------
# Old-style ONNX (opset 9, IR version 3, weights also listed as graph inputs), as model zoos ship them.

def _old_style_model(nodes, weights: dict[str, np.ndarray], out_shape, in_shape=(1, 4, 6, 6)):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(w, name) for name, w in weights.items()]
    graph = helper.make_graph(
        nodes, "case", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape),
                        *[helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in inits]],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    onnx.checker.check_model(model)
    return model


def _conv_weights(rng, **shapes) -> dict[str, np.ndarray]:
    return {name: (rng.standard_normal(shape) * 0.3).astype(np.float32) for name, shape in shapes.items()}


def fire_with_dropout():
    """SqueezeNet's Fire module (1x1 squeeze, 1x1 and 3x3 expands concatenated), then a Dropout
    (two outputs, as old exports keep it): `relax.nn.dropout` returns a tuple but has the
    unary-elementwise layout rule ("Expected nested to match tuple")."""
    from onnx import helper

    nodes = [helper.make_node("Conv", ["x", "sq"], ["s"]), helper.make_node("Relu", ["s"], ["sr"]),
             helper.make_node("Conv", ["sr", "e1"], ["a"]), helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Conv", ["sr", "e3"], ["b"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["b"], ["br"]),
             helper.make_node("Concat", ["ar", "br"], ["c"], axis=1),
             helper.make_node("Dropout", ["c"], ["d", "mask"], ratio=0.5),
             helper.make_node("Conv", ["d", "head"], ["y"])]
    weights = _conv_weights(np.random.default_rng(1), sq=(2, 4, 1, 1), e1=(3, 2, 1, 1), e3=(3, 2, 3, 3), head=(5, 6, 1, 1))
    return _old_style_model(nodes, weights, (1, 5, 6, 6))


def channel_shuffle():
    """ShuffleNet's channel shuffle between convs: Reshape to 5-D, Transpose, Reshape back."""
    from onnx import helper

    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"]),
             helper.make_node("Reshape", ["a", "shape5"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["t", "shape4"], ["u"]), helper.make_node("Conv", ["u", "w2"], ["y"])]
    weights = {**_conv_weights(np.random.default_rng(2), w1=(4, 4, 1, 1), w2=(4, 4, 1, 1)),
               "shape5": np.array([1, 2, 2, 6, 6], np.int64), "shape4": np.array([1, 4, 6, 6], np.int64)}
    return _old_style_model(nodes, weights, (1, 4, 6, 6))


def variadic_sum():
    """ResNet-50's residual add as a variadic Sum of three tensors: imported as a reduction over
    `relax.stack`, whose layout rule names the new axis "S" ("can't find S in source layout ABCDE")."""
    from onnx import helper

    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"]), helper.make_node("Conv", ["x", "w2"], ["b"]),
             helper.make_node("Sum", ["a", "b", "x"], ["s"]), helper.make_node("Relu", ["s"], ["r"]),
             helper.make_node("Conv", ["r", "w3"], ["y"])]
    weights = _conv_weights(np.random.default_rng(3), w1=(4, 4, 1, 1), w2=(4, 4, 3, 3), w3=(4, 4, 1, 1))
    nodes[1].attribute.extend([helper.make_attribute("pads", [1, 1, 1, 1])])
    return _old_style_model(nodes, weights, (1, 4, 6, 6))


def inception_with_lrn():
    """GoogLeNet's stem and an Inception-style concat: Conv, LRN, two branches concatenated, Dropout,
    and a Max of the branches (variadic like Sum)."""
    from onnx import helper

    nodes = [helper.make_node("Conv", ["x", "stem"], ["a"]), helper.make_node("LRN", ["a"], ["n"], size=5, alpha=1e-4,
                                                                                 beta=0.75, bias=1.0),
             helper.make_node("Conv", ["n", "b1"], ["p"]), helper.make_node("Conv", ["n", "b2"], ["q"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["n"], ["m"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
             helper.make_node("Max", ["p", "q", "m"], ["mx"]),
             helper.make_node("Concat", ["p", "q", "m", "mx"], ["c"], axis=1),
             helper.make_node("Dropout", ["c"], ["d"], ratio=0.4),
             helper.make_node("Conv", ["d", "head"], ["y"])]
    weights = _conv_weights(np.random.default_rng(4), stem=(6, 4, 1, 1), b1=(6, 6, 1, 1), b2=(6, 6, 3, 3),
                            head=(3, 24, 1, 1))
    return _old_style_model(nodes, weights, (1, 3, 6, 6))


ARCHITECTURE_CASES = {"squeezenet-fire": fire_with_dropout, "shufflenet-shuffle": channel_shuffle,
                      "resnet50-sum": variadic_sum, "googlenet-lrn-concat": inception_with_lrn}


def _imported(build):
    from compiler.frontends import import_onnx

    mod = simplify_for_inference()(import_onnx(build()).mod)
    x = np.random.default_rng(0).standard_normal((1, 4, 6, 6)).astype(np.float32)
    (reference,) = run_relax(mod, x)
    return mod, x, reference


@pytest.mark.parametrize("case", list(ARCHITECTURE_CASES))
def test_architectures_convert_to_nhwc_and_keep_their_numbers(case):
    mod, x, reference = _imported(ARCHITECTURE_CASES[case])
    converted = convert_layout(LayoutConfig("NHWC"))(mod)
    assert conv_layouts(converted) and set(conv_layouts(converted)) == {"NHWC"}
    (actual,) = run_relax(converted, x)
    assert actual.shape == reference.shape
    assert np.abs(actual - reference).max() < 1e-5 * max(1.0, np.abs(reference).max())


def test_variadic_sum_becomes_adds_that_follow_the_layout():
    """The Sum is two adds in NHWC: no stack, and no transpose between the convs and the adds."""
    from tests.helpers import op_names

    mod, _, _ = _imported(variadic_sum)
    converted = convert_layout(LayoutConfig("NHWC"))(mod)
    ops = op_names(converted)
    assert "relax.stack" not in ops and "relax.sum" not in ops and "relax.add" in ops
    # transposes of the input (each of its three readers has one) and of the output only
    assert _count_calls(converted, "relax.permute_dims", of_params=False) == 1


def test_calls_that_break_convert_layout_are_found_and_kept(monkeypatch):
    """With no list of known-bad rules and no Sum rewrite, bisection finds the calls that make
    ConvertLayout fail and keeps them (and what feeds them) in the original layout."""
    import logging

    import tvm

    from passes import layout

    monkeypatch.setattr(layout, "_keeps_layout", lambda call: False)
    monkeypatch.setattr(layout, "variadic_as_binary", lambda: tvm.transform.Sequential([]))
    for build in (fire_with_dropout, variadic_sum):
        mod, x, reference = _imported(build)
        with pytest.raises(tvm.error.InternalError):
            tvm.relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})(mod)
        converted = convert_layout(LayoutConfig("NHWC"))(mod)
        assert set(conv_layouts(converted)) == {"NHWC"}
        (actual,) = run_relax(converted, x)
        assert np.abs(actual - reference).max() < 1e-5 * max(1.0, np.abs(reference).max())


def _count_calls(mod, name: str, of_params: bool = True) -> int:
    """Calls of operator `name` in `main`; `of_params=False`: only those not reading a parameter."""
    import tvm
    from tvm import relax

    count = 0
    params = list(mod["main"].params)

    def visit(expr):
        nonlocal count
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name:
            count += of_params or not any(arg.same_as(p) for arg in expr.args for p in params)

    relax.analysis.post_order_visit(mod["main"], visit)
    return count
