"""Tuning records on disk: one MetaSchedule JSON database per target preset, checked before use.

Where records live (`RecordSources`): the databases shipped inside the package (the top-level
`tuning_logs/` of the repository, installed with the wheel; `shipped_root()`), the user's own
(`user_root()`: $EDGEC_TUNING_DIR, else $XDG_DATA_HOME/edgec/tuning_logs, else
~/.local/share/edgec/tuning_logs; `edgec tune` writes there by default) and a `--tuning-log DIR`.
A compile reads every one of them that exists and is for its target, and gives each kernel the best
record among them (MetaSchedule's UnionDatabase); `TuningSummary` says which database each came from.

Layout: `<root>/<preset>/` holds MetaSchedule's two JSON-lines files and edgec's `meta.json`:

    database_workload.json        one line per task: [structural hash, serialized TIR module]
    database_tuning_record.json   one line per measured candidate: [workload line index, record]
    meta.json                     {"tvm_version": ..., "target": <the TVM target as JSON>}

MetaSchedule's lookups ignore the target, so a database is used only for the exact target and TVM
version its meta.json names; any other is "foreign" and skipped whole with a warning. A tuning run
that was killed can leave a half-written last line, which makes MetaSchedule refuse the whole
database, so every database is repaired first: unreadable lines and records whose workload is gone
are dropped, with one warning per database. A compile never writes to the tuning logs: it reads a
repaired copy.

Warnings go to the `edgec.tuning` logger; the CLI prints each as one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import json
import logging
import os
import tempfile
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tvm
from tvm.s_tir import meta_schedule as ms

from compiler.errors import TuningError
from passes.dot_product import import_tensor_intrinsics
from targets import Preset

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
META = "meta.json"

log = logging.getLogger("edgec.tuning")


# ----------------------------------------------------------------------------------------- sources

SHIPPED = "shipped"
USER = "user"


def shipped_root() -> Path:
    """The records shipped with edgec: the `tuning_logs` package's directory (in the source tree or
    installed from the wheel), whatever the working directory."""
    return Path(str(importlib.resources.files("tuning_logs")))


def user_root() -> Path:
    """The user's own records: $EDGEC_TUNING_DIR, else $XDG_DATA_HOME/edgec/tuning_logs, else
    ~/.local/share/edgec/tuning_logs."""
    if os.environ.get("EDGEC_TUNING_DIR"):
        return Path(os.environ["EDGEC_TUNING_DIR"]).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "edgec" / "tuning_logs"


@dataclass(frozen=True)
class RecordSources:
    """Which tuning databases a compile reads: the shipped ones, the user's, and an extra root
    (`--tuning-log DIR`, relative to the working directory). The user root is looked up when the
    databases are opened, so $EDGEC_TUNING_DIR is read then."""

    shipped: bool = True
    user: bool = True
    extra: Path | None = None

    @classmethod
    def only(cls, root: Path) -> RecordSources:
        """Only the databases under `root` (for tests and scripts that tuned into a root of their own)."""
        return cls(shipped=False, user=False, extra=Path(root))

    def roots(self) -> list[tuple[str, Path]]:
        """(label, root) in lookup order; label is "shipped", "user" or the extra path as given."""
        roots = [(SHIPPED, shipped_root())] if self.shipped else []
        roots += [(USER, user_root())] if self.user else []
        return roots + ([(str(self.extra), Path(self.extra))] if self.extra is not None else [])


# ------------------------------------------------------------------------------------------ layout


def database_dir(root: Path, preset: Preset) -> Path:
    """`root/<preset>/`, or `root` itself when it already is a database directory."""
    root = Path(root)
    if (root / META).is_file() or (root / WORKLOADS).is_file():
        return root
    if preset.name == "custom":  # raw target dicts share the name: one directory per distinct target
        digest = hashlib.sha256(json.dumps(dict(preset.target), sort_keys=True).encode()).hexdigest()
        return root / f"custom-{digest[:12]}"
    return root / preset.name


def expected_meta(target: tvm.target.Target) -> dict[str, Any]:
    """What meta.json must say for records to be used with `target` under this TVM."""
    return {"tvm_version": tvm.__version__, "target": json.loads(str(target))}


def foreign_reason(directory: Path, target: tvm.target.Target) -> str | None:
    """Why the database in `directory` must not be used for `target` (None: it may be)."""
    path = Path(directory) / META
    if not path.is_file():
        return f"it has no {META}, so its target and TVM version are unknown"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return f"its {META} is unreadable ({err})"
    want = expected_meta(target)
    if not isinstance(meta, dict) or meta.get("tvm_version") != want["tvm_version"]:
        found = meta.get("tvm_version") if isinstance(meta, dict) else None
        return f"it was tuned with TVM {found}, this is TVM {want['tvm_version']}"
    if meta.get("target") != want["target"]:
        return f"it was tuned for target {json.dumps(meta.get('target'))}, not {json.dumps(want['target'])}"
    return None


# ------------------------------------------------------------------------------------------ repair


@dataclass(frozen=True)
class Repaired:
    """A database's readable lines; records are renumbered to the workload lines that were kept."""

    workloads: list[str]
    records: list[str]
    dropped: int  # unreadable lines plus records whose workload was dropped or never written

    def write(self, directory: Path) -> None:
        for name, lines in ((WORKLOADS, self.workloads), (RECORDS, self.records)):
            _write_atomic(Path(directory) / name, "".join(line + "\n" for line in lines))


def read_repaired(directory: Path) -> Repaired:
    """Parse both files line by line, keeping only what MetaSchedule can load."""
    directory = Path(directory)
    workloads: list[str] = []
    renumber: dict[int, int] = {}  # workload line index in the file -> index among kept lines
    dropped = 0
    for index, line in enumerate(_lines(directory / WORKLOADS)):
        if _valid_workload(line):
            renumber[index] = len(workloads)
            workloads.append(line)
        else:
            dropped += 1
    records: list[str] = []
    for line in _lines(directory / RECORDS):
        row = _record(line)
        if row is None or row[0] not in renumber:
            dropped += 1
        elif renumber[row[0]] == row[0]:
            records.append(line)
        else:
            records.append(json.dumps([renumber[row[0]], row[1]], separators=(",", ":")))
    return Repaired(workloads, records, dropped)


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    text = path.read_bytes().decode("utf-8", errors="replace")
    return [line for line in text.splitlines() if line.strip()]


def _valid_workload(line: str) -> bool:
    row = _json(line)
    return isinstance(row, list) and len(row) == 2 and all(isinstance(v, str) for v in row)


def _record(line: str) -> list | None:
    """[workload index, [trace, run_secs, target, args_info]] or None when it is not that shape."""
    row = _json(line)
    if not (isinstance(row, list) and len(row) == 2 and type(row[0]) is int and isinstance(row[1], list)):
        return None
    body = row[1]
    if len(body) != 4 or not isinstance(body[0], list) or not isinstance(body[2], dict) or not isinstance(body[3], list):
        return None
    if body[1] is not None and not (isinstance(body[1], list) and all(isinstance(v, (int, float)) for v in body[1])):
        return None
    return row


def _json(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def _write_atomic(path: Path, text: str) -> None:
    """Replace `path` whole (a kill leaves the old file or the new one), keeping its permissions."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as stream:
            stream.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _warn_dropped(repaired: Repaired, directory: Path) -> None:
    if repaired.dropped:
        log.warning("skipped %d corrupt records in %s (unreadable lines, or records of a lost workload)",
                    repaired.dropped, directory)


def _open(directory: Path, target: tvm.target.Target) -> ms.database.JSONDatabase:
    import_tensor_intrinsics(target)  # reading a record parses its trace, which may name an intrinsic
    return ms.database.JSONDatabase(work_dir=str(directory), allow_missing=False)


# ------------------------------------------------------------------------------------- for tuning


@contextlib.contextmanager
def open_for_tuning(directory: Path, target: tvm.target.Target) -> Iterator[ms.database.JSONDatabase]:
    """The database that `edgec tune` appends to: created with its meta.json, or repaired in place.

    A foreign database is never touched: tuning into it would mix targets. The database stays
    locked while the block runs: a second tuning run into it fails at once instead of interleaving
    (and repairing away) the first one's lines.
    """
    directory = Path(directory)
    has_records = any((directory / name).is_file() for name in (WORKLOADS, RECORDS))
    if has_records or (directory / META).is_file():
        reason = foreign_reason(directory, target)
        if reason is not None:
            raise TuningError(f"the tuning database {directory} is not for this target: {reason}; "
                              "pass another --tuning-log DIR, or move it away")
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / META).is_file():  # written first: a database without it is never ours
        _write_atomic(directory / META, json.dumps(expected_meta(target), indent=2) + "\n")
    with _locked(directory):
        repaired = read_repaired(directory)
        if repaired.dropped or not has_records:
            _warn_dropped(repaired, directory)
            repaired.write(directory)
        try:
            database = _open(directory, target)
        except (RuntimeError, ValueError) as err:  # what MetaSchedule's JSON reader raises
            raise TuningError(f"MetaSchedule cannot open the tuning database {directory} ({_last_line(err)}); "
                              "move it away and tune again") from None
        yield database


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on the database (on its meta.json, so that no lock file is left behind)."""
    import fcntl

    with open(directory / META, "rb") as meta:
        try:
            fcntl.flock(meta.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TuningError(f"another `edgec tune` is writing the tuning database {directory}; "
                              "wait for it to finish, or pass another --tuning-log DIR") from None
        yield


@dataclass(frozen=True)
class CompactReport:
    directory: Path
    workloads: int
    records_before: int
    records_after: int
    bytes_before: int
    bytes_after: int


def compact(directory: Path, target: tvm.target.Target, keep_only: Collection[str] | None = None) -> CompactReport:
    """Keep only the fastest valid record of every workload (what a compile uses), for shipping.

    Without `keep_only`, workload lines keep their numbering (a workload without a valid measurement
    keeps its line and loses its records), so only the records file is replaced. With `keep_only`
    (workload hashes, from `used_workload_hashes` for the models the records serve), every other
    workload goes too, lines and records both: a workload line holds its whole kernel, a megabyte
    for a Winograd one. Files are replaced atomically, under the database lock.
    """
    directory = Path(directory)
    size = lambda: sum((directory / name).stat().st_size for name in (WORKLOADS, RECORDS)  # noqa: E731
                       if (directory / name).is_file())
    with locked_records(directory, target) as repaired:
        before = size()
        best = {index: records[:1] for index, records in measured_records(repaired).items()}
        if keep_only is None:
            write_records(directory, best)
            return CompactReport(directory, len(best), len(repaired.records), len(best), before, size())
        kept = [index for index, line in enumerate(repaired.workloads)
                if json.loads(line)[0] in keep_only and index in best]
        renumber = {old: new for new, old in enumerate(kept)}
        Repaired([repaired.workloads[index] for index in kept],
                 [json.dumps([renumber[index], best[index][0].body], separators=(",", ":")) for index in kept],
                 0).write(directory)
        return CompactReport(directory, len(kept), len(repaired.records), len(kept), before, size())


def used_workload_hashes(database: ms.database.Database, target: tvm.target.Target,
                         kernels: Sequence[tuple[tvm.IRModule, str]]) -> set[str]:
    """Hashes (as the workload lines hold them) of the workloads with records that these kernels
    look up: (module, task name) pairs, as `tuning.model_kernels` lists a model's."""
    used = set()
    for mod, name in kernels:
        record = database.query_tuning_record(mod, target, name)
        if record is not None:
            used.add(str(record.workload.as_json()[0]))
    return used


@contextlib.contextmanager
def locked_records(directory: Path, target: tvm.target.Target) -> Iterator[Repaired]:
    """The database's readable lines, repaired on disk if need be, while it is locked (no tuning run
    writes to it meanwhile): for rewriting its records with `write_records`."""
    directory = Path(directory)
    reason = foreign_reason(directory, target)
    if reason is not None:
        raise TuningError(f"the tuning database {directory} is not for this target: {reason}")
    with _locked(directory):
        repaired = read_repaired(directory)
        if repaired.dropped:
            _warn_dropped(repaired, directory)
            repaired.write(directory)
        yield repaired


@dataclass(frozen=True)
class MeasuredRecord:
    mean_s: float
    body: list  # [trace, run_secs, target, args_info], as in the records file

    def with_run_secs(self, run_secs: list[float]) -> MeasuredRecord:
        return MeasuredRecord(sum(run_secs) / len(run_secs), [self.body[0], run_secs, *self.body[2:]])


def measured_records(repaired: Repaired) -> dict[int, list[MeasuredRecord]]:
    """Every workload's successfully measured records, fastest first, by workload line index."""
    by_workload: dict[int, list[MeasuredRecord]] = {}
    for line in repaired.records:
        index, body = _record(line)
        run_secs = body[1]
        if not run_secs or any(v >= 1e9 for v in run_secs):  # MetaSchedule's mark of a failed run
            continue
        by_workload.setdefault(index, []).append(MeasuredRecord(sum(run_secs) / len(run_secs), body))
    for records in by_workload.values():
        records.sort(key=lambda record: record.mean_s)
    return by_workload


def write_records(directory: Path, by_workload: dict[int, list[MeasuredRecord]]) -> None:
    """Replace the records file with these records (the workload lines stay as they are); call it
    inside `locked_records`."""
    lines = [json.dumps([index, record.body], separators=(",", ":"))
             for index in sorted(by_workload) for record in by_workload[index]]
    _write_atomic(Path(directory) / RECORDS, "".join(line + "\n" for line in lines))


def is_tuned(database: ms.database.Database, task: ms.ExtractedTask, target: tvm.target.Target) -> bool:
    """Whether the database holds a valid measured schedule for the task's workload."""
    return database.query_tuning_record(task.dispatched[0], target, task.task_name) is not None


# ------------------------------------------------------------------------------------ for compile


@dataclass(frozen=True)
class TuningSummary:
    """What a compile took from the tuning records; recorded in the manifest."""

    databases: dict[str, str]  # label ("shipped", "user", a --tuning-log path) -> database directory read
    tasks: int
    sources: dict[str, str]  # task name -> label of the database whose record it got (the best one)
    untuned: tuple[str, ...]  # names of the tasks compiled with default schedules
    # task name -> label of the database whose record of the same anchor computation (its conv or
    # matmul, another epilogue) it replays; filled by the transfer pass after the exact lookups
    transferred: dict[str, str] = field(default_factory=dict)

    @property
    def tuned(self) -> int:
        return len(self.sources)

    def tuned_from(self) -> dict[str, int]:
        """Tuned kernels per database label, in the order the databases were read."""
        counts = {label: 0 for label in self.databases}
        for label in self.sources.values():
            counts[label] += 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {"databases": self.databases, "tasks": self.tasks, "tuned": self.tuned,
                "tuned_from": self.tuned_from(), "sources": self.sources, "transferred": self.transferred}


@dataclass(frozen=True)
class OpenedDatabase:
    label: str
    directory: Path  # the database read (a repaired temporary copy of it is what is open)
    database: ms.database.Database


class TuningRecords:
    """The opened databases, applied by the pipeline's "apply-tuning" phase as one: every kernel
    gets the best record among them (MetaSchedule's UnionDatabase: lowest mean run time, the
    earlier database on a tie).

    The apply pass also records which of the module's tasks the records cover and from which
    database (`summary`).
    """

    def __init__(self, opened: Sequence[OpenedDatabase]):
        self.opened = tuple(opened)
        self.database = ms.database.UnionDatabase(*(o.database for o in self.opened))
        self.summary: TuningSummary | None = None
        self._anchor: list[tuple[str, ms.database.Database]] | None = None

    def source(self, task: ms.ExtractedTask, target: tvm.target.Target) -> str | None:
        """Label of the database whose record the union gives `task` (None: no record)."""
        best: tuple[float, str] | None = None
        for opened in self.opened:
            record = opened.database.query_tuning_record(task.dispatched[0], target, task.task_name)
            if record is None:
                continue
            mean = _mean_run_s(record)
            if best is None or mean < best[0]:  # strict: the earlier database keeps a tie, as the union does
                best = (mean, opened.label)
        return None if best is None else best[1]

    def apply_pass(self) -> tvm.transform.Pass:
        """Give every PrimFunc with a record its best schedule; the rest keep the default lowering."""

        @tvm.transform.module_pass(opt_level=0, name="ApplyTuningRecords")
        def apply(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
            target = tvm.target.Target.current(allow_none=False)
            tasks = ms.relax_integration.extract_tasks(mod, target)
            labels = {t.task_name: self.source(t, target) for t in tasks}
            self.summary = TuningSummary(
                databases={o.label: str(o.directory) for o in self.opened},
                tasks=len(tasks),
                sources={name: label for name, label in labels.items() if label is not None},
                untuned=tuple(name for name, label in labels.items() if label is None),
            )
            with self.database:
                return tvm.relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)

        return apply

    def transfer_pass(self) -> tvm.transform.Pass:
        """Kernels without an exact record replay the best record of a kernel with the same anchor
        block (MetaSchedule's "anchor-block" equality: the same conv or matmul with another
        epilogue, as ResNets share with each other) where its trace still applies: a tuned schedule
        of the same computation is expected to beat the analytic default. Run after `apply_pass`."""

        @tvm.transform.module_pass(opt_level=0, name="TransferTuningRecords")
        def transfer(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
            from passes.default_schedule import SCHEDULED_ATTR, kernel_module, with_schedule

            target = tvm.target.Target.current(allow_none=False)
            updates = {}
            for gv, func in mod.functions_items():
                if not isinstance(func, tvm.tirx.PrimFunc) or func.attrs.get(SCHEDULED_ATTR, False):
                    continue
                found = self._anchor_record(kernel_module(func), target, gv.name_hint)
                if found is None:
                    continue
                label, record = found
                sch = tvm.s_tir.Schedule(kernel_module(func))
                try:
                    record.trace.apply_to_schedule(sch, remove_postproc=False)
                except (RuntimeError, ValueError, TypeError):  # its decisions do not fit these shapes
                    continue
                updates[gv] = with_schedule(func, sch.mod["main"])
                if self.summary is not None:
                    self.summary.transferred[gv.name_hint] = label
            if not updates:
                return mod
            mod = mod.clone()
            for gv, func in updates.items():
                mod[gv] = func
            return mod

        return transfer

    def _anchor_record(self, mod: tvm.IRModule, target: tvm.target.Target,
                       name: str) -> tuple[str, ms.database.TuningRecord] | None:
        """The fastest record, among the databases, of a workload with `mod`'s anchor block."""
        best = None
        for label, database in self._anchor_databases():
            record = database.query_tuning_record(mod, target, name)
            if record is not None and (best is None or _mean_run_s(record) < _mean_run_s(best[1])):
                best = (label, record)
        return best

    def _anchor_databases(self) -> list[tuple[str, ms.database.Database]]:
        """Each database's best record per workload, keyed by anchor block (built on first use)."""
        if self._anchor is None:
            self._anchor = []
            for opened in self.opened:
                best: dict[str, ms.database.TuningRecord] = {}
                for record in opened.database.get_all_tuning_records():
                    key = str(record.workload.as_json()[0])  # the structural hash it was stored under
                    if record.run_secs is not None and (key not in best or _mean_run_s(record) < _mean_run_s(best[key])):
                        best[key] = record
                anchored = ms.database.MemoryDatabase(module_equality="anchor-block")
                for record in best.values():
                    workload = anchored.commit_workload(record.workload.mod)
                    anchored.commit_tuning_record(ms.database.TuningRecord(
                        record.trace, workload, record.run_secs, record.target, record.args_info))
                self._anchor.append((opened.label, anchored))
        return self._anchor


def _mean_run_s(record: ms.database.TuningRecord) -> float:
    """A record's mean run time as MetaSchedule ranks records (no measurement: never the best)."""
    run_secs = [float(v) for v in record.run_secs] if record.run_secs is not None else []
    return sum(run_secs) / len(run_secs) if run_secs else float("inf")


@contextlib.contextmanager
def open_for_compile(sources: RecordSources | None, preset: Preset,
                     target: tvm.target.Target) -> Iterator[TuningRecords | None]:
    """The preset's tuning records from every database of `sources` that exists and is for this
    target, or None when there are none (or `sources` is None: --untuned).

    Each database is repaired into a temporary copy, so the tuning logs stay untouched. A directory
    named twice (`--tuning-log` pointing at the shipped or user root) is read once, under its first label.
    """
    with contextlib.ExitStack() as stack:
        opened, seen = [], set()
        for label, root in (sources.roots() if sources is not None else []):
            directory = database_dir(root, preset)
            if directory.resolve() in seen:
                continue
            seen.add(directory.resolve())
            database = _open_copy(directory, target, stack)
            if database is not None:
                opened.append(OpenedDatabase(label, directory, database))
        if not opened:
            yield None
            return
        yield TuningRecords(opened)


def _open_copy(directory: Path, target: tvm.target.Target, stack: contextlib.ExitStack) -> ms.database.Database | None:
    """A repaired temporary copy of the database in `directory`, open; None (with a warning if it
    is there but unusable) when it cannot be used for `target`."""
    if not (directory / WORKLOADS).is_file():
        return None
    reason = foreign_reason(directory, target)
    if reason is not None:
        log.warning("ignoring the tuning records in %s: %s", directory, reason)
        return None
    repaired = read_repaired(directory)
    _warn_dropped(repaired, directory)
    copy = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgec-records-")))
    repaired.write(copy)
    try:
        return _open(copy, target)
    except (RuntimeError, ValueError) as err:  # what MetaSchedule's JSON reader raises
        reason = _last_line(err)
    # MetaSchedule replays every record's trace as it reads them, and one trace that no longer
    # replays (seen after a tuning run) fails the whole file: drop only those records
    unreplayable = _unreplayable_records(repaired, target, copy)
    if unreplayable is None:
        log.warning("ignoring the tuning records in %s: MetaSchedule cannot read them (%s)", directory, reason)
        return None
    log.warning("skipped %d records in %s whose schedules MetaSchedule cannot replay (%s); using the other %d",
                len(unreplayable), directory, reason, len(repaired.records) - len(unreplayable))
    kept = Repaired(repaired.workloads, [r for i, r in enumerate(repaired.records) if i not in unreplayable],
                    repaired.dropped + len(unreplayable))
    kept.write(copy)
    return _open(copy, target)


def _unreplayable_records(repaired: Repaired, target: tvm.target.Target, scratch: Path) -> set[int] | None:
    """Indices of the records that fail MetaSchedule's reader, found by bisection (a reader per
    probe, so about log2(records) of them per bad record); None if the workloads alone fail.
    `scratch` holds `repaired` as written: each probe rewrites only its records file."""

    def readable(indices: list[int]) -> bool:
        _write_atomic(scratch / RECORDS, "".join(repaired.records[i] + "\n" for i in indices))
        try:
            _open(scratch, target)
            return True
        except (RuntimeError, ValueError):
            return False

    if not readable([]):
        return None
    bad: set[int] = set()
    pending = [list(range(len(repaired.records)))]
    while pending:
        indices = pending.pop()
        if readable(indices):
            continue
        if len(indices) == 1:
            bad.update(indices)
        else:
            pending += [indices[:len(indices) // 2], indices[len(indices) // 2:]]
    return bad


# ----------------------------------------------------------------------------------------- shared

def _last_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
