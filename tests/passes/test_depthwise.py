"""depthwise_rule: NHWC depthwise kernels get edgec's schedule rule; its schedules compute what the kernel does."""

import numpy as np
import pytest
import torch
import tvm

from compiler.frontends import import_torch_module
from passes import LayoutConfig, convert_layout, depthwise_rule, simplify_for_inference
from passes.depthwise import RULE_NAME, _depthwise_rule
from passes.dot_product import import_tensor_intrinsics
from targets.registry import cpu_flags
from tests.helpers import fuse_for_cpu, run_kernel


class _InvertedResidual(torch.nn.Module):
    """MobileNetV2's block: pointwise expand + ReLU6, depthwise 3x3 + ReLU6, pointwise project; or
    variants of the middle conv: other activations (hard-swish and SiLU read the conv twice), and
    convs that the rule does not take."""

    def __init__(self, channels: int, expanded: int, stride: int, variant: str = "depthwise"):
        super().__init__()
        groups = {"grouped": expanded // 4}.get(variant, expanded)  # "grouped": 4 input channels per group
        middle = expanded * 2 if variant == "multiplier" else expanded  # 2 output channels per group
        self.expand = torch.nn.Conv2d(channels, expanded, 1)
        self.middle = torch.nn.Conv2d(expanded, middle, 3, stride=stride, padding=1, groups=groups,
                                      bias=variant != "no-epilogue")
        activations = {"no-epilogue": torch.nn.Identity, "hardswish": torch.nn.Hardswish, "silu": torch.nn.SiLU}
        self.activation = activations.get(variant, torch.nn.ReLU6)()
        self.project = torch.nn.Conv2d(middle, channels, 1)

    def forward(self, x):
        y = torch.nn.functional.relu6(self.expand(x))
        return self.project(self.activation(self.middle(y)))


def _module(layout: str, stride: int, width: int = 10, variant: str = "depthwise"):
    torch.manual_seed(0)
    net = _InvertedResidual(8, 32, stride, variant).eval()
    x = torch.randn(1, 8, 9, width)
    mod = convert_layout(LayoutConfig(layout))(simplify_for_inference()(import_torch_module(net, (x,)).mod))
    return fuse_for_cpu(mod), x.numpy()


def _rules(mod) -> dict[str, list[str]]:
    """Per kernel, the schedule_rule annotation of each block that has one."""
    rules = {}
    for gv, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            sch = tvm.s_tir.Schedule(func)
            blocks = [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))]
            rules[gv.name_hint] = [str(b.annotations["schedule_rule"]) for b in blocks if "schedule_rule" in b.annotations]
    return rules


@pytest.mark.parametrize("stride", [1, 2])
def test_only_the_nhwc_depthwise_kernel_gets_the_rule(stride):
    fused, _ = _module("NHWC", stride)
    marked = depthwise_rule()(fused)
    rules = {name: annotations for name, annotations in _rules(marked).items() if annotations}
    (name,) = rules
    # its conv carries the rule; the padding and the epilogue (bias, max, min) are left to it
    assert sorted(rules[name]) == ["None"] * 4 + [RULE_NAME]
    assert not any(_rules(fused).values())  # the pass left its input module as it was


@pytest.mark.parametrize("variant", ["hardswish", "silu"])
def test_an_epilogue_that_reads_the_conv_twice_is_taken_too(variant):
    """Hard-swish (x * relu6(x + 3) / 6) and SiLU (x * sigmoid(x)) make the biased conv feed two
    blocks: the epilogue is a graph, not a chain, and all of it is inlined into the one output."""
    marked = depthwise_rule()(_module("NHWC", 1, variant=variant)[0])
    (annotations,) = [a for a in _rules(marked).values() if a]
    assert RULE_NAME in annotations and len(annotations) > 4


def _int8_depthwise_kernel() -> tvm.IRModule:
    """An int8 NHWC depthwise conv accumulated in int32 and rescaled to float + ReLU, as edgec's
    quantize pass writes it, fused into one kernel."""
    from tvm import relax

    rng = np.random.default_rng(0)
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 9, 10, 32), "int8"))
    with builder.function("main", [x]):
        with builder.dataflow():
            weight = relax.const(rng.integers(-127, 128, (32, 3, 3, 1)).astype("int8"))
            acc = builder.emit(relax.op.nn.conv2d(x, weight, padding=1, groups=32, data_layout="NHWC",
                                                  kernel_layout="OHWI", out_dtype="int32"))
            scaled = builder.emit(relax.op.multiply(relax.op.astype(acc, "float32"),
                                                    relax.const((rng.random(32) * 1e-3).astype("float32"))))
            out = builder.emit_output(relax.op.nn.relu(relax.op.add(scaled, relax.const(np.float32(-0.1)))))
        builder.emit_func_output(out)
    marked = depthwise_rule()(fuse_for_cpu(builder.get()))
    (name,) = [name for name, annotations in _rules(marked).items() if RULE_NAME in annotations]
    return tvm.IRModule({"main": marked[name].with_attr("global_symbol", "main")})


def test_int8_depthwise_kernels_get_the_rule_and_compute_the_same():
    """int8 depthwise convs (no dot-product instruction takes them) are register-tiled like float
    ones: int32 accumulators, the int8 input read in place; the result is exact."""
    from tvm.s_tir import meta_schedule as ms

    kernel = _int8_depthwise_kernel()
    target = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
    import_tensor_intrinsics(target)  # TuneContext's own import of every backend's takes minutes
    rng = np.random.default_rng(1)
    shapes = [([int(d) for d in info.shape], info.dtype) for info in ms.arg_info.ArgInfo.from_prim_func(kernel["main"])]
    args = [rng.integers(-128, 128, shape).astype(dtype) if "int" in dtype else rng.random(shape).astype(dtype)
            for shape, dtype in shapes]
    expected = run_kernel(kernel, target, args)
    assert 0 < (expected > 0).mean() < 1
    context = ms.TuneContext(mod=kernel, target=target, space_generator="post-order-apply", task_name="dw8")
    with target:
        (space,) = context.generate_design_space()
    assert "pad_temp" not in space.mod.script() and "T.vectorized" in space.mod.script()
    assert all(postproc.apply(space) for postproc in context.space_generator.postprocs)
    # int32 sums are exact; the float rescale may round once differently (a fused multiply-add)
    np.testing.assert_allclose(run_kernel(space.mod, target, args), expected, rtol=1e-6)


@pytest.mark.parametrize(("layout", "variant"), [("NCHW", "depthwise"), ("NHWC", "grouped"), ("NHWC", "multiplier"),
                                                 ("NHWC", "no-epilogue")])
def test_other_convs_are_left_to_metaschedule(layout, variant):
    """NCHW, 4 input channels per group, 2 output channels per input channel (each tap a gather),
    and a depthwise conv with nothing after it to keep in registers."""
    fused, _ = _module(layout, 1, variant=variant)
    assert not any(_rules(depthwise_rule()(fused)).values())


def _depthwise_kernel(stride: int, width: int = 10) -> tvm.IRModule:
    marked = depthwise_rule()(_module("NHWC", stride, width)[0])
    (name,) = [name for name, annotations in _rules(marked).items() if RULE_NAME in annotations]
    return tvm.IRModule({"main": marked[name].with_attr("global_symbol", "main")})


@pytest.mark.parametrize("mcpu", ["haswell", "cascadelake"])  # 8 and 16 lanes
@pytest.mark.parametrize(("stride", "width"), [(1, 10), (2, 10), (1, 7)])
def test_design_space_applies_the_rule_and_computes_what_the_kernel_does(stride, width, mcpu):
    """MetaSchedule's design space for the kernel is the rule's: taps over register tiles, channels
    vectorized, no padded copy of the input; after MetaSchedule's postprocessors (weights in the
    layout the loops read them, as `mark-prepack` allows) sampled schedules match the unscheduled kernel."""
    from tvm.s_tir import meta_schedule as ms

    if mcpu == "cascadelake" and "avx512f" not in cpu_flags():
        pytest.skip("16-lane code needs an AVX-512 CPU to run")
    # weights and biases layout-free, as the pipeline's mark-prepack phase leaves them
    kernel = _depthwise_kernel(stride, width)
    kernel = tvm.IRModule({"main": kernel["main"].with_attr("layout_free_buffers", [1, 2])})
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    rng = np.random.default_rng(0)
    shapes = [[int(d) for d in info.shape] for info in ms.arg_info.ArgInfo.from_prim_func(kernel["main"])]
    args = [rng.standard_normal(shape).astype("float32") for shape in shapes]
    expected = run_kernel(kernel, target, args)
    assert 0 < (expected > 0).mean() < 1 and (expected < 6).any()  # ReLU6 neither all-zero nor saturated
    for seed in range(3):
        context = ms.TuneContext(mod=kernel, target=target, space_generator="post-order-apply", task_name="dw",
                                 rand_state=seed)
        with target:  # edgec's tuning runs the rules in the target's scope
            (space,) = context.generate_design_space()
        script = space.mod.script()
        assert "T.vectorized" in script and "T.parallel" in script
        assert "pad_temp" not in script  # the padding is read in place
        assert all(postproc.apply(space) for postproc in context.space_generator.postprocs)
        np.testing.assert_allclose(run_kernel(space.mod, target, args), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("mcpu", "lanes"), [("haswell", 8), ("cascadelake", 16)])
def test_rule_vectorizes_at_the_width_of_the_target_in_scope(mcpu, lanes):
    sch = tvm.s_tir.Schedule(_depthwise_kernel(1)["main"])
    with tvm.target.Target({"kind": "llvm", "mcpu": mcpu}):
        _depthwise_rule(sch, sch.get_sblock("group_conv2d_nhwc"))
    for block in ("group_conv2d_nhwc", "T_minimum"):
        innermost = sch.get(sch.get_loops(sch.get_sblock(block))[-1])
        assert (innermost.kind, int(innermost.extent)) == (tvm.tirx.ForKind.VECTORIZED, lanes), block
