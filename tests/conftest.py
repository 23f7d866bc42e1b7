"""Session fixtures: the example models, exported once to ONNX and .pt2, and compiled artifacts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


@dataclass(frozen=True)
class ExampleFiles:
    name: str
    model: object  # torch.nn.Module in eval mode
    input: np.ndarray
    onnx: Path
    pt2: Path

    def torch_output(self) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model(torch.from_numpy(self.input)).numpy()

    def onnxruntime_output(self) -> np.ndarray:
        import onnxruntime as ort

        session = ort.InferenceSession(str(self.onnx), providers=["CPUExecutionProvider"])
        return session.run(None, {"input": self.input})[0]


@pytest.fixture(scope="session")
def example(tmp_path_factory) -> Callable[[str], ExampleFiles]:
    """`example("resnet18")`: the model exported to ONNX and .pt2 (each example once per session)."""
    from examples.export import example_model, export_onnx, export_pt2

    directory = tmp_path_factory.mktemp("examples")
    cache: dict[str, ExampleFiles] = {}

    def get(name: str) -> ExampleFiles:
        if name not in cache:
            model, x = example_model(name)
            cache[name] = ExampleFiles(
                name, model, x.numpy(),
                export_onnx(model, x, directory / f"{name}.onnx"),
                export_pt2(model, x, directory / f"{name}.pt2"),
            )
        return cache[name]

    return get


@pytest.fixture(scope="session")
def compiled(example, tmp_path_factory) -> Callable[[str, str, str], Path]:
    """`compiled("digits", "onnx", "host")`: an artifact directory, compiled once per session."""
    from compiler.build import CompileOptions, compile_model
    from compiler.frontends import load_model
    from targets import resolve_target

    directory = tmp_path_factory.mktemp("artifacts")
    cache: dict[tuple[str, str, str], Path] = {}

    def get(name: str, fmt: str, target: str) -> Path:
        key = (name, fmt, target)
        if key not in cache:
            files = example(name)
            out = directory / f"{name}-{fmt}-{target}"
            compile_model(load_model(getattr(files, fmt)), CompileOptions(resolve_target(target)), out)
            cache[key] = out
        return cache[key]

    return get


@pytest.fixture(scope="session", autouse=True)
def own_tuning_database(tmp_path_factory):
    """No test reads or writes the user's own tuning records: $EDGEC_TUNING_DIR is an empty directory."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEC_TUNING_DIR", str(tmp_path_factory.mktemp("user_tuning_logs")))
        yield
