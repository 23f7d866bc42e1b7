"""fold_requantize: each integer layer's epilogue and the next quantize as one affine map and clamp."""

import numpy as np
import pytest
from tvm import relax

from compiler.frontends import load_model
from examples.digits_cnn import load_digits_split
from examples.int8_matrix import export_matrix_model, matrix_inputs
from passes import LayoutConfig, QuantizeConfig, convert_layout, fold_requantize, quantize_int8, simplify_for_inference
from passes.quantize import run_on_host

FOLDED = ["relax.astype", "relax.multiply", "relax.add", "relax.round", "relax.maximum", "relax.minimum", "relax.astype"]


def _int8(path, calibration, layout: str):
    mod = simplify_for_inference()(load_model(path).mod)
    mod = quantize_int8(QuantizeConfig(calibration, "percentile", every_layer=True))(mod)
    return convert_layout(LayoutConfig(layout))(mod)


def _requantize_chains(mod) -> list[list[str]]:
    """The ops from each int32 accumulator's float cast to the int8/uint8 cast that ends its chain."""
    bindings = [b for block in mod["main"].body.blocks for b in block.bindings]
    producers = {b.var: b.value for b in bindings}
    chains = []
    for binding in bindings:
        value = binding.value
        if isinstance(value, relax.Call) and getattr(value.op, "name", "") == "relax.astype" \
                and str(value.ty.dtype) in ("int8", "uint8"):
            ops, tensor = [value.op.name], value.args[0]
            while isinstance(producers.get(tensor), relax.Call):
                call = producers[tensor]
                ops.append(call.op.name if hasattr(call.op, "name") else "call_tir")
                if ops[-1] == "relax.astype" or ops[-1] == "relax.nn.conv2d" or ops[-1] == "call_tir":
                    break
                tensor = call.args[0]
            chains.append(ops[::-1])
    return chains


def _outputs(mod, x: np.ndarray) -> np.ndarray:
    return np.concatenate([outputs[0] for outputs in run_on_host(mod, [{"input": sample[None]} for sample in x])])


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_the_digits_cnn_requantizes_in_seven_ops_with_the_same_integers(example, layout):
    x_train, _, x_test, _ = load_digits_split()
    calibration = tuple({"input": x_train[i:i + 1]} for i in range(0, 100, 2))
    before = _int8(example("digits").onnx, calibration, layout)
    after = fold_requantize()(before)
    chains_before, chains_after = _requantize_chains(before), _requantize_chains(after)
    folded = [chain for chain in chains_after if chain == FOLDED]
    # every conv that feeds another integer layer: rescale, bias, ReLU, the next scale, rounding, clamp
    assert len(folded) >= 3 and all(len(b) > len(FOLDED) for b in chains_before if b[0] == "relax.astype"
                                     and b[1] == "relax.multiply"), (chains_before, chains_after)
    reference, ours = _outputs(before, x_test[:200]), _outputs(after, x_test[:200])
    # the same integers but for float rounding at an exact tie: outputs equal to a few ulps
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    assert (ours.argmax(1) == reference.argmax(1)).all()


def test_a_chain_with_a_float_reader_or_a_nonlinear_step_is_left_alone(tmp_path):
    """shuffle-mix: hard-swish and SiLU epilogues (not affine) and a residual branch read in float."""
    path = export_matrix_model("shuffle-mix", tmp_path / "shuffle-mix.onnx")
    calibration = tuple({"input": x[None]} for x in matrix_inputs(8, seed=2))
    before = _int8(path, calibration, "NHWC")
    after = fold_requantize()(before)
    chains_before, chains_after = _requantize_chains(before), _requantize_chains(after)
    assert any(chain == FOLDED for chain in chains_after)  # the ReLU6-free linear convs still fold
    # chains with a step that is not affine, a clamp or a rounding (SiLU's sigmoid, hard-swish's
    # product of two tensors) are there before and after, unchanged
    foldable = {"relax.astype", "relax.multiply", "relax.add", "relax.subtract", "relax.round", "relax.maximum",
                "relax.minimum", "relax.clip"}
    kept = [chain for chain in chains_before if set(chain) - foldable]
    assert kept and all(chain in chains_after for chain in kept), (kept, chains_after)
    x = matrix_inputs(16, seed=3)
    reference, ours = _outputs(before, x), _outputs(after, x)
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def test_a_float_model_passes_unchanged(example):
    mod = simplify_for_inference()(load_model(example("digits").onnx).mod)
    assert fold_requantize()(mod).same_as(mod)


def _steps(*ops):
    """Calls on a (1, 2) float tensor, each reading the one before (what _compose takes)."""
    x = relax.Var("x", relax.TensorType((1, 2), "float32"))
    return [op(x) for op in ops]


def _const(*values):
    return relax.const(np.array([values], "float32"))


@pytest.mark.parametrize("ops, folds", [
    # a clamp with fractional bounds between two roundings: the bounds round too
    ((relax.op.round, lambda x: relax.op.maximum(x, _const(1.5, 1.5)), lambda x: relax.op.minimum(x, _const(2.7, 2.7)),
      relax.op.round), True),
    # a zero factor would make an open end NaN; a negative one would swap the clamp's ends
    ((lambda x: relax.op.multiply(x, _const(0.0, 1.0)), relax.op.round), False),
    ((lambda x: relax.op.multiply(x, _const(-1.0, 1.0)), relax.op.round), False),
    # an odd integer after rounding does not commute with round-half-to-even; an even one does
    ((relax.op.round, lambda x: relax.op.add(x, _const(1.0, 1.0)), relax.op.round), False),
    ((relax.op.round, lambda x: relax.op.add(x, _const(128.0, 128.0)), relax.op.round), True),
])
def test_a_chain_folds_only_where_the_folded_form_gives_the_same_integers(ops, folds):
    from passes.requantize import _compose

    steps = _steps(*ops)
    folded = _compose(steps, 2)
    assert (folded is not None) == folds
    if folded is None:
        return
    values = np.array([-3.5, -0.5, 0.2, 0.5, 1.5, 2.5, 2.6, 3.5, 130.5])
    expected = []
    for v in values:
        y = np.full((1, 2), v)
        for call in steps:
            name, operand = call.op.name, (call.args[1].value.numpy() if len(call.args) > 1 else None)
            y = {"relax.round": lambda: np.round(y), "relax.maximum": lambda: np.maximum(y, operand),
                 "relax.minimum": lambda: np.minimum(y, operand), "relax.add": lambda: y + operand,
                 "relax.multiply": lambda: y * operand}[name]()
        expected.append(y)
    ours = [np.minimum(np.maximum(np.round(np.full((1, 2), v) * folded.scale + folded.shift), folded.low), folded.high)
            for v in values]
    np.testing.assert_array_equal(np.array(ours), np.array(expected))
