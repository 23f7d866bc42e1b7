"""What every way of running an artifact shares: verification before loading, input checks, output files.

The manifest's sha256 of every file is checked before a library is loaded, and inputs are checked
against the manifest's names, shapes and dtypes before anything runs.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from compiler.artifact import Manifest, read_manifest, verify_files, write_bytes_atomic
from compiler.errors import ArtifactError, InputError
from compiler.specs import TensorSpec
from targets import Preset


def open_verified(artifact: Path, mode: str, alternative: str) -> tuple[Manifest, Preset]:
    """The manifest and preset of `artifact`, once its files check out and its code runs here in `mode`."""
    manifest = read_manifest(artifact)
    preset = Preset.from_json(manifest.target)
    execution = preset.execution_here()
    if execution.mode != mode:
        what = f"artifact '{artifact}' is for {preset.name} ({preset.triple}, {preset.device})"
        if execution.mode == "compile-only":
            raise ArtifactError(f"{what} and cannot run here (compile-only: {execution.reason})")
        raise ArtifactError(f"{what}, which runs here {execution.mode} ({execution.reason}): use {alternative}")
    verify_files(artifact, manifest)
    return manifest, preset


def check_inputs(specs: Sequence[TensorSpec], inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Order `inputs` as the model expects them, rejecting missing, extra or mis-shaped arrays."""
    expected = [spec.name for spec in specs]
    extra = sorted(set(inputs) - set(expected))
    if extra:
        raise InputError(f"unknown input {', '.join(extra)}; the model's inputs are: {', '.join(expected)}")
    ordered = []
    for spec in specs:
        if spec.name not in inputs:
            raise InputError(f"missing input '{spec.name}' ({_describe(spec.shape, spec.dtype)}); pass --input {spec.name}=FILE.npy")
        array = np.asarray(inputs[spec.name])
        if tuple(array.shape) != spec.shape or str(array.dtype) != spec.dtype:
            raise InputError(
                f"input '{spec.name}' expects {_describe(spec.shape, spec.dtype)}, "
                f"given {_describe(array.shape, str(array.dtype))}"
            )
        ordered.append(np.ascontiguousarray(array))
    return ordered


def read_input_files(specs: Sequence[TensorSpec], assignments: Sequence[str], npz: Path | None = None
                     ) -> dict[str, np.ndarray]:
    """Read `NAME=FILE.npy` assignments (a bare `FILE.npy` is allowed for a single-input model) and
    the arrays of an `.npz` keyed by input name (TVMC's --inputs); an input given twice is an error."""
    arrays = _load_npz(Path(npz)) if npz is not None else {}
    for assignment in assignments:
        name, sep, file = assignment.partition("=")
        if not sep:
            if len(specs) != 1:
                names = ", ".join(s.name for s in specs)
                raise InputError(f"--input '{assignment}' has no name; this model has several inputs ({names}): use NAME=FILE.npy")
            name, file = specs[0].name, assignment
        if name in arrays:
            raise InputError(f"input '{name}' is given twice (--input {assignment} and in {npz or 'another --input'}); give it once")
        arrays[name] = _load_npy(Path(file))
    return arrays


def write_outputs(path: Path, outputs: Mapping[str, np.ndarray]) -> None:
    """Write outputs as an `.npz` keyed by output name, through a temporary file and a rename."""
    buffer = io.BytesIO()
    np.savez(buffer, **outputs)
    write_bytes_atomic(Path(path).absolute(), buffer.getvalue())


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"input file '{path}' does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise InputError(f"input file '{path}' is not a .npy array ({err}); save inputs with numpy.save") from err


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise InputError(f"inputs file '{path}' does not exist")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array")
        with archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError) as err:
        raise InputError(f"inputs file '{path}' is not an .npz archive ({err}); save inputs with "
                         "numpy.savez(path, NAME=array, ...)") from err


def _describe(shape: Sequence[int], dtype: str) -> str:
    return f"shape {'x'.join(map(str, shape)) or 'scalar'} {dtype}"


