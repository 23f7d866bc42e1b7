"""winograd_conv2d: eligible 3x3 convs become one Winograd kernel with the epilogue fused; numerics hold."""

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from compiler.errors import EdgecError
from compiler.frontends import import_torch_module
from passes import simplify_for_inference
from passes.winograd import WinogradConfig, layer_tile, transform_weight, winograd_conv2d
from tests.helpers import fuse_for_cpu, op_names, run_kernel, run_relax


class _Residual(torch.nn.Module):
    """conv-bn-relu, conv-bn + identity, relu; then a stride-2 conv and a thin conv that stay direct."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(channels)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(channels)
        self.down = torch.nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.thin = torch.nn.Conv2d(channels, 4, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)) + x)
        return self.thin(self.down(y))


@pytest.fixture(scope="module")
def residual():
    torch.manual_seed(0)
    net = _Residual(16).eval()
    for bn in (net.bn1, net.bn2):  # batch-norm statistics that are not the identity
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 16, 7, 7)  # 7 is not a multiple of the tile: the last tiles are partial
    mod = simplify_for_inference()(import_torch_module(net, (x,)).mod)
    with torch.no_grad():
        expected = net(x).numpy()
    return mod, x.numpy(), expected


@pytest.mark.parametrize("tile", [2, 4, 6])
def test_eligible_convs_become_winograd_and_outputs_match(residual, tile):
    mod, x, expected = residual
    reports = []
    rewritten = winograd_conv2d(WinogradConfig(tile=tile, min_macs=0, min_tiles=1), reports.append)(mod)
    (report,) = reports
    # the two stride-1 16->16 convs; the stride-2 conv and the 4-channel conv stay direct
    assert [layer["output_hw"] for layer in report.layers] == [[7, 7], [7, 7]]
    assert sum(1 for gv in rewritten.get_global_vars() if gv.name_hint.startswith("conv2d_winograd")) == 2
    assert "relax.nn.conv2d" in op_names(rewritten)
    (direct,) = run_relax(mod, x)
    (actual,) = run_relax(rewritten, x)
    assert np.abs(direct - expected).max() < 1e-4
    # F(6x6) has the largest transform constants, so the most rounding
    assert np.abs(actual - direct).max() < (1e-3 if tile == 6 else 1e-4) * np.abs(direct).max()


@pytest.mark.parametrize("layout_fixture", ["residual", "residual_nhwc"])
def test_bias_activation_and_residual_fuse_into_the_winograd_kernel(request, layout_fixture):
    mod, _, _ = request.getfixturevalue(layout_fixture)
    _, names = _fused_winograd_kernels(winograd_conv2d(WinogradConfig(tile=4, min_macs=0, min_tiles=1))(mod))
    assert len(names) == 2
    assert all(name.startswith("fused_conv2d_winograd") and name.endswith("relu") for name in names), names
    assert any("_add" in name.split("winograd", 1)[1] for name in names)  # the residual add too


def test_weight_transform_matches_the_direct_convolution_on_one_tile():
    """U = G g G^T, V = B^T d B, Y = A^T (U * V) A equals the valid 3x3 correlation of d with g."""
    from passes.winograd import _transform_matrices

    rng = np.random.default_rng(1)
    weight = rng.standard_normal((1, 1, 3, 3))
    tile = rng.standard_normal((6, 6))
    a, b, _ = _transform_matrices(4)
    u = transform_weight(weight, 4)[:, :, 0, 0]
    y = a.T @ (u * (b.T @ tile @ b)) @ a
    direct = np.array([[np.sum(tile[i:i + 3, j:j + 3] * weight[0, 0]) for j in range(4)] for i in range(4)])
    np.testing.assert_allclose(y, direct, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("config", [WinogradConfig(min_channels=32, min_macs=0, min_tiles=1),  # too thin
                                    WinogradConfig()])  # 16x16x9 x 7x7 = 113k multiply-adds: too small
def test_models_without_eligible_convs_are_returned_unchanged(residual, config):
    mod, _, _ = residual
    reports = []
    unchanged = winograd_conv2d(config, reports.append)(mod)
    assert unchanged.same_as(mod) and reports[0].layers == ()
    winograd_conv2d(WinogradConfig(tile=4, min_macs=16 * 16 * 9 * 49, min_tiles=1), reports.append)(mod)  # inclusive bound
    assert len(reports[1].layers) == 2


def test_convs_with_few_output_tiles_stay_direct(residual):
    """7x7 outputs are 2x2 tiles of F(4x4, 3x3): 4 tiles qualify with min_tiles=4, not with 5 (or the default)."""
    mod, _, _ = residual
    counts = []
    for config in (WinogradConfig(tile=4, min_macs=0, min_tiles=4), WinogradConfig(tile=4, min_macs=0, min_tiles=5),
                   WinogradConfig(tile=4, min_macs=0)):
        winograd_conv2d(config, lambda report: counts.append(len(report.layers)))(mod)
    assert counts == [2, 0, 0]


@pytest.mark.parametrize(("macs_per_byte", "tile"), [(0.0, 4), (2.0, 2), (8.0, None)])
def test_per_layer_tiles_weigh_multiply_adds_against_weight_bytes(residual, macs_per_byte, tile):
    """The 16->16 7x7 convs: F(4x4) has the fewest multiply-adds (36 x 4 tiles per channel pair, against
    16 x 16 for F(2x2) and 9 x 49 direct) but the largest weight (36 floats per pair against 16 and 9):
    compute alone picks F(4x4), a little weight cost F(2x2), a machine as starved as 8 direct."""
    mod, _, _ = residual
    reports = []
    winograd_conv2d(WinogradConfig(min_macs=0, min_tiles=1, macs_per_byte=macs_per_byte), reports.append)(mod)
    assert [layer["tile"] for layer in reports[0].layers] == ([tile, tile] if tile else [])


@pytest.mark.parametrize(("preset", "expected"), [("x86-avx512", [4, 4, 2, 2]), ("x86-64", [4, 4, 4, 2])])
def test_resnet18_layers_get_the_tiles_their_weights_allow(preset, expected):
    """ResNet-18's 3x3 stride-1 layers at the preset's machine balance: F(4x4) where the transformed
    weight is small (56x56x64: 0.6 MB, 28x28x128: 2.4 MB). For 14x14x256, F(4x4)'s 9.4 MB takes
    AVX-512 longer to read than its multiply-adds (so F(2x2): 4.2 MB), AVX2 (half the multiply rate)
    not. For 7x7x512 (F(4x4) has too few tiles), F(2x2)'s 16.8 MB costs both less than the direct
    conv's multiply-adds. (Measured with tuned records: on x86-avx512 F(2x2) ran 1.15x faster than
    F(4x4) on the 14x14 stage and 1.25x faster than direct on the 7x7 stage; x86-64's choices ran
    ResNet-18 1.2x faster than F(4x4) with a direct 7x7 stage.)"""
    from compiler.pipeline import PipelineConfig
    from targets import resolve_target

    config = PipelineConfig(tuning_log=None).for_preset(resolve_target(preset)).winograd
    tiles = [layer_tile(channels, channels, (size, size), 1, config)
             for channels, size in ((64, 56), (128, 28), (256, 14), (512, 7))]
    assert tiles == expected
    assert layer_tile(512, 512, (7, 7), 1, WinogradConfig(tile=4)) is None  # 4 tiles: under min_tiles


def test_bad_tile_names_the_choices():
    with pytest.raises(EdgecError, match="Winograd tile 3 is not supported; choose 2, 4 or 6"):
        WinogradConfig(tile=3)


def test_convs_with_symbolic_shapes_stay_direct():
    batch = tvm.tirx.Var("batch", "int64")
    x = relax.Var("x", relax.TensorType((batch, 32, 28, 28), "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            weight = relax.const(np.ones((32, 32, 3, 3), "float32"))
            y = builder.emit_output(relax.op.nn.conv2d(x, weight, padding=[1, 1, 1, 1]))
        builder.emit_func_output(y)
    reports = []
    winograd_conv2d(WinogradConfig(min_macs=0, min_tiles=1), reports.append)(builder.get())
    assert reports[0].layers == ()


@pytest.fixture(scope="module")
def residual_nhwc(residual):
    from passes.layout import LayoutConfig, convert_layout

    mod, x, expected = residual
    return convert_layout(LayoutConfig("NHWC"))(mod), x, expected


@pytest.mark.parametrize("tile", [2, 4])
def test_nhwc_convs_become_winograd_and_outputs_match(residual, residual_nhwc, tile):
    """After convert_layout to NHWC (OHWI weights) the same two convs qualify; numerics hold."""
    mod, x, _ = residual
    nhwc, _, _ = residual_nhwc
    reports = []
    rewritten = winograd_conv2d(WinogradConfig(tile=tile, min_macs=0, min_tiles=1), reports.append)(nhwc)
    (report,) = reports
    assert [(layer["layout"], layer["output_hw"]) for layer in report.layers] == [("NHWC", [7, 7])] * 2
    (direct,) = run_relax(mod, x)
    (actual,) = run_relax(rewritten, x)
    assert np.abs(actual - direct).max() < 1e-4 * np.abs(direct).max()


def _fused_winograd_kernels(mod):
    fused = fuse_for_cpu(mod)
    return fused, sorted(gv.name_hint for gv in fused.get_global_vars() if "winograd" in gv.name_hint)


def test_nhwc_schedule_rules_give_vectorized_transforms_that_compute_the_same(residual_nhwc):
    """MetaSchedule's design space for the NHWC kernel applies edgec's transform rules; the schedule
    it gives (transforms vectorized over channels, GEMM tiled) computes what the unscheduled kernel does."""
    from tvm.s_tir import meta_schedule as ms

    nhwc, _, _ = residual_nhwc
    # tile 2: the same rules on smaller unrolled transforms, so the builds take seconds
    fused, names = _fused_winograd_kernels(winograd_conv2d(WinogradConfig(tile=2, min_macs=0, min_tiles=1))(nhwc))
    kernel = tvm.IRModule({"main": fused[names[0]].with_attr("global_symbol", "main")})
    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    spaces = ms.TuneContext(mod=kernel, target=target, space_generator="post-order-apply",
                            task_name="winograd").generate_design_space()
    rng = np.random.default_rng(0)
    shapes = [[int(d) for d in info.shape] for info in ms.arg_info.ArgInfo.from_prim_func(kernel["main"])]
    args = [rng.standard_normal(shape).astype("float32") for shape in shapes]
    expected = run_kernel(kernel, target, args)
    assert spaces
    for space in spaces:
        assert space.mod.script().count("T.vectorized") >= 3  # input gather, data_pack and inverse at least
        np.testing.assert_allclose(run_kernel(space.mod, target, args), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("mcpu", "lanes"), [("haswell", 8), ("cascadelake", 16)])
def test_nhwc_transform_rules_vectorize_at_the_width_of_the_target_in_scope(residual_nhwc, mcpu, lanes):
    """AVX-512 targets get 16-lane transforms, AVX2 ones 8 (edgec's tuning runs the rules in the target's scope)."""
    from passes.winograd import _data_pack_rule, _inverse_rule

    nhwc, _, _ = residual_nhwc
    fused, names = _fused_winograd_kernels(winograd_conv2d(WinogradConfig(tile=2, min_macs=0, min_tiles=1))(nhwc))
    sch = tvm.s_tir.Schedule(fused[names[0]])
    with tvm.target.Target({"kind": "llvm", "mcpu": mcpu}):
        _data_pack_rule(sch, sch.get_sblock("data_pack"))
        _inverse_rule(sch, sch.get_sblock("inverse"))
    for block in ("data_pad", "data_pack", "inverse"):
        innermost = sch.get(sch.get_loops(sch.get_sblock(block))[-1])
        assert (innermost.kind, int(innermost.extent)) == (tvm.tirx.ForKind.VECTORIZED, lanes), block
