"""Pre-quantized ONNX models (QDQ): turn `conv2d(dequantize(quantize(x)), W)` into edgec's integer layers.

onnxruntime's static quantizer writes QuantizeLinear/DequantizeLinear pairs around float operators; the
importer keeps them as `relax.quantize`/`relax.dequantize`, and `simplify_for_inference` folds the
dequantized int8 weights into float constants. This pass reads each layer's activation scale and zero
point from the pair in front of it and emits the same integer layer as `quantize_int8`:

- zero point 0 (int8) -> int8 input; zero point -128 (int8) or 0 (uint8) -> uint8 input with zero
  point 0, which is the same integer grid shifted (x / s + 128 == u): exact;
- any other zero point -> the symmetric int8 grid that covers the pair's range (one extra rounding).

Weights are requantized per output channel; for weights the quantizer made symmetric per channel
(onnxruntime's default with per_channel=True) this gives back the same integers. A dequantize whose
input is not a quantize (QOperator models, after compiler/onnx_qoperator.py: dequantize(max_pool(q)))
is re-quantized on its own grid, exactly.

Every other Q/DQ pair (on a conv's output, a residual add, the model's output) becomes the clamp to
its grid's range, `clip(x, (qmin - zp) s, (qmax - zp) s)`, without the rounding. The clamp is what
the pair means besides rounding: onnxruntime drops a ReLU/ReLU6 in front of a pair whose range does
its work. Left as pairs, they split the kernels: each was an elementwise round trip of its own that
the layout phase wrapped in transposes (ResNet-18: 11.0 ms against 6.7 ms for the same layers
quantized by edgec). Without them the graph is the float model with its conv inputs quantized on
the model's own grids: the layers of `quantize_int8`, fused the same way. The outputs differ from
onnxruntime's by that rounding: at most half a grid step where each such pair stood.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import tvm
from tvm import relax

from passes.quantize import IntegerForm, find_layers, rewrite_to_integer
from passes.relax_rewrite import constant_array, is_op_call


@dataclass(frozen=True)
class QdqReport:
    layers: tuple[dict[str, Any], ...]  # name, input dtype and scale, and whether the grid was exact

    def to_json(self) -> dict[str, Any]:
        return {"integer_layers": len(self.layers), "layers": list(self.layers)}


def lower_qdq_to_integer(on_report: Callable[[QdqReport], None] | None = None,
                         form: IntegerForm = IntegerForm()) -> tvm.transform.Pass:
    """Rewrite every conv2d/matmul whose input is a Q/DQ pair (and whose weight is constant) to int8.

    Needs: the imported QDQ model after `simplify_for_inference` (weights folded to float constants).
    Guarantees: those layers compute int8/uint8 x int8 -> int32 with the model's own activation
    scales; every other Q/DQ pair on one grid is its clamp (no rounding); a model without such layers
    is returned unchanged; inputs and outputs keep their types.
    """

    @tvm.transform.module_pass(opt_level=0, name="lower_qdq_to_integer")
    def transform(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        producers = {b.var: b.value for block in mod["main"].body.blocks for b in block.bindings}
        grids, report = {}, []
        for layer in find_layers(mod):
            grid = _dequantized_grid(layer.input, producers)
            if grid is None:
                continue
            value_range, exact = _integer_grid(*grid[1:])
            grids[layer.name] = value_range
            report.append({"name": layer.name, "input_dtype": value_range[1], "input_scale": value_range[0],
                           "exact": exact})
        if on_report is not None:
            on_report(QdqReport(tuple(report)))
        if not grids:
            return mod
        # the pairs become clamps first, so that the layers' float readers (a residual branch) read
        # the integers dequantized, as with quantize_int8; layer names survive (same convs, same order)
        clamped = relax.transform.DeadCodeElimination()(_clamp_rounding_pairs(mod))
        plan = {layer: grids[layer.name] for layer in find_layers(clamped) if layer.name in grids}
        return rewrite_to_integer(clamped, plan, form)

    return transform


def _clamp_rounding_pairs(mod: tvm.IRModule) -> tvm.IRModule:
    """Each `dequantize(quantize(x))` on one per-tensor grid becomes `clip(x, low, high)` (see the module
    docstring); the quantize is left for DeadCodeElimination when nothing else reads it."""
    producers = {b.var: b.value for block in mod["main"].body.blocks for b in block.bindings}

    clamped: dict[relax.Var, tuple[float, float]] = {}  # tensor -> the range a clamp (or a max pool of one) keeps it in

    def within(tensor: relax.Var) -> tuple[float, float] | None:
        if tensor in clamped:
            return clamped[tensor]
        value = producers.get(tensor)
        if is_op_call(value, "relax.nn.max_pool2d") and isinstance(value.args[0], relax.Var):
            return within(value.args[0])  # a max of values in a range is in it
        return None

    @relax.expr_functor.mutator
    class Clamp(relax.PyExprMutator):
        def visit_var_binding_(self, binding: relax.VarBinding) -> None:
            grid = _dequantized_grid(binding.var, producers)
            if grid is None or grid[0].same_as(binding.var) or grid[3] not in ("int8", "uint8"):
                super().visit_var_binding_(binding)
                return
            source, scale, zero_point, dtype = grid
            info = np.iinfo(dtype)
            low, high = (info.min - zero_point) * scale, (info.max - zero_point) * scale
            clamped[binding.var] = (low, high)
            known = within(source)
            if known is not None and low <= known[0] and known[1] <= high and isinstance(binding.var, relax.DataflowVar):
                # e.g. a second pair on the same grid behind a max pool: the pool's output is in range already
                clamped[binding.var] = known
                self.set_var_remap(binding.var, self.visit_expr(source))
                return
            emit = self.builder_.emit if isinstance(binding.var, relax.DataflowVar) else self.builder_.emit_output
            # bounds as [1, ..., 1] tensors, not literals: the model's scales stay out of the kernels' code
            ones = [1] * source.ty.ndim
            floored = self.builder_.emit(relax.op.maximum(self.visit_expr(source), relax.const(np.full(ones, low, "float32"))))
            self.set_var_remap(binding.var, emit(relax.op.minimum(floored, relax.const(np.full(ones, high, "float32"))),
                                                 name_hint=binding.var.name))

    rewriter = Clamp(mod)
    main = mod.get_global_var("main")
    rewriter.builder_.update_func(main, rewriter.visit_expr(mod["main"]))
    return rewriter.builder_.get()


def _dequantized_grid(tensor: relax.Var, producers) -> tuple[relax.Var, float, int, str] | None:
    """(source, scale, zero point, integer dtype) when `tensor` is dequantize(q) with scalar constants.

    The source is x when q = quantize(x) on the same grid (the pair is skipped: x is quantized once,
    in the producing kernel); otherwise `tensor` itself, whose values lie on the grid, so quantizing
    it again gives q back exactly (QOperator models: dequantize(max_pool(q))).
    """
    value = producers.get(tensor)
    if not is_op_call(value, "relax.dequantize"):
        return None
    scale, zero_point = _scalar(value.args[1]), _scalar(value.args[2])
    if scale is None or zero_point is None:
        return None
    dtype = str(value.args[0].ty.dtype)
    quantize = producers.get(value.args[0])
    if (is_op_call(quantize, "relax.quantize") and isinstance(quantize.args[0], relax.Var)
            and _scalar(quantize.args[1]) == scale and _scalar(quantize.args[2]) == zero_point):
        return quantize.args[0], float(scale), int(zero_point), dtype
    return tensor, float(scale), int(zero_point), dtype


def _integer_grid(scale: float, zero_point: int, dtype: str) -> tuple[tuple[float, str], bool]:
    """edgec's (scale, dtype) for a Q/DQ grid, and whether it is the same grid."""
    if dtype == "int8" and zero_point == 0:
        return (scale, "int8"), True
    if (dtype == "int8" and zero_point == -128) or (dtype == "uint8" and zero_point == 0):
        return (scale, "uint8"), True
    low, high = (-128, 127) if dtype == "int8" else (0, 255)
    amax = scale * max(abs(low - zero_point), abs(high - zero_point))
    return (amax / 127, "int8"), False


def _scalar(expr) -> float | None:
    array = constant_array(expr)
    return array.item() if array is not None and array.size == 1 else None
