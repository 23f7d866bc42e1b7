"""`edgec optimize`: the fastest build of a model for a device that stays inside its owner's accuracy band.

Candidates are builds of one model that differ in what edgec's passes do to it: float (fp32), int8 with
each calibration method (the accuracy guard choosing which layers stay float), structured pruning at a
few ratios (post-training, or pruned and fine-tuned by the owner's hook), pruning then int8, and the
preset's layout and Winograd choices flipped. Each candidate is

1. compiled with zero-trial kernels (and the tuning records there are) into a normal artifact;
2. checked against the float model on the evaluation data: top-1 accuracy against the labels, top-1
   agreement with the float model, SQNR of the first output, expected calibration error (ECE);
3. ruled out when its top-1 drop exceeds the band, or its weights plus planned activations exceed
   `max_memory_mb`; a candidate ruled out is not timed;
4. timed on the device (p50 and p90 over enough runs for a second of timing); under qemu, guest
   instructions per inference rank the candidates (emulated time is not the device's) and the
   emulated times are reported beside them.

Candidates that their cheaper neighbours already put out of the band are skipped (a larger pruning
ratio after a smaller one failed, pruned int8 after int8 alone failed with that calibration). The
search stops taking candidates at the time budget and says which it did not try. The best
`tune_best` candidates can then be tuned on the device and re-timed. The fastest candidate in the
band (and under the latency budget) is copied to `DIR/model`, with a softmax temperature fitted on the
evaluation data in its manifest; `DIR/report.json`, `DIR/report.md` and `DIR/pareto.png` say what was
tried and why each candidate was or was not chosen.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from compiler.errors import EdgecError, InputError
from compiler.evaluate import (ECE_BINS, class_logits, expected_calibration_error, is_class_scores, reference_runner,
                               softmax, sqnr_db, top1)
from compiler.frontends import ImportedModel, load_model
from compiler.runtime import RemoteSpec
from compiler.specs import DEVICES, BenchSpec
from targets import Preset

log = logging.getLogger("edgec.optimize")

PRUNE_RATIOS = (0.25, 0.5, 0.75)
CALIBRATION_METHODS = ("percentile", "entropy", "minmax")
TIMING_S = 1.0  # timed runs per candidate: enough for about this many seconds, within the bounds below
MIN_RUNS, MAX_RUNS = 30, 1000
CONFIRM_ROUNDS = 5
MODEL_DIR, REPORT_JSON, REPORT_MD, PLOT_PNG = "model", "report.json", "report.md", "pareto.png"
# (source model, pruning ratio, criterion, output path) -> the pruned, fine-tuned model written there
FinetuneHook = Callable[[Path, float, str, Path], Path]


@dataclass(frozen=True)
class Candidate:
    """One build to try: what differs from fp32 with the preset's own choices."""

    quantize: str | None = None  # int8 with this calibration method; None: float
    prune: float | None = None  # fraction of each prunable conv's output channels removed
    finetuned: bool = False  # the pruned model comes from the fine-tune hook, not from edgec's pass
    winograd: bool | None = None  # None: the preset's choice
    layout: str | None = None  # None: the preset's

    @property
    def name(self) -> str:
        parts = [f"prune{self.prune:g}" + ("-ft" if self.finetuned else "")] if self.prune else []
        parts += [self.layout] if self.layout else []
        parts += [] if self.winograd is None else ["winograd" if self.winograd else "no-winograd"]
        return "+".join([*parts, f"int8-{self.quantize}" if self.quantize else "fp32"])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EvalSet:
    """Labelled evaluation samples (compiler.evaluate.load_eval_data)."""

    samples: tuple[Mapping[str, np.ndarray], ...] = field(repr=False)
    labels: np.ndarray = field(repr=False)
    source: str

    def __post_init__(self) -> None:
        if self.labels is None:
            raise InputError(f"evaluation data '{self.source}' has no 'label' array; optimize measures top-1 accuracy "
                             "and calibration against labels: add label=(N,) class indices to the .npz")
        if not self.samples:
            raise InputError(f"evaluation data '{self.source}' holds no samples")
        if self.labels.dtype.kind not in "iu" or (self.labels < 0).any():
            raise InputError(f"evaluation data '{self.source}': 'label' must hold class indices (integers >= 0), "
                             f"got {self.labels.dtype}{' with negatives' if self.labels.dtype.kind in 'iuf' and (self.labels < 0).any() else ''}")


@dataclass(frozen=True)
class OptimizeOptions:
    """What `edgec optimize` was asked for."""

    preset: Preset
    max_drop: float  # largest accepted top-1 drop against the float model, as a fraction
    calibration: tuple[Mapping[str, np.ndarray], ...] = field(repr=False)
    calibration_source: str = ""
    device: str = "local"
    remote: RemoteSpec | None = None
    latency_budget_ms: float | None = None
    max_memory_mb: float | None = None
    time_budget_s: float | None = None
    tune_best: int = 0
    tune_trials: int = 64  # measured candidates per tuned build
    prune_ratios: tuple[float, ...] = PRUNE_RATIOS
    calibration_methods: tuple[str, ...] = CALIBRATION_METHODS
    finetune_hook: str | None = None  # MODULE:FUNCTION(model, ratio, criterion, output) -> model path
    flip_preset_choices: bool = True  # also try the preset's conv layout and Winograd choice flipped
    # The tuning databases compiles read (compiler.tuning.database.RecordSources); None: none (--untuned)
    tuning_log: Any = field(default_factory=lambda: _default_sources())
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()  # --input-shape, for symbolic dims

    def __post_init__(self) -> None:
        checks = (
            (0 <= self.max_drop < 1, f"--max-accuracy-drop is a fraction in [0, 1) (0.01 = one point), got {self.max_drop}"),
            (self.device in DEVICES, f"unknown device '{self.device}'; choose from: {', '.join(DEVICES)}"),
            (self.latency_budget_ms is None or self.latency_budget_ms > 0, f"--latency-budget must be more than 0 ms, got {self.latency_budget_ms}"),
            (self.max_memory_mb is None or self.max_memory_mb > 0, f"--max-memory must be more than 0 MB, got {self.max_memory_mb}"),
            (self.time_budget_s is None or self.time_budget_s > 0, "--time-budget must be more than 0 minutes"),
            (self.tune_best >= 0, f"--tune-best must be >= 0, got {self.tune_best}"),
            (self.tune_trials >= 1, f"--tune-trials must be at least 1, got {self.tune_trials}"),
            (not (self.tune_best and self.device == "qemu"), "--tune-best measures kernels on the device: use --device local or rpc (an emulated device times nothing real)"),
            (not (self.latency_budget_ms and self.device == "qemu"), "--latency-budget is a time on the device, and qemu's is not: under --device qemu guest instructions rank the candidates; drop --latency-budget or use --device rpc"),
            (bool(self.calibration), f"calibration data '{self.calibration_source}' holds no samples"),
        )
        for ok, message in checks:
            if not ok:
                raise InputError(message)


@dataclass
class CandidateResult:
    """What happened to one candidate; `status` is one of STATUSES."""

    candidate: Candidate
    status: str = "pending"
    reason: str = ""
    top1: float | None = None
    agreement: float | None = None
    sqnr_db: float | None = None
    ece: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    instructions: float | None = None  # guest instructions per inference (qemu)
    weights_bytes: int | None = None
    peak_activation_bytes: int | None = None
    peak_rss_bytes: int | None = None
    compile_s: float | None = None
    eval_s: float | None = None
    bench_s: float | None = None
    tune_s: float | None = None
    tuned_p50_ms: float | None = None
    tuned_p90_ms: float | None = None
    kept_float: tuple[str, ...] = ()
    artifact: Path | None = None
    library_sha256: str | None = None
    speedup_over_fp32: float | None = None  # from interleaved rounds with fp32 (Optimizer._confirm)
    config: Any = field(default=None, repr=False)  # its resolved PipelineConfig: tuning must see the same kernels
    outputs: list[np.ndarray] | None = field(default=None, repr=False)  # first output per evaluation sample

    @property
    def memory_bytes(self) -> int | None:
        if self.weights_bytes is None:
            return None
        return self.weights_bytes + (self.peak_activation_bytes or 0)

    @property
    def latency_ms(self) -> float | None:
        """The latency that ranks it: tuned when it was tuned."""
        return self.tuned_p50_ms if self.tuned_p50_ms is not None else self.p50_ms

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_REPORTED}
        data.update(name=self.candidate.name, settings=self.candidate.to_json(), memory_bytes=self.memory_bytes,
                    kept_float=list(self.kept_float))
        if self.sqnr_db is not None and math.isinf(self.sqnr_db):
            data["sqnr_db"] = None  # identical outputs: JSON has no infinity
        return data


_NOT_REPORTED = frozenset({"candidate", "artifact", "config", "outputs"})
STATUSES = ("pending", "compiling", "evaluating", "timing", "tuning", "in band", "chosen", "rejected", "failed",
            "skipped", "not tried")


@dataclass
class OptimizeReport:
    """Every candidate and the choice; `chosen` is None when no candidate met every constraint."""

    model: str
    preset: str
    device: str
    options: dict[str, Any]
    reference: dict[str, Any]
    results: list[CandidateResult]
    cpu: str
    chosen: CandidateResult | None = None
    elapsed_s: float = 0.0
    stopped: str | None = None  # why candidates were left untried
    calibration: dict[str, Any] | None = None  # the chosen build's temperature scaling
    accuracy_measured_on: str = ""

    @property
    def fp32(self) -> CandidateResult | None:
        return next((r for r in self.results if r.candidate == Candidate() and r.latency_ms is not None), None)

    def speedup(self, result: CandidateResult) -> float | None:
        if result.speedup_over_fp32 is not None:
            return result.speedup_over_fp32
        fp32 = self.fp32
        if fp32 is None or result.latency_ms is None:
            return None
        if result.instructions is not None and fp32.instructions is not None:
            return fp32.instructions / result.instructions
        return fp32.latency_ms / result.latency_ms

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "target": self.preset, "device": self.device, "cpu": self.cpu,
            "options": self.options, "reference": self.reference, "accuracy_measured_on": self.accuracy_measured_on,
            "elapsed_s": self.elapsed_s, "stopped": self.stopped,
            "chosen": None if self.chosen is None else self.chosen.candidate.name,
            "chosen_speedup_over_fp32": None if self.chosen is None else self.speedup(self.chosen),
            "calibration": self.calibration,
            "pareto_front": [r.candidate.name for r in pareto_front(self.results)],
            "candidates": [{**r.to_json(), "speedup_over_fp32": self.speedup(r)} for r in self.results],
        }


def speed(result: CandidateResult) -> float:
    """What ranks a timed candidate: guest instructions under qemu, else its p50 (tuned where tuned)."""
    return result.instructions if result.instructions is not None else result.latency_ms


def pareto_front(results: Iterable[CandidateResult]) -> list[CandidateResult]:
    """Timed candidates no other timed one beats on both speed and top-1 (fastest first)."""
    timed = sorted((r for r in results if r.latency_ms is not None and r.top1 is not None),
                   key=lambda r: (speed(r), -r.top1))
    front, best_top1 = [], -1.0
    for result in timed:
        if result.top1 > best_top1:
            front.append(result)
            best_top1 = result.top1
    return front


def candidates(options: OptimizeOptions, preset: Preset) -> list[Candidate]:
    """The candidates in the order they are tried: the likely winners first, since the time budget may
    end the search."""
    methods = options.calibration_methods
    first = methods[0] if methods else None
    found = [Candidate()]
    found += [Candidate(quantize=first)] if first else []
    for ratio in options.prune_ratios:
        found += [Candidate(prune=ratio), *([Candidate(quantize=first, prune=ratio)] if first else [])]
    if options.finetune_hook:
        for ratio in options.prune_ratios:
            found += [Candidate(prune=ratio, finetuned=True),
                      *([Candidate(quantize=first, prune=ratio, finetuned=True)] if first else [])]
    found += [Candidate(quantize=method) for method in methods[1:]]
    if options.flip_preset_choices and preset.device == "cpu":
        found.append(Candidate(winograd=not preset.winograd))
        other = "NCHW" if preset.layout == "NHWC" else "NHWC"
        found += [Candidate(layout=other), *([Candidate(quantize=first, layout=other)] if first else [])]
    return found


def skip_reason(candidate: Candidate, done: Sequence[CandidateResult]) -> str | None:
    """Why a cheaper neighbour already rules `candidate` out of the accuracy band, if one does."""
    out = [r.candidate for r in done if r.status == "rejected" and r.reason.startswith("accuracy")]
    for other in out:
        same_kind = other.finetuned == candidate.finetuned and other.layout is None and other.winograd is None
        if (same_kind and other.prune and candidate.prune and other.prune <= candidate.prune
                and (other.quantize is None or other.quantize == candidate.quantize)):
            return f"{other.name} is already out of the band"
        if other.quantize and other.quantize == candidate.quantize and not other.prune and candidate.prune \
                and other.layout is None and other.winograd is None:
            return f"{other.name} is already out of the band"
    return None


class Optimizer:
    """One search (see the module docstring); `on_update(report)` is called whenever a candidate's state
    changes, for a live display."""

    def __init__(self, model_path: Path, options: OptimizeOptions, eval_set: EvalSet, out_dir: Path,
                 on_update: Callable[[OptimizeReport], None] | None = None, imported: ImportedModel | None = None):
        from compiler.tuning.provenance import cpu_name

        self.model_path = Path(model_path)
        self.options = options
        self.eval_set = eval_set
        self.out_dir = Path(out_dir)
        self.on_update = on_update or (lambda report: None)
        self.started = time.monotonic()
        self.hook = load_hook(options.finetune_hook) if options.finetune_hook else None  # a typo fails now, not later
        self.work = Path(tempfile.mkdtemp(prefix=".edgec-optimize-", dir=self._prepare_out_dir()))
        self.models: dict[tuple[float, bool], ImportedModel] = {} if imported is None else {(0.0, False): imported}
        self.model_files: dict[tuple[float, bool], Path] = {}  # the fine-tune hook's models
        self.report = OptimizeReport(model=str(self.model_path), preset=options.preset.name, device=self._device_name(),
                                     options=_options_json(options), reference={}, results=[], cpu=cpu_name())

    def run(self) -> OptimizeReport:
        try:
            self._search()
        finally:
            self.report.elapsed_s = time.monotonic() - self.started
            shutil.rmtree(self.work, ignore_errors=True)
            write_reports(self.report, self.out_dir)
        return self.report

    # --- the search -------------------------------------------------------------------------------------

    def _search(self) -> None:
        if (0.0, False) not in self.models:
            self.models[(0.0, False)] = load_model(self.model_path, dict(self.options.input_shapes))
        imported = self.models[(0.0, False)]
        self._reference(imported)
        self.report.results = [CandidateResult(c) for c in candidates(self.options, self.options.preset)]
        self._update()
        for index, result in enumerate(self.report.results):
            if self._out_of_time():
                self.report.stopped = f"time budget of {self.options.time_budget_s / 60:g} min reached"
                for left in self.report.results[index:]:
                    left.status, left.reason = "not tried", "the time budget ran out before it"
                break
            reason = skip_reason(result.candidate, self.report.results[:index])
            if reason:
                result.status, result.reason = "skipped", reason
            else:
                self._try(result)
            self._update()
        self._tune_best()
        self._confirm()
        self._choose()

    def _reference(self, imported: ImportedModel) -> None:
        """The float model's outputs on the evaluation data, its top-1 accuracy and ECE."""
        run = reference_runner(self.model_path, imported.inputs)
        outputs = [np.asarray(run(sample)[0]) for sample in self.eval_set.samples]
        self.reference_outputs = outputs
        logits = class_logits(outputs)
        classes = outputs[0].size
        if logits is not None and int(self.eval_set.labels.max()) >= classes:
            raise InputError(f"evaluation data '{self.eval_set.source}': label {int(self.eval_set.labels.max())} is not "
                             f"a class of the model's first output ({classes} classes, 0-{classes - 1})")
        self.report.reference = {
            "engine": "onnxruntime" if self.model_path.suffix.lower() == ".onnx" else "PyTorch",
            "eval_data": self.eval_set.source, "samples": len(outputs),
            "top1": float((top1(outputs) == self.eval_set.labels).mean()),
            "ece": None if logits is None else expected_calibration_error(softmax(logits), self.eval_set.labels, ECE_BINS),
            "band_floor": None,
        }
        self.report.reference["band_floor"] = self.report.reference["top1"] - self.options.max_drop
        self.report.accuracy_measured_on = (
            "this machine, on the same graph (qemu starts a process per inference; integer kernels are exact)"
            if self.options.device == "qemu" else f"the device ({self._device_name()})")

    def _try(self, result: CandidateResult) -> None:
        """Compile, rule out by memory, evaluate, rule out by accuracy, time, rule out by latency."""
        try:
            built = self._compile(result)
            if built is None:
                return
            imported, config = built
            rejection = self._memory_rejection(result)
            if rejection is None:
                self._set(result, "evaluating")
                began = time.monotonic()
                outputs = self._eval_outputs(result.artifact, imported, config)
                result.eval_s = time.monotonic() - began
                self._score(result, outputs)
                rejection = self._accuracy_rejection(result)
            if rejection is None:
                self._set(result, "timing")
                self._time(result, result.artifact)
                rejection = self._latency_rejection(result)
            if rejection is not None:
                result.status, result.reason = "rejected", rejection
                return
            result.status, result.config = "in band", config
        except EdgecError as err:  # a device that died, a layer TVM rejects: this candidate only
            result.status, result.reason = "failed", f"{type(err).__name__}: {err}"
            log.warning("candidate %s failed: %s", result.candidate.name, err)

    def _compile(self, result: CandidateResult):
        """(imported model, resolved pipeline config) of the compiled candidate; None when its library is
        byte for byte one already tried (a flipped choice the model has nothing to apply to)."""
        from compiler.accuracy import AccuracyGuard, guard_quantization
        from compiler.build import CompileOptions, compile_model

        candidate, preset = result.candidate, self.options.preset
        self._set(result, "compiling")
        began = time.monotonic()
        imported = self._model_for(candidate)
        guard = AccuracyGuard(self.eval_set.samples, self.eval_set.labels, self.options.max_drop, self.eval_set.source)
        config, _ = guard_quantization(imported.mod, self._pipeline(candidate).for_preset(preset),
                                       guard if candidate.quantize else None)
        result.kept_float = tuple(config.quantize.keep_float) if config.quantize else ()
        result.artifact = self.work / candidate.name
        manifest = compile_model(imported, CompileOptions(preset, config), result.artifact)
        result.compile_s = time.monotonic() - began
        result.library_sha256 = manifest.files[manifest.library]
        memory = manifest.memory or {}
        result.weights_bytes, result.peak_activation_bytes = memory.get("weights_bytes"), memory.get("peak_activation_bytes")
        twin = next((r for r in self.report.results if r is not result and r.library_sha256 == result.library_sha256), None)
        if twin is not None:
            result.status, result.reason = "skipped", f"the same library as {twin.candidate.name}"
            return None
        return imported, config

    def _set(self, result: CandidateResult, status: str) -> None:
        result.status = status
        self._update()

    def _pipeline(self, candidate: Candidate):
        from compiler.pipeline import PipelineConfig
        from passes import LayoutConfig, PruneConfig, QuantizeConfig, WinogradConfig

        quantize = None
        if candidate.quantize:
            quantize = QuantizeConfig(self.options.calibration, candidate.quantize, source=self.options.calibration_source)
        return PipelineConfig(
            prune=PruneConfig(candidate.prune) if candidate.prune and not candidate.finetuned else None,
            quantize=quantize,
            layout=LayoutConfig(candidate.layout) if candidate.layout else None,
            winograd=WinogradConfig(enabled=candidate.winograd) if candidate.winograd is not None else None,
            tuning_log=self.options.tuning_log,
        )

    def _model_for(self, candidate: Candidate) -> ImportedModel:
        """The imported model, or the fine-tune hook's pruned model for `candidate.prune` (made once)."""
        key = (candidate.prune, True) if candidate.finetuned else (0.0, False)
        if key not in self.models:
            output = self.work / f"{self.model_path.stem}-prune{candidate.prune:g}-ft{self.model_path.suffix.lower()}"
            try:
                path = Path(self.hook(self.model_path, candidate.prune, "l1", output))
            except Exception as err:  # noqa: BLE001  (the owner's code: its failure fails this candidate only)
                raise InputError(f"--finetune-hook {self.options.finetune_hook} failed for ratio {candidate.prune:g}: "
                                 f"{type(err).__name__}: {err}") from err
            model = load_model(path, dict(self.options.input_shapes))
            reference = self.models[(0.0, False)]
            if [s.shape for s in model.inputs] != [s.shape for s in reference.inputs]:
                raise InputError(f"--finetune-hook's model for ratio {candidate.prune:g} takes other inputs than '{self.model_path.name}'")
            self.models[key], self.model_files[key] = model, path
        return self.models[key]

    def _eval_outputs(self, artifact: Path, imported: ImportedModel, config) -> list[np.ndarray]:
        """The first output on every evaluation sample: on the device, or (qemu) on this machine."""
        if self.options.device == "qemu":
            from compiler.pipeline import run_graph_passes
            from passes.quantize import run_on_host

            graph = run_graph_passes(imported.mod, replace(config, dump_ir=None))
            return [outputs[0] for outputs in run_on_host(graph, self.eval_set.samples)]
        from compiler.runtime import open_model

        with open_model(artifact, self.options.device, self.options.remote) as model:
            first = model.manifest.outputs[0].name
            return [model.run(sample)[first] for sample in self.eval_set.samples]

    def _score(self, result: CandidateResult, outputs: Sequence[np.ndarray]) -> None:
        labels, reference = self.eval_set.labels, self.reference_outputs
        ours = top1(outputs)
        result.top1 = float((ours == labels).mean())
        result.agreement = float((ours == top1(reference)).mean())
        result.sqnr_db = sqnr_db(outputs, reference)
        logits = class_logits(outputs)
        result.ece = None if logits is None else expected_calibration_error(softmax(logits), labels, ECE_BINS)
        result.outputs = list(outputs)

    def _memory_rejection(self, result: CandidateResult) -> str | None:
        budget = self.options.max_memory_mb
        if budget is not None and result.memory_bytes is not None and result.memory_bytes > budget * 1e6:
            return f"memory: weights + peak activations {result.memory_bytes / 1e6:.3g} MB over the limit of {budget:g} MB"
        return None

    def _accuracy_rejection(self, result: CandidateResult) -> str | None:
        drop = self.report.reference["top1"] - result.top1
        if drop > self.options.max_drop + 1e-9:
            return (f"accuracy: top-1 {result.top1:.2%} is {drop * 100:.2f} points under the float model's, "
                    f"band {self.options.max_drop * 100:g}")
        return None

    def _latency_rejection(self, result: CandidateResult) -> str | None:
        budget = self.options.latency_budget_ms
        if budget is not None and result.latency_ms > budget:
            return f"latency: p50 {result.latency_ms:.3g} ms over the budget of {budget:g} ms"
        return None

    def _time(self, result: CandidateResult, artifact: Path, tuned: bool = False) -> None:
        """p50/p90 on the device over enough runs for about TIMING_S seconds; instructions under qemu."""
        from compiler.bench import count_instructions, random_inputs
        from compiler.runtime import open_model

        began = time.monotonic()
        with open_model(artifact, self.options.device, self.options.remote) as model:
            inputs = random_inputs(model.manifest.inputs)
            probe = model.bench(inputs, BenchSpec(warmup=3, runs=5))
            runs = MIN_RUNS if self.options.device == "qemu" else int(min(MAX_RUNS, max(MIN_RUNS, TIMING_S * 1e3 / max(probe.p50, 1e-3))))
            stats = model.bench(inputs, BenchSpec(warmup=10, runs=runs))
        if tuned:
            result.tuned_p50_ms, result.tuned_p90_ms = stats.p50, stats.p90
        else:
            result.p50_ms, result.p90_ms = stats.p50, stats.p90
            result.peak_rss_bytes = getattr(stats, "peak_rss_bytes", None)
            if self.options.device == "qemu":
                result.instructions = count_instructions(artifact).per_run
        result.bench_s = (result.bench_s or 0) + time.monotonic() - began

    def _tune_best(self) -> None:
        """Tune the `tune_best` fastest candidates in the band on the device, then re-time them."""
        from compiler.build import CompileOptions, compile_model
        from compiler.tuning import TuneOptions, tune_model
        from compiler.tuning.database import RecordSources

        best = sorted((r for r in self.report.results if r.status == "in band"), key=_rank)[:self.options.tune_best]
        for result in best:
            if self._out_of_time():
                self.report.stopped = self.report.stopped or "time budget reached before tuning"
                return
            try:
                result.status = "tuning"
                self._update()
                began = time.monotonic()
                imported = self._model_for(result.candidate)
                # each kernel gets at least one batch: batches no larger than the trials asked for
                tune_model(imported, TuneOptions(self.options.preset, trials=self.options.tune_trials,
                                                 trials_per_iter=min(16, self.options.tune_trials),
                                                 remote=self.options.remote if self.options.device == "rpc" else None,
                                                 pipeline=result.config))
                # compiled again reading the records just made (the user's database, even after --untuned)
                sources = result.config.tuning_log or RecordSources(shipped=False)
                compile_model(imported, CompileOptions(self.options.preset, replace(result.config, tuning_log=sources)),
                              result.artifact)
                result.tune_s = time.monotonic() - began
                self._time(result, result.artifact, tuned=True)
            except EdgecError as err:
                result.reason = f"tuning failed ({type(err).__name__}: {err}); untuned figures kept"
            result.status = "in band"
            self._update()

    def _confirm(self, rounds: int = CONFIRM_ROUNDS) -> None:
        """Here (local device): time fp32 and the candidates in the band again, together, in `rounds`
        interleaved rounds, each round rotating which goes first; each candidate's speedup is the median
        over rounds of fp32's time / its time in that round. A shared host's speed drifts between
        minutes, and each candidate was first timed in different ones."""
        from compiler.bench import random_inputs
        from compiler.runtime import open_model

        fp32 = next((r for r in self.report.results if r.candidate == Candidate() and r.p50_ms is not None), None)
        contenders = [r for r in self.report.results if r.status == "in band" and r is not fp32]
        if self.options.device != "local" or fp32 is None or not contenders:
            return
        timed = [fp32, *contenders]
        samples: list[list[float]] = [[] for _ in timed]
        per_round: list[list[float]] = [[] for _ in timed]
        with contextlib.ExitStack() as stack:
            models = [stack.enter_context(open_model(r.artifact)) for r in timed]
            inputs = [random_inputs(m.manifest.inputs) for m in models]
            for round_index in range(rounds):
                order = list(range(len(timed)))
                order = order[round_index % len(order):] + order[:round_index % len(order)]
                for i in order:
                    runs = max(10, int(min(MAX_RUNS, TIMING_S * 1e3 / max(timed[i].latency_ms, 1e-3))) // rounds)
                    models[i].latencies(inputs[i], repeat=3)  # warm its caches after the previous candidate
                    seconds = models[i].latencies(inputs[i], repeat=runs)
                    samples[i] += [s * 1e3 for s in seconds]
                    per_round[i].append(float(np.median(seconds)))
        for result, mine, rounds_ms in zip(timed, samples, per_round):
            field_p50, field_p90 = ("tuned_p50_ms", "tuned_p90_ms") if result.tuned_p50_ms is not None else ("p50_ms", "p90_ms")
            setattr(result, field_p50, float(np.percentile(mine, 50)))
            setattr(result, field_p90, float(np.percentile(mine, 90)))
            result.speedup_over_fp32 = float(np.median([f / m for f, m in zip(per_round[0], rounds_ms)]))

    def _choose(self) -> None:
        from compiler.artifact import atomic_directory

        in_band = [r for r in self.report.results if r.status == "in band"]
        if not in_band:
            stale = self.out_dir / MODEL_DIR
            if (stale / "manifest.json").is_file():  # an earlier search's choice: not this one's
                shutil.rmtree(stale)
            return
        chosen = min(in_band, key=_rank)
        source = self.model_files.get((chosen.candidate.prune, True)) if chosen.candidate.finetuned else None
        if source is not None:  # the artifact's source model: kept beside it, for `edgec evaluate`
            shutil.copyfile(source, self.out_dir / source.name)
        with atomic_directory(self.out_dir / MODEL_DIR) as staging:
            shutil.copytree(chosen.artifact, staging, dirs_exist_ok=True)
            if source is not None:
                _point_at_source(staging, self.out_dir / source.name)
            self.report.calibration = store_temperature(staging, chosen.outputs, self.eval_set)
        chosen.status, self.report.chosen = "chosen", chosen
        self._update()

    # --- helpers ----------------------------------------------------------------------------------------

    def _prepare_out_dir(self) -> Path:
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise InputError(f"output '{self.out_dir}' exists and is not a directory; choose another -o")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self.out_dir

    def _update(self) -> None:
        self.report.elapsed_s = time.monotonic() - self.started
        self.on_update(self.report)

    def _out_of_time(self) -> bool:
        budget = self.options.time_budget_s
        return budget is not None and time.monotonic() - self.started >= budget

    def _device_name(self) -> str:
        remote = self.options.remote
        return remote.describe() if self.options.device == "rpc" and remote else self.options.device


def _default_sources():
    from compiler.tuning.database import RecordSources

    return RecordSources()


def _rank(result: CandidateResult) -> tuple[float, float]:
    """Fewest guest instructions under qemu, else the best speedup over fp32 from interleaved rounds,
    else lowest p50; higher top-1 breaks ties."""
    if result.instructions is not None:
        return result.instructions, -(result.top1 or 0.0)
    if result.speedup_over_fp32 is not None:
        return 1 / result.speedup_over_fp32, -(result.top1 or 0.0)
    return result.latency_ms, -(result.top1 or 0.0)


def store_temperature(artifact: Path, outputs: Sequence[np.ndarray], eval_set: EvalSet) -> dict[str, Any] | None:
    """Fit a softmax temperature on the evaluation outputs and record it in the artifact's manifest
    (classifiers only: None for other outputs)."""
    from compiler.calibration import store_calibration

    if not is_class_scores(outputs):
        return None
    return store_calibration(artifact, outputs, eval_set.labels, eval_set.source)


def _point_at_source(artifact: Path, model: Path) -> None:
    """The manifest's source model moved (from the search's work directory to beside the artifact)."""
    from compiler.artifact import read_manifest, write_manifest

    manifest = read_manifest(artifact)
    write_manifest(artifact, replace(manifest, model={**manifest.model, "path": str(model.resolve())}))


def load_hook(spec: str | None) -> FinetuneHook:
    """MODULE:FUNCTION, importable from here (the working directory is on the path)."""
    import sys

    if not spec or ":" not in spec:
        raise InputError(f"--finetune-hook must be MODULE:FUNCTION (e.g. examples.prune_finetune:finetune_hook), got {spec!r}")
    module_name, _, function = spec.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        hook = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as err:
        raise InputError(f"cannot load --finetune-hook '{spec}' ({err}); give MODULE:FUNCTION importable from here") from err
    return hook


def _options_json(options: OptimizeOptions) -> dict[str, Any]:
    return {
        "max_accuracy_drop": options.max_drop, "latency_budget_ms": options.latency_budget_ms,
        "max_memory_mb": options.max_memory_mb, "time_budget_min": None if options.time_budget_s is None else options.time_budget_s / 60,
        "tune_best": options.tune_best, "tune_trials": options.tune_trials, "prune_ratios": list(options.prune_ratios),
        "calibration_methods": list(options.calibration_methods), "finetune_hook": options.finetune_hook,
        "calibration_data": options.calibration_source, "flip_preset_choices": options.flip_preset_choices,
        "tuning_records": "none (zero-trial)" if options.tuning_log is None else [label for label, _ in options.tuning_log.roots()],
    }


def optimize(model_path: Path, options: OptimizeOptions, eval_set: EvalSet, out_dir: Path,
             on_update: Callable[[OptimizeReport], None] | None = None,
             imported: ImportedModel | None = None) -> OptimizeReport:
    """Search the candidates (module docstring); the reports are in `out_dir` whatever happens.
    `imported`: the model at `model_path` already imported with `options.input_shapes` (else imported here)."""
    return Optimizer(model_path, options, eval_set, out_dir, on_update, imported).run()


# --- reports ------------------------------------------------------------------------------------------------

def write_reports(report: OptimizeReport, out_dir: Path) -> None:
    """report.json, pareto.png and report.md, each written through a temporary file."""
    import json

    from compiler.artifact import write_bytes_atomic

    out_dir = Path(out_dir)
    write_bytes_atomic(out_dir / REPORT_JSON, (json.dumps(report.to_json(), indent=2) + "\n").encode())
    plotted = plot_pareto(report, out_dir / PLOT_PNG)
    if not plotted:
        (out_dir / PLOT_PNG).unlink(missing_ok=True)  # an earlier search's
    write_bytes_atomic(out_dir / REPORT_MD, markdown(report, PLOT_PNG if plotted else None).encode())


def markdown(report: OptimizeReport, plot: str | None) -> str:
    reference = report.reference
    lines = [f"# edgec optimize: {Path(report.model).name} for {report.preset} on {report.device}", ""]
    if not reference:
        return "\n".join([*lines, "The search stopped before the float model was evaluated: no candidate was tried.", ""])
    if report.chosen is not None:
        speedup = report.speedup(report.chosen)
        lines.append(f"**Chosen: `{report.chosen.candidate.name}`**, "
                     + (f"{speedup:.2f}x fp32, " if speedup else "")
                     + f"top-1 {report.chosen.top1:.2%} against the float model's {reference['top1']:.2%} "
                     f"(band: {report.options['max_accuracy_drop'] * 100:g} points). Artifact: `{MODEL_DIR}/`.")
    else:
        lines.append("**No candidate meets every constraint** (accuracy band, latency budget, memory limit); "
                     "see the reasons below. No artifact was written.")
    lines += ["", f"CPU: {report.cpu}. Search: {report.elapsed_s / 60:.1f} min. "
              f"Accuracy measured on {report.accuracy_measured_on}, {reference.get('samples')} samples of "
              f"`{reference.get('eval_data')}`; float reference ({reference.get('engine')}): top-1 {reference['top1']:.2%}"
              + (f", ECE {reference['ece']:.4f}" if reference.get("ece") is not None else "") + "."]
    if report.stopped:
        lines += ["", f"Stopped early: {report.stopped}."]
    if report.calibration:
        cal = report.calibration
        lines += ["", f"Temperature scaling of the chosen build: T = {cal['temperature']:.3f}, ECE ({cal['bins']} bins) "
                  f"{cal['ece_before']:.4f} -> {cal['ece_after']:.4f} (float model {reference.get('ece') or 0:.4f})."]
    if plot:
        lines += ["", f"![latency vs top-1, Pareto front marked]({plot})"]
    qemu = any(r.instructions is not None for r in report.results)
    header = ["candidate", "status", "top-1", "agree", "SQNR dB", "ECE", "p50 ms", "p90 ms",
              *(["M instr"] if qemu else []), "x fp32", "memory MB", "compile s", "tune s", "why"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in report.results:
        speedup = report.speedup(r)
        cells = [f"`{r.candidate.name}`", r.status, _pct(r.top1), _pct(r.agreement), _num(r.sqnr_db, ".1f"),
                 _num(r.ece, ".4f"), _num(r.latency_ms, ".4g"), _num(r.tuned_p90_ms or r.p90_ms, ".4g"),
                 *([_num(None if r.instructions is None else r.instructions / 1e6, ".4g")] if qemu else []),
                 _num(speedup, ".2f"), _num(None if r.memory_bytes is None else r.memory_bytes / 1e6, ".3g"),
                 _num(r.compile_s, ".0f"), _num(r.tune_s, ".0f"), r.reason.replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "top-1 against the labels; agree: top-1 agreement with the float model; memory: weights plus "
              "the peak of TVM's activation memory plan; p50/p90 after tuning where a candidate was tuned.", ""]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _num(value: float | None, spec: str) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else format(value, spec)


def plot_pareto(report: OptimizeReport, path: Path) -> bool:
    """Latency (or guest instructions) against top-1 for every timed candidate, the Pareto front joined,
    the band's floor dashed and the chosen build starred; False when nothing was timed."""
    import io

    import matplotlib

    matplotlib.use("Agg")  # no display: the PNG is the product
    from matplotlib import pyplot as plt

    from compiler.artifact import write_bytes_atomic

    timed = [r for r in report.results if r.latency_ms is not None and r.top1 is not None]
    if not timed:
        return False
    qemu = all(r.instructions is not None for r in timed)
    x = (lambda r: speed(r) / 1e6) if qemu else speed
    figure, axes = plt.subplots(figsize=(8, 5), dpi=110)
    for status, color in (("in band", "tab:blue"), ("chosen", "tab:blue"), ("rejected", "tab:red")):
        group = [r for r in timed if r.status == status]
        if group:
            axes.scatter([x(r) for r in group], [r.top1 * 100 for r in group], color=color, s=30, zorder=3,
                         label="in band" if status == "in band" else status if status == "rejected" else None)
    front = pareto_front(timed)
    axes.plot([x(r) for r in front], [r.top1 * 100 for r in front], color="tab:green", drawstyle="steps-post",
              label="Pareto front", zorder=2)
    for r in timed:
        axes.annotate(r.candidate.name, (x(r), r.top1 * 100), fontsize=7, xytext=(4, 3), textcoords="offset points")
    if report.chosen is not None and report.chosen.latency_ms is not None:
        axes.scatter([x(report.chosen)], [report.chosen.top1 * 100], marker="*", s=260, color="gold",
                     edgecolor="black", zorder=4, label=f"chosen: {report.chosen.candidate.name}")
    floor = report.reference.get("band_floor")
    if floor is not None:
        axes.axhline(floor * 100, color="tab:red", linestyle="--", linewidth=1, label="band floor")
        axes.axhline(report.reference["top1"] * 100, color="gray", linestyle=":", linewidth=1, label="float model")
    accuracies = [r.top1 * 100 for r in timed] + ([floor * 100] if floor is not None else [])
    axes.set_ylim(min(accuracies) - 1, min(100.5, max(accuracies) + 1))
    axes.set_xlabel("guest instructions per inference, millions (qemu)" if qemu else f"p50 latency, ms ({report.device})")
    axes.set_ylabel("top-1 accuracy, %")
    axes.set_title(f"{Path(report.model).name} on {report.preset}: latency vs accuracy")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())
    return True
