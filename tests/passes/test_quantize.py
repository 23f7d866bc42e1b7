"""quantize_int8: integer layers, calibration methods, accuracy on the trained digits CNN, fusion, bad input."""

import numpy as np
import pytest
import tvm
from tvm import relax

from compiler.frontends import load_model
from compiler.pipeline import PipelineConfig, count_kernels, run_to_tuning_point
from examples.digits_cnn import load_digits_split
from passes import simplify_for_inference
from passes.quantize import Int8Payoff, IntegerForm, QuantizeConfig, QuantizeError, entropy_threshold, find_layers, quantize_int8, run_on_host
from tests.helpers import run_relax


@pytest.fixture(scope="module")
def digits(example):
    """The trained digits CNN after simplify, its calibration samples and the held-out test split."""
    x_train, _, x_test, y_test = load_digits_split()
    mod = simplify_for_inference()(load_model(example("digits").onnx).mod)
    calibration = tuple({"input": x_train[i:i + 1]} for i in range(0, 200, 2))
    return mod, calibration, x_test, y_test


def _quantized(mod, calibration, **settings):
    reports = []
    return quantize_int8(QuantizeConfig(calibration, **settings), reports.append)(mod), reports[0]


def _predictions(mod, x: np.ndarray) -> np.ndarray:
    return np.concatenate([outputs[0] for outputs in run_on_host(mod, [{"input": sample[None]} for sample in x])])


def _integer_calls(mod) -> list[relax.Call]:
    calls = []

    def visit(expr):
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") in ("relax.nn.conv2d", "relax.matmul"):
            calls.append(expr)

    relax.analysis.post_order_visit(mod["main"], visit)
    return calls


def test_every_layer_becomes_int8_x_int8_to_int32_and_accuracy_holds(digits):
    mod, calibration, x_test, y_test = digits
    quantized, report = _quantized(mod, calibration)
    calls = _integer_calls(quantized)
    assert len(calls) == 4 and report.to_json()["quantized"] == 4
    for call in calls:
        assert str(call.args[0].ty.dtype) in ("int8", "uint8") and str(call.args[1].ty.dtype) == "int8"
        assert str(call.ty.dtype) == "int32"
    # the input image and post-ReLU activations are non-negative: uint8, the VNNI operand shape
    assert {layer.input_dtype for layer in report.layers} == {"uint8"}
    reference = _predictions(mod, x_test)
    ours = _predictions(quantized, x_test)
    float_accuracy = (reference.argmax(1) == y_test).mean()
    int8_accuracy = (ours.argmax(1) == y_test).mean()
    assert float_accuracy - int8_accuracy <= 0.01  # the band: at most one point
    assert (ours.argmax(1) == reference.argmax(1)).mean() >= 0.99
    signal, noise = np.sum(reference ** 2), np.sum((ours - reference) ** 2)
    assert 10 * np.log10(signal / noise) > 25


def test_weights_are_per_channel_int8_within_half_a_step(digits):
    mod, calibration, _, _ = digits
    quantized, _ = _quantized(mod, calibration)
    float_weight = find_layers(mod)[1].weight  # conv2d_1: 32 x 16 x 3 x 3
    int_weight = _integer_calls(quantized)[1].args[1].value.numpy()
    scales = np.abs(float_weight).reshape(32, -1).max(axis=1) / 127
    assert int_weight.dtype == np.int8 and np.abs(int_weight).reshape(32, -1).max(axis=1).tolist() == [127] * 32
    assert np.abs(int_weight * scales[:, None, None, None] - float_weight).max() <= scales.max() / 2 + 1e-7


def test_keep_float_leaves_the_named_layer_in_float(digits):
    mod, calibration, x_test, _ = digits
    quantized, report = _quantized(mod, calibration, keep_float=("conv2d_0", "matmul_0"))
    assert report.kept_float == ["conv2d_0", "matmul_0"]
    dtypes = [str(call.args[1].ty.dtype) for call in _integer_calls(quantized)]
    assert dtypes == ["float32", "int8", "int8", "float32"]
    run_relax(quantized, x_test[:1])  # still a valid module


def test_calibration_methods_choose_different_ranges(digits):
    mod, calibration, _, _ = digits
    scales = {method: [layer.input_scale for layer in _quantized(mod, calibration, method=method)[1].layers]
              for method in ("minmax", "percentile", "entropy")}
    # minmax covers every value seen; the others clip outliers, so their ranges are never wider
    assert all(p <= m + 1e-12 for p, m in zip(scales["percentile"], scales["minmax"]))
    assert all(e <= m + 1e-12 for e, m in zip(scales["entropy"], scales["minmax"]))
    assert scales["percentile"] != scales["minmax"] and scales["entropy"] != scales["minmax"]


def test_entropy_threshold_clips_rare_outliers():
    values = np.abs(np.random.default_rng(0).standard_normal(200_000))
    values[:20] = 50.0  # a handful of huge outliers
    threshold = entropy_threshold(values)
    assert 2.0 < threshold < 10.0


def test_entropy_threshold_ignores_the_zeros_of_a_relu():
    """Half the values exactly zero (a ReLU's output) must not pull the threshold into the bulk."""
    values = np.abs(np.random.default_rng(0).standard_normal(200_000))
    with_zeros = np.concatenate([values, np.zeros(200_000)])
    assert entropy_threshold(with_zeros) == entropy_threshold(values)
    assert entropy_threshold(with_zeros) > np.percentile(values, 99)
    assert entropy_threshold(np.zeros(10)) == 0.0


def test_requantize_is_fused_into_the_integer_kernel(example):
    """After fusion, a conv that feeds another quantized conv writes int8: rescale, bias, ReLU and the
    next layer's quantize sit in its epilogue, so activations travel as int8 between layers."""
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    model = load_model(example("resnet18").onnx)
    config = PipelineConfig(tuning_log=None, quantize=QuantizeConfig(({"input": x},), method="minmax"))
    mod = run_to_tuning_point(model.mod, tvm.target.Target({"kind": "llvm"}), config)
    calls = []
    relax.analysis.post_order_visit(mod["main"], lambda e: calls.append(e) if isinstance(e, relax.Call)
                                    and getattr(e.op, "name", "") == "relax.call_tir" else None)
    conv_kernels = {call.args[0].name_hint: str(call.ty.dtype) for call in calls if "conv2d" in call.args[0].name_hint}
    int8_out = [name for name, dtype in conv_kernels.items() if dtype in ("int8", "uint8")]
    assert len(int8_out) >= 12, conv_kernels
    assert all("round" in name and "cast" in name for name in int8_out)
    # 21 convs + max-pool + mean + classifier + the input's quantize: no kernel of its own for any requantize
    assert count_kernels(mod) == len(calls) <= 21 + 4


def test_calibration_data_must_match_the_inputs(digits):
    mod, _, x_test, _ = digits
    with pytest.raises(QuantizeError, match="no array for input 'input'"):
        _quantized(mod, ({"image": x_test[:1]},))
    with pytest.raises(QuantizeError, match="shape 1x1x8x9 float32; the model expects 1x1x8x8 float32"):
        _quantized(mod, ({"input": np.zeros((1, 1, 8, 9), np.float32)},))


def test_unknown_keep_float_layer_names_the_known_ones(digits):
    mod, calibration, _, _ = digits
    with pytest.raises(QuantizeError, match="unknown layer.*conv2d_7.*conv2d_0, conv2d_1, conv2d_2, matmul_0"):
        _quantized(mod, calibration, keep_float=("conv2d_7",))


@pytest.mark.parametrize("settings, message", [
    ({"method": "kl"}, "--calibration-method must be one of minmax, percentile, entropy"),
    ({"percentile": 120.0}, "--percentile must be in"),
])
def test_bad_settings_are_rejected(digits, settings, message):
    with pytest.raises(QuantizeError, match=message):
        QuantizeConfig(digits[1], **settings)
    with pytest.raises(QuantizeError, match="needs calibration samples"):
        QuantizeConfig(())


def test_kernels_do_not_depend_on_the_calibration(digits):
    """Scales enter the kernels as tensors, not as literals: a record tuned with one calibration serves another."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    mod, calibration, _, _ = digits
    target = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})
    hashes = []
    for samples in (calibration[:10], tuple({"input": s["input"] * 0.7} for s in calibration[10:40])):
        config = PipelineConfig(tuning_log=None, quantize=QuantizeConfig(samples, method="minmax"))
        tasks = ms.relax_integration.extract_tasks(run_to_tuning_point(mod, target, config), target)
        hashes.append(sorted(tvm_ffi.structural_hash(task.dispatched[0]) for task in tasks))
    assert hashes[0] == hashes[1]


@pytest.mark.parametrize("preset_name, intrinsic", [
    ("x86-avx512", "dot_16x4_vnni"),  # vpdpbusd: uint8 x int8, NHWC
    ("cortex-a76", "dot_4x4_i8i8s32_sdot"),  # sdot: int8 x int8, NHWC
])
def test_tuning_can_pick_the_targets_int8_dot_product_instruction(digits, preset_name, intrinsic):
    """The preset's layout and activation signedness put the dot-product tensor intrinsic into
    MetaSchedule's search space for the int8 convolutions (compile-only: no such CPU here)."""
    import re

    from tvm.s_tir import meta_schedule as ms

    from passes.dot_product import import_tensor_intrinsics
    from targets import resolve_target

    mod, calibration, _, _ = digits
    preset = resolve_target(preset_name)
    target = preset.tvm_target()
    import_tensor_intrinsics(target)
    config = PipelineConfig(tuning_log=None, quantize=QuantizeConfig(calibration[:10])).for_preset(preset)
    tasks = ms.relax_integration.extract_tasks(run_to_tuning_point(mod, target, config), target)
    # conv2d_1 and conv2d_2 (conv2d_0 has one input channel: too few to fill a dot product)
    convs = [t for t in tasks if re.match(r"fused_conv2d\d", t.task_name)]
    assert len(convs) == 2
    for task in convs:
        context = ms.TuneContext(mod=task.dispatched[0], target=target, space_generator="post-order-apply",
                                 task_name=task.task_name)
        used = {name for space in context.generate_design_space() for name in re.findall(r'"(dot_\w+)"', str(space.trace))}
        assert intrinsic in used, (task.task_name, used)


def test_signed_inputs_shift_to_uint8_with_compensation_exactly(digits):
    """u8 x s8 targets (x86): a layer whose input can be negative reads it + 128 as uint8, padded with
    128 and with its input channels padded to 4; the result equals the plain int8 layer's."""
    mod, calibration, x_test, _ = digits
    signed = tuple({"input": sample["input"] - 0.5} for sample in calibration)
    plain, _ = _quantized(mod, signed)
    shifted, report = _quantized(mod, signed, form=IntegerForm(shift_signed_inputs=True, channel_multiple=4))
    first = _integer_calls(shifted)[0]
    assert report.layers[0].input_dtype == "int8"  # calibrated as signed ...
    assert str(first.args[0].ty.dtype) == "uint8"  # ... and run as uint8 with zero point 128
    assert int(first.args[1].ty.shape[1]) == 4  # 1 input channel padded to the intrinsic's 4
    inputs = x_test[:50] - 0.5
    np.testing.assert_allclose(_predictions(shifted, inputs), _predictions(plain, inputs), rtol=1e-4, atol=1e-4)


def test_layers_int8_would_not_speed_up_stay_float_with_the_reason(digits):
    """The digits CNN at 8x8: every tensor fits in cache, so only depth decides. Its first conv sums
    9 products per output (1 channel x 3x3), below VNNI's 32 and AVX2's 96: float, with the reason;
    the others (144, 288, 256) pay on both. With no dot product nothing pays, unless tensors stream
    from memory. The mixed module computes what --keep-float conv2d_0 computes."""
    mod, calibration, x_test, _ = digits
    for speedup, depth in ((4.0, 32), (4 / 3, 96)):
        payoff = Int8Payoff(dot_speedup=speedup, cache_bytes=256 * 1024)
        assert payoff.min_depth == depth
        quantized, report = _quantized(mod, calibration, payoff=payoff)
        assert report.kept_float == ["conv2d_0"]
        assert f"a reduction of 9 < {depth} products per output" in report.layers[0].note
        assert [str(call.args[1].ty.dtype) for call in _integer_calls(quantized)] == ["float32", "int8", "int8", "int8"]
    explicit, _ = _quantized(mod, calibration, keep_float=("conv2d_0",))
    np.testing.assert_allclose(_predictions(quantized, x_test[:20]), _predictions(explicit, x_test[:20]), rtol=1e-5, atol=1e-5)
    _, report = _quantized(mod, calibration, payoff=Int8Payoff(dot_speedup=None, cache_bytes=256 * 1024))
    assert len(report.kept_float) == 4 and "no int8 dot-product kernel" in report.layers[1].note
    _, report = _quantized(mod, calibration, payoff=Int8Payoff(dot_speedup=None, cache_bytes=1024))
    assert report.kept_float == []  # 8x8x16 floats and more: "streaming" at a 1 KB cache


def test_output_channels_are_padded_to_the_intrinsics_width_and_sliced_back_exactly(digits):
    """The dot-product kernel computes 8 output channels at once (VNNI's narrow form, AVX2): the digits
    head's 10 classes become 16 integer outputs, zero weights in the last 6, sliced back to 10 before
    the rescale. Exact: the same outputs as the unpadded integer form. (ShuffleNetV2's 58- and
    116-channel convs ran as int32 vector code, 7x slower than float, before they were padded.)"""
    mod, calibration, x_test, _ = digits
    padded, _ = _quantized(mod, calibration, form=IntegerForm(output_channel_multiple=8))
    plain, _ = _quantized(mod, calibration)
    head = _integer_calls(padded)[-1]
    assert head.op.name == "relax.matmul" and [int(d) for d in head.args[1].ty.shape][-1] == 16
    assert [int(d) for d in _integer_calls(plain)[-1].args[1].ty.shape][-1] == 10
    slices = []
    relax.analysis.post_order_visit(padded["main"], lambda e: slices.append(e) if isinstance(e, relax.Call)
                                    and getattr(e.op, "name", "") == "relax.strided_slice" else None)
    assert len(slices) == 1 and [int(d) for d in slices[0].ty.shape] == [1, 10]
    np.testing.assert_allclose(_predictions(padded, x_test[:50]), _predictions(plain, x_test[:50]), rtol=1e-6, atol=1e-6)


def _ten_channel_convs():
    """NCHW conv 8 -> 10 channels + ReLU, then 10 -> 6: neither output count a multiple of 8."""
    from tvm.script import relax as R

    rng = np.random.default_rng(5)
    w1 = rng.standard_normal((10, 8, 3, 3)).astype("float32") * 0.2
    w2 = rng.standard_normal((6, 10, 1, 1)).astype("float32") * 0.2

    @tvm.script.ir_module
    class Module:
        @R.function
        def main(input: R.Tensor((1, 8, 12, 12), "float32")):
            with R.dataflow():
                y = R.nn.relu(R.nn.conv2d(input, R.const(w1), padding=1))
                y = R.nn.conv2d(y, R.const(w2))
                R.output(y)
            return y

    return Module


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_padded_conv_outputs_are_sliced_on_the_channel_axis_in_either_layout(layout):
    """Convs with 10 and 6 output channels compute 16 and 8, sliced back on the channel axis (1 in
    NCHW, 3 once the layout phase made the convs NHWC): the same outputs as the unpadded form."""
    from passes import LayoutConfig, convert_layout

    rng = np.random.default_rng(6)
    calibration = tuple({"input": rng.random((1, 8, 12, 12), dtype=np.float32)} for _ in range(4))
    padded, _ = _quantized(_ten_channel_convs(), calibration, form=IntegerForm(output_channel_multiple=8))
    plain, _ = _quantized(_ten_channel_convs(), calibration)
    if layout == "NHWC":
        padded, plain = (convert_layout(LayoutConfig("NHWC"))(mod) for mod in (padded, plain))
    assert [int(call.args[1].ty.shape[0]) for call in _integer_calls(padded)] == [16, 8]  # O first: OIHW, OHWI
    slices = []
    relax.analysis.post_order_visit(padded["main"], lambda e: slices.append(e) if isinstance(e, relax.Call)
                                    and getattr(e.op, "name", "") == "relax.strided_slice" else None)
    axis = 1 if layout == "NCHW" else 3
    assert [[int(a.value) for a in s.args[1].fields] for s in slices] == [[axis], [axis]]  # (x, axes, begin, end)
    assert [int(s.ty.shape[axis]) for s in slices] == [10, 6]
    x = [rng.random((1, 8, 12, 12), dtype=np.float32) for _ in range(3)]
    for a, b in zip(run_on_host(padded, [{"input": v} for v in x]), run_on_host(plain, [{"input": v} for v in x])):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-6, atol=1e-6)


def test_padding_counts_in_whether_int8_pays(digits):
    """Padded channels are computed for nothing: the 10-class head (256 products per output) computed as
    16 runs AVX2's 4/3x dot product at 10/16 of it, slower than float, so it stays float there; VNNI's
    4x at 10/16 still pays at that depth."""
    mod, calibration, _, _ = digits
    _, report = _quantized(mod, calibration, payoff=Int8Payoff(dot_speedup=4 / 3, cache_bytes=256 * 1024, output_channels=8))
    head = report.layers[-1]
    assert not head.quantized and "its 10 output channels computed as 16 leave the dot product no faster" in head.note
    _, report = _quantized(mod, calibration, payoff=Int8Payoff(dot_speedup=4.0, cache_bytes=256 * 1024, output_channels=8))
    assert report.layers[-1].quantized


def test_weight_levels_bound_the_integer_weights(digits):
    mod, calibration, _, _ = digits
    quantized, _ = _quantized(mod, calibration, form=IntegerForm(weight_levels=63))
    for call in _integer_calls(quantized):
        assert np.abs(call.args[1].value.numpy()).max() == 63


def test_a_max_pool_or_reshape_before_a_quantized_layer_moves_the_integers(digits):
    """max and data movement commute with the monotonic quantize: the pools and the flatten read the
    int8 tensors their producers' kernels write (a quarter of the float bytes), and the layers after
    read their integers directly."""
    mod, calibration, x_test, _ = digits
    quantized, _ = _quantized(mod, calibration)
    pools = []

    def visit(expr):
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.nn.max_pool2d":
            pools.append(expr)

    relax.analysis.post_order_visit(quantized["main"], visit)
    assert len(pools) == 2 and {str(pool.ty.dtype) for pool in pools} == {"uint8"}
    bound = {b.var: b.value for block in quantized["main"].body.blocks for b in block.bindings}
    inputs = [bound[call.args[0]] for call in _integer_calls(quantized)]
    assert [getattr(value.op, "name", "") for value in inputs[2:]] == ["relax.nn.max_pool2d", "relax.reshape"]
    assert str(bound[inputs[3].args[0]].op.name) == "relax.nn.max_pool2d"  # the flatten of the second pool


def test_rounding_to_int8_vectorizes():
    """Requantizing epilogues round (Relax's round legalizes to tirx.nearbyint): a vectorized loop
    that rounds must become vector code, rounding half to even as numpy does, not a scalar loop
    (which LLVM may re-vectorize across the outer loop with gathers)."""
    from tvm.script import tirx as T

    @T.prim_func
    def requantize(x: T.Buffer((64, 16), "float32"), q: T.Buffer((64, 16), "uint8")):
        for i in range(64):
            for j in T.vectorized(16):
                q[i, j] = T.Cast("uint8", T.min(T.max(T.nearbyint(x[i, j]), T.float32(0)), T.float32(255)))

    vectorized = tvm.tirx.transform.VectorizeLoop()(tvm.IRModule({"main": requantize})).script()
    assert "for j" not in vectorized and 'T.Cast("uint8x16"' in vectorized  # one vector statement per row
    library = tvm.compile(tvm.IRModule({"main": requantize}), target=tvm.target.Target({"kind": "llvm", "mcpu": "haswell"}))
    values = (np.arange(64 * 16, dtype="float32").reshape(64, 16) - 100) / 4  # halves: ties to even
    out = tvm.runtime.tensor(np.zeros((64, 16), "uint8"))
    library["main"](tvm.runtime.tensor(values), out)
    np.testing.assert_array_equal(out.numpy(), np.clip(np.round(values), 0, 255).astype("uint8"))
