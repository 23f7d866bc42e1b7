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


def test_the_instruction_count_plugin_counts_each_guest_instruction(tmp_path):
    """A loop of N iterations against one of 2N: the difference is N times the loop body's length, a
    whole number of instructions, give or take the few that parsing one more argument costs (a plugin
    that counted blocks, one per iteration, or nothing, fails this)."""
    import subprocess

    from compiler.runtime.instructions import build_plugin

    source = tmp_path / "loop.cc"
    source.write_text("int main(int argc, char**) {\n"
                      "  for (long i = 0; i < 100000L * argc; ++i) asm volatile(\"nop\");\n"
                      "  return 0;\n}\n")
    binary = tmp_path / "loop"
    subprocess.run(["aarch64-linux-gnu-g++", "-O1", str(source), "-o", str(binary)], check=True)
    plugin = build_plugin()
    preset = resolve_target("cortex-a72")
    counts = []
    for extra in ([], ["x"]):
        out = tmp_path / f"count{len(extra)}"
        subprocess.run([preset.emulator, "-L", preset.emulator_sysroot, "-cpu", "cortex-a72",
                        "-plugin", f"file={plugin},out={out}", str(binary), *extra], check=True)
        counts.append(int(out.read_text()))
    per_iteration = round((counts[1] - counts[0]) / 100000)
    assert 2 <= per_iteration <= 5 and abs(counts[1] - counts[0] - per_iteration * 100000) < 100, counts


def test_instructions_per_run_are_steady_and_exclude_start_up(compiled):
    """Two counts of one build agree to 1% (0.35% measured: the runner's clock reads and allocations vary); one inference of the digits CNN is far fewer
    instructions than the runner's start-up and library loading, which the difference removes."""
    from compiler.bench import count_instructions

    artifact = compiled("digits", "onnx", "cortex-a72")
    first, second = count_instructions(artifact, runs=2), count_instructions(artifact, runs=3)
    assert first.cpu == "cortex-a72" and first.threads == 1
    assert 1e5 < first.per_run < 5e6, first
    assert abs(first.per_run - second.per_run) <= 1e-2 * first.per_run, (first, second)
