"""Guest instructions per inference of an emulated (aarch64) artifact: a speed proxy for ARM builds.

qemu-user's wall time says little about an ARM core's speed: TCG emulates NEON floating point with
softfloat helper calls, so the emulated time follows how qemu emulates an instruction, not what it
costs on silicon. The number of guest instructions a run executes is steady (the same build and
input give counts within about 0.5%) and comparable between engines run the same
way. It ignores what silicon adds (cache misses, latencies, dual issue), so it is a proxy, labelled so.

The count comes from a qemu TCG plugin (instruction_count.c, built once with the host's C compiler
into edgec's cache) around edgec's C++ runner, at one thread (TVM_NUM_THREADS=1: other threads'
spin-waits would count) and with qemu's CPU model pinned to the preset's core (qemu's default,
`max`, has SVE and other extensions the board lacks). Per inference = (count after 2 + N runs -
count after 2 runs) / N: the runner's start-up, the library's loading and the first runs' one-time
work cancel out (two, not one: onnxruntime, counted the same way, plans its memory in its second run).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from compiler.errors import RunnerError, ToolchainError
from compiler.runtime.toolchain import cache_dir, run_runner
from compiler.specs import BenchSpec
from targets import Preset

PLUGIN_SOURCE = Path(__file__).with_name("instruction_count.c")
PLUGIN_NAME = "libedgec-instruction-count.so"
HOST_COMPILER = "gcc"
WARM_RUNS = 2  # runs in both counts, so that their one-time work cancels out


@dataclass(frozen=True)
class InstructionCount:
    """Guest instructions per inference under qemu, at one thread, on `cpu` (qemu's CPU model)."""

    per_run: float
    runs: int  # steady-state runs the figure is the mean of
    cpu: str
    threads: int = 1
    note: str = "guest instructions counted by a qemu TCG plugin: a speed proxy, not a time"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def build_plugin() -> Path:
    """Compile instruction_count.c for this machine (cached by source and compiler); returns the .so."""
    if shutil.which(HOST_COMPILER) is None:
        raise ToolchainError(f"counting instructions needs the host C compiler '{HOST_COMPILER}' to build its "
                             f"qemu plugin; install it with: apt-get install gcc")
    command = [HOST_COMPILER, "-shared", "-fPIC", "-O2", str(PLUGIN_SOURCE), "-o", "{output}"]
    key = json.dumps([PLUGIN_SOURCE.read_text(), command])
    plugin = cache_dir() / "qemu-plugin" / hashlib.sha256(key.encode()).hexdigest()[:16] / PLUGIN_NAME
    if plugin.is_file():
        return plugin
    plugin.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{PLUGIN_NAME}.", dir=plugin.parent)
    os.close(fd)
    try:
        result = subprocess.run([tmp if part == "{output}" else part for part in command], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"building the qemu instruction-count plugin failed:\n{' '.join(command)}\n{result.stderr}")
        os.replace(tmp, plugin)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return plugin


def emulated_cpu(preset: Preset) -> str:
    """qemu's CPU model for the preset's core (its target's mcpu), else qemu's default."""
    mcpu = str(preset.target.get("mcpu", ""))
    return mcpu if mcpu in QEMU_AARCH64_CPUS else "max"


# qemu 7.2's aarch64 CPU models (`qemu-aarch64 -cpu help`) that edgec's presets name
QEMU_AARCH64_CPUS = frozenset({"cortex-a35", "cortex-a53", "cortex-a57", "cortex-a72", "cortex-a76", "neoverse-n1"})


def count_instructions(preset: Preset, library: Path, inputs: list[Path], output_dir: Path,
                       runs: int = 3) -> InstructionCount:
    """Guest instructions per inference of `library` (an emulated preset's) on `inputs`."""
    if preset.execution_here().mode != "qemu":
        raise RunnerError(f"--count-instructions counts instructions under qemu; {preset.name} artifacts do not "
                          f"run under qemu here ({preset.execution_here().reason})")
    cpu = emulated_cpu(preset)

    def run(plugin: list[str], total_runs: int) -> None:
        run_runner(preset.elf_machine, library, inputs, output_dir, BenchSpec(warmup=0, runs=total_runs),
                   emulation=["-cpu", cpu, *plugin, "-E", "TVM_NUM_THREADS=1"])

    return InstructionCount(steady_state_instructions(run, runs), runs, cpu)


def steady_state_instructions(run: Callable[[list[str], int], None], runs: int) -> float:
    """Guest instructions per inference: `run(qemu_plugin_args, total_inferences)` is called for WARM_RUNS
    and for WARM_RUNS + `runs` inferences, each counted by the plugin, and the difference is divided by
    `runs` (start-up and first-run work cancel out)."""
    if runs < 1:
        raise RunnerError(f"counting needs at least one steady-state run, got {runs}")
    plugin = build_plugin()
    counts = []
    with tempfile.TemporaryDirectory(prefix="edgec-count-") as work:
        for index, total_runs in enumerate((WARM_RUNS, WARM_RUNS + runs)):
            out = Path(work, f"count{index}")
            run(["-plugin", f"file={plugin},out={out}"], total_runs)
            if not out.is_file():
                raise RunnerError("qemu wrote no instruction count: does it support -plugin (qemu >= 4.2)?")
            counts.append(int(out.read_text().strip()))
    return (counts[1] - counts[0]) / runs
