"""`edgec records remeasure`: time each kernel's best tuning records again, side by side, and keep those.

A record keeps the latency measured when the search found it, and the best record of a kernel is
the one with the lowest. On a shared machine those latencies come from different minutes: its
speed drifts by up to 2x, so the lowest often names the luckiest minute rather than the fastest
schedule. Records measured under other conditions (another thread count, other work on the
machine) do not compare either. Re-measuring a kernel's `top_k` records in interleaved rounds
(every record once per round, the first one rotating) puts them in the same minutes; each keeps
its rounds' times, so the fastest of them is the one a compile applies. The kernel's other records
are dropped: their times were not measured alongside.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.runner.local_runner import default_alloc_argument

from compiler.tuning import database as tuning_db
from compiler.tuning import provenance
from compiler.errors import TuningError
from compiler.runtime.threads import configure_threads
from compiler.tuning.search import EVALUATOR, PersistentBuilder
from passes.dot_product import import_tensor_intrinsics
from targets import Preset


@dataclass(frozen=True)
class RemeasureOptions:
    preset: Preset
    top_k: int = 8  # records per kernel timed again (its fastest by their stored times)
    rounds: int = 5  # each record is timed once per round
    tuning_log: Path | None = None  # root of the per-preset databases; None: tuning_db.user_root()
    build_workers: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    build_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise TuningError(f"--top must be at least 1, got {self.top_k}")
        if self.rounds < 1:
            raise TuningError(f"--rounds must be at least 1, got {self.rounds}")


@dataclass(frozen=True)
class KernelRemeasured:
    workload: int  # line index in the database's workload file
    records: int  # records timed again (fewer than top_k where the kernel has fewer, or some failed)
    stored_s: float  # the stored time of the record that was fastest before
    best_s: float  # the fastest re-measured time
    best_rank: int  # that record's place among the timed ones by stored time (0: the same record)


@dataclass(frozen=True)
class RemeasureReport:
    directory: Path
    kernels: tuple[KernelRemeasured, ...]
    records_before: int
    records_after: int
    wall_s: float

    @property
    def changed(self) -> int:
        """Kernels whose fastest record is another one now."""
        return sum(k.best_rank != 0 for k in self.kernels)


ProgressCallback = Callable[[int, int], None]  # (kernels done, kernels in all)


def remeasure_records(options: RemeasureOptions, on_progress: ProgressCallback | None = None) -> RemeasureReport:
    """Time every kernel's `top_k` fastest records again in interleaved rounds, here, and keep only
    those records, each with its new times (a kernel whose records all fail keeps its old ones)."""
    started = time.monotonic()
    preset = options.preset
    execution = preset.execution_here()
    if preset.device != "cpu" or execution.mode != "native":
        raise TuningError(f"records are re-measured on this machine, and {preset.name} code cannot run here "
                          f"({execution.reason})")
    target = preset.tvm_target()
    directory = tuning_db.database_dir(options.tuning_log or tuning_db.user_root(), preset)
    if not (directory / tuning_db.WORKLOADS).is_file():
        raise TuningError(f"no tuning database at {directory}; tune first with: edgec tune MODEL --target {preset.name}")
    configure_threads()  # the records are timed in this process, on every core, as models run
    import_tensor_intrinsics(target)
    with tuning_db.locked_records(directory, target) as repaired:
        measured = tuning_db.measured_records(repaired)
        builder = PersistentBuilder(options.build_workers, options.build_timeout_s, preset.cross_compiler)
        kept, kernels = {}, []
        try:
            for done, (index, records) in enumerate(sorted(measured.items())):
                workload = ms.database.Workload.from_json(json.loads(repaired.workloads[index]))
                top = records[: options.top_k]
                seconds, failure = _time_interleaved(top, workload, target, builder, options.rounds)
                _warn_failed(directory, repaired.workloads[index], seconds, failure)
                timed = [(rank, record.with_run_secs(secs)) for rank, (record, secs) in enumerate(zip(top, seconds)) if secs]
                if timed:
                    timed.sort(key=lambda item: item[1].mean_s)
                    kept[index] = [record for _, record in timed]
                    kernels.append(KernelRemeasured(index, len(timed), top[0].mean_s, timed[0][1].mean_s, timed[0][0]))
                else:
                    kept[index] = records
                if on_progress is not None:
                    on_progress(done + 1, len(measured))
        finally:
            builder.pool.shutdown()
        tuning_db.write_records(directory, kept)
        hashes = [str(json.loads(repaired.workloads[k.workload])[0]) for k in kernels]
        provenance.note_measured(directory, hashes, provenance.cpu_name())
    return RemeasureReport(directory, tuple(kernels), len(repaired.records), sum(map(len, kept.values())),
                           time.monotonic() - started)


def _time_interleaved(records: list[tuning_db.MeasuredRecord], workload: ms.database.Workload,
                      target: tvm.target.Target, builder: PersistentBuilder,
                      rounds: int) -> tuple[list[list[float] | None], str | None]:
    """Seconds per run of each record's schedule, one sample per round (None: it failed to replay or
    build), and why they failed (distinct reasons, joined)."""
    candidates = [_candidate(record, workload) for record in records]
    replayed = [c for c in candidates if c is not None]
    built = iter(builder.build([ms.builder.BuilderInput(c.sch.mod, target) for c in replayed]))
    device = tvm.cpu()
    timers, failures = [], []
    for candidate in candidates:
        result = next(built) if candidate is not None else None
        if result is None or result.error_msg is not None:
            timers.append(None)
            reason = "a trace no longer replays" if result is None else _last_line(result.error_msg)
            failures += [reason] if reason not in failures else []
            continue
        library = tvm.runtime.load_module(result.artifact_path)
        shutil.rmtree(os.path.dirname(result.artifact_path), ignore_errors=True)  # loaded: the file may go
        args = default_alloc_argument(device, [info.as_json() for info in candidate.args_info], 1)[0]
        timer = library.time_evaluator(library.entry_name, device, number=EVALUATOR["number"],
                                       repeat=EVALUATOR["repeat"], min_repeat_ms=EVALUATOR["min_repeat_ms"])
        timer(*args)  # warm-up: caches, the thread pool
        timers.append((timer, args))
    samples: list[list[float] | None] = [[] if timer else None for timer in timers]
    order = list(range(len(timers)))
    for round_index in range(rounds):
        first = round_index % len(order)
        for i in order[first:] + order[:first]:
            if timers[i] is not None:
                timer, args = timers[i]
                samples[i].append(float(timer(*args).mean))
    return samples, "; ".join(failures) or None


def _last_line(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no message"


def _warn_failed(directory: Path, workload_line: str, seconds: list[list[float] | None], failure: str | None) -> None:
    """One warning per kernel whose records no longer replay or build: they are dropped (all of
    them failing: the kernel keeps its old records)."""
    failed = sum(secs is None for secs in seconds)
    if failed:
        outcome = "kept its old records" if failed == len(seconds) else "dropped them"
        tuning_db.log.warning(f"{directory}: kernel {json.loads(workload_line)[0]}: {failed} of its {len(seconds)} best "
                              f"records no longer replay or build here (TVM or the kernel changed); {outcome} "
                              f"({failure})")


def _candidate(record: tuning_db.MeasuredRecord, workload: ms.database.Workload) -> ms.MeasureCandidate | None:
    """The record's schedule replayed on its workload; None where the trace no longer replays."""
    try:
        return ms.database.TuningRecord.from_json(record.body, workload).as_measure_candidate()
    except (RuntimeError, ValueError):  # what a failing trace replay raises through tvm_ffi
        return None
