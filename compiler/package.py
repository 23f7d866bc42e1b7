"""Firmware bundles: everything an image build needs to ship one compiled model, nothing from this machine.

The bundle is a `.tar.gz` whose tree is laid out as install paths (`usr/bin`, `usr/lib`, ...), so that a
Yocto recipe or a Buildroot package can copy `usr/` into the image's root file system:

    <name>/README.md              how to integrate it
    <name>/SHA256SUMS             sha256 of every other file
    <name>/edgec.cmake            CMake fragment: imported targets + install rules
    <name>/usr/bin/edgec-runner   the C++ runner, built for the target (RUNPATH $ORIGIN/../lib)
    <name>/usr/lib/libtvm_runtime.so, libtvm_ffi.so      TVM's runtime for the target architecture
    <name>/usr/lib/edgec/<name>/model.so, manifest.json  the model
    <name>/usr/include/edgec/<name>.h                    inputs/outputs as C constants

Packaging is reproducible: entries are sorted, owners and times are zeroed, gzip carries no time
stamp, so packaging the same artifact twice gives byte-identical bundles.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from compiler.artifact import MANIFEST_NAME, Manifest, read_manifest, verify_files, write_bytes_atomic
from compiler.errors import ArtifactError
from compiler.specs import TensorSpec
from compiler.runtime.toolchain import build_runner, runtime_libraries
from targets import Preset

# DLPack type codes, so that firmware code can build DLTensors from the header alone
_DLPACK_TYPES = {"int": 0, "uint": 1, "float": 2, "bfloat": 4, "bool": 6}


@dataclass(frozen=True)
class BundleFile:
    path: str  # inside the bundle, below its top directory
    data: bytes
    executable: bool = False


def package_artifact(artifact: Path, bundle: Path, name: str | None = None) -> list[BundleFile]:
    """Write the firmware bundle of `artifact` to `bundle` (atomically); returns what it holds."""
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    verify_files(artifact, manifest)
    preset = Preset.from_json(manifest.target)
    if preset.runtime_wheel_platform is None or preset.device != "cpu":
        raise ArtifactError(
            f"artifact '{artifact}' is for {preset.name}, for which edgec has no runtime to bundle "
            f"(TVM publishes CPU runtimes for x86_64 and aarch64 only); package an x86-64 or aarch64 CPU build"
        )
    name = name or _bundle_name(bundle)
    files = _bundle_files(artifact, manifest, preset, name)
    write_bytes_atomic(Path(bundle).absolute(), _tar_gz(name, files))
    return files


def _bundle_files(artifact: Path, manifest: Manifest, preset: Preset, name: str) -> list[BundleFile]:
    libs = runtime_libraries(preset.elf_machine)
    model_dir = f"usr/lib/edgec/{name}"
    files = [
        BundleFile(f"{model_dir}/{manifest.library}", (artifact / manifest.library).read_bytes()),
        BundleFile(f"{model_dir}/{MANIFEST_NAME}", (artifact / MANIFEST_NAME).read_bytes()),
        BundleFile("usr/lib/libtvm_runtime.so", libs.tvm_runtime.read_bytes()),
        BundleFile("usr/lib/libtvm_ffi.so", libs.tvm_ffi.read_bytes()),
        BundleFile("usr/bin/edgec-runner", build_runner(preset.elf_machine).read_bytes(), executable=True),
        BundleFile(f"usr/include/edgec/{name}.h", c_header(name, manifest).encode()),
        BundleFile("edgec.cmake", cmake_fragment(name, manifest).encode()),
        BundleFile("README.md", bundle_readme(name, manifest, preset).encode()),
    ]
    sums = "".join(f"{hashlib.sha256(f.data).hexdigest()}  {f.path}\n" for f in sorted(files, key=lambda f: f.path))
    return [*files, BundleFile("SHA256SUMS", sums.encode())]


def _tar_gz(name: str, files: list[BundleFile]) -> bytes:
    members = sorted(files, key=lambda f: f.path)
    # every parent directory gets its own entry; sorted, so that a parent precedes its children
    directories = sorted({str(p) for f in members for p in Path(name, f.path).parents if str(p) != "."})
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in directories:
            tar.addfile(_entry(directory, tarfile.DIRTYPE, 0o755))
        for file in members:
            info = _entry(f"{name}/{file.path}", tarfile.REGTYPE, 0o755 if file.executable else 0o644)
            info.size = len(file.data)
            tar.addfile(info, io.BytesIO(file.data))
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0) as stream:
        stream.write(raw.getvalue())
    return compressed.getvalue()


def _entry(path: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.type, info.mode, info.mtime = kind, mode, 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _bundle_name(bundle: Path) -> str:
    stem = Path(bundle).name.removesuffix(".gz").removesuffix(".tar").removesuffix(".tgz")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "model"


# --------------------------------------------------------------------------------------- generated text


def c_header(name: str, manifest: Manifest) -> str:
    """C constants describing the model's inputs and outputs (names, shapes, dtypes, DLPack codes)."""
    symbol = _c_identifier(name)
    guard = f"EDGEC_{symbol.upper()}_H"
    lines = [
        f"/* {name}: generated by edgec {manifest.versions['edgec']} for {manifest.target['name']} "
        f"({manifest.target['triple']}). Do not edit. */",
        f"#ifndef {guard}", f"#define {guard}", "", "#include <stdint.h>", "",
        "#ifndef EDGEC_TENSOR_INFO_DEFINED", "#define EDGEC_TENSOR_INFO_DEFINED",
        "typedef struct {",
        "  const char *name;",
        "  int32_t ndim;",
        "  const int64_t *shape;",
        "  const char *dtype;      /* numpy name, e.g. \"float32\" */",
        "  uint8_t dl_type_code;   /* DLDataTypeCode: 0 int, 1 uint, 2 float, 4 bfloat, 6 bool */",
        "  uint8_t dl_type_bits;",
        "  uint64_t size_bytes;",
        "} edgec_tensor_info;",
        "#endif", "",
        f'#define EDGEC_{symbol.upper()}_LIBRARY "/usr/lib/edgec/{name}/{manifest.library}"',
        f"#define EDGEC_{symbol.upper()}_NUM_INPUTS {len(manifest.inputs)}",
        f"#define EDGEC_{symbol.upper()}_NUM_OUTPUTS {len(manifest.outputs)}", "",
        *_temperature_lines(symbol, manifest), "",
    ]
    for role, specs in (("input", manifest.inputs), ("output", manifest.outputs)):
        for index, spec in enumerate(specs):
            dims = ", ".join(map(str, spec.shape)) or "0"
            lines.append(f"static const int64_t edgec_{symbol}_{role}{index}_shape[] = {{{dims}}};")
        entries = ",\n".join(f"  {_tensor_info(symbol, role, i, spec)}" for i, spec in enumerate(specs))
        lines += [f"static const edgec_tensor_info edgec_{symbol}_{role}s[] = {{", entries, "};", ""]
    lines += [f"#endif /* {guard} */", ""]
    return "\n".join(lines)


def _temperature_lines(symbol: str, manifest: Manifest) -> list[str]:
    """The softmax temperature of output 0 (compiler/calibration.py), 1.0f when none was fitted."""
    define = f"#define EDGEC_{symbol.upper()}_SOFTMAX_TEMPERATURE"
    if manifest.calibration is None:
        return ["/* Uncalibrated: no softmax temperature was fitted (edgec evaluate --fit-temperature); 1.0f leaves",
                " * softmax(output0) as it is. */", f"{define} 1.0f"]
    calibration = manifest.calibration
    return [
        f"/* Softmax temperature T of output 0 ('{str(calibration['output']).replace('*/', '* /')}'), fitted on {calibration['samples']} samples: "
        f"expected calibration error {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f}.",
        " * Calibrated probabilities: p[i] = exp(z[i] / T) / sum_j exp(z[j] / T) over the last axis (subtract",
        " * max_j z[j] / T first), z the output's scores; an output that already holds probabilities uses",
        " * z = log(p). The runner applies it with --calibrated T. */",
        f"{define} {calibration['temperature']:.6f}f",
    ]


def _tensor_info(symbol: str, role: str, index: int, spec: TensorSpec) -> str:
    base, bits = re.fullmatch(r"([a-z]+?)(\d+)", spec.dtype).groups() if spec.dtype != "bool" else ("bool", "8")
    size = int(bits) // 8
    for dim in spec.shape:
        size *= dim
    return (f'{{"{spec.name}", {len(spec.shape)}, edgec_{symbol}_{role}{index}_shape, "{spec.dtype}", '
            f"{_DLPACK_TYPES[base]}, {bits}, {size}u}}")


def cmake_fragment(name: str, manifest: Manifest) -> str:
    """Imported targets for the runtime and the model header, plus install rules into the image."""
    symbol = _c_identifier(name)
    return f"""# edgec bundle '{name}' for {manifest.target['name']} ({manifest.target['triple']}).
# include() this file from the firmware's CMakeLists.txt; link `edgec::{symbol}` to get the header and
# the TVM runtime, and the install rules put everything at the paths the runner and README expect.
include_guard(GLOBAL)
include(GNUInstallDirs)
set(EDGEC_{symbol.upper()}_ROOT "${{CMAKE_CURRENT_LIST_DIR}}/usr")

if(NOT TARGET edgec::tvm_ffi)
  add_library(edgec::tvm_ffi SHARED IMPORTED)
  set_target_properties(edgec::tvm_ffi PROPERTIES IMPORTED_LOCATION "${{EDGEC_{symbol.upper()}_ROOT}}/lib/libtvm_ffi.so")
  add_library(edgec::tvm_runtime SHARED IMPORTED)
  set_target_properties(edgec::tvm_runtime PROPERTIES
    IMPORTED_LOCATION "${{EDGEC_{symbol.upper()}_ROOT}}/lib/libtvm_runtime.so"
    INTERFACE_LINK_LIBRARIES edgec::tvm_ffi)
  install(FILES "${{EDGEC_{symbol.upper()}_ROOT}}/lib/libtvm_runtime.so" "${{EDGEC_{symbol.upper()}_ROOT}}/lib/libtvm_ffi.so"
          DESTINATION ${{CMAKE_INSTALL_LIBDIR}})
  install(PROGRAMS "${{EDGEC_{symbol.upper()}_ROOT}}/bin/edgec-runner" DESTINATION ${{CMAKE_INSTALL_BINDIR}})
endif()

add_library(edgec::{symbol} INTERFACE IMPORTED)
set_target_properties(edgec::{symbol} PROPERTIES
  INTERFACE_INCLUDE_DIRECTORIES "${{EDGEC_{symbol.upper()}_ROOT}}/include"
  INTERFACE_LINK_LIBRARIES edgec::tvm_runtime)
install(FILES "${{EDGEC_{symbol.upper()}_ROOT}}/lib/edgec/{name}/{manifest.library}"
              "${{EDGEC_{symbol.upper()}_ROOT}}/lib/edgec/{name}/{MANIFEST_NAME}"
        DESTINATION ${{CMAKE_INSTALL_LIBDIR}}/edgec/{name})
install(FILES "${{EDGEC_{symbol.upper()}_ROOT}}/include/edgec/{name}.h" DESTINATION ${{CMAKE_INSTALL_INCLUDEDIR}}/edgec)
"""


def bundle_readme(name: str, manifest: Manifest, preset: Preset) -> str:
    inputs = "\n".join(f"- input `{s.name}`: {'x'.join(map(str, s.shape))} {s.dtype}" for s in manifest.inputs)
    outputs = "\n".join(f"- output `{s.name}`: {'x'.join(map(str, s.shape))} {s.dtype}" for s in manifest.outputs)
    inputs_args = " ".join(f"--input {s.name}.npy" for s in manifest.inputs)
    return f"""# {name}: edgec model bundle for {preset.name} ({preset.triple})

{preset.description}. Compiled by edgec {manifest.versions['edgec']} with TVM {manifest.versions['tvm']}.

{inputs}
{outputs}

## Contents (install paths)
- `usr/bin/edgec-runner`: runs the model from .npy files and benchmarks it, and serves TVM's RPC
  protocol for remote tuning and benchmarks (`rpc-server`, below) (RUNPATH `$ORIGIN/../lib`)
- `usr/lib/libtvm_runtime.so`, `usr/lib/libtvm_ffi.so`: TVM's runtime for {preset.elf_machine}
- `usr/lib/edgec/{name}/{manifest.library}` and `manifest.json`: the model and its description
- `usr/include/edgec/{name}.h`: the inputs and outputs as C constants, for firmware code
- `edgec.cmake`: CMake imported targets and install rules; `SHA256SUMS`: checksums of all files

The image must provide glibc >= 2.27 and libstdc++ (GCC >= 7); nothing else.

## Buildroot
In a package's `<PKG>_INSTALL_TARGET_CMDS`: `cp -a $(@D)/usr/. $(TARGET_DIR)/usr/`

## Yocto
In a recipe: `do_install() {{ cp -a ${{S}}/usr/. ${{D}}${{prefix}}/ }}` with `FILES:${{PN}} += "${{libdir}}/edgec"`
and `INSANE_SKIP:${{PN}} += "dev-so already-stripped"` (the .so files are loaded by name, not symlinks).

## CMake
`include(path/to/{name}/edgec.cmake)` then `target_link_libraries(app PRIVATE edgec::{_c_identifier(name)})`.

## Check on the device
    sha256sum -c SHA256SUMS
    /usr/bin/edgec-runner /usr/lib/edgec/{name}/{manifest.library} {inputs_args} --output-dir out/
    /usr/bin/edgec-runner /usr/lib/edgec/{name}/{manifest.library} {inputs_args} --bench --warmup 10 --runs 100

## Tune and benchmark over RPC (no Python on the device)
On the development machine start a tracker (`python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190`);
on the device, `/usr/bin/edgec-runner rpc-server --tracker HOST:9190 --key {preset.name}` registers
there, serves each session in a child process, and registers again after it. Then, on the development
machine: `edgec tune MODEL --target {preset.name} --rpc-tracker HOST:9190 --rpc-key {preset.name}` (kernels
measured on the device) and `edgec bench ARTIFACT --rpc-tracker HOST:9190 --rpc-key {preset.name}`.
As a systemd service, `/etc/systemd/system/edgec-rpc-server.service` (then `systemctl enable --now
edgec-rpc-server`):

    [Unit]
    Description=edgec RPC server for remote tuning and benchmarks
    Wants=network-online.target
    After=network-online.target

    [Service]
    ExecStart=/usr/bin/edgec-runner rpc-server --tracker HOST:9190 --key {preset.name}
    Restart=always
    RestartSec=2

    [Install]
    WantedBy=multi-user.target

With BusyBox init instead, in an init script: `start-stop-daemon -S -b -x /usr/bin/edgec-runner -- rpc-server
--tracker HOST:9190 --key {preset.name}`.
"""


def _c_identifier(name: str) -> str:
    identifier = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return identifier if not identifier[0].isdigit() else f"m_{identifier}"

