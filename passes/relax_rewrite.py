"""A module pass from a Relax expression rewriter (shared by the passes that rewrite calls in place)."""

from __future__ import annotations

from collections.abc import Callable

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
