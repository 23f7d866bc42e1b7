"""The target presets, as data. Add a device by adding a Preset here; nothing else branches on names.

Every mcpu below is one LLVM accepts for its mtriple (tests/targets checks it with llvm_is_valid_cpu,
because tvm.target.Target accepts an unknown mcpu and silently falls back to a generic CPU), and
required_cpu_features are the /proc/cpuinfo flags of the SIMD features LLVM enables for that mcpu
(tests/targets checks them against registry.required_cpu_flags).
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from targets.spec import CpuShape, Preset

# Toolchain fields shared by every preset of an architecture.
_X86_64 = dict(triple="x86_64-linux-gnu", cross_compiler=None, apt_package="g++",
               runtime_wheel_platform="manylinux_2_28_x86_64", elf_machine="x86_64",
               emulator=None, emulator_sysroot=None)
_AARCH64 = dict(triple="aarch64-linux-gnu", cross_compiler="aarch64-linux-gnu-g++",
                apt_package="g++-aarch64-linux-gnu", runtime_wheel_platform="manylinux_2_28_aarch64",
                elf_machine="aarch64")
# ARM CPU kernels vectorize over channels (NEON lanes), as ARM's own libraries do: NHWC.
# Their int8 dot-product instruction (sdot) multiplies int8 x int8, so activations stay signed.
# ARM CPUs: NHWC, int8 x int8 (sdot), and 3x3 convs as Winograd: ResNet-18 for cortex-a72 executes
# 615 M instructions per inference with it, 830 M without (onnxruntime aarch64: 665 M; counted
# under qemu, examples/benchmark.py's arm section)
_ARM_CPU_CHOICES = dict(layout="NHWC", signed_int8_activations=True, winograd=True)
_QEMU_AARCH64 = dict(emulator="qemu-aarch64", emulator_sysroot="/usr/aarch64-linux-gnu")
# Register files and caches that default schedules size their tiles for (passes/default_schedule.py)
_AVX2_CPU = CpuShape(f32_lanes=8, vector_registers=16, l1d_bytes=32 * 1024, l2_bytes=512 * 1024, cores=4)
_AVX512_CPU = CpuShape(f32_lanes=16, vector_registers=32, l1d_bytes=32 * 1024, l2_bytes=1024 * 1024, cores=4)
_A53_CPU = CpuShape(f32_lanes=4, vector_registers=32, l1d_bytes=32 * 1024, l2_bytes=512 * 1024, cores=4)
_A72_CPU = CpuShape(f32_lanes=4, vector_registers=32, l1d_bytes=32 * 1024, l2_bytes=1024 * 1024, cores=4)
_A76_CPU = CpuShape(f32_lanes=4, vector_registers=32, l1d_bytes=64 * 1024, l2_bytes=512 * 1024, cores=4)
_A7_CPU = CpuShape(f32_lanes=4, vector_registers=16, l1d_bytes=32 * 1024, l2_bytes=512 * 1024, cores=4)
_NO_EMULATOR = dict(emulator=None, emulator_sysroot=None)
_ARMV7 = dict(triple="arm-linux-gnueabihf", cross_compiler="arm-linux-gnueabihf-g++",
              apt_package="g++-arm-linux-gnueabihf", runtime_wheel_platform=None, elf_machine="arm",
              emulator=None, emulator_sysroot=None)


def _cpu(mtriple: str, mcpu: str, *mattr: str, cores: int | None = 4, **extra) -> dict:
    """An llvm target dict; num-cores is the thread count TVM's kernels plan for."""
    target = {"kind": "llvm", "mtriple": mtriple, "mcpu": mcpu, **extra}
    if mattr:
        target["mattr"] = mattr
    if cores is not None:
        target["num-cores"] = cores
    return target


_ARMV7_PRESET = Preset(
    "armv7", "32-bit ARMv7 boards (Cortex-A7, NEON, hard float)",
    target=_cpu("armv7a-linux-gnueabihf", "cortex-a7", "+neon", **{"mfloat-abi": "hard"}),
    host=None, device="cpu", required_cpu_features=("neon",), cpu=_A7_CPU, **_ARM_CPU_CHOICES,
    notes="compile-only: no TVM runtime wheel exists for armv7; build the runtime on the device", **_ARMV7)
# CUDA limits as in TVM's nvidia/* tags; MetaSchedule reads them.
_CUDA_LIMITS = {"max_threads_per_block": 1024, "max_shared_memory_per_block": 49152}

PRESETS: tuple[Preset, ...] = (
    Preset("x86-64", "x86-64 with AVX2 and FMA (Intel Haswell and newer, AMD Zen)",
           target=_cpu("x86_64-linux-gnu", "haswell"), host=None, device="cpu",
           # NHWC: tuned convs vectorize over channels, faster than NCHW (passes/layout.py); 3x3 convs
           # as Winograd F(4x4, 3x3) where they have the tiles for it (passes/winograd.py)
           required_cpu_features=("avx", "avx2", "fma", "f16c"), layout="NHWC", winograd=True, macs_per_byte=3.0,
           cpu=_AVX2_CPU, **_X86_64),
    Preset("x86-avx512", "x86-64 with AVX-512 and VNNI (Intel Cascade Lake and newer, AMD Zen 4)",
           target=_cpu("x86_64-linux-gnu", "cascadelake"), host=None, device="cpu",
           required_cpu_features=("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq",
                                  "avx512vl", "avx512cd", "avx512_vnni"),
           # NHWC: tuned convs vectorize over channels, and MetaSchedule tensorizes int8 conv with
           # VNNI's dot_16x4 only with channels innermost; 3x3 convs as Winograd, as on x86-64
           layout="NHWC", winograd=True, macs_per_byte=6.0, cpu=_AVX512_CPU, **_X86_64),
    Preset("cortex-a53", "Raspberry Pi 3 and other Cortex-A53 boards (4x Cortex-A53, NEON)",
           target=_cpu("aarch64-linux-gnu", "cortex-a53", "+neon"), host=None, device="cpu", cpu=_A53_CPU,
           required_cpu_features=("asimd",), **_AARCH64, **_QEMU_AARCH64, **_ARM_CPU_CHOICES),
    Preset("cortex-a72", "Raspberry Pi 4 (4x Cortex-A72, NEON)",
           target=_cpu("aarch64-linux-gnu", "cortex-a72", "+neon"), host=None, device="cpu", cpu=_A72_CPU,
           required_cpu_features=("asimd",), **_AARCH64, **_QEMU_AARCH64, **_ARM_CPU_CHOICES),
    Preset("cortex-a76", "Raspberry Pi 5 (4x Cortex-A76, NEON, dot product)",
           target=_cpu("aarch64-linux-gnu", "cortex-a76", "+neon", "+dotprod"), host=None, device="cpu", cpu=_A76_CPU,
           required_cpu_features=("asimd", "asimddp", "asimdhp"), **_AARCH64, **_QEMU_AARCH64, **_ARM_CPU_CHOICES),
    _ARMV7_PRESET,
    Preset("mali-g52", "Mali-G52 GPU via OpenCL (Rockchip RK3566/RK3568, Cortex-A55 host)",
           target={"kind": "opencl", "device": "mali"},
           host=_cpu("aarch64-linux-gnu", "cortex-a55", "+neon", cores=None), device="opencl",
           required_cpu_features=(), **_AARCH64, **_NO_EMULATOR),
    Preset("mali-g610", "Mali-G610 GPU via OpenCL (Rockchip RK3588: Orange Pi 5, Rock 5B; Cortex-A76 host)",
           target={"kind": "opencl", "device": "mali"},
           host=_cpu("aarch64-linux-gnu", "cortex-a76", "+neon", "+dotprod", cores=None), device="opencl",
           required_cpu_features=(), **_AARCH64, **_NO_EMULATOR),
    Preset("jetson-orin", "NVIDIA Jetson Orin (Ampere GPU sm_87, Cortex-A78AE host)",
           target={"kind": "cuda", "arch": "sm_87", **_CUDA_LIMITS},
           host=_cpu("aarch64-linux-gnu", "cortex-a78ae", "+neon", cores=None), device="cuda",
           required_cpu_features=(), **_AARCH64, **_NO_EMULATOR),
    Preset("cuda-sm80", "NVIDIA Ampere datacenter GPU (A100, sm_80) on an x86-64 host",
           target={"kind": "cuda", "arch": "sm_80", **_CUDA_LIMITS},
           host={"kind": "llvm", "mtriple": "x86_64-linux-gnu"}, device="cuda",
           required_cpu_features=(), **_X86_64),
    Preset("cuda-sm90", "NVIDIA Hopper GPU (H100, sm_90) on an x86-64 host",
           target={"kind": "cuda", "arch": "sm_90", **_CUDA_LIMITS},
           host={"kind": "llvm", "mtriple": "x86_64-linux-gnu"}, device="cuda",
           required_cpu_features=(), **_X86_64),
)

# The x86 presets from the most capable CPU to the least: the quick start and the benchmark take the
# first that runs natively on the machine (registry.first_native), so an AVX-512 CPU gets its records.
X86_BY_CAPABILITY = ("x86-avx512", "x86-64")

# Generic presets for a bare triple given as --target; they also supply the toolchain of custom targets.
TRIPLE_PRESETS: MappingProxyType[str, Preset] = MappingProxyType({p.name: p for p in (
    Preset("aarch64-linux-gnu", "generic 64-bit ARM (ARMv8-A, NEON)",
           target=_cpu("aarch64-linux-gnu", "generic", "+neon"), host=None, device="cpu",
           required_cpu_features=("asimd",), **_AARCH64, **_QEMU_AARCH64, **_ARM_CPU_CHOICES),
    replace(_ARMV7_PRESET, name="arm-linux-gnueabihf", description="generic 32-bit ARMv7 (NEON, hard float)"),
    Preset("x86_64-linux-gnu", "generic x86-64 (baseline SSE2, runs on any x86-64 CPU)",
           target=_cpu("x86_64-linux-gnu", "x86-64"), host=None, device="cpu",
           required_cpu_features=(), **_X86_64),
)})
