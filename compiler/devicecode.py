"""Device code for GPU presets: CUDA compiled ahead of time with nvcc, OpenCL kept as source.

TVM 0.27 generates CUDA modules that hold CUDA C *source* (format "cuda") unless a CUDA driver is
loadable while compiling; the device would then need NVRTC and Python to JIT it at load time. edgec
instead compiles that source with nvcc for the preset's architecture and rewrites the library's packed
import blob so that the CUDA module carries a fatbin (SASS + PTX), which TVM's CUDA runtime hands
straight to `cuModuleLoadData`. OpenCL (Mali) stays source: the device's OpenCL driver builds it.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from compiler.errors import ToolchainError

FATBIN_MAGIC = bytes.fromhex("50ed55ba")  # 0xBA55ED50, little-endian
NVCC_FLAGS = (
    "-O3", "-w", "--expt-relaxed-constexpr", "--use_fast_math",
    # TVM's generated code uses half/bfloat16 operators that cuda_fp16.h hides by default
    "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
)


def require_nvcc() -> str:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise ToolchainError("nvcc is not installed, so CUDA device code cannot be compiled; install it with: "
                             "apt-get install nvidia-cuda-toolkit (or NVIDIA's CUDA toolkit, with its bin/ on PATH)")
    return nvcc


def compile_cuda(source: str, arch: str) -> bytes:
    """nvcc-compile TVM-generated CUDA C for `arch` (e.g. "sm_87") into a fatbin with SASS and PTX."""
    nvcc = require_nvcc()
    number = arch.removeprefix("sm_")
    with tempfile.TemporaryDirectory(prefix="edgec-nvcc-") as work:
        source_path, fatbin_path = Path(work, "kernels.cu"), Path(work, "kernels.fatbin")
        source_path.write_text(source)
        command = [nvcc, "--fatbin", *NVCC_FLAGS, "-gencode", f"arch=compute_{number},code=[sm_{number},compute_{number}]",
                   "-o", str(fatbin_path), str(source_path)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            # generated code failing to compile is an edgec/TVM bug, not a user mistake
            raise RuntimeError(f"nvcc failed ({' '.join(command)}):\n{result.stderr[-4000:]}")
        return fatbin_path.read_bytes()


def cuda_fpack_imports(arch: str) -> Callable[..., str]:
    """An `export_library(fpack_imports=...)` hook that embeds nvcc fatbins instead of CUDA source."""
    import tvm_ffi

    def pack(mod, is_system_lib: bool, prefix: str, workspace_dir: str) -> str:
        blob = bytes(tvm_ffi.get_global_func("runtime.ModulePackImportsToTensor")(mod).numpy())
        blob = _compile_cuda_entries(blob, arch)
        # TVM's own C packer output is the template: it keeps the symbol names and registration
        c_source = tvm_ffi.get_global_func("runtime.ModulePackImportsToC")(mod, is_system_lib, prefix)
        array = re.search(r"(\w+)\[(\d+)\] = \{", c_source)
        end = c_source.index("};", array.end())
        c_source = (c_source[: array.start()] + f"{array.group(1)}[{len(blob)}] = {{" + ",".join(map(str, blob))
                    + c_source[end:]).replace(f"[{array.group(2)}]", f"[{len(blob)}]")
        path = Path(workspace_dir, f"{prefix}devc.c")
        path.write_text(c_source)
        return str(path)

    return pack


def _compile_cuda_entries(blob: bytes, arch: str) -> bytes:
    """Rewrite each "cuda" module in a packed imports blob from fmt "cuda" (source) to "fatbin".

    Layout (all lengths u64 little-endian): total | import-tree row ptrs | import-tree children |
    entries of (key, payload); "_lib" entries have no payload; a CUDA payload is fmt | fmap | data.
    """
    offset = 8
    for _ in range(2):
        offset += 8 + 8 * _u64(blob, offset)
    parts = [blob[8:offset]]
    while offset < len(blob):
        key, offset = _read_bytes(blob, offset)
        parts.append(_pack_bytes(key))
        if key == b"_lib":
            continue
        payload, offset = _read_bytes(blob, offset)
        if key == b"cuda":
            payload = _compiled_cuda_payload(payload, arch)
        parts.append(_pack_bytes(payload))
    body = b"".join(parts)
    return struct.pack("<Q", len(body)) + body


def _compiled_cuda_payload(payload: bytes, arch: str) -> bytes:
    fmt, offset = _read_bytes(payload, 0)
    if fmt != b"cuda":
        return payload  # already a binary
    # the source is the last field: the u64 at its start equals the number of bytes after it
    data_at = next((p for p in range(offset, len(payload) - 8) if _u64(payload, p) == len(payload) - p - 8), None)
    if data_at is None:
        raise RuntimeError("unexpected CUDA module layout in TVM's packed imports; cannot embed a fatbin")
    function_map = payload[offset:data_at]
    source = payload[data_at + 8:].decode()
    return _pack_bytes(b"fatbin") + function_map + _pack_bytes(compile_cuda(source, arch))


def embedded_device_code(library: Path) -> dict[str, object]:
    """What device code a library embeds: a CUDA fatbin and the SASS archs in it, CUDA or OpenCL source."""
    data = Path(library).read_bytes()
    return {
        "cuda_fatbin": FATBIN_MAGIC in data,
        "cuda_archs": sorted(set(_cuda_elf_archs(data))),
        "cuda_source": b"__CUDACC_RTC__" in data,
        "opencl_source": b"__kernel" in data,
    }


def _cuda_elf_archs(data: bytes):
    """sm_XX of every embedded CUDA ELF (e_machine 190; the SM number sits in e_flags bits 8-15)."""
    for match in re.finditer(re.escape(b"\x7fELF\x02"), data):
        start = match.start()
        if struct.unpack_from("<H", data, start + 18)[0] == 190:
            yield f"sm_{(struct.unpack_from('<I', data, start + 48)[0] >> 8) & 0xFF}"


def _u64(data: bytes, offset: int) -> int:
    return struct.unpack_from("<Q", data, offset)[0]


def _read_bytes(data: bytes, offset: int) -> tuple[bytes, int]:
    size = _u64(data, offset)
    return data[offset + 8: offset + 8 + size], offset + 8 + size


def _pack_bytes(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data
