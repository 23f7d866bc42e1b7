"""fast_math: exp-based activations as vectorizable polynomials, numerically close to the exact ones."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import relax as R

from passes.fast_math import fast_math
from tests.helpers import op_names, run_relax


def _activations():
    """SiLU (sigmoid), exp, tanh, GELU's erf and softmax on one tensor, plus a float16 sigmoid left alone."""

    @tvm.script.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor((2, 64), "float32")):
            with R.dataflow():
                silu = R.multiply(x, R.sigmoid(x))
                e = R.exp(R.multiply(x, R.const(0.25, "float32")))
                t = R.tanh(x)
                g = R.erf(x)
                s = R.nn.softmax(x, axis=-1)
                h = R.astype(R.sigmoid(R.astype(x, "float16")), "float32")
                y = R.add(R.add(R.add(silu, e), R.add(t, g)), R.add(s, h))
                R.output(y)
            return y

    return Module


def test_exp_based_ops_become_kernels_and_match_the_exact_functions():
    rewritten = fast_math()(_activations())
    remaining = op_names(rewritten)
    assert not remaining & {"relax.exp", "relax.tanh", "relax.erf", "relax.nn.softmax"}, remaining
    assert "relax.sigmoid" in remaining  # the float16 one: only float32 is rewritten
    kernels = [f for f in rewritten.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(kernels) == 5
    x = np.random.default_rng(0).uniform(-12, 12, (2, 64)).astype("float32")
    exact, fast = run_relax(_activations(), x)[0], run_relax(rewritten, x)[0]
    np.testing.assert_allclose(fast, exact, rtol=1e-5, atol=1e-5)


def test_the_sigmoid_kernel_calls_no_libm_exp():
    """The point of the pass: LLVM lowers TIR's exp to an `expf` call per element."""

    @tvm.script.ir_module
    class Sigmoid:
        @R.function
        def main(x: R.Tensor((1, 256), "float32")):
            with R.dataflow():
                y = R.sigmoid(x)
                R.output(y)
            return y

    def assembly(mod) -> str:
        target = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3"})
        return tvm.compile(mod, target=target).mod.imports[0].inspect_source("asm")

    assert "expf" in assembly(Sigmoid)
    assert "expf" not in assembly(relax.transform.LegalizeOps()(fast_math()(Sigmoid)))
