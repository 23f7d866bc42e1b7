"""compiler/runtime: the C++ runner matches the in-process VM on x86_64 and under qemu for aarch64."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from compiler.build import CompileOptions, compile_model
from compiler.bench import BenchSpec
from compiler.errors import BenchError, ToolchainError
from compiler.evaluate import softmax
from compiler.frontends import import_onnx
from compiler.runtime import LocalModel
from compiler.runtime.toolchain import (
    RunnerError, build_runner, run_runner, runner_command, runtime_libraries,
)
from examples import onnx_cases
from targets import resolve_target

STAT_KEYS = {"runs", "warmup", "min", "mean", "p50", "p90", "p99", "max", "std", "peak_rss_bytes"}
# dtype -> ONNX element type, for a model that passes every dtype the runner must read and write
DTYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "int8": TensorProto.INT8,
          "uint8": TensorProto.UINT8, "int32": TensorProto.INT32, "int64": TensorProto.INT64}


def dtypes_model() -> onnx.ModelProto:
    """out_<dtype> = in_<dtype> + in_<dtype> for each dtype in DTYPES (Add takes 8-bit ints from opset 14)."""
    nodes = [helper.make_node("Add", [f"in_{d}", f"in_{d}"], [f"out_{d}"]) for d in DTYPES]
    graph = helper.make_graph(
        nodes, "dtypes",
        [helper.make_tensor_value_info(f"in_{d}", t, [2, 3]) for d, t in DTYPES.items()],
        [helper.make_tensor_value_info(f"out_{d}", t, [2, 3]) for d, t in DTYPES.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)


def compile_artifact(model: onnx.ModelProto, target: str, out: Path) -> Path:
    compile_model(import_onnx(model), CompileOptions(resolve_target(target)), out)
    return out


def save_inputs(arrays: dict[str, np.ndarray], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, array in arrays.items():
        paths.append(directory / f"{name}.npy")
        np.save(paths[-1], array)
    return paths


@pytest.fixture(scope="module")
def conv(tmp_path_factory):
    """The Conv/Relu/ReduceMean/Gemm case compiled for the generic x86-64 triple, with one input."""
    model = onnx_cases.opset_model(13)
    root = tmp_path_factory.mktemp("conv")
    inputs = onnx_cases.example_inputs(model)
    return compile_artifact(model, "x86_64-linux-gnu", root / "x86"), model, inputs, save_inputs(inputs, root / "in")


@pytest.fixture(scope="module")
def dtypes(tmp_path_factory):
    root = tmp_path_factory.mktemp("dtypes")
    rng = np.random.default_rng(0)
    inputs = {f"in_{d}": rng.integers(-20, 20, (2, 3)).astype(d) for d in DTYPES}
    inputs["in_uint8"] = rng.integers(0, 100, (2, 3)).astype(np.uint8)
    return compile_artifact(dtypes_model(), "x86_64-linux-gnu", root / "x86"), inputs, save_inputs(inputs, root / "in")


@pytest.fixture(scope="module")
def host_runner() -> Path:
    return build_runner("x86_64")


@pytest.fixture(scope="module")
def aarch64_runner() -> Path:
    for tool, package in (("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"), ("qemu-aarch64", "qemu-user")):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} missing: apt-get install {package}")
    try:
        return build_runner("aarch64")
    except ToolchainError as err:  # offline with an empty cache
        pytest.skip(str(err))


# --- x86_64 -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["conv", "dtypes"])
def test_host_runner_matches_local_model(case, request, host_runner, tmp_path):
    artifact, *_, inputs, paths = request.getfixturevalue(case)
    expected = list(LocalModel(artifact).run(inputs).values())
    outputs, stats = run_runner("x86_64", artifact / "model.so", paths, tmp_path / "out")
    assert stats is None
    assert [o.dtype for o in outputs] == [e.dtype for e in expected]
    assert [o.shape for o in outputs] == [e.shape for e in expected]
    for got, want in zip(outputs, expected):
        assert np.abs(got.astype(np.float64) - want.astype(np.float64)).max() < 1e-5
    if case == "dtypes":  # integer outputs are exact, and the npy writer kept every dtype
        for got, name in zip(outputs, inputs):
            np.testing.assert_array_equal(got, inputs[name] + inputs[name])
    # --calibrated T: the first output (float32, its last axis: 1x5 for conv, 2 rows of 3 for dtypes)
    # becomes softmax(output / T), as compiler/calibration.py computes it; the others stay as they were
    command = [*runner_command("x86_64", host_runner), str(artifact / "model.so"), *(a for p in paths for a in ("--input", str(p))),
               "--output-dir", str(tmp_path / "calibrated"), "--calibrated", "0.37"]
    subprocess.run(command, capture_output=True, text=True, check=True)
    calibrated = [np.load(tmp_path / "calibrated" / f"output{i}.npy") for i in range(len(outputs))]
    assert calibrated[0].dtype == np.float32 and calibrated[0].shape == outputs[0].shape
    np.testing.assert_allclose(calibrated[0], softmax(outputs[0], 0.37), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(calibrated[0].sum(axis=-1), 1.0, atol=1e-6)
    for got, want in zip(calibrated[1:], outputs[1:]):
        np.testing.assert_array_equal(got, want)


def test_runner_reads_npy_format_2(conv, host_runner, tmp_path):
    artifact, _, inputs, paths = conv
    v2 = tmp_path / "v2.npy"
    with open(v2, "wb") as f:
        np.lib.format.write_array(f, next(iter(inputs.values())), version=(2, 0))
    (v1_out,), _ = run_runner("x86_64", artifact / "model.so", paths, tmp_path / "v1")
    (v2_out,), _ = run_runner("x86_64", artifact / "model.so", [v2], tmp_path / "v2")
    np.testing.assert_array_equal(v1_out, v2_out)


def test_bench_json_line(conv, host_runner, tmp_path):
    artifact, _, _, paths = conv
    result = subprocess.run([*runner_command("x86_64", host_runner), str(artifact / "model.so"), "--input", str(paths[0]),
                             "--bench", "--warmup", "2", "--runs", "25"], capture_output=True, text=True, check=True)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    stats = json.loads(lines[0])
    assert set(stats) == STAT_KEYS
    assert stats["runs"] == 25 and stats["warmup"] == 2
    assert 0 < stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
    assert stats["min"] <= stats["mean"] <= stats["max"] and stats["std"] >= 0
    # the runner's own peak RSS: at least the TVM runtime it loaded, far below a Python process's
    assert 1e6 < stats["peak_rss_bytes"] < 1e9

    _, parsed = run_runner("x86_64", artifact / "model.so", paths, tmp_path / "out", BenchSpec(warmup=1, runs=7))
    assert parsed.runs == 7 and parsed.warmup == 1 and parsed.p50 <= parsed.p90 <= parsed.p99 <= parsed.max
    assert parsed.peak_rss_bytes > 1e6


@pytest.mark.parametrize("array, message", [
    (np.zeros((1, 3, 8, 8), np.float64), "dtype float32"),
    (np.zeros((1, 3, 4, 4), np.float32), "mismatch"),
    (np.zeros((1, 3, 8, 8), np.complex64), "unsupported dtype '<c8'"),
    (np.asfortranarray(np.zeros((1, 3, 8, 8), np.float32).transpose()), "Fortran order"),
])
def test_bad_input_exits_2_with_one_line(conv, host_runner, tmp_path, array, message):
    artifact, _, _, _ = conv
    bad = tmp_path / "bad.npy"
    np.save(bad, array)
    result = subprocess.run([*runner_command("x86_64", host_runner), str(artifact / "model.so"), "--input", str(bad),
                             "--output-dir", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(RunnerError, match="edgec-runner"):
        run_runner("x86_64", artifact / "model.so", [bad], tmp_path / "out")


def test_usage_errors_exit_2(conv, host_runner):
    artifact, _, _, paths = conv
    run = [str(artifact / "model.so"), "--input", str(paths[0]), "--output-dir", str(paths[0].parent / "out")]
    for args in ([], [str(artifact / "model.so"), "--input", str(paths[0])], ["--runs", "0", "--bench"],
                 [str(artifact / "missing.so"), "--bench"], [*run, "--calibrated"]):
        result = subprocess.run([*runner_command("x86_64", host_runner), *args], capture_output=True, text=True)
        assert result.returncode == 2 and result.stderr.startswith("edgec-runner: "), args
    for temperature in ("0", "-1", "T", "nan", "1.5x"):
        result = subprocess.run([*runner_command("x86_64", host_runner), *run, "--calibrated", temperature],
                                capture_output=True, text=True)
        assert result.returncode == 2, temperature
        assert f"--calibrated needs a softmax temperature > 0, got '{temperature}'" in result.stderr


def test_runner_binary_is_cached(host_runner):
    mtime = host_runner.stat().st_mtime_ns
    assert build_runner("x86_64") == host_runner and host_runner.stat().st_mtime_ns == mtime


# --- aarch64 under qemu -------------------------------------------------------------------------------

def test_aarch64_runner_under_qemu_matches_host(conv, aarch64_runner, tmp_path):
    host_artifact, model, _, paths = conv
    a72 = compile_artifact(model, "cortex-a72", tmp_path / "a72")
    (host,), _ = run_runner("x86_64", host_artifact / "model.so", paths, tmp_path / "host")
    (emulated,), stats = run_runner("aarch64", a72 / "model.so", paths, tmp_path / "a72-out", BenchSpec(1, 5))
    assert emulated.shape == host.shape and emulated.dtype == host.dtype
    assert np.abs(emulated - host).max() < 1e-4
    assert stats.runs == 5 and stats.p50 <= stats.p90 <= stats.p99 <= stats.max


def test_aarch64_runtime_needs_only_the_fetched_libs_and_sysroot(aarch64_runner):
    readelf = shutil.which("aarch64-linux-gnu-readelf") or pytest.skip("aarch64-linux-gnu-readelf missing")
    libs = runtime_libraries("aarch64")
    available = {p.name for d in (*libs.lib_dirs, Path("/usr/aarch64-linux-gnu/lib")) for p in d.iterdir()}
    for binary in (libs.tvm_runtime, libs.tvm_ffi, aarch64_runner):
        dynamic = subprocess.run([readelf, "-d", str(binary)], capture_output=True, text=True, check=True).stdout
        needed = {line.split("[")[1].rstrip("]") for line in dynamic.splitlines() if "(NEEDED)" in line}
        assert needed <= available, (binary, needed - available)
    assert "$ORIGIN" in subprocess.run([readelf, "-d", str(aarch64_runner)], capture_output=True, text=True).stdout


# --- configuration and missing tools ------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [{"runs": 0}, {"warmup": -1}, {"runs": 2.5}])
def test_bench_spec_validates(kwargs):
    with pytest.raises(BenchError):
        BenchSpec(**kwargs)


def test_offline_with_empty_cache_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # ignore configured indexes and find-links
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(ToolchainError, match="connect to the network once, or place") as err:
        runtime_libraries("aarch64")
    assert "\n" not in str(err.value) and str(tmp_path / "cache") in str(err.value)


def test_missing_tools_name_their_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no compilers, no qemu
    with pytest.raises(ToolchainError, match="apt-get install g\\+\\+-aarch64-linux-gnu"):
        build_runner("aarch64")
    with pytest.raises(ToolchainError, match="apt-get install qemu-user"):
        runner_command("aarch64", tmp_path / "edgec-runner")
    with pytest.raises(ToolchainError, match="supports: aarch64, x86_64"):
        build_runner("arm")
