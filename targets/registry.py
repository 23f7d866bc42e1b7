"""What a target preset is, where its code can run, and how a `--target` string resolves to one.

The presets are data in `targets/presets.py`, of the types in `targets/spec.py`; this module is the
one that knows them. Importing it does not import tvm.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import replace

from compiler.errors import TargetError
from targets import presets
from targets.spec import KIND_DEVICE, CpuShape, Execution, Preset, arch_of, cpu_flags, machine_arch

__all__ = ["CpuShape", "Execution", "Preset", "arch_of", "cpu_flags", "first_native", "host_preset", "list_presets",
           "machine_arch", "required_cpu_flags", "resolve_target"]

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


def _triple_preset(arch: str) -> Preset:
    """The generic preset of an architecture, which supplies its toolchain."""
    triples = presets.TRIPLE_PRESETS
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
    return [*presets.PRESETS, host_preset(), *presets.TRIPLE_PRESETS.values()]


def resolve_target(spec: str) -> Preset:
    """A preset name, 'host', a bare triple, or a TVM target JSON dict string -> Preset."""
    spec = spec.strip()
    if spec.startswith("{"):
        return _custom_preset(spec)
    if spec.lower() == "host":
        return host_preset()
    by_name = {p.name: p for p in (*presets.PRESETS, *presets.TRIPLE_PRESETS.values())}
    if spec.lower() in by_name:
        return by_name[spec.lower()]
    names = ", ".join(sorted([p.name for p in presets.PRESETS] + ["host"]))
    raise TargetError(f"unknown target {spec!r}; choose from: {names} "
                      f"(or a triple: {', '.join(presets.TRIPLE_PRESETS)}; or a TVM target JSON dict)")


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
    if not isinstance(kind, str) or kind not in KIND_DEVICE:
        raise TargetError(f"target kind {kind!r} is not supported; use one of: {', '.join(KIND_DEVICE)}")
    cpu_dict = target if kind == "llvm" else (host or {})
    base = _triple_preset(str(cpu_dict.get("mtriple", "x86_64-linux-gnu")).split("-")[0])
    preset = replace(base, name="custom", description=f"custom TVM target ({kind})", target=target,
                     host=host, device=KIND_DEVICE[kind], required_cpu_features=(),
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
