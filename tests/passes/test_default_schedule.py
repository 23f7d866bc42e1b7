"""edgec's default CPU schedules: every kernel scheduled (parallel, vectorized, register-tiled),
numerics unchanged, deterministic, sized by the CPU shape."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import relax as R

from passes.default_schedule import SCHEDULED_ATTR, default_schedules
from targets import CpuShape
from tests.helpers import fuse_for_cpu

AVX512 = CpuShape(f32_lanes=16, vector_registers=32, l1d_bytes=32 * 1024, l2_bytes=1024 * 1024, cores=2)
AVX2 = CpuShape(f32_lanes=8, vector_registers=16, l1d_bytes=32 * 1024, l2_bytes=512 * 1024, cores=2)
HOST = tvm.target.Target({"kind": "llvm", "num-cores": 2})


def _small_cnn():
    """NHWC conv + bias + relu, max pool, global mean, dense: one kernel of each kind."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 3, 3, 16)).astype("float32")
    b = rng.standard_normal((1, 1, 1, 32)).astype("float32")
    fc = rng.standard_normal((10, 32)).astype("float32")

    @tvm.script.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor((1, 14, 14, 16), "float32")):
            with R.dataflow():
                y = R.nn.conv2d(x, R.const(w), padding=1, data_layout="NHWC", kernel_layout="OHWI")
                y = R.nn.relu(R.add(y, R.const(b)))
                y = R.nn.max_pool2d(y, pool_size=(2, 2), strides=(2, 2), layout="NHWC")
                y = R.mean(y, axis=[1, 2])
                y = R.matmul(y, R.permute_dims(R.const(fc)))
                R.output(y)
            return y

    return Module


def _scheduled(mod, cpu, reports=None):
    """The fused module with default schedules (weight layouts not yet folded: kernels keep their names)."""
    mod = relax.transform.AttachAttrLayoutFreeBuffers()(fuse_for_cpu(mod))
    with HOST:
        return default_schedules(cpu, reports.append if reports is not None else None)(mod)


def _prepacked(mod):
    """As the pipeline's prepack-weights phase leaves it: weight layout transforms folded into constants."""
    with HOST:
        return tvm.transform.Sequential([relax.transform.SplitLayoutRewritePreproc(), relax.transform.FoldConstant()])(mod)


def _run(mod, x):
    vm = relax.VirtualMachine(tvm.compile(mod, target=HOST), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _kernels(mod):
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


def test_every_kernel_is_scheduled_and_numerics_match_the_unscheduled_model():
    reports = []
    scheduled = _scheduled(_small_cnn(), AVX512, reports)
    report = reports[0]
    assert report.naive == () and len(report.defaults) >= 4
    assert all(_kernels(scheduled)[name].attrs[SCHEDULED_ATTR] for name in report.defaults)
    x = np.random.default_rng(1).standard_normal((1, 14, 14, 16)).astype("float32")
    np.testing.assert_allclose(_run(_prepacked(scheduled), x), _run(fuse_for_cpu(_small_cnn()), x), rtol=1e-4, atol=1e-4)


def test_conv_gets_a_parallel_loop_and_a_register_tile_of_the_cpu_shape():
    for cpu, vector in ((AVX512, 32), (AVX2, 16)):  # two vectors of f32 lanes
        conv = next(f for name, f in _kernels(_scheduled(_small_cnn(), cpu)).items() if "conv2d" in name)
        text = conv.script()
        assert "T.parallel(" in text
        assert f"T.vectorized(T.int64({vector}))" in text, text


def _grouped_conv():
    """NHWC conv with 4 groups of 6 channels (ShuffleNet/RegNet style): 24 channels, no 16-lane multiple."""
    w = np.random.default_rng(2).standard_normal((24, 3, 3, 6)).astype("float32")

    @tvm.script.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor((1, 16, 16, 24), "float32")):
            with R.dataflow():
                y = R.nn.conv2d(x, R.const(w), padding=1, groups=4, data_layout="NHWC", kernel_layout="OHWI")
                R.output(y)
            return y

    return Module


def test_a_grouped_conv_vectorizes_within_a_group():
    """A vector loop across groups gathers every lane's input from another group (177 us against 38 us
    on a Zen 4): the vector tile divides the group's 6 output channels, and numerics hold."""
    scheduled = _scheduled(_grouped_conv(), AVX512)
    conv = next(f for name, f in _kernels(scheduled).items() if "conv2d" in name)
    text = conv.script()
    assert "T.vectorized(T.int64(6))" in text and "T.vectorized(T.int64(12))" not in text, text
    x = np.random.default_rng(3).standard_normal((1, 16, 16, 24)).astype("float32")
    np.testing.assert_allclose(_run(_prepacked(scheduled), x), _run(fuse_for_cpu(_grouped_conv()), x), rtol=1e-4, atol=1e-4)


def test_same_model_and_cpu_give_identical_kernels():
    first, second = _scheduled(_small_cnn(), AVX512), _scheduled(_small_cnn(), AVX512)
    assert [f.script() for f in _kernels(first).values()] == [f.script() for f in _kernels(second).values()]


def test_gpu_targets_are_only_reported():
    reports = []
    mod = fuse_for_cpu(_small_cnn())
    with HOST:
        out = default_schedules(None, reports.append)(mod)
    assert out.same_as(mod) and reports[0].defaults == () and len(reports[0].naive) >= 4


@pytest.mark.parametrize("cpu", [AVX512, AVX2], ids=["avx512", "avx2"])
def test_the_default_is_a_point_of_metaschedules_design_space(cpu):
    """The trace replays from its own sampling decisions: tuning can start from it."""
    from passes.default_schedule import default_schedule, kernel_module

    conv = next(f for name, f in _kernels(relax.transform.AttachAttrLayoutFreeBuffers()(fuse_for_cpu(_small_cnn()))).items()
                if "conv2d" in name)
    with HOST:
        sch = default_schedule(kernel_module(conv), HOST, cpu)
    decisions = [inst.kind.name for inst in sch.trace.insts if inst in sch.trace.decisions]
    assert decisions.count("SamplePerfectTile") >= 7  # 4 spatial + 3 reduction loops of the conv
    replay = tvm.s_tir.Schedule(kernel_module(conv))
    sch.trace.apply_to_schedule(replay, remove_postproc=False)
    tvm.ir.assert_structural_equal(replay.mod, sch.mod)


@pytest.mark.parametrize("cpu", [AVX512, AVX2], ids=["avx512", "avx2"])
def test_a_global_mean_in_nhwc_reduces_channel_vectors(cpu):
    """TVM writes a mean over H and W as one scalar chain per channel, each read strided by the channel
    count (EfficientNet-B0's squeeze-excitation means took 1.0 of its 12 ms). The default moves the
    reduction loops outside the channel loop, which is vectorized: each step adds a contiguous row of
    channels. Numerics: test_every_kernel_is_scheduled_and_numerics_match_the_unscheduled_model."""
    mean = next(f for name, f in _kernels(_scheduled(_small_cnn(), cpu)).items() if name.startswith("mean"))
    sch = tvm.s_tir.Schedule(mean)
    update = next(b for b in sch.get_child_blocks(sch.get_sblock("root"))
                  if any(iv.iter_type == tvm.tirx.IterVar.CommReduce for iv in sch.get(b).iter_vars))
    loops = [sch.get(loop) for loop in sch.get_loops(update)]
    assert loops[-1].kind == tvm.tirx.ForKind.VECTORIZED and int(loops[-1].extent) == 32, mean.script()
    assert [int(loop.extent) for loop in loops[-3:-1]] == [7, 7]  # the pooled window outside it


def test_scheduling_a_kernel_leaves_the_callers_kernel_as_it_was():
    """An `s_tir.Schedule` rewrites the PrimFunc it is given in place: a trace that failed half-way
    (a transferred record on another epilogue) left the module's kernel half-scheduled, and its
    default then failed too (ResNet-18's Winograd convs with an int8 neighbour ran as naive loops).
    The default schedule and `kernel_module` work on copies."""
    from passes.default_schedule import kernel_module, schedule_kernel

    mod = relax.transform.AttachAttrLayoutFreeBuffers()(fuse_for_cpu(_small_cnn()))
    conv = next(f for name, f in _kernels(mod).items() if "conv2d" in name)
    before = conv.script()
    with HOST:
        scheduled = schedule_kernel(conv, HOST, AVX2)
    assert scheduled is not None and scheduled.script() != before
    half_way = tvm.s_tir.Schedule(kernel_module(conv))
    half_way.fuse(*half_way.get_loops(half_way.get_sblock("conv2d_nhwc"))[:2])  # then a trace would fail
    assert conv.script() == before
    with HOST:
        again = schedule_kernel(conv, HOST, AVX2)
    assert again.script() == scheduled.script()


def _pool(size: int, channels: int):
    @tvm.script.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor((1, size, size, channels), "float32")):
            with R.dataflow():
                y = R.nn.max_pool2d(x, pool_size=(3, 3), strides=(2, 2), padding=(1, 1), layout="NHWC")
                R.output(y)
            return y

    return Module


def test_a_pool_vectorizes_over_channels_and_a_kernel_too_small_to_split_runs_on_one_thread():
    """TOPI's pool names a schedule rule no CPU had: its window loops stayed innermost, nothing
    vectorized. Now the channel loop is the vector loop; kernels under SERIAL_FLOPS run serially
    (waking the thread pool cost more than splitting them saved)."""
    from passes.default_schedule import SERIAL_FLOPS

    for size, parallel in ((56, True), (8, False)):
        assert (((size // 2) ** 2 * 64 * 9) >= SERIAL_FLOPS) == parallel
        scheduled = _scheduled(_pool(size, 64), AVX512)
        text = next(f for name, f in _kernels(scheduled).items() if "pool" in name).script()
        window = text.index("for rv0, rv1 in T.grid(T.int64(3), T.int64(3)):")
        assert "T.vectorized(T.int64(64))" in text[window:], text  # channels innermost, under the window
        assert ("T.parallel(" in text) == parallel, text
        x = np.random.default_rng(4).standard_normal((1, size, size, 64)).astype("float32")
        np.testing.assert_array_equal(_run(_prepacked(scheduled), x), _run(fuse_for_cpu(_pool(size, 64)), x))
