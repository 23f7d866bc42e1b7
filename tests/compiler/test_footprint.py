"""Memory footprint of compiled modules: weight bytes counted by hand, activations within the graph's bounds."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.build import CompileOptions, compile_model
from compiler.footprint import ACTIVATION_SOURCE, peak_activation_bytes, weights_bytes
from compiler.frontends import import_onnx
from targets import resolve_target

FLOAT = 4  # bytes


def _conv_relu_conv():
    """x 1x3x8x8 -> Conv 3x3 (4 ch, bias) -> Relu -> Conv 1x1 (2 ch, bias): no BN, nothing to fold."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"w1": rng.standard_normal((4, 3, 3, 3)), "b1": rng.standard_normal(4),
               "w2": rng.standard_normal((2, 4, 1, 1)), "b2": rng.standard_normal(2)}
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c1"], ["r1"]),
         helper.make_node("Conv", ["r1", "w2", "b2"], ["y"])],
        "conv_relu_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])],
        [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("target", ["host", "x86-64"])  # NCHW, and NHWC with its own weight layout
def test_footprint_of_a_conv_net_matches_the_hand_count(target, tmp_path):
    manifest = compile_model(import_onnx(_conv_relu_conv()), CompileOptions(resolve_target(target)), tmp_path / "out")
    memory = manifest.memory
    assert memory["weights_bytes"] == (4 * 3 * 3 * 3 + 4 + 2 * 4 * 1 * 1 + 2) * FLOAT  # 488 bytes
    # node outputs: c1 and r1 1x4x8x8, y 1x2x8x8; fusion and the memory plan keep at least the largest
    largest, every = 4 * 8 * 8 * FLOAT, (4 * 8 * 8 * 2 + 2 * 8 * 8) * FLOAT
    assert largest <= memory["peak_activation_bytes"] <= every
    assert memory["activation_source"] == ACTIVATION_SOURCE


def test_a_shared_constant_counts_once_and_a_symbolic_size_gives_none():
    import tvm
    from tvm import relax
    from tvm.script import relax as R

    @tvm.script.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor(("n", 5), "float32"), w: R.Tensor((1, 5), "float32")):
            with R.dataflow():
                y = R.multiply(R.add(R.add(x, w), w), R.const(2.0, "float32"))
                R.output(y)
            return y

    # w bound once and used twice: one constant of 5 floats, plus the scalar
    mod = relax.transform.BindParams("main", {"w": np.ones((1, 5), np.float32)})(Module)
    assert weights_bytes(mod) == (5 + 1) * FLOAT
    planned = tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.ToNonDataflow(),
                                        relax.transform.CallTIRRewrite(), relax.transform.StaticPlanBlockMemory()])(mod)
    assert peak_activation_bytes(planned) is None  # sized by n
