"""compiler.frontends: ONNX and PyTorch import give the same numbers as the framework, and one-line errors."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from compiler.errors import ModelImportError, UnsupportedOperatorError
from compiler.frontends import (
    ImportedModel,
    ModelSource,
    TensorSpec,
    import_onnx,
    import_torch_module,
    load_model,
    parse_input_shape,
)
from examples import digits_cnn, onnx_cases
from examples.export import export_pt2
from tests.helpers import op_names, run_relax

REPO = Path(__file__).resolve().parents[2]
ONNX_TOLERANCE = 1e-4
TORCH_TOLERANCE = 1e-5


def _ort_run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _max_diff(actual: np.ndarray, expected: np.ndarray) -> float:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.abs(actual - expected).max())


def _assert_matches_ort(model: onnx.ModelProto, imported: ImportedModel, mod=None, batch: int = 1) -> None:
    """Run `mod` (default: the imported one) and onnxruntime on the same seeded inputs."""
    feeds = onnx_cases.example_inputs(model, batch=batch)
    (expected,) = _ort_run(model, feeds)
    (actual,) = run_relax(mod or imported.mod, *(feeds[spec.name] for spec in imported.inputs))
    assert np.abs(expected).max() > 0.1  # a non-trivial reference, so the bound means something
    assert _max_diff(actual, expected) < ONNX_TOLERANCE


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


# ----------------------------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("opset", [7, 9, 11, 13, 17, 21])
def test_onnx_opsets_import_and_match_onnxruntime(opset):
    model = onnx_cases.opset_model(opset)
    imported = import_onnx(model)
    assert imported.inputs == (TensorSpec(f"opset{opset}_input", (1, 3, 8, 8), "float32"),)
    assert imported.outputs == (TensorSpec("output", (1, 5), "float32"),)
    assert imported.source == ModelSource("onnx", None, None, opset)
    _assert_matches_ort(model, imported)


def test_old_style_initializer_inputs_are_weights_not_inputs():
    model = onnx_cases.old_style_initializers_as_inputs()
    assert model.ir_version == 3 and len(model.graph.input) == 5  # the case really is old-style
    imported = import_onnx(model)
    assert imported.inputs == (TensorSpec("old_input", (1, 3, 8, 8), "float32"),)
    assert [p.name for p in imported.mod["main"].params] == ["old_input"]
    assert imported.outputs == (TensorSpec("output", (1, 5), "float32"),)
    _assert_matches_ort(model, imported)


def test_constant_of_shape_weights_match_and_fold_away():
    from passes import simplify_for_inference

    model = onnx_cases.constant_of_shape_weights()
    imported = import_onnx(model)
    assert imported.inputs == (TensorSpec("cos_input", (2, 8), "float32"),)
    assert imported.outputs == (TensorSpec("output", (2, 4), "float32"),)
    _assert_matches_ort(model, imported)
    assert "relax.broadcast_to" in op_names(imported.mod)  # the generated weights start as broadcasts

    simplified = simplify_for_inference()(imported.mod)

    assert "relax.broadcast_to" not in op_names(simplified)
    assert "relax.matmul" in op_names(simplified)
    _assert_matches_ort(model, imported, simplified)


def test_symbolic_batch_without_shape_suggests_the_flag():
    with pytest.raises(ModelImportError) as err:
        import_onnx(onnx_cases.symbolic_batch())
    text = _one_line(err)
    assert "'sym_input'" in text
    assert "symbolic" in text and "Nx3x16x16" in text
    assert text.endswith("--input-shape sym_input=1x3x16x16")


def test_symbolic_batch_with_shape_matches_onnxruntime_at_batch_2():
    model = onnx_cases.symbolic_batch()
    imported = import_onnx(model, {"sym_input": (2, 3, 16, 16)})
    assert imported.inputs == (TensorSpec("sym_input", (2, 3, 16, 16), "float32"),)
    assert imported.outputs == (TensorSpec("output", (2, 4, 16, 16), "float32"),)
    _assert_matches_ort(model, imported, batch=2)


@pytest.mark.parametrize(
    "shape, shown",
    [((2, 3, 16), "2x3x16"), ((2, 3, 16, 16, 1), "2x3x16x16x1"), ((2, 4, 16, 16), "2x4x16x16"), ((1, 3, 16, 8), "1x3x16x8")],
)
def test_input_shape_that_does_not_fit_names_the_input(shape, shown):
    with pytest.raises(ModelImportError) as err:
        import_onnx(onnx_cases.symbolic_batch(), {"sym_input": shape})
    assert _one_line(err) == (
        f"--input-shape sym_input={shown} does not fit the model's shape Nx3x16x16 for that input"
    )


def test_input_shape_for_an_unknown_name_lists_the_inputs():
    with pytest.raises(ModelImportError) as err:
        import_onnx(onnx_cases.symbolic_batch(), {"sym_input": (1, 3, 16, 16), "images": (1, 3, 16, 16)})
    assert _one_line(err) == "--input-shape names images, but the model's inputs are: sym_input"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("x=1x3x224x224", ("x", (1, 3, 224, 224))),
        ("input.1=1X3x8x8", ("input.1", (1, 3, 8, 8))),
        ("a=b=2x5", ("a=b", (2, 5))),  # only the last '=' separates the name from the dims
        ("x=7", ("x", (7,))),
    ],
)
def test_parse_input_shape(text, expected):
    assert parse_input_shape(text) == expected


@pytest.mark.parametrize("text", ["x", "x=", "=1x3", "x=1xax3", "x=0x3", "x=1x-3", "x=1x", "x=1.5x3"])
def test_parse_input_shape_rejects_bad_forms(text):
    with pytest.raises(ModelImportError) as err:
        parse_input_shape(text)
    message = _one_line(err)
    assert f"'{text}'" in message
    assert "NAME=DIMS" in message and "input=1x3x224x224" in message


def test_unsupported_onnx_operator_names_op_node_and_opset():
    model = onnx_cases.unsupported_op()
    (reference,) = _ort_run(model, onnx_cases.example_inputs(model))  # the model itself is valid
    assert reference.shape == (2,)
    with pytest.raises(UnsupportedOperatorError) as err:
        import_onnx(model)
    text = _one_line(err)
    assert "'Det'" in text and "'my_unsupported_node'" in text and "(opset 13)" in text
    assert text == (
        "unsupported ONNX operator 'Det' (opset 13) in node 'my_unsupported_node'; "
        "replace it in the model or export with a different opset"
    )


def test_unsupported_unnamed_onnx_node_reports_its_index():
    model = onnx_cases.unsupported_op()
    assert model.graph.node[1].op_type == "Det"
    model.graph.node[1].name = ""
    with pytest.raises(UnsupportedOperatorError) as err:
        import_onnx(model)
    text = _one_line(err)
    assert "'Det'" in text and "node #1 (unnamed)" in text


def test_custom_domain_onnx_node_reports_the_domain():
    model = onnx_cases.unsupported_op()
    model.graph.node[1].domain = "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedOperatorError) as err:
        import_onnx(model)
    text = _one_line(err)
    assert "'com.example.Det'" in text and "'my_unsupported_node'" in text
    assert "only the default ai.onnx domain is supported" in text


@pytest.mark.parametrize("opset", [6, 22])
def test_opset_outside_supported_range(opset):
    model = onnx_cases.opset_model(7)
    model.opset_import[0].version = opset
    with pytest.raises(ModelImportError) as err:
        import_onnx(model)
    text = _one_line(err)
    assert f"opset {opset};" in text and "7 to 21" in text and "convert_version" in text


def test_load_model_onnx_file_records_path_and_sha256(tmp_path):
    model = onnx_cases.opset_model(13)
    path = tmp_path / "net.onnx"
    onnx.save(model, str(path))
    imported = load_model(path)
    assert imported.source == ModelSource("onnx", str(path), hashlib.sha256(path.read_bytes()).hexdigest(), 13)
    assert imported.inputs == (TensorSpec("opset13_input", (1, 3, 8, 8), "float32"),)


def test_load_model_missing_file(tmp_path):
    path = tmp_path / "missing.onnx"
    with pytest.raises(ModelImportError) as err:
        load_model(path)
    assert _one_line(err) == f"model file '{path}' does not exist"


def test_load_model_unknown_extension_lists_formats(tmp_path):
    path = tmp_path / "net.txt"
    path.write_text("not a model")
    with pytest.raises(ModelImportError) as err:
        load_model(path)
    assert _one_line(err) == "cannot infer the format of 'net.txt'; use a file ending in .onnx, .pt2"


def test_load_model_garbage_onnx(tmp_path):
    path = tmp_path / "net.onnx"
    path.write_bytes(b"\x00garbage\xff" * 16)
    with pytest.raises(ModelImportError) as err:
        load_model(path)
    assert _one_line(err).startswith(f"cannot read '{path}' as an ONNX model: ")


def test_load_model_garbage_pt2(tmp_path):
    path = tmp_path / "net.pt2"
    path.write_bytes(b"garbage" * 16)
    with pytest.raises(ModelImportError) as err:
        load_model(path)
    assert _one_line(err).startswith(f"cannot read '{path}' as a torch.export program (.pt2): ")


# ---------------------------------------------------------------------------------------------- torch


@pytest.fixture(scope="module")
def digits():
    """The trained digits CNN and one real test image (1, 1, 8, 8)."""
    model = digits_cnn.train(seed=0)
    _, _, x_test, y_test = digits_cnn.load_digits_split(seed=0)
    return model, torch.from_numpy(x_test[:1].copy()), int(y_test[0])


def test_torch_module_matches_torch(digits):
    model, x, label = digits
    imported = import_torch_module(model, (x,))
    assert imported.inputs == (TensorSpec("x", (1, 1, 8, 8), "float32"),)
    assert imported.outputs == (TensorSpec("output0", (1, 10), "float32"),)
    assert imported.source == ModelSource("torch")
    with torch.no_grad():
        expected = model(x).numpy()
    (actual,) = run_relax(imported.mod, x.numpy())
    assert np.abs(expected).max() > 1.0  # trained logits, not near-zero noise
    assert _max_diff(actual, expected) < TORCH_TOLERANCE
    assert actual.argmax() == expected.argmax() == label


class _TwoOutputs(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x) * 2, x.sum(1)


def test_torch_module_with_two_outputs():
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    imported = import_torch_module(_TwoOutputs(), (x,))
    assert imported.outputs == (TensorSpec("output0", (2, 3), "float32"), TensorSpec("output1", (2,), "float32"))
    first, second = run_relax(imported.mod, x.numpy())
    assert _max_diff(first, (torch.relu(x) * 2).numpy()) < TORCH_TOLERANCE
    assert _max_diff(second, x.sum(1).numpy()) < TORCH_TOLERANCE


def test_load_model_pt2(tmp_path, digits):
    model, x, _ = digits
    path = export_pt2(model, x, tmp_path / "digits.pt2")
    imported = load_model(path)
    assert imported.source == ModelSource("torch", str(path), hashlib.sha256(path.read_bytes()).hexdigest())
    assert imported.inputs == (TensorSpec("x", (1, 1, 8, 8), "float32"),)
    assert imported.outputs == (TensorSpec("output0", (1, 10), "float32"),)
    with torch.no_grad():
        expected = model(x).numpy()
    (actual,) = run_relax(imported.mod, x.numpy())
    assert _max_diff(actual, expected) < TORCH_TOLERANCE


def test_input_shape_for_pt2_is_rejected(tmp_path):
    path = export_pt2(_TwoOutputs(), torch.randn(2, 3), tmp_path / "two.pt2")
    with pytest.raises(ModelImportError) as err:
        load_model(path, {"x": (2, 3)})
    text = _one_line(err)
    assert "--input-shape" in text and ".pt2" in text and "static shapes" in text


class _LogGamma(torch.nn.Module):
    def forward(self, x):
        return torch.lgamma(x) + 1


def test_unsupported_torch_operator_names_op_and_node():
    with pytest.raises(UnsupportedOperatorError) as err:
        import_torch_module(_LogGamma(), (torch.rand(3) + 1,))
    text = _one_line(err)
    assert text == (
        "unsupported PyTorch operator 'lgamma.default' (core ATen, torch.export) in node 'lgamma'; "
        "rewrite that part of the model or export it to ONNX"
    )


class _Double(torch.nn.Module):
    def forward(self, x):
        return x * 2


def test_pt2_with_dynamic_shape_is_rejected(tmp_path):
    batch = torch.export.Dim("batch")
    program = torch.export.export(_Double(), (torch.rand(4, 3),), dynamic_shapes={"x": {0: batch}})
    path = tmp_path / "dynamic.pt2"
    torch.export.save(program, str(path))
    with pytest.raises(ModelImportError) as err:
        load_model(path)
    text = _one_line(err)
    assert "input 'x'" in text and "dynamic shape" in text and "export with static shapes" in text


# --------------------------------------------------------------------------------------------- imports


def test_importing_frontends_does_not_import_frameworks():
    code = "import compiler.frontends, sys; assert 'torch' not in sys.modules and 'onnx' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
