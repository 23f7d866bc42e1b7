"""`edgec tune`: measure MetaSchedule schedules for a model's kernels on the target and record them.

The model goes through the pipeline up to its tuning point (`pipeline.run_to_tuning_point`), so the
tasks tuned here are exactly the ones `edgec compile` looks up. Tasks the preset's database already
holds a record for are skipped (with `refine`, tuned again from their best records); the rest share
the trial budget by the time they take (`_work`), each getting at least one batch. Records reach the database after every measured batch (a killed run loses only
the batches in flight), and a re-run resumes with the tasks that have no record yet.

Cost on small machines comes from process start-up, so the builder keeps one worker pool for the
whole run (MetaSchedule's LocalBuilder starts a new pool, with a 60-100 s import, for every batch)
and only the target's tensor intrinsics are imported (passes.dot_product.import_tensor_intrinsics, when
the database is opened).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
from tvm.s_tir.meta_schedule.task_scheduler import PyTaskScheduler
from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

from compiler.tuning import database as tuning_db
from compiler.tuning import provenance
from compiler.accuracy import AccuracyGuard, guard_quantization
from compiler.errors import TuningError
from compiler.frontends import ImportedModel
from compiler.pipeline import PipelineConfig, run_to_tuning_point
from passes.default_schedule import default_schedule
from passes.dot_product import design_space
from compiler.runtime.rpc import RemoteSpec
from compiler.runtime.threads import configure_threads
from targets import CpuShape, Preset

log = logging.getLogger("edgec.tuning")

DEFAULT_TRIALS_PER_TASK = 32
UNBOUNDED_TRIALS_PER_TASK = 10_000  # with only a time budget: the budget ends the run
SEARCH_ATTEMPTS = 2  # a kernel whose candidate search fails this often is given up for the run
# One measurement: 3 runs per repeat, repeated until 100 ms passed (MetaSchedule's CPU defaults).
EVALUATOR = dict(number=3, repeat=1, min_repeat_ms=100, enable_cpu_cache_flush=False)


@dataclass(frozen=True)
class TuneOptions:
    """What `edgec tune` was asked for. `trials` counts measured candidates over the tasks tuned now."""

    preset: Preset
    trials: int | None = None  # None: DEFAULT_TRIALS_PER_TASK per task, or unbounded with a time budget
    time_budget_s: float | None = None  # no new batch starts after this many seconds of the run
    trials_per_iter: int = 16  # candidates per measured batch (MetaSchedule's num_trials_per_iter)
    tuning_log: Path | None = None  # root of the per-preset databases written; None: tuning_db.user_root()
    remote: RemoteSpec | None = None  # measure on an RPC server through a tracker instead of here
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    build_workers: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    build_timeout_s: float = 60.0
    run_timeout_s: float = 30.0
    seed: int | None = None
    population: int = 512  # candidates the evolutionary search evolves per batch (its population_size)
    log_file: Path | None = None  # MetaSchedule's own log; None: a new file in the temp directory
    history: Path | None = None  # JSON lines, one per measured batch: elapsed s, trials, estimated total
    accuracy_guard: AccuracyGuard | None = None  # as in compile: float layers chosen first, then tuned
    # Also tune kernels that have records (more trials where a first run gave too few); the search
    # starts from their best measured schedules, and a record only ever improves on them.
    refine: bool = False

    def __post_init__(self) -> None:
        if self.trials is not None and self.trials < 1:
            raise TuningError(f"--trials must be at least 1, got {self.trials}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise TuningError(f"--time-budget must be more than 0 minutes, got {self.time_budget_s / 60:g}")
        if self.trials_per_iter < 1:
            raise TuningError(f"--trials-per-iter must be at least 1, got {self.trials_per_iter}")
        if self.population < 2:
            raise TuningError(f"the search population must be at least 2, got {self.population}")
        if self.build_workers < 1:
            raise TuningError(f"build workers must be at least 1, got {self.build_workers}")
        if self.remote is not None and self.remote.tracker is None:
            raise TuningError("remote tuning goes through an RPC tracker: pass --rpc-tracker HOST:PORT --rpc-key KEY")


@dataclass
class TaskProgress:
    """One task of the model: its share of the work and what tuning found so far."""

    name: str
    weight: int  # calls of this kernel per inference
    flops: float
    planned: int  # trials allotted in this run (0: already tuned)
    trials: int = 0  # measured in this run
    errors: int = 0  # candidates that failed to build or run
    best_s: float | None = None  # best mean latency: from the database for tuned tasks, else measured now
    skipped: bool = False  # had a record before this run


@dataclass(frozen=True)
class TuneReport:
    database: Path
    tasks: tuple[TaskProgress, ...]
    wall_s: float
    stopped: str | None = None  # why planned batches were left: "time budget" or "interrupted"
    log_file: Path | None = None

    @property
    def skipped(self) -> int:
        return sum(t.skipped for t in self.tasks)

    @property
    def trials(self) -> int:
        return sum(t.trials for t in self.tasks)

    @property
    def estimated_s(self) -> float:
        """Sum of weight x best latency over the tasks that have one (a lower bound otherwise)."""
        return estimated_s(self.tasks)


def estimated_s(tasks: Sequence[TaskProgress]) -> float:
    return sum(t.weight * t.best_s for t in tasks if t.best_s is not None)


ProgressCallback = Callable[[Sequence[TaskProgress], float], None]  # (tasks, seconds since start)


def model_kernels(model: ImportedModel, preset: Preset, pipeline: PipelineConfig) -> list[tuple[tvm.IRModule, str]]:
    """(module, task name) of every kernel a compile of `model` for `preset` looks up in the records."""
    target = preset.tvm_target()
    mod = run_to_tuning_point(model.mod, target, pipeline.for_preset(preset))
    return [(task.dispatched[0], task.task_name) for task in ms.relax_integration.extract_tasks(mod, target)]


def tune_model(model: ImportedModel, options: TuneOptions, on_progress: ProgressCallback | None = None) -> TuneReport:
    """Tune every task of `model` that the preset's database lacks (every task with `refine`);
    records are committed per batch."""
    start = time.monotonic()
    if options.history is not None:
        on_progress = _with_history(on_progress, options.history)
    target = _check_can_tune(options)
    pipeline, _ = guard_quantization(model.mod, options.pipeline.for_preset(options.preset), options.accuracy_guard)
    mod = run_to_tuning_point(model.mod, target, pipeline)
    tasks = ms.relax_integration.extract_tasks(mod, target)
    directory = tuning_db.database_dir(options.tuning_log or tuning_db.user_root(), options.preset)
    stopped, log_file = None, None
    with tuning_db.open_for_tuning(directory, target) as database:
        records_before = provenance.workload_record_counts(directory)
        progress = [_task_progress(task, database, target, options.refine, pipeline.cpu) for task in tasks]
        work = _work(progress)
        todo = sorted((i for i, p in enumerate(progress) if not p.skipped), key=lambda i: -work[i])
        plan = plan_trials([work[i] for i in todo], _total_trials(options, len(todo)), options.trials_per_iter)
        for i, trials in zip(todo, plan):
            progress[i].planned = trials
        _notify(on_progress, progress, start)
        if todo:
            log_file = options.log_file or _new_log_file(options.preset.name)
            session = _Session(options, target, pipeline.cpu, database, log_file, _deadline(options, start),
                               lambda: _notify(on_progress, progress, start))
            stopped = session.tune([tasks[i] for i in todo], [progress[i] for i in todo], plan)
        cpu = provenance.cpu_name() if options.remote is None else f"remote: {options.remote.describe()}"
        provenance.note_new_records(directory, records_before, cpu)
    return TuneReport(directory, tuple(progress), time.monotonic() - start, stopped, log_file)


def plan_trials(work: Sequence[float], total: int, per_iter: int) -> list[int]:
    """Trials per task: one batch of `per_iter` each, the other batches of `total` by share of `work`.

    Shares are rounded to whole batches by largest remainder, so the plan sums to
    max(total rounded up to batches, one batch per task) x per_iter.
    """
    count = len(work)
    if count == 0:
        return []
    extra = max(count, -(-total // per_iter)) - count
    weights = [max(w, 0.0) for w in work]
    whole = sum(weights) or 1.0
    ideal = [extra * w / whole for w in weights]
    batches = [1 + int(x) for x in ideal]
    by_remainder = sorted(range(count), key=lambda i: ideal[i] - int(ideal[i]), reverse=True)
    for i in by_remainder[: count + extra - sum(batches)]:
        batches[i] += 1
    return [b * per_iter for b in batches]


# ------------------------------------------------------------------------------------------- setup


def _check_can_tune(options: TuneOptions) -> tvm.target.Target:
    """The target, once it is clear that candidates can be built and measured somewhere."""
    from compiler.build import check_toolchain

    preset = options.preset
    if preset.device != "cpu":
        raise TuningError(f"tuning {preset.name} ({preset.device}) is not supported yet; edgec tunes CPU presets")
    check_toolchain(preset)
    if options.remote is not None:
        _check_remote(options.remote)
    else:
        execution = preset.execution_here()
        if execution.mode != "native":
            raise TuningError(
                f"{preset.name} code cannot be measured on this machine ({execution.reason}); "
                "tune on the device with --rpc-tracker HOST:PORT --rpc-key KEY"
            )
    return preset.tvm_target()


def _check_remote(remote: RemoteSpec) -> None:
    """Open and close one session, so that a dead tracker or a missing device is one line, now."""
    import gc

    from compiler.runtime.rpc import connect

    session = connect(remote)
    del session
    gc.collect()


def _task_progress(task: ms.ExtractedTask, database: ms.database.Database, target: tvm.target.Target,
                   refine: bool, cpu: CpuShape | None) -> TaskProgress:
    from tvm.s_tir.analysis import estimate_tir_flops

    record = database.query_tuning_record(task.dispatched[0], target, task.task_name)
    best = _mean_s(record.run_secs) if record is not None else None
    flops = float(estimate_tir_flops(task.dispatched[0]))
    searched = record is not None and _searched(task, database, target, cpu)
    return TaskProgress(task.task_name, int(task.weight), flops, 0, best_s=best, skipped=searched and not refine)


def _searched(task: ms.ExtractedTask, database: ms.database.Database, target: tvm.target.Target,
              cpu: CpuShape | None) -> bool:
    """Whether a task with records has one from a search, not only its measured default schedule
    (a run interrupted after the defaults leaves those): only then does a re-run skip it."""
    mod = task.dispatched[0]
    records = database.get_top_k(database.commit_workload(mod), 2)
    if len(records) != 1 or cpu is None:
        return True
    with target:
        default = default_schedule(mod, target, cpu)
    return default is None or str(records[0].trace) != str(default.trace)


def _work(tasks: Sequence[TaskProgress]) -> list[float]:
    """What each task is worth tuning: its share of the inference time, calls x best latency.

    A task without a measured latency is estimated from its FLOPs at the rate the measured tasks
    reach (with none measured, FLOPs alone rank them): a first run shares trials by FLOPs, and a
    --refine run gives most to the kernels that take the most time now.
    """
    measured = [t for t in tasks if t.best_s]
    seconds = sum(t.weight * t.best_s for t in measured)
    flops_per_s = sum(t.weight * max(t.flops, 1.0) for t in measured) / seconds if seconds else 1.0
    return [t.weight * (t.best_s if t.best_s else max(t.flops, 1.0) / flops_per_s) for t in tasks]


def _total_trials(options: TuneOptions, tasks: int) -> int:
    if options.trials is not None:
        return options.trials
    per_task = UNBOUNDED_TRIALS_PER_TASK if options.time_budget_s is not None else DEFAULT_TRIALS_PER_TASK
    return per_task * tasks


def _new_log_file(preset: str) -> Path:
    fd, path = tempfile.mkstemp(prefix=f"edgec-tune-{preset}-", suffix=".log")
    os.close(fd)
    return Path(path)


def _with_history(on_progress: ProgressCallback | None, path: Path) -> ProgressCallback:
    """Also append each progress point to `path` (how the estimate fell with trials and time)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError as err:
        raise TuningError(f"cannot write the tuning history '{path}': {err.strerror}") from None
    run = time.strftime("%Y-%m-%dT%H:%M:%S")  # a resumed run appends points of its own, with its own clock

    def notify(tasks: Sequence[TaskProgress], elapsed_s: float) -> None:
        point = {"run": run, "elapsed_s": round(elapsed_s, 1), "trials": sum(t.trials for t in tasks),
                 "estimated_ms": float(f"{estimated_s(tasks) * 1e3:.6g}"),
                 "kernels_measured": sum(t.best_s is not None for t in tasks), "kernels": len(tasks)}
        with path.open("a") as out:
            out.write(json.dumps(point) + "\n")
        if on_progress is not None:
            on_progress(tasks, elapsed_s)

    return notify


def _notify(on_progress: ProgressCallback | None, progress: Sequence[TaskProgress], start: float) -> None:
    if on_progress is not None:
        on_progress(progress, time.monotonic() - start)


def _mean_s(run_secs) -> float | None:
    values = [float(getattr(s, "value", s)) for s in run_secs or ()]
    return sum(values) / len(values) if values else None


# --------------------------------------------------------------------------------------------- run


def _deadline(options: TuneOptions, start: float) -> float | None:
    return start + options.time_budget_s if options.time_budget_s is not None else None


@dataclass(frozen=True)
class _Session:
    """One MetaSchedule run over the untuned tasks, into `database`."""

    options: TuneOptions
    target: tvm.target.Target
    cpu: CpuShape | None  # CPU targets: the shape edgec's default schedules are sized for
    database: ms.database.Database
    log_file: Path
    deadline: float | None
    notify: Callable[[], None]

    def tune(self, tasks: list[ms.ExtractedTask], progress: list[TaskProgress], plan: list[int]) -> str | None:
        """Measure `plan[i]` trials of `tasks[i]`; why it stopped early, if it did (TuneReport.stopped).

        MetaSchedule stops the whole run when one task's candidate search fails (a schedule rule
        that replays into an invalid schedule, seen with Winograd's rules). Such a task is tried
        again in a new search with another seed, and after SEARCH_ATTEMPTS failures it is given
        up with a warning (it keeps what it has, or its default schedule); the other tasks go on.
        The worker pools are shut down whatever happens.
        """
        options = self.options
        batches = [p // options.trials_per_iter for p in plan]
        issued, failures = [0] * len(tasks), [0] * len(tasks)
        builder = runner = None
        with _task_logs(self.log_file) as task_logger, _stop_on_interrupt() as interrupted:
            try:
                builder = PersistentBuilder(options.build_workers, options.build_timeout_s, options.preset.cross_compiler)
                runner = _runner(options)
                self._measure_defaults(tasks, progress, builder, runner)
                for attempt in range(SEARCH_ATTEMPTS * len(tasks)):
                    open_ids = [i for i in range(len(tasks)) if issued[i] < batches[i] and failures[i] < SEARCH_ATTEMPTS]
                    if not open_ids:
                        break
                    scheduler = _Scheduler([batches[i] - issued[i] for i in open_ids], self.deadline, interrupted)
                    try:
                        self._search([tasks[i] for i in open_ids], [progress[i] for i in open_ids], scheduler,
                                     builder, runner, task_logger, attempt)
                        return scheduler.stopped
                    except RuntimeError as err:
                        if scheduler.last is None:
                            raise
                        failed = open_ids[scheduler.last]
                        failures[failed] += 1
                        scheduler.issued[scheduler.last] -= 1  # that batch measured nothing
                        gave_up = "giving it up" if failures[failed] >= SEARCH_ATTEMPTS else "trying again"
                        log.warning("MetaSchedule's search for kernel %s failed (%s); %s, the other kernels go on",
                                    tasks[failed].task_name, str(err).strip().splitlines()[-1], gave_up)
                    finally:
                        for j, i in enumerate(open_ids):
                            issued[i] += scheduler.issued[j]
                return None
            finally:
                for pool_owner in (builder, runner):
                    if pool_owner is not None:
                        pool_owner.pool.shutdown()

    def _measure_defaults(self, tasks: list[ms.ExtractedTask], progress: list[TaskProgress],
                          builder: ms.builder.Builder, runner: ms.runner.Runner) -> None:
        """Measure every untuned task's default schedule first and commit it as a record.

        The default is a point of the task's design space (passes/default_schedule.py), so the
        evolutionary search starts its population from it, and as a record it bounds what a
        compile takes: a tuned kernel never ends slower than its default.
        """
        if self.cpu is None or (self.deadline is not None and time.monotonic() >= self.deadline):
            return  # a GPU target (no edgec defaults), or no time left for even one batch
        chosen = []
        with self.target:
            for task, task_progress in zip(tasks, progress):
                mod = task.dispatched[0]
                if task_progress.skipped or tuning_db.is_tuned(self.database, task, self.target):
                    continue
                sch = default_schedule(mod, self.target, self.cpu)
                if sch is not None:
                    chosen.append((mod, task_progress, sch))
        if not chosen:
            return
        built = builder.build([ms.builder.BuilderInput(sch.mod, self.target) for _, _, sch in chosen])
        args = [ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True) for _, _, sch in chosen]
        runnable = [(i, b) for i, b in enumerate(built) if b.error_msg is None]
        device = tvm.runtime.Device._DEVICE_TYPE_TO_NAME[self.target.get_target_device_type()]
        futures = runner.run([ms.runner.RunnerInput(b.artifact_path, device, args[i]) for i, b in runnable])
        ran = {i: future.result() for (i, _), future in zip(runnable, futures)}
        for i, (mod, task_progress, sch) in enumerate(chosen):
            result = ran.get(i)
            run_secs = result.run_secs if result is not None and result.error_msg is None else None
            task_progress.trials += 1
            if run_secs is None:
                task_progress.errors += 1
                log.warning("the default schedule of a kernel failed to %s: %s", "run" if result is not None else "build",
                            (result.error_msg if result is not None else built[i].error_msg or "").strip().splitlines()[-1:])
                continue
            self.database.commit_tuning_record(ms.database.TuningRecord(
                sch.trace, self.database.commit_workload(mod), run_secs, self.target, args[i]))
            latency = _mean_s(run_secs)
            if task_progress.best_s is None or latency < task_progress.best_s:
                task_progress.best_s = latency
        for b in built:
            if b.artifact_path is not None:
                shutil.rmtree(os.path.dirname(b.artifact_path), ignore_errors=True)
        self.notify()

    def _search(self, tasks: list[ms.ExtractedTask], progress: list[TaskProgress], scheduler: _Scheduler,
                builder: ms.builder.Builder, runner: ms.runner.Runner, task_logger: logging.Logger, attempt: int) -> None:
        options = self.options
        plan = [b * options.trials_per_iter for b in scheduler.batches]
        seed = None if options.seed is None else options.seed + attempt
        with self.target:  # edgec's schedule rules read the target from its scope (passes/winograd.py)
            ms.tune_tasks(
                tasks=_contexts(tasks, self.target, options, task_logger, seed),
                task_weights=[float(t.weight) for t in tasks],
                work_dir=str(self.log_file.parent),  # unused: database, builder and runner are given
                max_trials_global=sum(plan),
                max_trials_per_task=max(plan),
                num_trials_per_iter=options.trials_per_iter,
                builder=builder,
                runner=runner,
                database=self.database,
                cost_model="xgb",
                measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), _Progress(progress, self.notify)],
                task_scheduler=scheduler,
            )


@contextlib.contextmanager
def _stop_on_interrupt() -> Iterator[threading.Event]:
    """Ctrl-C sets the event (the scheduler then starts no new batch); a second Ctrl-C kills the run.

    MetaSchedule's C++ loop does not stop on a KeyboardInterrupt raised in its Python callbacks, so
    the first SIGINT only asks to stop, and the second gets the default action: records committed
    so far stay, and a half-written line is repaired by the next run. Only the main thread can take
    signals; elsewhere the event is never set.
    """
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def request_stop(signum: int, frame: object) -> None:
        event.set()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        log.warning("interrupted: finishing the batches in flight (their records are kept); Ctrl-C again to abort")

    previous = signal.signal(signal.SIGINT, request_stop)
    try:
        yield event
    finally:
        signal.signal(signal.SIGINT, previous)


def _contexts(tasks, target, options: TuneOptions, task_logger: logging.Logger, seed: int | None) -> list[ms.TuneContext]:
    seeds = ms.utils.fork_seed(seed, n=len(tasks))
    return [
        ms.TuneContext(
            mod=task.dispatched[0],
            target=target,
            space_generator=design_space(target),  # TVM's rules plus edgec's int8 dot-product kernels
            search_strategy=ms.search_strategy.EvolutionarySearch(
                population_size=options.population, init_min_unmeasured=min(50, options.population)),
            task_name=task.task_name,
            logger=task_logger.getChild(task.task_name),
            rand_state=seed,
            num_threads=len(os.sched_getaffinity(0)),
        ).clone()
        for task, seed in zip(tasks, seeds)
    ]


def _runner(options: TuneOptions) -> ms.runner.Runner:
    evaluator = ms.runner.EvaluatorConfig(**EVALUATOR)
    remote = options.remote
    if remote is None:
        configure_threads()  # the measuring worker inherits it: candidates run on every core, as models do
        return ms.runner.LocalRunner(timeout_sec=options.run_timeout_s, evaluator_config=evaluator,
                                     initializer=_ignore_interrupts)
    host, port = remote.tracker
    config = ms.runner.RPCConfig(
        tracker_host=host, tracker_port=port, tracker_key=remote.key, session_priority=1,
        session_timeout_sec=max(remote.timeout_s, options.run_timeout_s),
    )
    return ms.runner.RPCRunner(config, evaluator, max_workers=1, initializer=_ignore_interrupts)


@contextlib.contextmanager
def _task_logs(path: Path) -> Iterator[logging.Logger]:
    """MetaSchedule's per-task and scheduler logs go to one file for the run, not to the console."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s"))
    loggers = [logging.getLogger("edgec.tuning.tasks"), logging.getLogger("tvm.s_tir.meta_schedule")]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        yield loggers[0]
    finally:
        for logger, (level, propagate) in zip(loggers, saved):
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
        handler.close()


@derived_object
class _Scheduler(PyTaskScheduler):
    """Gives each task its planned batches, the furthest behind its plan first, until the deadline.

    Every task gets its first batch before any gets a second (ties go to the larger task), each
    batch is joined (and so committed) before its task is picked again, and no batch starts after
    the deadline or an interrupt; the ones in flight finish.
    """

    def __init__(self, batches: list[int], deadline: float | None, interrupted: threading.Event):
        super().__init__()
        self.batches = batches
        self.issued = [0] * len(batches)
        self.deadline = deadline
        self.interrupted = interrupted
        self.stopped: str | None = None
        self.last: int | None = None  # the task picked last: the one whose search runs now

    def next_task_id(self) -> int:
        scheduler = self._outer()
        tasks = scheduler.tasks_
        for i in range(len(tasks)):
            scheduler.touch_task(i)  # joins finished batches: their records are committed
        open_tasks = [i for i, t in enumerate(tasks) if not t.is_terminated and self.issued[i] < self.batches[i]]
        if not open_tasks:
            return -1
        if self.interrupted.is_set():
            self.stopped = "interrupted"
            return -1
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.stopped = "time budget"
            return -1
        task_id = min(open_tasks, key=lambda i: (self.issued[i] / self.batches[i], i))
        if tasks[task_id].runner_futures is not None:
            scheduler.join_running_task(task_id)
        self.issued[task_id] += 1
        self.last = task_id
        return task_id


@derived_object
class _Progress(PyMeasureCallback):
    """Counts each measured batch into the task's progress (after the records were committed)."""

    def __init__(self, progress: list[TaskProgress], notify: Callable[[], None]):
        super().__init__()
        self.progress = progress
        self.notify = notify

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        task = self.progress[task_id]
        for built, ran in zip(builder_results, runner_results):
            latency = _mean_s(ran.run_secs) if built.error_msg is None and ran.error_msg is None else None
            task.trials += 1
            if latency is None:
                task.errors += 1
            elif task.best_s is None or latency < task.best_s:
                task.best_s = latency
        self.notify()


@derived_object
class PersistentBuilder(PyBuilder):
    """Builds candidates in one pool of worker processes kept for the whole run.

    Each candidate becomes a shared library linked by the preset's compiler (its cross compiler
    when it has one), ready for `load_module` here or on an RPC server.
    """

    def __init__(self, workers: int, timeout_s: float, cross_compiler: str | None):
        super().__init__()
        self.timeout_s = timeout_s
        self.cross_compiler = cross_compiler
        self.pool = PopenPoolExecutor(max_workers=workers, timeout=timeout_s, initializer=_ignore_interrupts)

    def build(self, build_inputs: list[ms.builder.BuilderInput]) -> list[BuilderResult]:
        jobs = [(b.mod, b.target, self.cross_compiler) for b in build_inputs]
        results = []
        for outcome in self.pool.map_with_error_catching(_build_candidate, jobs):
            if outcome.status == StatusKind.COMPLETE:
                results.append(BuilderResult(outcome.value, None))
            elif outcome.status == StatusKind.TIMEOUT:
                results.append(BuilderResult(None, f"build timed out after {self.timeout_s:g} s"))
            else:
                results.append(BuilderResult(None, f"build failed: {outcome.value}"))
        return results


def _ignore_interrupts() -> None:
    """Worker initializer: Ctrl-C reaches the whole process group, but only the tuning process decides
    what to do with it (finish the batches in flight), so workers must not die of it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _build_candidate(job: tuple) -> str:
    """Worker side: compile one scheduled PrimFunc module and link it; returns the library path.

    MetaSchedule's RemoveBuildArtifact callback deletes the directory once it was measured.
    """
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
    from tvm.support import cc

    mod, target, cross_compiler = job
    # the runner feeds random weights, already in the layout the schedule chose
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    library = tvm.compile(mod, target=target)
    path = os.path.join(tempfile.mkdtemp(prefix="edgec-candidate-"), "candidate.so")
    library.export_library(path, fcompile=cc.cross_compiler(cross_compiler) if cross_compiler else None)
    return path
