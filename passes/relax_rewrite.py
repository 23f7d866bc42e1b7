"""Shared by the Relax passes: a module pass from an expression rewriter, and the tests on bound values
they all make (is this a call of that operator; is this a constant tensor)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax


def rewrite_relax_functions(make_rewriter: Callable[[tvm.IRModule], relax.PyExprMutator], name: str) -> tvm.transform.Pass:
    """A pass named `name` that visits every Relax function of the module with one rewriter
    (`make_rewriter(mod)`, a `relax.PyExprMutator`) and returns its builder's module."""

    def transform(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rewriter = make_rewriter(mod)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        return rewriter.builder_.get()

    return tvm.transform.module_pass(transform, opt_level=0, name=name)


def is_op_call(value, name: str) -> bool:
    """Whether `value` is a call of the Relax operator `name` (e.g. "relax.nn.conv2d")."""
    return isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == name


def constant_array(expr) -> np.ndarray | None:
    """The value of a constant tensor, or None for anything else."""
    if isinstance(expr, tvm.ir.GenericConst) and isinstance(expr.ty, relax.TensorType):
        return expr.value.numpy()
    return None
