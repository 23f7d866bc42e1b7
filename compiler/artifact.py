"""The compiled artifact on disk: a directory with the model library and `manifest.json`.

Directories are published atomically (built under a temporary name beside the destination, then
renamed), and every file's sha256 is recorded so that a run can refuse a modified or partial artifact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compiler.errors import ArtifactError
from compiler.specs import TensorSpec

MANIFEST_NAME = "manifest.json"
ARTIFACT_FORMAT = "edgec-artifact/1"


@dataclass(frozen=True)
class Manifest:
    """What an artifact holds and how it was made; serialised as `manifest.json`."""

    library: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    target: Mapping[str, Any]  # the preset's fields, its TVM target and where it can run
    model: Mapping[str, Any]
    passes: tuple[Mapping[str, Any], ...]
    versions: Mapping[str, str]
    files: Mapping[str, str]  # file name -> sha256, every file but the manifest itself
    tuning: Mapping[str, Any] | None = None  # what the tuning records covered; None: compiled without any
    kernels: Mapping[str, int] | None = None  # kernels per inference before and after operator fusion
    # kernel -> where its schedule came from: "tuned (<database>)", "edgec-default", "tvm-default", "naive"
    schedules: Mapping[str, str] | None = None
    # weights_bytes (the constants the library holds) and peak_activation_bytes (TVM's memory plan)
    memory: Mapping[str, Any] | None = None
    # softmax temperature of the first output fitted on evaluation data (`edgec optimize`), with the
    # expected calibration error before and after; `run --calibrated` and the runner apply it
    calibration: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": ARTIFACT_FORMAT,
            "library": self.library,
            "inputs": [spec.to_json() for spec in self.inputs],
            "outputs": [spec.to_json() for spec in self.outputs],
            "target": dict(self.target),
            "model": dict(self.model),
            "passes": [dict(p) for p in self.passes],
            "versions": dict(self.versions),
            "files": dict(self.files),
            "tuning": None if self.tuning is None else dict(self.tuning),
            "kernels": None if self.kernels is None else dict(self.kernels),
            "schedules": None if self.schedules is None else dict(self.schedules),
            "memory": None if self.memory is None else dict(self.memory),
            "calibration": None if self.calibration is None else dict(self.calibration),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        return cls(
            library=data["library"],
            inputs=tuple(TensorSpec.from_json(s) for s in data["inputs"]),
            outputs=tuple(TensorSpec.from_json(s) for s in data["outputs"]),
            target=data["target"],
            model=data["model"],
            passes=tuple(data["passes"]),
            versions=data["versions"],
            files=data["files"],
            tuning=data.get("tuning"),
            kernels=data.get("kernels"),
            schedules=data.get("schedules"),
            memory=data.get("memory"),
            calibration=data.get("calibration"),
        )


def read_manifest(artifact: Path) -> Manifest:
    """Load `artifact/manifest.json`, failing with one line if it is absent or not an edgec manifest."""
    path = Path(artifact) / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"'{artifact}' is not an edgec artifact: {MANIFEST_NAME} is missing; compile with `edgec compile`")
    try:
        data = json.loads(path.read_text())
        if data.get("format") != ARTIFACT_FORMAT:
            raise ArtifactError(f"'{path}' has format {data.get('format')!r}; this edgec reads {ARTIFACT_FORMAT}: recompile")
        return Manifest.from_json(data)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"'{path}' is corrupt ({type(err).__name__}: {err}); recompile the artifact") from err


def verify_files(artifact: Path, manifest: Manifest) -> None:
    """Check every recorded file against its sha256 before anything is loaded from it."""
    for name, expected in manifest.files.items():
        path = Path(artifact) / name
        if not path.is_file():
            raise ArtifactError(f"artifact file '{path}' is missing; recompile the artifact")
        if sha256_file(path) != expected:
            raise ArtifactError(f"artifact file '{path}' does not match its sha256 in {MANIFEST_NAME}; it was modified or truncated: recompile")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, manifest: Manifest) -> None:
    write_bytes_atomic(Path(directory) / MANIFEST_NAME, (json.dumps(manifest.to_json(), indent=2) + "\n").encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same directory and rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces `final` only if the block succeeds.

    An existing `final` is replaced only when it is an edgec artifact (holds a manifest), so that
    `-o` pointed at a directory of other files never deletes them.
    """
    final = Path(final)
    if final.exists() and not (final / MANIFEST_NAME).is_file():
        if not final.is_dir() or any(final.iterdir()):
            raise ArtifactError(f"output '{final}' exists and is not an edgec artifact; choose another -o or remove it")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield staging
        _replace_directory(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace_directory(staging: Path, final: Path) -> None:
    if not final.exists():
        os.rename(staging, final)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    os.rename(final, retired / "artifact")
    os.rename(staging, final)
    shutil.rmtree(retired, ignore_errors=True)
