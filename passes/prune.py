"""Structured channel pruning: remove whole output channels of convolutions, and every tensor slice they feed.

The analysis gives every channel of every tensor a slot and unites the slots that must be pruned
together (a residual add unites its operands' channels, a concat offsets them, a depthwise conv or
an activation passes them through). Dense convolutions whose united channels meet nothing unknown
are grouped, ranked by weight norm and cut to `round((1 - ratio) * C)` channels per group; every
constant that indexes those channels (conv weights in and out, bias and scale constants, depthwise
weights and `groups`, the rows of the classifier's weight after a flatten) is sliced to match.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm import relax

from compiler.errors import EdgecError
from passes.relax_rewrite import constant_array

CRITERIA = ("l1", "l2")

# Ops whose output channel c depends only on input channel c (extra arguments are scalars).
_PASS_THROUGH = {
    "relax.nn.relu", "relax.clip", "relax.nn.silu", "relax.nn.gelu", "relax.nn.gelu_tanh", "relax.sigmoid",
    "relax.tanh", "relax.nn.leakyrelu", "relax.nn.softplus", "relax.nn.selu", "relax.negative", "relax.abs",
}
_POOLS = {"relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d"}
_REDUCTIONS = {"relax.mean", "relax.sum", "relax.max"}
_ELEMENTWISE_BINARY = {"relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum", "relax.minimum"}
_OUTPUT = "its channels reach the model output"


@tvm_ffi.register_error
class PruneError(EdgecError):
    """A pruning setting is out of range."""


@dataclass(frozen=True)
class PruneConfig:
    """Remove `ratio` of the output channels of every prunable convolution, ranked by `criterion`."""

    ratio: float
    criterion: str = "l1"

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, numbers.Real) or not 0 < self.ratio < 1:
            raise PruneError(f"--prune ratio must be in (0, 1), got {self.ratio}")
        if self.criterion not in CRITERIA:
            raise PruneError(f"--prune-criterion must be one of {', '.join(CRITERIA)}, got '{self.criterion}'")

    def to_json(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "criterion": self.criterion}

    def keep_count(self, channels: int) -> int:
        """How many of `channels` survive: round((1 - ratio) * C) (Python's round), at least one."""
        return max(1, round((1 - self.ratio) * channels))

    def norms(self, weight: np.ndarray) -> np.ndarray:
        """L1 or L2 norm of each output channel of an OIHW (or O x anything) weight."""
        flat = np.asarray(weight, dtype=np.float64).reshape(len(weight), -1)
        return np.abs(flat).sum(1) if self.criterion == "l1" else np.sqrt((flat * flat).sum(1))

    def select(self, scores: np.ndarray) -> np.ndarray:
        """Indices of the `keep_count` highest scores (ties: lower index first), in channel order."""
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        return np.sort(order[: self.keep_count(len(order))])


@dataclass(frozen=True)
class LayerPruning:
    name: str  # the conv's binding in the Relax function
    kind: str  # "conv2d" | "depthwise conv2d"
    channels_before: int
    channels_after: int
    kept: tuple[int, ...]  # indices of the surviving output channels, in order


@dataclass(frozen=True)
class LeftAlone:
    name: str
    channels: int
    reason: str


@dataclass(frozen=True)
class PruneReport:
    """What `prune_channels` does to a module.

    FLOPs are 2 x the multiply-adds of every NCHW conv2d and 2-D matmul (elementwise ops are not counted).
    """

    config: PruneConfig
    layers: tuple[LayerPruning, ...]
    left_alone: tuple[LeftAlone, ...]
    flops_before: int
    flops_after: int

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config.to_json(),
            "layers": [asdict(layer) for layer in self.layers],
            "left_alone": [asdict(layer) for layer in self.left_alone],
            "flops_before": self.flops_before,
            "flops_after": self.flops_after,
        }


def prune_channels(config: PruneConfig, on_report: Callable[[PruneReport], None] | None = None) -> tvm.transform.Pass:
    """Structured channel pruning of every Relax function.

    Needs: weights bound as constants and batch-norm folded (`simplify_for_inference`), NCHW static shapes.
    Guarantees: the model's inputs and outputs keep their shapes; a conv's channels are removed only
    where every tensor they reach is understood, and then consistently everywhere; the result is
    well-formed with re-inferred shapes. `on_report` receives what was pruned and left alone, and why
    (the same report as `plan_pruning`), e.g. for the manifest.
    """

    def transform(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        mod, plans = _plan(mod, config)
        if on_report is not None:
            on_report(_report(config, plans))
        for gvar, plan in plans.items():
            mod[gvar] = _Rewriter(mod, plan).visit_expr(mod[gvar])
        mod = tvm.transform.Sequential(
            [relax.transform.FoldConstant(), relax.transform.DeadCodeElimination(), relax.transform.Normalize()]
        )(mod)
        relax.analysis.well_formed(mod)
        return mod

    return tvm.transform.module_pass(transform, opt_level=0, name="prune_channels")


def plan_pruning(mod: tvm.IRModule, config: PruneConfig) -> PruneReport:
    """What `prune_channels(config)` does to `mod`, without changing it."""
    return _report(config, _plan(mod, config)[1])


def _report(config: PruneConfig, plans: dict[tvm.ir.GlobalVar, _Plan]) -> PruneReport:
    layers = tuple(layer for plan in plans.values() for layer in plan.layers)
    left_alone = tuple(layer for plan in plans.values() for layer in plan.left_alone)
    before = sum(plan.flops(after=False) for plan in plans.values())
    after = sum(plan.flops(after=True) for plan in plans.values())
    return PruneReport(config, layers, left_alone, before, after)


def _plan(mod: tvm.IRModule, config: PruneConfig) -> tuple[tvm.IRModule, dict[tvm.ir.GlobalVar, _Plan]]:
    # Resolve tuple indexing of literal tuples (batch-norm and max-pool leave those) and drop dead code.
    mod = tvm.transform.Sequential([relax.transform.CanonicalizeBindings(), relax.transform.DeadCodeElimination()])(mod)
    plans = {}
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            plans[gvar] = _Graph(func).plan(config)
    return mod, plans


# ------------------------------------------------------------------------------------------- analysis


class _Slots:
    """Union-find over channel slots; a class holding a blocked slot must not be pruned (first reason kept)."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.reason: dict[int, str] = {}

    def new(self, count: int, reason: str | None = None) -> np.ndarray:
        ids = np.arange(len(self.parent), len(self.parent) + count)
        self.parent.extend(ids.tolist())
        if reason is not None:
            self.reason.update(dict.fromkeys(ids.tolist(), reason))
        return ids

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[ry] = rx
                if rx not in self.reason and ry in self.reason:
                    self.reason[rx] = self.reason[ry]

    def block(self, ids: np.ndarray, reason: str) -> None:
        for i in ids.tolist():
            self.reason.setdefault(self.find(i), reason)

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


@dataclass
class _Conv:
    name: str
    out_slots: np.ndarray
    weight: np.ndarray | None = None  # None: depthwise, pruned in step with its input
    scale: np.ndarray | None = None  # |per-channel scale| applied after it (an unfolded batch-norm)

    @property
    def dense(self) -> bool:
        return self.weight is not None


@dataclass
class _Edit:
    """How one call changes: constant arguments sliced along an axis, a reshape target, a depthwise groups."""

    slices: list[tuple[int, int, np.ndarray]] = field(default_factory=list)  # (arg index, axis, slots)
    reshape: tuple[tuple[int, ...], np.ndarray] | None = None  # (new shape, slots of dim 1)
    groups: np.ndarray | None = None  # depthwise: groups = kept slots


@dataclass
class _Plan:
    """Which slots survive, and everything needed to rewrite the function and report on it."""

    keep: np.ndarray  # per slot
    edits: dict[relax.Call, _Edit]
    layers: list[LayerPruning]
    left_alone: list[LeftAlone]
    flop_sites: list[tuple[int, np.ndarray | int, np.ndarray | int]]  # (unit, out, in): unit * |out| * |in|

    def kept(self, slots: np.ndarray | int) -> int:
        return slots if isinstance(slots, int) else int(self.keep[slots].sum())

    def flops(self, after: bool) -> int:
        size = self.kept if after else (lambda s: s if isinstance(s, int) else len(s))
        return sum(unit * size(out) * size(inp) for unit, out, inp in self.flop_sites)


class _Graph:
    """Channel slots of one function's tensors (axis 1), what couples them, and where they index constants."""

    def __init__(self, func: relax.Function) -> None:
        self.slots = _Slots()
        self.tensors: dict[relax.Var, np.ndarray] = {}
        self.tuples: dict[relax.Var, list[relax.Expr]] = {}
        self.edits: dict[relax.Call, _Edit] = {}
        self.convs: list[_Conv] = []
        self.left_alone: list[LeftAlone] = []
        self.flop_sites: list[tuple[int, np.ndarray | int, np.ndarray | int]] = []
        self.names: dict[str, int] = {}
        bindings = [b for block in func.body.blocks for b in block.bindings]
        self.users = _users(bindings)
        for param in func.params:
            self._fresh(param, f"its channels are coupled with the graph input '{param.name}'")
        for binding in bindings:
            self._bind(binding)
        self._block_var(func.body.body, _OUTPUT)

    # ---- walking the bindings

    def _bind(self, binding: relax.Binding) -> None:
        var, value = binding.var, binding.value
        if isinstance(binding, relax.MatchCast):
            self._opaque(var, value, "relax.match_cast")
        elif isinstance(value, relax.Var):
            self._alias(var, value)
        elif isinstance(value, relax.Tuple):
            self.tuples[var] = list(value.fields)
        elif isinstance(value, relax.TupleGetItem) and value.tuple_value in self.tuples:
            self._alias(var, self.tuples[value.tuple_value][value.index])
        elif isinstance(value, tvm.ir.GenericConst):
            pass
        elif isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
            rule = _RULES.get(value.op.name)
            reason = rule(self, var, value) if rule else "unknown"
            if reason is not None:
                self._opaque(var, value, value.op.name + ("" if reason == "unknown" else f" ({reason})"))
        else:
            self._opaque(var, value, type(value).__name__)

    def _alias(self, var: relax.Var, value: relax.Expr) -> None:
        if value in self.tensors:
            self.tensors[var] = self.tensors[value]
        elif value in self.tuples:
            self.tuples[var] = self.tuples[value]
        elif isinstance(value, relax.Var):
            self._opaque(var, value, "an untracked value")

    def _opaque(self, var: relax.Var, value: relax.Expr, what: str) -> None:
        """Something not understood: every channel it reads is frozen, and so is every channel it makes."""
        for used in relax.analysis.free_vars(value):
            self._block_var(used, f"its channels feed {what}, which pruning does not analyse")
        self._fresh(var, f"its channels are coupled with the output of {what}")

    def _fresh(self, var: relax.Var, reason: str) -> None:
        shape = _shape(var)
        if shape is not None and len(shape) >= 2:
            self.tensors[var] = self.slots.new(shape[1], reason)

    def _block_var(self, expr: relax.Expr, reason: str) -> None:
        if isinstance(expr, relax.Tuple):
            for f in expr.fields:
                self._block_var(f, reason)
        elif expr in self.tensors:
            self.slots.block(self.tensors[expr], reason)
        elif expr in self.tuples:
            for f in self.tuples[expr]:
                self._block_var(f, reason)

    def _name(self, var: relax.Var) -> str:
        count = self.names.get(var.name, 0)
        self.names[var.name] = count + 1
        return var.name if count == 0 else f"{var.name}_{count}"

    def _edit(self, call: relax.Call) -> _Edit:
        return self.edits.setdefault(call, _Edit())

    # ---- op rules: return None when understood, else a short reason (the op is then treated as opaque)

    def _conv2d(self, var: relax.Var, call: relax.Call) -> str | None:
        data, weight = call.args
        attrs, out, kernel, name = call.attrs, _shape(var), _shape(weight), self._name(var)
        if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "OIHW", "NCHW") or not out or not kernel:
            return self._leave(name, out[1] if out else 0, "conv2d layout is not NCHW/OIHW with static shapes")
        (cout, cin_per_group, kh, kw), w = kernel, constant_array(weight)
        unit = 2 * out[0] * out[2] * out[3] * kh * kw
        if w is None or data not in self.tensors:
            self.flop_sites.append((unit, cout, cin_per_group))
            what = "weight is not a bound constant" if w is None else "input channels are not tracked"
            return self._leave(name, cout, f"conv2d {what}")
        inputs = self.tensors[data]
        if attrs.groups == 1:
            slots = self.slots.new(cout)
            self.convs.append(_Conv(name, slots, w, self._scale(var, cout)))
            self._edit(call).slices += [(1, 0, slots), (1, 1, inputs)]
            self.flop_sites.append((unit, slots, inputs))
        elif attrs.groups == cout == len(inputs) and cin_per_group == 1:
            slots = inputs
            self.convs.append(_Conv(name, slots))
            edit = self._edit(call)
            edit.slices.append((1, 0, slots))
            edit.groups = slots
            self.flop_sites.append((unit, slots, 1))
        else:
            self.flop_sites.append((unit, cout, cin_per_group))
            return self._leave(name, cout, f"grouped conv2d (groups={attrs.groups}) is not supported")
        self.tensors[var] = slots
        return None

    def _leave(self, name: str, channels: int, reason: str) -> str:
        self.left_alone.append(LeftAlone(name, channels, reason))
        return reason

    def _pass_through(self, var: relax.Var, call: relax.Call) -> str | None:
        data, *rest = call.args
        if data not in self.tensors or any(isinstance(a, relax.Var) for a in rest) or _shape(var) != _shape(data):
            return "unsupported operands"
        self.tensors[var] = self.tensors[data]
        return None

    def _pool(self, var: relax.Var, call: relax.Call) -> str | None:
        if (call.attrs.layout, call.attrs.out_layout) != ("NCHW", "NCHW") or call.args[0] not in self.tensors:
            return "layout is not NCHW"
        self.tensors[var] = self.tensors[call.args[0]]
        return None

    def _reduce(self, var: relax.Var, call: relax.Call) -> str | None:
        data, shape = call.args[0], _shape(call.args[0])
        if data not in self.tensors or call.attrs.axis is None:
            return "reduces every axis"
        axes = {int(a) % len(shape) for a in call.attrs.axis}
        if axes & {0, 1}:
            return "reduces the channel axis"
        self.tensors[var] = self.tensors[data]
        return None

    def _squeeze(self, var: relax.Var, call: relax.Call) -> str | None:
        data, axes = call.args[0], call.attrs.axis
        if data not in self.tensors or axes is None or {int(a) % len(_shape(data)) for a in axes} & {0, 1}:
            return "removes the batch or channel axis"
        self.tensors[var] = self.tensors[data]
        return None

    def _binary(self, var: relax.Var, call: relax.Call) -> str | None:
        out = _shape(var)
        tensors = [(i, a) for i, a in enumerate(call.args) if isinstance(a, relax.Var)]
        constants = [(i, constant_array(a)) for i, a in enumerate(call.args) if constant_array(a) is not None]
        if not tensors or out is None or len(out) < 2 or any(a not in self.tensors or len(_shape(a)) != len(out) for _, a in tensors):
            return "operands are not channel tensors of the output's rank"
        if any(_shape(a)[1] != out[1] for _, a in tensors):
            return "broadcasts along the channel axis"
        slots = self.tensors[tensors[0][1]]
        if len(tensors) == 2:
            self.slots.union(slots, self.tensors[tensors[1][1]])
        elif len(constants) == 1:
            index, value = constants[0]
            axis = 1 - (len(out) - value.ndim)
            if axis >= 0 and value.shape[axis] == out[1] and out[1] > 1:
                self._edit(call).slices.append((index, axis, slots))
            elif axis >= 0 and value.shape[axis] != 1:
                return "constant does not broadcast per channel"
        else:
            return "unsupported operands"
        self.tensors[var] = slots
        return None

    def _reshape(self, var: relax.Var, call: relax.Call) -> str | None:
        data, source, out = call.args[0], _shape(call.args[0]), _shape(var)
        if data not in self.tensors or out is None or len(out) < 2 or out[0] != source[0]:
            return "mixes channels"
        inner = math.prod(source[2:])
        if out[1] == source[1] and math.prod(out[2:]) == inner:
            slots = self.tensors[data]  # only trailing axes change: (N, C, 1, 1) -> (N, C)
        elif len(out) == 2 and out[1] == source[1] * inner:
            slots = np.repeat(self.tensors[data], inner)  # flatten: channel c owns features c*HW .. c*HW+HW-1
        else:
            return "mixes channels"
        self._edit(call).reshape = (out, slots)
        self.tensors[var] = slots
        return None

    def _matmul(self, var: relax.Var, call: relax.Call) -> str | None:
        data, weight = call.args
        w, shape, out = constant_array(weight), _shape(data), _shape(var)
        if data not in self.tensors or w is None or w.ndim != 2 or len(shape) != 2 or out is None:
            if shape and out and len(shape) == 2 == len(out):  # still counted in the FLOPs
                self.flop_sites.append((2 * shape[0], out[1], shape[1]))
            return "is not features @ constant weight"
        self._edit(call).slices.append((1, 0, self.tensors[data]))
        self.flop_sites.append((2 * shape[0], int(w.shape[1]), self.tensors[data]))
        self._fresh(var, "its channels are coupled with the output of relax.matmul")
        return None

    def _concat(self, var: relax.Var, call: relax.Call) -> str | None:
        parts = call.args[0]
        fields = list(parts.fields) if isinstance(parts, relax.Tuple) else self.tuples.get(parts)
        out = _shape(var)
        if fields is None or out is None or any(f not in self.tensors or len(_shape(f)) != len(out) for f in fields):
            return "inputs are not channel tensors"
        axis = int(call.attrs.axis) % len(out)
        slots = [self.tensors[f] for f in fields]
        if axis == 1:
            self.tensors[var] = np.concatenate(slots)
        else:
            for other in slots[1:]:
                self.slots.union(slots[0], other)
            self.tensors[var] = slots[0]
        return None

    # ---- scores and decisions

    def _scale(self, var: relax.Var, channels: int) -> np.ndarray:
        """|per-channel scale| applied right after a conv (an unfolded batch-norm): ranks effective weights."""
        scale = np.ones(channels)
        while len(self.users.get(var, ())) == 1:
            user, call = self.users[var][0]
            op = call.op.name if isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op) else ""
            if op not in ("relax.add", "relax.subtract", "relax.multiply", "relax.divide"):
                break
            other = [a for a in call.args if not a.same_as(var)]
            vector = _channel_vector(constant_array(other[0]) if len(other) == 1 else None, len(_shape(var)), channels)
            if vector is None or (op == "relax.divide" and call.args[0].same_as(other[0])):
                break
            scale = scale * np.abs(vector) if op == "relax.multiply" else scale / np.abs(vector) if op == "relax.divide" else scale
            var = user
        return scale

    def plan(self, config: PruneConfig) -> _Plan:
        roots = self.slots.roots()
        keep_class = np.ones(len(roots), dtype=bool)
        left_alone = list(self.left_alone)
        for convs in self._groups(roots):
            classes = list(dict.fromkeys(roots[np.concatenate([c.out_slots for c in convs])].tolist()))
            reason = next((self.slots.reason[r] for r in classes if r in self.slots.reason), None)
            if reason is None and config.keep_count(len(classes)) == len(classes):
                reason = f"ratio {config.ratio} removes none of its {len(classes)} channels"
            if reason is not None:
                left_alone += [LeftAlone(c.name, len(c.out_slots), reason) for c in convs]
                continue
            keep_class[classes] = False
            keep_class[self._kept_classes(config, convs, classes, roots)] = True
        keep = keep_class[roots]
        alone = {a.name for a in left_alone}
        layers = [
            LayerPruning(
                c.name, "conv2d" if c.dense else "depthwise conv2d", len(c.out_slots), int(keep[c.out_slots].sum()),
                tuple(np.flatnonzero(keep[c.out_slots]).tolist()),
            )
            for c in self.convs
            if c.name not in alone and (c.dense or not keep[c.out_slots].all())
        ]
        return _Plan(keep, self.edits, layers, left_alone, self.flop_sites)

    def _groups(self, roots: np.ndarray) -> list[list[_Conv]]:
        """Dense convs whose output channels meet (residual adds, concats) are decided together."""
        dense = [c for c in self.convs if c.dense]
        convs = _Slots()
        convs.new(len(dense))
        owner: dict[int, int] = {}
        for index, conv in enumerate(dense):
            for root in roots[conv.out_slots].tolist():
                convs.union(np.array([owner.setdefault(root, index)]), np.array([index]))
        groups: dict[int, list[_Conv]] = {}
        for index, conv in enumerate(dense):
            groups.setdefault(convs.find(index), []).append(conv)
        return list(groups.values())

    @staticmethod
    def _kept_classes(config: PruneConfig, convs: list[_Conv], classes: list[int], roots: np.ndarray) -> list[int]:
        """Top classes by summed norm over the group's convs; every conv keeps at least one channel."""
        score = dict.fromkeys(classes, 0.0)
        for conv in convs:
            for root, s in zip(roots[conv.out_slots].tolist(), (config.norms(conv.weight) * conv.scale).tolist()):
                score[root] += s
        kept = {classes[i] for i in config.select(np.array([score[r] for r in classes])).tolist()}
        for conv in convs:
            own = roots[conv.out_slots].tolist()
            if not kept.intersection(own):
                kept.add(max(own, key=lambda r: score[r]))
        return sorted(kept)


_RULES = {
    "relax.nn.conv2d": _Graph._conv2d,
    "relax.reshape": _Graph._reshape,
    "relax.squeeze": _Graph._squeeze,
    "relax.matmul": _Graph._matmul,
    "relax.concat": _Graph._concat,
    **dict.fromkeys(_PASS_THROUGH, _Graph._pass_through),
    **dict.fromkeys(_POOLS, _Graph._pool),
    **dict.fromkeys(_REDUCTIONS, _Graph._reduce),
    **dict.fromkeys(_ELEMENTWISE_BINARY, _Graph._binary),
}


# ------------------------------------------------------------------------------------------- helpers


def _shape(expr: relax.Expr) -> tuple[int, ...] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return tuple(int(d) for d in ty.shape.values)
    except TypeError:  # a symbolic dimension
        return None


def _channel_vector(value: np.ndarray | None, rank: int, channels: int) -> np.ndarray | None:
    """A constant that broadcasts one value per channel against a rank-`rank` tensor, as a (C,) vector."""
    if value is None or value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if shape[1] not in (1, channels) or any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)).astype(np.float64)


def _users(bindings: list[relax.Binding]) -> dict[relax.Var, list[tuple[relax.Var, relax.Expr]]]:
    users: dict[relax.Var, list[tuple[relax.Var, relax.Expr]]] = {}
    for binding in bindings:
        for used in relax.analysis.free_vars(binding.value):
            users.setdefault(used, []).append((binding.var, binding.value))
    return users


# ------------------------------------------------------------------------------------------- rewrite


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    """Re-emits the function with sliced constants; the block builder re-infers every shape."""

    def __init__(self, mod: tvm.IRModule, plan: _Plan) -> None:
        super().__init__(mod)
        self.plan = plan

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        edit = self.plan.edits.get(call)
        if edit is None:
            return self.visit_expr_post_order(call)
        args = [self.visit_expr(a) for a in call.args]
        for index, axis, slots in edit.slices:
            mask = self.plan.keep[slots]
            if not mask.all():
                args[index] = relax.const(np.compress(mask, constant_array(args[index]), axis=axis))
        if edit.reshape is not None:
            shape, slots = edit.reshape
            args[1] = relax.ShapeExpr([shape[0], self.plan.kept(slots), *shape[2:]])
        if edit.groups is not None:
            a = call.attrs
            return relax.op.nn.conv2d(
                args[0], args[1], a.strides, a.padding, a.dilation, self.plan.kept(edit.groups),
                a.data_layout, a.kernel_layout, a.out_layout, a.out_dtype,
            )
        return relax.Call(call.op, args, call.attrs)
