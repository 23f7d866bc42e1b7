"""What a target preset is, where its code can run, and how a `--target` string resolves to one.

The presets themselves are data in `targets/presets.py`. Importing this module does not import tvm.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

from compiler.errors import TargetError

_KIND_DEVICE = {"llvm": "cpu", "cuda": "cuda", "opencl": "opencl"}
_GPU_API = {"cuda": "CUDA", "opencl": "OpenCL"}
_ARCHES = ("x86_64", "aarch64", "arm")
# Per architecture: LLVM CPU features whose instructions kernels may use -> their /proc/cpuinfo flag.
_CPUINFO_FLAGS = {
    "x86_64": {
        "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c", "avxvnni": "avx_vnni",
        "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512dq": "avx512dq", "avx512vl": "avx512vl",
        "avx512cd": "avx512cd", "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16",
        "avx512fp16": "avx512_fp16", "amx-tile": "amx_tile", "amx-int8": "amx_int8", "amx-bf16": "amx_bf16",
    },
    "aarch64": {"neon": "asimd", "dotprod": "asimddp", "fullfp16": "asimdhp", "i8mm": "i8mm", "sve": "sve"},
    "arm": {"neon": "neon"},
}


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
        if _KIND_DEVICE.get(kind) != self.device:
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
        return {f.name: getattr(value, f.name) for f in fields(value)}
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


def _tables():
    """The preset data module, imported late because it builds its Presets from this module."""
    from targets import presets

    return presets


def _triple_preset(arch: str) -> Preset:
    """The generic preset of an architecture, which supplies its toolchain."""
    triples = _tables().TRIPLE_PRESETS
    for preset in triples.values():
        if preset.elf_machine == arch_of(arch):
            return preset
    raise TargetError(f"no toolchain for architecture {arch!r}; use one of: {', '.join(triples)}")


@functools.cache
def host_preset() -> Preset:
    """A preset for this machine's own CPU (mcpu as LLVM detects it, all cores); imports tvm."""
    from tvm.target import codegen

    base = _triple_preset(machine_arch())
    cpu = codegen.llvm_get_system_cpu()
    preset = replace(
        base, name="host", description=f"this machine ({cpu}, {os.cpu_count()} cores)",
        target={**base.target, "mcpu": cpu, "num-cores": os.cpu_count()},
        cross_compiler=None, apt_package="g++", emulator=None, emulator_sysroot=None,
        required_cpu_features=(), notes="built for the CPU LLVM detects on this machine")
    # Record what the code may use, so that a 'host' artifact copied to an older CPU is not run there.
    # Only flags this CPU reports count: under a hypervisor LLVM's model can claim more than is exposed.
    needed = required_cpu_flags(preset.tvm_target(), preset.elf_machine)
    return replace(preset, required_cpu_features=tuple(f for f in needed if f in cpu_flags()))


def list_presets() -> list[Preset]:
    """Every preset in display order: named devices, then 'host', then the bare triples."""
    tables = _tables()
    return [*tables.PRESETS, host_preset(), *tables.TRIPLE_PRESETS.values()]


def resolve_target(spec: str) -> Preset:
    """A preset name, 'host', a bare triple, or a TVM target JSON dict string -> Preset."""
    spec = spec.strip()
    if spec.startswith("{"):
        return _custom_preset(spec)
    if spec.lower() == "host":
        return host_preset()
    tables = _tables()
    by_name = {p.name: p for p in (*tables.PRESETS, *tables.TRIPLE_PRESETS.values())}
    if spec.lower() in by_name:
        return by_name[spec.lower()]
    names = ", ".join(sorted([p.name for p in tables.PRESETS] + ["host"]))
    raise TargetError(f"unknown target {spec!r}; choose from: {names} "
                      f"(or a triple: {', '.join(tables.TRIPLE_PRESETS)}; or a TVM target JSON dict)")


def first_native(names: Sequence[str]) -> Preset:
    """The first of the named presets whose code runs natively on this machine."""
    presets = [resolve_target(name) for name in names]
    for preset in presets:
        if preset.execution_here().mode == "native":
            return preset
    reasons = "; ".join(f"{p.name}: {p.execution_here().reason}" for p in presets)
    raise TargetError(f"none of the presets {', '.join(names)} runs natively on this machine ({reasons}); "
                      "pass a target explicitly")


def _custom_preset(spec: str) -> Preset:
    """A preset from a raw TVM target dict; the toolchain comes from its (host's) mtriple."""
    try:
        target = json.loads(spec)
    except json.JSONDecodeError as e:
        raise TargetError(f"target JSON is invalid ({e.msg} at column {e.colno}); "
                          f"""pass a dict such as '{{"kind": "llvm", "mcpu": "cortex-a72"}}'""") from None
    if not isinstance(target, dict):
        raise TargetError(f"target JSON must be a dict, got {type(target).__name__}; "
                          f"""pass a dict such as '{{"kind": "llvm", "mcpu": "cortex-a72"}}'""")
    host = target.pop("host", None)
    if host is not None and not isinstance(host, dict):
        raise TargetError(f"target JSON 'host' must be a dict, got {host!r}; "
                          f"""e.g. "host": {{"kind": "llvm", "mtriple": "aarch64-linux-gnu"}}""")
    kind = target.get("kind")
    if not isinstance(kind, str) or kind not in _KIND_DEVICE:
        raise TargetError(f"target kind {kind!r} is not supported; use one of: {', '.join(_KIND_DEVICE)}")
    cpu_dict = target if kind == "llvm" else (host or {})
    base = _triple_preset(str(cpu_dict.get("mtriple", "x86_64-linux-gnu")).split("-")[0])
    preset = replace(base, name="custom", description=f"custom TVM target ({kind})", target=target,
                     host=host, device=_KIND_DEVICE[kind], required_cpu_features=(),
                     notes="from a TVM target JSON dict")
    tvm_target = _check_with_tvm(preset)
    if preset.device != "cpu":
        return preset
    return replace(preset, required_cpu_features=required_cpu_flags(tvm_target, preset.elf_machine))


def required_cpu_flags(tvm_target, arch: str) -> tuple[str, ...]:
    """The /proc/cpuinfo flags a CPU of `arch` needs to run code built for an llvm tvm.target.Target."""
    from tvm.target import codegen

    features = set(codegen.llvm_get_cpu_features(tvm_target))
    return tuple(flag for feature, flag in _CPUINFO_FLAGS[arch].items() if feature in features)


def _check_with_tvm(preset: Preset):
    """The preset's tvm.target.Target; TargetError unless TVM accepts it and LLVM knows its mcpu."""
    from tvm.target import codegen

    try:
        tvm_target = preset.tvm_target()
    except ValueError as e:
        reason = str(e).splitlines()[0].split(" Target creation from config dict failed")[0]
        raise TargetError(f"TVM rejects the target: {reason}") from None
    for llvm in (d for d in (preset.target, preset.host) if d and d.get("kind") == "llvm"):
        mcpu, mtriple = llvm.get("mcpu"), llvm.get("mtriple", "x86_64-linux-gnu")
        if mcpu and not codegen.llvm_is_valid_cpu(mcpu, mtriple):
            raise TargetError(f"mcpu {mcpu!r} is unknown to LLVM for {mtriple}; "
                              f"use e.g. the mcpu of a preset listed by 'edgec targets'")
    return tvm_target
