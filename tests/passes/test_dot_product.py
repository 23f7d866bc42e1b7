"""passes/dot_product.py: which instruction each target gets, and an int8 conv kernel tensorized with it
by the default schedule, numerically equal to the unscheduled kernel."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import relax as R

from passes.default_schedule import default_schedules
from passes.dot_product import int8_dot_product
from targets import resolve_target
from targets.spec import cpu_flags
from tests.helpers import fuse_for_cpu


@pytest.mark.parametrize("preset,instruction", [("x86-avx512", "vnni"), ("x86-64", "avx2"), ("cortex-a76", "sdot"),
                                                ("cortex-a72", "neon"), ("cortex-a53", "neon"), ("armv7", None)])
def test_each_cpu_preset_gets_its_dot_product_instruction(preset, instruction):
    dot = int8_dot_product(resolve_target(preset).tvm_target())
    assert (dot.name if dot is not None else None) == instruction


def _int8_conv(in_dtype: str, channels: int, weight_levels: int):
    """An int8 NHWC 3x3 conv with its requantizing epilogue, as quantize_int8 + layout write it, with
    weights in [-weight_levels, weight_levels] (AVX2's int16 pairs saturate beyond 63)."""
    rng = np.random.default_rng(0)
    weight = rng.integers(-weight_levels, weight_levels + 1, (channels, 3, 3, 32)).astype("int8")
    scale = rng.uniform(0.001, 0.01, (1, 1, 1, channels)).astype("float32")

    @tvm.script.ir_module
    class Conv:
        @R.function
        def main(x: R.Tensor((1, 14, 14, 32), in_dtype)) -> R.Tensor((1, 14, 14, channels), "float32"):
            with R.dataflow():
                y = R.nn.conv2d(x, R.const(weight), padding=[1, 1, 1, 1], data_layout="NHWC", kernel_layout="OHWI",
                                out_dtype="int32")
                z = R.multiply(R.astype(y, "float32"), R.const(scale))
                R.output(z)
            return z

    low, high = (0, 256) if in_dtype == "uint8" else (-128, 128)
    return Conv, rng.integers(low, high, (1, 14, 14, 32)).astype(in_dtype)


def _scheduled(mod, preset):
    target = resolve_target(preset).tvm_target()
    reports = []
    with target:
        mod = fuse_for_cpu(mod)
        mod = relax.transform.AttachAttrLayoutFreeBuffers()(mod)
        mod = default_schedules(resolve_target(preset).cpu_shape(), reports.append)(mod)
        mod = relax.transform.SplitLayoutRewritePreproc()(mod)
    return mod, reports[0], target


@pytest.mark.parametrize("preset,in_dtype,channels", [("x86-avx512", "uint8", 64), ("x86-avx512", "uint8", 24),
                                                      ("x86-64", "uint8", 64), ("cortex-a76", "int8", 64),
                                                      ("cortex-a53", "int8", 64)])
def test_int8_conv_default_runs_on_the_dot_product_and_matches_the_unscheduled_kernel(preset, in_dtype, channels):
    mod, x = _int8_conv(in_dtype, channels, int8_dot_product(resolve_target(preset).tvm_target()).weight_levels)
    scheduled, report, target = _scheduled(mod, preset)
    assert report.dot_product == int8_dot_product(target).name
    assert len(report.dot_product_kernels) == 1 and not report.naive  # the conv, with its epilogue
    executable = tvm.compile(scheduled, target=target)  # builds for every target (ARM: cross-compiled)
    if resolve_target(preset).execution_here().mode != "native":
        return  # ARM numerics: tests/examples/test_int8_matrix.py runs them under qemu
    if preset == "x86-avx512" and "avx512_vnni" not in cpu_flags():
        pytest.skip("this CPU lacks AVX-512 VNNI")
    expected = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())["main"](
        tvm.runtime.tensor(x)).numpy()
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, expected)  # integer accumulation: exact


def test_float_kernels_are_not_tensorized():
    weight = np.random.default_rng(0).standard_normal((16, 3, 3, 16)).astype("float32")

    @tvm.script.ir_module
    class Conv:
        @R.function
        def main(x: R.Tensor((1, 8, 8, 16), "float32")) -> R.Tensor((1, 8, 8, 16), "float32"):
            with R.dataflow():
                y = R.nn.conv2d(x, R.const(weight), padding=[1, 1, 1, 1], data_layout="NHWC", kernel_layout="OHWI")
                R.output(y)
            return y

    _, report, _ = _scheduled(Conv, "x86-avx512")
    assert report.defaults and not report.dot_product_kernels


def test_sampled_points_of_the_tensorized_space_postprocess_or_are_dropped():
    """Tuning samples the tensorized space at random: a point that inlines the padding into the
    intrinsic's block cannot tensorize, and must be dropped by the postprocessors, not raise (TVM's
    RewriteLayout raised on its packed weight, which stopped the whole search for that kernel)."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    from passes.default_schedule import kernel_module
    from passes.dot_product import design_space

    mod, _ = _int8_conv("uint8", 64, 127)
    target = resolve_target("x86-avx512").tvm_target()
    with target:
        fused = relax.transform.AttachAttrLayoutFreeBuffers()(fuse_for_cpu(mod))
    kernel = kernel_module(next(f for f in fused.functions.values() if isinstance(f, tvm.tirx.PrimFunc)))
    context = ms.TuneContext(mod=kernel, target=target, space_generator=design_space(target), task_name="conv",
                             rand_state=1, num_threads=1)
    spaces = [s for s in context.space_generator.generate_design_space(kernel)
              if any(inst.kind.name == "Blockize" for inst in s.trace.insts)]
    assert spaces
    outcomes = []
    for space in spaces:
        for seed in range(1, 13):
            sch = s_tir.Schedule(kernel, seed=seed)
            s_tir.schedule.Trace(space.trace.insts, {}).apply_to_schedule(sch, remove_postproc=True)  # fresh decisions
            sch.enter_postproc()
            kept = all(postproc.apply(sch) for postproc in context.space_generator.postprocs)
            outcomes.append("tensorized" if kept and any(i.kind.name == "Tensorize" for i in sch.trace.insts)
                            else "kept" if kept else "dropped")
    assert "tensorized" in outcomes
    assert "kept" not in outcomes  # every point that survives runs on the intrinsic
