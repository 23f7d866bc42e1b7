"""MetaSchedule tuning: records per preset, resume, apply at compile time, damaged and foreign
databases, a killed run, and measuring on an RPC device through a real tracker.

The model is a small ONNX conv net (4 kernels) tuned with 4 trials per kernel and a small search
population, so one tuning run takes tens of seconds on two cores. The tests named `test_slow_*`
start processes (a tuning run to kill; a tracker and a server) and take most of the file's time:
deselect them with `-k "not slow"`. Every process is killed with its group, and no MetaSchedule
worker (`tvm.exec.popen_worker`) may outlive the run that started it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pytest
from tvm.s_tir import meta_schedule as ms

from compiler.tuning import database as tuning_db
from compiler.tuning import provenance, remeasure
from compiler.tuning import search as tuning
from compiler.build import CompileOptions, compile_model
from compiler.errors import TuningError
from compiler.pipeline import PipelineConfig, run_to_tuning_point
from compiler.runtime import RemoteSpec, open_model
from compiler.tuning import TaskProgress, TuneOptions, plan_trials, tune_model
from targets import X86_BY_CAPABILITY, resolve_target
from tests.rpc_processes import HOST, Process, free_port, start_server, start_tracker
from tests.helpers import edgec, edgec_json, one_line_error

KERNELS = 4  # opset_model(13): conv+bias+relu, mean, squeeze, matmul+bias
PER_ITER = 4
FAST = dict(trials=KERNELS * PER_ITER, trials_per_iter=PER_ITER, population=32, seed=0, build_workers=2)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    import onnx

    from examples.onnx_cases import opset_model

    path = tmp_path_factory.mktemp("model") / "opset13.onnx"
    onnx.save(opset_model(13), path)
    return path


@pytest.fixture(scope="module")
def model(onnx_file):
    from compiler.frontends import load_model

    return load_model(onnx_file)


@pytest.fixture(scope="module")
def host():
    return resolve_target("host")


@pytest.fixture(scope="module")
def tuned(model, host, tmp_path_factory):
    """One tuning run in this process into a fresh tuning-log root: (root, report)."""
    root = tmp_path_factory.mktemp("tuning_logs")
    report = tune_model(model, TuneOptions(host, tuning_log=root, log_file=root / "tune.log",
                                           history=root / "history.jsonl", **FAST))
    return root, report


def popen_workers_of(pid: int) -> list[psutil.Process]:
    """The MetaSchedule worker processes `pid` started itself (not those of its RPC servers)."""
    return [p for p in psutil.Process(pid).children() if "popen_worker" in " ".join(p.cmdline())]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def copy_database(root: Path, tmp_path: Path) -> Path:
    """A copy of the tuned root to damage; returns the copy's host database directory."""
    shutil.copytree(root, tmp_path / "logs")
    return tmp_path / "logs" / "host"


def compile_with(model, host, root: Path | None, out: Path):
    sources = None if root is None else tuning_db.RecordSources.only(root)
    return compile_model(model, CompileOptions(host, PipelineConfig(tuning_log=sources)), out)


def run(artifact: Path, x: np.ndarray) -> np.ndarray:
    return next(iter(open_model(artifact).run({"opset13_input": x}).values()))


# ---------------------------------------------------------------------------------------- planning


def test_plan_gives_every_task_a_batch_and_the_rest_by_work():
    assert plan_trials([100.0, 1.0, 0.0], total=64, per_iter=8) == [48, 8, 8]
    assert plan_trials([3.0, 1.0], total=1, per_iter=16) == [16, 16]  # at least one batch each
    plan = plan_trials([5.0, 3.0, 2.0], total=100, per_iter=10)
    assert sum(plan) == 100 and plan == [50, 30, 20]


def test_work_is_the_time_a_kernel_takes_or_its_flops_at_the_measured_rate():
    slow = TaskProgress("slow", weight=1, flops=1e8, planned=0, best_s=0.010)  # 10 GFLOP/s: badly tuned
    fast = TaskProgress("fast", weight=2, flops=1e9, planned=0, best_s=0.010)  # 100 GFLOP/s
    new = TaskProgress("new", weight=1, flops=1e9, planned=0)  # no record: at the measured 70 GFLOP/s
    assert tuning._work([slow, fast, new]) == pytest.approx([0.010, 0.020, 1e9 / (2.1e9 / 0.030)])
    assert tuning._work([new, replace(new, weight=3)]) == [1e9, 3e9]  # nothing measured: FLOPs rank


def test_out_of_range_options_are_tuning_errors(host):
    for bad in (dict(trials=0), dict(time_budget_s=0), dict(trials_per_iter=0), dict(population=1)):
        with pytest.raises(TuningError):
            TuneOptions(host, **bad)


# ------------------------------------------------------------------------------------ tune + resume


def test_tune_commits_records_with_meta_and_leaves_no_workers(tuned, host):
    root, report = tuned
    directory = root / "host"
    assert report.database == directory and report.skipped == 0 and len(report.tasks) == KERNELS
    # each kernel's default schedule is measured first (one trial more than planned), then its batch
    assert all(t.planned == PER_ITER and 2 <= t.trials <= PER_ITER + 1 and t.best_s for t in report.tasks)
    records = lines(directory / tuning_db.RECORDS)
    assert len(records) == report.trials and len(lines(directory / tuning_db.WORKLOADS)) == KERNELS
    meta = json.loads((directory / tuning_db.META).read_text())
    assert meta == tuning_db.expected_meta(host.tvm_target()) and meta["target"]["mcpu"] == host.target["mcpu"]
    assert all(json.loads(r)[1][2]["mcpu"] == host.target["mcpu"] for r in records)  # MetaSchedule's own copy
    assert popen_workers_of(os.getpid()) == []


def test_history_records_how_the_estimate_fell_per_batch(tuned):
    root, report = tuned
    points = [json.loads(line) for line in lines(root / "history.jsonl")]
    assert len(points) == KERNELS + 2  # the plan, the default schedules measured, then one point per batch
    assert [p["trials"] for p in points] == sorted(p["trials"] for p in points) and points[-1]["trials"] == report.trials
    assert points[-1]["kernels_measured"] == KERNELS
    assert points[-1]["estimated_ms"] == pytest.approx(report.estimated_s * 1e3, rel=1e-3)


def test_compact_keeps_the_best_record_per_kernel_and_compiles_the_same(tuned, onnx_file, model, host, tmp_path):
    root, _ = tuned
    directory = copy_database(root, tmp_path)
    target = host.tvm_target()
    with tuning_db.open_for_tuning(directory, target) as database:
        tasks = ms.relax_integration.extract_tasks(run_to_tuning_point(model.mod, target, PipelineConfig()), target)
        best = [database.query_tuning_record(t.dispatched[0], target, t.task_name).run_secs for t in tasks]
    out = edgec("records", "compact", "--target", "host", "--tuning-log", tmp_path / "logs")
    assert f"{KERNELS} kernels, {len(lines(root / 'host' / tuning_db.RECORDS))} -> {KERNELS} records" in out
    assert len(lines(directory / tuning_db.RECORDS)) == KERNELS
    with tuning_db.open_for_tuning(directory, target) as database:
        kept = [database.query_tuning_record(t.dispatched[0], target, t.task_name).run_secs for t in tasks]
    assert [[float(v) for v in s] for s in kept] == [[float(v) for v in s] for s in best]
    manifest = compile_with(model, host, tmp_path / "logs", tmp_path / "out")
    assert manifest.tuning["tuned"] == KERNELS
    assert {"apply-tuning", "prepack-weights"} <= {p["phase"] for p in manifest.passes}


def test_compact_keeping_only_some_models_kernels_drops_every_other_workload(tuned, onnx_file, model, host, tmp_path):
    """A model made of the tuned model's first layer (conv + bias + relu) keeps that kernel's workload
    and record; the other three workloads go, lines and records, and the kept one still applies."""
    import onnx

    from compiler.frontends import load_model

    root, _ = tuned
    directory = copy_database(root, tmp_path)
    first_layer = onnx.load(onnx_file)
    graph = first_layer.graph
    kept_nodes = [node for node in graph.node if node.name in ("op_conv", "op_relu")]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info("relu", onnx.TensorProto.FLOAT, [1, 4, 8, 8]))
    onnx.save(first_layer, tmp_path / "first_layer.onnx")

    out = edgec("records", "compact", "--target", "host", "--tuning-log", tmp_path / "logs",
                "--keep-models", tmp_path / "first_layer.onnx")
    assert f"1 kernels, {len(lines(root / 'host' / tuning_db.RECORDS))} -> 1 records" in out
    assert len(lines(directory / tuning_db.WORKLOADS)) == 1 and len(lines(directory / tuning_db.RECORDS)) == 1
    assert compile_with(load_model(tmp_path / "first_layer.onnx"), host, tmp_path / "logs", tmp_path / "a").tuning["tuned"] == 1
    whole = compile_with(model, host, tmp_path / "logs", tmp_path / "b").tuning
    assert (whole["tasks"], whole["tuned"]) == (KERNELS, 1)


def test_remeasure_times_each_kernels_best_records_again_and_keeps_only_those(tuned, model, host, tmp_path):
    """A record whose stored time is a lucky minute's (here: impossibly fast) gets its real time back."""
    root, _ = tuned
    directory = copy_database(root, tmp_path)
    before = tuning_db.measured_records(tuning_db.read_repaired(directory))
    index = next(i for i, records in before.items() if len(records) >= 2)
    slowest = before[index][-1]
    records = [json.loads(line) for line in lines(directory / tuning_db.RECORDS)]
    for row in records:
        if row[0] == index and row[1][0] == slowest.body[0]:
            row[1][1] = [1e-9]
    (directory / tuning_db.RECORDS).write_text("".join(json.dumps(row) + "\n" for row in records))

    out = edgec("records", "remeasure", "--target", "host", "--top", 2, "--rounds", 3, "--tuning-log", tmp_path / "logs")
    assert f"of {KERNELS} kernels" in out
    after = tuning_db.measured_records(tuning_db.read_repaired(directory))
    assert sorted(after) == sorted(before)
    for i, kept in after.items():
        assert len(kept) == min(2, len(before[i])) and all(len(r.body[1]) == 3 for r in kept)  # a time per round
    lucky = next(r for r in after[index] if r.body[0] == slowest.body[0])  # it ranked first by its stored time
    assert lucky.mean_s > 1e-7  # a real kernel's time, not the lucky one
    assert all([r.mean_s for r in kept] == sorted(r.mean_s for r in kept) for kept in after.values())
    manifest = compile_with(model, host, tmp_path / "logs", tmp_path / "out")
    assert manifest.tuning["tuned"] == KERNELS


def test_remeasure_needs_code_that_runs_here_and_a_database(tmp_path):
    assert "cortex-a72 code cannot run here" in one_line_error("records", "remeasure", "--target", "cortex-a72")
    message = one_line_error("records", "remeasure", "--target", "host", "--tuning-log", tmp_path)
    assert message == f"error: no tuning database at {tmp_path / 'host'}; tune first with: edgec tune MODEL --target host"


def test_remeasure_warns_of_records_that_no_longer_replay(tuned, tmp_path, monkeypatch):
    """A record whose trace fails to replay is dropped with a warning naming the kernel, not silently."""
    root, _ = tuned
    directory = copy_database(root, tmp_path)
    before = tuning_db.measured_records(tuning_db.read_repaired(directory))
    index = next(i for i, records in before.items() if len(records) >= 2)
    broken = before[index][1].body[0]  # the second fastest record's trace
    replay = remeasure._candidate
    monkeypatch.setattr(remeasure, "_candidate", lambda record, workload: None if record.body[0] == broken else replay(record, workload))
    out = edgec("records", "remeasure", "--target", "host", "--top", 2, "--rounds", 1, "--tuning-log", tmp_path / "logs")
    workload = json.loads(lines(directory / tuning_db.WORKLOADS)[index])[0]
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"kernel {workload}: 1 of its 2 best records no longer replay" in warnings[0]
    after = tuning_db.measured_records(tuning_db.read_repaired(directory))
    assert [r.body[0] for r in after[index]] == [before[index][0].body[0]]  # the broken one was dropped
    noted = provenance.read_measured(directory)
    assert {note["cpu"] for note in noted.values()} == {provenance.cpu_name()} and len(noted) == KERNELS


def test_tune_notes_the_cpu_and_date_of_its_records(tuned):
    root, _ = tuned
    noted = provenance.read_measured(root / "host")
    assert len(noted) == KERNELS and set(noted) == {json.loads(line)[0] for line in lines(root / "host" / tuning_db.WORKLOADS)}
    assert {note["cpu"] for note in noted.values()} == {provenance.cpu_name()} != {"unknown"}
    for note in noted.values():  # a UTC time during this session
        measured = datetime.datetime.strptime(note["date"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
        assert datetime.timedelta(0) <= datetime.datetime.now(datetime.timezone.utc) - measured < datetime.timedelta(hours=3)


def test_records_list_names_kernels_models_cpu_and_date(tuned, onnx_file, tmp_path):
    root, report = tuned
    directory = copy_database(root, tmp_path)
    listed = edgec_json("records", "list", "--target", "host", "--tuning-log", tmp_path / "logs", "--model", onnx_file)
    assert listed["database"] == str(directory)
    kernels = listed["kernels"]
    assert len(kernels) == KERNELS and sum(k["records"] for k in kernels) == len(lines(directory / tuning_db.RECORDS))
    assert all(k["models"] == [onnx_file.name] and len(k["kernels"]) == 1 for k in kernels)
    assert sorted(k["kernels"][0] for k in kernels) == sorted(t.name for t in report.tasks)
    assert all(k["cpu"] == provenance.cpu_name() and k["best_ms"] > 0 for k in kernels)
    (directory / provenance.MEASURED).unlink()  # records from before edgec noted where they were measured
    table = edgec("records", "list", "--target", "host", "--tuning-log", tmp_path / "logs")
    assert table.splitlines()[0] == f"{directory}: {KERNELS} kernels, {len(lines(directory / tuning_db.RECORDS))} records"
    assert all(line.split()[-2:] == ["unknown", "unknown"] for line in table.splitlines()[2:])
    message = one_line_error("records", "list", "--target", "host", "--tuning-log", tmp_path / "none")
    assert message == f"error: no tuning database at {tmp_path / 'none' / 'host'}; tune first with: edgec tune MODEL --target host"


def test_rerun_skips_every_tuned_task_without_new_trials(tuned, model, host):
    root, first = tuned
    before = (root / "host" / tuning_db.RECORDS).read_bytes()
    start = time.monotonic()
    again = tune_model(model, TuneOptions(host, tuning_log=root, **FAST))
    assert again.skipped == KERNELS and again.trials == 0 and again.log_file is None
    assert (root / "host" / tuning_db.RECORDS).read_bytes() == before
    assert time.monotonic() - start < 30  # no worker pool, no search
    assert again.estimated_s == pytest.approx(first.estimated_s, rel=0.5)  # bests read back from the records


def test_refine_tunes_recorded_kernels_again_from_their_records(tuned, model, host, tmp_path):
    root, first = tuned
    directory = copy_database(root, tmp_path)
    before = len(lines(directory / tuning_db.RECORDS))
    again = tune_model(model, TuneOptions(host, tuning_log=tmp_path / "logs", refine=True, **FAST))
    assert again.skipped == 0 and all(t.planned == PER_ITER and t.trials >= 1 for t in again.tasks)
    assert len(lines(directory / tuning_db.RECORDS)) == before + again.trials  # appended, nothing lost
    firsts = {t.name: t.best_s for t in first.tasks}
    assert all(t.best_s <= firsts[t.name] for t in again.tasks)  # starts from the recorded best


def test_a_kernel_whose_search_keeps_failing_is_given_up_and_the_others_are_tuned(model, host, tmp_path, monkeypatch,
                                                                                 caplog):
    """MetaSchedule aborts tune_tasks when one task's candidate search raises (Winograd's rules did, with
    "The block no longer exists in the IRModule"); the failure is injected where it happens: after
    the scheduler picked the task, inside tune_tasks."""
    picked = tuning._Scheduler._cls.next_task_id
    failing = "fused_conv2d_add_relu1"  # the model's conv kernel

    def next_task_id(self):
        task_id = picked(self)
        if task_id >= 0 and self._outer().tasks_[task_id].ctx.task_name == failing:
            raise RuntimeError("The block no longer exists in the IRModule")
        return task_id

    monkeypatch.setattr(tuning._Scheduler._cls, "next_task_id", next_task_id)
    with caplog.at_level(logging.WARNING, logger="edgec"):
        report = tune_model(model, TuneOptions(host, tuning_log=tmp_path, **FAST))
    by_name = {t.name: t for t in report.tasks}
    # it keeps its default schedule, measured before the search
    assert by_name[failing].trials == 1 and by_name[failing].best_s is not None
    assert all(t.trials >= 2 for name, t in by_name.items() if name != failing)  # the others went on past their default
    warnings = [r.getMessage() for r in caplog.records if failing in r.getMessage()]
    assert len(warnings) == tuning.SEARCH_ATTEMPTS and "trying again" in warnings[0] and "giving it up" in warnings[-1]


def test_tune_cli_rerun_says_nothing_to_tune(tuned, onnx_file):
    root, _ = tuned
    out = edgec("tune", onnx_file, "--target", "host", "--tuning-log", root)
    assert f"nothing to tune: all {KERNELS} kernels have records in {root / 'host'}" in out


def test_time_budget_stops_before_the_next_batch(model, host, tmp_path):
    options = TuneOptions(host, tuning_log=tmp_path, log_file=tmp_path / "tune.log", **{**FAST, "time_budget_s": 1e-3})
    report = tune_model(model, options)
    assert report.stopped == "time budget" and report.trials == 0
    assert lines(tmp_path / "host" / tuning_db.RECORDS) == []
    assert popen_workers_of(os.getpid()) == []


# -------------------------------------------------------------------------------------- compile


def test_compile_applies_every_record_and_matches_the_untuned_build(tuned, onnx_file, model, tmp_path):
    root, _ = tuned
    out = edgec("compile", onnx_file, "--target", "host", "-o", tmp_path / "tuned", "--tuning-log", root)
    assert f"tuning: {KERNELS} of {KERNELS} kernels tuned ({KERNELS} from --tuning-log {root / 'host'})" in out
    assert "warning" not in out
    manifest = json.loads((tmp_path / "tuned" / "manifest.json").read_text())
    tuning = manifest["tuning"]
    assert {key: tuning[key] for key in ("databases", "tasks", "tuned", "tuned_from")} == {
        "databases": {str(root): str(root / "host")}, "tasks": KERNELS, "tuned": KERNELS, "tuned_from": {str(root): KERNELS}}
    assert len(tuning["sources"]) == KERNELS and set(tuning["sources"].values()) == {str(root)}
    assert "apply-tuning" in [p["phase"] for p in manifest["passes"]]
    edgec("compile", onnx_file, "--target", "host", "-o", tmp_path / "plain", "--tuning-log", root, "--untuned")
    assert json.loads((tmp_path / "plain" / "manifest.json").read_text())["tuning"] is None
    x = np.random.default_rng(0).standard_normal(model.inputs[0].shape).astype(np.float32)
    assert np.abs(run(tmp_path / "tuned", x) - run(tmp_path / "plain", x)).max() < 1e-4


def test_kernels_without_records_get_edgec_default_schedules_without_warning(tuned, model, host, tmp_path, caplog):
    root, _ = tuned
    directory = copy_database(root, tmp_path)
    records = [r for r in lines(directory / tuning_db.RECORDS) if json.loads(r)[0] == 0]  # one workload's only
    (directory / tuning_db.RECORDS).write_text("".join(r + "\n" for r in records))
    config = PipelineConfig(tuning_log=tuning_db.RecordSources.only(tmp_path / "logs"), dump_ir=tmp_path / "ir")
    with caplog.at_level(logging.WARNING, logger="edgec"):
        manifest = compile_model(model, CompileOptions(host, config), tmp_path / "partial")
    assert (manifest.tuning["databases"], manifest.tuning["tasks"], manifest.tuning["tuned"]) == (
        {str(tmp_path / "logs"): str(directory)}, KERNELS, 1)
    applied = next((tmp_path / "ir").glob("*-apply-tuning.py")).read_text()
    assert applied.count('"tirx.is_scheduled": True') == 1  # what was counted is what was applied
    assert not [r.getMessage() for r in caplog.records]  # nothing is naive: no warning
    tuned_kernel = next(iter(manifest.tuning["sources"]))
    assert manifest.schedules == {name: f"tuned ({tmp_path / 'logs'})" if name == tuned_kernel else "edgec-default"
                                  for name in manifest.schedules} and len(manifest.schedules) == KERNELS
    x = np.random.default_rng(1).standard_normal(model.inputs[0].shape).astype(np.float32)
    plain = compile_with(model, host, None, tmp_path / "plain")
    assert plain.tuning is None
    assert np.abs(run(tmp_path / "partial", x) - run(tmp_path / "plain", x)).max() < 1e-4


def test_tuning_measures_every_kernels_default_schedule_first(tuned, model, host):
    """The default is a record: the search starts from it and a compile never takes worse."""
    from compiler.tuning import model_kernels
    from passes.default_schedule import default_schedule

    root, _ = tuned
    target = host.tvm_target()
    database = tuning_db._open(root / "host", target)
    for mod, name in model_kernels(model, host, PipelineConfig(tuning_log=None)):
        with target:
            default = default_schedule(mod, target, host.cpu_shape())
        traces = [str(r.trace) for r in database.get_top_k(database.commit_workload(mod), 1000)]
        assert str(default.trace) in traces, name


def test_a_kernel_with_another_epilogue_replays_the_record_of_its_conv(tuned, host, tmp_path):
    """The tuned conv+bias+relu's record serves a conv+bias+sigmoid: same anchor block, transferred."""
    import onnx

    from compiler.frontends import load_model
    from examples.onnx_cases import opset_model

    root, _ = tuned
    proto = opset_model(13)
    next(n for n in proto.graph.node if n.op_type == "Relu").op_type = "Sigmoid"
    onnx.save(proto, tmp_path / "sigmoid.onnx")
    other = load_model(tmp_path / "sigmoid.onnx")
    manifest = compile_with(other, host, root, tmp_path / "transferred")
    conv = next(name for name in manifest.schedules if "conv2d" in name)
    assert manifest.schedules[conv] == f"transferred ({root})"
    assert manifest.tuning["transferred"] == {conv: str(root)} and conv not in manifest.tuning["sources"]
    x = np.random.default_rng(2).standard_normal(other.inputs[0].shape).astype(np.float32)
    compile_with(other, host, None, tmp_path / "default")
    assert np.abs(run(tmp_path / "transferred", x) - run(tmp_path / "default", x)).max() < 1e-4


# --------------------------------------------------------------------- where records are found


def test_user_database_is_env_var_else_xdg_data_home_else_home(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEC_TUNING_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert tuning_db.user_root() == tmp_path / "mine"
    monkeypatch.delenv("EDGEC_TUNING_DIR")
    assert tuning_db.user_root() == tmp_path / "xdg" / "edgec" / "tuning_logs"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tuning_db.user_root() == tmp_path / "home" / ".local" / "share" / "edgec" / "tuning_logs"


def test_tune_writes_and_compile_reads_the_user_database(tuned, model, host, tmp_path, monkeypatch):
    """$EDGEC_TUNING_DIR moves the user database: tune resumes there (nothing left to tune) and a
    compile with no --tuning-log takes every record from it, saying so per kernel."""
    root, _ = tuned
    shutil.copytree(root, tmp_path / "mine")
    monkeypatch.setenv("EDGEC_TUNING_DIR", str(tmp_path / "mine"))
    again = tune_model(model, TuneOptions(host, **FAST))
    assert again.database == tmp_path / "mine" / "host" and again.skipped == KERNELS
    tuning = compile_model(model, CompileOptions(host), tmp_path / "out").tuning
    assert tuning["databases"] == {"user": str(tmp_path / "mine" / "host")}  # no shipped records for host
    assert tuning["tuned"] == KERNELS and set(tuning["sources"].values()) == {"user"}


def test_every_kernel_gets_the_best_record_among_the_databases(tuned, onnx_file, model, host, tmp_path, monkeypatch):
    """The same records in the user database and a --tuning-log one, except that one kernel's record
    in the latter claims to be faster: that kernel's record comes from there, the rest from the
    user's (the earlier database keeps a tie); --untuned reads none of them."""
    root, _ = tuned
    shutil.copytree(root, tmp_path / "mine")
    extra = copy_database(root, tmp_path)
    rows = [json.loads(line) for line in lines(extra / tuning_db.RECORDS)]
    for row in rows:
        if row[0] == 0:
            row[1][1] = [1e-9]
    (extra / tuning_db.RECORDS).write_text("".join(json.dumps(row) + "\n" for row in rows))
    monkeypatch.setenv("EDGEC_TUNING_DIR", str(tmp_path / "mine"))

    out = edgec("compile", onnx_file, "--target", "host", "-o", tmp_path / "out", "--tuning-log", tmp_path / "logs")
    assert (f"tuning: {KERNELS} of {KERNELS} kernels tuned ({KERNELS - 1} from user {tmp_path / 'mine' / 'host'}, "
            f"1 from --tuning-log {extra})") in out
    tuning = json.loads((tmp_path / "out" / "manifest.json").read_text())["tuning"]
    assert tuning["tuned_from"] == {"user": KERNELS - 1, str(tmp_path / "logs"): 1}
    with tuning_db.open_for_compile(tuning_db.RecordSources.only(tmp_path / "logs"), host, host.tvm_target()) as records:
        target = host.tvm_target()
        tasks = ms.relax_integration.extract_tasks(run_to_tuning_point(model.mod, target, PipelineConfig()), target)
        faster = [t.task_name for t in tasks
                  if float(records.database.query_tuning_record(t.dispatched[0], target, t.task_name).run_secs[0]) == 1e-9]
    assert [name for name, label in tuning["sources"].items() if label != "user"] == faster
    edgec("compile", onnx_file, "--target", "host", "-o", tmp_path / "plain", "--tuning-log", tmp_path / "logs", "--untuned")
    assert json.loads((tmp_path / "plain" / "manifest.json").read_text())["tuning"] is None


def test_compile_from_another_directory_finds_the_shipped_records(example, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = edgec("compile", example("digits").onnx, "--target", "x86-64", "-o", "digits")
    shipped = tuning_db.shipped_root() / "x86-64"
    assert shipped == SHIPPED / "x86-64"
    tuning = json.loads((tmp_path / "digits" / "manifest.json").read_text())["tuning"]
    assert tuning["tuned"] == tuning["tasks"] > 0 and set(tuning["sources"].values()) == {"shipped"}
    assert f"tuning: {tuning['tasks']} of {tuning['tasks']} kernels tuned ({tuning['tasks']} from shipped {shipped})" in out


# ------------------------------------------------------------------------------ damaged databases


def test_corrupt_and_truncated_lines_are_skipped_with_a_warning(tuned, onnx_file, model, host, tmp_path, caplog):
    root, report = tuned
    directory = copy_database(root, tmp_path)
    good = lines(directory / tuning_db.RECORDS)
    damaged = [good[0], "[1, [garbage", '{"not": "a record"}', *good[1:], good[-1][: len(good[-1]) // 2]]
    (directory / tuning_db.RECORDS).write_text("\n".join(damaged))  # the last line is cut, as by a kill
    before = (directory / tuning_db.RECORDS).read_bytes()
    with caplog.at_level(logging.WARNING, logger="edgec"):
        manifest = compile_with(model, host, tmp_path / "logs", tmp_path / "out")
    assert [r.getMessage() for r in caplog.records] == [f"skipped 3 corrupt records in {directory} "
                                                         "(unreadable lines, or records of a lost workload)"]
    assert manifest.tuning["tuned"] == KERNELS
    out = edgec("compile", onnx_file, "--target", "host", "-o", tmp_path / "cli", "--tuning-log", tmp_path / "logs")
    assert [line for line in out.splitlines() if line.startswith("warning:")] == [
        f"warning: skipped 3 corrupt records in {directory} (unreadable lines, or records of a lost workload)"]
    assert (directory / tuning_db.RECORDS).read_bytes() == before  # a compile never writes the logs
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edgec"):  # tuning repairs in place, then opens it
        with tuning_db.open_for_tuning(directory, host.tvm_target()) as database:
            assert len(database) == len(good) == report.trials
            with pytest.raises(TuningError, match="another `edgec tune` is writing"):
                with tuning_db.open_for_tuning(directory, host.tvm_target()):
                    pass
    assert len(caplog.records) == 1
    assert lines(directory / tuning_db.RECORDS) == good


def test_records_that_no_longer_replay_are_dropped_and_the_rest_used(tuned, model, host, tmp_path, caplog):
    """MetaSchedule replays each record's trace as it reads the file, and one that fails used to fail
    the whole database (a `--refine` run once wrote such a record): only those records are dropped."""
    root, _ = tuned
    directory = copy_database(root, tmp_path)
    records = [json.loads(line) for line in lines(directory / tuning_db.RECORDS)]
    broken = 0
    for record in records:
        if record[0] == 0:  # every record of the first kernel names a block its kernel does not have
            get_block = next(inst for inst in record[1][0][0] if inst[0] == "GetSBlock")
            get_block[2][0] = "no_such_block"
            broken += 1
    (directory / tuning_db.RECORDS).write_text("".join(json.dumps(r) + "\n" for r in records))
    with caplog.at_level(logging.WARNING, logger="edgec"):
        manifest = compile_with(model, host, tmp_path / "logs", tmp_path / "out")
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith(f"skipped {broken} records in {directory} whose schedules MetaSchedule cannot replay")
    assert f"using the other {len(records) - broken}" in message
    assert 0 < broken and manifest.tuning["tuned"] == KERNELS - 1


def test_truncated_workload_drops_its_records_and_renumbers_the_rest(tuned, model, host, tmp_path, caplog):
    root, _ = tuned
    directory = copy_database(root, tmp_path)
    workloads = lines(directory / tuning_db.WORKLOADS)
    records = lines(directory / tuning_db.RECORDS)
    lost = sum(json.loads(r)[0] == 1 for r in records)
    del workloads[1]
    workloads.insert(1, workloads[0][:100])  # an unreadable line in the middle: later indexes shift
    (directory / tuning_db.WORKLOADS).write_text("\n".join(workloads) + "\n")
    with caplog.at_level(logging.WARNING, logger="edgec"):
        manifest = compile_with(model, host, tmp_path / "logs", tmp_path / "out")
    assert f"skipped {lost + 1} corrupt records" in caplog.records[0].getMessage()
    assert manifest.tuning["tuned"] == KERNELS - 1


def test_foreign_database_is_skipped_for_compile_and_refused_for_tuning(tuned, onnx_file, model, host, tmp_path, caplog):
    root, _ = tuned
    directory = copy_database(root, tmp_path)
    meta_path = directory / tuning_db.META
    meta = json.loads(meta_path.read_text())
    cases = {
        "it was tuned with TVM 0.26.0": {**meta, "tvm_version": "0.26.0"},
        "it was tuned for target": {**meta, "target": {**meta["target"], "mcpu": "haswell"}},
    }
    for reason, foreign in cases.items():
        meta_path.write_text(json.dumps(foreign))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="edgec"):
            manifest = compile_with(model, host, tmp_path / "logs", tmp_path / "out")
        assert manifest.tuning is None
        assert len(caplog.records) == 1 and reason in caplog.records[0].getMessage()
        message = one_line_error("tune", onnx_file, "--target", "host", "--tuning-log", tmp_path / "logs")
        assert "is not for this target" in message and reason in message
    meta_path.unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edgec"):
        assert compile_with(model, host, tmp_path / "logs", tmp_path / "out").tuning is None
    assert "has no meta.json" in caplog.records[0].getMessage()


# ------------------------------------------------------------------------------------ killed run


class TuneProcess:
    """`edgec tune` in its own process group, as a shell runs it, stopped with a signal to the group."""

    def __init__(self, onnx_file: Path, root: Path, log: Path):
        self.records = root / "host" / tuning_db.RECORDS
        self.log = log
        command = [sys.executable, "-m", "compiler.cli", "tune", onnx_file, "--target", "host", "--tuning-log", root,
                   "--trials", 400, "--trials-per-iter", PER_ITER, "--population", 32]
        with open(log, "wb") as out:  # its MetaSchedule log and candidate libraries go to TMPDIR
            self.popen = subprocess.Popen([str(c) for c in command], stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True, env={**os.environ, "TMPDIR": str(log.parent)})

    def wait_for_records(self, count: int, timeout_s: float = 240) -> list[psutil.Process]:
        """Wait until `count` records are committed; returns the run's worker processes."""
        deadline = time.monotonic() + timeout_s
        while not (self.records.is_file() and len(self.records.read_bytes().splitlines()) >= count):
            assert self.popen.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"{count} records not committed in {timeout_s} s:\n{self.log.read_text()}"
            time.sleep(0.2)
        return popen_workers_of(self.popen.pid)

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)


def record_workloads(path: Path) -> list[int]:
    return [json.loads(line)[0] for line in lines(path)]


def test_slow_interrupted_then_killed_runs_keep_their_records_and_resume(onnx_file, model, host, tmp_path):
    root = tmp_path / "logs"
    # Ctrl-C (SIGINT to the whole group): the batches in flight finish, the summary is printed, exit 130
    first = TuneProcess(onnx_file, root, tmp_path / "first.log")
    try:
        workers = first.wait_for_records(KERNELS + 1)  # every kernel's default, then a searched batch
        first.signal_group(signal.SIGINT)
        assert first.popen.wait(timeout=120) == 130, first.log.read_text()
    finally:
        first.signal_group(signal.SIGKILL)
    assert "(stopped early: interrupted)" in first.log.read_text()
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    interrupted = record_workloads(first.records)  # every line whole, every candidate measured
    assert all(json.loads(line)[1][1][0] < 1e9 for line in lines(first.records))
    searched = set(interrupted[KERNELS:])  # the defaults come first
    assert searched and len(searched) < KERNELS

    # SIGKILL mid-run: a resumed run searches only the rest; what it committed stays readable
    second = TuneProcess(onnx_file, root, tmp_path / "second.log")
    try:
        workers = second.wait_for_records(len(interrupted) + 1)
        assert workers  # killed while its builder and runner pools were up
    finally:
        second.signal_group(signal.SIGKILL)
        second.popen.wait(timeout=30)
    psutil.wait_procs(workers, timeout=10)
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    target = host.tvm_target()
    tasks = ms.relax_integration.extract_tasks(run_to_tuning_point(model.mod, target, PipelineConfig()), target)
    with tuning_db.open_for_tuning(root / "host", target) as database:  # repairs a cut last line
        assert len(database) >= len(interrupted)
        resumed = record_workloads(root / "host" / tuning_db.RECORDS)[len(interrupted):]
        assert not set(resumed) & searched  # the second run skipped what the first had searched
        assert sum(tuning_db.is_tuned(database, t, target) for t in tasks) == len(set(interrupted) | set(resumed))


# ---------------------------------------------------------------------------------------- remote


@pytest.fixture
def tracker_with_server(tmp_path):
    started: list[Process] = []
    try:
        port = start_tracker(tmp_path, started)
        yield port, start_server(tmp_path, port, "tune", started)
    finally:
        for process in started:
            process.kill()


def test_slow_remote_tuning_measures_on_the_rpc_server(tracker_with_server, model, host, tmp_path):
    port, server = tracker_with_server
    remote = RemoteSpec(tracker=(HOST, port), key="tune", timeout_s=30)
    options = TuneOptions(host, tuning_log=tmp_path, remote=remote, log_file=tmp_path / "tune.log",
                          **{**FAST, "trials": KERNELS * 2, "trials_per_iter": 2})
    report = tune_model(model, options)
    assert report.trials >= KERNELS and all(t.errors == 0 and t.best_s for t in report.tasks)
    assert len(lines(tmp_path / "host" / tuning_db.RECORDS)) == report.trials
    assert server.log.read_text().count("load_module") >= report.trials  # measured there, not here
    assert popen_workers_of(os.getpid()) == []


def test_dead_tracker_is_one_line_error(onnx_file, tmp_path):
    port = free_port()  # nothing listens
    message = one_line_error("tune", onnx_file, "--target", "host", "--tuning-log", tmp_path,
                             "--rpc-tracker", f"{HOST}:{port}", "--rpc-key", "tune")
    assert f"cannot reach the RPC tracker at {HOST}:{port}" in message
    assert not (tmp_path / "host").exists()


def test_presets_this_machine_cannot_run_need_a_device(onnx_file, tmp_path):
    message = one_line_error("tune", onnx_file, "--target", "cortex-a72", "--tuning-log", tmp_path)
    assert "cannot be measured on this machine" in message and "--rpc-tracker" in message


# ------------------------------------------------------------------------------------ shipped records


SHIPPED = Path(__file__).resolve().parents[2] / "tuning_logs"


@pytest.mark.parametrize("preset_name", X86_BY_CAPABILITY)
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "digits"])
def test_shipped_records_cover_every_kernel_of_the_examples(example, name, preset_name):
    """A fresh clone compiles the standard 224x224 ResNet-18/MobileNetV2 and the examples tuned for
    x86-64 and x86-avx512 (checked at compile time: it needs no such CPU)."""
    from compiler.frontends import load_model

    preset = resolve_target(preset_name)
    target = preset.tvm_target()
    directory = tuning_db.database_dir(SHIPPED, preset)
    assert tuning_db.foreign_reason(directory, target) is None
    mod = run_to_tuning_point(load_model(example(name).onnx).mod, target, PipelineConfig().for_preset(preset))
    tasks = ms.relax_integration.extract_tasks(mod, target)
    with tuning_db.open_for_compile(tuning_db.RecordSources(user=False), preset, target) as records:
        untuned = [t.task_name for t in tasks if not tuning_db.is_tuned(records.database, t, target)]
        assert [(o.label, o.directory) for o in records.opened] == [("shipped", directory)]
    assert untuned == []
    # shipped compact: one record per kernel
    assert len(lines(directory / tuning_db.RECORDS)) == len(lines(directory / tuning_db.WORKLOADS))


@pytest.mark.parametrize("preset_name", X86_BY_CAPABILITY)
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "digits"])
def test_shipped_records_cover_every_int8_kernel_of_the_examples(example, name, preset_name):
    """`--quantize int8` builds of the examples find records for every kernel too, whatever the
    calibration data (scales reach the kernels as tensors)."""
    from compiler.frontends import load_model
    from passes import QuantizeConfig

    preset = resolve_target(preset_name)
    target = preset.tvm_target()
    files = example(name)
    samples = tuple({"input": s} for s in np.random.default_rng(7).random((2, *files.input.shape), dtype=np.float32))
    config = PipelineConfig(quantize=QuantizeConfig(samples)).for_preset(preset)
    mod = run_to_tuning_point(load_model(files.onnx).mod, target, config)
    tasks = ms.relax_integration.extract_tasks(mod, target)
    with tuning_db.open_for_compile(tuning_db.RecordSources(user=False), preset, target) as records:
        untuned = [t.task_name for t in tasks if not tuning_db.is_tuned(records.database, t, target)]
    assert untuned == []


def test_a_record_that_fails_half_way_leaves_its_kernel_to_the_default_schedule(example, tmp_path):
    """ResNet-18 int8 with its first four 3x3 convs kept float: their Winograd kernels are ResNet-18's
    fp32 ones with a quantize epilogue, and the shipped fp32 record of the same conv fails part-way
    through on that epilogue. The kernel still gets its default schedule (it ran as TVM's naive
    loops, 10x slower, when the failed replay had rewritten it in place)."""
    from compiler.frontends import load_model
    from passes import QuantizeConfig

    files = example("resnet18")
    samples = tuple({"input": s} for s in np.random.default_rng(7).random((2, *files.input.shape), dtype=np.float32))
    quantize = QuantizeConfig(samples, keep_float=("conv2d_1", "conv2d_2", "conv2d_3", "conv2d_4"))
    config = PipelineConfig(quantize=quantize, tuning_log=tuning_db.RecordSources(user=False))
    manifest = compile_model(load_model(files.onnx), CompileOptions(resolve_target("x86-64"), config), tmp_path / "int8")
    winograd = {name: how for name, how in manifest.schedules.items() if "winograd" in name}
    assert any("multiply" in name and how == "edgec-default" for name, how in winograd.items()), winograd
    assert "naive" not in manifest.schedules.values(), manifest.schedules


def test_a_new_process_reads_records_whose_traces_name_a_dot_product_intrinsic(example, tmp_path):
    """int8 records tensorize with an intrinsic (edgec registers x86's on first use): a fresh
    `edgec compile` registers it before MetaSchedule parses the records, rather than skipping the
    shipped database as unreadable."""
    files = example("digits")
    np.savez(tmp_path / "calibration.npz", input=np.random.default_rng(0).random((4, *files.input.shape), dtype=np.float32))
    command = [sys.executable, "-m", "compiler.cli", "compile", files.onnx, "--target", "x86-avx512", "-o",
               tmp_path / "int8", "--quantize", "int8", "--calibration-data", tmp_path / "calibration.npz"]
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ignoring the tuning records" not in result.stdout + result.stderr
    manifest = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    assert manifest["tuning"]["tuned"] == manifest["tuning"]["tasks"]
    assert any(source.startswith("tuned (shipped) + vnni") for source in manifest["schedules"].values())
