"""Data layout of convolutions: NCHW (as imported) or NHWC (channels innermost, for SIMD over channels).

Tuned convs run faster in NHWC on x86-64 (python -m examples.benchmark: MobileNetV2 7.5 ms NHWC
against 12.6 ms NCHW; ResNet-18 41 ms NHWC direct against 50 ms NCHW even with Winograd).

Blocked NCHW{c}c layouts are not offered here: Relax's ConvertLayout cannot infer conv2d in them (in
TVM 0.27 it fails with "Layouts must have the same size"); blocking inside kernels is the job of
MetaSchedule's layout rewrite (weight prepacking) during tuning.

Relax's ConvertLayout raises instead of leaving an op behind when an op's layout rule is wrong (TVM
0.27, src/relax/op/...): `relax.stack` names its new axis "S", so whatever reads a stacked tensor
fails ("can't find S in source layout ABCDE": ONNX Sum/Max/Min/Mean as imported); `relax.nn.dropout`
(and any other tuple-returning op but split) gets the unary-elementwise rule, which gives its tuple a
single layout ("Expected nested to match tuple": SqueezeNet's and GoogLeNet's Dropout in old
exports). Here such calls are wrapped in private functions, which ConvertLayout treats as unknown ops
(their tensors go back to the original layout), and inlined again afterwards. Variadic reductions are
first rewritten as binary ops (passes/variadic.py), which do follow the layout. Any other call that
makes ConvertLayout fail is found by bisection and kept in the original layout the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import tvm
from tvm import relax

from compiler.errors import EdgecError
from passes.clip import clip_as_min_max
from passes.variadic import variadic_as_binary

# data and kernel layouts of conv2d per choice; NCHW is the imported form, so it needs no rewrite
LAYOUTS: dict[str, list[str] | None] = {"NCHW": None, "NHWC": ["NHWC", "OHWI"]}


@dataclass(frozen=True)
class LayoutConfig:
    layout: str = "NCHW"
    chosen_by: str = "--layout"  # or "preset" (for the manifest)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise EdgecError(f"unknown --layout '{self.layout}'; choose from: {', '.join(LAYOUTS)}")


def convert_layout(config: LayoutConfig) -> tvm.transform.Pass:
    """Rewrite conv2d, and the elementwise ops and pools around it, into `config.layout`.

    Needs: weights bound as constants, so that weight transposes fold away at compile time.
    Guarantees: every conv2d uses the requested data/kernel layout; clamps are `relax.maximum/minimum`
    (passes/clip.py), so that the layout passes through activations such as ReLU6; layout transforms
    remain only at the graph's edges and where an op cannot follow; the function's inputs and
    outputs keep their imported layout and shapes; numerics are unchanged.
    """
    layouts = LAYOUTS[config.layout]
    if layouts is None:
        return tvm.transform.Sequential([], name="convert_layout")
    return tvm.transform.Sequential(
        # a binding of one variable to another sends its value back to the original layout in
        # ConvertLayout: CanonicalizeBindings removes those aliases (the variadic rewrite leaves some)
        [clip_as_min_max(), variadic_as_binary(), relax.transform.CanonicalizeBindings(),
         relax.transform.DeadCodeElimination(), convert_layout_or_keep({"relax.nn.conv2d": layouts}),
         relax.transform.FoldConstant(), relax.transform.DeadCodeElimination()],
        name="convert_layout",
    )


# What a layout rule raises inside ConvertLayout (ICHECK failures are InternalErrors, a RuntimeError;
# array and map accesses raise IndexError and KeyError). Only ConvertLayout's own call is guarded.
_LAYOUT_ERRORS = (RuntimeError, ValueError, IndexError, KeyError, TypeError, AttributeError)
# Bisection rounds before giving up on converting a module (each round keeps at least one more call)
_MAX_ROUNDS = 32
_log = logging.getLogger("edgec.layout")

# A binding is named by its function and the index of its op call among that function's op-call
# bindings in visiting order
Key = tuple[str, int]


def convert_layout_or_keep(desired: dict[str, list[str]]) -> tvm.transform.Pass:
    """Relax's ConvertLayout with `desired`, keeping in their original layout the calls it cannot convert.

    Needs: nothing. Guarantees: never fails on a layout rule; calls whose rule is known to be wrong
    (`_keeps_layout`) and calls found by bisection to make ConvertLayout fail stay in the imported
    layout, with transposes around them; everything else is what ConvertLayout makes of it.
    """

    def transform(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        convert = relax.transform.ConvertLayout(desired)
        index = _op_calls(mod)
        calls = index.calls
        keep = {key for key, call in calls.items() if _keeps_layout(call)}
        for _ in range(_MAX_ROUNDS):
            converted = _try_convert(mod, keep, convert)
            if converted is not None:
                if keep:
                    _log.info("kept in the original layout: %s", ", ".join(sorted({calls[k].op.name for k in keep})))
                return converted
            failing = _failing_call(mod, index, keep, convert) - keep
            if not failing:  # ConvertLayout fails even with every call kept: not a layout rule's fault
                break
            keep |= failing
        _log.warning("the model keeps its imported layout: ConvertLayout failed with %d calls kept", len(keep))
        return mod

    return tvm.transform.module_pass(transform, opt_level=0, name="convert_layout_or_keep")


def _keeps_layout(call: relax.Call) -> bool:
    """Calls whose layout rule in TVM 0.27 is known to break ConvertLayout (see the module docstring)."""
    if call.op.name == "relax.stack":
        return True
    return isinstance(call.ty, relax.TupleType) and call.op.name != "relax.split"


def _try_convert(mod: tvm.IRModule, keep: set[Key], convert: tvm.transform.Pass) -> tvm.IRModule | None:
    wrapped, originals = _wrap(mod, keep)
    try:
        converted = convert(wrapped)
    except _LAYOUT_ERRORS:
        return None
    return _unwrap(converted, originals)


def _failing_call(mod: tvm.IRModule, index: _Index, keep: set[Key], convert: tvm.transform.Pass) -> set[Key]:
    """The first call (in binding order) that makes ConvertLayout fail, and the calls producing its
    arguments (a bad output layout fails in the consumer: keeping the consumer alone is not enough).

    Bisection over k: ConvertLayout of the module whose calls from the k-th on are all kept
    succeeds for k = 0 and fails for k = len(calls).
    """
    order = list(index.calls)
    good, bad = 0, len(order)
    while bad - good > 1:
        mid = (good + bad) // 2
        if _try_convert(mod, keep | set(order[mid:]), convert) is None:
            bad = mid
        else:
            good = mid
    culprit = order[bad - 1]
    return {culprit, *_producers(index, culprit)}


@dataclass
class _Index:
    """The module's op-call bindings numbered in visiting order, and where each variable comes from."""

    calls: dict[Key, relax.Call]
    defined_by: dict[relax.Var, Key]  # variable -> the op call bound to it
    tuples: dict[relax.Var, relax.Tuple]  # variable -> the tuple bound to it


def _op_calls(mod: tvm.IRModule) -> _Index:
    index = _Index({}, {}, {})

    def record(_builder, key: Key, call: relax.Call, var: relax.Var) -> relax.Expr:
        index.calls[key] = call
        index.defined_by[var] = key
        return call

    _rewrite_op_calls(mod, record, index.tuples)
    return index


def _is_op_call(expr: relax.Expr) -> bool:
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op)


def _producers(index: _Index, key: Key) -> set[Key]:
    """The op calls that define the variables `key`'s call reads (through tuples too)."""
    found: set[Key] = set()

    def visit(arg: relax.Expr) -> None:
        if isinstance(arg, relax.Tuple):
            for field in arg.fields:
                visit(field)
        elif arg in index.defined_by:
            found.add(index.defined_by[arg])
        elif arg in index.tuples:
            visit(index.tuples[arg])

    for arg in index.calls[key].args:
        visit(arg)
    return found


# Argument types a wrapper function can take as parameters (others, rare, leave their call unwrapped)
_WRAPPABLE_ARGS = (relax.TensorType, relax.TupleType, relax.ShapeType)


def _wrap(mod: tvm.IRModule, keep: set[Key]) -> tuple[tvm.IRModule, dict[str, relax.Call]]:
    """`mod` with each call in `keep` replaced by a call to a private function holding just that call.

    ConvertLayout has no rule for calls of functions: their arguments go back to the original layout.
    Returns the module and, per wrapper name, the call it holds.
    """
    if not keep:
        return mod, {}
    originals: dict[str, relax.Call] = {}

    def replace(builder: relax.BlockBuilder, key: Key, call: relax.Call, _var: relax.Var) -> relax.Expr:
        if key not in keep or not all(isinstance(arg.ty, _WRAPPABLE_ARGS) for arg in call.args):
            return call
        params = [relax.Var(f"arg{i}", arg.ty) for i, arg in enumerate(call.args)]
        inner = relax.BlockBuilder()
        with inner.function("keep_layout", params, private=True):
            inner.emit_func_output(relax.Call(call.op, params, call.attrs, call.ty_args))
        name = f"keep_layout_{key[0]}_{key[1]}"
        gvar = builder.add_func(inner.get()["keep_layout"], name)
        originals[gvar.name_hint] = call
        return relax.Call(gvar, list(call.args))

    return _rewrite_op_calls(mod, replace), originals


def _unwrap(mod: tvm.IRModule, originals: dict[str, relax.Call]) -> tvm.IRModule:
    """Inline the wrappers of `_wrap` again (their arguments as ConvertLayout rewrote them)."""
    if not originals:
        return mod

    @relax.expr_functor.mutator
    class Inliner(relax.PyExprMutator):
        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = self.visit_expr_post_order(call)
            if isinstance(call.op, relax.GlobalVar) and call.op.name_hint in originals:
                original = originals[call.op.name_hint]
                return relax.Call(original.op, list(call.args), original.attrs, original.ty_args)
            return call

    inliner = Inliner(mod)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function) and gvar.name_hint not in originals:
            inliner.builder_.update_func(gvar, inliner.visit_expr(func))
    inlined = inliner.builder_.get()
    return tvm.IRModule({g: f for g, f in inlined.functions_items() if g.name_hint not in originals},
                        attrs=inlined.attrs, global_infos=inlined.global_infos)


def _rewrite_op_calls(mod: tvm.IRModule, replace: Callable[[relax.BlockBuilder, Key, relax.Call, relax.Var], relax.Expr],
                      tuples: dict[relax.Var, relax.Tuple] | None = None) -> tvm.IRModule:
    """Re-emit every function with each op-call binding's value replaced by `replace(builder, key,
    call, var)` (same variable, same type), keys numbered in visiting order; `tuples` gets the
    variables bound to tuples."""

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def __init__(self, mod: tvm.IRModule):
            super().__init__(mod)
            self.function = ""
            self.index = 0

        def visit_var_binding_(self, binding: relax.VarBinding) -> None:
            if not _is_op_call(binding.value):
                if tuples is not None and isinstance(binding.value, relax.Tuple):
                    tuples[binding.var] = binding.value
                super().visit_var_binding_(binding)
                return
            key = (self.function, self.index)
            self.index += 1
            value = replace(self.builder_, key, self.visit_expr(binding.value), binding.var)
            self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(value)))

    rewriter = Rewriter(mod)
    for gvar, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            rewriter.function, rewriter.index = gvar.name_hint, 0
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    return rewriter.builder_.get()


def conv_layouts(mod: tvm.IRModule) -> list[str]:
    """The data layout of every conv2d in `mod`, in visiting order (for reports and tests)."""
    found = []

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == "relax.nn.conv2d":
            found.append(str(expr.attrs.data_layout))

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found
