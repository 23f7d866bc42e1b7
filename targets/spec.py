"""What a target preset is: the Preset dataclass and its CPU shape, and whether its code runs on
this machine. Only data and facts about this machine: the presets themselves are in
`targets/presets.py`, and `targets/registry.py` resolves a `--target` string to one of them.
Importing this module does not import tvm.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from types import MappingProxyType
from typing import Any

from compiler.errors import TargetError

KIND_DEVICE = {"llvm": "cpu", "cuda": "cuda", "opencl": "opencl"}
_GPU_API = {"cuda": "CUDA", "opencl": "OpenCL"}
_ARCHES = ("x86_64", "aarch64", "arm")


@dataclass(frozen=True)
class Execution:
    """How compiled code for a preset can be run on this machine, and why."""

    mode: str  # "native" | "qemu" | "compile-only"
    reason: str

    @property
    def runnable(self) -> bool:
        return self.mode != "compile-only"


@dataclass(frozen=True)
class CpuShape:
    """The CPU as a micro-kernel sees it: what edgec's default schedules size register tiles and
    cache panels with (passes/default_schedule.py). Data per preset, like the rest of it."""

    f32_lanes: int  # float32 lanes of one vector register (AVX2 8, AVX-512 16, NEON 4)
    vector_registers: int  # architectural vector registers (AVX2 16, AVX-512 and AArch64 32)
    l1d_bytes: int
    l2_bytes: int
    cores: int  # physical cores the kernels run on

    def __post_init__(self) -> None:
        for name in ("f32_lanes", "vector_registers", "l1d_bytes", "l2_bytes", "cores"):
            if getattr(self, name) < 1:
                raise TargetError(f"CPU shape: {name} must be positive, got {getattr(self, name)}")

    @classmethod
    def for_features(cls, arch: str, features: frozenset[str] | set[str], cores: int = 4) -> "CpuShape":
        """A conservative shape for a CPU known only by its LLVM features (bare triples, custom targets)."""
        if arch == "x86_64":
            if "avx512f" in features:
                return cls(16, 32, 32 * 1024, 1024 * 1024, cores)
            if "avx2" in features or "avx" in features:
                return cls(8, 16, 32 * 1024, 512 * 1024, cores)
            return cls(4, 16, 32 * 1024, 256 * 1024, cores)
        if arch == "aarch64":
            return cls(4, 32, 32 * 1024, 512 * 1024, cores)
        return cls(4, 16, 32 * 1024, 256 * 1024, cores)


@dataclass(frozen=True)
class Preset:
    """A deployment target: TVM target dicts plus the toolchain that links and runs its code."""

    name: str
    description: str
    triple: str
    target: Mapping[str, Any] = field(hash=False)
    host: Mapping[str, Any] | None = field(hash=False)
    cross_compiler: str | None
    apt_package: str | None
    device: str
    emulator: str | None
    emulator_sysroot: str | None
    runtime_wheel_platform: str | None
    required_cpu_features: tuple[str, ...]
    elf_machine: str
    notes: str = ""
    layout: str = "NCHW"  # conv data layout the pipeline converts to (passes/layout.py); --layout overrides
    # int8 activations always signed (ARM sdot: int8 x int8) rather than uint8 when non-negative (x86 VNNI)
    signed_int8_activations: bool = False
    # float 3x3 stride-1 convs as Winograd F(4x4, 3x3) (passes/winograd.py); --winograd/--no-winograd
    # override. On for the x86 presets, where tuned NHWC Winograd kernels beat direct ones (README figures)
    winograd: bool = False
    # Peak float multiply-adds per byte of memory bandwidth: how much compute the device does in the
    # time it streams one byte of weights. passes/winograd.py weighs Winograd's fewer multiply-adds
    # against its larger weights with it. 6 for a 2-core AVX-512 CPU (~235 G/s against the ~40 GB/s
    # both cores stream; at 6 the tiles chosen for ResNet-18 were the fastest measured), 3 with AVX2.
    macs_per_byte: float = 6.0
    # CPU presets: the shape default schedules are sized for; None: derived from the target's features
    cpu: CpuShape | None = None

    def __post_init__(self) -> None:
        kind = self.target.get("kind")
        if KIND_DEVICE.get(kind) != self.device:
            raise TargetError(f"target {self.name!r}: kind {kind!r} does not run on device "
                              f"{self.device!r}; use kind llvm (cpu), cuda or opencl")
        if self.host is not None and self.host.get("kind") != "llvm":
            raise TargetError(f"target {self.name!r}: host kind must be 'llvm', "
                              f"got {self.host.get('kind')!r}")
        if self.elf_machine not in _ARCHES:
            raise TargetError(f"target {self.name!r}: elf_machine {self.elf_machine!r} "
                              f"is not one of {_ARCHES}")
        # Presets are shared module-level data: make the dicts read-only.
        object.__setattr__(self, "target", MappingProxyType(dict(self.target)))
        if self.host is not None:
            object.__setattr__(self, "host", MappingProxyType(dict(self.host)))

    def tvm_target(self):
        """The tvm.target.Target to compile for (imports tvm)."""
        from tvm.target import Target

        if self.host is not None:
            return Target(dict(self.target), dict(self.host))
        return Target(dict(self.target))

    def compiler_command(self) -> str:
        """The C++ compiler that links the kernels into a shared library."""
        return self.cross_compiler or "g++"

    def execution_here(self) -> Execution:
        """Whether code for this preset runs on this machine: natively, under qemu, or not at all."""
        here = machine_arch()
        if self.device != "cpu":
            api = _GPU_API[self.device]
            if self.device == "cuda" and shutil.which("nvidia-smi"):
                return _compile_only(f"{api} device; edgec runs only CPU kernels here")
            return _compile_only(f"{api} device; no GPU on this machine")
        if self.elf_machine == here:
            missing = [f for f in self.required_cpu_features if f not in cpu_flags()]
            if missing:
                return _compile_only(f"needs CPU features {', '.join(missing)} that this CPU lacks")
            return Execution("native", f"runs natively on this {here} CPU")
        if self.emulator is None:
            if self.runtime_wheel_platform is None:
                return _compile_only(f"no TVM runtime is published for {self.triple}")
            return _compile_only(f"{self.elf_machine} code cannot run on this {here} machine")
        if shutil.which(self.emulator) is None:
            return _compile_only(f"{self.emulator} not installed: apt-get install qemu-user")
        if self.emulator_sysroot and not os.path.isdir(self.emulator_sysroot):
            return _compile_only(f"sysroot {self.emulator_sysroot} missing: "
                                 f"apt-get install {self.apt_package}")
        return Execution("qemu", f"runs under {self.emulator} user-mode emulation")

    def to_json(self) -> dict[str, Any]:
        """All fields as plain JSON values, plus how it executes here (for the manifest)."""
        out = {f.name: _plain(getattr(self, f.name)) for f in fields(self)}
        execution = self.execution_here()
        out["execution"] = {"mode": execution.mode, "reason": execution.reason}
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Preset":
        """Rebuild a preset from `to_json()` output (as stored in a manifest); extra keys are ignored."""
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        values["required_cpu_features"] = tuple(values.get("required_cpu_features", ()))
        if isinstance(values.get("cpu"), Mapping):
            values["cpu"] = CpuShape(**values["cpu"])
        return cls(**values)

    def cpu_shape(self) -> CpuShape | None:
        """The CPU shape of a CPU preset (its own, or one derived from its LLVM features); imports tvm."""
        if self.device != "cpu":
            return None
        if self.cpu is not None:
            return self.cpu
        from tvm.target import codegen

        features = frozenset(codegen.llvm_get_cpu_features(self.tvm_target()))
        return CpuShape.for_features(self.elf_machine, features, int(self.target.get("num-cores", 4)))


def _compile_only(reason: str) -> Execution:
    return Execution("compile-only", reason)


def _plain(value: Any) -> Any:
    """Read-only mappings and tuples as dicts and lists, so json.dumps accepts them."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, CpuShape):
        return asdict(value)
    return value


def arch_of(name: str) -> str:
    """'x86_64', 'aarch64' or 'arm' for a triple's first field or a platform.machine() value."""
    name = name.lower()
    if name.startswith(("aarch64", "arm64")):
        return "aarch64"
    if name.startswith(("arm", "thumb")):
        return "arm"
    if name in ("x86_64", "amd64"):
        return "x86_64"
    return name


def machine_arch() -> str:
    """This machine's architecture, named like Preset.elf_machine."""
    return arch_of(platform.machine())


@functools.cache
def cpu_flags() -> frozenset[str]:
    """CPU feature flags of this machine from /proc/cpuinfo ('flags' on x86, 'Features' on ARM)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except FileNotFoundError:
        pass
    return frozenset()
