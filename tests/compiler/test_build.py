"""End-to-end: example models compiled for real targets, run, and compared with the reference engines."""

from __future__ import annotations

import collections
import json
import shutil

import numpy as np
import pytest

from compiler.artifact import read_manifest, sha256_file
from compiler.build import CompileOptions, compile_model
from compiler.devicecode import embedded_device_code
from compiler.errors import ArtifactError, InputError, UnsupportedOperatorError
from compiler.frontends import import_onnx, load_model
from compiler.pipeline import PipelineConfig
from compiler.runtime import LocalModel
from passes import LayoutConfig, WinogradConfig
from targets import X86_BY_CAPABILITY, resolve_target
from targets.elf import elf_machine

# Untuned TVM kernels sum in a different order than onnxruntime/PyTorch: bound the error relative to
# the output's magnitude (ResNet-18's logits reach ~1e2 with random weights).
RELATIVE_TOLERANCE = 1e-4


def assert_close(actual: np.ndarray, expected: np.ndarray) -> float:
    diff = float(np.abs(actual - expected).max())
    bound = RELATIVE_TOLERANCE * max(1.0, float(np.abs(expected).max()))
    assert actual.shape == expected.shape
    assert diff <= bound, f"max abs diff {diff:.3g} exceeds {bound:.3g}"
    return diff


@pytest.mark.parametrize("name", ["digits", "mobilenetv2", "resnet18"])
def test_onnx_model_on_host_matches_onnxruntime(name, example, compiled, record_property):
    files = example(name)
    outputs = LocalModel(compiled(name, "onnx", "host")).run({"input": files.input})
    diff = assert_close(outputs["output"], files.onnxruntime_output())
    record_property("max_abs_diff_vs_onnxruntime", diff)


@pytest.mark.parametrize("name", ["digits", "mobilenetv2", "resnet18"])
def test_pt2_model_on_host_matches_pytorch(name, example, compiled, record_property):
    files = example(name)
    model = LocalModel(compiled(name, "pt2", "host"))
    (input_spec,) = model.manifest.inputs
    (output,) = model.run({input_spec.name: files.input}).values()
    diff = assert_close(output, files.torch_output())
    record_property("max_abs_diff_vs_pytorch", diff)


def test_run_results_stay_the_callers_after_later_runs(tmp_path):
    # run() refills one tensor per input on every call, and this model's output is its input
    # tensor itself: results must be copied out, or the next run would overwrite them.
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["same"])], "identity",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 2, 3])],
        [helper.make_tensor_value_info("same", TensorProto.FLOAT, [1, 2, 3])])
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_model.ir_version = 8
    compile_model(import_onnx(onnx_model), CompileOptions(resolve_target("host")), tmp_path / "identity")
    model = LocalModel(tmp_path / "identity")
    image = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    first = model.run({"image": image})["same"]
    second = model.run({"image": -image})["same"]
    assert np.array_equal(first, image) and np.array_equal(second, -image)


def test_digits_accuracy_is_unchanged_by_compilation(example, compiled):
    from examples.digits_cnn import load_digits_split

    _, _, x_test, y_test = load_digits_split()
    model = LocalModel(compiled("digits", "onnx", "host"))
    predictions = np.array([model.run({"input": x[None]})["output"].argmax() for x in x_test])
    files = example("digits")
    import torch

    with torch.no_grad():
        reference = files.model(torch.from_numpy(x_test)).numpy().argmax(1)
    assert (predictions == reference).mean() == 1.0
    assert (predictions == y_test).mean() >= 0.95


@pytest.mark.parametrize("preset", X86_BY_CAPABILITY)
@pytest.mark.parametrize("name", ["digits", "resnet18", "mobilenetv2"])
def test_x86_presets_run_natively_with_their_shipped_records(example, compiled, name, preset):
    """x86-64 and x86-avx512 (NHWC, Winograd) with their shipped records, which cover every kernel."""
    execution = resolve_target(preset).execution_here()
    if execution.mode != "native":
        pytest.skip(f"{preset} does not run here: {execution.reason}")
    files = example(name)
    artifact = compiled(name, "onnx", preset)
    manifest = json.loads((artifact / "manifest.json").read_text())
    phases = {p["phase"]: p for p in manifest["passes"]}
    assert phases["layout"]["settings"] == {"layout": "NHWC", "chosen_by": "preset"}
    # ResNet-18's 3x3 stride-1 convs: F(4x4) in the 56x56 and 28x28 stages, F(2x2) in the 7x7 stage
    # and, with AVX-512 (which multiplies twice as fast against the same memory), the 14x14 stage;
    # MobileNetV2's 3x3 convs are depthwise, the digits CNN's too small
    layers = phases["winograd"]["report"]["layers"]
    expected = {"resnet18": {"x86-64": {4: 10, 2: 3}, "x86-avx512": {4: 7, 2: 6}}[preset]}.get(name, {})
    assert collections.Counter(layer["tile"] for layer in layers) == expected
    assert manifest["tuning"]["tuned"] == manifest["tuning"]["tasks"]
    outputs = LocalModel(artifact).run({"input": files.input})
    assert_close(outputs["output"], files.onnxruntime_output())


def test_winograd_resnet18_with_shipped_records_matches_onnxruntime(example, tmp_path):
    """NCHW with --winograd, F(4x4) throughout: the 3x3 stride-1 convs with 16+ tiles run as tuned
    Winograd kernels (TOPI's NCHW form, with its own schedule rules)."""
    files = example("resnet18")
    config = PipelineConfig(layout=LayoutConfig("NCHW"), winograd=WinogradConfig(enabled=True, tile=4))
    compile_model(load_model(files.onnx), CompileOptions(resolve_target("x86-64"), config), tmp_path / "winograd")
    manifest = json.loads((tmp_path / "winograd" / "manifest.json").read_text())
    report = next(p for p in manifest["passes"] if p["phase"] == "winograd")["report"]
    assert report["winograd_layers"] == 10
    assert manifest["tuning"]["tuned"] == manifest["tuning"]["tasks"]
    outputs = LocalModel(tmp_path / "winograd").run({"input": files.input})
    assert_close(outputs["output"], files.onnxruntime_output())


@pytest.mark.parametrize(
    ("target", "machine", "execution"),
    [("cortex-a72", "aarch64", "qemu"), ("cortex-a53", "aarch64", "qemu"), ("armv7", "arm", "compile-only")],
)
def test_arm_presets_cross_link_for_their_architecture(target, machine, execution, compiled):
    artifact = compiled("resnet18" if target == "cortex-a72" else "digits", "onnx", target)
    manifest = read_manifest(artifact)
    assert elf_machine(artifact / manifest.library) == machine
    assert manifest.target["name"] == target
    assert manifest.target["execution"]["mode"] == execution
    with pytest.raises(ArtifactError, match=f"is for {target}"):
        LocalModel(artifact)


@pytest.mark.skipif(shutil.which("nvcc") is None,
                    reason="CUDA presets compile device code with nvcc: apt-get install nvidia-cuda-toolkit, or the CUDA toolkit")
@pytest.mark.parametrize(
    ("target", "machine", "arch"),
    [("jetson-orin", "aarch64", "sm_87"), ("cuda-sm80", "x86_64", "sm_80"), ("cuda-sm90", "x86_64", "sm_90")],
)
def test_cuda_presets_embed_an_nvcc_fatbin_for_their_arch(target, machine, arch, compiled):
    artifact = compiled("digits", "onnx", target)
    manifest = read_manifest(artifact)
    library = artifact / manifest.library
    code = embedded_device_code(library)
    assert elf_machine(library) == machine
    assert code["cuda_fatbin"] and code["cuda_archs"] == [arch]
    assert not code["cuda_source"]  # compiled ahead of time: the device needs no NVRTC
    assert manifest.target["device_code"] == {"format": "fatbin", "arch": arch, "compiler": "nvcc", "contains": "SASS and PTX"}
    assert manifest.target["execution"]["mode"] == "compile-only"


@pytest.mark.parametrize("target", ["mali-g52", "mali-g610"])
def test_mali_presets_embed_opencl_kernels_with_an_aarch64_host(target, compiled):
    artifact = compiled("digits", "onnx", target)
    manifest = read_manifest(artifact)
    code = embedded_device_code(artifact / manifest.library)
    assert elf_machine(artifact / manifest.library) == "aarch64"
    assert code["opencl_source"] and not code["cuda_fatbin"]
    assert manifest.target["device_code"]["format"] == "opencl-source"
    assert manifest.target["execution"]["mode"] == "compile-only"


def test_manifest_records_interface_target_versions_passes_and_hashes(compiled):
    artifact = compiled("digits", "onnx", "host")
    data = json.loads((artifact / "manifest.json").read_text())
    assert data["inputs"] == [{"name": "input", "shape": [1, 1, 8, 8], "dtype": "float32"}]
    assert data["outputs"] == [{"name": "output", "shape": [1, 10], "dtype": "float32"}]
    assert data["target"]["name"] == "host" and data["target"]["tvm_target"]["kind"] == "llvm"
    assert data["versions"]["tvm"] == "0.27.0.post1" and data["versions"]["tvm_ffi"] == "0.1.14.post0"
    assert data["model"]["format"] == "onnx" and data["model"]["opset"] == 17 and len(data["model"]["sha256"]) == 64
    phases = [p["phase"] for p in data["passes"]]
    assert phases == ["simplify", "lower-qdq", "layout", "fold-requantize", "winograd", "fast-math", "dispatch", "legalize-fuse", "depthwise-rule",
                      "mark-prepack", "default-schedules", "prepack-weights", "lower", "finalize"]
    assert "simplify_for_inference" in data["passes"][0]["passes"]
    assert data["passes"][1]["report"] == {"integer_layers": 0, "layers": []}  # a float model
    assert data["passes"][2]["settings"] == {"layout": "NCHW", "chosen_by": "preset"}
    assert data["passes"][4] == {"phase": "winograd", "passes": [], "settings": {  # off for host: the preset's choice
        "enabled": False, "tile": "per layer", "min_channels": 16, "min_macs": 10_000_000, "min_tiles": 16,
        "macs_per_byte": 6.0, "chosen_by": "preset"}}
    # conv + bias + relu (and the rest) fused: fewer kernels than operators
    assert 0 < data["kernels"]["after_fusion"] < data["kernels"]["before_fusion"]
    assert data["files"] == {"model.so": sha256_file(artifact / "model.so")}
    assert sorted(p.name for p in artifact.iterdir()) == ["manifest.json", "model.so"]
    # every kernel scheduled: the records' (none for host) or edgec's default, none left naive
    assert data["schedules"] and set(data["schedules"].values()) == {"edgec-default"}


def test_dump_ir_writes_the_module_after_every_phase(example, tmp_path):
    ir_dir = tmp_path / "ir"
    options = CompileOptions(resolve_target("host"), PipelineConfig(dump_ir=ir_dir))
    compile_model(load_model(example("digits").onnx), options, tmp_path / "out")
    dumps = sorted(p.name for p in ir_dir.iterdir())
    assert dumps == ["00-imported.py", "01-simplify.py", "02-lower-qdq.py", "03-layout.py", "04-fold-requantize.py",
                     "05-winograd.py", "06-fast-math.py", "07-dispatch.py", "08-legalize-fuse.py", "09-depthwise-rule.py",
                     "10-mark-prepack.py", "11-default-schedules.py", "12-prepack-weights.py", "13-lower.py",
                     "14-finalize.py"]
    assert "R.nn.conv2d" in (ir_dir / "00-imported.py").read_text()
    assert "R.nn.conv2d" not in (ir_dir / "08-legalize-fuse.py").read_text()  # lowered to TIR
    assert "layout_free_buffers" in (ir_dir / "10-mark-prepack.py").read_text()


def test_failed_compile_leaves_nothing_behind(tmp_path):
    from examples.onnx_cases import unsupported_op

    out = tmp_path / "out"
    with pytest.raises(UnsupportedOperatorError):
        compile_model(import_onnx(unsupported_op()), CompileOptions(resolve_target("host")), out)
    assert list(tmp_path.iterdir()) == []


def test_compile_replaces_an_artifact_but_never_other_files(example, tmp_path):
    model = load_model(example("digits").onnx)
    options = CompileOptions(resolve_target("host"))
    out = tmp_path / "out"
    compile_model(model, options, out)
    (out / "stale.txt").write_text("from an earlier build")
    compile_model(model, options, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or retired directories
    assert not (out / "stale.txt").exists()

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not an edgec artifact"):
        compile_model(model, options, precious)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_run_rejects_a_modified_library(compiled, tmp_path):
    import shutil

    artifact = tmp_path / "artifact"
    shutil.copytree(compiled("digits", "onnx", "host"), artifact)
    with open(artifact / "model.so", "r+b") as library:
        library.seek(-1, 2)
        library.write(b"\x00" if library.read(1) != b"\x00" else b"\x01")
    with pytest.raises(ArtifactError, match="does not match its sha256"):
        LocalModel(artifact)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"input": np.zeros((1, 1, 8, 9), "float32")}, "input 'input' expects shape 1x1x8x8 float32, given shape 1x1x8x9 float32"),
        ({"input": np.zeros((1, 1, 8, 8), "float64")}, "input 'input' expects shape 1x1x8x8 float32, given shape 1x1x8x8 float64"),
        ({}, "missing input 'input'"),
        ({"input": np.zeros((1, 1, 8, 8), "float32"), "extra": np.zeros(1)}, "unknown input extra; the model's inputs are: input"),
    ],
)
def test_run_rejects_wrong_inputs(inputs, message, compiled):
    model = LocalModel(compiled("digits", "onnx", "host"))
    with pytest.raises(InputError) as error:
        model.run(inputs)
    assert message in str(error.value)


@pytest.mark.parametrize("target", [
    "host", "mali-g610",
    pytest.param("cuda-sm90", marks=pytest.mark.skipif(shutil.which("nvcc") is None, reason="CUDA presets need nvcc")),
])
def test_manifest_records_the_memory_footprint_for_every_device_kind(target, example, compiled):
    from torch import nn

    memory = read_manifest(compiled("digits", "onnx", target)).memory
    # batch norm folds into the convolutions: the library keeps exactly the conv and linear parameters
    layers = [m for m in example("digits").model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert memory["weights_bytes"] == 4 * sum(p.numel() for m in layers for p in m.parameters()) == 103_464
    # the plan holds the largest activation (conv2's 1x32x8x8) and the 1x10 output, and reuses storage:
    # less than every layer's output (conv 16x8x8, conv 32x8x8, pool 32x4x4, conv 64x4x4, pool 64x2x2,
    # flatten 256, linear 10) at once
    every = 4 * (16 * 64 + 32 * 64 + 32 * 16 + 64 * 16 + 64 * 4 + 256 + 10)
    assert 4 * (32 * 8 * 8 + 10) <= memory["peak_activation_bytes"] < every
    assert memory["activation_source"] == "TVM's static memory plan (alloc_storage in main)"


def test_manifest_round_trips_through_read_manifest(compiled):
    artifact = compiled("digits", "onnx", "host")
    data = json.loads((artifact / "manifest.json").read_text())
    assert read_manifest(artifact).to_json() == data


def test_the_same_model_and_preset_give_a_byte_identical_library(example, tmp_path):
    """Default schedules are chosen, never sampled or measured: two compiles, one library."""
    model = load_model(example("digits").onnx)
    options = CompileOptions(resolve_target("x86-64"), PipelineConfig(tuning_log=None))
    first = compile_model(model, options, tmp_path / "first")
    second = compile_model(model, options, tmp_path / "second")
    assert first.files["model.so"] == second.files["model.so"]
    assert set(first.schedules.values()) == {"edgec-default"}
