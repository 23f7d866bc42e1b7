"""The `edgec` command: parses arguments, builds configs and calls the library.

User mistakes arrive as `EdgecError` and are printed as one line with exit code 2; any other
exception is a bug in edgec and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.text import Text

from compiler.errors import EdgecError

app = typer.Typer(
    name="edgec",
    help="Compile PyTorch and ONNX models into fast libraries for a specific edge device.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
console = Console(stderr=True, highlight=False)


class Device(str, enum.Enum):
    """Where `run` and `bench` execute an artifact (compiler.bench.DEVICES)."""

    local = "local"
    qemu = "qemu"
    rpc = "rpc"


DeviceOption = Annotated[Device, typer.Option("--device", "-d", help="local: this CPU, in this process; qemu: the C++ runner under qemu-user (aarch64 artifacts); rpc: a TVM RPC server, through a tracker or directly.")]
RpcTrackerOption = Annotated[Optional[str], typer.Option("--rpc-tracker", help="HOST:PORT of the RPC tracker (with --rpc-key).")]
RpcKeyOption = Annotated[Optional[str], typer.Option("--rpc-key", help="Device key the RPC servers registered with at the tracker.")]
RpcOption = Annotated[Optional[str], typer.Option("--rpc", help="HOST:PORT of one RPC server, without a tracker.")]
TimeoutOption = Annotated[float, typer.Option("--timeout", help="Seconds to wait for the tracker, a free device and its session.")]
InputShapeOption = Annotated[Optional[list[str]], typer.Option("--input-shape", help="NAME=1x3x224x224 for inputs with symbolic dims; repeatable.")]
TuningLogOption = Annotated[Path, typer.Option("--tuning-log", help="Root of the tuning databases, one per preset in DIR/<preset>/ (or a database directory itself); relative to the working directory.")]


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """EdgecError -> one `error:` line and exit code 2; edgec's warnings -> one `warning:` line each."""
    handler = _ConsoleWarnings(logging.WARNING)
    logger = logging.getLogger("edgec")
    logger.addHandler(handler)
    try:
        yield
    except EdgecError as err:
        console.print(f"[bold red]error:[/] {err}", soft_wrap=True)
        raise typer.Exit(2) from None
    finally:
        logger.removeHandler(handler)


class _ConsoleWarnings(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        console.print(Text.assemble(("warning: ", "yellow"), record.getMessage()), soft_wrap=True)


@app.command("compile")
def compile_command(
    model: Annotated[Path, typer.Argument(help="Model file: .onnx or .pt2 (torch.export.save).")],
    target: Annotated[str, typer.Option("--target", "-t", help="Preset name (see `edgec targets`), a triple, or a TVM target JSON dict.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Artifact directory to write (replaced atomically).")],
    input_shape: InputShapeOption = None,
    dump_ir: Annotated[Optional[Path], typer.Option("--dump-ir", help="Write the IR after each pipeline phase into this directory.")] = None,
    tuning_log: TuningLogOption = Path("tuning_logs"),
    untuned: Annotated[bool, typer.Option("--untuned", help="Ignore tuning records: every kernel gets TVM's default schedule.")] = False,
) -> None:
    """Compile MODEL for a target into an artifact directory (library + manifest.json).

    Kernels with records in the preset's tuning database (see `edgec tune`) get their tuned schedule.
    """
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
        options = CompileOptions(preset, PipelineConfig(dump_ir=dump_ir, tuning_log=None if untuned else tuning_log))
        with console.status(f"compiling for {preset.name}"):
            manifest = compile_model(imported, options, output)
    execution = manifest.target["execution"]
    typer.echo(f"compiled {model.name} for {preset.name} -> {output}/{manifest.library} ({execution['mode']}: {execution['reason']})")
    if manifest.tuning is not None:
        tuning = manifest.tuning
        typer.echo(f"tuning: {tuning['tuned']} of {tuning['tasks']} kernels tuned (records: {tuning['database']})")


@app.command("tune")
def tune_command(
    model: Annotated[Path, typer.Argument(help="Model file: .onnx or .pt2 (torch.export.save).")],
    target: Annotated[str, typer.Option("--target", "-t", help="Preset name (see `edgec targets`), a triple, or a TVM target JSON dict.")],
    trials: Annotated[Optional[int], typer.Option("--trials", help="Candidates to measure in all, shared by the untuned kernels by weight x FLOPs (default: 32 per kernel; unbounded with --time-budget).")] = None,
    time_budget: Annotated[Optional[float], typer.Option("--time-budget", help="Minutes: no new batch of measurements starts after this; what was measured is kept.")] = None,
    trials_per_iter: Annotated[int, typer.Option("--trials-per-iter", help="Candidates per measured batch; every untuned kernel gets at least one batch.")] = 16,
    population: Annotated[int, typer.Option("--population", help="Schedules the evolutionary search evolves per batch: fewer search faster and less thoroughly.")] = 512,
    tuning_log: TuningLogOption = Path("tuning_logs"),
    rpc_tracker: RpcTrackerOption = None,
    rpc_key: RpcKeyOption = None,
    timeout: TimeoutOption = 60.0,
    input_shape: InputShapeOption = None,
) -> None:
    """Tune MODEL's kernels for a target with MetaSchedule, here or on an RPC device; records go to tuning_logs/<preset>/.

    Records are written after every batch, and kernels that have one are skipped: a stopped run resumes.
    """
    from compiler.frontends import load_model, parse_input_shape
    from compiler.rpc import RemoteSpec, parse_host_port
    from compiler.tuning import TuneOptions, tune_model
    from targets import resolve_target

    with user_errors():
        preset = resolve_target(target)
        remote = None
        if rpc_tracker or rpc_key:
            tracker = parse_host_port(rpc_tracker, "--rpc-tracker") if rpc_tracker else None
            remote = RemoteSpec(tracker=tracker, key=rpc_key, timeout_s=timeout)
        options = TuneOptions(preset, trials=trials, time_budget_s=None if time_budget is None else time_budget * 60,
                              trials_per_iter=trials_per_iter, tuning_log=tuning_log, remote=remote, population=population)
        shapes = dict(parse_input_shape(text) for text in input_shape or [])
        with console.status(f"importing {model.name}"):
            imported = load_model(model, shapes)
        with _TuneDisplay(preset.name, options.time_budget_s, show_planned=trials is not None or time_budget is None) as display:
            report = tune_model(imported, options, display.update)
    _print_tune_summary(report)
    if report.stopped == "interrupted":
        raise typer.Exit(130)


def _print_tune_summary(report) -> None:
    tuned = len(report.tasks) - report.skipped
    if tuned == 0:
        typer.echo(f"nothing to tune: all {len(report.tasks)} kernels have records in {report.database}")
    else:
        stopped = f" (stopped early: {report.stopped})" if report.stopped else ""
        typer.echo(f"tuned {tuned} kernels with {report.trials} trials in {report.wall_s:.0f} s{stopped}; "
                   f"{report.skipped} already had records -> {report.database}")
    unmeasured = sum(t.best_s is None for t in report.tasks)
    typer.echo(f"estimated latency (sum of calls x best kernel time): {_ms(report.estimated_s)} ms"
               + (f", {unmeasured} kernels not measured yet" if unmeasured else ""))
    if report.log_file is not None:
        typer.echo(f"MetaSchedule log: {report.log_file}")


class _TuneDisplay:
    """A spinner while the model is prepared, then a live table: per kernel its trials and best time."""

    def __init__(self, preset: str, budget_s: float | None, show_planned: bool):
        self.preset, self.budget_s, self.show_planned = preset, budget_s, show_planned
        self.status = console.status(f"preparing to tune for {preset}")
        self.live = None

    def __enter__(self) -> _TuneDisplay:
        self.status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.status.stop()
        if self.live is not None:
            self.live.stop()

    def update(self, tasks: Sequence, elapsed_s: float) -> None:
        from rich.live import Live

        if self.live is None:
            self.status.stop()
            self.live = Live(console=console, refresh_per_second=2)
            self.live.start()
        self.live.update(self._table(tasks, elapsed_s))

    def _table(self, tasks: Sequence, elapsed_s: float):
        from rich.table import Table

        from compiler.tuning import estimated_s

        budget = f" of {self.budget_s / 60:g} min" if self.budget_s else ""
        table = Table(title=f"tuning for {self.preset}: {elapsed_s:.0f} s{budget}", title_justify="left",
                      caption=f"estimated total {_ms(estimated_s(tasks))} ms (sum of calls x best)", caption_justify="left")
        for column in ("kernel", "calls", "MFLOP", "trials", "best ms", "errors"):
            table.add_column(column, justify="left" if column == "kernel" else "right")
        for task in sorted(tasks, key=lambda t: (t.skipped, -t.weight * t.flops)):  # the order they are tuned in
            trials = "tuned before" if task.skipped else f"{task.trials}/{task.planned}" if self.show_planned else str(task.trials)
            best = "-" if task.best_s is None else _ms(task.best_s)
            table.add_row(task.name, str(task.weight), f"{task.flops / 1e6:.3g}", trials, best, str(task.errors or ""))
        return table


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.4g}"


@app.command("run")
def run_command(
    artifact: Annotated[Path, typer.Argument(help="Artifact directory written by `edgec compile`.")],
    input: Annotated[Optional[list[str]], typer.Option("--input", "-i", help="NAME=FILE.npy (or FILE.npy for a single-input model); repeatable.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write outputs to this .npz, keyed by output name.")] = None,
    device: DeviceOption = Device.local,
    rpc_tracker: RpcTrackerOption = None,
    rpc_key: RpcKeyOption = None,
    rpc: RpcOption = None,
    timeout: TimeoutOption = 60.0,
) -> None:
    """Run an artifact with inputs from .npy files: here, under emulation, or on a device over RPC."""
    from compiler.artifact import read_manifest
    from compiler.bench import run_rpc
    from compiler.runtime import open_model, read_input_files, write_outputs

    with user_errors():
        remote = _remote_spec(device, rpc_tracker, rpc_key, rpc, timeout)
        if remote is None:
            model = open_model(artifact, device.value)
            outputs = model.run(read_input_files(model.manifest.inputs, input or []))
        else:
            outputs = run_rpc(artifact, read_input_files(read_manifest(artifact).inputs, input or []), remote)
        if output is not None:
            write_outputs(output, outputs)
    for name, value in outputs.items():
        typer.echo(f"{name}: shape {'x'.join(map(str, value.shape))} {value.dtype}")
    if output is not None:
        typer.echo(f"wrote {output}")


@app.command("bench")
def bench_command(
    artifact: Annotated[Path, typer.Argument(help="Artifact directory written by `edgec compile`.")],
    device: DeviceOption = Device.local,
    rpc_tracker: RpcTrackerOption = None,
    rpc_key: RpcKeyOption = None,
    rpc: RpcOption = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed runs before timing.")] = 10,
    runs: Annotated[int, typer.Option("--runs", help="Timed runs, one latency sample each.")] = 100,
    timeout: TimeoutOption = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: artifact, device and latency stats.")] = False,
) -> None:
    """Time an artifact's single runs (min, mean, p50, p90, p99, max, std in ms) here or on a remote device."""
    from compiler.artifact import read_manifest
    from compiler.bench import BenchSpec, bench

    with user_errors():
        spec = BenchSpec(warmup=warmup, runs=runs)
        remote = _remote_spec(device, rpc_tracker, rpc_key, rpc, timeout)
        manifest = read_manifest(artifact)
        where = remote.describe() if remote else device.value
        with console.status(f"benchmarking {artifact.name} on {where}"):
            stats = bench(artifact, spec, device.value, remote)
    target = manifest.target
    if as_json:
        info = {
            "artifact": {"path": str(artifact), "library": manifest.library, "target": target.get("name"), "triple": target.get("triple")},
            "device": {"kind": device.value, **(remote.to_json() if remote else {})},
            "unit": "ms",
            "stats": stats.to_json(),
        }
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(f"{artifact}/{manifest.library} ({target.get('name')}) on {where}: {stats.runs} runs after {stats.warmup} warm-up runs, ms")
    columns = ("min", "mean", "p50", "p90", "p99", "max", "std")
    typer.echo("".join(f"{name:>11}" for name in columns))
    typer.echo("".join(f"{getattr(stats, name):>11.4g}" for name in columns))


def _remote_spec(device: Device, tracker: str | None, key: str | None, address: str | None, timeout: float):
    """The RPC server to use for `--device rpc` (None for other devices, which take no RPC flags)."""
    from compiler.errors import BenchError
    from compiler.rpc import RemoteSpec, parse_host_port

    if device is not Device.rpc:
        if tracker or key or address:
            raise BenchError(f"--rpc-tracker, --rpc-key and --rpc apply to --device rpc, not --device {device.value}")
        return None
    return RemoteSpec(
        tracker=parse_host_port(tracker, "--rpc-tracker") if tracker else None,
        key=key,
        address=parse_host_port(address, "--rpc") if address else None,
        timeout_s=timeout,
    )


@app.command("package")
def package_command(
    artifact: Annotated[Path, typer.Argument(help="Artifact directory written by `edgec compile` (x86-64 or aarch64 CPU).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Bundle to write, e.g. model.tar.gz; its name names the bundle.")],
) -> None:
    """Package an artifact for a firmware build: model, runtime, runner, C header, CMake fragment."""
    from compiler.package import package_artifact

    with user_errors(), console.status(f"packaging {artifact}"):
        files = package_artifact(artifact, output)
    typer.echo(f"wrote {output}: {len(files)} files, {output.stat().st_size / 1e6:.1f} MB")


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
