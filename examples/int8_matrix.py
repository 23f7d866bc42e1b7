"""Small architectures that exercise every operator pattern int8 must compile and keep accurate: ReLU6
(clip), hard-swish, SiLU, depthwise, grouped and pointwise convs, residual adds, concat along
channels, channel shuffle, global pooling and a Linear head (tests/examples/test_int8_matrix.py).

Weights are random but seeded; the head's weights are scaled up so that the logits are decisive
(an untrained net's near-ties would make top-1 agreement measure noise, not quantization).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

INPUT_SHAPE = (1, 3, 32, 32)


def _models():
    import torch
    from torch import nn

    def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act=nn.ReLU6) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), act())

    class MobileBlock(nn.Module):
        """The issue's crash model: depthwise 3x3 + BN + ReLU6, pointwise 1x1 + BN + ReLU6, then
        relu(x + conv3x3(x)), global mean, Linear."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = conv_bn(3, 16, stride=2)
            self.depthwise = conv_bn(16, 16, groups=16)
            self.pointwise = conv_bn(16, 32, kernel=1)
            self.residual = nn.Conv2d(32, 32, 3, 1, 1)
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            y = self.pointwise(self.depthwise(self.stem(x)))
            y = torch.relu(y + self.residual(y))
            return self.head(y.mean((2, 3)))

    class ShuffleMix(nn.Module):
        """hard-swish and SiLU activations, a grouped conv, channel shuffle, concat along channels,
        an un-activated (signed) residual branch, adaptive average pooling and a Linear head."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = conv_bn(3, 24, stride=2, act=nn.Hardswish)
            self.grouped = conv_bn(24, 24, groups=4, act=nn.SiLU)
            self.branch = nn.Sequential(conv_bn(24, 24, kernel=1, act=nn.Hardswish), conv_bn(24, 24, groups=24))
            self.project = nn.Conv2d(48, 40, 1)  # no activation: a signed tensor feeds the next conv
            self.expand = conv_bn(40, 40, kernel=1, act=nn.SiLU)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(40, 10)

        def forward(self, x):
            x = self.grouped(self.stem(x))
            n, c, h, w = x.shape
            x = x.reshape(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w)  # channel shuffle
            x = torch.cat([x, self.branch(x)], dim=1)
            y = self.project(x)
            y = y + self.expand(y)
            return self.head(torch.flatten(self.pool(y), 1))

    return {"mobile-block": MobileBlock, "shuffle-mix": ShuffleMix}


MODELS = ("mobile-block", "shuffle-mix")


def matrix_model(name: str):
    """The named model (eval mode, seeded weights, decisive head) and an example input."""
    import torch

    torch.manual_seed(0)
    model = _models()[name]().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial folded BN
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
        model.head.weight.mul_(8.0)
    return model, torch.from_numpy(matrix_inputs(1, seed=1))


def matrix_inputs(count: int, seed: int = 0) -> np.ndarray:
    """`count` normalized-image-like inputs (zero mean: signed, as a real model's first layer sees)."""
    return np.random.default_rng(seed).standard_normal((count, *INPUT_SHAPE[1:])).astype(np.float32)


def export_matrix_model(name: str, path: Path) -> Path:
    """The model as ONNX (opset 17, TorchScript exporter: what `torch.onnx.export` users get)."""
    import torch

    model, x = matrix_model(name)
    torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False, input_names=["input"],
                      output_names=["output"])
    return path
