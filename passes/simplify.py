"""Inference simplification: fold batch-norm into convolutions and fold every constant subexpression."""

import tvm
from tvm import relax


def simplify_for_inference() -> tvm.transform.Pass:
    """Rewrite a freshly imported module into its inference form.

    Needs: weights bound as constants (what `compiler.frontends` produces), static shapes.
    Guarantees: no `relax.nn.batch_norm` or `relax.nn.dropout` remains; a batch-norm that follows a
    conv2d is folded into that conv's weights and a bias add; expressions over constants (weight
    transposes, reshapes of biases, generated weights such as ConstantOfShape) are evaluated once
    at compile time; unused bindings are removed. Numerics are unchanged up to float rounding.
    """
    return tvm.transform.Sequential(
        [
            relax.transform.FoldBatchnormToConv2D(),
            relax.transform.DecomposeOpsForInference(),
            relax.transform.FoldConstant(),
            relax.transform.DeadCodeElimination(),
        ],
        name="simplify_for_inference",
    )
