"""Depthwise convolutions on CPUs: edgec's MetaSchedule rule for NHWC depthwise kernels.

A depthwise 3x3 convolution does 9 multiply-adds per output and moves one input and one output
value, so its speed is how few instructions each output vector costs and how few passes over memory
it makes. MetaSchedule's generic rules tile it
like a dense convolution and keep the zero padding as a separate copy of the whole input. edgec's rule
computes it as register tiles instead: per (row, block of channels), for every run of `pixels` output
pixels, `pixels` x lanes accumulators take the taps unrolled (9 for 3x3), each tap one vector load of
the input and one fused multiply-add; the padding is read in place (no copy), and bias and activation are applied
in registers before the single store. MetaSchedule samples the run length and the channel block.
(Tuned both ways and timed in the model, MobileNetV2's depthwise kernels ran 1.2-2.1x faster with this
rule: the 112x112x96 stride-2 one 0.068 ms against 0.120, the 56x56x144 one 0.082 against 0.110.)

The pass only annotates: a kernel that `legalize-fuse` produced from a depthwise conv2d and its
elementwise epilogue gets the rule on its convolution block, and its padding and epilogue blocks are
left to that rule. Numerics are unchanged. The epilogue may read the conv more than once (hard-swish,
SiLU: MobileNetV3's and EfficientNet's depthwise kernels), and an int8 depthwise conv, which has no
dot-product kernel, gets the same register tiles with int32 accumulators.
"""

from __future__ import annotations

import copy
from typing import Any

import tvm
from tvm import s_tir

from passes.cpu_lanes import split_lanes

RULE_NAME = "edgec_depthwise_nhwc"
# Relax legalizes every conv2d through TOPI's `conv`, whose grouped NHWC block has this name
_DEPTHWISE_BLOCK = "group_conv2d_nhwc"
_SPATIAL, _REDUCTION = 0, 2
# Register tile: at most this many output pixels by one vector of channels per tap
_MAX_PIXELS = 8
# Channel block per parallel step: at most this many vectors
_MAX_CHANNEL_VECTORS = 8


def depthwise_rule() -> tvm.transform.Pass:
    """Mark NHWC depthwise-convolution kernels for edgec's depthwise schedule rule.

    Needs: kernels after TVM's legalization and fusion (FuseTIR), for an LLVM (CPU) target: the rule
    is registered for CPUs only. Guarantees: a kernel whose only reduction is a depthwise conv (one
    input and one output channel per group, NHWC, accumulated in float32 or int32, static width and
    channels), fed by its padding and followed by blocks without a reduction (bias, activation,
    residual add, requantize) of which only the last is the kernel's output, carries
    `schedule_rule` annotations (the rule on the conv, "None" on the others); every
    other kernel, the input module and all numerics are unchanged.
    """

    @tvm.transform.module_pass(opt_level=0, name="depthwise_rule")
    def transform(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {}
        for gv, func in mod.functions.items():
            if isinstance(func, tvm.tirx.PrimFunc):
                annotated = _annotate(func)
                if annotated is not None:
                    updates[gv] = annotated
        if updates:
            mod = mod.clone()  # the caller's module stays as it was
            for gv, func in updates.items():
                mod[gv] = func
        return mod

    return transform


def _annotate(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc | None:
    sch = s_tir.Schedule(copy.deepcopy(func))  # a Schedule rewrites its PrimFunc in place
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    convs = [b for b in blocks if sch.get(b).name_hint.startswith(_DEPTHWISE_BLOCK)]
    if len(convs) != 1 or not _is_depthwise(sch.get(convs[0])):
        return None
    conv = convs[0]
    pads = sch.get_producers(conv)
    epilogue = _epilogue(sch, conv)
    if len(pads) != 1 or sch.get_producers(pads[0]) or _has_reduction(sch.get(pads[0])) \
            or epilogue is None or len(blocks) != 2 + len(epilogue):
        return None
    # one output channel per input channel: with a channel multiplier each tap would be a gather
    if int(sch.get(pads[0]).iter_vars[-1].dom.extent) != int(sch.get(conv).iter_vars[3].dom.extent):
        return None
    others = [b for b in blocks if not sch.get(b).same_as(sch.get(conv))]
    sch.annotate(conv, "schedule_rule", RULE_NAME)
    for block in others:
        sch.annotate(block, "schedule_rule", "None")
    return sch.mod["main"]


def _is_depthwise(block: Any) -> bool:
    kinds = [int(iv.iter_type) for iv in block.iter_vars]
    extents = [iv.dom.extent for iv in block.iter_vars]
    # (n, h, w, c) spatial, then (kh, kw, one input channel per group), accumulated in float32 or
    # int32 (int8 inputs); the rule samples tiles of the width and the channels, so those must be
    # static (batch and height need not)
    static = all(isinstance(extent, tvm.tirx.IntImm) for extent in extents[2:])
    return (kinds == [_SPATIAL] * 4 + [_REDUCTION] * 3 and static and int(extents[-1]) == 1
            and [region.source.dtype for region in block.writes] in (["float32"], ["int32"]))


def _has_reduction(block: Any) -> bool:
    return any(int(iv.iter_type) != _SPATIAL for iv in block.iter_vars)


def _epilogue(sch: Any, conv: Any) -> list[Any] | None:
    """The blocks after `conv`, in program order, when they are all elementwise and the last one is
    the kernel's only output (a chain such as bias + ReLU6, or a graph such as hard-swish's and
    SiLU's, which read the biased conv twice); None otherwise."""
    blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
    position = next(i for i, b in enumerate(blocks) if sch.get(b).same_as(sch.get(conv)))
    after = blocks[position + 1:]
    if not after or any(_has_reduction(sch.get(b)) for b in after):
        return None
    if sch.get_consumers(after[-1]) or any(not sch.get_consumers(b) for b in after[:-1]):
        return None
    return after


def _depthwise_rule(sch: Any, conv: Any) -> list[Any]:
    """MetaSchedule custom rule: padding read in place, epilogue in registers, register-tiled taps.

    Loops of the output: parallel over (batch, row, channel block); in each, runs of `pixels` output
    pixels by `lanes` channels, for which the convolution's taps are unrolled over accumulators that
    the bias and activation read before the one store. MetaSchedule samples `pixels` (<= 8) and the
    channel block (<= 8 vectors).
    """
    (pad,) = sch.get_producers(conv)
    *inlined, output = _epilogue(sch, conv)
    for block in inlined:  # producers first: each is inlined into consumers not yet inlined
        sch.compute_inline(block)
    sch.compute_inline(pad)
    batch, row, col, channel = sch.get_loops(output)
    channel_outer, lanes = split_lanes(sch, channel)
    blocks, vectors = sch.split(channel_outer, sch.sample_perfect_tile(channel_outer, n=2,
                                                                        max_innermost_factor=_MAX_CHANNEL_VECTORS))
    col_outer, pixels = sch.split(col, sch.sample_perfect_tile(col, n=2, max_innermost_factor=_MAX_PIXELS))
    sch.reorder(batch, row, blocks, col_outer, vectors, pixels, lanes)
    sch.parallel(sch.fuse(batch, row, blocks))
    sch.unroll(pixels)
    sch.vectorize(lanes)
    # Unit loops kept: the trace must make as many loops whatever tile sizes are sampled
    sch.compute_at(conv, vectors, preserve_unit_loops=True)
    *spatial, kernel_row, kernel_col, group_channel = sch.get_loops(conv)[-7:]
    sch.reorder(kernel_row, kernel_col, group_channel, *spatial)
    for loop in (kernel_row, kernel_col, *spatial[:-1]):
        sch.unroll(loop)
    sch.vectorize(spatial[-1])
    return [sch]


# MetaSchedule looks a block's `schedule_rule` up as a global function per target kind ("cpu": llvm)
tvm.register_global_func(f"s_tir.meta_schedule.cpu.{RULE_NAME}", _depthwise_rule, override=True)
