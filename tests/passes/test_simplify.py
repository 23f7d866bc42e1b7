"""simplify_for_inference: batch-norm folded into conv, constants folded, numerics unchanged."""

import numpy as np
import torch

from compiler.frontends import import_torch_module
from passes import simplify_for_inference
from tests.helpers import op_names, run_relax


class ConvBatchNormNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(torch.nn.functional.dropout(y.mean((2, 3)), 0.5, self.training))


def _tiny_model():
    torch.manual_seed(0)
    net = ConvBatchNormNet().eval()
    with torch.no_grad():  # non-trivial running statistics so that folding is really exercised
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(1, 3, 12, 12)
    return net, x


def test_batch_norm_is_folded_and_outputs_match():
    net, x = _tiny_model()
    before = import_torch_module(net, (x,)).mod
    assert "relax.nn.batch_norm" in op_names(before)

    after = simplify_for_inference()(before)

    ops = op_names(after)
    assert "relax.nn.batch_norm" not in ops
    assert "relax.nn.dropout" not in ops
    assert "relax.nn.conv2d" in ops
    (expected,) = run_relax(before, x.numpy())
    (actual,) = run_relax(after, x.numpy())
    reference = net(x).detach().numpy()
    assert np.abs(actual - expected).max() < 1e-4
    assert np.abs(actual - reference).max() < 1e-4


def test_constant_subexpressions_are_folded():
    net, x = _tiny_model()
    after = simplify_for_inference()(import_torch_module(net, (x,)).mod)
    # the Linear weight's transpose is computed at compile time, not at every run
    assert "relax.permute_dims" not in op_names(after)
