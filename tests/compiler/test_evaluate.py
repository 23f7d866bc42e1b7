"""The accuracy guard: accuracy, top-1 agreement and SQNR of an artifact against its float reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compiler.errors import InputError
from compiler.evaluate import evaluate, load_eval_data, manifest_reference, reference_runner
from compiler.runtime import LocalModel


@pytest.fixture(scope="module")
def digits_eval(tmp_path_factory):
    from examples.digits_cnn import load_digits_split

    _, _, x_test, y_test = load_digits_split()
    path = tmp_path_factory.mktemp("eval") / "digits.npz"
    np.savez(path, input=x_test[:200], label=y_test[:200])
    return path, x_test[:200], y_test[:200]


def test_compiled_digits_cnn_agrees_with_onnxruntime(digits_eval, compiled, example):
    path, _, labels = digits_eval
    model = LocalModel(compiled("digits", "onnx", "host"))
    samples, loaded_labels = load_eval_data(path, model.manifest.inputs)
    assert len(samples) == 200 and samples[0]["input"].shape == (1, 1, 8, 8)
    np.testing.assert_array_equal(loaded_labels, labels)
    reference = reference_runner(example("digits").onnx, model.manifest.inputs)
    report = evaluate(lambda x: list(model.run(x).values()), reference, samples, loaded_labels, "onnxruntime")
    assert report.top1_agreement == 1.0
    assert report.top1_accuracy == report.reference_top1_accuracy >= 0.95
    assert report.sqnr_db > 80  # fp32 rounding only: ~1e-6 relative error
    assert report.max_abs_diff < 1e-4


def test_sqnr_and_agreement_see_a_degraded_model():
    samples = [{"x": np.array([[float(i), 1.0, 0.5]], "float32")} for i in range(4)]
    reference = lambda s: [s["x"]]  # noqa: E731
    noisy = lambda s: [s["x"] + np.float32(0.1)]  # noqa: E731
    swapped = lambda s: [s["x"][:, ::-1].copy()]  # noqa: E731
    exact = evaluate(reference, reference, samples, None, "same")
    assert math.isinf(exact.sqnr_db) and exact.to_json()["sqnr_db"] is None
    report = evaluate(noisy, reference, samples, np.array([1, 0, 1, 1]), "ref")  # predictions: 1, 0, 0, 0
    signal = sum(float(np.sum(s["x"].astype(np.float64) ** 2)) for s in samples)
    assert report.sqnr_db == pytest.approx(10 * math.log10(signal / (4 * 3 * 0.01)), rel=1e-4)
    assert report.top1_agreement == 1.0 and report.top1_accuracy == 0.5
    assert evaluate(swapped, reference, samples, None, "ref").top1_agreement < 1.0


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"image": np.zeros((2, 1, 8, 8), "float32")}, "has arrays image; the model's inputs are: input"),
        ({"input": np.zeros((2, 8, 8), "float32")}, "'input' has shape 2x8x8; expected N x 1x1x8x8"),
        ({"input": np.zeros((2, 1, 8, 8), "float64")}, "'input' is float64; the model expects float32"),
        ({"input": np.zeros((2, 1, 8, 8), "float32"), "label": np.zeros(3, "int64")}, "the same sample count N"),
    ],
)
def test_bad_eval_data_is_one_line(arrays, message, compiled, tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    specs = LocalModel(compiled("digits", "onnx", "host")).manifest.inputs
    with pytest.raises(InputError) as error:
        load_eval_data(path, specs)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_reference_comes_from_the_manifest_while_unchanged(compiled, tmp_path):
    import shutil

    from compiler.artifact import read_manifest

    manifest = read_manifest(compiled("digits", "onnx", "host"))
    assert manifest_reference(manifest.model).suffix == ".onnx"
    moved = dict(manifest.model, path=str(tmp_path / "gone.onnx"))
    with pytest.raises(InputError, match="pass --reference MODEL"):
        manifest_reference(moved)
    shutil.copy(manifest.model["path"], tmp_path / "changed.onnx")
    (tmp_path / "changed.onnx").open("ab").write(b"\0")
    with pytest.raises(InputError, match="gone or changed"):
        manifest_reference(dict(manifest.model, path=str(tmp_path / "changed.onnx")))
