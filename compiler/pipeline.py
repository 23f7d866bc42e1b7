"""The one place where passes are ordered: edgec's passes, then TVM's backend lowering for the target.

A pipeline is a flat list of phases; each phase is a named list of passes. `--dump-ir DIR` writes
the module after every phase as `NN-<phase>.py` (TVMScript), which is how a compile is debugged.

MetaSchedule tunes the module as it stands after TUNING_POINT (`run_to_tuning_point`, used by
`edgec tune`); a compile with tuning records applies them right there ("apply-tuning"), so both see
the same tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tvm
from tvm import relax
import tvm.relax.backend.cpu_generic.pipeline  # noqa: F401  (pass lists live in the submodules)
import tvm.relax.backend.cuda.pipeline  # noqa: F401
import tvm.relax.backend.gpu_generic.pipeline  # noqa: F401

from passes import simplify_for_inference

if TYPE_CHECKING:
    from compiler.tuning_db import TuningRecords, TuningSummary

# TVM's per-backend pass lists, keyed by target kind (data, not branches).
_BACKENDS: dict[str, Callable[[], Any]] = {
    "llvm": lambda: relax.backend.cpu_generic.pipeline,
    "cuda": lambda: relax.backend.cuda.pipeline,
    "opencl": lambda: relax.backend.gpu_generic.pipeline,
}


@dataclass(frozen=True)
class PipelineConfig:
    """What the user asked of the pipeline. Passes added by later options read their settings here."""

    dump_ir: Path | None = None
    # Root of the tuning databases, one per preset (`<root>/<preset>/`, see compiler/tuning_db.py);
    # relative paths are relative to the working directory. None: ignore tuning records.
    tuning_log: Path | None = Path("tuning_logs")


@dataclass(frozen=True)
class Phase:
    name: str
    passes: tuple[tvm.transform.Pass, ...]

    def to_json(self) -> dict[str, Any]:
        return {"phase": self.name, "passes": [p.info.name for p in self.passes]}


@dataclass(frozen=True)
class PipelineResult:
    mod: tvm.IRModule
    phases: tuple[Phase, ...] = field(default=())
    tuning: TuningSummary | None = None  # what the tuning records covered, when a database was applied


# The phase after which MetaSchedule extracts its tasks: every PrimFunc is final (fused, legalized).
TUNING_POINT = "legalize-fuse"


def build_phases(config: PipelineConfig, target: tvm.target.Target, records: TuningRecords | None = None) -> list[Phase]:
    """The ordered phases for `target`: edgec's graph passes first, then TVM's lowering.

    With tuning `records`, their schedules replace the default ones right after TUNING_POINT.
    """
    backend = _backend(target)
    return [
        # edgec graph passes, on the imported module with bound weights
        Phase("simplify", (simplify_for_inference(),)),
        # TVM: library dispatch, legalization to TIR, operator fusion (conv+bias+activation in one kernel)
        Phase("dispatch", tuple(backend.library_dispatch_passes(target))),
        Phase("legalize-fuse", tuple(backend.legalize_passes(target))),
        # MetaSchedule: the best measured schedule of every task the records know (TUNING_POINT)
        *([Phase("apply-tuning", (records.apply_pass(),))] if records is not None else []),
        # TVM: from dataflow graph to VM-executable form with planned memory
        Phase("lower", tuple(backend.dataflow_lower_passes(target))),
        Phase("finalize", tuple(backend.finalize_passes(target))),
    ]


def run_pipeline(
    mod: tvm.IRModule, target: tvm.target.Target, config: PipelineConfig, records: TuningRecords | None = None
) -> PipelineResult:
    """Apply every phase in order under `target`, dumping the IR after each when asked."""
    phases = build_phases(config, target, records)
    mod = _run_phases(mod, target, config, phases)
    return PipelineResult(mod, tuple(phases), records.summary if records is not None else None)


def run_to_tuning_point(mod: tvm.IRModule, target: tvm.target.Target, config: PipelineConfig) -> tvm.IRModule:
    """The module MetaSchedule tunes: the phases up to and including TUNING_POINT, as a compile runs them."""
    phases = build_phases(config, target)
    names = [phase.name for phase in phases]
    return _run_phases(mod, target, config, phases[: names.index(TUNING_POINT) + 1])


def _run_phases(mod: tvm.IRModule, target: tvm.target.Target, config: PipelineConfig, phases: list[Phase]) -> tvm.IRModule:
    if config.dump_ir is not None:
        config.dump_ir.mkdir(parents=True, exist_ok=True)
        _dump(config.dump_ir, 0, "imported", mod)
    with target, tvm.transform.PassContext(opt_level=3):
        for index, phase in enumerate(phases, start=1):
            mod = tvm.transform.Sequential(list(phase.passes), name=phase.name)(mod)
            if config.dump_ir is not None:
                _dump(config.dump_ir, index, phase.name, mod)
    return mod


def _backend(target: tvm.target.Target) -> Any:
    try:
        return _BACKENDS[target.kind.name]()
    except KeyError:
        raise ValueError(f"no lowering pipeline for target kind '{target.kind.name}'") from None


def _dump(directory: Path, index: int, name: str, mod: tvm.IRModule) -> None:
    (directory / f"{index:02d}-{name}.py").write_text(mod.script(show_meta=False))
