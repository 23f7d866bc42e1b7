"""Firmware bundles: self-contained, reproducible, and runnable from their own contents alone."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import subprocess
import tarfile

import numpy as np
import pytest

from compiler.artifact import read_manifest
from compiler.errors import ArtifactError
from compiler.package import c_header, package_artifact
from targets import resolve_target

needs_qemu = pytest.mark.skipif(resolve_target("cortex-a72").execution_here().mode != "qemu",
                                reason="needs qemu-user and the aarch64 cross toolchain")

EXPECTED_FILES = {
    "README.md", "SHA256SUMS", "edgec.cmake", "usr/bin/edgec-runner", "usr/lib/libtvm_runtime.so",
    "usr/lib/libtvm_ffi.so", "usr/lib/edgec/digits/model.so", "usr/lib/edgec/digits/manifest.json",
    "usr/include/edgec/digits.h",
}


@pytest.fixture(scope="module")
def aarch64_bundle(compiled, tmp_path_factory):
    bundle = tmp_path_factory.mktemp("bundle") / "digits.tar.gz"
    package_artifact(compiled("digits", "onnx", "cortex-a72"), bundle)
    return bundle


@needs_qemu
def test_bundle_runs_under_qemu_from_its_own_contents(aarch64_bundle, example, tmp_path):
    root = tmp_path / "rootfs"
    root.mkdir()
    with tarfile.open(aarch64_bundle) as tar:
        tar.extractall(root, filter="data")
    bundle = root / "digits"
    files = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()}
    assert files == EXPECTED_FILES
    for line in (bundle / "SHA256SUMS").read_text().splitlines():
        digest, path = line.split("  ")
        assert hashlib.sha256((bundle / path).read_bytes()).hexdigest() == digest

    files_ = example("digits")
    np.save(tmp_path / "input.npy", files_.input)
    # only the device's C/C++ libraries come from outside the bundle (the sysroot stands in for the image)
    result = subprocess.run(
        ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", "-U", "LD_LIBRARY_PATH", str(bundle / "usr/bin/edgec-runner"),
         str(bundle / "usr/lib/edgec/digits/model.so"), "--input", str(tmp_path / "input.npy"), "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    output = np.load(tmp_path / "out" / "output0.npy")
    assert np.abs(output - files_.onnxruntime_output()).max() < 1e-4
    # the same binary is the device's RPC server; the README says how to run it as a service
    usage = subprocess.run(["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", "-U", "LD_LIBRARY_PATH",
                            str(bundle / "usr/bin/edgec-runner"), "rpc-server", "--bogus"],
                           capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert usage.returncode == 2 and "usage: edgec-runner rpc-server" in usage.stderr, usage.stderr
    readme = (bundle / "README.md").read_text()
    assert "ExecStart=/usr/bin/edgec-runner rpc-server --tracker HOST:9190 --key cortex-a72" in readme


@needs_qemu
def test_bundled_runner_names_no_directory_of_the_build_machine(aarch64_bundle, tmp_path):
    readelf = shutil.which("aarch64-linux-gnu-readelf") or pytest.skip("binutils-aarch64-linux-gnu missing")
    with tarfile.open(aarch64_bundle) as tar:
        tar.extractall(tmp_path, filter="data")
    dynamic = subprocess.run([readelf, "-d", str(tmp_path / "digits/usr/bin/edgec-runner")], capture_output=True, text=True, check=True).stdout
    (runpath,) = [line for line in dynamic.splitlines() if "RUNPATH" in line or "RPATH" in line]
    assert runpath.split("[")[1].rstrip("]") == "$ORIGIN:$ORIGIN/../lib"


def test_packaging_twice_gives_identical_bytes(compiled, tmp_path):
    artifact = compiled("digits", "onnx", "host")
    first, second = tmp_path / "a" / "digits.tar.gz", tmp_path / "b" / "digits.tar.gz"
    first.parent.mkdir()
    second.parent.mkdir()
    package_artifact(artifact, first)
    package_artifact(artifact, second)
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in tar.getmembers())


def test_header_describes_inputs_and_outputs_and_compiles(compiled, tmp_path):
    bundle = tmp_path / "digits.tar.gz"
    package_artifact(compiled("digits", "onnx", "host"), bundle)
    with tarfile.open(bundle) as tar:
        tar.extractall(tmp_path, filter="data")
    header = (tmp_path / "digits/usr/include/edgec/digits.h").read_text()
    assert "edgec_digits_input0_shape[] = {1, 1, 8, 8};" in header
    assert '{"input", 4, edgec_digits_input0_shape, "float32", 2, 32, 256u}' in header
    assert '{"output", 2, edgec_digits_output0_shape, "float32", 2, 32, 40u}' in header
    assert "#define EDGEC_DIGITS_SOFTMAX_TEMPERATURE 1.0f" in header and "Uncalibrated" in header
    program = tmp_path / "use.c"
    program.write_text('#include "edgec/digits.h"\nint main(void) { return edgec_digits_inputs[0].size_bytes == 256 '
                       '&& EDGEC_DIGITS_SOFTMAX_TEMPERATURE > 1.2345f && EDGEC_DIGITS_SOFTMAX_TEMPERATURE < 1.2346f ? 0 : 1; }\n')
    use = tmp_path / "use"
    build = ["gcc", "-Wall", "-Werror", f"-I{tmp_path / 'digits/usr/include'}", str(program), "-o", str(use)]
    subprocess.run(build, check=True)
    assert subprocess.run([str(use)]).returncode == 1  # uncalibrated: T = 1
    # a fitted temperature becomes the header's constant, with how to apply it
    manifest = read_manifest(compiled("digits", "onnx", "host"))
    calibration = {"temperature": 1.2345678, "output": "output", "bins": 15, "ece_before": 0.0412, "ece_after": 0.0131,
                   "eval_data": "eval.npz", "samples": 450}
    header = c_header("digits", dataclasses.replace(manifest, calibration=calibration))
    assert "#define EDGEC_DIGITS_SOFTMAX_TEMPERATURE 1.234568f" in header and "0.0412 -> 0.0131" in header
    assert "exp(z[i] / T)" in header and "Uncalibrated" not in header
    (tmp_path / "digits/usr/include/edgec/digits.h").write_text(header)
    subprocess.run(build, check=True)
    assert subprocess.run([str(use)]).returncode == 0


def test_compile_only_presets_cannot_be_packaged_and_nothing_is_written(compiled, tmp_path):
    with pytest.raises(ArtifactError, match="no runtime to bundle"):
        package_artifact(compiled("digits", "onnx", "armv7"), tmp_path / "armv7.tar.gz")
    assert list(tmp_path.iterdir()) == []
