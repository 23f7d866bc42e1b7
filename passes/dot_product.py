"""int8 dot-product kernels: the CPU's dot-product instruction as a MetaSchedule tensor intrinsic, the
design space that tensorizes int8 conv2d/matmul with it, and the operand packing the intrinsic needs.

Which instruction a target gets (`int8_dot_product(target)`), from its LLVM features:

| target                      | instruction                      | intrinsic (C[n] += A[4] . B[n, 4]) |
|-----------------------------|----------------------------------|------------------------------------|
| x86 with AVX-512 VNNI       | vpdpbusd zmm, ymm (u8 x s8)      | 16 x 4, 8 x 4 (channels % 16 != 0) |
| x86 with AVX2               | vpmaddubsw + vpmaddwd ymm (u8 x s8) | 8 x 4                           |
| aarch64 with dotprod        | sdot (s8 x s8)                   | 4 x 4                              |
| aarch64 NEON                | smull + saddlp + addp (s8 x s8)  | 4 x 4                              |

TVM registers these for MetaSchedule's `MultiLevelTilingWithIntrin` (x86 VNNI, ARM), but two things
keep them from working on an edgec kernel: TVM 0.27's VNNI implementation calls `vpdpbusd` with the
operand types of LLVM < 19 (LLVM 22 rejects the module), so edgec registers a fixed one under the same
name; and the weight must be laid out with the intrinsic's [n, 4] block innermost, which MetaSchedule's
layout rewrite does only after tensorization. `TensorizedOperands`, a postprocessor run before
`RewriteTensorize`, packs such weights itself (a `layout_rewrite_preproc` block: the prepack phase
folds it at compile time) and keeps the vectorizer off the loops that wrap an intrinsic.

AVX2's `vpmaddubsw` adds two u8 x s8 products into a saturating int16: exact only while
2 x 255 x |w| <= 32767, so on AVX2 targets weights are quantized to 7 bits (|w| <= 63), as
onnxruntime's `reduce_range` does (`weight_levels`).
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
import types
from dataclasses import dataclass

import tvm
from tvm import s_tir, te
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.script import tirx as T
from tvm.target import codegen
from tvm.tirx.analysis import undefined_vars

log = logging.getLogger("edgec.schedule")

AUTO_TENSORIZE = "meta_schedule.auto_tensorize"
_AUTO_TENSORIZE_INIT = "meta_schedule.auto_tensorize_init"
LAYOUT_REWRITE_PREPROC = "meta_schedule.layout_rewrite_preproc"


@dataclass(frozen=True)
class DotProduct:
    """A CPU's int8 dot-product instruction, as edgec uses it."""

    name: str  # for the manifest: "vnni", "avx2", "sdot", "neon"
    intrinsic: str  # the registered TensorIntrin
    signed_activations: bool  # s8 x s8 (ARM) or u8 x s8 (x86)
    weight_levels: int  # weights quantize to [-levels, levels]
    add_rule: bool  # TVM's default rules lack it: edgec adds MultiLevelTilingWithIntrin
    narrow_intrinsic: str | None  # a half-width variant for output channels the full width does not divide
    llvm_intrinsic: str  # the LLVM intrinsic that marks a kernel using it
    # multiply-accumulates per instruction over a float32 FMA's, at the same vector width: what int8
    # saves in a kernel's inner loop (passes/quantize.py's Int8Payoff)
    speedup: float
    # outputs one call of its narrowest intrinsic computes: int8 convs and matmuls pad their output
    # channels to a multiple of it (passes/quantize.py's IntegerForm), which tensorizes
    output_channels: int

    def used_by(self, func: tvm.tirx.PrimFunc) -> bool:
        """Whether a scheduled kernel calls the instruction (a tensorized default or tuned record)."""
        # TVMScript prints the intrinsic by name (no TIR visitor is exposed to Python in TVM 0.27)
        return f'"{self.llvm_intrinsic}' in func.script()


# ------------------------------------------------------------------------------- intrinsics


def _u8i8i32_desc(lanes: int):
    """C[lanes] += A[4] . B[lanes, 4], u8 x s8 -> s32: what every x86 intrinsic below computes."""

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def _vnni_impl(lanes: int):
    """vpdpbusd on `lanes` int32 accumulators (16: zmm, 8: ymm). LLVM >= 19 types its multiplicands
    as bytes (<64 x i8>); TVM 0.27's own intrinsic passes <16 x i32>, which LLVM 22 rejects."""
    name = f"llvm.x86.avx512.vpdpbusd.{lanes * 32}"

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(name), C.vload([0], dtype=f"int32x{lanes}"),
                T.reinterpret(T.broadcast(a_i32, lanes), dtype=f"uint8x{lanes * 4}"),
                B.vload([0, 0], dtype=f"int8x{lanes * 4}"), dtype=f"int32x{lanes}")

    return impl


def _avx2_impl():
    """vpmaddubsw + vpmaddwd on 8 int32 accumulators."""

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((8, 4), "int8", offset_factor=1),
             C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:4], B[0:8, 0:4])
            T.writes(C[0:8])
            a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            pairs = T.call_llvm_pure_intrin(  # u8 x s8, adjacent pairs summed to int16 (saturating)
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
                T.reinterpret(T.broadcast(a_i32, 8), dtype="uint8x32"), B.vload([0, 0], dtype="int8x32"),
                dtype="int16x16")
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), pairs, T.broadcast(T.int16(1), 16),
                dtype="int32x8")

    return impl


_INTRINSICS_PACKAGE = "tvm.s_tir.tensor_intrin"
_VNNI_16x4_INTRINSIC = "dot_16x4_vnni"  # TVM's name (tensor_intrin/x86.py), replaced by edgec's below
_VNNI_8x4_INTRINSIC = "edgec_dot_8x4_u8i8i32_vnni"
_AVX2_INTRINSIC = "edgec_dot_8x4_u8i8i32_avx2"

VNNI = DotProduct("vnni", _VNNI_16x4_INTRINSIC, signed_activations=False, weight_levels=127,
                  add_rule=False, narrow_intrinsic=_VNNI_8x4_INTRINSIC, llvm_intrinsic="llvm.x86.avx512.vpdpbusd", speedup=4.0,
                  output_channels=8)
AVX2 = DotProduct("avx2", _AVX2_INTRINSIC, signed_activations=False, weight_levels=63, add_rule=True,
                  narrow_intrinsic=None, llvm_intrinsic="llvm.x86.avx2.pmadd.ub.sw",
                  speedup=4 / 3,  # vpmaddubsw + vpmaddwd + vpaddd: 4 products per lane in 3 instructions
                  output_channels=8)
SDOT = DotProduct("sdot", "dot_4x4_i8i8s32_sdot", signed_activations=True, weight_levels=127,
                  add_rule=False, narrow_intrinsic=None, llvm_intrinsic="llvm.aarch64.neon.sdot", speedup=4.0,
                  output_channels=4)
NEON = DotProduct("neon", "dot_4x4_i8i8s32_neon", signed_activations=True, weight_levels=127,
                  add_rule=False, narrow_intrinsic=None, llvm_intrinsic="llvm.aarch64.neon.smull",
                  speedup=2.0,  # smull + sadalp: 8 products per 4-lane accumulator in 2 instructions
                  output_channels=4)


def import_tensor_intrinsics(target: tvm.target.Target) -> None:
    """Register the tensor intrinsics `target`'s kernels can name: TVM's for its CPU (x86, ARM or
    RISC-V) and edgec's dot products. Call before MetaSchedule meets the target (a TuneContext, a
    record's trace).

    `import tvm.s_tir.tensor_intrin`, which every TuneContext does, registers every backend's and
    takes 30-100 s on a small machine: each of its hundreds of TVMScript functions is parsed with a
    walk of the interpreter stack, slower the more modules are loaded and the deeper the imports
    nest. So the package is imported with its backend modules stubbed (TuneContext's import is then
    free) and only the target's module is imported, from a function call rather than inside an
    import. A later `import tvm.s_tir.tensor_intrin.cuda` still registers CUDA's.
    """
    _import_intrinsics_package_alone()
    module = _cpu_intrinsics_module(target)
    if module is not None:
        importlib.import_module(f"{_INTRINSICS_PACKAGE}.{module}")
    if module == "x86":
        _register_x86_intrinsics()


def _import_intrinsics_package_alone() -> None:
    if _INTRINSICS_PACKAGE in sys.modules:
        return
    backends = ("cuda", "arm_cpu", "x86", "rocm", "hexagon", "riscv_cpu")  # what its __init__ imports
    stubs = {name: types.ModuleType(f"{_INTRINSICS_PACKAGE}.{name}") for name in backends
             if f"{_INTRINSICS_PACKAGE}.{name}" not in sys.modules}
    sys.modules.update({stub.__name__: stub for stub in stubs.values()})
    try:
        importlib.import_module(_INTRINSICS_PACKAGE)
    finally:
        loaded = sys.modules.get(_INTRINSICS_PACKAGE)
        for name, stub in stubs.items():
            if sys.modules.get(stub.__name__) is stub:
                del sys.modules[stub.__name__]
            if loaded is not None and getattr(loaded, name, None) is stub:
                delattr(loaded, name)


def _cpu_intrinsics_module(target: tvm.target.Target) -> str | None:
    if target.kind.name != "llvm":
        return None
    triple = str(target.attrs.get("mtriple", "")) or codegen.llvm_get_system_triple()
    arch = triple.split("-")[0]
    if arch in ("x86_64", "i686", "i386"):
        return "x86"
    if arch.startswith(("aarch64", "arm")):
        return "arm_cpu"
    return "riscv_cpu" if arch.startswith("riscv") else None


@functools.cache
def _register_x86_intrinsics() -> None:
    s_tir.TensorIntrin.register(_VNNI_16x4_INTRINSIC, _u8i8i32_desc(16), _vnni_impl(16), override=True)
    s_tir.TensorIntrin.register(_VNNI_8x4_INTRINSIC, _u8i8i32_desc(8), _vnni_impl(8), override=True)
    s_tir.TensorIntrin.register(_AVX2_INTRINSIC, _u8i8i32_desc(8), _avx2_impl(), override=True)


def int8_dot_product(target: tvm.target.Target) -> DotProduct | None:
    """The dot-product instruction edgec's int8 kernels use on `target`; None: none (int32 vector code)."""
    if target.kind.name != "llvm":
        return None
    triple = str(target.attrs.get("mtriple", ""))
    has = lambda feature: bool(codegen.target_has_features(feature, target))  # noqa: E731
    if triple.startswith("x86_64"):
        return VNNI if has("avx512vnni") else AVX2 if has("avx2") else None
    if triple.startswith("aarch64"):
        return SDOT if has("dotprod") else NEON if has("neon") else None
    return None  # 32-bit ARM: TVM's NEON intrinsic is aarch64 code


# ------------------------------------------------------------------------------ design space


def design_space(target: tvm.target.Target, narrow: bool = False) -> ms.space_generator.PostOrderApply | None:
    """MetaSchedule's design space for `target` as edgec tunes and defaults it: TVM's rules and
    postprocessors for the target, with the int8 dot-product rule where TVM lacks it and
    `TensorizedOperands` in front of `RewriteTensorize`. `narrow`: the half-width intrinsic instead
    of the full one, for kernels whose output channels the full width does not divide (both in one
    space would tile a block twice)."""
    import_tensor_intrinsics(target)
    dot = int8_dot_product(target)
    if target.kind.name != "llvm":
        return None if narrow else ms.space_generator.PostOrderApply()
    rules, postprocs, mutators = _target_defaults(target)
    if dot is None and narrow:
        return None
    if dot is None:  # TVM's intrinsic rules would only fail to tensorize here (32-bit ARM: aarch64 code)
        rules = [rule for rule in rules if type(rule).__name__ != "MultiLevelTilingWithIntrin"]
        postprocs = [p for p in postprocs if not isinstance(p, ms.postproc.RewriteTensorize)]
        return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=postprocs, mutator_probs=mutators)
    if narrow:
        if dot.narrow_intrinsic is None:
            return None
        rules = [rule for rule in rules if type(rule).__name__ != "MultiLevelTilingWithIntrin"]
    added = [dot.narrow_intrinsic] if narrow else [dot.intrinsic] if dot.add_rule else []
    for intrinsic in added:  # before the untensorized tiling: tensorized spaces come first
        position = next(i for i, rule in enumerate(rules) if type(rule).__name__ == "MultiLevelTiling")
        rules.insert(position, ms.schedule_rule.MultiLevelTilingWithIntrin(
            intrinsic, structure="SSRSRS", max_innermost_factor=64,
            reuse_write=ms.schedule_rule.ReuseType(req="may", levels=[1, 2], scope="global")))
    if not any(isinstance(p, ms.postproc.RewriteTensorize) for p in postprocs):
        position = next(i for i, p in enumerate(postprocs) if isinstance(p, ms.postproc.RewriteLayout))
        postprocs.insert(position, ms.postproc.RewriteTensorize(vectorize_init_loop=True))
    position = next(i for i, p in enumerate(postprocs) if isinstance(p, ms.postproc.RewriteTensorize))
    postprocs.insert(position, TensorizedOperands())
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=postprocs, mutator_probs=mutators)


def _target_defaults(target: tvm.target.Target) -> tuple[list, list, dict]:
    """TVM's rules, postprocessors and mutators for `target` (a context on a trivial kernel fills them)."""
    a = te.placeholder((1,), name="a")
    probe = te.create_prim_func([a, te.compute((1,), lambda i: a[i] + 1.0, name="b")])
    context = ms.TuneContext(mod=tvm.IRModule({"main": probe}), target=target,
                             space_generator=ms.space_generator.PostOrderApply(), task_name="probe")
    generator = context.space_generator
    return list(generator.sch_rules), list(generator.postprocs), dict(generator.mutator_probs)


# ---------------------------------------------------------------------------- postprocessor


@derived_object
class TensorizedOperands(ms.postproc.PyPostproc):
    """Before `RewriteTensorize`: every block marked for a tensor intrinsic reads its constant operands
    (weights) with the intrinsic's block innermost, and no loop around it is vectorized.

    A weight read as W[n, ..., k] by an intrinsic over [n:n+16, k:k+4] is packed to
    W'[n/16, ..., k/4, 16, 4] by a `layout_rewrite_preproc` block (the prepack phase computes it at
    compile time). Loops that `RewriteParallelVectorizeUnroll` vectorized around the intrinsic (its
    body is already vector code) are unrolled instead. A candidate the intrinsic cannot replace is
    dropped (the postprocessor fails): one whose computed operand would need packing, or that
    inlined a producer (the padding) into the block, which would stay scalar after
    `RewriteTensorize` and make TVM's `RewriteLayout` raise on the packed weight.
    """

    def _initialize_with_tune_context(self, context: ms.TuneContext) -> None:
        pass

    def apply(self, sch: s_tir.Schedule) -> bool:
        try:
            for block in _blocks(sch):
                annotations = sch.get(block).annotations
                if AUTO_TENSORIZE in annotations or _AUTO_TENSORIZE_INIT in annotations:
                    _unvectorize_around(sch, block)
                if AUTO_TENSORIZE in annotations:
                    _pack_operands(sch, block)
                    _parallelize_outer(sch, block)
        except (RuntimeError, ValueError) as err:  # a candidate this cannot fix: MetaSchedule drops it
            log.debug("TensorizedOperands: %s", err)
            return False
        return True

    def clone(self) -> TensorizedOperands:
        return TensorizedOperands()


def _blocks(sch: s_tir.Schedule) -> list:
    found = []

    def visit(parent) -> None:
        for child in sch.get_child_blocks(parent):
            found.append(child)
            visit(child)

    visit(sch.get_sblock("root"))
    return found


def _unvectorize_around(sch: s_tir.Schedule, block) -> None:
    for loop in sch.get_loops(block):
        if sch.get(loop).kind == tvm.tirx.ForKind.VECTORIZED:
            sch.unroll(loop)


def _parallelize_outer(sch: s_tir.Schedule, block) -> None:
    """Fuse the perfectly nested outer spatial loops of a tensorized block into one parallel loop
    (RewriteParallelVectorizeUnroll leaves a block with an inner block serial)."""
    loops = sch.get_loops(block)
    if any(sch.get(loop).kind == tvm.tirx.ForKind.PARALLEL for loop in loops):
        return
    realize = sch.get_sref(block).stmt
    spatial_vars = {iv.var for iv in realize.iter_vars if iv.iter_type == tvm.tirx.IterVar.DataPar}
    bindings = _bindings(sch, block)
    outer = []
    for loop in loops:
        node = sch.get(loop)
        if any(node.loop_var.same_as(u) for var, value in bindings if var not in spatial_vars
               for u in undefined_vars(value)):
            break  # a reduction loop
        outer.append(loop)
        if not isinstance(node.body, tvm.tirx.For):
            break  # the nest is no longer perfect
    if not outer:
        return
    annotations = dict(sch.get(outer[0]).annotations)
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    sch.parallel(fused)
    for key, value in annotations.items():  # the unroll pragma sat on the outermost loop
        sch.annotate(fused, key, value)


def _bindings(sch: s_tir.Schedule, block) -> list:
    """(block var, bound value) pairs of the block's realize."""
    parent = sch.get(sch.get_loops(block)[-1])
    realize = parent.body
    while not isinstance(realize, s_tir.SBlockRealize):
        realize = realize[0] if isinstance(realize, tvm.tirx.SeqStmt) else realize.body
    return [(iv.var, value) for iv, value in zip(realize.block.iter_vars, realize.iter_values)]


def _pack_operands(sch: s_tir.Schedule, block) -> None:
    outer = sch.get(block)
    children = sch.get_child_blocks(block)
    if len(children) != 1:
        return
    inner = sch.get(children[0])
    if inner.reads and not _multiplies_two_loads(inner):  # (an init block reads nothing)
        raise ValueError(f"a producer was inlined into {inner.name_hint}: it cannot match the intrinsic")
    inner_vars = [iv.var for iv in inner.iter_vars]
    params = {buffer.name for buffer in _param_buffers(sch)}
    for region in inner.reads:
        dims = {}  # buffer dim -> index of the intrinsic iter var it uses
        for dim, access in enumerate(region.region):
            used = [j for j, var in enumerate(inner_vars) if any(var.same_as(u) for u in undefined_vars(access.min))]
            if used:
                dims[dim] = used[0]
        order = sorted(dims, key=dims.get)
        rank = len(region.region)
        if order == list(range(rank - len(order), rank)):
            continue  # the intrinsic's block is innermost already
        if region.source.name not in params:
            raise ValueError(f"{region.source.name} would need packing but is computed in the kernel")
        extents = {dim: int(inner.iter_vars[j].dom.extent) for dim, j in dims.items()}
        read_index = next(i for i, r in enumerate(outer.reads) if r.source.same_as(region.source))
        cached = sch.cache_read(block, read_index, "global")
        sch.annotate(cached, LAYOUT_REWRITE_PREPROC, True)
        index_map = tvm.tirx.IndexMap.from_func(
            lambda *i: [i[d] // extents[d] if d in extents else i[d] for d in range(rank)]
            + [i[d] % extents[d] for d in order], ndim=rank)
        sch.transform_layout(cached, ("write", 0), index_map)


def _multiplies_two_loads(block) -> bool:
    """Whether `block` is C += A * B over two loads, as every dot-product intrinsic's description is.
    A candidate that inlined a producer into it (the padding's if_then_else) would stay scalar after
    RewriteTensorize, and RewriteLayout then fails on its packed weight: it is dropped instead."""
    store = block.body
    if not isinstance(store, tvm.tirx.BufferStore) or not isinstance(store.value, tvm.tirx.Add):
        return False
    product = store.value.b
    if not isinstance(product, tvm.tirx.Mul):
        return False
    return all(isinstance(x.value if isinstance(x, tvm.tirx.Cast) else x, tvm.ir.expr.TensorLoad)
               for x in (product.a, product.b))


def _param_buffers(sch: s_tir.Schedule) -> list:
    func = sch.mod["main"]
    root = func.body.block
    reads = {}
    # a PrimFunc's parameter buffers are the buffers no block allocates
    allocated = {buffer.name for buffer in root.alloc_buffers}
    for block in _blocks(sch):
        for region in (*sch.get(block).reads, *sch.get(block).writes):
            if region.source.name not in allocated:
                reads[region.source.name] = region.source
    return list(reads.values())
