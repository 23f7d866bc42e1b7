"""Default CPU schedules: every kernel without a tuning record gets MetaSchedule's own design space
with its decisions chosen analytically from the target's CPU shape, deterministically, unmeasured.

TVM 0.27's CPU pipeline schedules nothing: a kernel without a record runs as naive single-threaded
loops, 30-70x slower than onnxruntime. Relay-era TVM never shipped that: its topi schedules had
analytic fallback configs. edgec's defaults are the same idea in MetaSchedule's terms: the design
space that `edgec tune` explores (TVM's rules plus edgec's Winograd and depthwise rules, with the
same postprocessors) is generated for the kernel and replayed with every sampled decision replaced
by a choice made from the CPU shape (`targets.CpuShape`), so the default is a point of the tuning
space: tuning can start from it (compiler/tuning/search.py measures it first), and its trace is a record.
One step is added to the replayed trace: a reduction over its input's outer axes (a global mean in
NHWC) gets its reduction loops outside the channel loop, which no rule samples (`_channels_inside_reductions`).

The decisions, for a block tiled by MultiLevelTiling (conv2d of every kind, dense, matmul): the
innermost spatial loop (output channels in NHWC, columns of a GEMM) is the vector loop, tiled to
`vectors` registers of `f32_lanes`; the spatial loop before it with more than one iteration is the
row loop, tiled to as many rows as keep `rows x vectors` accumulators within the register file
(MLAS, XNNPACK and oneDNN size theirs the same way: accumulators <= registers - vectors - 1).
Small kernel-window loops run whole inside the register tile; the channel reduction is cut so
that its weight panel fits in L2. The outer spatial tiles are left to MetaSchedule's parallel
postprocessor (outer loops fused up to 16 jobs a core), the register tile to its vectorizer and
unroller. Producers (padding) are computed per outer tile, inside the channel loop only where the
tile needs no other channels. edgec's own rules (Winograd GEMM, depthwise) take, at each split they
sample, the largest tile the rule allows up to a quarter of the register file.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tvm
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms
from tvm.tirx.analysis import undefined_vars

from passes.dot_product import AUTO_TENSORIZE, design_space, int8_dot_product
from targets.registry import CpuShape

log = logging.getLogger("edgec.schedule")

SCHEDULED_ATTR = "tirx.is_scheduled"
# Unroll steps among MetaSchedule's candidates (0, 16, 64, 512): enough to unroll a register tile
_UNROLL_STEPS = 64
_MAX_ROWS = 16  # rows of a register tile: 112-wide rows at 28 spilled (2x slower than 14, MobileNetV2)
# Kernels of fewer operations than this run on one thread: waking the thread pool costs more than
# the split saves (the digits CNN pruned to a quarter, 2 threads on Zen 4: 9.4 us a run, 4.5 us serial)
SERIAL_FLOPS = 100_000
_MAX_VECTORS = 2  # column vectors of a register tile (MLAS AVX-512 12x32 = 2 vectors of 16)


@dataclass(frozen=True)
class ScheduleReport:
    """Which kernels this pass scheduled, which it found scheduled (by tuning records, or by TVM's
    own GPU defaults), and which stayed naive (no design space could be replayed)."""

    defaults: tuple[str, ...]
    scheduled_before: tuple[str, ...]
    naive: tuple[str, ...]
    dot_product: str | None = None  # the target's int8 dot-product instruction (passes/dot_product.py)
    dot_product_kernels: tuple[str, ...] = ()  # kernels (default or tuned) that run on it

    def to_json(self) -> dict[str, Any]:
        return {"edgec_default": list(self.defaults), "scheduled_before": list(self.scheduled_before),
                "naive": list(self.naive), "dot_product": self.dot_product,
                "dot_product_kernels": list(self.dot_product_kernels)}


def default_schedules(cpu: CpuShape | None, report: Callable[[ScheduleReport], None] | None = None) -> tvm.transform.Pass:
    """Schedule every CPU kernel that has no schedule yet with edgec's analytic default.

    Needs: kernels after TVM's legalization and fusion (and after tuning records applied, which mark
    theirs `tirx.is_scheduled`), inside the target's scope; `cpu` None (GPU targets, whose kernels
    TVM's dlight rules schedule) only reports. Guarantees: every PrimFunc it could schedule is
    marked scheduled; those whose design space could not be replayed keep TVM's loops and are
    listed as naive. Numerics are unchanged (schedules only reorder loops); weights of layout-free
    buffers get a `meta_schedule.layout_rewrite_preproc` block, which the prepack phase folds at
    compile time. Deterministic: same module and CPU shape, same schedules.
    """

    @tvm.transform.module_pass(opt_level=0, name="default_schedules")
    def transform(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        target = tvm.target.Target.current(allow_none=False)
        defaults, before, naive, updates = [], [], [], {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tvm.tirx.PrimFunc):
                continue
            if func.attrs.get(SCHEDULED_ATTR, False):
                before.append(gv.name_hint)
                continue
            scheduled = schedule_kernel(func, target, cpu) if cpu is not None else None
            if scheduled is None:
                naive.append(gv.name_hint)
                continue
            updates[gv] = scheduled
            defaults.append(gv.name_hint)
        if updates:
            mod = mod.clone()
            for gv, func in updates.items():
                mod[gv] = func
        if report is not None:
            dot = int8_dot_product(target) if cpu is not None else None
            on_dot = [gv.name_hint for gv, func in mod.functions_items()
                      if dot is not None and isinstance(func, tvm.tirx.PrimFunc) and dot.used_by(func)]
            report(ScheduleReport(tuple(sorted(defaults)), tuple(sorted(before)), tuple(sorted(naive)),
                                  dot.name if dot is not None else None, tuple(sorted(on_dot))))
        return mod

    return transform


def schedule_kernel(func: tvm.tirx.PrimFunc, target: tvm.target.Target, cpu: CpuShape) -> tvm.tirx.PrimFunc | None:
    """`func` with its default schedule applied and marked scheduled; None if it cannot be had."""
    sch = default_schedule(kernel_module(func), target, cpu)
    return None if sch is None else with_schedule(func, sch.mod["main"])


def with_schedule(func: tvm.tirx.PrimFunc, scheduled_main: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """The scheduled `main` of a kernel's module, back under the kernel's own name (or none, if it
    was private), marked scheduled."""
    scheduled = scheduled_main.with_attr(SCHEDULED_ATTR, True)
    if "global_symbol" in func.attrs:
        return scheduled.with_attr("global_symbol", func.attrs["global_symbol"])
    return scheduled.without_attr("global_symbol")


def kernel_module(func: tvm.tirx.PrimFunc) -> tvm.IRModule:
    """A kernel as MetaSchedule sees a task: alone in a module, named main. A deep copy: an
    `s_tir.Schedule` rewrites the statements of the PrimFunc it is given in place, so a schedule that
    fails half-way would otherwise leave the caller's kernel half-transformed (and unschedulable)."""
    return tvm.IRModule({"main": copy.deepcopy(func).with_attr("global_symbol", "main")})


def default_schedule(mod: tvm.IRModule, target: tvm.target.Target, cpu: CpuShape) -> s_tir.Schedule | None:
    """The default point of `mod`'s MetaSchedule design space, postprocessed; None if none applies.

    The target's own space first (what `edgec tune` explores). An int8 kernel takes the first space
    tensorized with the CPU's dot-product instruction (passes/dot_product.py), trying the
    half-width intrinsic's space where the full width does not divide its channels, before any
    space of int32 vector code; TVM's generic LLVM space is the last resort.
    """
    generic = ms.space_generator.PostOrderApply(sch_rules="llvm", postprocs="llvm", mutator_probs="llvm")
    generators = [design_space(target), design_space(target, narrow=True), generic]
    fallback = None
    for generator in filter(None, generators):
        if fallback is not None and not _integer(mod):
            break  # only int8 kernels have tensorized spaces to look further for
        context = ms.TuneContext(mod=mod, target=target, space_generator=generator,
                                 task_name="default", rand_state=0, num_threads=1)
        try:
            spaces = context.space_generator.generate_design_space(mod)
        except (RuntimeError, ValueError, TypeError) as err:
            log.debug("no design space: %s", err)
            return fallback
        for space in _by_preference(spaces):
            if fallback is not None and not _tensorized(space):
                continue
            sch = _replayed(mod, space, context.space_generator.postprocs, cpu)
            if sch is None or not _tensorized_as_planned(space, sch):
                continue
            if _tensorized(space):
                return sch
            fallback = sch
            break
    return fallback


def _integer(mod: tvm.IRModule) -> bool:
    return any(arg.dtype in ("int8", "uint8") for arg in ms.arg_info.ArgInfo.from_prim_func(mod["main"]))


def _replayed(mod: tvm.IRModule, space: s_tir.Schedule, postprocs: list, cpu: CpuShape) -> s_tir.Schedule | None:
    """`space`'s trace replayed on `mod` at edgec's decisions, then postprocessed as tuning does."""
    sch = s_tir.Schedule(copy.deepcopy(mod))  # a failed replay must not touch the next one's module
    try:
        space.trace.apply_to_schedule(sch, remove_postproc=True, decision_provider=_Decisions(sch, cpu))
        _channels_inside_reductions(sch)
        if _flops(mod) < SERIAL_FLOPS:
            _serial(sch)
        sch.enter_postproc()  # a replay of the trace without postprocessing stops here (tuning does)
        return sch if all(postproc.apply(sch) for postproc in postprocs) else None
    except (RuntimeError, ValueError, TypeError) as err:  # decisions this kernel's loops do not take
        log.debug("design space did not replay: %s", err)
        return None


def _flops(mod: tvm.IRModule) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(mod))
    except (RuntimeError, ValueError, TypeError):  # a kernel it cannot count: keep it parallel
        return math.inf


def _serial(sch: s_tir.Schedule) -> None:
    """Drop the parallel annotation MetaSchedule's rule put on the root block, so that the postprocessor
    vectorizes and unrolls the kernel but runs it on the calling thread."""
    root = sch.get_sblock("root")
    if "meta_schedule.parallel" in sch.get(root).annotations:
        sch.unannotate(root, "meta_schedule.parallel")


def _tensorized(space: s_tir.Schedule) -> bool:
    return any(inst.kind.name == "Blockize" for inst in space.trace.insts)


def _tensorized_as_planned(space: s_tir.Schedule, sch: s_tir.Schedule) -> bool:
    """A space that blockized for an intrinsic is only taken if the intrinsic replaced the block
    (otherwise its scalar loops are slower than the untensorized space)."""
    return not _tensorized(space) or any(inst.kind.name == "Tensorize" for inst in sch.trace.insts)


def _by_preference(spaces: list[s_tir.Schedule]) -> list[s_tir.Schedule]:
    """Design spaces best first: no rfactor (reductions stay serial per output), then the deepest
    fusion of the epilogue into the tiled loops (the output tile written while in cache)."""

    def rank(space: s_tir.Schedule) -> tuple[int, int, int]:
        insts = space.trace.insts
        rfactor = any(inst.kind.name == "RFactor" for inst in insts)
        order = next((list(inst.inputs) for inst in insts if inst.kind.name == "Reorder"), [])
        depth = -1
        for inst in insts:
            if inst.kind.name == "ReverseComputeAt":
                loop = inst.inputs[1]
                depth = max(depth, next((i for i, rv in enumerate(order) if rv.same_as(loop)), -1))
        return (int(not _tensorized(space)), int(rfactor), -depth)

    return sorted(spaces, key=rank)


class _Decisions:
    """MetaSchedule's decision provider: the analytic choice for each sampling instruction."""

    def __init__(self, sch: s_tir.Schedule, cpu: CpuShape):
        self.sch, self.cpu = sch, cpu
        self.plans: dict[str, dict[int, list[int]]] = {}  # tiled block -> iter var index -> tile

    def __call__(self, inst: Any, inputs: list, attrs: list, decision: Any) -> Any:
        kind = inst.kind.name
        if kind == "SamplePerfectTile":
            return self._tile(inputs[0], int(attrs[0]), int(attrs[1]))
        if kind == "SampleCategorical":
            candidates = [int(c) for c in attrs[0]]
            return candidates.index(_UNROLL_STEPS) if _UNROLL_STEPS in candidates else 0
        if kind == "SampleComputeLocation":
            return self._location(inputs[0])
        return decision

    # --------------------------------------------------------------------------- tiles

    def _tile(self, loop_rv: Any, parts: int, max_innermost: int) -> list[int]:
        loop = self.sch.get(loop_rv)
        realize = _block_realize_under(loop)
        extent = int(loop.extent)
        block = realize.block
        if "meta_schedule.tiling_structure" in block.annotations or AUTO_TENSORIZE in block.annotations:
            index = _iter_index(realize, loop.loop_var)
            # a block blockized for a dot-product intrinsic: each vector-loop iteration is one
            # intrinsic call, a whole vector of outputs
            lanes = 1 if AUTO_TENSORIZE in block.annotations else None
            plan = self.plans.setdefault(block.name_hint, _tiled_block_plan(block, self.cpu, lanes))
            tile = plan.get(index)
            if tile is not None and len(tile) == parts:
                return tile
        return _rule_tile(extent, parts, max_innermost, self.cpu)

    # ------------------------------------------------------------------ compute location

    def _location(self, block_rv: Any) -> int:
        """Producers (padding) at the deepest outer-tile loop of their consumer that still needs
        no other vector columns; elsewhere at the root (computed once, as written)."""
        consumers = self.sch.get_consumers(block_rv)
        if len(consumers) != 1:
            return -1
        consumer = consumers[0]
        annotations = self.sch.get(consumer).annotations
        if "meta_schedule.tiling_structure" not in annotations and AUTO_TENSORIZE not in annotations:
            return -1
        loops = [self.sch.get(rv) for rv in self.sch.get_loops(consumer)]
        block_realize = _block_realize_under(loops[0]) if loops else None
        if block_realize is None:
            return -1
        reads_vars = _vars_read_by(block_realize.block, self.sch.get(block_rv).name_hint)
        chosen = -1
        for position, loop in enumerate(loops):
            kind = _loop_iter_type(block_realize, loop.loop_var)
            if kind != tvm.tirx.IterVar.DataPar:
                break  # the first reduction loop ends the outer tiles
            if int(loop.extent) > 1 and _loop_feeds(block_realize, loop.loop_var, reads_vars):
                chosen = position
        return chosen


def _tiled_block_plan(block: Any, cpu: CpuShape, lanes: int | None = None) -> dict[int, list[int]]:
    """Tiles (SSRSRS: 4 levels per spatial loop, 2 per reduction loop) of every iter var."""
    spatial = [i for i, iv in enumerate(block.iter_vars) if iv.iter_type == tvm.tirx.IterVar.DataPar]
    reduction = [i for i, iv in enumerate(block.iter_vars) if iv.iter_type == tvm.tirx.IterVar.CommReduce]
    extent = {i: int(block.iter_vars[i].dom.extent) for i in (*spatial, *reduction)}
    lanes = lanes or cpu.f32_lanes * 4 // _dtype_bytes(block)
    plan: dict[int, list[int]] = {}
    columns, vectors = _columns(extent[spatial[-1]], lanes) if spatial else (1, 1)
    group = _group_width(block, spatial[-1]) if spatial else None
    if group is not None and group % columns:
        # a grouped conv: a vector across groups reads each lane's input from another group (a
        # gather, 10x slower); within one group every lane reads the same input (a broadcast)
        columns, vectors = _largest_divisor(group, lanes), 1
    rows_var = next((i for i in reversed(spatial[:-1]) if extent[i] > 1), None)
    budget = min(_MAX_ROWS, max(1, (cpu.vector_registers - vectors - 1) // vectors))
    rows = _largest_divisor(extent[rows_var], budget) if rows_var is not None else 1
    for i in spatial:
        inner = columns if i == spatial[-1] else rows if i == rows_var else 1
        plan[i] = [1, extent[i] // inner, 1, inner]
    for i in reduction:
        plan[i] = [1, extent[i]]
    if reduction:
        # the channel reduction (the last reduction var): a weight panel of window x k1 x columns in L2
        channel = reduction[-1]
        window = math.prod(extent[i] for i in reduction[:-1])
        panel = max(1, cpu.l2_bytes // 4 // (_dtype_bytes(block) * columns * window))
        inner = _largest_divisor(extent[channel], min(panel, 256))
        plan[channel] = [extent[channel] // inner, inner]
    return plan


def _group_width(block: Any, channel: int) -> int | None:
    """Output channels per group if `block` is a grouped conv: it reads its input at channel
    `c // width * width + rc` for the output channel var `c` (TOPI's group_conv2d)."""
    channel_var = block.iter_vars[channel].var
    widths = []

    def visit(node: Any) -> None:
        if isinstance(node, tvm.tirx.FloorDiv) and isinstance(node.b, tvm.tirx.IntImm) \
                and isinstance(node.a, tvm.tirx.Var) and node.a.same_as(channel_var):
            widths.append(int(node.b.value))
        for operand in ("a", "b"):  # index arithmetic: binary operators all the way down
            if hasattr(node, operand):
                visit(getattr(node, operand))

    for region in block.reads:
        for index in region.region:
            visit(index.min)
    return min(widths) if widths else None


def _columns(extent: int, lanes: int) -> tuple[int, int]:
    """(elements, vectors) of the vector loop's register tile."""
    if extent % lanes == 0:
        vectors = _largest_divisor(extent // lanes, _MAX_VECTORS)
        return lanes * vectors, vectors
    return _largest_divisor(extent, lanes), 1


def _rule_tile(extent: int, parts: int, max_innermost: int, cpu: CpuShape) -> list[int]:
    """edgec's rules sample (outer, inner) splits of their register tiles: the largest inner tile
    the rule allows, within the register file."""
    inner = _largest_divisor(extent, min(max_innermost, max(1, cpu.vector_registers // 4)))
    return [1] * (parts - 2) + [extent // inner, inner]


def _largest_divisor(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, max(cap, 1)) + 1) if n % d == 0)


def _dtype_bytes(block: Any) -> int:
    buffer = block.writes[0].source if block.writes else None
    return max(1, tvm.DataType(buffer.dtype).bits // 8) if buffer is not None else 4


def _block_realize_under(loop: Any) -> Any:
    """The first block under a loop nest (MetaSchedule samples tiles before splitting)."""
    node = loop
    while not isinstance(node, s_tir.SBlockRealize):
        node = node.body
        if isinstance(node, tvm.tirx.SeqStmt):
            node = node[0]
    return node


def _iter_index(realize: Any, loop_var: Any) -> int | None:
    for index, value in enumerate(realize.iter_values):
        if isinstance(value, tvm.tirx.Var) and value.same_as(loop_var):
            return index
    return None


def _loop_iter_type(realize: Any, loop_var: Any) -> int:
    """The iter type of the block var this (possibly split) loop feeds; spatial if it feeds none."""
    for iv, value in zip(realize.block.iter_vars, realize.iter_values):
        if _uses(value, loop_var):
            return iv.iter_type
    return tvm.tirx.IterVar.DataPar


def _loop_feeds(realize: Any, loop_var: Any, block_vars: set) -> bool:
    """Whether the loop feeds a block var that indexes the producer's buffer."""
    return any(_uses(value, loop_var) and iv.var in block_vars
               for iv, value in zip(realize.block.iter_vars, realize.iter_values))


def _vars_read_by(block: Any, producer: str) -> set:
    """Block vars used in the indices of the consumer's reads of the producer's buffer."""
    used: set = set()
    for region in block.reads:
        if not region.source.name.startswith(producer):
            continue
        for r in region.region:
            used.update(undefined_vars(r.min))
    return used


def _uses(expr: Any, var: Any) -> bool:
    return any(v.same_as(var) for v in undefined_vars(expr))


def _pool_rule(sch: s_tir.Schedule, block: Any) -> list[s_tir.Schedule]:
    """TOPI's pooling blocks name the rule "meta_schedule.pool_max"/"pool_avg", which TVM registers for
    no CPU: MetaSchedule logged a warning for each and left the window loops innermost, so no loop
    vectorized (ResNet-18's int8 3x3 max pool: 0.29 ms). Here the window loops move outside the
    innermost output loop (channels in NHWC), which the postprocessor then vectorizes, with the outer
    output loops parallel."""
    _reduction_outside_last_output_loop(sch, block)
    return [sch]


def _reduction_outside_last_output_loop(sch: s_tir.Schedule, block: Any) -> bool:
    """Move the reduction loops of a reduction nest as written ([output loops..., reduction loops...])
    outside its innermost output loop; False (nothing done) for any other nest."""
    realize = sch.get(block)
    loops = sch.get_loops(block)
    kinds = [iv.iter_type for iv in realize.iter_vars]
    data_par, reduce = tvm.tirx.IterVar.DataPar, tvm.tirx.IterVar.CommReduce
    split = kinds.index(reduce) if reduce in kinds else len(kinds)
    if len(loops) != len(kinds) or split in (0, len(kinds)) or any(k != data_par for k in kinds[:split]) \
            or any(k != reduce for k in kinds[split:]):
        return False
    sch.reorder(*loops[split:], loops[split - 1])
    return True


def _channels_inside_reductions(sch: s_tir.Schedule) -> None:
    """A reduction over the outer axes of its input (a global mean or sum over H and W in NHWC) as
    TVM writes it runs one scalar chain per channel, each read strided by the channel count: 0.26 ms
    for EfficientNet-B0's 112x112x32 squeeze-excitation mean (1.0 of its 12 ms went to means on a Zen 4).
    The reduction loops move outside the channel loop, which reads contiguously and vectorizes (with
    a batch of one nothing is left to run in parallel: one core adding vectors beat two adding scalars)."""
    for block in _reduction_blocks(sch):
        realize = sch.get(block)
        spatial = [iv for iv in realize.iter_vars if iv.iter_type == tvm.tirx.IterVar.DataPar]
        extent = spatial[-1].dom.extent if spatial else None
        if not isinstance(extent, tvm.tirx.IntImm) or int(extent) < 2:
            continue  # nothing to vectorize, or a symbolic extent
        channel = spatial[-1].var
        # every input read at one element along the innermost output var (so never along a reduced one)
        inputs = [r for r in realize.reads if not r.source.same_as(realize.writes[0].source)]
        if inputs and all(_innermost_index_is(r, channel) for r in inputs):
            _reduction_outside_last_output_loop(sch, block)


def _reduction_blocks(sch: s_tir.Schedule) -> list:
    """The blocks with reduction iter vars whose loops are still as written: one per iter var, in order."""
    found = []
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        block_node = sch.get(block)
        loops = [sch.get(loop) for loop in sch.get_loops(block)]
        realize = _block_realize_under(loops[-1]) if loops else None
        if realize is None or not realize.block.same_as(block_node):
            continue
        bindings = list(realize.iter_values)
        if any(iv.iter_type == tvm.tirx.IterVar.CommReduce for iv in block_node.iter_vars) \
                and len(loops) == len(bindings) and all(b.same_as(loop.loop_var) for b, loop in zip(bindings, loops)):
            found.append(block)
    return found


def _innermost_index_is(region: Any, var: Any) -> bool:
    if not region.region:
        return False  # a 0-d buffer
    last = region.region[-1]
    return isinstance(last.min, tvm.tirx.Var) and last.min.same_as(var) \
        and isinstance(last.extent, tvm.tirx.IntImm) and int(last.extent) == 1


# MetaSchedule looks a block's `schedule_rule` up as a global function per target key ("cpu": llvm)
for _rule in ("meta_schedule.pool_max", "meta_schedule.pool_avg"):
    tvm.register_global_func(f"s_tir.meta_schedule.cpu.{_rule}", _pool_rule, override=True)
