"""Requantize in one step: an integer layer's epilogue folded to `clamp(round(acc x a + b))`.

After `quantize_int8` (or `lower_qdq_to_integer`) and the layout phase, an integer conv feeding
another integer layer ends in a chain of elementwise ops, each a pass over the output in registers:

    f = float(acc); f x rescale; - compensation; + bias; max(0); min(6)     (the layer)
    x (1 / next scale); round; + zero point; round; clip(0, 255); uint8     (the next layer's quantize)

Every step is affine with a positive slope, a clamp, or a rounding, so the chain is
`clamp(round(acc x a + b), low, high)` with per-channel `a`, `b` computed here: a clamp before a
non-decreasing map is the map's clamp after it (`f(clip(y, l, u)) = clip(f(y), f(l), f(u))`), and
adding an even integer after rounding (ties go to even) is adding it before. Twelve vector ops per output become seven,
which is most of the work of the shallow (16- to 32-deep) 1x1 convs of a MobileNet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from passes.relax_rewrite import constant_array, is_op_call

_INTEGER_OUTPUTS = ("int8", "uint8")


@dataclass
class _Affine:
    """`clamp(round?(x * scale + shift), low, high)`, arrays broadcast to the output's rank."""

    scale: np.ndarray
    shift: np.ndarray
    low: np.ndarray
    high: np.ndarray
    rounded: bool = False

    def multiply(self, factor: np.ndarray) -> bool:
        if self.rounded or np.any(factor <= 0):
            # a negative slope swaps the clamp's ends, a zero one turns an open end into NaN; an
            # integer rescaled is not integral
            return False
        self.scale, self.shift = self.scale * factor, self.shift * factor
        self.low, self.high = self.low * factor, self.high * factor
        return True

    def add(self, term: np.ndarray) -> bool:
        if self.rounded and not np.all(np.mod(term, 2) == 0):
            # round() sends ties to even: only an even integer commutes with it (a zero point of 128 does)
            return False
        self.shift, self.low, self.high = self.shift + term, self.low + term, self.high + term
        return True

    def clamp(self, low: np.ndarray | float, high: np.ndarray | float) -> bool:
        self.low = np.clip(self.low, low, high)
        self.high = np.clip(self.high, low, high)
        return True

    def round(self) -> bool:
        # round(clip(y, l, u)) = clip(round(y), round(l), round(u)); once rounded, y is integral and a
        # second round only rounds the bounds that came after the first
        self.low, self.high, self.rounded = np.round(self.low), np.round(self.high), True
        return True


def fold_requantize() -> tvm.transform.Pass:
    """Fold each integer layer's epilogue and the next layer's quantize into one affine map and clamp.

    Needs: the integer layers of `quantize_int8`/`lower_qdq_to_integer`, after the layout phase (clamps
    are `relax.maximum`/`relax.minimum`, passes/clip.py). Guarantees: every chain from a float cast of an
    int32 accumulator to an int8/uint8 cast through single-reader steps (multiply/add/subtract by
    constants with positive factors, even integers after a rounding, clamps, ReLU, rounding) becomes `astype(minimum(maximum(
    round(float(acc) x a + b), low), high))` with calibration values as tensor constants (kernels stay
    independent of the calibration); the integers are those of the chain up to float rounding (one
    ulp before the round); any other chain, and a model without one, is unchanged.
    """

    @tvm.transform.module_pass(opt_level=0, name="fold_requantize")
    def transform(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        plan = _plan(mod["main"])
        if not plan:
            return mod
        rewriter = _Fold(mod, plan)
        main = mod.get_global_var("main")
        rewriter.builder_.update_func(main, rewriter.visit_expr(mod["main"]))
        return relax.transform.DeadCodeElimination()(rewriter.builder_.get())

    return transform


def _plan(main: relax.Function) -> dict[relax.Var, tuple[relax.Var, _Affine, str]]:
    """integer cast -> (the accumulator's float cast, the folded map, the integer dtype)."""
    producers = {b.var: b.value for block in main.body.blocks for b in block.bindings}
    readers: dict[relax.Var, int] = {}

    def count(expr) -> None:
        if isinstance(expr, relax.Var):
            readers[expr] = readers.get(expr, 0) + 1
        elif isinstance(expr, relax.Call):
            for arg in expr.args:
                count(arg)
        elif isinstance(expr, relax.Tuple):
            for field in expr.fields:
                count(field)
        elif isinstance(expr, relax.TupleGetItem):
            count(expr.tuple_value)

    for value in producers.values():
        count(value)
    count(main.body.body)
    plan = {}
    for var, value in producers.items():
        if is_op_call(value, "relax.astype") and str(value.ty.dtype) in _INTEGER_OUTPUTS:
            chain = _chain(value.args[0], producers, readers)
            if chain is not None:
                start, steps = chain
                folded = _compose(steps, value.ty.ndim) if value.ty.ndim >= 0 else None
                if folded is not None:
                    plan[var] = (start, folded, str(value.ty.dtype))
    return plan


def _chain(tensor, producers, readers) -> tuple[relax.Var, list[relax.Call]] | None:
    """(float cast of an int32 accumulator, the calls after it up to `tensor`), each read once."""
    steps = []
    while isinstance(tensor, relax.Var) and readers.get(tensor, 0) == 1:
        value = producers.get(tensor)
        if is_op_call(value, "relax.astype") and str(value.args[0].ty.dtype) == "int32" \
                and str(value.ty.dtype) == "float32":
            return (tensor, steps[::-1]) if steps else None
        if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
            return None
        steps.append(value)
        tensor = value.args[0]
    return None


def _compose(steps: list[relax.Call], rank: int) -> _Affine | None:
    folded = _Affine(np.ones([1] * rank), np.zeros([1] * rank), np.full([1] * rank, -np.inf),
                     np.full([1] * rank, np.inf))
    for call in steps:
        name = call.op.name
        operand = _constant(call.args[1]) if len(call.args) > 1 else None
        if name == "relax.round":
            done = folded.round()
        elif name == "relax.nn.relu":
            done = folded.clamp(0.0, np.inf)
        elif name == "relax.clip":  # a module that did not go through the layout phase (passes/clip.py)
            low, high = _literal(call.args[1]), _literal(call.args[2])
            done = low is not None and high is not None and folded.clamp(low, high)
        elif operand is None:
            return None
        elif name == "relax.multiply":
            done = folded.multiply(operand)
        elif name == "relax.add":
            done = folded.add(operand)
        elif name == "relax.subtract":
            done = folded.add(-operand)
        elif name == "relax.maximum":
            done = folded.clamp(operand, np.inf)
        elif name == "relax.minimum":
            done = folded.clamp(-np.inf, operand)
        else:
            return None
        if not done:
            return None
    return folded if folded.rounded else None  # a cast without rounding truncates: not this form


def _literal(bound) -> float | None:
    """relax.clip's bound (an immediate), or None for a symbolic one."""
    return float(bound.value) if isinstance(bound, (tvm.tirx.IntImm, tvm.tirx.FloatImm)) else None


def _constant(expr) -> np.ndarray | None:
    array = constant_array(expr)
    return None if array is None else array.astype(np.float64)


@relax.expr_functor.mutator
class _Fold(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, plan: dict[relax.Var, tuple[relax.Var, _Affine, str]]):
        super().__init__(mod)
        self.plan = plan

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var not in self.plan:
            super().visit_var_binding_(binding)
            return
        start, folded, dtype = self.plan[binding.var]
        value = self.visit_expr(start)
        if not np.all(folded.scale == 1):
            value = relax.op.multiply(value, _tensor(folded.scale))
        if np.any(folded.shift != 0):
            value = relax.op.add(value, _tensor(folded.shift))
        value = relax.op.round(value)
        if np.any(np.isfinite(folded.low)):
            value = relax.op.maximum(value, _tensor(folded.low))
        if np.any(np.isfinite(folded.high)):
            value = relax.op.minimum(value, _tensor(folded.high))
        emit = self.builder_.emit if isinstance(binding.var, relax.DataflowVar) else self.builder_.emit_output
        self.set_var_remap(binding.var, emit(relax.op.astype(value, dtype), name_hint=binding.var.name))


def _tensor(values: np.ndarray) -> relax.Constant:
    """A float32 constant of the output's rank: never a 0-d scalar, which the fuser would bake into
    the kernel's code (a new kernel, with no tuning record, per calibration)."""
    return relax.const(values.astype(np.float32))
