"""prune_channels: channel counts, FLOPs, exactness when the pruned channels are zero, what is left alone."""

import json

import numpy as np
import pytest
import torch
from torch import nn
from tvm import relax

from compiler.errors import EdgecError
from compiler.frontends import import_torch_module, load_model
from examples import digits_cnn, mobilenetv2, prune_finetune, resnet18
from examples._init import randomize_batchnorm
from passes import simplify_for_inference
from passes.prune import PruneConfig, plan_pruning, prune_channels
from tests.helpers import run_relax

HALF = PruneConfig(0.5)


# ------------------------------------------------------------------------------------------- helpers


def _simplified(net: nn.Module, shape: tuple[int, ...]) -> tuple[object, np.ndarray]:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    return simplify_for_inference()(import_torch_module(net.eval(), (x,)).mod), x.numpy()


def _calls(mod, op: str) -> list[relax.Call]:
    bindings = [b for block in mod["main"].body.blocks for b in block.bindings]
    return [b.value for b in bindings if isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "") == op]


def _conv_weights(mod) -> list[np.ndarray]:
    return [call.args[1].value.numpy() for call in _calls(mod, "relax.nn.conv2d")]


def _shape(expr) -> tuple[int, ...]:
    return tuple(int(d) for d in expr.ty.shape.values)


def _flops(mod, convs_only: bool = False) -> int:
    """2 x multiply-adds of conv2d (NCHW/OIHW) and matmul, from the shapes in the module."""
    total = 0
    for call in _calls(mod, "relax.nn.conv2d"):
        n, cout, h, w = _shape(call)
        total += 2 * n * cout * h * w * int(np.prod(_shape(call.args[1])[1:]))
    for call in [] if convs_only else _calls(mod, "relax.matmul"):
        (rows, k), (_, cols) = _shape(call.args[0]), _shape(call.args[1])
        total += 2 * rows * k * cols
    return total


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None) -> np.ndarray:
    w = conv.weight.detach().numpy()
    if bn is None:
        return w
    return w * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()[:, None, None, None]


def _index(mod, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None) -> int:
    """Binding-order position in `mod` of the conv whose (batch-norm-folded) weight is `conv`'s."""
    w = _folded(conv, bn)
    hits = [i for i, m in enumerate(_conv_weights(mod)) if m.shape == w.shape and np.allclose(m, w, atol=1e-5)]
    assert len(hits) == 1, hits
    return hits[0]


def _zero(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, channels: np.ndarray) -> None:
    """Make output channels exactly zero after the (folded) batch-norm, so removing them changes nothing."""
    with torch.no_grad():
        conv.weight[channels] = 0
        if conv.bias is not None:
            conv.bias[channels] = 0
        if bn is not None:
            bn.weight[channels] = 0
            bn.bias[channels] = 0


def _half(n: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(n)[: n // 2])


def _rest(n: int, removed: np.ndarray) -> np.ndarray:
    return np.setdiff1d(np.arange(n), removed)


def _assert_exact(before, after, x: np.ndarray) -> None:
    expected, actual = run_relax(before, x), run_relax(after, x)
    assert [a.shape for a in actual] == [e.shape for e in expected]
    for e, a in zip(expected, actual):
        assert np.abs(e - a).max() < 1e-5


def _pruned(mod):
    after = prune_channels(HALF)(mod)
    relax.analysis.well_formed(after)
    return after


# ------------------------------------------------------------------------------------------- models


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        y = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(nn.functional.adaptive_avg_pool2d(nn.functional.max_pool2d(y, 2), 1).flatten(1))


class ResidualNet(nn.Module):
    """Stem, an identity BasicBlock, a BasicBlock with a strided 1x1 projection: two residual groups."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.block1 = resnet18.BasicBlock(8, 8)
        project = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.block2 = resnet18.BasicBlock(8, 16, stride=2, downsample=project)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        y = self.block2(self.block1(torch.relu(self.bn(self.stem(x)))))
        return self.fc(y.mean((2, 3)))


class InvertedResidualNet(nn.Module):
    """MobileNetV2 stem and one inverted residual (8 -> 32 expand, 3x3 depthwise, 32 -> 8 project, + input)."""

    def __init__(self):
        super().__init__()
        self.stem = mobilenetv2.Conv2dNormActivation(3, 8)
        self.block = mobilenetv2.InvertedResidual(8, 8, 1, 4)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.block(self.stem(x)).mean((2, 3)))


class ConcatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 1), nn.Conv2d(8, 10, 3, padding=1)
        self.post, self.fc = nn.Conv2d(16, 8, 1), nn.Linear(8, 5)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        y = torch.relu(self.post(torch.cat([torch.relu(self.a(y)), torch.relu(self.b(y))], 1)))
        return self.fc(y.mean((2, 3)))


class AwkwardNet(nn.Module):
    """One prunable conv (conv1) among convs that must be left alone, each for a different reason."""

    def __init__(self):
        super().__init__()
        self.conv0, self.conv1 = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 8, 3, padding=1)
        self.conv2, self.conv3 = nn.Conv2d(8, 8, 1), nn.Conv2d(4, 4, 1)
        self.conv4, self.fc = nn.Conv2d(8, 6, 1), nn.Linear(6, 5)
        self.grouped = nn.Conv2d(3, 9, 1, groups=3)

    def forward(self, x):
        x = x + self.conv0(x)  # residual on the graph input
        y = torch.relu(self.conv1(x))
        n, c, h, w = y.shape
        mixed = self.conv3(self.conv2(y).reshape(n, c // 2, 2 * h, w))  # a reshape that mixes channels
        scores = torch.softmax(self.conv4(y), dim=1).mean((2, 3))  # an op across channels
        return mixed, self.fc(scores), self.grouped(x).mean((2, 3))


# ------------------------------------------------------------------------------------------- tests


def test_conv_net_halves_channels_keeps_top_norms_and_cuts_flops():
    torch.manual_seed(0)
    net = ConvNet()
    mod, x = _simplified(net, (1, 3, 8, 8))
    after = _pruned(mod)

    before_w, after_w = _conv_weights(mod), _conv_weights(after)
    assert [w.shape for w in after_w] == [(4, 3, 3, 3), (8, 4, 3, 3)]
    top1 = np.sort(np.argsort(-np.abs(before_w[0]).sum((1, 2, 3)))[:4])
    top2 = np.sort(np.argsort(-np.abs(before_w[1]).sum((1, 2, 3)))[:8])
    np.testing.assert_array_equal(after_w[0], before_w[0][top1])
    np.testing.assert_array_equal(after_w[1], before_w[1][top2][:, top1])
    assert _shape(_calls(after, "relax.matmul")[0].args[1]) == (8, 5)

    report = plan_pruning(mod, HALF)
    reported = []
    prune_channels(HALF, on_report=reported.append)(mod)
    assert reported == [report]
    conv_flops = 2 * 8 * 8 * 9 * 3  # per output channel of conv1 (8x8 output, 3x3x3 kernel)
    assert report.flops_before == _flops(mod) == 8 * conv_flops + 2 * 8 * 8 * 9 * 8 * 16 + 2 * 16 * 5
    assert report.flops_after == _flops(after) == 4 * conv_flops + 2 * 8 * 8 * 9 * 4 * 8 + 2 * 8 * 5
    assert report.flops_after < 0.3 * report.flops_before
    assert [(lay.channels_before, lay.channels_after) for lay in report.layers] == [(8, 4), (16, 8)]
    assert [list(lay.kept) for lay in report.layers] == [top1.tolist(), top2.tolist()]
    (y,) = run_relax(after, x)
    assert y.shape == (1, 5)


def test_conv_net_is_exact_when_pruned_channels_are_zero():
    torch.manual_seed(0)
    net = ConvNet()
    _zero(net.conv1, None, _half(8, 1))
    _zero(net.conv2, None, _half(16, 2))
    mod, x = _simplified(net, (1, 3, 8, 8))
    _assert_exact(mod, _pruned(mod), x)


def test_residual_groups_share_one_keep_set_ranked_by_summed_norms():
    torch.manual_seed(0)
    net = ResidualNet()
    randomize_batchnorm(net, torch.Generator().manual_seed(1))
    mod, x = _simplified(net, (1, 3, 8, 8))
    report = plan_pruning(mod, HALF)
    stem, partner = _index(mod, net.stem, net.bn), _index(mod, net.block1.conv2, net.block1.bn2)
    project, partner2 = _index(mod, *net.block2.downsample), _index(mod, net.block2.conv2, net.block2.bn2)
    kept = [lay.kept for lay in report.layers]  # binding order, like _conv_weights
    assert kept[stem] == kept[partner] and kept[project] == kept[partner2]
    weights = _conv_weights(mod)
    summed = np.abs(weights[stem]).sum((1, 2, 3)) + np.abs(weights[partner]).sum((1, 2, 3))
    assert list(kept[stem]) == np.sort(np.argsort(-summed)[:4]).tolist()
    assert plan_pruning(mod, HALF).left_alone == ()
    (y,) = run_relax(_pruned(mod), x)
    assert y.shape == (1, 5)


def test_residual_net_is_exact_when_pruned_channels_are_zero():
    torch.manual_seed(0)
    net = ResidualNet()
    randomize_batchnorm(net, torch.Generator().manual_seed(1))
    a, b, c, d = _half(8, 1), _half(8, 2), _half(16, 3), _half(16, 4)
    b1, b2 = net.block1, net.block2
    for conv, bn, removed in [
        (net.stem, net.bn, a), (b1.conv2, b1.bn2, a), (b1.conv1, b1.bn1, b),
        (b2.downsample[0], b2.downsample[1], c), (b2.conv2, b2.bn2, c), (b2.conv1, b2.bn1, d),
    ]:
        _zero(conv, bn, removed)
    mod, x = _simplified(net, (1, 3, 8, 8))
    after = _pruned(mod)

    before_w, after_w = _conv_weights(mod), _conv_weights(after)
    ka, kb, kc, kd = _rest(8, a), _rest(8, b), _rest(16, c), _rest(16, d)
    for (conv, bn), out, inp in [
        ((net.stem, net.bn), ka, np.arange(3)), ((b1.conv1, b1.bn1), kb, ka), ((b1.conv2, b1.bn2), ka, kb),
        (tuple(b2.downsample), kc, ka), ((b2.conv1, b2.bn1), kd, ka), ((b2.conv2, b2.bn2), kc, kd),
    ]:
        i = _index(mod, conv, bn)
        np.testing.assert_array_equal(after_w[i], before_w[i][out][:, inp])
    _assert_exact(mod, after, x)


def test_inverted_residual_depthwise_shrinks_in_step_and_is_exact():
    torch.manual_seed(0)
    net = InvertedResidualNet()
    randomize_batchnorm(net, torch.Generator().manual_seed(1))
    expand, depthwise, project, project_bn = net.block.conv[0], net.block.conv[1], net.block.conv[2], net.block.conv[3]
    a, b = _half(8, 1), _half(32, 2)
    _zero(net.stem[0], net.stem[1], a)
    _zero(project, project_bn, a)
    _zero(expand[0], expand[1], b)
    _zero(depthwise[0], depthwise[1], b)  # its bias must vanish too: it adds to the removed channels
    mod, x = _simplified(net, (1, 3, 8, 8))
    after = _pruned(mod)

    (dw_before,), (dw_after,) = [c for c in _calls(mod, "relax.nn.conv2d") if c.attrs.groups > 1], [
        c for c in _calls(after, "relax.nn.conv2d") if c.attrs.groups > 1
    ]
    assert (dw_before.attrs.groups, dw_after.attrs.groups) == (32, 16)
    np.testing.assert_array_equal(dw_after.args[1].value.numpy(), dw_before.args[1].value.numpy()[_rest(32, b)])
    report = plan_pruning(mod, HALF)
    assert [(lay.kind, lay.channels_before, lay.channels_after) for lay in report.layers] == [
        ("conv2d", 8, 4), ("conv2d", 32, 16), ("depthwise conv2d", 32, 16), ("conv2d", 8, 4),
    ]
    assert report.flops_after == _flops(after) < 0.4 * _flops(mod)  # the stem (3 inputs) and depthwise halve
    _assert_exact(mod, after, x)


def test_concat_offsets_the_second_branch_and_is_exact():
    torch.manual_seed(0)
    net = ConcatNet()
    s, a, b, p = _half(8, 1), np.array([0, 2, 5]), np.array([1, 3, 4, 7, 9]), _half(8, 2)
    for conv, removed in [(net.stem, s), (net.a, a), (net.b, b), (net.post, p)]:
        _zero(conv, None, removed)
    mod, x = _simplified(net, (1, 3, 8, 8))
    after = _pruned(mod)

    i = _index(mod, net.post)
    columns = np.concatenate([_rest(6, a), 6 + _rest(10, b)])
    np.testing.assert_array_equal(_conv_weights(after)[i], _conv_weights(mod)[i][_rest(8, p)][:, columns])
    assert [lay.channels_after for lay in plan_pruning(mod, HALF).layers] == [4, 3, 5, 4]
    _assert_exact(mod, after, x)


def test_report_lists_what_is_left_alone_and_why():
    torch.manual_seed(0)
    net = AwkwardNet()
    _zero(net.conv1, None, _half(8, 1))
    mod, x = _simplified(net, (1, 3, 6, 6))
    report = plan_pruning(mod, HALF)

    assert [(lay.channels_before, lay.channels_after) for lay in report.layers] == [(8, 4)]
    reasons = {lay.channels: lay.reason for lay in report.left_alone}
    assert sorted(reasons) == [3, 4, 6, 8, 9]
    assert "graph input 'x'" in reasons[3]  # conv0: added to the input
    assert "relax.reshape" in reasons[8] and "mixes channels" in reasons[8]  # conv2
    assert reasons[4] == "its channels reach the model output"  # conv3
    assert "relax.nn.softmax" in reasons[6]  # conv4
    assert reasons[9] == "grouped conv2d (groups=3) is not supported"
    assert json.loads(json.dumps(report.to_json()))["left_alone"][0]["reason"]
    after = _pruned(mod)
    assert sorted(w.shape[:2] for w in _conv_weights(after)) == [(3, 3), (4, 3), (4, 4), (6, 4), (8, 4), (9, 1)]
    assert (report.flops_before, report.flops_after) == (_flops(mod), _flops(after))
    _assert_exact(mod, after, x)


def _fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every Conv2d -> BatchNorm2d in torch: the same conv + bias graph that simplify_for_inference makes,
    without its FoldConstant compiling ~100 small kernels (25 s for MobileNetV2 on 2 cores)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in model.modules():
        pairs = [(n, m) for n, m in module.named_children()]
        for (name, conv), (bn_name, bn) in zip(pairs, pairs[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
    return model


@pytest.fixture(scope="module", params=["resnet18", "mobilenetv2"])
def example_module(request):
    module = {"resnet18": resnet18, "mobilenetv2": mobilenetv2}[request.param]
    mod, x = _simplified(_fuse_batchnorm(module.build(seed=0)), (1, 3, 32, 32))
    return request.param, mod, x


def test_full_example_models_prune_and_run(example_module):
    name, mod, x = example_module
    report = plan_pruning(mod, HALF)
    after = _pruned(mod)

    assert report.left_alone == ()
    assert all(lay.channels_after == lay.channels_before // 2 for lay in report.layers)
    assert (report.flops_before, report.flops_after) == (_flops(mod), _flops(after))
    assert _flops(after, convs_only=True) <= 0.5 * _flops(mod, convs_only=True)
    if name == "resnet18":
        assert len(report.layers) == 20
    else:
        groups = [c.attrs.groups for c in _calls(after, "relax.nn.conv2d") if c.attrs.groups > 1]
        assert len(groups) == 17 and groups[:3] == [16, 48, 72]
    (y,) = run_relax(after, x)
    assert y.shape == (1, 1000) and np.isfinite(y).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ratio": 1.5}, "--prune ratio must be in (0, 1), got 1.5"),
        ({"ratio": 0}, "--prune ratio must be in (0, 1), got 0"),
        ({"ratio": 0.5, "criterion": "l3"}, "--prune-criterion must be one of l1, l2, got 'l3'"),
    ],
)
def test_bad_config_is_a_one_line_user_error(kwargs, message):
    with pytest.raises(EdgecError) as err:
        PruneConfig(**kwargs)
    assert str(err.value) == message


def test_keep_count_rounding_criteria_and_ties():
    assert [HALF.keep_count(c) for c in (1, 2, 3, 5, 64)] == [1, 1, 2, 2, 32]  # round half to even, at least 1
    keep_one_l1, keep_one_l2 = PruneConfig(0.7, "l1"), PruneConfig(0.7, "l2")  # round(0.3 * 3) == 1
    weight = np.array([[3.0, 4.0], [5.5, 0.0], [0.1, 0.1]])  # L1: 7, 5.5, 0.2; L2: 5, 5.5, 0.14
    np.testing.assert_allclose(keep_one_l2.norms(weight), [5.0, 5.5, np.sqrt(0.02)])
    assert keep_one_l1.select(keep_one_l1.norms(weight)).tolist() == [0]
    assert keep_one_l2.select(keep_one_l2.norms(weight)).tolist() == [1]
    assert keep_one_l1.select(np.array([1.0, 5.0, 5.0])).tolist() == [1]  # a tie keeps the lower index
    assert HALF.select(np.array([3.0, 1.0, 2.0, 4.0])).tolist() == [0, 3]  # in channel order


@pytest.fixture(scope="module")
def digits_model():
    return digits_cnn.train(seed=0)


def test_torch_side_pruning_matches_the_compiler_pass(digits_model):
    _, _, x_te, _ = digits_cnn.load_digits_split(0)
    x = torch.from_numpy(x_te[:4])
    mod = simplify_for_inference()(import_torch_module(digits_model, (x,)).mod)
    pruned, kept = prune_finetune.prune(digits_model, HALF)

    # the digits convs carry biases, so batch-norm stays unfolded here: the pass ranks by the scaled weight
    assert [lay.kept for lay in plan_pruning(mod, HALF).layers] == [tuple(k.tolist()) for k in kept]
    with torch.no_grad():
        expected = pruned(x).numpy()
    (actual,) = run_relax(prune_channels(HALF)(mod), x.numpy())
    assert np.abs(actual - expected).max() < 1e-5


def test_prune_and_fine_tune_keeps_digits_accuracy(digits_model, tmp_path):
    result = prune_finetune.run(HALF, out=tmp_path / "digits_pruned.onnx", model=digits_model)
    assert [len(k) for k in result.kept] == [8, 16, 32]
    assert result.accuracy_before >= 0.98
    assert result.accuracy_pruned < result.accuracy_after  # fine-tuning is what wins the accuracy back
    assert result.accuracy_before - result.accuracy_after <= 0.01
    imported = load_model(result.onnx)
    assert [w.shape[0] for w in _conv_weights(imported.mod)] == [8, 16, 32]
    assert imported.outputs[0].shape == (1, 10)
