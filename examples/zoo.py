"""A model zoo of standard architectures, defined here in PyTorch (no torchvision) with seeded weights.

Each entry of `ZOO` is a factory for the eval-mode module and its default input shape (224x224
ImageNet, 1000 classes, for the CNNs). `export_zoo_model(name)` writes it to ONNX in a cache directory,
optionally in the "old style" users still bring (opset 9, IR version 3, weights also listed as graph
inputs, residual adds as variadic `Sum`).

    python -m examples.zoo resnet50 --old-style --size 224   # prints the cached ONNX path
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from examples._init import seeded_eval_model
from examples.mobilenetv2 import _make_divisible


# --- ResNet-50 ---------------------------------------------------------------------------------------

class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride here, as torchvision v1.5) -> 1x1 expand x4, residual add."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet50(nn.Module):
    """torchvision-shaped ResNet-50: 7x7 stem, maxpool, Bottleneck stages [3, 4, 6, 3], avgpool, fc."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, 3)
        self.layer2 = self._make_layer(128, 4, 2)
        self.layer3 = self._make_layer(256, 6, 2)
        self.layer4 = self._make_layer(512, 3, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


# --- SqueezeNet 1.1 ----------------------------------------------------------------------------------

class Fire(nn.Module):
    """1x1 squeeze, then 1x1 and 3x3 expands concatenated along channels."""

    def __init__(self, cin: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.squeeze(x))
        return torch.cat([self.relu(self.expand1x1(x)), self.relu(self.expand3x3(x))], 1)


class SqueezeNet11(nn.Module):
    """torchvision-shaped SqueezeNet 1.1 (no BatchNorm in the original): ceil-mode max pools, conv classifier."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, 2), nn.ReLU(inplace=True), pool(),
            Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), pool(),
            Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), pool(),
            Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256), Fire(512, 64, 256, 256),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(512, num_classes, 1), nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x)).flatten(1)


# --- ShuffleNet v2 x1.0 ------------------------------------------------------------------------------

def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Reshape to 5-D (N, groups, C/groups, H, W), swap the two channel axes, reshape back."""
    n, c, h, w = x.shape
    x = x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(n, c, h, w)


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if act else nn.Sequential(*layers)


class ShuffleUnit(nn.Module):
    """ShuffleNet v2 unit: split channels (stride 1) or two strided branches, concat, channel shuffle."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        self.half = cin // 2
        branch = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(_conv_bn(cin, cin, 3, stride, cin, act=False), _conv_bn(cin, branch, 1))
        self.branch2 = nn.Sequential(
            _conv_bn(cin if stride > 1 else branch, branch, 1),
            _conv_bn(branch, branch, 3, stride, branch, act=False),
            _conv_bn(branch, branch, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            # torchvision's x.chunk(2, 1) exports (opset >= 11) as Slices of runtime-computed bounds,
            # which TVM's ONNX import cannot simplify; static split sizes export as one Split
            x1, x2 = torch.split(x, [self.half, self.half], 1)
            out = torch.cat((x1, self.branch2(x2)), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNet v2 x1.0: stages [4, 8, 4] with channels [24, 116, 232, 464, 1024]."""

    def __init__(self, num_classes: int = 1000, repeats: Sequence[int] = (4, 8, 4),
                 channels: Sequence[int] = (24, 116, 232, 464, 1024)):
        super().__init__()
        self.conv1 = _conv_bn(3, channels[0], 3, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], channels[0]
        for n, cout in zip(repeats, channels[1:4]):
            stages.append(nn.Sequential(ShuffleUnit(cin, cout, 2), *[ShuffleUnit(cout, cout, 1) for _ in range(n - 1)]))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.conv5 = _conv_bn(cin, channels[4], 1)
        self.fc = nn.Linear(channels[4], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv5(self.stages(self.maxpool(self.conv1(x))))
        return self.fc(x.mean([2, 3]))


# --- GoogLeNet (Inception v1) ------------------------------------------------------------------------

class _LRNFunction(torch.autograd.Function):
    """PyTorch's local response norm, exported as one ONNX `LRN` node (not the exporter's decomposition
    into Pad/AveragePool/Pow, so that importers meet the operator itself)."""

    @staticmethod
    def forward(ctx, x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
        return nn.functional.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def symbolic(g, x, size: int, alpha: float, beta: float, k: float):
        return g.op("LRN", x, size_i=size, alpha_f=alpha, beta_f=beta, bias_f=k)


class LRN(nn.LocalResponseNorm):
    """nn.LocalResponseNorm (same math: ONNX LRN divides alpha by size as PyTorch does) as one ONNX LRN."""

    def forward(self, x: Tensor) -> Tensor:
        return _LRNFunction.apply(x, self.size, self.alpha, self.beta, self.k)


class Inception(nn.Module):
    """Four branches (1x1; 1x1->3x3; 1x1->5x5; 3x3 maxpool->1x1) concatenated along channels."""

    def __init__(self, cin: int, ch1: int, ch3r: int, ch3: int, ch5r: int, ch5: int, pool_proj: int):
        super().__init__()
        self.branch1 = _conv_bn(cin, ch1, 1)
        self.branch2 = nn.Sequential(_conv_bn(cin, ch3r, 1), _conv_bn(ch3r, ch3, 3))
        self.branch3 = nn.Sequential(_conv_bn(cin, ch5r, 1), _conv_bn(ch5r, ch5, 5))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), _conv_bn(cin, pool_proj, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(nn.Module):
    """Inception v1 (Szegedy et al. 2014, table 1) with the paper's two LocalResponseNorms in the stem,
    BatchNorm after every conv (as torchvision's), no auxiliary classifiers (inference)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(
            _conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, ceil_mode=True), LRN(5, 1e-4, 0.75, 1.0),
            _conv_bn(64, 64, 1), _conv_bn(64, 192, 3), LRN(5, 1e-4, 0.75, 1.0),
            nn.MaxPool2d(3, 2, ceil_mode=True),
        )
        self.inception3 = nn.Sequential(Inception(192, 64, 96, 128, 16, 32, 32), Inception(256, 128, 128, 192, 32, 96, 64),
                                        nn.MaxPool2d(3, 2, ceil_mode=True))
        self.inception4 = nn.Sequential(
            Inception(480, 192, 96, 208, 16, 48, 64), Inception(512, 160, 112, 224, 24, 64, 64),
            Inception(512, 128, 128, 256, 24, 64, 64), Inception(512, 112, 144, 288, 32, 64, 64),
            Inception(528, 256, 160, 320, 32, 128, 128), nn.MaxPool2d(2, 2, ceil_mode=True),
        )
        self.inception5 = nn.Sequential(Inception(832, 256, 160, 320, 32, 128, 128),
                                        Inception(832, 384, 192, 384, 48, 128, 128))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.inception5(self.inception4(self.inception3(self.stem(x))))
        return self.fc(self.dropout(self.avgpool(x).flatten(1)))


# --- DenseNet-121 ------------------------------------------------------------------------------------

class DenseLayer(nn.Module):
    """BN-ReLU-1x1 (4 x growth) then BN-ReLU-3x3 (growth), concatenated to everything before it."""

    def __init__(self, cin: int, growth: int, bn_size: int):
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2, self.conv2 = nn.BatchNorm2d(bn_size * growth), nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = self.conv1(torch.relu(self.norm1(torch.cat(features, 1))))
        return self.conv2(torch.relu(self.norm2(x)))


class DenseBlock(nn.Module):
    def __init__(self, layers: int, cin: int, growth: int, bn_size: int):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth, bn_size) for i in range(layers))

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet121(nn.Module):
    """torchvision-shaped DenseNet-121: growth 32, blocks (6, 12, 24, 16), transitions halve channels."""

    def __init__(self, num_classes: int = 1000, growth: int = 32, blocks: Sequence[int] = (6, 12, 24, 16)):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                   nn.MaxPool2d(3, 2, 1)]
        channels = 64
        for i, n in enumerate(blocks):
            layers.append(DenseBlock(n, channels, growth, 4))
            channels += n * growth
            if i != len(blocks) - 1:
                layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Conv2d(channels, channels // 2, 1, bias=False),
                           nn.AvgPool2d(2, 2)]
                channels //= 2
        layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


# --- EfficientNet-B0 and MobileNetV3-Small -----------------------------------------------------------

class SqueezeExcite(nn.Module):
    """Global average pool -> 1x1 reduce -> act -> 1x1 expand -> gate, scaling the input's channels."""

    def __init__(self, channels: int, squeeze: int, act: type[nn.Module], gate: type[nn.Module]):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, squeeze, 1), nn.Conv2d(squeeze, channels, 1)
        self.act, self.gate = act(), gate()

    def forward(self, x: Tensor) -> Tensor:
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


def _conv_bn_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.SiLU) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act is not None else nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual with squeeze-excite: [1x1 expand] -> kxk depthwise -> SE -> 1x1 project (+ input)."""

    def __init__(self, cin: int, expanded: int, cout: int, k: int, stride: int, se_squeeze: int | None,
                 act: type[nn.Module], gate: type[nn.Module]):
        super().__init__()
        self.residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(_conv_bn_act(cin, expanded, 1, act=act))
        layers.append(_conv_bn_act(expanded, expanded, k, stride, expanded, act=act))
        if se_squeeze is not None:
            layers.append(SqueezeExcite(expanded, se_squeeze, nn.ReLU if act is nn.Hardswish else act, gate))
        layers.append(_conv_bn_act(expanded, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x) if self.residual else self.block(x)


# expand ratio, kernel, stride, output channels, repeats (Tan & Le 2019, table 1)
EFFICIENTNET_B0 = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                   (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


class EfficientNetB0(nn.Module):
    """EfficientNet-B0: SiLU everywhere, SE squeezing to a quarter of each block's input channels."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_act(3, 32, 3, 2)]
        cin = 32
        for expand, k, stride, cout, repeats in EFFICIENTNET_B0:
            for i in range(repeats):
                layers.append(MBConv(cin, cin * expand, cout, k, stride if i == 0 else 1, max(1, cin // 4),
                                     nn.SiLU, nn.Sigmoid))
                cin = cout
        layers.append(_conv_bn_act(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


# input, kernel, expanded, output, SE, hard-swish, stride (Howard et al. 2019, table 2)
MOBILENETV3_SMALL = (
    (16, 3, 16, 16, True, False, 2), (16, 3, 72, 24, False, False, 2), (24, 3, 88, 24, False, False, 1),
    (24, 5, 96, 40, True, True, 2), (40, 5, 240, 40, True, True, 1), (40, 5, 240, 40, True, True, 1),
    (40, 5, 120, 48, True, True, 1), (48, 5, 144, 48, True, True, 1), (48, 5, 288, 96, True, True, 2),
    (96, 5, 576, 96, True, True, 1), (96, 5, 576, 96, True, True, 1),
)


class MobileNetV3Small(nn.Module):
    """torchvision-shaped MobileNetV3-Small: hard-swish, SE gated by hard-sigmoid."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_act(3, 16, 3, 2, act=nn.Hardswish)]
        for cin, k, expanded, cout, se, hs, stride in MOBILENETV3_SMALL:
            squeeze = _make_divisible(expanded // 4, 8) if se else None
            layers.append(MBConv(cin, expanded, cout, k, stride, squeeze, nn.Hardswish if hs else nn.ReLU,
                                 nn.Hardsigmoid))
        layers.append(_conv_bn_act(96, 576, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(576, 1024), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(1024, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


# --- A small vision transformer ----------------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head softmax self-attention written out (matmuls, softmax), as exporters see it."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer: LayerNorm, attention, LayerNorm, GELU MLP, two residuals."""

    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """ViT-tiny-ish: 4x4 patch-embedding conv, class token, learned positions, 2 encoder layers of
    width 192 with 3 heads, final LayerNorm, linear head on the class token (32x32 input, 10 classes)."""

    def __init__(self, image: int = 32, patch: int = 4, dim: int = 192, depth: int = 2, heads: int = 3,
                 num_classes: int = 10):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.layers = nn.Sequential(*[EncoderLayer(dim, heads, 4 * dim) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.layers(x))[:, 0])


# --- registry and export -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ZooModel:
    factory: Callable[[], nn.Module]  # builds the untrained module (wrapped by `build` for seeded weights)
    input_shape: tuple[int, ...]  # the default (N, C, H, W); CNNs also take other square sizes

    def build(self, seed: int = 0) -> nn.Module:
        """The module in eval mode, seeded, with randomized BatchNorm statistics."""
        return seeded_eval_model(self.factory, seed)


ZOO: dict[str, ZooModel] = {
    "resnet50": ZooModel(ResNet50, (1, 3, 224, 224)),
    "squeezenet1_1": ZooModel(SqueezeNet11, (1, 3, 224, 224)),
    "shufflenet_v2_x1_0": ZooModel(ShuffleNetV2, (1, 3, 224, 224)),
    "googlenet": ZooModel(GoogLeNet, (1, 3, 224, 224)),
    "densenet121": ZooModel(DenseNet121, (1, 3, 224, 224)),
    "efficientnet_b0": ZooModel(EfficientNetB0, (1, 3, 224, 224)),
    "mobilenet_v3_small": ZooModel(MobileNetV3Small, (1, 3, 224, 224)),
    "vit_tiny": ZooModel(TinyViT, (1, 3, 32, 32)),
}
# Old-style exports exist for the CNNs (a transformer postdates opset 9: no LayerNormalization, and
# TVM's importer fails on its opset-9 shape Slices)
OLD_STYLE = frozenset(ZOO) - {"vit_tiny"}
OLD_STYLE_OPSET = 9
OLD_STYLE_IR_VERSION = 3


def default_cache_dir() -> Path:
    """`zoo/` in edgec's cache root ($EDGEC_CACHE_DIR, else ~/.cache/edgec)."""
    from compiler.runtime.toolchain import cache_dir

    return cache_dir() / "zoo"


def zoo_model(name: str, size: int | None = None, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """The eval-mode model `name` and a seeded input of its default shape (or `size` x `size`)."""
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}; choose from: {', '.join(ZOO)}")
    entry = ZOO[name]
    shape = entry.input_shape if size is None else (*entry.input_shape[:2], size, size)
    if name == "vit_tiny" and size is not None and size != entry.input_shape[-1]:
        raise ValueError(f"vit_tiny takes only {entry.input_shape[-1]}x{entry.input_shape[-1]} inputs (fixed positions)")
    return entry.build(seed), torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def export_zoo_model(name: str, cache_dir: str | os.PathLike | None = None, size: int | None = None,
                     old_style: bool = False, seed: int = 0) -> Path:
    """Export zoo model `name` to ONNX (input "input", output "output") once, and return the cached path.

    `size`: square input resolution (default: the model's). `old_style`: opset 9, IR version 3,
    initializers also listed as graph inputs, and every Add of two activations a variadic `Sum` (as
    ResNet-50 and GoogLeNet files from model zoos of that era come). The exporter folds a BatchNorm
    that follows a conv into it; the others (DenseNet's) stay BatchNormalization nodes.
    """
    from examples.export import _atomic_write, export_onnx

    if old_style and name not in OLD_STYLE:
        raise ValueError(f"no old-style export of {name!r}; old-style models: {', '.join(sorted(OLD_STYLE))}")
    model, x = zoo_model(name, size, seed)
    tag = f"{name}-{x.shape[-1]}-s{seed}" + ("-old" if old_style else "")
    path = Path(cache_dir or default_cache_dir()) / f"{tag}-{_source_digest()}.onnx"
    if path.exists():
        return path
    if not old_style:
        return export_onnx(model, x, path)
    import onnx

    def write(tmp: str) -> None:
        export_onnx(model, x, tmp, opset=OLD_STYLE_OPSET)
        onnx.save(to_old_style(onnx.load(tmp)), tmp)

    return _atomic_write(path, write)


def to_old_style(model, ir_version: int = OLD_STYLE_IR_VERSION):
    """`model` (opset <= 9) at IR version `ir_version`, with every initializer also a graph input and
    every Add of two computed tensors rewritten as a variadic Sum."""
    from onnx import helper

    weights = {t.name for t in model.graph.initializer}
    listed = {i.name for i in model.graph.input}
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                             for t in model.graph.initializer if t.name not in listed)
    constants = weights | {out for n in model.graph.node if n.op_type == "Constant" for out in n.output}
    for node in model.graph.node:
        if node.op_type == "Add" and not constants & set(node.input):
            node.op_type = "Sum"
    model.ir_version = ir_version
    return model


def _source_digest() -> str:
    """Changes when this file does, so a cached export never outlives an edit of its architecture."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:10]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.zoo", description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=list(ZOO))
    parser.add_argument("--out", type=Path, default=None, help="cache directory (default: %(default)s)")
    parser.add_argument("--size", type=int, default=None, help="square input resolution")
    parser.add_argument("--old-style", action="store_true", help="opset 9, IR v3, weights as inputs, Sum")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(export_zoo_model(args.model, args.out, args.size, args.old_style, args.seed))


if __name__ == "__main__":
    main()
