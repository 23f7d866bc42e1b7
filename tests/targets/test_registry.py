"""Target registry: every preset is a valid TVM target, lookups resolve, and code links for the right CPU."""

import json
import shutil
from dataclasses import fields

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.support import cc
from tvm.target import codegen

from compiler.errors import ArtifactError, TargetError
from targets import PRESETS, X86_BY_CAPABILITY, Preset, first_native, host_preset, list_presets, resolve_target
from targets.elf import elf_machine
from targets.presets import TRIPLE_PRESETS
from targets.registry import required_cpu_flags

ALL = list_presets()
CPU_PRESETS = [p for p in ALL if p.device == "cpu"]


def this_cpu_flags() -> set[str]:
    """Read /proc/cpuinfo independently of the code under test."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    return set()


def llvm_dicts(preset: Preset):
    return [d for d in (preset.target, preset.host) if d is not None and d["kind"] == "llvm"]


# --- the data -------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ALL, ids=lambda p: p.name)
def test_every_preset_is_a_tvm_target(preset):
    target = preset.tvm_target()
    assert target.kind.name == preset.target["kind"]
    if preset.host is not None:
        assert target.host.kind.name == "llvm"
        assert str(target.host.attrs["mtriple"]) == preset.host["mtriple"]
    else:
        assert target.host is None
    cpu = preset.host if preset.host is not None else preset.target
    assert preset.elf_machine == {"x86": "x86_64", "aar": "aarch64", "arm": "arm"}[cpu["mtriple"][:3]]


@pytest.mark.parametrize("preset", ALL, ids=lambda p: p.name)
def test_every_mcpu_is_known_to_llvm(preset):
    # tvm.target.Target accepts an unknown mcpu and falls back to "generic", so check LLVM directly.
    for d in llvm_dicts(preset):
        if "mcpu" in d:
            assert codegen.llvm_is_valid_cpu(d["mcpu"], d["mtriple"]), (d["mcpu"], d["mtriple"])


@pytest.mark.parametrize("preset", [p for p in CPU_PRESETS if p.name != "host"], ids=lambda p: p.name)
def test_required_cpu_features_are_what_llvm_enables(preset):
    # Code for the preset may use any of these instructions; a CPU lacking one dies with SIGILL.
    assert preset.required_cpu_features == required_cpu_flags(preset.tvm_target(), preset.elf_machine)


def test_names_are_unique_and_triples_are_named_by_their_triple():
    names = [p.name for p in ALL]
    assert len(names) == len(set(names)) == 15
    assert list(TRIPLE_PRESETS) == ["aarch64-linux-gnu", "arm-linux-gnueabihf", "x86_64-linux-gnu"]
    assert all(name == p.name == p.triple for name, p in TRIPLE_PRESETS.items())
    assert [p.name for p in ALL[: len(PRESETS)]] == [p.name for p in PRESETS]


@pytest.mark.parametrize("preset", ALL, ids=lambda p: p.name)
def test_toolchain_fields_agree_with_the_triple(preset):
    if preset.cross_compiler is None:
        assert preset.triple == "x86_64-linux-gnu" and preset.apt_package == "g++"
        assert preset.compiler_command() == "g++"
    else:
        assert preset.cross_compiler == f"{preset.triple}-g++" == preset.compiler_command()
        assert preset.apt_package == f"g++-{preset.triple}"
    assert preset.emulator in (None, "qemu-aarch64")
    if preset.emulator:
        assert preset.device == "cpu" and preset.elf_machine == "aarch64"
        assert preset.emulator_sysroot == "/usr/aarch64-linux-gnu"
    expected_wheel = {"x86_64": "manylinux_2_28_x86_64", "aarch64": "manylinux_2_28_aarch64", "arm": None}
    assert preset.runtime_wheel_platform == expected_wheel[preset.elf_machine]


def test_specific_preset_values():
    a76 = resolve_target("cortex-a76")
    assert dict(a76.target) == {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76",
                                "mattr": ("+neon", "+dotprod"), "num-cores": 4}
    assert bool(a76.tvm_target().attrs["feature.has_dotprod"])
    armv7 = resolve_target("armv7")
    assert armv7.target["mfloat-abi"] == "hard" and armv7.target["mtriple"] == "armv7a-linux-gnueabihf"
    assert resolve_target("jetson-orin").target["arch"] == "sm_87"
    assert resolve_target("jetson-orin").host["mcpu"] == "cortex-a78ae"
    assert resolve_target("x86-avx512").target["mcpu"] == "cascadelake"
    assert resolve_target("x86_64-linux-gnu").required_cpu_features == ()


def test_presets_are_read_only():
    with pytest.raises(TypeError):
        resolve_target("cortex-a72").target["mcpu"] = "cortex-a53"
    with pytest.raises(AttributeError):
        resolve_target("cortex-a72").name = "other"
    assert resolve_target("cortex-a72").target["mcpu"] == "cortex-a72"
    assert len({hash(p) for p in ALL}) == len(ALL)


def test_to_json_has_every_field_and_the_execution():
    data = json.loads(json.dumps(resolve_target("jetson-orin").to_json()))
    assert set(data) == {f.name for f in fields(Preset)} | {"execution"}
    assert data["host"]["mattr"] == ["+neon"]
    assert data["execution"]["mode"] == "compile-only"
    assert data["required_cpu_features"] == []


# --- resolving --target ---------------------------------------------------------------------------

def test_resolve_by_name_triple_and_host():
    assert resolve_target("cortex-a72").description == "Raspberry Pi 4 (4x Cortex-A72, NEON)"
    assert resolve_target("  Cortex-A72 ") is resolve_target("cortex-a72")
    assert resolve_target("aarch64-linux-gnu").cross_compiler == "aarch64-linux-gnu-g++"
    assert resolve_target("arm-linux-gnueabihf").target == resolve_target("armv7").target
    assert resolve_target("host") is host_preset()


def test_resolve_json_llvm_takes_the_toolchain_from_mtriple():
    preset = resolve_target('{"kind": "llvm", "mtriple": "armv7a-linux-gnueabihf", "mcpu": "cortex-a9", '
                            '"mattr": ["+neon"], "mfloat-abi": "hard"}')
    assert (preset.name, preset.triple, preset.device) == ("custom", "arm-linux-gnueabihf", "cpu")
    assert preset.cross_compiler == "arm-linux-gnueabihf-g++" and preset.elf_machine == "arm"
    assert str(preset.tvm_target().attrs["mcpu"]) == "cortex-a9"
    default = resolve_target('{"kind": "llvm"}')
    assert default.triple == "x86_64-linux-gnu" and default.cross_compiler is None


def test_resolve_json_derives_required_cpu_features_from_mcpu():
    # sapphirerapids code dies with SIGILL on a CPU without AVX-512/AMX: it must not count as native.
    spr = resolve_target('{"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "sapphirerapids"}')
    assert {"avx512f", "avx512_vnni", "amx_tile"} <= set(spr.required_cpu_features)
    missing = [f for f in spr.required_cpu_features if f not in this_cpu_flags()]
    assert spr.execution_here().mode == ("compile-only" if missing else "native")
    a76 = resolve_target('{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"}')
    assert a76.required_cpu_features == ("asimd", "asimddp", "asimdhp")


def test_resolve_json_with_host_dict():
    preset = resolve_target('{"kind": "cuda", "arch": "sm_72", '
                            '"host": {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}}')
    assert preset.device == "cuda" and preset.triple == "aarch64-linux-gnu"
    assert dict(preset.host) == {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}
    assert "host" not in preset.target
    assert preset.tvm_target().host.kind.name == "llvm"


def test_unknown_name_lists_every_valid_choice_on_one_line():
    with pytest.raises(TargetError) as err:
        resolve_target("rpi5")
    message = str(err.value)
    assert "\n" not in message
    assert message == (
        "unknown target 'rpi5'; choose from: armv7, cortex-a53, cortex-a72, cortex-a76, cuda-sm80, "
        "cuda-sm90, host, jetson-orin, mali-g52, mali-g610, x86-64, x86-avx512 "
        "(or a triple: aarch64-linux-gnu, arm-linux-gnueabihf, x86_64-linux-gnu; or a TVM target JSON dict)")


@pytest.mark.parametrize("spec, expected", [
    ('{"kind": "llvm", ', "target JSON is invalid"),
    ('{"kind": "vulkan"}', "target kind 'vulkan' is not supported; use one of: llvm, cuda, opencl"),
    ('[1, 2]', "unknown target '[1, 2]'"),
    ('{"kind": "cuda", "host": "llvm"}', "target JSON 'host' must be a dict"),
    ('{"kind": "llvm", "num-cores": "four"}', "TVM rejects the target: Option 'num-cores'"),
    ('{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a99"}',
     "mcpu 'cortex-a99' is unknown to LLVM for aarch64-linux-gnu"),
    ('{"kind": "llvm", "mtriple": "riscv64-linux-gnu"}', "no toolchain for architecture 'riscv64'"),
])
def test_bad_json_targets_fail_with_one_line(spec, expected):
    with pytest.raises(TargetError) as err:
        resolve_target(spec)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


# --- where code runs ------------------------------------------------------------------------------

def test_x86_presets_run_natively_only_with_their_cpu_features():
    flags = this_cpu_flags()
    x86 = resolve_target("x86-64").execution_here()
    assert x86.mode == ("native" if {"avx", "avx2", "fma", "f16c"} <= flags else "compile-only")
    avx512 = resolve_target("x86-avx512").execution_here()
    needed = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd",
              "avx512_vnni")
    missing = [f for f in needed if f not in flags]
    if missing:
        assert avx512.mode == "compile-only"
        assert avx512.reason == f"needs CPU features {', '.join(missing)} that this CPU lacks"
    else:
        assert avx512.mode == "native"
    assert resolve_target("x86_64-linux-gnu").execution_here().mode == "native"


def test_first_native_takes_the_most_capable_x86_preset_this_cpu_runs():
    expected = "x86-avx512" if resolve_target("x86-avx512").execution_here().mode == "native" else "x86-64"
    assert first_native(X86_BY_CAPABILITY).name == expected
    with pytest.raises(TargetError) as err:  # emulated or compile-only presets do not count
        first_native(("cortex-a72", "armv7"))
    message = str(err.value)
    assert message.startswith("none of the presets cortex-a72, armv7 runs natively on this machine (cortex-a72: ")
    assert "armv7: no TVM runtime is published" in message and "\n" not in message


def test_host_preset_is_native_for_this_cpu():
    host = host_preset()
    assert host.execution_here().mode == "native"
    assert host.target["mcpu"] == codegen.llvm_get_system_cpu()
    assert host.cross_compiler is None
    # the features its code may use are recorded, and this CPU has every one of them
    assert set(host.required_cpu_features) <= this_cpu_flags()
    if "avx2" in this_cpu_flags():
        assert "avx2" in host.required_cpu_features


def test_host_artifact_is_not_native_on_a_cpu_without_its_features():
    moved = Preset.from_json({**host_preset().to_json(), "required_cpu_features": ["avx512_fp16_not_here"]})
    execution = moved.execution_here()
    assert execution.mode == "compile-only" and "avx512_fp16_not_here" in execution.reason


@pytest.mark.parametrize("name", ["cuda-sm80", "cuda-sm90", "jetson-orin", "mali-g52", "mali-g610"])
def test_gpu_presets_are_compile_only(name):
    execution = resolve_target(name).execution_here()
    assert execution.mode == "compile-only" and not execution.runnable
    assert execution.reason.startswith("CUDA device" if "mali" not in name else "OpenCL device")


def test_arm_presets_run_under_qemu_or_not_at_all():
    a72 = resolve_target("cortex-a72").execution_here()
    if shutil.which("qemu-aarch64"):
        assert (a72.mode, a72.reason) == ("qemu", "runs under qemu-aarch64 user-mode emulation")
    else:
        assert a72.mode == "compile-only" and "apt-get install qemu-user" in a72.reason
    armv7 = resolve_target("armv7").execution_here()
    assert armv7.mode == "compile-only"
    assert armv7.reason == "no TVM runtime is published for arm-linux-gnueabihf"


# --- building for each CPU preset -----------------------------------------------------------------

@pytest.fixture(scope="module")
def add_mul_module():
    """main(x, y) = (x + y) * y over float32[4]."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4,), "float32"))
    y = relax.Var("y", relax.TensorType((4,), "float32"))
    with bb.function("main", [x, y]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.multiply(bb.emit(relax.op.add(x, y)), y))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("preset", CPU_PRESETS, ids=lambda p: p.name)
def test_build_links_a_library_for_the_preset_cpu(preset, add_mul_module, tmp_path):
    if shutil.which(preset.compiler_command()) is None:
        pytest.skip(f"{preset.compiler_command()} not installed: apt-get install {preset.apt_package}")
    executable = relax.build(add_mul_module, target=preset.tvm_target())
    lib = tmp_path / f"{preset.name}.so"
    executable.export_library(str(lib), fcompile=cc.cross_compiler(preset.compiler_command()))
    assert elf_machine(lib) == preset.elf_machine
    if preset.execution_here().mode == "native":
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
        x = np.array([1.0, 2.0, 3.0, 4.0], "float32")
        y = np.array([0.5, -1.0, 2.0, 3.0], "float32")
        out = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(y)).numpy()
        np.testing.assert_allclose(out, (x + y) * y, rtol=1e-6)


def test_elf_machine_rejects_non_elf_files(tmp_path):
    path = tmp_path / "model.so"
    path.write_bytes(b"not an elf file at all")
    with pytest.raises(ArtifactError, match="is not an ELF shared library"):
        elf_machine(path)
