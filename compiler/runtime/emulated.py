"""Run an artifact with edgec's C++ runner, as on the device: under qemu-user for aarch64 artifacts."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from compiler.runtime.common import check_inputs, open_verified
from compiler.runtime.instructions import InstructionCount, count_instructions
from compiler.runtime.toolchain import run_runner
from compiler.specs import BenchSpec, LatencyStats


class EmulatedModel:
    """A verified aarch64 artifact, run by the cross-built runner under qemu (no Python on the 'device')."""

    def __init__(self, artifact: Path):
        self.artifact = Path(artifact)
        self.manifest, self.preset = open_verified(self.artifact, "qemu", "--device local for host artifacts")

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs, _ = self._run(check_inputs(self.manifest.inputs, inputs), None)
        return outputs

    def bench(self, inputs: Mapping[str, np.ndarray], spec: BenchSpec) -> LatencyStats:
        """Latency of single runs as the runner times them, with its peak resident memory (VmHWM,
        in its bench line): the whole runner process under qemu-user, the emulator's own
        memory (translated code, its heap) included."""
        _, stats = self._run(check_inputs(self.manifest.inputs, inputs), spec)
        assert stats is not None
        return stats

    def count_instructions(self, inputs: Mapping[str, np.ndarray], runs: int = 3) -> InstructionCount:
        """Guest instructions per inference at one thread on the preset's core (compiler.runtime.instructions)."""
        arrays = check_inputs(self.manifest.inputs, inputs)
        with tempfile.TemporaryDirectory(prefix="edgec-run-") as work:
            return count_instructions(self.preset, self.artifact / self.manifest.library, _saved(arrays, work),
                                      Path(work, "outputs"), runs)

    def close(self) -> None:
        """Nothing to release: every run starts the runner afresh."""

    def __enter__(self) -> EmulatedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, arrays: list[np.ndarray], spec: BenchSpec | None) -> tuple[dict[str, np.ndarray], LatencyStats | None]:
        with tempfile.TemporaryDirectory(prefix="edgec-run-") as work:
            values, stats = run_runner(self.preset.elf_machine, self.artifact / self.manifest.library,
                                       _saved(arrays, work), Path(work, "outputs"), spec)
        return {spec_.name: value for spec_, value in zip(self.manifest.outputs, values)}, stats


def _saved(arrays: list[np.ndarray], work: str) -> list[Path]:
    """The inputs as work/input<i>.npy, the runner's input files."""
    paths = [Path(work, f"input{i}.npy") for i in range(len(arrays))]
    for path, array in zip(paths, arrays):
        np.save(path, array)
    return paths
