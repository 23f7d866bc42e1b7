"""Confidence calibration: expected calibration error, temperature fitting, and the calibrated artifact."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from tests.helpers import edgec, edgec_json, one_line_error

from compiler.artifact import read_manifest
from compiler.evaluate import as_logits, expected_calibration_error, fit_temperature, softmax


def sampled_labels(probabilities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One class per row drawn from that row's probabilities."""
    return (rng.random((len(probabilities), 1)) > probabilities.cumsum(axis=1)).sum(axis=1)


def test_ece_of_a_hand_computed_example():
    probabilities = np.array([[0.95, 0.05], [0.97, 0.03], [0.62, 0.38], [0.35, 0.65], [0.70, 0.30]])
    labels = np.array([0, 1, 0, 1, 1])
    # 15 bins of width 1/15: (0.933, 1] holds 0.95 (right) and 0.97 (wrong): |0.5 - 0.96| = 0.46, weight 2/5;
    # (0.600, 0.667] holds 0.62 and 0.65 (both right): |1 - 0.635| = 0.365, weight 2/5;
    # (0.667, 0.733] holds 0.70 (wrong): |0 - 0.7| = 0.7, weight 1/5
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.4 * 0.46 + 0.4 * 0.365 + 0.2 * 0.7)
    # one bin: |mean accuracy - mean confidence| = |3/5 - 3.89/5|
    assert expected_calibration_error(probabilities, labels, bins=1) == pytest.approx(abs(0.6 - 3.89 / 5))


def test_ece_is_near_zero_for_calibrated_and_large_for_overconfident_probabilities():
    rng = np.random.default_rng(0)
    logits = 2 * rng.normal(size=(20000, 5))
    labels = sampled_labels(softmax(logits), rng)
    assert expected_calibration_error(softmax(logits), labels) < 0.015
    assert expected_calibration_error(softmax(logits, temperature=1 / 3), labels) > 0.1


def test_softmax_is_stable_and_probabilities_become_log_probabilities():
    np.testing.assert_allclose(softmax(np.array([[1000.0, 1000.0, -1000.0]])), [[0.5, 0.5, 0.0]])
    probabilities = softmax(np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]]))
    np.testing.assert_allclose(as_logits(probabilities), np.log(probabilities))
    np.testing.assert_allclose(softmax(as_logits(probabilities), 2.0), softmax(np.log(probabilities) / 2.0))
    logits = np.array([[0.2, 0.3, 0.5], [0.1, 0.1, 0.7]])  # non-negative, but the second row sums to 0.9
    np.testing.assert_array_equal(as_logits(logits), logits)


@pytest.mark.parametrize("scale", [3.0, 1.0, 0.5])
def test_fit_temperature_recovers_the_scale_of_the_logits(scale):
    rng = np.random.default_rng(1)
    logits = 2 * rng.normal(size=(4000, 10))
    labels = sampled_labels(softmax(logits), rng)
    assert fit_temperature(scale * logits, labels) == pytest.approx(scale, rel=0.1)


# --- a compiled classifier -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_eval(tmp_path_factory):
    from examples.digits_cnn import load_digits_split

    _, _, x_test, y_test = load_digits_split()
    root = tmp_path_factory.mktemp("calibration_eval")
    np.savez(root / "labelled.npz", input=x_test, label=y_test)
    np.savez(root / "unlabelled.npz", input=x_test)
    np.save(root / "x.npy", x_test[:1])
    return root


@pytest.fixture
def artifact(compiled, tmp_path):
    """A copy of the session's digits CNN artifact, whose manifest a test may rewrite."""
    return shutil.copytree(compiled("digits", "onnx", "host"), tmp_path / "digits")


def test_fitted_temperature_lowers_the_digits_cnn_calibration_error(artifact, digits_eval, tmp_path):
    out = edgec("evaluate", artifact, "--eval-data", digits_eval / "labelled.npz", "--fit-temperature")
    calibration = read_manifest(artifact).calibration
    assert set(calibration) == {"temperature", "output", "bins", "ece_before", "ece_after", "eval_data", "samples"}
    assert calibration["output"] == "output" and calibration["bins"] == 15 and calibration["samples"] == 450
    assert 0.05 < calibration["temperature"] < 20 and calibration["temperature"] != pytest.approx(1.0, abs=0.05)
    assert calibration["ece_after"] <= calibration["ece_before"]
    before, reference = map(float, re.search(r"ECE \(15 bins\): (\S+) \(float reference (\S+)\)", out).groups())
    assert before == pytest.approx(calibration["ece_before"], abs=6e-4) and reference == pytest.approx(before, abs=2e-3)
    t, after = re.search(r"after temperature scaling \(T=(\S+)\): (\S+)", out).groups()
    assert float(after) == pytest.approx(calibration["ece_after"], abs=6e-4)
    assert float(t) == pytest.approx(calibration["temperature"], rel=1e-2)

    # the stored temperature is reported without refitting, the artifact still verifies and runs
    report = edgec_json("evaluate", artifact, "--eval-data", digits_eval / "labelled.npz")
    assert report["temperature"] == calibration["temperature"]
    assert report["ece"] == pytest.approx(calibration["ece_before"]) and report["calibrated_ece"] == pytest.approx(calibration["ece_after"])
    edgec("run", artifact, "--input", digits_eval / "x.npy", "--output", tmp_path / "raw.npz")
    edgec("run", artifact, "--input", digits_eval / "x.npy", "--output", tmp_path / "calibrated.npz", "--calibrated")
    with np.load(tmp_path / "raw.npz") as raw, np.load(tmp_path / "calibrated.npz") as scaled:
        logits, probabilities = raw["output"], scaled["output"]
    assert probabilities.dtype == np.float32 and probabilities.shape == logits.shape == (1, 10)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(probabilities, softmax(logits, calibration["temperature"]), atol=1e-7)
    assert not np.allclose(probabilities, softmax(logits), atol=1e-4)  # T made a difference


def test_calibration_needs_labels_and_a_temperature(compiled, digits_eval):
    artifact = compiled("digits", "onnx", "host")
    message = one_line_error("evaluate", artifact, "--eval-data", digits_eval / "unlabelled.npz", "--fit-temperature")
    assert "--fit-temperature needs labels" in message and "unlabelled.npz" in message
    message = one_line_error("run", artifact, "--input", digits_eval / "x.npy", "--calibrated")
    assert "has no softmax temperature; fit one with edgec evaluate --fit-temperature or edgec optimize" in message
    assert read_manifest(artifact).calibration is None
    assert "ECE (15 bins)" in edgec("evaluate", artifact, "--eval-data", digits_eval / "labelled.npz")
    assert "ECE" not in edgec("evaluate", artifact, "--eval-data", digits_eval / "unlabelled.npz")
