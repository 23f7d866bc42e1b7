"""Build and run edgec's C++ runner (`runner.cc`) for an architecture, without Python on the target.

The runner links TVM's runtime libraries. For this machine's own architecture they come from the
installed wheels; for another one (aarch64 on an x86-64 host) the manylinux wheels of the same
versions are fetched once with `pip download` into the cache and only the runtime libraries and the
tvm_ffi headers are extracted. A foreign-architecture runner runs under qemu user-mode emulation.

Cache layout (root: $EDGEC_CACHE_DIR, default ~/.cache/edgec):
    runtime/<wheel platform>/wheels/*.whl                  downloaded (or hand-placed) wheels
    runtime/<wheel platform>/tvm-<ver>-ffi-<ver>/lib/      libtvm_runtime.so, libtvm_ffi.so
    runtime/<wheel platform>/tvm-<ver>-ffi-<ver>/include/  tvm_ffi C++ headers (with dlpack)
    runner/<arch>-<hash>/edgec-runner                      one binary per (runner.cc, arch, versions)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from compiler.errors import RunnerError, ToolchainError
from compiler.specs import BenchSpec, LatencyStats
from targets import Preset
from targets.registry import machine_arch

RUNNER_SOURCE = Path(__file__).with_name("runner.cc")
# the runner and its `rpc-server` subcommand, one binary
RUNNER_SOURCES = (RUNNER_SOURCE, Path(__file__).with_name("rpc_server.cc"))
RUNNER_NAME = "edgec-runner"
# Wheel member -> file name in the extracted lib dir. libtvm_runtime.so NEEDs only libtvm_ffi.so
# beyond glibc/libstdc++ (which come from the target's sysroot); tests check this with readelf.
_WHEEL_LIBRARIES = {"tvm/lib/libtvm_runtime.so": "libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so": "libtvm_ffi.so"}
_WHEEL_INCLUDE = "tvm_ffi/include/"
_DISTRIBUTIONS = {"tvm": "apache-tvm", "ffi": "apache-tvm-ffi"}


@dataclass(frozen=True)
class RuntimeLibs:
    """TVM runtime libraries and tvm_ffi headers for one architecture."""

    arch: str
    tvm_runtime: Path
    tvm_ffi: Path
    include_dir: Path

    @property
    def lib_dirs(self) -> tuple[Path, ...]:
        """Directories holding the two libraries (one for a fetched runtime, two for the installed wheels)."""
        return tuple(dict.fromkeys([self.tvm_runtime.parent, self.tvm_ffi.parent]))


# ------------------------------------------------------------------------------------ runtime libs


def cache_dir() -> Path:
    """edgec's cache root: $EDGEC_CACHE_DIR, else ~/.cache/edgec."""
    return Path(os.environ.get("EDGEC_CACHE_DIR") or Path.home() / ".cache" / "edgec")


def runtime_libraries(arch: str) -> RuntimeLibs:
    """TVM runtime libraries for `arch`: the installed wheels' own, or fetched once for another arch."""
    preset = _arch_preset(arch)
    if preset.elf_machine == machine_arch():
        return _installed_libraries(preset.elf_machine)
    return _fetched_libraries(preset)


def _arch_preset(arch: str) -> Preset:
    """The generic triple preset of `arch`; it names the compiler, apt package, wheel and emulator."""
    from targets.presets import TRIPLE_PRESETS

    supported = ", ".join(sorted(p.elf_machine for p in TRIPLE_PRESETS.values() if p.runtime_wheel_platform))
    for preset in TRIPLE_PRESETS.values():
        if preset.elf_machine == arch:
            if preset.runtime_wheel_platform is None:
                raise ToolchainError(f"no TVM runtime wheel is published for {arch}; the runner supports: {supported}")
            return preset
    raise ToolchainError(f"unknown architecture {arch!r}; the runner supports: {supported}")


def _versions() -> dict[str, str]:
    return {key: metadata.version(dist) for key, dist in _DISTRIBUTIONS.items()}


def _installed_libraries(arch: str) -> RuntimeLibs:
    tvm, ffi = (metadata.distribution(d) for d in _DISTRIBUTIONS.values())
    libs = RuntimeLibs(arch, Path(tvm.locate_file("tvm/lib/libtvm_runtime.so")),
                       Path(ffi.locate_file("tvm_ffi/lib/libtvm_ffi.so")), Path(ffi.locate_file("tvm_ffi/include")))
    for path in (libs.tvm_runtime, libs.tvm_ffi, libs.include_dir):
        if not path.exists():
            raise ToolchainError(f"'{path}' is missing from the installed TVM wheels; reinstall with `make setup`")
    return libs


def _fetched_libraries(preset: Preset) -> RuntimeLibs:
    versions = _versions()
    platform_dir = cache_dir() / "runtime" / preset.runtime_wheel_platform
    root = platform_dir / f"tvm-{versions['tvm']}-ffi-{versions['ffi']}"
    if not root.is_dir():
        wheels = _wheels(platform_dir / "wheels", preset, versions)
        _extract(wheels, root)
    return RuntimeLibs(preset.elf_machine, root / "lib" / "libtvm_runtime.so", root / "lib" / "libtvm_ffi.so",
                       root / "include")


def _wheels(wheel_dir: Path, preset: Preset, versions: dict[str, str]) -> dict[str, Path]:
    """The tvm and tvm-ffi wheels for the preset's platform in `wheel_dir`, downloaded with pip if absent."""
    platform = preset.runtime_wheel_platform
    patterns = {key: f"{dist.replace('-', '_')}-{versions[key]}-*{preset.elf_machine}*.whl"
                for key, dist in _DISTRIBUTIONS.items()}
    found = _find_wheels(wheel_dir, patterns)
    if found:
        return found
    wheel_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform", platform,
               "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}", "--dest", str(wheel_dir),
               *(f"{dist}=={versions[key]}" for key, dist in _DISTRIBUTIONS.items())]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
        reason = _last_line(result.stderr) or f"pip exit code {result.returncode}"
    except subprocess.TimeoutExpired:
        result, reason = None, "pip timed out after 900 s"
    found = _find_wheels(wheel_dir, patterns) if result is not None and result.returncode == 0 else None
    if not found:
        raise ToolchainError(
            f"cannot download the TVM runtime for {platform} ({reason}); connect to the network once, "
            f"or place {' and '.join(patterns.values())} in {wheel_dir}")
    return found


def _find_wheels(wheel_dir: Path, patterns: dict[str, str]) -> dict[str, Path] | None:
    found = {key: sorted(wheel_dir.glob(pattern)) for key, pattern in patterns.items()}
    return {key: paths[0] for key, paths in found.items()} if all(found.values()) else None


def _extract(wheels: dict[str, Path], root: Path) -> None:
    """Unpack the runtime libraries and headers into `root`, atomically (a temp dir, then a rename)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        (staging / "lib").mkdir()
        for wheel in wheels.values():
            with zipfile.ZipFile(wheel) as archive:
                for member in archive.namelist():
                    if member in _WHEEL_LIBRARIES:
                        (staging / "lib" / _WHEEL_LIBRARIES[member]).write_bytes(archive.read(member))
                    elif member.startswith(_WHEEL_INCLUDE) and not member.endswith("/"):
                        target = staging / "include" / member[len(_WHEEL_INCLUDE):]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(archive.read(member))
        missing = [name for name in _WHEEL_LIBRARIES.values() if not (staging / "lib" / name).is_file()]
        if missing:
            raise ToolchainError(f"the wheels in {next(iter(wheels.values())).parent} lack {', '.join(missing)}; "
                                 f"delete them so that edgec downloads them again")
        os.rename(staging, root)
    except zipfile.BadZipFile as err:
        raise ToolchainError(f"a wheel in {next(iter(wheels.values())).parent} is corrupt ({err}); "
                             f"delete it so that edgec downloads it again") from None
    except OSError:
        if not root.is_dir():  # another process may have published the same directory first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ----------------------------------------------------------------------------------------- build


def build_runner(arch: str) -> Path:
    """Compile runner.cc for `arch` (cached by source, arch and TVM versions); returns the binary."""
    preset = _arch_preset(arch)
    compiler = "g++" if preset.elf_machine == machine_arch() else preset.compiler_command()
    if shutil.which(compiler) is None:
        raise ToolchainError(f"the C++ compiler '{compiler}' that builds the {arch} runner is not installed; "
                             f"install it with: apt-get install {preset.apt_package}")
    libs = runtime_libraries(arch)
    # RUNPATH names no directory of this machine: a bundle finds its libraries beside or below the
    # runner (usr/bin + usr/lib); runs from the cache get LD_LIBRARY_PATH (runner_command)
    command = [compiler, "-std=c++17", "-O2", f"-I{libs.include_dir}", *map(str, RUNNER_SOURCES), "-o", "{output}",
               *(f"-L{d}" for d in libs.lib_dirs), "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi",
               "-Wl,-rpath,$ORIGIN:$ORIGIN/../lib"]
    key = json.dumps([[source.read_text() for source in RUNNER_SOURCES], arch, _versions(), command])
    binary = cache_dir() / "runner" / f"{arch}-{hashlib.sha256(key.encode()).hexdigest()[:16]}" / RUNNER_NAME
    if binary.is_file():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{RUNNER_NAME}.", dir=binary.parent)
    os.close(fd)
    command = [tmp if part == "{output}" else part for part in command]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"building the {arch} runner failed:\n{' '.join(command)}\n{result.stderr}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, binary)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return binary


# ------------------------------------------------------------------------------------------- run


def runner_command(arch: str, binary: Path, emulation: Sequence[str] = ()) -> list[str]:
    """The command prefix that executes `binary`: itself, or qemu with the target sysroot and libraries
    (and `emulation`: more qemu options, as -cpu or -plugin)."""
    preset = _arch_preset(arch)
    lib_path = f"LD_LIBRARY_PATH={':'.join(map(str, runtime_libraries(arch).lib_dirs))}"
    if preset.elf_machine == machine_arch():
        return ["env", lib_path, str(binary)]
    execution = preset.execution_here()
    if execution.mode != "qemu":
        raise ToolchainError(f"cannot run the {arch} runner here: {execution.reason}")
    return [preset.emulator, "-L", preset.emulator_sysroot, *emulation, "-E", lib_path, str(binary)]


def run_runner(
    arch: str,
    library: Path,
    inputs: list[Path],
    output_dir: Path,
    bench: BenchSpec | None = None,
    *,
    timeout: float = 600.0,
    emulation: Sequence[str] = (),
) -> tuple[list[np.ndarray], LatencyStats | None]:
    """Run `library` once (and benchmark it if `bench`) with the runner; outputs in `output_dir`/output<i>.npy.

    Earlier output<i>.npy files in `output_dir` are removed first, so the outputs returned are this run's.
    """
    output_dir = Path(output_dir)
    command = runner_command(arch, build_runner(arch), emulation)
    command += [str(Path(library).absolute()), *(a for p in inputs for a in ("--input", str(p))),
                "--output-dir", str(output_dir)]
    if bench is not None:
        command += ["--bench", "--warmup", str(bench.warmup), "--runs", str(bench.runs)]
    for stale in _output_files(output_dir):
        stale.unlink()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RunnerError(f"the {arch} runner did not finish within {timeout:g} s; pass a larger timeout") from None
    if result.returncode == 2:
        raise RunnerError(_last_line(result.stderr) or f"the {arch} runner failed with exit code 2")
    if result.returncode < 0:  # killed: the device (or the emulator) died under it, as an OOM kill does
        raise RunnerError(f"the {arch} runner was killed by {signal.Signals(-result.returncode).name}; "
                          f"{_last_line(result.stderr) or 'no message'}")
    if result.returncode != 0:
        raise RuntimeError(f"the {arch} runner crashed (exit code {result.returncode}):\n{result.stderr}")
    outputs = [np.load(path) for path in _output_files(output_dir)]
    stats = LatencyStats(**json.loads(result.stdout.strip().splitlines()[-1])) if bench is not None else None
    return outputs, stats


def _output_files(output_dir: Path) -> list[Path]:
    """output0.npy, output1.npy, ... in index order."""
    if not output_dir.is_dir():
        return []
    found = {int(m.group(1)): p for p in output_dir.iterdir() if (m := re.fullmatch(r"output(\d+)\.npy", p.name))}
    return [found[i] for i in sorted(found)]


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
