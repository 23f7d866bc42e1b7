"""examples/: the architectures build, export to ONNX/PT2 faithfully, digits trains, ONNX cases are valid."""

import numpy as np
import onnx
import pytest
import torch

from examples import digits_cnn, mobilenetv2, onnx_cases, resnet18
from examples.export import example_model, export_onnx, export_pt2, main

ARCHITECTURES = {"resnet18": resnet18, "mobilenetv2": mobilenetv2}
# torchvision's parameter counts: the layouts match theirs exactly
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "mobilenetv2": 3_504_872}


def _ort_run(model_or_path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.fixture(scope="module")
def digits_model():
    return digits_cnn.train(seed=0)


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def architecture(request):
    module = ARCHITECTURES[request.param]
    return request.param, module.build(seed=0)


def test_architecture_shape_and_torchvision_layout(architecture):
    name, model = architecture
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS[name]
    with torch.no_grad():
        y = model(torch.rand(ARCHITECTURES[name].INPUT_SHAPE))
    assert y.shape == (1, 1000) and torch.isfinite(y).all()


def test_build_is_seeded_with_nontrivial_batchnorm():
    a, b, c = resnet18.build(0), resnet18.build(0), resnet18.build(1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv1.weight"], sc["conv1.weight"])
    var, mean = sa["layer2.0.bn1.running_var"], sa["layer2.0.bn1.running_mean"]
    assert 0.5 <= var.min() and var.max() <= 1.5 and (var - 1).abs().max() > 0.1
    assert 0.02 < mean.std() < 0.5
    assert (sa["bn1.weight"] - 1).abs().max() > 0.1 and sa["bn1.bias"].abs().max() > 0.01


@pytest.mark.parametrize("fold_constants", [True, False])
def test_onnx_export_matches_torch(architecture, tmp_path, fold_constants):
    name, model = architecture
    x = torch.rand(ARCHITECTURES[name].INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    path = export_onnx(model, x, tmp_path / f"{name}.onnx", fold_constants=fold_constants)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert ("BatchNormalization" in ops) != fold_constants
    with torch.no_grad():
        expected = model(x).numpy()
    (got,) = _ort_run(path, {"input": x.numpy()})
    assert np.abs(got - expected).max() < 1e-4


def test_digits_accuracy_and_determinism(digits_model):
    x_tr, y_tr, x_te, y_te = digits_cnn.load_digits_split(seed=0)
    assert x_tr.dtype == np.float32 and x_tr.shape[1:] == (1, 8, 8) and y_tr.dtype == np.int64
    assert 0.0 <= x_tr.min() and x_tr.max() <= 1.0
    assert len(x_te) == pytest.approx(0.25 * (len(x_tr) + len(x_te)), abs=1)
    assert set(np.bincount(y_te)) <= set(range(40, 50))  # stratified: ~45 test images per class
    assert digits_cnn.accuracy(digits_model, x_te, y_te) >= 0.95
    again = digits_cnn.train(seed=0)
    assert all(torch.equal(a, b) for a, b in zip(digits_model.state_dict().values(), again.state_dict().values()))


def test_digits_onnx_dynamic_batch_and_pt2(digits_model, tmp_path):
    _, _, x_te, _ = digits_cnn.load_digits_split(seed=0)
    x = torch.from_numpy(x_te[:7])
    with torch.no_grad():
        expected = digits_model(x).numpy()
    path = export_onnx(digits_model, x[:1], tmp_path / "d.onnx", input_names=("image",), dynamic_batch=True)
    (got,) = _ort_run(path, {"image": x.numpy()})
    assert np.abs(got - expected).max() < 1e-4
    program = torch.export.load(export_pt2(digits_model, x[:1], tmp_path / "d.pt2"))
    assert np.abs(program.module()(x[:1]).detach().numpy() - expected[:1]).max() < 1e-5


def test_export_cli_writes_both_files_atomically(tmp_path, monkeypatch):
    monkeypatch.setattr(digits_cnn, "build", lambda seed=0: digits_cnn.DigitsCNN().eval())  # skip training
    main(["digits", "--out", str(tmp_path / "out")])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["digits.onnx", "digits.pt2"]
    model, x = example_model("digits")
    assert x.shape == digits_cnn.INPUT_SHAPE
    onnx.checker.check_model(str(tmp_path / "out" / "digits.onnx"))


@pytest.mark.parametrize("case", list(onnx_cases.CASES))
def test_onnx_case_is_valid_and_runs(case):
    model = onnx_cases.CASES[case]()
    onnx.checker.check_model(model, full_check=True)
    feeds = onnx_cases.example_inputs(model, batch=3)
    assert len(feeds) == 1 and next(iter(feeds)) not in {"input", "x"}  # distinctive input names
    (out,) = _ort_run(model, feeds)
    dims = model.graph.output[0].type.tensor_type.shape.dim
    assert list(out.shape) == [d.dim_value or 3 for d in dims] and np.isfinite(out).all()


def test_old_style_initializers_are_graph_inputs():
    model = onnx_cases.old_style_initializers_as_inputs()
    inits = {t.name for t in model.graph.initializer}
    assert model.ir_version == 3 and model.opset_import[0].version == 7
    assert inits and inits < {i.name for i in model.graph.input}
    assert [i.name for i in onnx_cases.user_inputs(model)] == ["old_input"]


def test_special_cases_have_their_feature():
    assert "ConstantOfShape" in {n.op_type for n in onnx_cases.constant_of_shape_weights().graph.node}
    dim = onnx_cases.symbolic_batch().graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "N"
    node = next(n for n in onnx_cases.unsupported_op().graph.node if n.name == onnx_cases.UNSUPPORTED_NODE_NAME)
    assert node.op_type == onnx_cases.UNSUPPORTED_OP_TYPE


def test_opset_models_agree_across_opsets():
    outputs = []
    for opset in onnx_cases.OPSETS:
        model = onnx_cases.opset_model(opset)
        assert model.opset_import[0].version == opset
        feeds = {f"opset{opset}_input": onnx_cases.example_inputs(model)[f"opset{opset}_input"]}
        outputs.append(_ort_run(model, feeds)[0])
    assert all(np.array_equal(outputs[0], o) for o in outputs[1:])  # same math in every op form
    with pytest.raises(ValueError, match="opset 6"):
        onnx_cases.opset_model(6)


def test_tvm_onnx_frontend_imports_cases():
    """Guards the findings the examples rely on: every case but `unsupported_op` imports in TVM."""
    tvm = pytest.importorskip("tvm")
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    assert onnx_cases.UNSUPPORTED_OP_TYPE not in _get_convert_map()
    for case, build in onnx_cases.CASES.items():
        if case == "unsupported_op":
            with pytest.raises(tvm.error.OpNotImplemented, match=onnx_cases.UNSUPPORTED_OP_TYPE):
                from_onnx(build())
        else:
            assert from_onnx(build())["main"].params[0].name.endswith("input")


def test_tuning_cost_chains_runs_and_finds_the_first_point_within_ten_percent(tmp_path):
    """examples.benchmark's tuning cost: a resumed run continues the first one's clock and trial count."""
    import json

    from examples.benchmark import tuning_cost_section

    points = [  # run a: estimates until every kernel is measured, then falling; run b: a --refine
        {"run": "a", "elapsed_s": 10, "trials": 16, "estimated_ms": 5.0, "kernels_measured": 1, "kernels": 2},
        {"run": "a", "elapsed_s": 20, "trials": 32, "estimated_ms": 30.0, "kernels_measured": 2, "kernels": 2},
        {"run": "a", "elapsed_s": 30, "trials": 48, "estimated_ms": 12.0, "kernels_measured": 2, "kernels": 2},
        {"run": "b", "elapsed_s": 5, "trials": 0, "estimated_ms": 12.0, "kernels_measured": 2, "kernels": 2},
        {"run": "b", "elapsed_s": 15, "trials": 16, "estimated_ms": 10.9, "kernels_measured": 2, "kernels": 2},
        {"run": "b", "elapsed_s": 25, "trials": 32, "estimated_ms": 10.0, "kernels_measured": 2, "kernels": 2},
    ]
    history = tmp_path / "history-net.jsonl"
    history.write_text("".join(json.dumps(p) + "\n" for p in points))
    (row,) = tuning_cost_section([history])
    assert row["final estimate ms"] == 10.0 and row["trials in all"] == 48 + 32
    assert row["trials to within 10%"] == 48 + 16 and row["minutes to within 10%"] == pytest.approx((30 + 15) / 60)


def test_gemm_peak_is_the_fastest_size_and_library():
    """examples.benchmark's fp32 peak: one of the requested GEMMs, from whichever library and size
    ran the most GFLOP/s, with that size's FLOPs."""
    import numpy as np

    from examples.benchmark import gemm_peak

    peak = gemm_peak(sizes=(32, 64), repeats=3)
    size = int(peak.engine.name.split()[1].split("^")[0])
    assert peak.engine.name in (f"GEMM {size}^3 (PyTorch)", f"GEMM {size}^3 (onnxruntime)") and size in (32, 64)
    assert peak.gflop == 2 * size ** 3 / 1e9
    result = peak.engine.run()
    product = np.asarray(result[0] if isinstance(result, list) else result)
    assert product.shape == (size, size) and np.all(product > 0)  # operands drawn from [0, 1)
