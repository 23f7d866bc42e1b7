"""`edgec optimize`: the candidate plan, the Pareto front and reports, and whole searches on the digits CNN
(with its fine-tune hook), a budget no candidate meets, bad evaluation data, the time budget, and an RPC
device that dies mid-search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compiler.optimize import (Candidate, CandidateResult, EvalSet, OptimizeOptions, OptimizeReport, candidates,
                               markdown, optimize, pareto_front, plot_pareto, skip_reason)
from targets import resolve_target
from tests.helpers import edgec, one_line_error

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits_files(example, tmp_path_factory) -> dict[str, Path]:
    """The digits example (trained, seed 0: the model the fine-tune hook prunes), its test split with
    labels, the same without, and 100 training images for calibration."""
    from examples import digits_cnn

    directory = tmp_path_factory.mktemp("optimize-data")
    x_train, _, x_test, y_test = digits_cnn.load_digits_split(0)
    files = {"model": example("digits").onnx, "eval": directory / "eval.npz", "unlabelled": directory / "unlabelled.npz",
             "calibration": directory / "calibration.npz"}
    np.savez(files["eval"], input=x_test, label=y_test)
    np.savez(files["unlabelled"], input=x_test)
    np.savez(files["calibration"], input=x_train[:100])
    return files


def _options(**settings) -> OptimizeOptions:
    calibration = (dict(input=np.zeros((1, 1, 8, 8), np.float32)),)
    return OptimizeOptions(resolve_target(settings.pop("target", "x86-64")), settings.pop("max_drop", 0.01), calibration,
                           **settings)


def _eval_set(files: dict[str, Path]) -> EvalSet:
    with np.load(files["eval"]) as data:
        images, labels = data["input"], data["label"]
    return EvalSet(tuple({"input": image[None]} for image in images), labels, str(files["eval"]))


def test_candidates_come_likely_winners_first_with_each_preset_choice_flipped():
    names = [c.name for c in candidates(_options(finetune_hook="m:f", prune_ratios=(0.25, 0.5)), resolve_target("x86-64"))]
    assert names == ["fp32", "int8-percentile", "prune0.25+fp32", "prune0.25+int8-percentile", "prune0.5+fp32",
                     "prune0.5+int8-percentile", "prune0.25-ft+fp32", "prune0.25-ft+int8-percentile", "prune0.5-ft+fp32",
                     "prune0.5-ft+int8-percentile", "int8-entropy", "int8-minmax", "no-winograd+fp32", "NCHW+fp32",
                     "NCHW+int8-percentile"]
    plain = candidates(_options(prune_ratios=(), calibration_methods=(), flip_preset_choices=False), resolve_target("x86-64"))
    assert plain == [Candidate()]
    gpu = [c.name for c in candidates(_options(prune_ratios=(), calibration_methods=("minmax",)), resolve_target("cuda-sm90"))]
    assert gpu == ["fp32", "int8-minmax"]  # no CPU layout or Winograd choice to flip


def test_a_candidate_out_of_the_band_rules_out_its_costlier_neighbours():
    out = CandidateResult(Candidate(prune=0.25), status="rejected", reason="accuracy: ...")
    assert skip_reason(Candidate(prune=0.5), [out]) == "prune0.25+fp32 is already out of the band"
    assert skip_reason(Candidate(quantize="percentile", prune=0.5), [out]) is not None
    assert skip_reason(Candidate(prune=0.5, finetuned=True), [out]) is None  # fine-tuning wins accuracy back
    int8_out = CandidateResult(Candidate(quantize="minmax"), status="rejected", reason="accuracy: ...")
    assert skip_reason(Candidate(quantize="minmax", prune=0.25), [int8_out]) is not None
    assert skip_reason(Candidate(prune=0.25), [int8_out]) is None
    assert skip_reason(Candidate(quantize="entropy", prune=0.25), [int8_out]) is None
    slow = CandidateResult(Candidate(prune=0.25), status="rejected", reason="latency: ...")
    assert skip_reason(Candidate(prune=0.5), [slow]) is None  # only accuracy rules neighbours out


def test_pareto_front_keeps_what_nothing_beats_on_both_axes_and_the_plot_and_table_show_it(tmp_path):
    def timed(name_ratio, top1, p50, status="in band"):
        return CandidateResult(Candidate(prune=name_ratio), status=status, top1=top1, p50_ms=p50, reason="")

    results = [timed(None, 0.99, 2.0), timed(0.25, 0.98, 1.5), timed(0.5, 0.97, 1.6, "rejected"), timed(0.75, 0.95, 1.0),
               CandidateResult(Candidate(quantize="minmax"), status="failed", reason="RemoteError: lost")]
    assert [r.candidate.name for r in pareto_front(results)] == ["prune0.75+fp32", "prune0.25+fp32", "fp32"]
    report = OptimizeReport("m.onnx", "x86-64", "local", {"max_accuracy_drop": 0.02}, {"top1": 0.99, "band_floor": 0.97,
                            "samples": 10, "eval_data": "e.npz", "engine": "onnxruntime", "ece": 0.05}, results, "CPU")
    report.chosen = results[1]
    assert report.speedup(results[3]) == pytest.approx(2.0)
    assert plot_pareto(report, tmp_path / "p.png") and (tmp_path / "p.png").read_bytes().startswith(PNG_MAGIC)
    text = markdown(report, "p.png")
    assert "**Chosen: `prune0.25+fp32`**, 1.33x fp32" in text and "![latency vs top-1, Pareto front marked](p.png)" in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == 5 and "RemoteError: lost" in rows[-1]
    json.dumps(report.to_json())  # serialisable as it is


def test_optimize_digits_finds_a_faster_build_inside_the_band_with_a_calibrated_artifact(digits_files, tmp_path):
    out = tmp_path / "out"
    edgec("optimize", digits_files["model"], "--target", "x86-64", "--eval-data", digits_files["eval"],
          "--calibration-data", digits_files["calibration"], "--max-accuracy-drop", "0.01", "--prune-ratios", "0.5",
          "--calibration-methods", "percentile", "--no-try-layouts",
          "--finetune-hook", "examples.prune_finetune:finetune_hook", "-o", out)
    report = json.loads((out / "report.json").read_text())
    by_name = {c["name"]: c for c in report["candidates"]}
    assert list(by_name) == ["fp32", "int8-percentile", "prune0.5+fp32", "prune0.5+int8-percentile",
                             "prune0.5-ft+fp32", "prune0.5-ft+int8-percentile"]
    reference = report["reference"]["top1"]
    assert reference > 0.95
    # post-training pruning at 0.5 loses far more than a point; fine-tuning wins it back
    assert by_name["prune0.5+fp32"]["status"] == "rejected" and by_name["prune0.5+fp32"]["reason"].startswith("accuracy")
    assert by_name["prune0.5+fp32"]["p50_ms"] is None  # ruled out: not timed
    assert by_name["prune0.5+int8-percentile"]["status"] == "skipped"
    in_band = [c for c in report["candidates"] if c["status"] in ("in band", "chosen")]
    assert {"fp32", "prune0.5-ft+fp32"} <= {c["name"] for c in in_band}
    for candidate in in_band:
        assert reference - candidate["top1"] <= 0.01 and candidate["p50_ms"] > 0 and candidate["p90_ms"] >= candidate["p50_ms"]
        assert candidate["weights_bytes"] > 0 and candidate["peak_activation_bytes"] > 0
        if not candidate["settings"]["finetuned"]:  # a fine-tuned model is another model: its outputs differ
            assert candidate["sqnr_db"] is None or candidate["sqnr_db"] > 20
    assert by_name["prune0.5-ft+fp32"]["weights_bytes"] < by_name["fp32"]["weights_bytes"] / 2.5
    chosen = by_name[report["chosen"]]
    assert chosen["status"] == "chosen"
    assert chosen["speedup_over_fp32"] == max(c["speedup_over_fp32"] for c in in_band)
    assert set(report["pareto_front"]) <= {c["name"] for c in report["candidates"] if c["p50_ms"] is not None}

    artifact = out / "model"
    manifest = json.loads((artifact / "manifest.json").read_text())
    calibration = manifest["calibration"]
    assert calibration == report["calibration"] and calibration["ece_after"] <= calibration["ece_before"]
    assert calibration["ece_after"] <= report["reference"]["ece"] + 0.005
    assert "after temperature scaling" in edgec("evaluate", artifact, "--eval-data", digits_files["eval"])
    assert (out / "pareto.png").read_bytes().startswith(PNG_MAGIC)
    text = (out / "report.md").read_text()
    assert f"**Chosen: `{report['chosen']}`**" in text and "(pareto.png)" in text
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the candidates' work directory is gone


def test_a_band_no_candidate_meets_exits_non_zero_and_keeps_the_report(digits_files, tmp_path):
    out = tmp_path / "out"
    output = edgec("optimize", digits_files["model"], "--target", "x86-64", "--eval-data", digits_files["eval"],
                   "--calibration-data", digits_files["calibration"], "--latency-budget", "0.000001",
                   "--prune-ratios", "", "--calibration-methods", "", "--no-try-layouts", "-o", out, expect=1)
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: no candidate meets") and "report.md" in errors[0]
    report = json.loads((out / "report.json").read_text())
    assert report["chosen"] is None and report["candidates"][0]["reason"].startswith("latency: p50")
    assert "No candidate meets every constraint" in (out / "report.md").read_text()
    assert not (out / "model").exists()


def test_labels_that_are_not_class_indices_and_a_hook_that_does_not_load_fail_before_the_search(digits_files, tmp_path):
    samples = ({"input": np.zeros((1, 1, 8, 8), np.float32)},)
    with pytest.raises(Exception, match="'label' must hold class indices"):
        EvalSet(samples, np.array([1.0]), "e.npz")
    with pytest.raises(Exception, match="'label' must hold class indices"):
        EvalSet(samples, np.array([-1]), "e.npz")
    error = one_line_error("optimize", digits_files["model"], "--target", "x86-64", "--eval-data", digits_files["eval"],
                           "--calibration-data", digits_files["calibration"], "--finetune-hook", "examples.nothing:hook",
                           "-o", tmp_path / "out")
    assert error.startswith("error: cannot load --finetune-hook 'examples.nothing:hook'")
    assert not (tmp_path / "out" / "report.json").exists()  # nothing was searched


def test_eval_data_without_labels_is_a_one_line_error(digits_files, tmp_path):
    error = one_line_error("optimize", digits_files["model"], "--target", "x86-64", "--eval-data",
                           digits_files["unlabelled"], "--calibration-data", digits_files["calibration"], "-o", tmp_path)
    assert error.startswith("error: evaluation data") and "has no 'label' array" in error


def test_the_time_budget_stops_the_search_and_the_report_lists_what_was_not_tried(digits_files, tmp_path, monkeypatch):
    from compiler.optimize import Optimizer

    # the budget runs out once the first candidate is settled (a clock this test controls)
    monkeypatch.setattr(Optimizer, "_out_of_time", lambda self: self.report.results[0].status != "pending")
    options = _options(time_budget_s=60, prune_ratios=(0.5,), calibration_methods=("percentile",), flip_preset_choices=False)
    report = optimize(digits_files["model"], options, _eval_set(digits_files), tmp_path)
    first, *rest = report.results
    assert first.status == "chosen" and first.candidate == Candidate() and report.stopped.startswith("time budget of 1 min")
    assert [r.status for r in rest] == ["not tried"] * 3 and rest[0].reason == "the time budget ran out before it"
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["stopped"] == report.stopped and [c["status"] for c in data["candidates"][1:]] == ["not tried"] * 3


def test_a_device_that_dies_mid_search_fails_that_candidate_and_the_search_goes_on(digits_files, tmp_path):
    from compiler.runtime import RemoteSpec
    from tests.rpc_processes import HOST, start_server, start_tracker

    started = []
    try:
        tracker = start_tracker(tmp_path, started)
        server = start_server(tmp_path, tracker, "board", started)

        def kill_after_fp32(report):
            if report.results and report.results[0].status == "in band":
                server.kill()

        options = _options(device="rpc", remote=RemoteSpec(tracker=(HOST, tracker), key="board", timeout_s=5),
                           prune_ratios=(), calibration_methods=("percentile", "minmax"), flip_preset_choices=False)
        report = optimize(digits_files["model"], options, _eval_set(digits_files), tmp_path / "out", kill_after_fp32)
    finally:
        for process in started:
            process.kill()
    fp32, *after = report.results
    assert fp32.status == "chosen" and fp32.p50_ms > 0
    assert len(after) == 2  # the search went on past the first failure
    for int8 in after:
        assert int8.status == "failed" and int8.reason.startswith("RemoteError") and int8.compile_s > 0
    assert [c["status"] for c in json.loads((tmp_path / "out" / "report.json").read_text())["candidates"]] == \
        ["chosen", "failed", "failed"]


def test_tune_best_tunes_the_fastest_candidate_in_the_band_and_times_it_again(digits_files, tmp_path, monkeypatch):
    from compiler.tuning.database import RecordSources, user_root

    # a database of this test's own: records tuned here must not reach other tests' compiles
    monkeypatch.setenv("EDGEC_TUNING_DIR", str(tmp_path / "records"))
    options = _options(prune_ratios=(), calibration_methods=(), flip_preset_choices=False, tune_best=1, tune_trials=2,
                       tuning_log=RecordSources(shipped=False))  # the user's records only: those tuned here
    report = optimize(digits_files["model"], options, _eval_set(digits_files), tmp_path)
    (fp32,) = report.results
    assert fp32.status == "chosen" and fp32.tune_s > 0 and fp32.tuned_p50_ms > 0 and fp32.p50_ms > 0
    assert fp32.latency_ms == fp32.tuned_p50_ms  # the tuned figure ranks it
    records = (user_root() / "x86-64" / "database_tuning_record.json").read_text().splitlines()
    assert records and user_root() == tmp_path / "records"  # measured here, kept in the user's database
    tuning = json.loads((tmp_path / "model" / "manifest.json").read_text())["tuning"]
    assert tuning["tuned_from"]["user"] > 0  # the chosen artifact was compiled again with the new records


def test_under_qemu_guest_instructions_rank_the_candidates(digits_files, tmp_path):
    options = _options(target="cortex-a76", device="qemu", prune_ratios=(), calibration_methods=("percentile",),
                       flip_preset_choices=False)
    report = optimize(digits_files["model"], options, _eval_set(digits_files), tmp_path)
    fp32, int8 = report.results
    for result in (fp32, int8):
        assert result.instructions > 0 and result.p50_ms > 0 and report.reference["top1"] - result.top1 <= 0.01
    fastest = min((fp32, int8), key=lambda r: r.instructions)
    assert report.chosen is fastest and report.speedup(int8) == pytest.approx(fp32.instructions / int8.instructions)
    assert report.accuracy_measured_on.startswith("this machine")
    assert "M instr" in (tmp_path / "report.md").read_text()


def test_max_memory_rules_out_a_build_whose_weights_and_activations_exceed_it(digits_files, tmp_path):
    options = _options(prune_ratios=(), calibration_methods=(), flip_preset_choices=False, max_memory_mb=0.05)
    report = optimize(digits_files["model"], options, _eval_set(digits_files), tmp_path)
    (fp32,) = report.results
    assert fp32.weights_bytes > 50_000  # the digits CNN's 103 kB of weights
    assert fp32.status == "rejected" and fp32.reason.startswith("memory: weights + peak activations 0.1")
    assert fp32.p50_ms is None and report.chosen is None
