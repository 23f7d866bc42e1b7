"""compiler/pipeline.py: an error inside TVM during a phase reaches the user as one line naming the
phase and the operator; an error in edgec's own pass code keeps its traceback."""

import numpy as np
import pytest
import tvm
from tvm import relax

from compiler.errors import EdgecError, PhaseError
from compiler.pipeline import Phase, PipelineConfig, _run_phases

HOST = {"kind": "llvm"}


def _run(mod, *passes, name="test-phase"):
    config = PipelineConfig(tuning_log=None)
    return _run_phases(mod, tvm.target.Target(HOST), config, [Phase(name, tuple(passes))], {})


def _pool_of_a_matrix() -> tvm.IRModule:
    """A max_pool2d of a 2-D tensor, built without type inference: the next pass that normalizes
    the module (TVM's C++ type inference) rejects it, naming the operator."""
    y = relax.Var("y", relax.TensorType((1, 3), "float32"))
    out = relax.Var("out", relax.TensorType((1, 3), "float32"))
    body = relax.SeqExpr([relax.BindingBlock([relax.VarBinding(out, relax.op.nn.max_pool2d(y))])], out)
    return tvm.IRModule({"main": relax.Function([y], body, relax.TensorType((1, 3), "float32"))})


def _stacked_sum() -> tvm.IRModule:
    """An ONNX-style variadic Sum (reduction over relax.stack) after a conv: TVM's ConvertLayout fails
    in C++ on it."""
    x = relax.Var("x", relax.TensorType((1, 3, 4, 4), "float32"))
    w = relax.const(np.ones((3, 3, 1, 1), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            conv = bb.emit(relax.op.nn.conv2d(x, w))
            stacked = bb.emit(relax.op.stack([conv, x], axis=0))
            out = bb.emit_output(relax.op.sum(stacked, axis=[0]))
        bb.emit_func_output(out)
    return bb.get()


def test_error_inside_tvm_is_one_line_naming_phase_and_operator():
    with pytest.raises(PhaseError) as err:
        _run(_pool_of_a_matrix(), relax.transform.Normalize(), name="simplify")
    message = str(err.value)
    assert "\n" not in message and isinstance(err.value, EdgecError)
    assert message.startswith("phase 'simplify' failed inside TVM at operator relax.nn.max_pool2d (TVM pass Normalize): ")
    assert "requires the input to be 4-dim tensor" in message  # TVM's own reason
    assert isinstance(err.value.__cause__, ValueError)  # the original stays chained for --debug


def test_cpp_check_inside_tvm_is_one_line_naming_the_phase():
    convert = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})
    with pytest.raises(PhaseError, match=r"^phase 'layout' failed inside TVM .*can't find S") as err:
        _run(_stacked_sum(), convert, name="layout")
    assert "\n" not in str(err.value) and isinstance(err.value.__cause__, tvm.error.InternalError)


def test_operator_is_read_from_tvm_message():
    from compiler.pipeline import _operator_in

    assert _operator_in("Check failed: bad attrs for Op(relax.nn.max_pool2d)") == "relax.nn.max_pool2d"
    assert _operator_in("lv3 = R.nn.conv2d(lv, w) with R.shape([1, 2]) mismatched") == "relax.nn.conv2d"
    assert _operator_in("old shape R.shape([3, 4]) and R.const(1)") is None


def test_bug_in_edgec_pass_keeps_its_traceback():
    def broken(mod, _ctx):
        raise AttributeError("edgec bug")

    with pytest.raises(AttributeError, match="edgec bug"):
        _run(_stacked_sum(), tvm.transform.module_pass(broken, opt_level=0, name="broken"))


def test_layout_phase_of_a_real_compile_does_not_fail_on_the_same_model():
    """The pipeline's own layout phase keeps what ConvertLayout cannot convert (passes/layout.py)."""
    from passes.layout import LayoutConfig, convert_layout

    mod = _stacked_sum()
    converted = _run(mod, convert_layout(LayoutConfig("NHWC")), name="layout")
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype("float32")
    from tests.helpers import run_relax

    (expected,), (actual,) = run_relax(mod, x), run_relax(converted, x)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
