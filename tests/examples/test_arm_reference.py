"""The benchmark's ARM reference engine: onnxruntime's aarch64 build in an aarch64 Python sysroot
under qemu, counted by the same plugin as edgec's runner; and TVM's own Python RPC server run from
that sysroot (examples/arm_reference.py)."""

from __future__ import annotations

import os
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


@pytest.mark.skipif(os.environ.get("EDGEC_PYTHON_RPC_TEST") != "1",
                    reason="TVM's Python server under qemu unpacks 300 MB of aarch64 wheels and imports TVM "
                           "under emulation (~20 s): set EDGEC_PYTHON_RPC_TEST=1")
def test_tvms_python_rpc_server_runs_under_qemu_from_the_sysroot(compiled, tmp_path):
    """The Python route: TVM's own `rpc_server` in the emulated aarch64 Python, its popen worker
    started through the launcher, registered with a real tracker, runs a cortex-a72 build as the
    local qemu run does."""
    from compiler.bench import random_inputs
    from compiler.runtime import open_model
    from compiler.runtime.rpc import RemoteSpec
    from examples.arm_reference import tvm_python_command
    from tests.rpc_processes import HOST, Process, free_port, free_servers, start_tracker, wait_for

    started = []
    try:
        port = start_tracker(tmp_path, started)
        server_port = free_port()
        server = Process(tmp_path / "python-server.log", None, *tvm_python_command(), "-m", "tvm.exec.rpc_server",
                         "--tracker", f"{HOST}:{port}", "--key", "py-a72", "--host", HOST, "--port", server_port,
                         "--port-end", server_port + 1)
        started.append(server)
        wait_for(lambda: free_servers(port, "py-a72") == 1, "TVM's Python server under qemu", server, timeout_s=240)
        artifact = compiled("digits", "onnx", "cortex-a72")
        with open_model(artifact, "rpc", RemoteSpec(tracker=(HOST, port), key="py-a72", timeout_s=120)) as model:
            inputs = random_inputs(model.manifest.inputs, seed=5)
            over_rpc = model.run(inputs)
        with open_model(artifact, "qemu") as model:
            emulated = model.run(inputs)
        np.testing.assert_array_equal(over_rpc["output"], emulated["output"])
    finally:
        for process in started:
            process.kill()
