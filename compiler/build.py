"""Compile an imported model for a target preset into an artifact directory.

Steps: check the toolchain, open the preset's tuning records (compiler/tuning/database.py), run the pipeline
(compiler/pipeline.py), generate code, link the shared library with the preset's (cross) compiler,
write `manifest.json`, publish the directory atomically.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from compiler import __version__
from compiler.accuracy import AccuracyGuard, guard_quantization
from compiler.artifact import Manifest, atomic_directory, sha256_file, write_manifest
from compiler.devicecode import cuda_fpack_imports, require_nvcc
from compiler.errors import ToolchainError
from compiler.footprint import ACTIVATION_SOURCE, peak_activation_bytes, weights_bytes
from compiler.frontends import ImportedModel
from compiler.pipeline import PipelineConfig, run_pipeline
from targets import Preset

LIBRARY_NAME = "model.so"


@dataclass(frozen=True)
class CompileOptions:
    preset: Preset
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    # With pipeline.quantize: keep the layers in float that push accuracy out of this band
    accuracy_guard: AccuracyGuard | None = None


def check_toolchain(preset: Preset) -> None:
    """Fail early, in one line, when the compiler that links this preset's library is missing."""
    if preset.device == "cuda":
        require_nvcc()
    command = preset.compiler_command()
    if shutil.which(command) is None:
        raise ToolchainError(
            f"the C++ compiler '{command}' that links {preset.name} libraries is not installed; "
            f"install it with: apt-get install {preset.apt_package}"
        )


def compile_model(model: ImportedModel, options: CompileOptions, out_dir: Path) -> Manifest:
    """Compile `model` for `options.preset` and publish the artifact at `out_dir`.

    Kernels the preset's tuning records know get their tuned schedule; the others keep TVM's
    default one, with a warning that names them.
    """
    import tvm
    from tvm.support import cc

    from compiler.tuning.database import open_for_compile

    preset = options.preset
    check_toolchain(preset)
    target = preset.tvm_target()
    pipeline, guard_report = guard_quantization(model.mod, options.pipeline.for_preset(preset), options.accuracy_guard)
    with open_for_compile(pipeline.tuning_log, preset, target) as records:
        result = run_pipeline(model.mod, target, pipeline, records)
    if guard_report is not None:
        result.reports["quantize"]["accuracy_guard"] = guard_report
    schedules = result.schedules()
    _warn_naive(schedules, preset)
    executable = tvm.relax.build(result.mod, target, relax_pipeline=None)
    with atomic_directory(out_dir) as staging:
        fcompile = cc.cross_compiler(preset.cross_compiler) if preset.cross_compiler else None
        fpack_imports = cuda_fpack_imports(preset.target["arch"]) if preset.device == "cuda" else None
        executable.export_library(str(staging / LIBRARY_NAME), fcompile=fcompile, fpack_imports=fpack_imports)
        files = {p.name: sha256_file(p) for p in sorted(staging.iterdir())}
        manifest = Manifest(
            library=LIBRARY_NAME,
            inputs=model.inputs,
            outputs=model.outputs,
            target={**preset.to_json(), "tvm_target": json.loads(str(target)), "device_code": _device_code(preset)},
            model=model.source.to_json(),
            passes=tuple(result.passes_json()),
            versions=_versions(),
            files=files,
            tuning=result.tuning.to_json() if result.tuning is not None else None,
            kernels=result.kernels or None,
            schedules=schedules or None,
            memory=_memory(result.mod),
        )
        write_manifest(staging, manifest)
    return manifest


def _memory(mod) -> dict[str, Any]:
    """The manifest's `memory`: weight bytes the library holds and TVM's planned activation bytes
    (device memory for GPU targets), read from the module `tvm.relax.build` compiles."""
    return {"weights_bytes": weights_bytes(mod), "peak_activation_bytes": peak_activation_bytes(mod),
            "activation_source": ACTIVATION_SOURCE}


def _warn_naive(schedules: dict[str, str], preset: Preset) -> None:
    """A CPU kernel left as TVM's naive loops runs 30-70x slower than a scheduled one: say which."""
    naive = [name for name, source in schedules.items() if source == "naive"]
    if naive and preset.device == "cpu":
        logging.getLogger("edgec.schedule").warning(
            "%d of %d kernels have no schedule and run as TVM's naive loops (%s); tune them with: "
            "edgec tune MODEL --target %s", len(naive), len(schedules), ", ".join(naive), preset.name)


def _device_code(preset: Preset) -> dict[str, str]:
    """How the kernels are shipped: host code only, an nvcc fatbin, or OpenCL C for the device driver."""
    if preset.device == "cuda":
        return {"format": "fatbin", "arch": preset.target["arch"], "compiler": "nvcc", "contains": "SASS and PTX"}
    if preset.device == "opencl":
        return {"format": "opencl-source", "compiler": "the device's OpenCL driver, when the library is loaded"}
    return {"format": "host-code", "compiler": preset.compiler_command()}


def _versions() -> dict[str, str]:
    return {
        "edgec": __version__,
        "tvm": metadata.version("apache-tvm"),
        "tvm_ffi": metadata.version("apache-tvm-ffi"),
    }
