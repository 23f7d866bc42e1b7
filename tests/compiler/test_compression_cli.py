"""`edgec compile` with --quantize/--prune/--layout, the accuracy guard, `edgec evaluate`, and their bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from examples.digits_cnn import load_digits_split
from tests.helpers import edgec, edgec_json, one_line_error


@pytest.fixture(scope="module")
def digits_data(tmp_path_factory):
    """Calibration data (train split), evaluation data with labels (test split), and a calibration file
    whose images are scaled down 20x: its activation ranges are far too narrow and ruin int8 accuracy."""
    x_train, _, x_test, y_test = load_digits_split()
    directory = tmp_path_factory.mktemp("digits-data")
    np.savez(directory / "calibration.npz", input=x_train[:100])
    np.savez(directory / "narrow.npz", input=x_train[:100] * 0.05)
    np.savez(directory / "eval.npz", input=x_test, label=y_test)
    return directory


def _manifest(artifact) -> dict:
    return json.loads((artifact / "manifest.json").read_text())


def _phase(manifest: dict, name: str) -> dict:
    return next(p for p in manifest["passes"] if p["phase"] == name)


def _evaluate(artifact, data) -> dict:
    return edgec_json("evaluate", artifact, "--eval-data", data / "eval.npz")


def test_int8_compile_records_settings_and_layers_and_stays_accurate(example, digits_data, tmp_path):
    out = tmp_path / "int8"
    printed = edgec("compile", example("digits").onnx, "-t", "host", "-o", out, "--untuned",
                    "--quantize", "int8", "--calibration-data", digits_data / "calibration.npz",
                    "--calibration-method", "entropy", "--keep-float", "matmul_0")
    # conv2d_0 sums 9 products per output (1 channel, 3x3) on an 8x8 image: int8 would not be faster
    assert "quantized: 2 layers int8 (entropy calibration), kept float: conv2d_0, matmul_0" in printed
    quantize = _phase(_manifest(out), "quantize")
    assert quantize["settings"]["method"] == "entropy" and quantize["settings"]["calibration_samples"] == 100
    assert quantize["settings"]["keep_float"] == ["matmul_0"] and quantize["settings"]["layers"] == "where int8 pays"
    layers = quantize["report"]["layers"]
    assert [(layer["name"], layer["quantized"]) for layer in layers] == [
        ("conv2d_0", False), ("conv2d_1", True), ("conv2d_2", True), ("matmul_0", False)]
    assert layers[0]["note"].startswith("kept float: int8 would not be faster (a reduction of 9 <")
    report = _evaluate(out, digits_data)
    assert report["reference_top1_accuracy"] - report["top1_accuracy"] <= 0.01  # the one-point band
    assert report["top1_agreement"] >= 0.99 and report["sqnr_db"] > 25


def test_int8_layers_all_quantizes_layers_int8_would_not_speed_up(example, digits_data, tmp_path):
    out = tmp_path / "every-layer"
    printed = edgec("compile", example("digits").onnx, "-t", "host", "-o", out, "--untuned", "--quantize", "int8",
                    "--calibration-data", digits_data / "calibration.npz", "--int8-layers", "all")
    assert "quantized: 4 layers int8 (percentile calibration), kept float: none" in printed
    assert _phase(_manifest(out), "quantize")["settings"]["payoff"] is None
    assert one_line_error("compile", example("digits").onnx, "-t", "host", "-o", tmp_path / "x", "--int8-layers", "all") \
        == "error: --int8-layers applies to quantization: add --quantize int8"


def test_accuracy_guard_keeps_the_most_harmful_layers_in_float(example, digits_data, tmp_path):
    out = tmp_path / "guarded"
    edgec("compile", example("digits").onnx, "-t", "host", "-o", out, "--untuned",
          "--quantize", "int8", "--calibration-data", digits_data / "narrow.npz", "--calibration-method", "minmax",
          "--eval-data", digits_data / "eval.npz", "--max-accuracy-drop", "0.01")
    guard = _phase(_manifest(out), "quantize")["report"]["accuracy_guard"]
    assert guard["steps"][0]["kept_float"] == [] and guard["float_accuracy"] - guard["steps"][0]["accuracy"] > 0.01
    assert guard["within_band"] and guard["drop"] <= 0.01 and guard["kept_float"]
    assert guard["kept_float"] == [entry["layer"] for entry in guard["sensitivity"]][:len(guard["kept_float"])]
    # what the guard measured is what the artifact does
    report = _evaluate(out, digits_data)
    assert report["top1_accuracy"] == pytest.approx(guard["quantized_accuracy"], abs=0.005)
    assert report["reference_top1_accuracy"] - report["top1_accuracy"] <= 0.01


def test_prune_and_layout_are_recorded_with_kernel_counts(example, tmp_path):
    out = tmp_path / "pruned"
    printed = edgec("compile", example("digits").onnx, "-t", "host", "-o", out, "--untuned",
                    "--prune", "0.5", "--prune-criterion", "l2", "--layout", "NHWC")
    manifest = _manifest(out)
    prune = _phase(manifest, "prune")
    assert prune["settings"] == {"ratio": 0.5, "criterion": "l2"}
    assert [layer["channels_after"] for layer in prune["report"]["layers"]] == [8, 16, 32]
    assert prune["report"]["flops_after"] < prune["report"]["flops_before"] / 3
    assert _phase(manifest, "layout")["settings"] == {"layout": "NHWC", "chosen_by": "--layout"}
    assert "pruned:" in printed and "kernels:" in printed
    assert 0 < manifest["kernels"]["after_fusion"] < manifest["kernels"]["before_fusion"]


@pytest.mark.parametrize("extra, message", [
    (["--quantize", "int8"], "--quantize int8 needs --calibration-data"),
    (["--calibration-data", "x.npz"], "--calibration-data applies to quantization: add --quantize int8"),
    (["--prune", "1.5"], "--prune ratio must be in (0, 1), got 1.5"),
    (["--prune", "0"], "--prune ratio must be in (0, 1), got 0.0"),
    (["--quantize", "int8", "--calibration-data", "{calibration}", "--eval-data", "{eval}"],
     "needs both --eval-data FILE.npz and --max-accuracy-drop"),
    (["--quantize", "int8", "--calibration-data", "{calibration}", "--keep-float", "conv2d_0,conv9"],
     "--keep-float names unknown layer(s) conv9; this model's layers: conv2d_0, conv2d_1, conv2d_2, matmul_0"),
    (["--quantize", "int8", "--calibration-data", "{wrong_shape}"],
     "'input' has shape 100x8x8; expected N x 1x1x8x8"),
    (["--quantize", "int8", "--calibration-data", "{wrong_name}"], "has arrays image; the model's inputs are: input"),
])
def test_bad_compression_options_are_one_line_and_write_nothing(example, digits_data, tmp_path, extra, message):
    np.savez(tmp_path / "wrong_shape.npz", input=np.zeros((100, 8, 8), np.float32))
    np.savez(tmp_path / "wrong_name.npz", image=np.zeros((100, 1, 8, 8), np.float32))
    paths = {"calibration": digits_data / "calibration.npz", "eval": digits_data / "eval.npz",
             "wrong_shape": tmp_path / "wrong_shape.npz", "wrong_name": tmp_path / "wrong_name.npz"}
    out = tmp_path / "out"
    error = one_line_error("compile", example("digits").onnx, "-t", "host", "-o", out, "--untuned",
                           *[arg.format(**paths) for arg in extra])
    assert message in error
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_evaluate_reports_accuracy_agreement_and_sqnr(compiled, digits_data):
    printed = edgec("evaluate", compiled("digits", "onnx", "host"), "--eval-data", digits_data / "eval.npz")
    assert "top-1 accuracy: " in printed and "drop +0.0000" in printed
    assert "top-1 agreement with " in printed and ": 1.0000 over 450 samples" in printed
    assert "SQNR: " in printed


def test_evaluate_rejects_data_for_another_model(compiled, tmp_path):
    np.savez(tmp_path / "other.npz", input=np.zeros((3, 3, 224, 224), np.float32))
    error = one_line_error("evaluate", compiled("digits", "onnx", "host"), "--eval-data", tmp_path / "other.npz")
    assert "'input' has shape 3x3x224x224; expected N x 1x1x8x8" in error


def test_winograd_settings_come_from_the_preset_or_the_flag(example, tmp_path):
    """The preset decides unless --winograd/--no-winograd does; the digits CNN's convs are too small for
    Winograd (ResNet-18's are: test_build.py), so it leaves them direct."""
    files = example("digits")
    for target, flags, enabled, chosen_by in (("x86-64", (), True, "preset"), ("x86-64", ("--no-winograd",), False, "--winograd"),
                                              ("host", ("--layout", "NCHW", "--winograd"), True, "--winograd"),
                                              ("host", (), False, "preset")):
        out = tmp_path / f"{target}{''.join(flags)}"
        edgec("compile", files.onnx, "-t", target, "-o", out, "--untuned", *flags)
        phase = _phase(_manifest(out), "winograd")
        assert phase["settings"]["enabled"] == enabled and phase["settings"]["chosen_by"] == chosen_by
        assert phase.get("report", {}).get("winograd_layers", 0) == 0
    printed = edgec("compile", files.onnx, "-t", "cortex-a72", "-o", tmp_path / "nhwc", "--untuned",
                    "--winograd")
    assert "winograd: no convolution qualifies (float, NCHW or NHWC, 3x3" in printed and "16 output tiles)" in printed
