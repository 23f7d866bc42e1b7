"""The benchmark's ARM reference engine: onnxruntime's aarch64 build in an aarch64 Python sysroot
under qemu, counted by the same plugin as edgec's runner (examples/arm_reference.py)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from targets import resolve_target


def _arm64_packages_enabled() -> bool:
    result = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True)
    return result.returncode == 0 and "arm64" in result.stdout.split()


pytestmark = pytest.mark.skipif(resolve_target("cortex-a72").execution_here().mode != "qemu"
                                or not _arm64_packages_enabled(),
                                reason="needs qemu-user and Debian's arm64 packages (make setup enables them as root)")


def test_onnxruntime_aarch64_runs_under_qemu_agrees_with_the_host_and_is_counted(example):
    from examples.arm_reference import count_onnxruntime, sysroot

    files = example("digits")
    count, output = count_onnxruntime(files.onnx, [files.input], "cortex-a72", runs=2)
    np.testing.assert_allclose(output, files.onnxruntime_output(), rtol=1e-4, atol=1e-4)
    assert count.cpu == "cortex-a72" and 1e5 < count.per_run < 5e6, count
    assert (sysroot() / "proc" / "cpuinfo").read_text().startswith("processor")  # an ARM one, for cpuinfo
