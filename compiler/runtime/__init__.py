"""Running compiled artifacts: in this process on the host CPU (`local`), or with the C++ runner
under qemu-user (`qemu`), as the device would run them."""

from __future__ import annotations

from pathlib import Path
from typing import Union

from compiler.runtime.common import check_inputs, read_input_files, write_outputs
from compiler.runtime.emulated import EmulatedModel
from compiler.runtime.local import LocalModel

Model = Union[LocalModel, EmulatedModel]
DEVICES = {"local": LocalModel, "qemu": EmulatedModel}


def open_model(artifact: Path, device: str = "local") -> Model:
    """Load `artifact` for running on `device` (one of DEVICES)."""
    return DEVICES[device](artifact)


__all__ = ["DEVICES", "EmulatedModel", "LocalModel", "Model", "check_inputs", "open_model", "read_input_files", "write_outputs"]
