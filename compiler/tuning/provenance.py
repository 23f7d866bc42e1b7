"""Where and when each kernel's records were measured, in a side file beside a tuning database.

MetaSchedule's record lines hold no extra fields, so `edgec tune` and `edgec records remeasure` note,
per workload whose records they measured, the CPU they ran on and the time, in
`<database>/records_measured.json`: {"<workload hash>": {"cpu": "...", "date": "2026-12-06T14:00:00Z"}}.
Records measured before this file existed (or copied in from elsewhere) are "unknown".
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tvm

MEASURED = "records_measured.json"
UNKNOWN = "unknown"


def cpu_name() -> str:
    """This machine's CPU model as /proc/cpuinfo names it ("model name" on x86, else the hardware line)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for key in ("model name", "Hardware", "cpu model", "Processor"):
        for line in text.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == key and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or UNKNOWN


def workload_record_counts(directory: Path) -> dict[str, int]:
    """Record lines per workload hash in the database at `directory` (read as is, without repair)."""
    from compiler.tuning.database import read_repaired

    repaired = read_repaired(Path(directory))
    hashes = [str(json.loads(line)[0]) for line in repaired.workloads]
    counts = dict.fromkeys(hashes, 0)
    for line in repaired.records:
        counts[hashes[json.loads(line)[0]]] += 1
    return counts


def read_measured(directory: Path) -> dict[str, dict[str, str]]:
    """Workload hash -> {"cpu", "date"} of what the side file knows (an unreadable file: nothing)."""
    path = Path(directory) / MEASURED
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def note_measured(directory: Path, hashes: Iterable[str], cpu: str) -> None:
    """Record that the records of these workloads were measured now on `cpu` (atomic rewrite)."""
    hashes = list(hashes)
    if not hashes:
        return
    directory = Path(directory)
    data: dict[str, Any] = read_measured(directory)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    for digest in hashes:
        data[str(digest)] = {"cpu": cpu, "date": date}
    fd, tmp = tempfile.mkstemp(prefix=f".{MEASURED}.", dir=directory)
    with os.fdopen(fd, "w") as file:
        json.dump(data, file, indent=1, sort_keys=True)
        file.write("\n")
    os.replace(tmp, directory / MEASURED)


def note_new_records(directory: Path, before: dict[str, int], cpu: str) -> None:
    """Note the workloads that have more records now than in `before` (from `workload_record_counts`)."""
    after = workload_record_counts(directory)
    note_measured(directory, [h for h, count in after.items() if count > before.get(h, 0)], cpu)


@dataclass(frozen=True)
class WorkloadRecords:
    """One kernel's records in a database: how many, the fastest stored time, where and when they
    were measured, and which of the models asked about use it (by task name)."""

    workload: str  # the workload's structural hash, as database_workload.json holds it
    records: int
    best_ms: float | None  # None: no record measured successfully
    cpu: str
    date: str
    kernels: tuple[str, ...] = ()
    models: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def list_records(directory: Path, target: tvm.target.Target,
                 models: Mapping[str, Sequence[tuple[tvm.IRModule, str]]] | None = None) -> list[WorkloadRecords]:
    """Every workload of the database at `directory`, with its records' provenance; `models` maps a
    model's name to its kernels (`tuning.model_kernels`) to say which workloads each one uses."""
    from compiler.tuning.database import measured_records, open_for_tuning, read_repaired

    directory = Path(directory)
    users: dict[str, tuple[set[str], set[str]]] = {}
    if models:
        with open_for_tuning(directory, target) as database:  # repaired first, if need be
            for model, kernels in models.items():
                for mod, name in kernels:
                    record = database.query_tuning_record(mod, target, name)
                    if record is not None:
                        names, used_by = users.setdefault(str(record.workload.as_json()[0]), (set(), set()))
                        names.add(name)
                        used_by.add(model)
    repaired = read_repaired(directory)
    measured = measured_records(repaired)
    counts = workload_record_counts(directory)
    known = read_measured(directory)
    rows = []
    for index, line in enumerate(repaired.workloads):
        digest = str(json.loads(line)[0])
        best = measured.get(index)
        note = known.get(digest, {})
        names, used_by = users.get(digest, (set(), set()))
        rows.append(WorkloadRecords(digest, counts.get(digest, 0), best[0].mean_s * 1e3 if best else None,
                                    str(note.get("cpu", UNKNOWN)), str(note.get("date", UNKNOWN)),
                                    tuple(sorted(names)), tuple(sorted(used_by))))
    return rows
