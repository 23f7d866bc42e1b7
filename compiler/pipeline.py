"""The one place where passes are ordered: edgec's passes, then TVM's backend lowering for the target.

A pipeline is a flat list of phases; each phase is a named list of passes. `--dump-ir DIR` writes
the module after every phase as `NN-<phase>.py` (TVMScript), which is how a compile is debugged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tvm
from tvm import relax
import tvm.relax.backend.cpu_generic.pipeline  # noqa: F401  (pass lists live in the submodules)
import tvm.relax.backend.cuda.pipeline  # noqa: F401
import tvm.relax.backend.gpu_generic.pipeline  # noqa: F401

from passes import simplify_for_inference

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


def build_phases(config: PipelineConfig, target: tvm.target.Target) -> list[Phase]:
    """The ordered phases for `target`: edgec's graph passes first, then TVM's lowering."""
    backend = _backend(target)
    return [
        # edgec graph passes, on the imported module with bound weights
        Phase("simplify", (simplify_for_inference(),)),
        # TVM: library dispatch, legalization to TIR, operator fusion (conv+bias+activation in one kernel)
        Phase("dispatch", tuple(backend.library_dispatch_passes(target))),
        Phase("legalize-fuse", tuple(backend.legalize_passes(target))),
        # TVM: from dataflow graph to VM-executable form with planned memory
        Phase("lower", tuple(backend.dataflow_lower_passes(target))),
        Phase("finalize", tuple(backend.finalize_passes(target))),
    ]


def run_pipeline(mod: tvm.IRModule, target: tvm.target.Target, config: PipelineConfig) -> PipelineResult:
    """Apply every phase in order under `target`, dumping the IR after each when asked."""
    phases = build_phases(config, target)
    if config.dump_ir is not None:
        config.dump_ir.mkdir(parents=True, exist_ok=True)
        _dump(config.dump_ir, 0, "imported", mod)
    with target, tvm.transform.PassContext(opt_level=3):
        for index, phase in enumerate(phases, start=1):
            mod = tvm.transform.Sequential(list(phase.passes), name=phase.name)(mod)
            if config.dump_ir is not None:
                _dump(config.dump_ir, index, phase.name, mod)
    return PipelineResult(mod, tuple(phases))


def _backend(target: tvm.target.Target) -> Any:
    try:
        return _BACKENDS[target.kind.name]()
    except KeyError:
        raise ValueError(f"no lowering pipeline for target kind '{target.kind.name}'") from None


def _dump(directory: Path, index: int, name: str, mod: tvm.IRModule) -> None:
    (directory / f"{index:02d}-{name}.py").write_text(mod.script(show_meta=False))
