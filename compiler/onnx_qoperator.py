"""ONNX QOperator models (QLinearConv, QLinearMatMul, com.microsoft QGemm) rewritten into QDQ form.

TVM's ONNX importer reads QuantizeLinear/DequantizeLinear but not the fused quantized operators that
onnxruntime's QOperator format writes. Each of those is exactly `Q(op(DQ(x), DQ(w)) + DQ(bias))`
(the int32 bias has scale x_scale * w_scale and zero point 0), so it is rewritten into that form
before import; `passes/qdq.py` then gives those layers integer kernels like any QDQ model.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.errors import ModelImportError

_MICROSOFT = "com.microsoft"


def qoperators_as_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every QLinearConv / QLinearMatMul / QGemm replaced by its Q/DQ form (a copy if any)."""
    rewrites = {"QLinearConv": _qlinear_conv, "QLinearMatMul": _qlinear_matmul, "QGemm": _qgemm}
    if not any(node.op_type in rewrites for node in model.graph.node):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes = []
    for node in graph.node:
        rewrite = rewrites.get(node.op_type)
        if rewrite is None or (node.op_type == "QGemm" and node.domain != _MICROSOFT):
            nodes.append(node)
        else:
            nodes.extend(rewrite(node, _Builder(graph, initializers, node.name or node.output[0])))
    del graph.node[:]
    graph.node.extend(nodes)
    return copy


class _Builder:
    """Makes the replacement nodes of one quantized operator, with unique tensor names."""

    def __init__(self, graph: onnx.GraphProto, initializers: dict, prefix: str):
        self.graph, self.initializers, self.prefix = graph, initializers, prefix
        self.count = 0

    def name(self, what: str) -> str:
        self.count += 1
        return f"{self.prefix}/edgec_{what}_{self.count}"

    def dequantize(self, tensor: str, scale: str, zero_point: str | None, axis: int | None = None) -> onnx.NodeProto:
        inputs = [tensor, scale] + ([zero_point] if zero_point else [])
        kwargs = {"axis": axis} if axis is not None else {}
        return helper.make_node("DequantizeLinear", inputs, [self.name("dequantized")], name=self.name("dq"), **kwargs)

    def bias_scale(self, x_scale: str, w_scale: str) -> tuple[list[onnx.NodeProto], str]:
        """x_scale * w_scale, folded into an initializer when both are constants."""
        if x_scale in self.initializers and w_scale in self.initializers:
            value = numpy_helper.to_array(self.initializers[x_scale]) * numpy_helper.to_array(self.initializers[w_scale])
            name = self.name("bias_scale")
            init = numpy_helper.from_array(np.asarray(value, np.float32), name)
            self.graph.initializer.append(init)
            self.initializers[name] = init
            return [], name
        name = self.name("bias_scale")
        return [helper.make_node("Mul", [x_scale, w_scale], [name], name=self.name("mul"))], name


def _inputs(node: onnx.NodeProto, count: int) -> list[str | None]:
    names = list(node.input) + [""] * (count - len(node.input))
    return [name or None for name in names[:count]]


def _attributes(node: onnx.NodeProto, names: set[str]) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in names}


def _qlinear_conv(node: onnx.NodeProto, b: _Builder) -> list[onnx.NodeProto]:
    x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias = _inputs(node, 9)
    nodes = [b.dequantize(x, x_scale, x_zp), b.dequantize(w, w_scale, w_zp, axis=0)]
    conv_inputs = [nodes[0].output[0], nodes[1].output[0]]
    if bias is not None:
        scale_nodes, scale = b.bias_scale(x_scale, w_scale)
        nodes += scale_nodes + [b.dequantize(bias, scale, None, axis=0)]
        conv_inputs.append(nodes[-1].output[0])
    attrs = _attributes(node, {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"})
    conv_out = b.name("conv")
    nodes.append(helper.make_node("Conv", conv_inputs, [conv_out], name=b.name("conv"), **attrs))
    nodes.append(helper.make_node("QuantizeLinear", [conv_out, y_scale] + ([y_zp] if y_zp else []), [node.output[0]],
                                  name=b.name("q")))
    return nodes


def _qlinear_matmul(node: onnx.NodeProto, b: _Builder) -> list[onnx.NodeProto]:
    a, a_scale, a_zp, w, w_scale, w_zp, y_scale, y_zp = _inputs(node, 8)
    nodes = [b.dequantize(a, a_scale, a_zp), b.dequantize(w, w_scale, w_zp)]
    out = b.name("matmul")
    nodes.append(helper.make_node("MatMul", [nodes[0].output[0], nodes[1].output[0]], [out], name=b.name("matmul")))
    nodes.append(helper.make_node("QuantizeLinear", [out, y_scale] + ([y_zp] if y_zp else []), [node.output[0]],
                                  name=b.name("q")))
    return nodes


def _qgemm(node: onnx.NodeProto, b: _Builder) -> list[onnx.NodeProto]:
    a, a_scale, a_zp, w, w_scale, w_zp, bias, y_scale, y_zp = _inputs(node, 9)
    attrs = _attributes(node, {"alpha", "transA", "transB"})
    # the int32 bias is on scale alpha * a_scale * b_scale: dequantized with a_scale * b_scale, it takes alpha
    attrs["beta"] = attrs.get("alpha", 1.0)
    if attrs.get("transA", 0):
        raise ModelImportError(f"QGemm node '{node.name}' has transA=1, which edgec does not read; re-quantize the float model")
    nodes = [b.dequantize(a, a_scale, a_zp), b.dequantize(w, w_scale, w_zp, axis=0 if attrs.get("transB", 0) else 1)]
    gemm_inputs = [nodes[0].output[0], nodes[1].output[0]]
    if bias is not None:
        scale_nodes, scale = b.bias_scale(a_scale, w_scale)
        nodes += scale_nodes + [b.dequantize(bias, scale, None, axis=0)]
        gemm_inputs.append(nodes[-1].output[0])
    if y_scale is None:  # float output
        nodes.append(helper.make_node("Gemm", gemm_inputs, [node.output[0]], name=b.name("gemm"), **attrs))
        return nodes
    out = b.name("gemm")
    nodes.append(helper.make_node("Gemm", gemm_inputs, [out], name=b.name("gemm"), **attrs))
    nodes.append(helper.make_node("QuantizeLinear", [out, y_scale] + ([y_zp] if y_zp else []), [node.output[0]],
                                  name=b.name("q")))
    return nodes
