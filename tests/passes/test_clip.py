"""clip_as_min_max: clamps become relax.maximum/minimum, so that NHWC reaches every conv of a MobileNet."""

import io

import numpy as np
import onnx
import pytest
import torch
import tvm
from tvm import relax, topi

from compiler.frontends import import_onnx, import_torch_module
from passes import clip_as_min_max, simplify_for_inference
from passes.layout import LayoutConfig, convert_layout, conv_layouts
from tests.helpers import op_names, run_relax


def _block() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(  # MobileNetV2's pattern: conv + ReLU6, depthwise conv + ReLU6
        torch.nn.Conv2d(4, 8, 1), torch.nn.ReLU6(),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.Hardtanh(-1.0, 2.0),
    ).eval()


def _x() -> torch.Tensor:
    return torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(1)) * 4


def _onnx_module():
    buffer = io.BytesIO()
    torch.onnx.export(_block(), (_x(),), buffer, opset_version=17, dynamo=False)
    return simplify_for_inference()(import_onnx(onnx.load_from_string(buffer.getvalue())).mod)


def _torch_module():
    return simplify_for_inference()(import_torch_module(_block(), (_x(),)).mod)


def _kernel_calls(mod) -> list[str]:
    calls = []
    relax.analysis.post_order_visit(mod["main"], lambda e: calls.append(e.args[0].name_hint) if (
        isinstance(e, relax.Call) and e.op == tvm.ir.Op.get("relax.call_tir")) else None)
    return calls


@pytest.mark.parametrize("frontend", [_onnx_module, _torch_module], ids=["onnx", "torch"])
def test_clamps_become_max_min_with_the_same_outputs(frontend):
    mod = frontend()
    reference = _block()(_x()).detach().numpy()
    assert "relax.clip" in op_names(mod) or {"maximum", "minimum"} <= {c.rstrip("0123456789") for c in _kernel_calls(mod)}
    rewritten = clip_as_min_max()(mod)
    assert "relax.clip" not in op_names(rewritten) and _kernel_calls(rewritten) == []
    assert {"relax.maximum", "relax.minimum"} <= op_names(rewritten)
    (actual,) = run_relax(rewritten, _x().numpy())
    assert np.abs(actual - reference).max() < 1e-5
    assert actual.max() == pytest.approx(2.0) and actual.min() == pytest.approx(-1.0)  # the clamps still clamp


@pytest.mark.parametrize("frontend", [_onnx_module, _torch_module], ids=["onnx", "torch"])
def test_nhwc_reaches_every_conv_without_transposes_between_them(frontend):
    mod = frontend()
    without = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})(mod)
    assert "relax.permute_dims" in op_names(without)  # what the pass is for: the clamps stop the layout
    converted = convert_layout(LayoutConfig("NHWC"))(mod)  # which runs clip_as_min_max first
    assert conv_layouts(converted) == ["NHWC", "NHWC"]
    transposes = []
    relax.analysis.post_order_visit(converted["main"], lambda e: transposes.append(e) if (
        isinstance(e, relax.Call) and e.op == tvm.ir.Op.get("relax.permute_dims")) else None)
    assert len(transposes) == 2  # only at the graph's input and output
    (actual,) = run_relax(converted, _x().numpy())
    assert np.abs(actual - _block()(_x()).detach().numpy()).max() < 1e-5


def test_a_kernel_that_is_not_a_scalar_clamp_stays():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3), "float32"))
    y = relax.Var("y", relax.TensorType((2, 3), "float32"))
    with bb.function("main", [x, y]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit_te(topi.maximum, x, y))  # elementwise max of two tensors
        bb.emit_func_output(out)
    mod = bb.get()
    assert _kernel_calls(clip_as_min_max()(mod)) == _kernel_calls(mod) != []
    a, b = np.random.default_rng(0).standard_normal((2, 2, 3)).astype("float32")
    (actual,) = run_relax(clip_as_min_max()(mod), a, b)
    np.testing.assert_array_equal(actual, np.maximum(a, b))
