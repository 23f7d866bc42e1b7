"""Small hand-built ONNX models for the importer's edge cases.

Each function returns an `onnx.ModelProto` that passes `onnx.checker.check_model`, with seeded
random weights (`numpy.random.default_rng(seed)`) and a distinctively named input so tests can
tell cases apart. `example_inputs(model)` makes matching random inputs for any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT
OPSETS = tuple(range(7, 22))  # opsets opset_model() can build
UNSUPPORTED_NODE_NAME = "my_unsupported_node"
UNSUPPORTED_OP_TYPE = "Det"  # a real float op that TVM's Relax ONNX frontend has no converter for


def _weight(rng: np.random.Generator, name: str, shape: Sequence[int], scale: float = 0.5) -> onnx.TensorProto:
    """A float32 initializer drawn from N(0, scale^2)."""
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _model(graph: onnx.GraphProto, opset: int, ir_version: int | None = None) -> onnx.ModelProto:
    """Wrap `graph` at `opset`; IR version defaults to the oldest that allows it, but at least 4.

    IR >= 4 keeps initializers out of graph.input, so only the old-style case uses IR 3; the
    newest IR (onnx's default) is avoided because onnxruntime may not read it yet.
    """
    opsets = [helper.make_opsetid("", opset)]
    ir = ir_version if ir_version is not None else max(4, helper.find_min_ir_version_for(opsets))
    model = helper.make_model(graph, opset_imports=opsets, ir_version=ir, producer_name="edgec.examples")
    onnx.checker.check_model(model)
    return model


def _conv_relu_gemm_nodes(prefix: str, inp: str) -> list[onnx.NodeProto]:
    """Conv(3->4, 3x3, pad 1, stride 2) -> Relu -> Flatten -> Gemm(->5), valid from opset 7."""
    return [
        helper.make_node("Conv", [inp, "conv_W", "conv_B"], ["conv"], pads=[1, 1, 1, 1], strides=[2, 2],
                         name=f"{prefix}_conv"),
        helper.make_node("Relu", ["conv"], ["relu"], name=f"{prefix}_relu"),
        helper.make_node("Flatten", ["relu"], ["flat"], axis=1, name=f"{prefix}_flatten"),
        helper.make_node("Gemm", ["flat", "fc_W", "fc_B"], ["output"], transB=1, name=f"{prefix}_gemm"),
    ]


def old_style_initializers_as_inputs(opset: int = 7, seed: int = 0) -> onnx.ModelProto:
    """Conv+Relu+Gemm at IR version 3, where every initializer is ALSO listed in graph.input.

    Before IR v4 an initializer had to be a graph input (its value a default); importers must
    treat such inputs as weights, not as user inputs. Input "old_input" (1, 3, 8, 8) -> (1, 5).
    """
    rng = np.random.default_rng(seed)
    inits = [_weight(rng, "conv_W", (4, 3, 3, 3)), _weight(rng, "conv_B", (4,)),
             _weight(rng, "fc_W", (5, 64), 0.2), _weight(rng, "fc_B", (5,))]
    weight_inputs = [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in inits]
    graph = helper.make_graph(
        _conv_relu_gemm_nodes("old", "old_input"), "old_style_initializers",
        [helper.make_tensor_value_info("old_input", FLOAT, [1, 3, 8, 8]), *weight_inputs],
        [helper.make_tensor_value_info("output", FLOAT, [1, 5])], initializer=inits,
    )
    return _model(graph, opset, ir_version=3)


def constant_of_shape_weights(seed: int = 0) -> onnx.ModelProto:
    """Weights produced inside the graph by ConstantOfShape (opset 13), as some exporters emit.

    out = (x * ConstantOfShape(Shape(x), 1.0)) @ ConstantOfShape([8, 4], 0.5) * scale + bias: the
    first from the input's runtime shape, the second from a Constant shape tensor.
    Input "cos_input" (2, 8) -> (2, 4).
    """
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Constant", [], ["w_shape"], name="cos_w_shape",
                         value=numpy_helper.from_array(np.array([8, 4], np.int64))),
        helper.make_node("ConstantOfShape", ["w_shape"], ["matmul_W"], name="cos_weight",
                         value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Shape", ["cos_input"], ["x_shape"], name="cos_x_shape"),
        helper.make_node("ConstantOfShape", ["x_shape"], ["ones"], name="cos_ones",
                         value=numpy_helper.from_array(np.array([1.0], np.float32))),
        helper.make_node("Mul", ["cos_input", "ones"], ["x1"], name="cos_mask"),
        helper.make_node("MatMul", ["x1", "matmul_W"], ["mm"], name="cos_matmul"),
        helper.make_node("Mul", ["mm", "scale"], ["scaled"], name="cos_scale"),
        helper.make_node("Add", ["scaled", "bias"], ["output"], name="cos_bias"),
    ]
    graph = helper.make_graph(
        nodes, "constant_of_shape_weights", [helper.make_tensor_value_info("cos_input", FLOAT, [2, 8])],
        [helper.make_tensor_value_info("output", FLOAT, [2, 4])],
        initializer=[_weight(rng, "scale", (4,)), _weight(rng, "bias", (4,))],
    )
    return _model(graph, 13)


def symbolic_batch(opset: int = 13, seed: int = 0) -> onnx.ModelProto:
    """Conv+Relu whose batch dim is symbolic: input "sym_input" ("N", 3, 16, 16) -> ("N", 4, 16, 16)."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["sym_input", "conv_W", "conv_B"], ["conv"], pads=[1, 1, 1, 1], name="sym_conv"),
        helper.make_node("Relu", ["conv"], ["output"], name="sym_relu"),
    ]
    graph = helper.make_graph(
        nodes, "symbolic_batch", [helper.make_tensor_value_info("sym_input", FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("output", FLOAT, ["N", 4, 16, 16])],
        initializer=[_weight(rng, "conv_W", (4, 3, 3, 3)), _weight(rng, "conv_B", (4,))],
    )
    return _model(graph, opset)


def unsupported_op(seed: int = 0) -> onnx.ModelProto:
    """Relu -> Det -> Add (opset 13); the Det node, named UNSUPPORTED_NODE_NAME, has no TVM converter.

    onnxruntime runs it, so a test can confirm the model itself is valid.
    Input "unsup_input" (2, 3, 3) -> (2,).
    """
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Relu", ["unsup_input"], ["relu"], name="unsup_relu"),
        helper.make_node(UNSUPPORTED_OP_TYPE, ["relu"], ["det"], name=UNSUPPORTED_NODE_NAME),
        helper.make_node("Add", ["det", "bias"], ["output"], name="unsup_add"),
    ]
    graph = helper.make_graph(
        nodes, "unsupported_op", [helper.make_tensor_value_info("unsup_input", FLOAT, [2, 3, 3])],
        [helper.make_tensor_value_info("output", FLOAT, [2])], initializer=[_weight(rng, "bias", (2,))],
    )
    return _model(graph, 13)


def opset_model(opset: int, seed: int = 0) -> onnx.ModelProto:
    """Conv -> Relu -> ReduceMean -> Squeeze -> Gemm built with the op forms valid at `opset` (7..21).

    Squeeze takes `axes` as an attribute before opset 13 and as an input from 13; ReduceMean
    likewise switches at 18, so the importer's version dispatch is exercised both ways.
    Input "opset{N}_input" (1, 3, 8, 8) -> (1, 5).
    """
    if opset not in OPSETS:
        raise ValueError(f"opset {opset} is outside the supported range; choose from {OPSETS[0]}..{OPSETS[-1]}")
    rng = np.random.default_rng(seed)
    inp = f"opset{opset}_input"
    inits = [_weight(rng, "conv_W", (4, 3, 3, 3)), _weight(rng, "conv_B", (4,)),
             _weight(rng, "fc_W", (5, 4)), _weight(rng, "fc_B", (5,))]
    axes = np.array([2, 3], np.int64)
    nodes = [
        helper.make_node("Conv", [inp, "conv_W", "conv_B"], ["conv"], pads=[1, 1, 1, 1], name="op_conv"),
        helper.make_node("Relu", ["conv"], ["relu"], name="op_relu"),
    ]
    if opset >= 18:
        inits.append(numpy_helper.from_array(axes, "reduce_axes"))
        nodes.append(helper.make_node("ReduceMean", ["relu", "reduce_axes"], ["mean"], keepdims=1, name="op_mean"))
    else:
        nodes.append(helper.make_node("ReduceMean", ["relu"], ["mean"], axes=axes.tolist(), keepdims=1, name="op_mean"))
    if opset >= 13:
        inits.append(numpy_helper.from_array(axes, "squeeze_axes"))
        nodes.append(helper.make_node("Squeeze", ["mean", "squeeze_axes"], ["pooled"], name="op_squeeze"))
    else:
        nodes.append(helper.make_node("Squeeze", ["mean"], ["pooled"], axes=axes.tolist(), name="op_squeeze"))
    nodes.append(helper.make_node("Gemm", ["pooled", "fc_W", "fc_B"], ["output"], transB=1, name="op_gemm"))
    graph = helper.make_graph(
        nodes, f"opset{opset}_model", [helper.make_tensor_value_info(inp, FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", FLOAT, [1, 5])], initializer=inits,
    )
    return _model(graph, opset)


# name -> zero-argument builder, for tests and scripts that sweep every case
CASES: dict[str, Callable[[], onnx.ModelProto]] = {
    "old_style_initializers_as_inputs": old_style_initializers_as_inputs,
    "constant_of_shape_weights": constant_of_shape_weights,
    "symbolic_batch": symbolic_batch,
    "unsupported_op": unsupported_op,
    **{f"opset{o}": (lambda o=o: opset_model(o)) for o in (7, 9, 11, 13, 17, 21)},
}


def user_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (old-style models also list weights as inputs)."""
    weights = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in weights]


def input_shapes(model: onnx.ModelProto, batch: int = 1) -> dict[str, list[int]]:
    """Concrete shape of each user input, with any symbolic (dim_param) dimension set to `batch`."""
    return {
        i.name: [d.dim_value if d.HasField("dim_value") else batch for d in i.type.tensor_type.shape.dim]
        for i in user_inputs(model)
    }


def example_inputs(model: onnx.ModelProto, seed: int = 0, batch: int = 1) -> dict[str, np.ndarray]:
    """Seeded float32 N(0, 1) inputs for `model`, keyed by input name (symbolic dims -> `batch`)."""
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in input_shapes(model, batch).items()}
