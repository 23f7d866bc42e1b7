"""int8 compiles wherever fp32 does, on the CPU's dot-product kernels, and stays close to fp32.

Every architecture of examples/int8_matrix.py compiled with `--quantize int8` for every CPU preset
(ARM ones run under qemu, armv7 compiles only), its outputs compared with the float model's
(onnxruntime) on held-out inputs: top-1 agreement and SQNR. The whole matrix runs with
`pytest -m int8_matrix`; the default run takes a representative subset (every model on x86-64,
whose AVX2 kernels run on any x86 machine, the CPU's best x86 preset, and ARM sdot and NEON).
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pytest

from compiler.build import CompileOptions, compile_model
from compiler.frontends import load_model
from compiler.pipeline import PipelineConfig
from compiler.runtime import open_model
from examples.int8_matrix import MODELS, export_matrix_model, matrix_inputs
from passes import QuantizeConfig
from targets import resolve_target

CPU_PRESETS = ("x86-avx512", "x86-64", "cortex-a53", "cortex-a72", "cortex-a76", "armv7")
DOT_PRODUCT = {"x86-avx512": "vnni", "x86-64": "avx2", "cortex-a53": "neon", "cortex-a72": "neon", "cortex-a76": "sdot"}
DEFAULT_SUBSET = {("mobile-block", "x86-64"), ("shuffle-mix", "x86-64"), ("mobile-block", "x86-avx512"),
                  ("shuffle-mix", "cortex-a76"), ("mobile-block", "cortex-a53")}
TEST_INPUTS = 24
MIN_SQNR_DB = 20.0
MIN_TOP1_AGREEMENT = 1.0 - 1.0 / TEST_INPUTS  # at most one of the held-out inputs may change class


def _cases():
    for model in MODELS:
        for preset in CPU_PRESETS:
            marks = () if (model, preset) in DEFAULT_SUBSET else (pytest.mark.int8_matrix,)
            yield pytest.param(model, preset, marks=marks, id=f"{model}-{preset}")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    directory = tmp_path_factory.mktemp("int8-matrix")
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = export_matrix_model(name, directory / f"{name}.onnx")
        return cache[name]

    return get


@pytest.mark.parametrize("model_name,preset_name", _cases())
def test_int8_compiles_on_the_dot_product_and_agrees_with_fp32(model_name, preset_name, exported, tmp_path,
                                                               record_property):
    preset = resolve_target(preset_name)
    mode = preset.execution_here().mode
    if preset_name == "x86-avx512" and mode != "native":
        pytest.skip("this CPU lacks AVX-512 VNNI")
    onnx_path = exported(model_name)
    calibration = tuple({"input": x[None]} for x in matrix_inputs(16, seed=2))
    # every layer: int8 must compile and stay accurate wherever fp32 does, not only where it pays
    config = PipelineConfig(tuning_log=None, quantize=QuantizeConfig(calibration, "percentile", every_layer=True))
    out = tmp_path / "int8"
    compile_model(load_model(onnx_path), CompileOptions(preset, config), out)
    manifest = json.loads((out / "manifest.json").read_text())
    quantize = next(p for p in manifest["passes"] if p["phase"] == "quantize")["report"]
    assert quantize["quantized"] >= 4 and not quantize["kept_float"]
    schedules = manifest["schedules"]
    assert "naive" not in schedules.values()
    if preset_name in DOT_PRODUCT:  # every preset with a dot product runs its int8 convs on it
        on_dot = [name for name, source in schedules.items() if source.endswith(f"+ {DOT_PRODUCT[preset_name]}")]
        assert len(on_dot) >= 3, schedules
    if mode == "compile-only":
        return  # armv7: no runtime for it here; it compiled, with every kernel scheduled
    if mode not in ("native", "qemu"):
        pytest.skip(preset.execution_here().reason)
    inputs = matrix_inputs(TEST_INPUTS, seed=3)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model = open_model(out, "local" if mode == "native" else "qemu")
    reference = np.concatenate([session.run(None, {"input": x[None]})[0] for x in inputs])
    ours = np.concatenate([model.run({"input": x[None]})["output"] for x in inputs])
    agreement = float((reference.argmax(1) == ours.argmax(1)).mean())
    sqnr = float(10 * np.log10(np.sum(reference ** 2) / np.sum((ours - reference) ** 2)))
    record_property("top1_agreement", agreement)
    record_property("sqnr_db", sqnr)
    assert sqnr >= MIN_SQNR_DB
    assert agreement >= MIN_TOP1_AGREEMENT


@pytest.mark.parametrize("preset_name,int8_layers", [
    ("x86-avx512", ["conv2d_4", "conv2d_5", "matmul_0"]),  # VNNI, 4x: depth >= 32 pays
    ("cortex-a76", ["conv2d_4", "conv2d_5", "matmul_0"]),  # sdot, 4x
    ("cortex-a53", ["conv2d_4"]),  # NEON smull, 2x: depth >= 48
    ("x86-64", []),  # AVX2, 4/3: depth >= 96, none here
])
def test_by_default_only_layers_int8_speeds_up_are_quantized(preset_name, int8_layers, exported):
    """shuffle-mix at 32x32 keeps every tensor in cache, so a layer's depth and kind decide: the
    grouped and depthwise convs and the shallow convs (stem 27, 1x1 24) stay float on every CPU, each
    with its reason; the 48- and 40-deep 1x1 convs and the head pay where the dot product is fast enough.
    (Zen 4, x86-avx512: this build 1.08x its fp32 build; every layer int8 was 0.87x.)"""
    from passes import quantize_int8, simplify_for_inference

    calibration = tuple({"input": x[None]} for x in matrix_inputs(4, seed=2))
    config = PipelineConfig(quantize=QuantizeConfig(calibration, "percentile")).for_preset(resolve_target(preset_name))
    reports = []
    quantize_int8(config.quantize, reports.append)(simplify_for_inference()(load_model(exported("shuffle-mix")).mod))
    report = reports[0]
    assert [layer.name for layer in report.layers if layer.quantized] == int8_layers
    assert all(layer.note.startswith("kept float: int8 would not be faster") for layer in report.layers if not layer.quantized)
    every = QuantizeConfig(calibration, "percentile", every_layer=True)
    assert PipelineConfig(quantize=every).for_preset(resolve_target(preset_name)).quantize.payoff is None


def test_an_onnxruntime_qdq_model_compiles_to_the_kernels_of_edgecs_own_int8(exported, tmp_path):
    """Pre-quantized input (onnxruntime's quantize_static, QDQ): the residual block's Q/DQ pairs do not
    survive as kernels of their own, every conv runs on the dot product, the kernel count is that of
    edgec's own int8 build of the float model, and the outputs are onnxruntime's on the QDQ model."""
    from examples.ort_quantize import quantize_with_onnxruntime

    preset = resolve_target("x86-64")
    source = exported("mobile-block")
    calibration = matrix_inputs(16, seed=2)
    quantized = quantize_with_onnxruntime(source, tmp_path / "mobile-block-qdq.onnx",
                                          ({"input": x[None]} for x in calibration))
    builds = {}
    for name, path, quantize in (
            ("qdq", quantized, None),
            ("own", source, QuantizeConfig(tuple({"input": x[None]} for x in calibration), "percentile", every_layer=True))):
        builds[name] = tmp_path / name
        compile_model(load_model(path), CompileOptions(preset, PipelineConfig(tuning_log=None, quantize=quantize)),
                      builds[name])
    schedules = {name: json.loads((out / "manifest.json").read_text())["schedules"] for name, out in builds.items()}
    assert not [kernel for kernel in schedules["qdq"] if "quantize" in kernel], schedules["qdq"]
    assert len(schedules["qdq"]) == len(schedules["own"])
    on_dot = [kernel for kernel, source in schedules["qdq"].items() if source.endswith("+ avx2")]
    assert len(on_dot) == len([k for k, source in schedules["own"].items() if source.endswith("+ avx2")]) >= 3
    inputs = matrix_inputs(TEST_INPUTS, seed=3)
    session = onnxruntime.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])
    reference = np.concatenate([session.run(None, {"input": x[None]})[0] for x in inputs])
    model = open_model(builds["qdq"])
    ours = np.concatenate([model.run({"input": x[None]})["output"] for x in inputs])
    assert float(10 * np.log10(np.sum(reference ** 2) / np.sum((ours - reference) ** 2))) >= MIN_SQNR_DB
    assert float((reference.argmax(1) == ours.argmax(1)).mean()) >= MIN_TOP1_AGREEMENT
