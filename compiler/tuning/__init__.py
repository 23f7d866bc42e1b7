"""Tuning, as one package: MetaSchedule's search for a model's kernels (`search`), the record
databases on disk (`database`), re-measuring records side by side (`remeasure`), and where and when
records were measured (`provenance`).

`from compiler.tuning import tune_model` works for the public names below; each loads its module on
first use, so that `compiler.pipeline` imports `compiler.tuning.database` without the search (which
imports the pipeline).
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "search": ("EVALUATOR", "PersistentBuilder", "TaskProgress", "TuneOptions", "TuneReport", "estimated_s",
               "model_kernels", "plan_trials", "tune_model"),
    "database": ("RecordSources", "TuningRecords", "TuningSummary", "compact", "database_dir", "open_for_compile",
                 "open_for_tuning", "shipped_root", "used_workload_hashes", "user_root"),
    "remeasure": ("RemeasureOptions", "RemeasureReport", "remeasure_records"),
    "provenance": ("WorkloadRecords", "list_records"),
}
_MODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'compiler.tuning' has no attribute {name!r}")
    return getattr(importlib.import_module(f"compiler.tuning.{module}"), name)
