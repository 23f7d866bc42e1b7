"""Running compiled artifacts, behind one interface: `open_model(artifact, device)` gives a model
that runs (`run`), is timed (`bench`) and is closed (`close`, or a `with` block) the same way on
every device of `DEVICES`: in this process on the host CPU (`local`), with the C++ runner under
qemu-user as the device would run it (`qemu`), or on a TVM RPC server (`rpc`, which `remote` names).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from compiler.artifact import Manifest
from compiler.errors import EdgecError, RemoteError
from compiler.runtime.common import check_inputs, read_input_files, write_outputs
from compiler.runtime.emulated import EmulatedModel
from compiler.runtime.local import LocalModel
from compiler.runtime.rpc import RemoteModel, RemoteSpec, parse_host_port
from compiler.specs import DEVICES, BenchSpec, LatencyStats


class Model(Protocol):
    """What every device's model does (LocalModel, EmulatedModel, RemoteModel)."""

    manifest: Manifest

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; outputs keyed by the manifest's output names."""

    def bench(self, inputs: Mapping[str, np.ndarray], spec: BenchSpec) -> LatencyStats:
        """Latency of single runs after `spec.warmup` untimed ones."""

    def close(self) -> None:
        """Release the device (an RPC session: the server serves one client at a time)."""

    def __enter__(self) -> Model: ...

    def __exit__(self, *exc: object) -> None: ...


def open_model(artifact: Path, device: str = "local", remote: RemoteSpec | None = None) -> Model:
    """Load `artifact` for running on `device` (one of DEVICES); `remote` names the server for "rpc"."""
    if device not in DEVICES:
        raise EdgecError(f"unknown device '{device}'; choose from: {', '.join(DEVICES)}")
    if device == "rpc":
        if remote is None:
            raise RemoteError("--device rpc needs --rpc-tracker HOST:PORT --rpc-key KEY, or --rpc HOST:PORT")
        return RemoteModel(artifact, remote)
    return (LocalModel if device == "local" else EmulatedModel)(artifact)


__all__ = ["DEVICES", "EmulatedModel", "LocalModel", "Model", "RemoteModel", "RemoteSpec", "check_inputs", "open_model",
           "parse_host_port", "read_input_files", "write_outputs"]
