"""lower_qdq_to_integer: onnxruntime-quantized models (QDQ and QOperator) compile to integer kernels."""

import numpy as np
import pytest
import tvm
from tvm import relax

from compiler.evaluate import sqnr_db
from compiler.frontends import load_model
from examples.digits_cnn import load_digits_split
from examples.ort_quantize import quantize_with_onnxruntime
from passes import lower_qdq_to_integer, simplify_for_inference
from passes.quantize import run_on_host


def _outputs(mod, samples) -> list[np.ndarray]:
    """Compile once for the host, run every sample."""
    return [outputs[0] for outputs in run_on_host(mod, [{"input": sample[None]} for sample in samples])]


@pytest.fixture(scope="module")
def quantized_digits(example, tmp_path_factory):
    """The trained digits CNN quantized by onnxruntime (static, per-channel), as QDQ and as QOperator."""
    x_train, _, x_test, _ = load_digits_split()
    directory = tmp_path_factory.mktemp("ort-quantized")
    paths = {name: quantize_with_onnxruntime(example("digits").onnx, directory / f"digits-{name}.onnx",
                                             ({"input": x_train[i:i + 1]} for i in range(100)), fmt)
             for name, fmt in (("qdq", "QDQ"), ("qoperator", "QOperator"))}
    return paths, x_test[:100]


def _lowered(path):
    reports = []
    mod = simplify_for_inference()(load_model(path).mod)
    return mod, lower_qdq_to_integer(reports.append)(mod), reports[0]


def _layers(mod) -> list[tuple[str, str, str]]:
    """(data dtype, weight dtype, result dtype) of every conv2d/matmul in `main`."""
    found = []

    def visit(expr):
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") in ("relax.nn.conv2d", "relax.matmul"):
            found.append((str(expr.args[0].ty.dtype), str(expr.args[1].ty.dtype), str(expr.ty.dtype)))

    relax.analysis.post_order_visit(mod["main"], visit)
    return found


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_prequantized_layers_become_integer_and_match_the_float_model(quantized_digits, example, fmt):
    paths, x = quantized_digits
    before, after, report = _lowered(paths[fmt])
    assert _layers(after) == [("uint8", "int8", "int32")] * 4
    assert report.to_json()["integer_layers"] == 4 and all(layer["exact"] for layer in report.layers)
    float_mod = simplify_for_inference()(load_model(example("digits").onnx).mod)
    ours, fake_quant, reference = _outputs(after, x), _outputs(before, x), _outputs(float_mod, x)
    # the same integer grid as the model's Q/DQ arithmetic, computed in integers
    assert sqnr_db(ours, fake_quant) > 30
    assert sqnr_db(ours, reference) > 25
    assert np.mean([o.argmax() == r.argmax() for o, r in zip(ours, reference)]) >= 0.98


def test_qdq_and_qoperator_forms_compile_to_the_same_numbers(quantized_digits):
    paths, x = quantized_digits
    qdq = _lowered(paths["qdq"])[1]
    qoperator = _lowered(paths["qoperator"])[1]
    for ours, theirs in zip(_outputs(qdq, x), _outputs(qoperator, x)):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_a_float_model_passes_unchanged(example):
    mod = simplify_for_inference()(load_model(example("digits").onnx).mod)
    reports = []
    assert lower_qdq_to_integer(reports.append)(mod).same_as(mod) or tvm.ir.structural_equal(
        lower_qdq_to_integer()(mod), mod)
    assert reports[0].layers == ()


@pytest.mark.parametrize("name", ["mobile-block", "shuffle-mix"])
def test_qdq_pairs_off_the_layers_become_clamps_and_match_onnxruntime(name, tmp_path):
    """Residual adds, ReLU6s onnxruntime folded into a pair's range, concat, shuffle, pooling: no Q/DQ
    pair is left to split the kernels, and the model still computes what onnxruntime's QDQ model does."""
    import onnxruntime

    from examples.int8_matrix import export_matrix_model, matrix_inputs

    source = export_matrix_model(name, tmp_path / f"{name}.onnx")
    quantized = quantize_with_onnxruntime(source, tmp_path / f"{name}-qdq.onnx",
                                          ({"input": c[None]} for c in matrix_inputs(16, seed=2)))
    _, after, report = _lowered(quantized)
    ops = set()
    relax.analysis.post_order_visit(after["main"], lambda e: isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op)
                                    and ops.add(e.op.name))
    assert not ops & {"relax.quantize", "relax.dequantize"}, sorted(ops)
    assert {"relax.maximum", "relax.minimum"} <= ops  # the clamps, with tensor bounds
    assert all(data in ("uint8", "int8") for data, _, _ in _layers(after)) and len(report.layers) == len(_layers(after))
    x = matrix_inputs(32, seed=3)
    session = onnxruntime.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])
    theirs = [session.run(None, {"input": sample[None]})[0][0] for sample in x]
    ours = [output[0] for output in _outputs(after, x)]
    assert sqnr_db(ours, theirs) > 25
    assert np.mean([o.argmax() == t.argmax() for o, t in zip(ours, theirs)]) >= 0.9
