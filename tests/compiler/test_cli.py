"""The `edgec` command: the user-visible workflow and its one-line errors (never a traceback)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tests.helpers import edgec, edgec_json, one_line_error


def test_compile_then_run_matches_onnxruntime(example, tmp_path):
    files = example("digits")
    np.save(tmp_path / "x.npy", files.input)
    out = edgec("compile", files.onnx, "--target", "host", "-o", tmp_path / "artifact")
    assert "compiled digits.onnx for host" in out and "native" in out
    edgec("run", tmp_path / "artifact", "--input", f"input={tmp_path / 'x.npy'}", "--output", tmp_path / "y.npz")
    with np.load(tmp_path / "y.npz") as outputs:
        assert np.abs(outputs["output"] - files.onnxruntime_output()).max() < 1e-4


def test_targets_lists_every_preset_with_where_it_runs():
    listed = edgec_json("targets")
    names = {p["name"] for p in listed}
    assert {"x86-64", "x86-avx512", "host", "cortex-a53", "cortex-a72", "cortex-a76", "armv7",
            "mali-g52", "mali-g610", "jetson-orin", "cuda-sm80", "cuda-sm90"} <= names
    assert all(p["execution"]["mode"] in ("native", "qemu", "compile-only") for p in listed)
    table = edgec("targets")
    assert "cortex-a72" in table and "compile-only" in table


def test_unknown_target_lists_the_valid_names(example, tmp_path):
    message = one_line_error("compile", example("digits").onnx, "--target", "rpi5", "-o", tmp_path / "a")
    assert "unknown target 'rpi5'; choose from: armv7, cortex-a53, cortex-a72" in message


def test_missing_cross_compiler_names_the_debian_package(example, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no compilers on PATH
    message = one_line_error("compile", example("digits").onnx, "--target", "cortex-a72", "-o", tmp_path / "a")
    assert "'aarch64-linux-gnu-g++'" in message and "apt-get install g++-aarch64-linux-gnu" in message
    assert not (tmp_path / "a").exists()


def test_unsupported_operator_names_operator_node_and_opset(tmp_path):
    import onnx

    from examples.onnx_cases import unsupported_op

    onnx.save(unsupported_op(), tmp_path / "bad.onnx")
    message = one_line_error("compile", tmp_path / "bad.onnx", "--target", "host", "-o", tmp_path / "a")
    assert "'Det'" in message and "'my_unsupported_node'" in message and "opset" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def test_symbolic_input_needs_input_shape(tmp_path):
    import onnx

    from examples.onnx_cases import symbolic_batch

    onnx.save(symbolic_batch(), tmp_path / "sym.onnx")
    message = one_line_error("compile", tmp_path / "sym.onnx", "-t", "host", "-o", tmp_path / "a")
    assert "--input-shape sym_input=1x3x16x16" in message
    edgec("compile", tmp_path / "sym.onnx", "-t", "host", "-o", tmp_path / "a", "--input-shape", "sym_input=2x3x16x16")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == [2, 3, 16, 16]


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((1, 1, 8, 9), "float32"), "expects shape 1x1x8x8 float32, given shape 1x1x8x9 float32"),
        (np.zeros((1, 1, 8, 8), "int64"), "expects shape 1x1x8x8 float32, given shape 1x1x8x8 int64"),
    ],
)
def test_run_with_a_wrong_input_names_expected_and_given(array, message, compiled, tmp_path):
    np.save(tmp_path / "x.npy", array)
    error = one_line_error("run", compiled("digits", "onnx", "host"), "--input", f"input={tmp_path / 'x.npy'}")
    assert message in error


def test_run_takes_inputs_from_an_npz_as_tvmc_does(example, compiled, tmp_path):
    files = example("digits")
    artifact = compiled("digits", "onnx", "host")
    np.savez(tmp_path / "inputs.npz", input=files.input)
    edgec("run", artifact, "--inputs", tmp_path / "inputs.npz", "-o", tmp_path / "y.npz")
    with np.load(tmp_path / "y.npz") as outputs:
        assert np.abs(outputs["output"] - files.onnxruntime_output()).max() < 1e-4
    np.save(tmp_path / "x.npy", files.input)
    twice = one_line_error("run", artifact, "--inputs", tmp_path / "inputs.npz", "--input", f"input={tmp_path / 'x.npy'}")
    assert "input 'input' is given twice" in twice
    np.savez(tmp_path / "other.npz", image=files.input)
    assert "unknown input image; the model's inputs are: input" in one_line_error("run", artifact, "--inputs", tmp_path / "other.npz")
    assert "is not an .npz archive" in one_line_error("run", artifact, "--inputs", tmp_path / "x.npy")
    assert "does not exist" in one_line_error("run", artifact, "--inputs", tmp_path / "none.npz")


def test_every_json_option_prints_one_indented_document(compiled, example, tmp_path):
    """targets, bench, evaluate and records list print --json alike (edgec_json checks the format)."""
    artifact = compiled("digits", "onnx", "host")
    files = example("digits")
    np.savez(tmp_path / "eval.npz", input=np.stack([files.input] * 2))
    assert isinstance(edgec_json("targets"), list)
    assert edgec_json("bench", artifact, "--runs", 2, "--warmup", 0)["device"] == {"kind": "local"}
    assert edgec_json("evaluate", artifact, "--eval-data", tmp_path / "eval.npz", "--reference", files.onnx)["samples"] == 2
    listed = edgec_json("records", "list", "--target", "x86-64", "--tuning-log", "tuning_logs")
    assert listed["kernels"] and all(k["cpu"] and k["date"] for k in listed["kernels"])


def test_run_of_a_cross_compiled_artifact_says_why_not(compiled, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), "float32"))
    message = one_line_error("run", compiled("digits", "onnx", "armv7"), "--input", tmp_path / "x.npy")
    assert "is for armv7" in message and "compile-only" in message


def test_run_of_a_directory_that_is_not_an_artifact(tmp_path):
    assert "manifest.json is missing" in one_line_error("run", tmp_path, "--input", "x.npy")


def test_bad_model_paths(tmp_path):
    assert "does not exist" in one_line_error("compile", tmp_path / "none.onnx", "-t", "host", "-o", tmp_path / "a")
    (tmp_path / "model.bin").write_bytes(b"\x00")
    assert "cannot infer the format" in one_line_error("compile", tmp_path / "model.bin", "-t", "host", "-o", tmp_path / "a")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    assert "cannot read" in one_line_error("compile", tmp_path / "junk.onnx", "-t", "host", "-o", tmp_path / "a")
