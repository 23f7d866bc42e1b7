"""Memory footprint of a compiled module: the weights its library holds and the activation memory
TVM's static memory plan allocates per inference.

Both read the Relax module edgec hands to `tvm.relax.build` (after the backend's finalize phase, whose
`StaticPlanBlockMemory` turned every intermediate tensor into a slice of a few reused storages).
For GPU targets both figures are device memory.
"""

from __future__ import annotations

import math

import tvm
import tvm_ffi
from tvm import relax
from tvm.ir.prim.expr import IntImm

# The source `peak_activation_bytes` reads, as the manifest names it
ACTIVATION_SOURCE = "TVM's static memory plan (alloc_storage in main)"
# Storage allocations (size first, in elements of the call's dtype) and tensors allocated on their own
_STORAGE_OPS = frozenset({"relax.memory.alloc_storage", "relax.vm.alloc_storage"})
_TENSOR_OPS = frozenset({"relax.builtin.alloc_tensor"})


def weights_bytes(mod: tvm.IRModule) -> int:
    """Bytes of the constants (bound weights, pre-packed layouts included) the module's Relax functions
    hold; each distinct constant counts once, however often (and in however many Relax expressions) it
    is used."""
    tensors: dict[tvm.runtime.Tensor, None] = {}  # keyed by the tensor object: a shared one counts once

    def visit(expr: relax.Expr) -> None:
        if isinstance(expr, tvm.ir.GenericConst) and isinstance(expr.value, tvm.runtime.Tensor):
            tensors[expr.value] = None

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return sum(_tensor_bytes(t.shape, t.dtype) for t in tensors)


def peak_activation_bytes(mod: tvm.IRModule) -> int | None:
    """Activation bytes `main` allocates per inference under TVM's static memory plan: every storage
    with a constant size (`alloc_storage`) plus tensors allocated outside a planned storage (outputs
    included, inputs and weights not). None when a size is symbolic (a dynamic shape)."""
    sizes: list[int | None] = []

    def visit(expr: relax.Expr) -> None:
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            if expr.op.name in _STORAGE_OPS or expr.op.name in _TENSOR_OPS:
                sizes.append(_allocation_bytes(expr))

    relax.analysis.post_order_visit(mod["main"], visit)
    return None if None in sizes else sum(sizes)


def _allocation_bytes(call: relax.Call) -> int | None:
    """Bytes of one allocation: its shape argument (the first) times its dtype argument's size."""
    shape = call.args[0]
    dtype = next((arg.value for arg in call.args if isinstance(arg, tvm.ir.GenericConst)
                  and isinstance(arg.value, tvm_ffi.dtype)), None)
    if not isinstance(shape, relax.ShapeExpr) or dtype is None:
        return None
    dims = [dim.value if isinstance(dim, IntImm) else None for dim in shape.values]
    return None if None in dims else _tensor_bytes(dims, dtype)


def _tensor_bytes(shape, dtype) -> int:
    """Bytes of a dense tensor (sub-byte dtypes packed, rounded up to whole bytes)."""
    dtype = tvm_ffi.dtype(str(dtype))
    return (math.prod(int(d) for d in shape) * dtype.bits * dtype.lanes + 7) // 8
