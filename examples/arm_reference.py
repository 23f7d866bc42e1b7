"""onnxruntime's aarch64 build under qemu: the engine edgec's ARM builds are counted against.

No ARM board is here, and qemu's wall time says little about one (compiler/runtime/instructions.py),
so the benchmark compares guest instructions per inference, edgec's runner against onnxruntime's
aarch64 CPU build, both under qemu-aarch64 at one thread with the same CPU model and the same plugin.

onnxruntime needs an aarch64 Python. It is made, once, into edgec's cache, from Debian's arm64
packages (`apt-get download` + `dpkg -x`, nothing installed system-wide: the machine needs
`dpkg --add-architecture arm64 && apt-get update` once) and PyPI's aarch64 wheels of the host's
onnxruntime and numpy versions, unpacked into a site directory. Two traps, avoided here: qemu
opens SYSROOT/proc/cpuinfo before the host's, and onnxruntime's cpuinfo segfaults on an x86 one, so
the sysroot gets an ARM one; and qemu's default CPU (`max`) has SVE, which makes onnxruntime run SVE
kernels that no Cortex-A7x has, so the CPU model is pinned to the preset's core.

    python -m examples.arm_reference model.onnx --cpu cortex-a72   # instructions per inference

`tvm_python_command()` also runs TVM's own Python RPC server from that sysroot (with TVM's aarch64
wheels): the Python route a board with Python would take, for tests; edgec's device server
(`edgec-runner rpc-server`) is the one that needs no Python.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np

from compiler.errors import ToolchainError
from compiler.runtime.instructions import InstructionCount, steady_state_instructions
from compiler.runtime.toolchain import cache_dir

# `pip download` of wheels for the sysroot's interpreter: CPython 3.11 (Debian 12) on aarch64 glibc
_PIP_DOWNLOAD_AARCH64 = (sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                         "3.11", *(a for p in ("manylinux_2_28_aarch64", "manylinux2014_aarch64") for a in ("--platform", p)))

PYTHON = "python3.11"
# Python 3.11 and the shared libraries its standard library and onnxruntime load (Debian 12, arm64)
DEBIAN_PACKAGES = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libstdc++6", "libgcc-s1",
    "libexpat1", "libffi8", "zlib1g", "libssl3", "libbz2-1.0", "liblzma5", "libsqlite3-0", "libuuid1",
    "libncursesw6", "libtinfo6", "libreadline8", "libcrypt1", "libnsl2", "libtirpc3", "libzstd1",
)
WHEELS = ("onnxruntime", "numpy")
# A Cortex-A72's /proc/cpuinfo (what onnxruntime's cpuinfo parses under qemu)
_CPUINFO = ("processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
            "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n")
# Runs under the emulated interpreter: one session at one thread, `runs` inferences of the saved input
_DRIVER = """
import gc, sys, numpy as np, onnxruntime as ort
gc.disable()  # a collection in one of the counts would count
model, runs = sys.argv[1], int(sys.argv[2])
options = ort.SessionOptions()
options.intra_op_num_threads = options.inter_op_num_threads = 1
options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
for pool in ("intra_op", "inter_op"):  # no spin-waiting thread: its loop would count
    options.add_session_config_entry(f"session.{pool}.allow_spinning", "0")
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
feed = {i.name: np.load(p) for i, p in zip(session.get_inputs(), sys.argv[3:])}
for _ in range(runs):
    out = session.run(None, feed)
np.save(sys.argv[3] + ".out.npy", out[0])
"""


def sysroot() -> Path:
    """The aarch64 Python + onnxruntime sysroot (built on first use); its site directory is SYSROOT/site."""
    versions = {name: metadata.version(name) for name in WHEELS}
    root = cache_dir() / "aarch64-onnxruntime" / "-".join(f"{n}-{v}" for n, v in versions.items())
    if (root / "usr" / "bin" / PYTHON).is_file() and (root / "site" / "onnxruntime").is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root.parent))
    try:
        debs = staging / "debs"
        debs.mkdir()
        _run(["apt-get", "download", *(f"{name}:arm64" for name in DEBIAN_PACKAGES)], debs,
             "Debian's arm64 packages could not be downloaded; enable the architecture once with: "
             "dpkg --add-architecture arm64 && apt-get update")
        for deb in sorted(debs.glob("*.deb")):
            _run(["dpkg", "-x", str(deb), str(staging)], staging, f"dpkg -x {deb.name} failed")
        wheels = staging / "wheels"
        _run([*_PIP_DOWNLOAD_AARCH64, "-d", str(wheels), *(f"{n}=={v}" for n, v in versions.items())], staging,
             "the aarch64 wheels of onnxruntime and numpy could not be downloaded from PyPI")
        for wheel in wheels.glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(staging / "site")
        for path in (staging / "site").rglob("*.so*"):
            path.chmod(0o755)  # zip members lose their mode
        (staging / "proc").mkdir(exist_ok=True)
        (staging / "proc" / "cpuinfo").write_text(_CPUINFO)
        shutil.rmtree(debs)
        shutil.rmtree(wheels)
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def count_onnxruntime(model: Path, inputs: list[np.ndarray], cpu: str, runs: int = 3) -> tuple[InstructionCount, np.ndarray]:
    """onnxruntime aarch64's guest instructions per inference of `model` (1 thread, qemu -cpu `cpu`),
    as edgec's runner is counted: (count after 2 + runs inferences - count after 2) / runs; and its output."""
    root = sysroot()
    with tempfile.TemporaryDirectory(prefix="edgec-ort-") as work:
        paths = [str(Path(work, f"input{i}.npy")) for i in range(len(inputs))]
        for path, array in zip(paths, inputs):
            np.save(path, array)
        driver = Path(work, "driver.py")
        driver.write_text(_DRIVER)

        # PYTHONHASHSEED=0: with hash randomization, the two counted processes' start-ups differed by
        # up to 300k instructions, more than a small model's whole inference
        def run(plugin: list[str], total: int) -> None:
            command = ["qemu-aarch64", "-L", str(root), "-cpu", cpu, *plugin,
                       "-E", f"PYTHONPATH={root / 'site'}", "-E", "OMP_NUM_THREADS=1", "-E", "PYTHONHASHSEED=0",
                       str(root / "usr" / "bin" / PYTHON), str(driver), str(Path(model).absolute()), str(total), *paths]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"onnxruntime under qemu failed (exit {result.returncode}):\n{result.stderr[-2000:]}")

        per_run = steady_state_instructions(run, runs)
        output = np.load(paths[0] + ".out.npy")
    return InstructionCount(per_run, runs, cpu), output


# TVM's own Python RPC server under qemu (the Python route; edgec's device server needs no Python):
# TVM's aarch64 wheels (the ones edgec's runner takes its runtime from) and their pure dependencies
TVM_DEPENDENCIES = ("ml_dtypes", "typing_extensions", "psutil", "cloudpickle")
# Under qemu, sys.executable names the guest interpreter, which the host cannot exec (no binfmt_misc
# in a container): TVM's popen workers would fail to start. sitecustomize points it at a launcher.
_SITECUSTOMIZE = """import os, sys
if os.environ.get("EDGEC_GUEST_PYTHON"):
    sys.executable = os.environ["EDGEC_GUEST_PYTHON"]
"""


def tvm_python_command(cpu: str = "cortex-a72") -> list[str]:
    """The command that runs the emulated aarch64 Python with TVM importable (`+ ["-m",
    "tvm.exec.rpc_server", ...]` is TVM's RPC server as a board with Python would run it); its
    popen workers re-enter qemu through a launcher script. TVM imports in ~20 s under emulation."""
    from compiler.runtime.toolchain import runtime_libraries  # fetches TVM's aarch64 wheels if needed

    root = sysroot()
    wheel_dir = runtime_libraries("aarch64").tvm_runtime.parents[2] / "wheels"
    site = root / "tvm-site"
    if not (site / "tvm").is_dir():
        staging = Path(tempfile.mkdtemp(prefix=".tvm-site-", dir=root))
        try:
            _run([*_PIP_DOWNLOAD_AARCH64, "-d", str(staging / "wheels"), *TVM_DEPENDENCIES], staging,
                 "the aarch64 wheels of TVM's dependencies could not be downloaded from PyPI")
            for wheel in [*wheel_dir.glob("apache_tvm*.whl"), *(staging / "wheels").glob("*.whl")]:
                with zipfile.ZipFile(wheel) as archive:
                    archive.extractall(staging / "site")
            for path in (staging / "site").rglob("*.so*"):
                path.chmod(0o755)
            (staging / "site" / "sitecustomize.py").write_text(_SITECUSTOMIZE)
            (staging / "site").rename(site)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    launcher = root / f"python-{cpu}"
    command = ["qemu-aarch64", "-L", str(root), "-cpu", cpu, "-E", f"PYTHONPATH={site}:{root / 'site'}",
               "-E", f"EDGEC_GUEST_PYTHON={launcher}", str(root / "usr" / "bin" / PYTHON)]
    if not launcher.is_file():
        tmp = launcher.with_suffix(".tmp")
        tmp.write_text("#!/bin/sh\nexec " + " ".join(f"'{part}'" for part in command) + ' "$@"\n')
        tmp.chmod(0o755)
        tmp.rename(launcher)
    return [str(launcher)]


def _run(command: list[str], cwd: Path, failure: str) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ToolchainError(f"{failure} ({(result.stderr.strip().splitlines() or ['no message'])[-1]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--cpu", default="cortex-a72")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    import onnx

    graph = onnx.load(str(args.model)).graph
    initializers = {i.name for i in graph.initializer}
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
              for i in graph.input if i.name not in initializers]
    count, _ = count_onnxruntime(args.model, inputs, args.cpu, args.runs)
    print(json.dumps(count.to_json()))


if __name__ == "__main__":
    main()
