"""The `edgec` command: parses arguments, builds configs and calls the library.

User mistakes arrive as `EdgecError` and are printed as one line with exit code 2; any other
exception is a bug in edgec and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from compiler.errors import EdgecError

app = typer.Typer(
    name="edgec",
    help="Compile PyTorch and ONNX models into fast libraries for a specific edge device.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
console = Console(stderr=True, highlight=False)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except EdgecError as err:
        console.print(f"[bold red]error:[/] {err}", soft_wrap=True)
        raise typer.Exit(2) from None


@app.command("compile")
def compile_command(
    model: Annotated[Path, typer.Argument(help="Model file: .onnx or .pt2 (torch.export.save).")],
    target: Annotated[str, typer.Option("--target", "-t", help="Preset name (see `edgec targets`), a triple, or a TVM target JSON dict.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Artifact directory to write (replaced atomically).")],
    input_shape: Annotated[Optional[list[str]], typer.Option("--input-shape", help="NAME=1x3x224x224 for inputs with symbolic dims; repeatable.")] = None,
    dump_ir: Annotated[Optional[Path], typer.Option("--dump-ir", help="Write the IR after each pipeline phase into this directory.")] = None,
) -> None:
    """Compile MODEL for a target into an artifact directory (library + manifest.json)."""
    from compiler.build import CompileOptions, check_toolchain, compile_model
    from compiler.frontends import load_model, parse_input_shape
    from compiler.pipeline import PipelineConfig
    from targets import resolve_target

    with user_errors():
        preset = resolve_target(target)
        check_toolchain(preset)
        shapes = dict(parse_input_shape(text) for text in input_shape or [])
        with console.status(f"importing {model.name}"):
            imported = load_model(model, shapes)
        options = CompileOptions(preset, PipelineConfig(dump_ir=dump_ir))
        with console.status(f"compiling for {preset.name}"):
            manifest = compile_model(imported, options, output)
    execution = manifest.target["execution"]
    typer.echo(f"compiled {model.name} for {preset.name} -> {output}/{manifest.library} ({execution['mode']}: {execution['reason']})")


@app.command("run")
def run_command(
    artifact: Annotated[Path, typer.Argument(help="Artifact directory written by `edgec compile`.")],
    input: Annotated[Optional[list[str]], typer.Option("--input", "-i", help="NAME=FILE.npy (or FILE.npy for a single-input model); repeatable.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write outputs to this .npz, keyed by output name.")] = None,
) -> None:
    """Run an artifact on this machine's CPU with inputs from .npy files."""
    from compiler.runtime import LocalModel, read_input_files, write_outputs

    with user_errors():
        model = LocalModel(artifact)
        outputs = model.run(read_input_files(model.manifest.inputs, input or []))
        if output is not None:
            write_outputs(output, outputs)
    for name, value in outputs.items():
        typer.echo(f"{name}: shape {'x'.join(map(str, value.shape))} {value.dtype}")
    if output is not None:
        typer.echo(f"wrote {output}")


@app.command("targets")
def targets_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the registry as JSON.")] = False,
) -> None:
    """List target presets and whether each can run on this machine."""
    from targets import list_presets

    presets = list_presets()
    if as_json:
        typer.echo(json.dumps([p.to_json() for p in presets], indent=2))
        return
    for preset in presets:
        execution = preset.execution_here()
        typer.echo(f"{preset.name:22} {preset.triple:22} {execution.mode:13} {preset.description}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
