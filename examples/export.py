"""Export a PyTorch model to ONNX and to a torch.export archive (.pt2), the two inputs edgec reads.

    python -m examples.export resnet18 --out models/     # writes models/resnet18.onnx, .pt2
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

MODELS = ("resnet18", "mobilenetv2", "digits")


def _atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp)` on a temp file next to `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the real suffix last: torch.export.save warns about names not ending in ".pt2".
    tmp = str(path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}"))
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | os.PathLike,
    opset: int = 17,
    input_names: Sequence[str] = ("input",),
    output_names: Sequence[str] = ("output",),
    dynamic_batch: bool = False,
    fold_constants: bool = True,
) -> Path:
    """Export `model` with the TorchScript-based ONNX exporter (the dynamo one needs onnxscript).

    With `dynamic_batch`, dim 0 of every input and output is named "batch" instead of fixed.
    The exporter folds eval-mode BatchNorm into the preceding Conv; `fold_constants=False` keeps
    the BatchNormalization nodes, so an importer's own BN folding gets exercised.
    """
    axes = {n: {0: "batch"} for n in (*input_names, *output_names)} if dynamic_batch else None

    def write(tmp: str) -> None:
        with torch.no_grad():
            torch.onnx.export(
                model, (example_input,), tmp, opset_version=opset, input_names=list(input_names),
                output_names=list(output_names), dynamic_axes=axes, do_constant_folding=fold_constants,
                dynamo=False,
            )

    return _atomic_write(path, write)


def export_pt2(model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike) -> Path:
    """Trace `model` with torch.export and save the ExportedProgram archive to `path`."""
    program = torch.export.export(model, (example_input,))
    return _atomic_write(path, lambda tmp: torch.export.save(program, tmp))


def example_model(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """The eval-mode example `name` (one of MODELS) and a seeded input of its INPUT_SHAPE."""
    from examples import digits_cnn, mobilenetv2, resnet18

    modules = {"resnet18": resnet18, "mobilenetv2": mobilenetv2, "digits": digits_cnn}
    if name not in modules:
        raise ValueError(f"unknown example model {name!r}; choose from: {', '.join(MODELS)}")
    module = modules[name]
    x = torch.rand(module.INPUT_SHAPE, generator=torch.Generator().manual_seed(seed))
    return module.build(seed), x


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: write DIR/<name>.onnx and DIR/<name>.pt2 for one example model."""
    parser = argparse.ArgumentParser(prog="python -m examples.export", description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=MODELS)
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dynamic-batch", action="store_true", help="make the ONNX batch dim symbolic")
    parser.add_argument("--keep-batchnorm", action="store_true", help="do not fold BN into conv in the ONNX")
    args = parser.parse_args(argv)
    model, x = example_model(args.model, args.seed)
    onnx_path = args.out / f"{args.model}.onnx"
    for written in (
        export_onnx(model, x, onnx_path, args.opset, dynamic_batch=args.dynamic_batch,
                    fold_constants=not args.keep_batchnorm),
        export_pt2(model, x, args.out / f"{args.model}.pt2"),
    ):
        print(written)


if __name__ == "__main__":
    main()
