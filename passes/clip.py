"""Clamps as two elementwise Relax ops, so that a layout change can pass through them.

Relax's ConvertLayout moves an op into a new layout only if the op has a layout rule.
`relax.clip` (PyTorch's ReLU6 and hardtanh) has none. ONNX's Clip is worse: the importer emits two
`call_tir`s to TE `maximum`/`minimum` kernels, which are opaque to the pass. Without this pass,
NHWC ends with a transpose pair around every ReLU6 of a MobileNet, and the activation no longer
fuses into its convolution. `relax.maximum`/`relax.minimum` with a scalar bound do have layout rules.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import relax, te, tirx, topi

from passes.relax_rewrite import rewrite_relax_functions


def clip_as_min_max() -> tvm.transform.Pass:
    """Rewrite every clamp as `relax.minimum(relax.maximum(x, lo), hi)`.

    Needs: nothing; the ONNX importer's clip bounds may still be variables.
    Guarantees: no `relax.clip` remains; a `call_tir` remains only if its kernel is not a TE
    maximum/minimum of a tensor and a 0-d bound; numerics are unchanged (the same max/min as before).
    Kernels are left in the module for DeadCodeElimination to remove.
    """

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def __init__(self, mod: tvm.IRModule):
            super().__init__(mod)
            self.mod_ = mod

        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = self.visit_expr_post_order(call)
            if call.op == tvm.ir.Op.get("relax.clip"):
                x, lo, hi = call.args
                dtype = x.ty.dtype
                floored = self.builder_.emit(relax.op.maximum(x, _scalar(lo, dtype)))
                return relax.op.minimum(floored, _scalar(hi, dtype))
            if call.op == tvm.ir.Op.get("relax.call_tir"):
                kernel, args = call.args[0], call.args[1]
                if isinstance(kernel, tvm.ir.GlobalVar) and isinstance(args, relax.Tuple) and len(args.fields) == 2:
                    clamp = _te_clamp(self.mod_[kernel], list(args.fields))
                    if clamp is not None:
                        return clamp(*args.fields)
            return call

    return rewrite_relax_functions(Rewriter, "clip_as_min_max")


def _scalar(bound: relax.Expr, dtype: str) -> relax.Expr:
    """relax.clip's bounds are float64 literals; the binary ops want a tensor of x's dtype."""
    return relax.const(float(bound.value), dtype) if isinstance(bound, (tirx.FloatImm, tirx.IntImm)) else bound


def _is_scalar_tensor(expr: relax.Expr) -> bool:
    ty = expr.ty
    return isinstance(ty, relax.TensorType) and ty.ndim == 0


def _te_clamp(func, args: list[relax.Expr]):
    """relax.op.maximum/minimum if `func` is exactly what `topi.maximum/minimum(x, bound)` builds for
    these arguments (a tensor and a 0-d bound), else None."""
    x, bound = args
    if not (_is_scalar_tensor(bound) and isinstance(x.ty, relax.TensorType) and x.ty.shape is not None):
        return None
    data = te.placeholder(list(x.ty.shape), x.ty.dtype, "A")
    scalar = te.placeholder((), bound.ty.dtype, "B")
    for te_op, relax_op in ((topi.maximum, relax.op.maximum), (topi.minimum, relax.op.minimum)):
        expected = te.create_prim_func([data, scalar, te_op(data, scalar)]).without_attr("global_symbol")
        if tvm_ffi.structural_equal(func, expected, map_free_vars=True):
            return relax_op
    return None
