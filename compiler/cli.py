"""The `edgec` command: parses arguments, builds configs and calls the library.

User mistakes arrive as `EdgecError` and are printed as one line with exit code 2; any other
exception is a bug in edgec and keeps its traceback.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.text import Text

from compiler.errors import EdgecError
from compiler.specs import DEVICES

if TYPE_CHECKING:
    from passes import LayoutConfig, PruneConfig, WinogradConfig

app = typer.Typer(
    name="edgec",
    help="Compile PyTorch and ONNX models into fast libraries for a specific edge device.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
records_app = typer.Typer(
    name="records",
    help="Inspect and maintain a preset's tuning records: list, compact, remeasure.",
    no_args_is_help=True,
)
app.add_typer(records_app)
console = Console(stderr=True, highlight=False)


Device = enum.Enum("Device", {name: name for name in DEVICES}, type=str)  # compiler.runtime.open_model's devices


class Quantize(str, enum.Enum):
    int8 = "int8"


class Int8Layers(str, enum.Enum):
    paying = "paying"
    all = "all"


class CalibrationMethod(str, enum.Enum):
    minmax = "minmax"
    percentile = "percentile"
    entropy = "entropy"


class PruneCriterion(str, enum.Enum):
    l1 = "l1"
    l2 = "l2"


class Layout(str, enum.Enum):
    NCHW = "NCHW"
    NHWC = "NHWC"


QuantizeOption = Annotated[Optional[Quantize], typer.Option("--quantize", help="Post-training quantization of conv2d/matmul layers (needs --calibration-data).")]
CalibrationDataOption = Annotated[Optional[Path], typer.Option("--calibration-data", help="FILE.npz: one array per input, keyed by input name, samples stacked on a new first axis.")]
CalibrationMethodOption = Annotated[CalibrationMethod, typer.Option("--calibration-method", help="How activation ranges are chosen from the calibration data.")]
PercentileOption = Annotated[float, typer.Option("--percentile", help="With --calibration-method percentile: the percentile of magnitudes that becomes the int8 range.")]
Int8LayersOption = Annotated[Int8Layers, typer.Option("--int8-layers", help="paying: quantize the layers int8 makes faster on the target (depthwise, grouped and shallow convs on cache-resident tensors stay float; the manifest says why); all: every conv2d/matmul.")]
KeepFloatOption = Annotated[Optional[str], typer.Option("--keep-float", help="LAYER,... left in float (names as conv2d_0, matmul_0: see the manifest's quantize report).")]
EvalDataOption = Annotated[Optional[Path], typer.Option("--eval-data", help="With --quantize and --max-accuracy-drop: FILE.npz of inputs plus 'label' to guard accuracy with.")]
MaxAccuracyDropOption = Annotated[Optional[float], typer.Option("--max-accuracy-drop", help="Largest accepted top-1 drop as a fraction (0.01 = one point); layers that cost most stay float.")]
PruneOption = Annotated[Optional[float], typer.Option("--prune", help="Remove this fraction (0-1) of every prunable convolution's output channels.")]
PruneCriterionOption = Annotated[PruneCriterion, typer.Option("--prune-criterion", help="Channel ranking for --prune: L1 or L2 norm of the channel's weights.")]
LayoutOption = Annotated[Optional[Layout], typer.Option("--layout", help="Convolution data layout (default: the preset's, see `edgec targets`).")]
WinogradOption = Annotated[Optional[bool], typer.Option("--winograd/--no-winograd", help="Compute float 3x3 stride-1 convolutions as Winograd F(4x4,3x3) or F(2x2,3x3), chosen per layer (default: the preset's choice).")]
DeviceOption = Annotated[Optional[Device], typer.Option("--device", "-d", show_default=False, help="local: this CPU, in this process; qemu: the C++ runner under qemu-user (aarch64 artifacts); rpc: a TVM RPC server, through a tracker or directly. Default: rpc when an --rpc flag is given, else local.")]
RpcTrackerOption = Annotated[Optional[str], typer.Option("--rpc-tracker", help="HOST:PORT of the RPC tracker (with --rpc-key).")]
RpcKeyOption = Annotated[Optional[str], typer.Option("--rpc-key", help="Device key the RPC servers registered with at the tracker.")]
RpcOption = Annotated[Optional[str], typer.Option("--rpc", help="HOST:PORT of one RPC server, without a tracker.")]
TimeoutOption = Annotated[float, typer.Option("--timeout", help="Seconds to wait for the tracker, a free device and its session.")]
InputShapeOption = Annotated[Optional[list[str]], typer.Option("--input-shape", help="NAME=1x3x224x224 for inputs with symbolic dims; repeatable.")]
TuningLogOption = Annotated[Optional[Path], typer.Option("--tuning-log", help="Root of the tuning databases, one per preset in DIR/<preset>/ (or a database directory itself); default: your own, $EDGEC_TUNING_DIR or ~/.local/share/edgec/tuning_logs.")]
ExtraTuningLogOption = Annotated[Optional[Path], typer.Option("--tuning-log", help="Also read the tuning databases in DIR/<preset>/ (or a database directory itself), besides the shipped ones and your own.")]


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """EdgecError -> one `error:` line and exit code 2; edgec's warnings -> one `warning:` line each."""
    handler = _ConsoleWarnings(logging.WARNING)
    logger = logging.getLogger("edgec")
    logger.addHandler(handler)
    try:
        yield
    except EdgecError as err:
        console.print(Text.assemble(("error:", "bold red"), f" {err}"), soft_wrap=True)  # no markup: "[torch]" stays
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
    tuning_log: ExtraTuningLogOption = None,
    untuned: Annotated[bool, typer.Option("--untuned", help="Ignore tuning records: every kernel gets TVM's default schedule.")] = False,
    quantize: QuantizeOption = None,
    calibration_data: CalibrationDataOption = None,
    calibration_method: CalibrationMethodOption = CalibrationMethod.percentile,
    percentile: PercentileOption = 99.99,
    keep_float: KeepFloatOption = None,
    int8_layers: Int8LayersOption = Int8Layers.paying,
    eval_data: EvalDataOption = None,
    max_accuracy_drop: MaxAccuracyDropOption = None,
    prune: PruneOption = None,
    prune_criterion: PruneCriterionOption = PruneCriterion.l1,
    layout: LayoutOption = None,
    winograd: WinogradOption = None,
) -> None:
    """Compile MODEL for a target into an artifact directory (library + manifest.json).

    Kernels with records get their tuned schedule: the best record among the shipped databases, your
    own (see `edgec tune`) and --tuning-log's.
    """
    from compiler.build import CompileOptions, check_toolchain, compile_model
    from compiler.frontends import load_model, parse_input_shape
    from compiler.tuning.database import RecordSources
    from targets import resolve_target

    with user_errors():
        preset = resolve_target(target)
        check_toolchain(preset)
        shapes = dict(parse_input_shape(text) for text in input_shape or [])
        graph = _GraphOptions.check(prune, prune_criterion, layout, winograd, quantize, calibration_data,
                                    calibration_method, percentile, keep_float, eval_data, max_accuracy_drop,
                                    int8_layers)
        with console.status(f"importing {model.name}"):
            imported = load_model(model, shapes)
        sources = None if untuned else RecordSources(extra=tuning_log)
        config = graph.pipeline_config(imported, dump_ir=dump_ir, tuning_log=sources)
        with console.status(f"compiling for {preset.name}"):
            manifest = compile_model(imported, CompileOptions(preset, config, graph.accuracy_guard(imported)), output)
    execution = manifest.target["execution"]
    typer.echo(f"compiled {model.name} for {preset.name} -> {output}/{manifest.library} ({execution['mode']}: {execution['reason']})")
    _print_pass_reports(manifest)
    if manifest.tuning is not None:
        tuning = manifest.tuning
        typer.echo(f"tuning: {tuning['tuned']} of {tuning['tasks']} kernels tuned ({_record_sources(tuning)})")
    if manifest.schedules:
        typer.echo(f"schedules: {_schedule_sources(manifest.schedules)} (per kernel in manifest.json)")
    if manifest.memory:
        typer.echo(_memory_line(manifest.memory))


def _memory_line(memory: dict) -> str:
    """`memory: weights 1.23 MB, peak activations 0.45 MB (TVM's memory plan)`; "unknown" for symbolic sizes."""
    activations = memory["peak_activation_bytes"]
    planned = "unknown (symbolic shapes)" if activations is None else f"{activations / 1e6:.2f} MB"
    return f"memory: weights {memory['weights_bytes'] / 1e6:.2f} MB, peak activations {planned} (TVM's memory plan)"


def _schedule_sources(schedules: dict[str, str]) -> str:
    """`12 tuned (shipped), 8 edgec-default`: how many kernels got each kind of schedule."""
    counts: dict[str, int] = {}
    for source in schedules.values():
        counts[source] = counts.get(source, 0) + 1
    return ", ".join(f"{count} {source}" for source, count in sorted(counts.items(), key=lambda item: -item[1]))


def _record_sources(tuning: dict) -> str:
    """`28 from shipped DIR, 2 from user DIR, 0 from --tuning-log DIR`: every database read, in order."""
    names = {"shipped": "shipped", "user": "user"}
    return ", ".join(f"{count} from {names.get(label, '--tuning-log')} {tuning['databases'][label]}"
                     for label, count in tuning["tuned_from"].items())


@dataclass(frozen=True)
class _GraphOptions:
    """The graph-pass options `compile` and `tune` share (they must see the same kernels)."""

    prune: PruneConfig | None
    layout: LayoutConfig | None
    winograd: WinogradConfig | None
    quantize: Quantize | None
    calibration_data: Path | None
    calibration_method: CalibrationMethod
    percentile: float
    keep_float: tuple[str, ...]
    int8_layers: Int8Layers
    eval_data: Path | None
    max_accuracy_drop: float | None

    @classmethod
    def check(cls, prune, prune_criterion, layout, winograd, quantize, calibration_data, calibration_method,
              percentile, keep_float, eval_data, max_accuracy_drop, int8_layers=Int8Layers.paying) -> _GraphOptions:
        """Settings checked before the model is imported: one line naming what is wrong or missing."""
        from passes import LayoutConfig, PruneConfig, WinogradConfig

        if quantize is None:
            extra = [name for name, value in (("--calibration-data", calibration_data), ("--keep-float", keep_float),
                                              ("--max-accuracy-drop", max_accuracy_drop)) if value is not None]
            extra += ["--int8-layers"] if int8_layers != Int8Layers.paying else []
            if extra:
                raise EdgecError(f"{', '.join(extra)} applies to quantization: add --quantize int8")
        elif calibration_data is None:
            raise EdgecError("--quantize int8 needs --calibration-data FILE.npz (inputs keyed by name, samples stacked on axis 0)")
        if (eval_data is None) != (max_accuracy_drop is None):
            raise EdgecError("the accuracy guard needs both --eval-data FILE.npz and --max-accuracy-drop FRACTION")
        if not 50 < percentile <= 100:
            raise EdgecError(f"--percentile must be in (50, 100], got {percentile}")
        if max_accuracy_drop is not None and not 0 <= max_accuracy_drop < 1:
            raise EdgecError(f"--max-accuracy-drop is a fraction in [0, 1) (0.01 = one point), got {max_accuracy_drop}")
        return cls(
            prune=PruneConfig(prune, prune_criterion.value) if prune is not None else None,
            layout=LayoutConfig(layout.value) if layout is not None else None,
            winograd=WinogradConfig(enabled=winograd) if winograd is not None else None,
            quantize=quantize, calibration_data=calibration_data, calibration_method=calibration_method,
            percentile=percentile, keep_float=tuple(n.strip() for n in (keep_float or "").split(",") if n.strip()),
            int8_layers=int8_layers, eval_data=eval_data, max_accuracy_drop=max_accuracy_drop,
        )

    def pipeline_config(self, imported, **settings):
        from compiler.evaluate import load_eval_data
        from compiler.pipeline import PipelineConfig
        from passes import QuantizeConfig

        quantize = None
        if self.quantize is not None:
            samples, _ = load_eval_data(self.calibration_data, imported.inputs, what="calibration data")
            quantize = QuantizeConfig(tuple(samples), self.calibration_method.value, self.percentile, self.keep_float,
                                      str(self.calibration_data), every_layer=self.int8_layers == Int8Layers.all)
        return PipelineConfig(prune=self.prune, layout=self.layout, winograd=self.winograd, quantize=quantize, **settings)

    def accuracy_guard(self, imported):
        if self.max_accuracy_drop is None:
            return None
        from compiler.accuracy import AccuracyGuard
        from compiler.evaluate import load_eval_data

        samples, labels = load_eval_data(self.eval_data, imported.inputs)
        return AccuracyGuard(tuple(samples), labels, self.max_accuracy_drop, str(self.eval_data))


def _print_pass_reports(manifest) -> None:
    """One line per pass that changed the model: what it did."""
    for phase in manifest.passes:
        report = phase.get("report")
        if phase["phase"] == "prune" and report:
            typer.echo(f"pruned: {report['flops_before'] / 1e9:.3g} -> {report['flops_after'] / 1e9:.3g} GFLOP, "
                       f"{len(report['layers'])} layers pruned, {len(report['left_alone'])} left alone")
        if phase["phase"] == "quantize" and report:
            kept = ", ".join(report["kept_float"]) or "none"
            typer.echo(f"quantized: {report['quantized']} layers int8 ({report['method']} calibration), kept float: {kept}")
            guard = report.get("accuracy_guard")
            if guard:
                typer.echo(f"accuracy guard: {guard['metric']} {guard['float_accuracy']:.4f} float -> "
                           f"{guard['quantized_accuracy']:.4f} int8 (drop {guard['drop']:.4f}, band {guard['max_drop']})")
        if phase["phase"] == "winograd" and report is not None:
            settings = phase["settings"]
            if report["winograd_layers"]:
                tiles = collections.Counter(layer["tile"] for layer in report["layers"])
                typer.echo(f"winograd: {report['winograd_layers']} 3x3 convolutions as "
                           + ", ".join(f"{count} F({tile}x{tile}, 3x3)" for tile, count in sorted(tiles.items(), reverse=True)))
            elif settings["chosen_by"] == "--winograd":
                typer.echo(f"winograd: no convolution qualifies (float, NCHW or NHWC, 3x3, stride 1, groups 1, at least "
                           f"{settings['min_channels']} channels, {settings['min_macs']:,} multiply-adds and "
                           f"{settings['min_tiles']} output tiles)")
    if manifest.kernels:
        typer.echo(f"kernels: {manifest.kernels['before_fusion']} operators -> {manifest.kernels['after_fusion']} after fusion")


@app.command("tune")
def tune_command(
    model: Annotated[Path, typer.Argument(help="Model file: .onnx or .pt2 (torch.export.save).")],
    target: Annotated[str, typer.Option("--target", "-t", help="Preset name (see `edgec targets`), a triple, or a TVM target JSON dict.")],
    trials: Annotated[Optional[int], typer.Option("--trials", help="Candidates to measure in all, shared by the kernels to tune by the time each takes (default: 32 per kernel; unbounded with --time-budget).")] = None,
    time_budget: Annotated[Optional[float], typer.Option("--time-budget", help="Minutes: no new batch of measurements starts after this; what was measured is kept.")] = None,
    trials_per_iter: Annotated[int, typer.Option("--trials-per-iter", help="Candidates per measured batch; every untuned kernel gets at least one batch.")] = 16,
    population: Annotated[int, typer.Option("--population", help="Schedules the evolutionary search evolves per batch: fewer search faster and less thoroughly.")] = 512,
    tuning_log: TuningLogOption = None,
    rpc_tracker: RpcTrackerOption = None,
    rpc_key: RpcKeyOption = None,
    timeout: TimeoutOption = 60.0,
    input_shape: InputShapeOption = None,
    quantize: QuantizeOption = None,
    calibration_data: CalibrationDataOption = None,
    calibration_method: CalibrationMethodOption = CalibrationMethod.percentile,
    percentile: PercentileOption = 99.99,
    keep_float: KeepFloatOption = None,
    int8_layers: Int8LayersOption = Int8Layers.paying,
    eval_data: EvalDataOption = None,
    max_accuracy_drop: MaxAccuracyDropOption = None,
    prune: PruneOption = None,
    prune_criterion: PruneCriterionOption = PruneCriterion.l1,
    layout: LayoutOption = None,
    winograd: WinogradOption = None,
    refine: Annotated[bool, typer.Option("--refine", help="Also tune kernels that already have records, starting from their best schedules (for more trials per kernel).")] = False,
    history: Annotated[Optional[Path], typer.Option("--history", help="Append one JSON line per measured batch (seconds, trials, estimated latency) to this file.")] = None,
) -> None:
    """Tune MODEL's kernels for a target with MetaSchedule, here or on an RPC device; records go to your own database.

    Your database: --tuning-log DIR, else $EDGEC_TUNING_DIR, else $XDG_DATA_HOME/edgec/tuning_logs
    (~/.local/share/edgec/tuning_logs), one directory per preset; `edgec compile` reads it.

    Records are written after every batch, and kernels that have one are skipped (unless --refine): a
    stopped run resumes.
    Give the same --quantize/--prune/--layout/--winograd options as to `edgec compile`: they change the kernels.
    """
    from compiler.frontends import load_model, parse_input_shape
    from compiler.runtime import RemoteSpec, parse_host_port
    from compiler.tuning import TuneOptions, tune_model
    from targets import resolve_target

    with user_errors():
        preset = resolve_target(target)
        remote = None
        if rpc_tracker or rpc_key:
            tracker = parse_host_port(rpc_tracker, "--rpc-tracker") if rpc_tracker else None
            remote = RemoteSpec(tracker=tracker, key=rpc_key, timeout_s=timeout)
        graph = _GraphOptions.check(prune, prune_criterion, layout, winograd, quantize, calibration_data,
                                    calibration_method, percentile, keep_float, eval_data, max_accuracy_drop,
                                    int8_layers)
        shapes = dict(parse_input_shape(text) for text in input_shape or [])
        with console.status(f"importing {model.name}"):
            imported = load_model(model, shapes)
        options = TuneOptions(preset, trials=trials, time_budget_s=None if time_budget is None else time_budget * 60,
                              trials_per_iter=trials_per_iter, tuning_log=tuning_log, remote=remote, population=population,
                              history=history, refine=refine, pipeline=graph.pipeline_config(imported),
                              accuracy_guard=graph.accuracy_guard(imported))
        with _TuneDisplay(preset.name, options.time_budget_s, show_planned=trials is not None or time_budget is None) as display:
            report = tune_model(imported, options, display.update)
    _print_tune_summary(report)
    if report.stopped == "interrupted":
        raise typer.Exit(130)


@records_app.command("compact")
def records_compact_command(
    target: Annotated[str, typer.Option("--target", "-t", help="Preset whose database to compact.")],
    tuning_log: TuningLogOption = None,
    keep_models: Annotated[Optional[list[Path]], typer.Option("--keep-models", help="Model files (.onnx, .pt2; repeatable): keep only the kernels these models use, as compiled with the preset's defaults, and drop every other workload.")] = None,
) -> None:
    """Keep only the best record of every kernel in a preset's tuning database (small enough to ship).

    The database is your own unless --tuning-log says otherwise (`--tuning-log tuning_logs` in the
    repository: the shipped ones).
    """
    from compiler.tuning.database import compact, open_for_tuning, used_workload_hashes

    with user_errors():
        preset, directory = _records_database(target, tuning_log)
        keep = None
        if keep_models:
            kernels = [kernel for found in _model_kernels(keep_models, preset).values() for kernel in found]
            with open_for_tuning(directory, preset.tvm_target()) as database:  # repaired first, if need be
                keep = used_workload_hashes(database, preset.tvm_target(), kernels)
        report = compact(directory, preset.tvm_target(), keep)
    typer.echo(f"{report.directory}: {report.workloads} kernels, {report.records_before} -> {report.records_after} records, "
               f"{report.bytes_before / 1e6:.2f} -> {report.bytes_after / 1e6:.2f} MB")


@records_app.command("list")
def records_list_command(
    target: Annotated[str, typer.Option("--target", "-t", help="Preset whose database to list.")],
    tuning_log: TuningLogOption = None,
    models: Annotated[Optional[list[Path]], typer.Option("--model", help="Model files (.onnx, .pt2; repeatable): say which kernels each one uses, as compiled with the preset's defaults.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as one JSON document.")] = False,
) -> None:
    """List a preset's tuned kernels: records, fastest time, the CPU and date they were measured on.

    CPU and date are `unknown` for records measured before edgec noted them. With --model, each
    kernel also says which of those models use it (under which task names).

    The database is your own unless --tuning-log says otherwise (`--tuning-log tuning_logs` in the
    repository: the shipped ones).
    """
    from compiler.tuning.provenance import list_records

    with user_errors():
        preset, directory = _records_database(target, tuning_log)
        kernels = _model_kernels(models or [], preset)
        rows = list_records(directory, preset.tvm_target(), kernels)
    if as_json:
        _print_json({"database": str(directory), "kernels": [row.to_json() for row in rows]})
        return
    typer.echo(f"{directory}: {len(rows)} kernels, {sum(row.records for row in rows)} records")
    typer.echo(f"{'workload':>20} {'records':>7} {'best ms':>9}  {'measured':20}  cpu" + ("  (models: kernels)" if models else ""))
    for row in sorted(rows, key=lambda r: -(r.best_ms or 0)):
        best = "-" if row.best_ms is None else f"{row.best_ms:.4g}"
        used = f"  ({', '.join(row.models)}: {', '.join(row.kernels)})" if row.models else ("  (unused)" if models else "")
        typer.echo(f"{row.workload:>20} {row.records:>7} {best:>9}  {row.date:20}  {row.cpu}{used}")


def _records_database(target: str, tuning_log: Path | None):
    """The preset and its existing database directory under `tuning_log` (default: the user's own)."""
    from compiler.tuning.database import database_dir, user_root
    from targets import resolve_target

    preset = resolve_target(target)
    directory = database_dir(tuning_log or user_root(), preset)
    if not directory.is_dir():
        raise EdgecError(f"no tuning database at {directory}; tune first with: edgec tune MODEL --target {preset.name}")
    return preset, directory


def _model_kernels(paths: Sequence[Path], preset) -> dict[str, list]:
    """Model file name -> the (module, task name) of every kernel its compile for `preset` looks up."""
    from compiler.frontends import load_model
    from compiler.pipeline import PipelineConfig
    from compiler.tuning import model_kernels

    kernels = {}
    for path in paths:
        with console.status(f"finding the kernels of {path.name}"):
            kernels[path.name] = model_kernels(load_model(path, {}), preset, PipelineConfig(tuning_log=None))
    return kernels


@records_app.command("remeasure")
def records_remeasure_command(
    target: Annotated[str, typer.Option("--target", "-t", help="Preset whose database to re-measure (its code must run here).")],
    top: Annotated[int, typer.Option("--top", help="Records per kernel to time again: its fastest by their stored times.")] = 8,
    rounds: Annotated[int, typer.Option("--rounds", help="Interleaved rounds: every record is timed once per round.")] = 5,
    tuning_log: TuningLogOption = None,
) -> None:
    """Time every kernel's best records again side by side, here, and keep only those, with their new times.

    Stored times come from different minutes of tuning runs (and maybe other thread counts): timed
    together, the fastest record is the one that is fastest now. Run it with nothing else running.
    """
    from rich.progress import Progress

    from compiler.tuning.remeasure import RemeasureOptions, remeasure_records
    from targets import resolve_target

    with user_errors():
        options = RemeasureOptions(resolve_target(target), top_k=top, rounds=rounds, tuning_log=tuning_log)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("re-measuring kernels", total=None)
            report = remeasure_records(options, lambda done, total: progress.update(task, completed=done, total=total))
    stored = sum(k.stored_s for k in report.kernels)
    best = sum(k.best_s for k in report.kernels)
    typer.echo(f"{report.directory}: re-measured {report.records_after} records of {len(report.kernels)} kernels in "
               f"{report.wall_s:.0f} s ({report.records_before} records before); {report.changed} kernels have "
               f"another fastest record now; sum of their best times: {_ms(stored)} ms stored, {_ms(best)} ms now")


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
    inputs: Annotated[Optional[Path], typer.Option("--inputs", help="FILE.npz of inputs keyed by input name (numpy.savez), as TVMC takes them; --input adds others.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write outputs to this .npz, keyed by output name.")] = None,
    device: DeviceOption = None,
    rpc_tracker: RpcTrackerOption = None,
    rpc_key: RpcKeyOption = None,
    rpc: RpcOption = None,
    timeout: TimeoutOption = 60.0,
    calibrated: Annotated[bool, typer.Option("--calibrated", help="The first output becomes softmax(output / T) with the manifest's temperature (see `edgec evaluate --fit-temperature`).")] = False,
) -> None:
    """Run an artifact with inputs from .npy/.npz files: here, under emulation, or on a device over RPC."""
    from compiler.artifact import read_manifest
    from compiler.calibration import calibrated as scaled, require_temperature
    from compiler.runtime import open_model, read_input_files, write_outputs

    with user_errors():
        where, remote = _device(device, rpc_tracker, rpc_key, rpc, timeout)
        manifest = read_manifest(artifact)
        temperature = require_temperature(manifest, artifact) if calibrated else None
        arrays = read_input_files(manifest.inputs, input or [], inputs)
        with open_model(artifact, where, remote) as model:
            outputs = model.run(arrays)
        if temperature is not None:  # in Python, whichever device ran it
            first = next(iter(outputs))
            outputs[first] = scaled(outputs[first], temperature)
        if output is not None:
            write_outputs(output, outputs)
    for name, value in outputs.items():
        typer.echo(f"{name}: shape {'x'.join(map(str, value.shape))} {value.dtype}")
    if output is not None:
        typer.echo(f"wrote {output}")


@app.command("bench")
def bench_command(
    artifact: Annotated[Path, typer.Argument(help="Artifact directory written by `edgec compile`.")],
    device: DeviceOption = None,
    rpc_tracker: RpcTrackerOption = None,
    rpc_key: RpcKeyOption = None,
    rpc: RpcOption = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed runs before timing.")] = 10,
    runs: Annotated[int, typer.Option("--runs", help="Timed runs, one latency sample each.")] = 100,
    timeout: TimeoutOption = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document: artifact, device and latency stats.")] = False,
    kernels: Annotated[int, typer.Option("--kernels", help="Also time each kernel (local device) and list the N slowest.")] = 0,
    against: Annotated[Optional[Path], typer.Option("--against", help="With --kernels: a second build of the model, run interleaved; its kernel times go beside.")] = None,
    count_instructions: Annotated[bool, typer.Option("--count-instructions", help="With --device qemu: also count guest instructions per run (qemu TCG plugin, 1 thread, the preset's core): a speed proxy for ARM builds, steadier than emulated time.")] = False,
) -> None:
    """Time an artifact's single runs (min, mean, p50, p90, p99, max, std in ms) here or on a remote device."""
    from compiler.artifact import read_manifest
    from compiler.bench import BenchSpec, bench, check_kernel_options, kernel_times
    from compiler.bench import count_instructions as count_guest_instructions

    with user_errors():
        spec = BenchSpec(warmup=warmup, runs=runs)
        kind, remote = _device(device, rpc_tracker, rpc_key, rpc, timeout)
        check_kernel_options(kernels, against, kind)
        if count_instructions and kind != "qemu":
            raise EdgecError(f"--count-instructions counts guest instructions under qemu: add --device qemu (not {kind})")
        manifest = read_manifest(artifact)
        where = remote.describe() if remote else kind
        with console.status(f"benchmarking {artifact.name} on {where}"):
            stats = bench(artifact, spec, kind, remote)
        instructions = None
        if count_instructions:
            with console.status("counting guest instructions (1 thread)"):
                instructions = count_guest_instructions(artifact)
        per_kernel = []
        if kernels:
            with console.status("timing each kernel" + (f" beside {against.name}" if against else "")):
                per_kernel = kernel_times([artifact, *([against] if against else [])], spec)
    rows = _kernel_rows(per_kernel, kernels)
    target = manifest.target
    if as_json:
        info = {
            "artifact": {"path": str(artifact), "library": manifest.library, "target": target.get("name"), "triple": target.get("triple")},
            "device": {"kind": kind, **(remote.to_json() if remote else {})},
            "unit": "ms",
            "stats": stats.to_json(),
            **({"kernels": rows} if kernels else {}),
            **({"instructions": instructions.to_json()} if instructions is not None else {}),
        }
        _print_json(info)
        return
    typer.echo(f"{artifact}/{manifest.library} ({target.get('name')}) on {where}: {stats.runs} runs after {stats.warmup} warm-up runs, ms")
    columns = ("min", "mean", "p50", "p90", "p99", "max", "std")
    typer.echo("".join(f"{name:>11}" for name in columns))
    typer.echo("".join(f"{getattr(stats, name):>11.4g}" for name in columns))
    if stats.peak_rss_bytes is not None:
        typer.echo(f"peak resident memory: {stats.peak_rss_bytes / 1e6:.1f} MB (whole process: {_PEAK_RSS_OF.get(kind, kind)})")
    if instructions is not None:
        typer.echo(f"guest instructions per run: {instructions.per_run / 1e6:,.2f} M (mean of {instructions.runs} runs, "
                   f"{instructions.threads} thread, qemu -cpu {instructions.cpu}; a speed proxy counted by a qemu "
                   f"TCG plugin, not a time)")
    if kernels:
        _print_kernel_rows(rows, against)


# What `bench`'s peak resident memory covers, per device kind (it is measured for the whole process)
_PEAK_RSS_OF = {
    "local": "this Python process with TVM, over warm-up and timed runs",
    "qemu": "the C++ runner under qemu-user, the emulator included",
}


def _kernel_rows(per_kernel: list, top: int) -> list[dict]:
    """The `top` slowest kernels of the first build, with the second build's time of each beside."""
    if not per_kernel:
        return []
    other = {k.name: k for k in per_kernel[1]} if len(per_kernel) > 1 else None
    rows = []
    for kernel in per_kernel[0][:top]:
        row = {"name": kernel.name, "calls": kernel.calls, "ms": kernel.ms}
        if other is not None:
            row["against_ms"] = other[kernel.name].ms if kernel.name in other else None
        rows.append(row)
    return rows


def _print_kernel_rows(rows: list[dict], against: Path | None) -> None:
    typer.echo("per kernel, ms per run (each call timed from Python: a few us more per call)")
    if against is None:
        typer.echo(f"{'ms':>9} {'calls':>5}  kernel")
        for row in rows:
            typer.echo(f"{row['ms']:>9.4f} {row['calls']:>5}  {row['name']}")
        return
    typer.echo(f"{'ms':>9} {'against':>9} {'ratio':>6} {'calls':>5}  kernel   (ratio: against / this; < 1: against is faster)")
    for row in rows:
        theirs = row["against_ms"]
        cells = ("-", "-") if theirs is None else (f"{theirs:.4f}", f"{theirs / row['ms']:.2f}" if row["ms"] else "-")
        typer.echo(f"{row['ms']:>9.4f} {cells[0]:>9} {cells[1]:>6} {row['calls']:>5}  {row['name']}")


def _print_json(data) -> None:
    """Every --json prints one indented JSON document to stdout, alone."""
    typer.echo(json.dumps(data, indent=2))


def _device(device: Device | None, tracker: str | None, key: str | None, address: str | None, timeout: float):
    """(device name, RPC server or None) from the device options `run`, `bench` and `evaluate` share:
    an RPC flag implies `--device rpc`, which other devices do not take."""
    from compiler.runtime import RemoteSpec, parse_host_port

    flags = [flag for flag, value in (("--rpc-tracker", tracker), ("--rpc-key", key), ("--rpc", address)) if value]
    kind = device.value if device is not None else "rpc" if flags else "local"
    if kind != "rpc":
        if flags:
            raise EdgecError(f"{', '.join(flags)} appl{'ies' if len(flags) == 1 else 'y'} to --device rpc, not --device {kind}")
        return kind, None
    return kind, RemoteSpec(
        tracker=parse_host_port(tracker, "--rpc-tracker") if tracker else None,
        key=key,
        address=parse_host_port(address, "--rpc") if address else None,
        timeout_s=timeout,
    )


@app.command("evaluate")
def evaluate_command(
    artifact: Annotated[Path, typer.Argument(help="Artifact directory written by `edgec compile`.")],
    eval_data: Annotated[Path, typer.Option("--eval-data", help="FILE.npz: one array per input keyed by input name, samples on a new first axis, optional 'label' (N,).")],
    reference: Annotated[Optional[Path], typer.Option("--reference", help="Float model to compare with (.onnx via onnxruntime, .pt2 via PyTorch); default: the model the artifact was compiled from.")] = None,
    device: DeviceOption = None,
    rpc_tracker: RpcTrackerOption = None,
    rpc_key: RpcKeyOption = None,
    rpc: RpcOption = None,
    timeout: TimeoutOption = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON document.")] = False,
    fit_temperature: Annotated[bool, typer.Option("--fit-temperature", help="Fit the first output's softmax temperature on the eval data (needs 'label'), store it in the manifest and report the calibration error before and after.")] = False,
) -> None:
    """Accuracy of an artifact: top-1 (with labels), top-1 agreement with the float reference, SQNR of
    outputs, and (with labels) the expected calibration error of the first output."""
    from compiler.artifact import read_manifest
    from compiler.calibration import calibrate_artifact, manifest_temperature
    from compiler.evaluate import ECE_BINS, cache_outputs, evaluate, load_eval_data, manifest_reference, reference_runner
    from compiler.runtime import open_model

    with user_errors():
        where, remote = _device(device, rpc_tracker, rpc_key, rpc, timeout)
        manifest = read_manifest(artifact)
        samples, labels = load_eval_data(eval_data, manifest.inputs)
        if fit_temperature and labels is None:
            raise EdgecError(f"--fit-temperature needs labels: add a 'label' array (N,) of class indices to {eval_data}")
        reference_path = reference or manifest_reference(manifest.model)
        float_model = reference_runner(reference_path, manifest.inputs)
        temperature, fitted = manifest_temperature(manifest), None
        with open_model(artifact, where, remote) as model, console.status(f"evaluating {len(samples)} samples"):
            run = cache_outputs(lambda x: list(model.run(x).values()))  # fitting and evaluating run it once
            if fit_temperature:
                fitted = calibrate_artifact(artifact, samples, labels, str(eval_data), run=run)
                temperature = fitted["temperature"]
            report = evaluate(run, float_model, samples, labels, str(reference_path), temperature)
    if as_json:
        _print_json(report.to_json())
        return
    if fitted is not None:
        typer.echo(f"fitted softmax temperature T={fitted['temperature']:.4g} on {fitted['samples']} samples "
                   f"-> {artifact}/manifest.json")
    if report.top1_accuracy is not None:
        typer.echo(f"top-1 accuracy: {report.top1_accuracy:.4f} (reference {report.reference_top1_accuracy:.4f}, "
                   f"drop {report.reference_top1_accuracy - report.top1_accuracy:+.4f})")
    typer.echo(f"top-1 agreement with {report.reference}: {report.top1_agreement:.4f} over {report.samples} samples")
    typer.echo(f"SQNR: {report.sqnr_db:.1f} dB, max abs diff {report.max_abs_diff:.3g}")
    if report.ece is not None:
        typer.echo(f"ECE ({ECE_BINS} bins): {report.ece:.3f} (float reference {report.reference_ece:.3f})")
        if report.temperature is not None:
            typer.echo(f"after temperature scaling (T={report.temperature:.3g}): {report.calibrated_ece:.3f}")


@app.command("optimize")
def optimize_command(
    model: Annotated[Path, typer.Argument(help="Model file: .onnx or .pt2 (torch.export.save).")],
    target: Annotated[str, typer.Option("--target", "-t", help="Preset name (see `edgec targets`), a triple, or a TVM target JSON dict.")],
    eval_data: Annotated[Path, typer.Option("--eval-data", help="FILE.npz: inputs keyed by input name (samples on a new first axis) and 'label' (N,) class indices.")],
    calibration_data: Annotated[Path, typer.Option("--calibration-data", help="FILE.npz of inputs for int8 calibration, as for `edgec compile --quantize int8`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the chosen artifact (DIR/model), report.json, report.md and pareto.png.")],
    max_accuracy_drop: Annotated[float, typer.Option("--max-accuracy-drop", help="Largest accepted top-1 drop against the float model, as a fraction (0.01 = one point).")] = 0.01,
    latency_budget: Annotated[Optional[float], typer.Option("--latency-budget", help="Milliseconds: candidates slower than this at p50 are ruled out.")] = None,
    max_memory: Annotated[Optional[float], typer.Option("--max-memory", help="MB: candidates whose weights plus peak activation memory exceed this are ruled out.")] = None,
    device: DeviceOption = None,
    rpc_tracker: RpcTrackerOption = None,
    rpc_key: RpcKeyOption = None,
    rpc: RpcOption = None,
    timeout: TimeoutOption = 60.0,
    time_budget: Annotated[Optional[float], typer.Option("--time-budget", help="Minutes: no new candidate starts after this; the report lists those not tried.")] = None,
    tune_best: Annotated[int, typer.Option("--tune-best", help="Tune the N fastest candidates in the band on the device, then re-time them.")] = 0,
    tune_trials: Annotated[int, typer.Option("--tune-trials", help="With --tune-best: measured schedules per tuned candidate.")] = 64,
    prune_ratios: Annotated[str, typer.Option("--prune-ratios", help="Structured pruning ratios to try, comma-separated; empty: no pruning.")] = "0.25,0.5,0.75",
    calibration_methods: Annotated[str, typer.Option("--calibration-methods", help="int8 calibration methods to try (percentile, entropy, minmax), comma-separated, the first also with pruning; empty: no int8.")] = "percentile,entropy,minmax",
    finetune_hook: Annotated[Optional[str], typer.Option("--finetune-hook", help="MODULE:FUNCTION(model, ratio, criterion, output_path) -> model path: prunes and fine-tunes your model (PyTorch) and writes it, tried beside post-training pruning.")] = None,
    tuning_log: ExtraTuningLogOption = None,
    untuned: Annotated[bool, typer.Option("--untuned", help="Ignore tuning records: every candidate gets zero-trial default schedules.")] = False,
    try_layouts: Annotated[bool, typer.Option("--try-layouts/--no-try-layouts", help="Also try the preset's conv layout (NCHW/NHWC) and Winograd choice flipped (CPU presets).")] = True,
    input_shape: InputShapeOption = None,
) -> None:
    """Find the fastest build of MODEL for a device inside an accuracy band: fp32, int8, pruned and
    combined candidates, each compiled, evaluated and timed on the device, with a Pareto report."""
    from rich.live import Live

    from compiler.evaluate import load_eval_data
    from compiler.frontends import parse_input_shape
    from compiler.optimize import CALIBRATION_METHODS, EvalSet, OptimizeOptions, optimize
    from compiler.tuning.database import RecordSources
    from targets import resolve_target

    with user_errors():
        preset = resolve_target(target)
        kind, remote = _device(device, rpc_tracker, rpc_key, rpc, timeout)
        shapes = dict(parse_input_shape(text) for text in input_shape or [])
        with console.status(f"importing {model.name}"):
            from compiler.frontends import load_model

            imported = load_model(model, shapes)
        samples, labels = load_eval_data(eval_data, imported.inputs)
        calibration, _ = load_eval_data(calibration_data, imported.inputs, what="calibration data")
        options = OptimizeOptions(
            preset, max_accuracy_drop, tuple(calibration), str(calibration_data), device=kind, remote=remote,
            latency_budget_ms=latency_budget, max_memory_mb=max_memory,
            time_budget_s=None if time_budget is None else time_budget * 60, tune_best=tune_best, tune_trials=tune_trials,
            prune_ratios=_ratios(prune_ratios), calibration_methods=_names(calibration_methods, CALIBRATION_METHODS,
                                                                          "--calibration-methods"),
            finetune_hook=finetune_hook, flip_preset_choices=try_layouts, input_shapes=tuple(shapes.items()),
            tuning_log=None if untuned else RecordSources(extra=tuning_log))
        eval_set = EvalSet(tuple(samples), labels, str(eval_data))
        if console.is_terminal:
            with Live(console=console, refresh_per_second=4, transient=False) as live:
                report = optimize(model, options, eval_set, output, lambda r: live.update(_optimize_table(r)), imported)
        else:  # a log, not a redrawn table: one line per candidate as it is settled
            report = optimize(model, options, eval_set, output, _OptimizeLog(), imported)
            console.print(_optimize_table(report, reasons=False))  # the log lines above gave them
    _print_optimize_summary(report, output)
    if report.chosen is None:
        raise typer.Exit(1)


def _ratios(text: str) -> tuple[float, ...]:
    try:
        ratios = tuple(dict.fromkeys(float(part) for part in text.split(",") if part.strip()))  # once each
    except ValueError:
        raise EdgecError(f"--prune-ratios takes fractions separated by commas (0.25,0.5), got '{text}'") from None
    if any(not 0 < ratio < 1 for ratio in ratios):
        raise EdgecError(f"--prune-ratios must each be in (0, 1), got '{text}'")
    return ratios


def _names(text: str, choices: Sequence[str], option: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))  # once each
    unknown = [name for name in names if name not in choices]
    if unknown:
        raise EdgecError(f"{option}: unknown {', '.join(unknown)}; choose from: {', '.join(choices)}")
    return names


def _optimize_table(report, reasons: bool = True):
    """The live table: one row per candidate, updated as each is compiled, evaluated and timed."""
    from rich.table import Table

    table = Table(title=f"optimize {Path(report.model).name} for {report.preset} on {report.device}: "
                        f"{report.elapsed_s / 60:.1f} min", title_justify="left")
    for column in ("candidate", "status", "top-1", "p50 ms", "x fp32", "MB", *(["why"] if reasons else [])):
        left = column in ("candidate", "status", "why")
        table.add_column(column, justify="left" if left else "right", no_wrap=column != "why",
                         overflow="ellipsis", min_width=12 if column == "why" else None)
    for r in report.results:
        speedup = report.speedup(r)
        table.add_row(r.candidate.name, r.status, "-" if r.top1 is None else f"{r.top1:.2%}",
                      "-" if r.latency_ms is None else f"{r.latency_ms:.4g}", "-" if speedup is None else f"{speedup:.2f}",
                      "-" if r.memory_bytes is None else f"{r.memory_bytes / 1e6:.3g}", *([r.reason] if reasons else []))
    return table


class _OptimizeLog:
    """Prints each candidate once it is settled (in band, rejected, failed, skipped, not tried)."""

    PENDING = frozenset({"pending", "compiling", "evaluating", "timing", "tuning"})

    def __init__(self) -> None:
        self.printed: set[tuple[str, bool]] = set()

    def __call__(self, report) -> None:
        for r in report.results:
            key = (r.candidate.name, r.tune_s is not None)  # again once tuned
            if r.status not in self.PENDING and key not in self.printed:
                self.printed.add(key)
                figures = [] if r.top1 is None else [f"top-1 {r.top1:.2%}"]
                figures += [] if r.latency_ms is None else [f"p50 {r.latency_ms:.4g} ms" + (" tuned" if key[1] else "")]
                console.print(f"[{report.elapsed_s / 60:4.1f} min] {r.candidate.name}: {r.status}"
                              + (f" ({', '.join(figures)})" if figures else "") + (f": {r.reason}" if r.reason else ""),
                              markup=False, highlight=False, soft_wrap=True)


def _print_optimize_summary(report, output: Path) -> None:
    if report.chosen is None:
        console.print(Text.assemble(("error:", "bold red"), " no candidate meets the accuracy band, latency budget and "
                                    f"memory limit; see {output}/report.md"), soft_wrap=True)
        return
    speedup = report.speedup(report.chosen)
    typer.echo(f"chosen: {report.chosen.candidate.name}"
               + (f", {speedup:.2f}x fp32" if speedup else "")
               + f", top-1 {report.chosen.top1:.2%} (float {report.reference['top1']:.2%}) -> {output}/model")
    if report.calibration:
        cal = report.calibration
        typer.echo(f"temperature scaling: T={cal['temperature']:.3f}, ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f} "
                   f"(float model {report.reference.get('ece') or 0:.4f})")
    if report.stopped:
        typer.echo(f"stopped early: {report.stopped}")
    typer.echo(f"report: {output}/report.md, {output}/report.json, {output}/pareto.png")


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
    as_json: Annotated[bool, typer.Option("--json", help="Print the registry as one JSON document.")] = False,
) -> None:
    """List target presets and whether each can run on this machine."""
    from targets import list_presets

    presets = list_presets()
    if as_json:
        _print_json([p.to_json() for p in presets])
        return
    for preset in presets:
        execution = preset.execution_here()
        typer.echo(f"{preset.name:22} {preset.triple:22} {execution.mode:13} {preset.layout:5} {preset.description}")


def _print_version(value: bool) -> None:
    if value:
        from compiler import __version__

        typer.echo(f"edgec {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print edgec's version and exit.")] = False,
) -> None:
    """Compile PyTorch and ONNX models into fast libraries for a specific edge device."""


def main() -> None:
    from compiler.runtime.threads import configure_threads

    configure_threads()  # before any kernel runs: TVM's thread pool reads it once
    app()


if __name__ == "__main__":
    main()
