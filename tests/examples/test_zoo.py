"""The model zoo (examples/zoo.py) compiled for every CPU preset, without tuning records, against onnxruntime.

Each compiled model runs where it can: natively for an x86 preset the CPU supports, under qemu for the
small models on ARM presets, else it is compiled only. Outputs must match onnxruntime's (max abs
difference relative to the output's scale) and agree on the top-1 class.

The default run has a fast subset at 64x64 (SqueezeNet old-style and ShuffleNet natively, SqueezeNet
for an ARM core under qemu). The full matrix is `pytest -m zoo tests/examples/test_zoo.py`
(EDGEC_ZOO_SIZE sets the CNNs' input resolution, default 224).
"""

from __future__ import annotations

import json

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from examples.zoo import OLD_STYLE, ZOO, export_zoo_model, zoo_model

CPU_PRESETS = ("x86-64", "x86-avx512", "cortex-a53", "cortex-a72", "cortex-a76")
# Small enough to run under qemu in the full matrix (naive untuned kernels emulate slowly)
QEMU_MODELS = frozenset({"squeezenet1_1", "shufflenet_v2_x1_0", "mobilenet_v3_small", "vit_tiny"})
# The old-style export (opset 9, IR v3, weights as inputs, variadic Sum) users bring for these
OLD_STYLE_MATRIX = ("resnet50", "googlenet", "squeezenet1_1")
FULL_SIZE = int(os.environ.get("EDGEC_ZOO_SIZE", "224"))
SMALL = 64
# |tvm - onnxruntime| <= ATOL + RTOL * max|onnxruntime|: float32 through up to ~170 layers, summed in
# another order by each engine
ATOL, RTOL = 1e-5, 1e-3


def _cases_for_matrix():
    for name in ZOO:
        for preset in CPU_PRESETS:
            yield pytest.param(name, preset, False, id=f"{name}-{preset}")
            if name in OLD_STYLE_MATRIX:
                yield pytest.param(name, preset, True, id=f"{name}-old-{preset}")


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo")


def compile_and_check(name: str, preset_name: str, old_style: bool, size: int | None, directory: Path,
                      run_emulated: bool) -> str:
    """Export, compile untuned for `preset_name`, and compare with onnxruntime where it runs; returns
    how it ran ("native", "qemu" or "compile-only")."""
    import onnxruntime as ort

    from compiler.build import CompileOptions, compile_model
    from compiler.frontends import load_model
    from compiler.pipeline import PipelineConfig
    from compiler.runtime import EmulatedModel, LocalModel
    from targets import resolve_target

    size = None if name == "vit_tiny" else size
    onnx_path = export_zoo_model(name, directory / "onnx", size, old_style)
    preset = resolve_target(preset_name)
    artifact = directory / f"{onnx_path.stem}-{preset_name}"
    if not artifact.exists():
        compile_model(load_model(onnx_path), CompileOptions(preset, PipelineConfig(tuning_log=None)), artifact)
    assert (artifact / "model.so").is_file() and (artifact / "manifest.json").is_file()
    # every kernel scheduled by edgec's defaults on every CPU preset: none left as TVM's naive loops
    schedules = json.loads((artifact / "manifest.json").read_text())["schedules"]
    assert schedules and set(schedules.values()) == {"edgec-default"}, schedules
    mode = preset.execution_here().mode
    if mode == "compile-only" or (mode == "qemu" and not run_emulated):
        return "compile-only"
    if mode == "qemu":
        _require_aarch64_runner()
    _, x = zoo_model(name, size)
    feeds = {"input": x.numpy()}
    (expected,) = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, feeds)
    model = LocalModel(artifact) if mode == "native" else EmulatedModel(artifact)
    (actual,) = model.run(feeds).values()
    assert_matches(actual, expected)
    return mode


def assert_matches(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape and np.isfinite(actual).all()
    scale = float(np.abs(expected).max())
    diff = float(np.abs(actual - expected).max())
    assert diff <= ATOL + RTOL * scale, f"max abs diff {diff:.3g} for outputs of scale {scale:.3g}"
    top2 = np.sort(expected.reshape(len(expected), -1), axis=1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > 2 * (ATOL + RTOL * scale)  # a near-tie may flip legitimately
    np.testing.assert_array_equal(actual.argmax(-1)[decided], expected.argmax(-1)[decided])


def _require_aarch64_runner() -> None:
    from compiler.errors import ToolchainError
    from compiler.runtime.toolchain import build_runner

    for tool, package in (("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"), ("qemu-aarch64", "qemu-user")):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} missing: apt-get install {package}")
    try:
        build_runner("aarch64")
    except ToolchainError as err:  # offline with an empty cache
        pytest.skip(str(err))


def _native_x86() -> str:
    from targets import first_native

    return first_native(("x86-avx512", "x86-64")).name


# --- default run: a fast, representative subset -------------------------------------------------------

@pytest.mark.parametrize(("name", "old_style"), [("squeezenet1_1", True), ("shufflenet_v2_x1_0", False)])
def test_subset_on_this_x86_cpu(name, old_style, zoo_dir):
    """Fire modules (concat) from an old-style export, and ShuffleNet's split + channel shuffle, in the
    NHWC layout of the best x86 preset this CPU runs."""
    assert compile_and_check(name, _native_x86(), old_style, SMALL, zoo_dir, run_emulated=False) == "native"


def test_subset_on_an_arm_core(zoo_dir):
    mode = compile_and_check("squeezenet1_1", "cortex-a53", False, SMALL, zoo_dir, run_emulated=True)
    assert mode in ("qemu", "compile-only")


def test_registry_lists_every_architecture():
    assert set(ZOO) == {"resnet50", "squeezenet1_1", "shufflenet_v2_x1_0", "googlenet", "densenet121",
                        "efficientnet_b0", "mobilenet_v3_small", "vit_tiny"}
    assert set(OLD_STYLE_MATRIX) <= OLD_STYLE
    assert all(ZOO[n].input_shape == (1, 3, 224, 224) for n in ZOO if n != "vit_tiny")


# torchvision's parameter counts: the architectures match theirs exactly (GoogLeNet here has the paper's
# 5x5 convs and LRNs, and no auxiliary heads; the ViT is edgec's own small one)
TORCHVISION_PARAMS = {"resnet50": 25_557_032, "squeezenet1_1": 1_235_496, "shufflenet_v2_x1_0": 2_278_604,
                      "densenet121": 7_978_856, "efficientnet_b0": 5_288_548, "mobilenet_v3_small": 2_542_856}


@pytest.mark.parametrize("name", list(TORCHVISION_PARAMS))
def test_architecture_matches_torchvision(name):
    import torch

    model, x = zoo_model(name, 32)
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS[name]
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 1000) and torch.isfinite(y).all()


def test_old_style_export_has_the_legacy_form(zoo_dir):
    """opset 9, IR version 3, every weight also a graph input, residual adds as a variadic Sum."""
    import onnx

    model = onnx.load(export_zoo_model("resnet50", zoo_dir / "onnx", 32, old_style=True))
    assert model.ir_version == 3 and model.opset_import[0].version == 9
    weights = {t.name for t in model.graph.initializer}
    assert weights and weights < {i.name for i in model.graph.input}
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Sum") == 16 and "Add" not in ops  # one per Bottleneck
    lrn = onnx.load(export_zoo_model("googlenet", zoo_dir / "onnx", 32, old_style=True))
    assert [n.op_type for n in lrn.graph.node].count("LRN") == 2
    with pytest.raises(ValueError, match="no old-style export of 'vit_tiny'"):
        export_zoo_model("vit_tiny", zoo_dir / "onnx", old_style=True)


# --- the full matrix: pytest -m zoo -------------------------------------------------------------------

@pytest.mark.zoo
@pytest.mark.parametrize(("name", "preset", "old_style"), list(_cases_for_matrix()))
def test_zoo_matrix(name, preset, old_style, zoo_dir):
    compile_and_check(name, preset, old_style, FULL_SIZE, zoo_dir, run_emulated=name in QEMU_MODELS)
