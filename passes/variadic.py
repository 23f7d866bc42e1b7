"""Variadic elementwise ops (ONNX Sum/Max/Min/Mean) as chains of binary ops.

TVM's ONNX importer turns `Sum(a, b, c)` into `sum(stack([broadcast_to(a), ...]), axis=0)`. That
form defeats layout conversion: `relax.stack`'s layout rule names the new axis "S", a letter no
5-D layout has, so whatever reads the stacked tensor fails inside ConvertLayout ("can't find S in
source layout ABCDE"); and `broadcast_to` has no layout rule at all. Old exports (ResNet-50's
residual adds) are full of it. `a + b + c` has none of these problems, and fuses into the conv before it.
"""

from __future__ import annotations

import functools

import tvm
import tvm_ffi
from tvm import relax

from passes.relax_rewrite import rewrite_relax_functions

# reduction over the stacked axis -> the binary op that folds the same values
_BINARY = {"relax.sum": relax.op.add, "relax.max": relax.op.maximum, "relax.min": relax.op.minimum,
           "relax.mean": relax.op.add}


def variadic_as_binary() -> tvm.transform.Pass:
    """Rewrite `reduce(stack([broadcast_to(x_i, s) ...], axis=0), axis=0)` as `x_0 op x_1 op ...`.

    Needs: nothing. Guarantees: a sum/max/min/mean over axis 0 of a stack along axis 0 becomes binary
    ops (mean: their sum divided by the count); a `broadcast_to` that does not change its input's
    shape is dropped, others stay; numerics are unchanged up to float summation order. The stack is
    left for DeadCodeElimination.
    """

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = self.visit_expr_post_order(call)
            fields = self._stacked_fields(call)
            if fields is None:
                return call
            binary = _BINARY[call.op.name]
            # the last op is returned unbound, so that it binds to the reduction's own variable
            head = functools.reduce(lambda a, b: self.builder_.emit(binary(a, b)), fields[:-1])
            folded = binary(head, fields[-1])
            if call.op.name == "relax.mean":
                return relax.op.divide(self.builder_.emit(folded), relax.const(len(fields), call.ty.dtype))
            return folded

        def _stacked_fields(self, call: relax.Call) -> list[relax.Expr] | None:
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name in _BINARY):
                return None
            if call.attrs.keepdims or call.attrs.axis is None or [int(a) for a in call.attrs.axis] != [0]:
                return None
            stack = self._bound(call.args[0])
            if not (isinstance(stack, relax.Call) and stack.op == tvm.ir.Op.get("relax.stack")
                    and stack.attrs.axis is not None and int(stack.attrs.axis) == 0):
                return None
            tensors = self._bound(stack.args[0])
            if not isinstance(tensors, relax.Tuple):
                return None
            return [self._unbroadcast(field) for field in tensors.fields]

        def _bound(self, expr: relax.Expr) -> relax.Expr:
            """What a variable is bound to (one hop), or the expression itself."""
            if isinstance(expr, relax.Var):
                bound = self.lookup_binding(expr)
                return bound if bound is not None else expr
            return expr

        def _unbroadcast(self, field: relax.Expr) -> relax.Expr:
            value = self._bound(field)
            if isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.broadcast_to"):
                source = value.args[0]
                if tvm_ffi.structural_equal(source.ty, field.ty):
                    return source
            return field

    return rewrite_relax_functions(Rewriter, "variadic_as_binary")
