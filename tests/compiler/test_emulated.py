"""aarch64 artifacts of the example models, run by the cross-built C++ runner under qemu-aarch64."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.errors import ArtifactError, InputError
from compiler.runtime import EmulatedModel, open_model
from targets import resolve_target

pytestmark = pytest.mark.skipif(resolve_target("cortex-a72").execution_here().mode != "qemu",
                                reason="needs qemu-user and the aarch64 cross toolchain")


@pytest.mark.parametrize("name", ["digits", "mobilenetv2", "resnet18"])
def test_cortex_a72_build_under_qemu_matches_onnxruntime(name, example, compiled, record_property):
    files = example(name)
    outputs = open_model(compiled(name, "onnx", "cortex-a72"), "qemu").run({"input": files.input})
    expected = files.onnxruntime_output()
    diff = float(np.abs(outputs["output"] - expected).max())
    record_property("max_abs_diff_vs_onnxruntime", diff)
    assert diff <= 1e-4 * max(1.0, float(np.abs(expected).max()))


def test_emulated_run_checks_inputs_like_a_local_run(compiled):
    model = open_model(compiled("digits", "onnx", "cortex-a72"), "qemu")
    with pytest.raises(InputError, match="expects shape 1x1x8x8 float32, given shape 1x1x8x8 float64"):
        model.run({"input": np.zeros((1, 1, 8, 8))})


def test_qemu_device_refuses_host_and_compile_only_artifacts(compiled):
    with pytest.raises(ArtifactError, match="use --device local"):
        EmulatedModel(compiled("digits", "onnx", "host"))
    with pytest.raises(ArtifactError, match="cannot run here"):
        EmulatedModel(compiled("digits", "onnx", "armv7"))
