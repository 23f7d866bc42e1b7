"""Shared test helpers: run a Relax module on the host CPU with TVM's default lowering."""

from __future__ import annotations

import numpy as np


def run_relax(mod, *inputs: np.ndarray) -> list[np.ndarray]:
    """Compile `mod` with TVM's default pipeline for the host and return its outputs as numpy arrays."""
    import tvm
    from tvm import relax

    executable = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    result = vm["main"](*[tvm.runtime.tensor(x) for x in inputs])
    values = [result] if isinstance(result, tvm.runtime.Tensor) else list(result)
    return [v.numpy() for v in values]


def op_names(mod) -> set[str]:
    """Names of every Relax operator called in `mod`'s Relax functions."""
    import tvm
    from tvm import relax

    names: set[str] = set()

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            names.add(expr.op.name)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return names
