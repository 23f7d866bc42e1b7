"""The one place where passes are ordered: edgec's passes, then TVM's backend lowering for the target.

A pipeline is a flat list of phases; each phase is a named list of passes. `--dump-ir DIR` writes
the module after every phase as `NN-<phase>.py` (TVMScript), which is how a compile is debugged.

MetaSchedule tunes the module as it stands before the tuning records apply (`run_to_tuning_point`,
used by `edgec tune`); a compile with tuning records applies them right there ("apply-tuning"), so
both see the same tasks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tvm
from tvm import relax
import tvm.relax.backend.cpu_generic.pipeline  # noqa: F401  (pass lists live in the submodules)
import tvm.relax.backend.cuda.pipeline  # noqa: F401
import tvm.relax.backend.gpu_generic.pipeline  # noqa: F401

from compiler.errors import PhaseError
from compiler.tuning.database import RecordSources
from passes import (Int8Payoff, IntegerForm, LayoutConfig, PruneConfig, QuantizeConfig, WinogradConfig, convert_layout,
                    default_schedules, depthwise_rule, fast_math, fold_requantize, lower_qdq_to_integer, prune_channels, quantize_int8,
                    simplify_for_inference, winograd_conv2d)
from passes.dot_product import int8_dot_product

from targets import Preset

if TYPE_CHECKING:
    from compiler.tuning.database import TuningRecords, TuningSummary
    from targets import CpuShape

# TVM's per-backend pass lists, keyed by target kind (data, not branches).
_BACKENDS: dict[str, Callable[[], Any]] = {
    "llvm": lambda: relax.backend.cpu_generic.pipeline,
    "cuda": lambda: relax.backend.cuda.pipeline,
    "opencl": lambda: relax.backend.gpu_generic.pipeline,
}
# Target kinds whose tuned kernels may choose their own weight layout (MetaSchedule's layout rewrite):
# on CPUs a kernel that reads weights in the order its loops walk them is what makes conv fast.
_WEIGHT_PREPACK_KINDS = frozenset({"llvm"})
# Target kinds whose kernels edgec marks for its own MetaSchedule rules (those TVM's rules schedule poorly)
_CPU_RULE_KINDS = frozenset({"llvm"})
# The phase that fuses operators into kernels (its kernel count before and after goes to the manifest)
FUSION_PHASE = "legalize-fuse"
# The phase that schedules what the tuning records did not (its report names every kernel's source)
DEFAULT_SCHEDULE_PHASE = "default-schedules"


@dataclass(frozen=True)
class PipelineConfig:
    """What the user asked of the pipeline; each optional pass reads its settings here."""

    dump_ir: Path | None = None
    # The tuning databases to read (compiler/tuning/database.py): shipped + the user's + an optional
    # --tuning-log DIR, one database per preset in each. None: ignore tuning records (--untuned).
    tuning_log: RecordSources | None = RecordSources()
    prune: PruneConfig | None = None  # --prune RATIO [--prune-criterion]
    layout: LayoutConfig | None = None  # --layout; None: the preset's (see for_preset), else NCHW
    quantize: QuantizeConfig | None = None  # --quantize int8 with its calibration data
    winograd: WinogradConfig | None = None  # --winograd/--no-winograd; None: the preset's, else off
    # CPU targets: the register file and caches default schedules are sized for (the preset's)
    cpu: CpuShape | None = None
    # int8 layers as the target's dot-product kernels want them (resolved in for_preset)
    int8_form: IntegerForm | None = None

    def for_preset(self, preset: Preset) -> PipelineConfig:
        """The settings the target decides unless the user did: conv layout, Winograd, and int8
        activation signedness (what its dot-product instruction multiplies), and the compute-to-memory
        balance that picks Winograd tiles."""
        winograd = self.winograd or WinogradConfig(enabled=preset.winograd, chosen_by="preset")
        if winograd.macs_per_byte is None:
            winograd = replace(winograd, macs_per_byte=preset.macs_per_byte)
        resolved = replace(self, layout=self.layout or LayoutConfig(preset.layout, chosen_by="preset"), winograd=winograd,
                           cpu=self.cpu or preset.cpu_shape())
        resolved = replace(resolved, int8_form=self.int8_form or _integer_form(preset))
        if self.quantize is None:
            return resolved
        payoff = None if self.quantize.every_layer else _int8_payoff(preset, resolved.int8_form)
        return replace(resolved, quantize=replace(self.quantize, form=resolved.int8_form, payoff=payoff))


def _int8_payoff(preset: Preset, form: IntegerForm) -> Int8Payoff | None:
    """Where int8 is faster than float on the preset's CPU (passes/quantize.py), for layers written in
    `form`; None off CPUs."""
    cpu = preset.cpu_shape()
    if preset.device != "cpu" or cpu is None:
        return None
    dot = int8_dot_product(preset.tvm_target())
    # a quarter of L2: the layer's weights and the block's other tensors share it (MobileNetV2's 7x7
    # depthwise layers, 376 KB, still gained from int8 on a 1 MB L2)
    return Int8Payoff(dot_speedup=dot.speedup if dot is not None else None, cache_bytes=cpu.l2_bytes // 4,
                      output_channels=form.output_channel_multiple)


def _integer_form(preset: Preset) -> IntegerForm:
    """How int8 layers are written for the preset's dot-product instruction (passes/dot_product.py)."""
    dot = int8_dot_product(preset.tvm_target()) if preset.device == "cpu" else None
    if dot is None:
        return IntegerForm(signed_activations=preset.signed_int8_activations)
    return IntegerForm(signed_activations=dot.signed_activations, shift_signed_inputs=not dot.signed_activations,
                       weight_levels=dot.weight_levels, channel_multiple=4, output_channel_multiple=dot.output_channels)


@dataclass(frozen=True)
class Phase:
    name: str
    passes: tuple[tvm.transform.Pass, ...]
    settings: dict[str, Any] | None = None  # what the user chose for this phase (for the manifest)

    def to_json(self, report: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"phase": self.name, "passes": [p.info.name for p in self.passes]}
        if self.settings is not None:
            out["settings"] = self.settings
        if report is not None:
            out["report"] = report
        return out


@dataclass(frozen=True)
class PipelineResult:
    mod: tvm.IRModule
    phases: tuple[Phase, ...] = field(default=())
    tuning: TuningSummary | None = None  # what the tuning records covered, when a database was applied
    reports: dict[str, Any] = field(default_factory=dict)  # phase name -> what its passes reported
    kernels: dict[str, int] = field(default_factory=dict)  # "before-fusion"/"after-fusion" -> kernel count

    def schedules(self) -> dict[str, str]:
        """Where every kernel's schedule came from: "tuned (<database>)", "transferred (<database>)"
        (a record of the same conv/matmul with another epilogue), "edgec-default",
        "tvm-default" (GPU kernels TVM's dlight rules scheduled) or "naive" (TVM's loops as written)."""
        report = self.reports.get(DEFAULT_SCHEDULE_PHASE)
        if report is None:
            return {}
        sources = self.tuning.sources if self.tuning is not None else {}
        transferred = self.tuning.transferred if self.tuning is not None else {}
        out = {name: f"tuned ({sources[name]})" if name in sources else
               f"transferred ({transferred[name]})" if name in transferred else "tvm-default"
               for name in report["scheduled_before"]}
        out.update({name: "edgec-default" for name in report["edgec_default"]})
        out.update({name: "naive" for name in report["naive"]})
        for name in report.get("dot_product_kernels", ()):  # int8 kernels on the CPU's dot-product instruction
            out[name] += f" + {report['dot_product']}"
        return dict(sorted(out.items()))

    def passes_json(self) -> list[dict[str, Any]]:
        """Every phase with its passes, settings and report: the manifest's `passes`."""
        return [phase.to_json(self.reports.get(phase.name)) for phase in self.phases]


def build_phases(
    config: PipelineConfig,
    target: tvm.target.Target,
    records: TuningRecords | None = None,
    reports: dict[str, Any] | None = None,
) -> list[Phase]:
    """The ordered phases for `target`: edgec's graph passes first, then TVM's lowering.

    `config` comes resolved for the preset (`PipelineConfig.for_preset`). Passes that report what
    they did (pruning, quantization, Winograd) put it into `reports` under their phase name. With
    tuning `records`, their schedules replace the default ones right after the tuning point.
    """
    return [*_phases_to_tuning_point(config, target, reports), *_phases_after_tuning(config, target, records, reports)]


def _report_to(reports: dict[str, Any], phase: str) -> Callable[[Any], None]:
    return lambda report: reports.__setitem__(phase, report.to_json())


def _phases_to_tuning_point(config: PipelineConfig, target: tvm.target.Target,
                            reports: dict[str, Any] | None) -> list[Phase]:
    backend = _backend(target)
    reports = reports if reports is not None else {}
    layout_config = config.layout or LayoutConfig(chosen_by="default")
    phases = [
        # edgec graph passes, on the imported module with bound weights
        Phase("simplify", (simplify_for_inference(),)),
        # a pre-quantized (QDQ) model gets integer kernels; a float model passes unchanged
        Phase("lower-qdq", (lower_qdq_to_integer(_report_to(reports, "lower-qdq"), config.int8_form or IntegerForm()),)),
    ]
    if config.prune is not None:
        phases.append(Phase("prune", (prune_channels(config.prune, _report_to(reports, "prune")),), config.prune.to_json()))
    if config.quantize is not None:
        phases.append(Phase("quantize", (quantize_int8(config.quantize, _report_to(reports, "quantize")),),
                            config.quantize.to_json()))
    phases.append(Phase("layout", (convert_layout(layout_config),), {"layout": layout_config.layout,
                                                                     "chosen_by": layout_config.chosen_by}))
    # after layout (its clamps are maximum/minimum): each integer layer's epilogue and the next
    # layer's quantize as one affine map and clamp; a float model passes unchanged
    phases.append(Phase("fold-requantize", (fold_requantize(),)))
    if config.winograd is not None:
        # after layout: only NCHW float convs qualify, and they must be final before legalization. A
        # disabled phase stays in the list so that the manifest says who disabled it.
        rewrite = (winograd_conv2d(config.winograd, _report_to(reports, "winograd")),) if config.winograd.enabled else ()
        phases.append(Phase("winograd", rewrite, config.winograd.to_json()))
    phases += [
        # sigmoid/exp/tanh/erf/softmax as vectorizable polynomials, not a libm call per element
        Phase("fast-math", (fast_math(),)),
        # TVM: library dispatch, legalization to TIR, operator fusion (conv+bias+activation in one kernel)
        Phase("dispatch", tuple(backend.library_dispatch_passes(target))),
        Phase("legalize-fuse", tuple(backend.legalize_passes(target))),
    ]
    if target.kind.name in _CPU_RULE_KINDS:
        # Depthwise kernels get edgec's register-tiled schedule rule (passes/depthwise.py)
        phases.append(Phase("depthwise-rule", (depthwise_rule(),)))
    if target.kind.name in _WEIGHT_PREPACK_KINDS:
        # Weights are constants, so a tuned kernel may ask for them in any layout
        phases.append(Phase("mark-prepack", (relax.transform.AttachAttrLayoutFreeBuffers(),)))
    return phases


def _phases_after_tuning(config: PipelineConfig, target: tvm.target.Target, records: TuningRecords | None,
                         reports: dict[str, Any] | None) -> list[Phase]:
    backend = _backend(target)
    reports = reports if reports is not None else {}
    phases = []
    if records is not None:
        # MetaSchedule: the best measured schedule of every task the records know
        # and kernels without one replay a record of the same conv/matmul with another epilogue
        phases.append(Phase("apply-tuning", (records.apply_pass(), records.transfer_pass())))
    # CPUs: every kernel the records left unscheduled gets MetaSchedule's design space at decisions
    # chosen from the CPU shape (passes/default_schedule.py), never TVM's naive loops. GPUs: TVM's
    # dlight rules scheduled them in legalize-fuse; the pass only reports which.
    cpu = config.cpu if target.kind.name in _CPU_RULE_KINDS else None
    phases.append(Phase(DEFAULT_SCHEDULE_PHASE, (default_schedules(cpu, _report_to(reports, DEFAULT_SCHEDULE_PHASE)),),
                        {"cpu": asdict(cpu) if cpu is not None else None}))
    if target.kind.name in _WEIGHT_PREPACK_KINDS:
        # The weight layouts scheduled kernels chose are computed now, at compile time: each kernel's
        # weight transform is split out into its own function and folded into new constants.
        phases.append(Phase("prepack-weights", (relax.transform.SplitLayoutRewritePreproc(),
                                                relax.transform.FoldConstant(),
                                                relax.transform.DeadCodeElimination())))
    return [
        *phases,
        # TVM: from dataflow graph to VM-executable form with planned memory
        Phase("lower", tuple(backend.dataflow_lower_passes(target))),
        Phase("finalize", tuple(backend.finalize_passes(target))),
    ]


def run_pipeline(mod: tvm.IRModule, target: tvm.target.Target, config: PipelineConfig,
                 records: TuningRecords | None = None) -> PipelineResult:
    """Apply every phase in order under `target`, dumping the IR after each when asked."""
    reports: dict[str, Any] = {}
    phases = build_phases(config, target, records, reports)
    kernels: dict[str, int] = {}
    mod = _run_phases(mod, target, config, phases, kernels)
    return PipelineResult(mod, tuple(phases), records.summary if records is not None else None, reports, kernels)


def run_to_tuning_point(mod: tvm.IRModule, target: tvm.target.Target, config: PipelineConfig) -> tvm.IRModule:
    """The module MetaSchedule tunes: the phases before tuning records apply, as a compile runs them."""
    return _run_phases(mod, target, config, _phases_to_tuning_point(config, target, None), {})


# The phases that rewrite the model's graph itself, before any target-specific lowering
GRAPH_PHASES = ("simplify", "lower-qdq", "prune", "quantize")


def run_graph_passes(mod: tvm.IRModule, config: PipelineConfig) -> tvm.IRModule:
    """The model after edgec's graph phases only (still target-independent): what quantization sees."""
    host = tvm.target.Target({"kind": "llvm"})
    phases = [p for p in _phases_to_tuning_point(config, host, None) if p.name in GRAPH_PHASES]
    return _run_phases(mod, host, config, phases, {})


def count_kernels(mod: tvm.IRModule) -> int:
    """Kernels run per inference: operator calls and compiled-function calls in `main`, fused groups
    that are still Relax functions counted by their contents."""
    count = 0

    def visit(expr):
        nonlocal count
        if not isinstance(expr, relax.Call):
            return
        if isinstance(expr.op, tvm.ir.Op) and not expr.op.name.startswith(_BOOKKEEPING_OPS):
            count += 1
        elif isinstance(expr.op, relax.GlobalVar) and isinstance(mod[expr.op], relax.Function):
            relax.analysis.post_order_visit(mod[expr.op].body, visit)

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return count


# Calls that move no tensor data through a kernel of their own
_BOOKKEEPING_OPS = ("relax.memory.", "relax.builtin.", "relax.vm.", "relax.null_value", "relax.shape_of",
                    "relax.call_pure_packed")


def _run_phases(mod: tvm.IRModule, target: tvm.target.Target, config: PipelineConfig, phases: list[Phase],
                kernels: dict[str, int]) -> tvm.IRModule:
    """Run `phases`; `kernels` gets the kernel count before and after the fusing phase."""
    if config.dump_ir is not None:
        config.dump_ir.mkdir(parents=True, exist_ok=True)
        _dump(config.dump_ir, 0, "imported", mod)
    with target, tvm.transform.PassContext(opt_level=3):
        for index, phase in enumerate(phases, start=1):
            if phase.name == FUSION_PHASE:
                kernels["before_fusion"] = count_kernels(mod)
            mod = _run_phase(phase, mod)
            if phase.name == FUSION_PHASE:
                kernels["after_fusion"] = count_kernels(mod)
            if config.dump_ir is not None:
                _dump(config.dump_ir, index, phase.name, mod)
    return mod


# What TVM raises from a pass: C++ checks (InternalError, a RuntimeError) and the Python exceptions
# its FFI maps C++ errors to, or that its Python passes (legalization) raise
_TVM_ERRORS = (RuntimeError, ValueError, TypeError, IndexError, KeyError, AttributeError, AssertionError)
_EDGEC_ROOT = Path(__file__).resolve().parents[1]
# Relax operator names in TVM's messages: relax.nn.conv2d, or TVMScript's R.nn.conv2d(...)
_OPERATOR = re.compile(r"\b(relax\.[a-z_][\w.]*[a-z0-9_]|R\.[a-z_][\w.]*(?=\())")
_NOT_OPERATORS = {"R.shape", "R.const", "R.prim_value", "R.str", "R.dtype"}
_OP_REPR = re.compile(r'ir\.Op\(.*?name="([\w.]+)".*?support_level=\d+\)')  # how an Op prints in messages
_TVM_PASS = re.compile(r"Error in pass: ([\w.]+)")


def _run_phase(phase: Phase, mod: tvm.IRModule) -> tvm.IRModule:
    """One phase; an error raised inside TVM becomes a one-line PhaseError, an error of edgec's own
    code keeps its traceback (it is a bug)."""
    try:
        return tvm.transform.Sequential(list(phase.passes), name=phase.name)(mod)
    except _TVM_ERRORS as err:
        if not _raised_in_tvm(err):
            raise
        raise PhaseError(_phase_message(phase.name, err)) from err


def _raised_in_tvm(err: BaseException) -> bool:
    """Whether the innermost frame of `err` is TVM's (its Python package or its C++), not edgec's."""
    innermost = None
    tb = err.__traceback__
    while tb is not None:
        innermost, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    if innermost is None:
        return True
    path = Path(innermost)
    return not (path.is_absolute() and _EDGEC_ROOT in path.parents and "site-packages" not in path.parts)


def _phase_message(phase: str, err: BaseException) -> str:
    """`phase 'layout' failed inside TVM at operator relax.stack: <TVM's last message line>`."""
    text = str(err)
    # TVM's message: the reason, then (after a blank line) "Error in pass: X" and the IR around it
    reason = " ".join(text.strip().split("\n\n")[0].split()) or type(err).__name__
    reason = _OP_REPR.sub(r"\1", reason)
    if len(reason) > 300:
        reason = reason[:297] + "..."
    tvm_pass = _TVM_PASS.search(text)
    operator = _operator_in(text) or _legalizing_operator(err)
    where = f"at operator {operator}" if operator else "(TVM's message names no operator)"
    in_pass = f" (TVM pass {tvm_pass.group(1)})" if tvm_pass else ""
    return (f"phase '{phase}' failed inside TVM {where}{in_pass}: {reason}; compile with --dump-ir DIR to "
            f"see the module the phase received, and report it")


def _operator_in(message: str) -> str | None:
    for match in _OPERATOR.finditer(message):
        name = match.group(1)
        if name not in _NOT_OPERATORS:
            return "relax." + name[2:] if name.startswith("R.") else name
    return None


def _legalizing_operator(err: BaseException) -> str | None:
    """The operator whose legalization raised: TVM names those functions `_<op name with _ for .>`,
    e.g. `_nn_conv2d` in tvm/relax/transform/legalize_ops/nn.py."""
    tb, found = err.__traceback__, None
    while tb is not None:
        code = tb.tb_frame.f_code
        if "legalize_ops" in Path(code.co_filename).parts and code.co_name.startswith("_"):
            found = code.co_name[1:]
        tb = tb.tb_next
    if found is None:
        return None
    namespace = next((ns for ns in ("nn", "image", "qdq", "linear_algebra") if found.startswith(ns + "_")), None)
    return f"relax.{namespace}.{found[len(namespace) + 1:]}" if namespace else f"relax.{found}"


def _backend(target: tvm.target.Target) -> Any:
    try:
        return _BACKENDS[target.kind.name]()
    except KeyError:
        raise ValueError(f"no lowering pipeline for target kind '{target.kind.name}'") from None


def _dump(directory: Path, index: int, name: str, mod: tvm.IRModule) -> None:
    (directory / f"{index:02d}-{name}.py").write_text(mod.script(show_meta=False))
