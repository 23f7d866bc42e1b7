"""Winograd convolution: 3x3 stride-1 float convolutions computed as F(m x m, 3x3).

A 3x3 convolution computes each m x m output tile from an (m+2) x (m+2) input tile. Winograd's
minimal filtering transforms both into an alpha x alpha grid (alpha = m + 2), where the convolution
becomes alpha^2 independent matrix products over channels, and transforms the result back. F(4x4, 3x3)
needs 36 multiplies per 16 outputs instead of 144: 4x fewer in the dominant GEMM, paid for by two
cheap transforms. The weight transform happens here, at compile time.

NCHW convs get TOPI's Winograd compute (tvm.topi.nn.conv2d), restated so that the input is padded far
enough for the last partial tile (TOPI's NCHW form reads past the padded input when the output size
is not a multiple of m). Its stages keep TOPI's names and `schedule_rule` attributes, so MetaSchedule's
Winograd rules for CPUs and GPUs schedule the transforms and tunes the batched GEMM.

NHWC convs get edgec's own form, for CPUs: each transform is two 1-D passes (B^T d, then (B^T d) B),
each written out as the sum of its non-zero terms (312 multiply-adds per tile and channel for
F(4x4, 3x3), where the 2-D sum has 676 and a dense product 1296), and edgec's schedule rules
(registered below) run them unrolled per tile and vectorized over the innermost channels at the
target's vector width, where TOPI's rules leave them scalar. MetaSchedule tunes the batched GEMM
between them. (The separable passes ran 1.4x faster than the 2-D sums on AVX-512 and halved the
time MetaSchedule's search takes per batch: 68 s against 150 s for a 56x56x64 layer.) In both forms
the transformed weight is a layout-free constant, so the tuned kernel's weight layout is prepacked at
compile time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm
from tvm import relax, te, topi
from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points, winograd_transform_matrices

from compiler.errors import EdgecError
from passes.cpu_lanes import split_lanes

KERNEL_SIZE = 3
# TIR op pattern "out-elementwise fusable": like a direct conv, bias, activation and residual add
# fuse into the Winograd kernel's output stage (TVM's analysis sees several reductions and would
# otherwise call the kernel opaque and leave them as kernels of their own).
_OUT_ELEMWISE_FUSABLE = 4


@dataclass(frozen=True)
class WinogradConfig:
    """Whether convolutions become Winograd, which ones, and with which output tile."""

    enabled: bool = True
    # m of F(m x m, 3x3) for every layer (4 needs 36 multiplies per 16 outputs, 2 needs 16 per 4), or
    # None: per layer, F(4x4), F(2x2) or direct, whichever `layer_tile` finds cheapest
    tile: int | None = None
    # Both channel counts at least this: below it the transforms cost more than the GEMM saves
    min_channels: int = 16
    # Direct multiply-adds at least this: on small images the transforms and the padding of partial
    # tiles cost more than the GEMM saves (the digits CNN's 8x8 and 4x4 convs ran 2-3x slower tuned)
    min_macs: int = 10_000_000
    # Output tiles at least this: with few tiles the GEMMs are thin and the transformed weights
    # (alpha^2/9 = 4x the direct ones for tile 4) cost more to stream than the multiply-adds saved
    # (ResNet-18's 7x7 convs, 4 tiles, ran 1.4x slower tuned in NHWC)
    min_tiles: int = 16
    # Multiply-adds the device does in the time it reads one byte of weights from memory (its peak
    # over its memory bandwidth; None: the preset's, `Preset.macs_per_byte`, else DEFAULT_MACS_PER_BYTE).
    # Per-layer tiles weigh the GEMM's multiply-adds against streaming the transformed weight,
    # alpha^2/9 times the direct one's size (ResNet-18's 14x14x256 convs in F(4x4) read 9.4 MB each
    # and ran at the memory's speed on AVX-512, 1.6x slower than in MetaSchedule's warm-cache timing;
    # in F(2x2), 4.2 MB, they ran 1.15x faster than that, and its 7x7x512 convs 1.25x faster than direct).
    macs_per_byte: float | None = None
    chosen_by: str = "--winograd"  # or "preset": who decided `enabled` (for the manifest)

    def __post_init__(self) -> None:
        if self.tile is not None and self.tile not in (2, 4, 6):
            raise EdgecError(f"Winograd tile {self.tile} is not supported; choose 2, 4 or 6")
        if self.min_channels < 1 or self.min_macs < 0 or self.min_tiles < 1 or (self.macs_per_byte or 0) < 0:
            raise EdgecError(f"Winograd thresholds must be positive, got min_channels={self.min_channels}, "
                             f"min_macs={self.min_macs}, min_tiles={self.min_tiles}, macs_per_byte={self.macs_per_byte}")

    def to_json(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "tile": self.tile or "per layer", "min_channels": self.min_channels,
                "min_macs": self.min_macs, "min_tiles": self.min_tiles, "macs_per_byte": self.macs_per_byte,
                "chosen_by": self.chosen_by}


@dataclass(frozen=True)
class WinogradReport:
    layers: tuple[dict[str, Any], ...]  # name, channels in/out, output size, of every rewritten conv

    def to_json(self) -> dict[str, Any]:
        return {"winograd_layers": len(self.layers), "layers": list(self.layers)}


def winograd_conv2d(config: WinogradConfig, on_report: Callable[[WinogradReport], None] | None = None
                    ) -> tvm.transform.Pass:
    """Rewrite every eligible conv2d in `main` into a Winograd F(m x m, 3x3) kernel, m per layer.

    Eligible: float32, NCHW data with OIHW constant weights or NHWC with OHWI (after convert_layout),
    3x3, stride 1, dilation 1, one group,
    at least `config.min_channels` input and output channels, `config.min_macs` multiply-adds and
    `config.min_tiles` output tiles; m is `config.tile` or, without one, `layer_tile`'s choice,
    which can also be to stay direct. Others are left as they are.
    Needs: weights bound as constants (after `simplify_for_inference`), static shapes.
    Guarantees: each rewritten conv is one call_tir whose output stage takes the fused epilogue
    (bias, activation, residual add); its transformed weight [alpha, alpha, CI, CO] is a constant;
    results equal the direct convolution up to float rounding (relative error ~1e-6 for tile 4);
    `on_report` receives every rewritten layer.
    """

    @tvm.transform.module_pass(opt_level=0, name="winograd_conv2d")
    def transform(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        rewriter = _WinogradRewriter(mod, config)
        rewritten = rewriter.run()
        if on_report is not None:
            on_report(WinogradReport(tuple(rewriter.layers)))
        return rewritten if rewriter.layers else mod

    return transform


def transform_weight(weight: np.ndarray, tile: int) -> np.ndarray:
    """G w G^T for every (out, in) channel pair: OIHW [CO, CI, 3, 3] -> [alpha, alpha, CI, CO]."""
    _, _, g = _transform_matrices(tile)
    return np.einsum("ak,oikl,bl->abio", g, weight.astype(np.float64), g).astype(weight.dtype)


def _transform_matrices(tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Numpy A, B, G of F(tile x tile, 3x3), the same matrices TOPI bakes into the kernel."""
    return _cook_toom_convolution(_interpolation_points(tile + KERNEL_SIZE - 1), tile, KERNEL_SIZE)


DEFAULT_MACS_PER_BYTE = 6.0  # a 2-core AVX-512 CPU (targets.registry.Preset.macs_per_byte)

# Tiles a per-layer choice considers, largest first: F(6x6) saves little more and loses precision
_PER_LAYER_TILES = (4, 2)


def layer_tile(in_channels: int, out_channels: int, out_hw: tuple[int, int], batch: int,
               config: WinogradConfig) -> int | None:
    """The Winograd tile for one 3x3 stride-1 layer that passes the channel and size thresholds, or
    None to keep it direct.

    With `config.tile` set: that tile, if its output tiles reach `config.min_tiles`. Otherwise a
    roofline: each choice costs max(multiply-adds, weight bytes x macs_per_byte); the cheapest of
    F(4x4), F(2x2) and direct wins (direct on ties). At x86-avx512's balance (6) this keeps ResNet-18's
    56x56 and 28x28 layers in F(4x4) and puts its 14x14x256 and 7x7x512 layers in F(2x2) (F(4x4)'s
    weights are 9.4 and 37.7 MB); at AVX2's (3, half the multiply rate) the 14x14 layers stay F(4x4).
    """
    def tiles(tile: int) -> int:
        return int(np.prod([-(-size // tile) for size in out_hw])) * batch

    if config.tile is not None:
        return config.tile if tiles(config.tile) >= config.min_tiles else None
    pairs = in_channels * out_channels
    balance = DEFAULT_MACS_PER_BYTE if config.macs_per_byte is None else config.macs_per_byte

    def roofline(points: int, outputs: int) -> float:
        """Cost of `points` weight floats per channel pair, each used once per output tile (a pixel, direct)."""
        return max(points * outputs * pairs, points * pairs * 4 * balance)

    costs = {tile: roofline((tile + KERNEL_SIZE - 1) ** 2, tiles(tile))
             for tile in _PER_LAYER_TILES if tiles(tile) >= config.min_tiles}
    direct = roofline(KERNEL_SIZE ** 2, int(np.prod(out_hw)) * batch)
    best = min(costs, key=costs.get, default=None)
    return best if best is not None and costs[best] < direct else None


def _eligible(call: relax.Call, out: relax.Var, config: WinogradConfig) -> int | None:
    """The tile `call` gets, or None where it stays direct."""
    if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
        return None
    data, weight = call.args
    attrs = call.attrs
    if not isinstance(weight, tvm.ir.GenericConst) or not isinstance(data.ty, relax.TensorType):
        return None
    if not all(isinstance(dim, tvm.tirx.IntImm) for dim in out.ty.shape):  # the kernel is built for static shapes
        return None
    shape = [int(dim) for dim in weight.ty.shape]
    layouts = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout or attrs.data_layout))
    if layouts not in _KERNEL_LAYOUTS:
        return None
    out_channels, in_channels, kernel_h, kernel_w = _oihw(shape, layouts[1])
    out_hw = _output_hw(out, layouts[0])
    if not (str(data.ty.dtype) == "float32" and str(attrs.out_dtype or "float32") in ("", "void", "float32")
            and [kernel_h, kernel_w] == [KERNEL_SIZE, KERNEL_SIZE] and int(attrs.groups) == 1
            and [int(s) for s in attrs.strides] == [1, 1] and [int(d) for d in attrs.dilation] == [1, 1]
            and min(out_channels, in_channels) >= config.min_channels
            and np.prod(shape) * np.prod(out_hw) >= config.min_macs):
        return None
    return layer_tile(in_channels, out_channels, tuple(out_hw), int(out.ty.shape[0]), config)


# (data, kernel, output) layouts the rewrite handles: as imported, and after convert_layout to NHWC
_KERNEL_LAYOUTS = {("NCHW", "OIHW", "NCHW"), ("NHWC", "OHWI", "NHWC")}


def _oihw(shape: list[int], kernel_layout: str) -> list[int]:
    return [shape[kernel_layout.index(axis)] for axis in "OIHW"]


def _output_hw(out: relax.Var, data_layout: str) -> list[int]:
    shape = [int(dim) for dim in out.ty.shape]
    return [shape[data_layout.index("H")], shape[data_layout.index("W")]]


@relax.expr_functor.mutator
class _WinogradRewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, config: WinogradConfig):
        super().__init__(mod)
        self.mod_ = mod
        self.config = config
        self.layers: list[dict[str, Any]] = []

    def run(self) -> tvm.IRModule:
        main = self.mod_.get_global_var("main")
        self.builder_.update_func(main, self.visit_expr(self.mod_["main"]))
        return self.builder_.get()

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        call = binding.value
        tile = _eligible(call, binding.var, self.config)
        if tile is None:
            super().visit_var_binding_(binding)
            return
        data = self.visit_expr(call.args[0])
        kernel_layout = str(call.attrs.kernel_layout)
        weight = call.args[1].value.numpy().transpose([kernel_layout.index(axis) for axis in "OIHW"])
        padding = tuple(int(p) for p in call.attrs.padding)
        data_layout = str(call.attrs.data_layout)
        compute = _winograd_nhwc if data_layout == "NHWC" else _winograd_nchw
        kernel = self.builder_.call_te(compute, data, relax.const(transform_weight(weight, tile)),
                                       padding=padding, tile=tile, primfunc_name_hint="conv2d_winograd")
        func_var = kernel.args[0]
        self.builder_.update_func(func_var, self.builder_.get()[func_var].with_attr("op_pattern", _OUT_ELEMWISE_FUSABLE))
        new = (self.builder_.emit(kernel, name_hint=binding.var.name) if isinstance(binding.var, relax.DataflowVar)
               else self.builder_.emit_output(kernel, name_hint=binding.var.name))
        self.set_var_remap(binding.var, new)
        self.layers.append({"name": binding.var.name, "in_channels": weight.shape[1], "out_channels": weight.shape[0],
                            "output_hw": _output_hw(binding.var, data_layout), "layout": data_layout,
                            "tile": tile})


def _tiling(height: int, width: int, padding: tuple[int, int, int, int], tile: int
            ) -> tuple[int, int, int, int, int, int]:
    """Output size, tiles per column and row, and the bottom/right padding the input needs.

    The last tile row/column reads alpha = tile + 2 inputs from its start: the input is padded
    that far when the output size is not a multiple of the tile.
    """
    pad_top, pad_left, pad_bottom, pad_right = padding
    alpha = tile + KERNEL_SIZE - 1
    out_h = height + pad_top + pad_bottom - KERNEL_SIZE + 1
    out_w = width + pad_left + pad_right - KERNEL_SIZE + 1
    tiles_h, tiles_w = -(-out_h // tile), -(-out_w // tile)
    extra_h = (tiles_h - 1) * tile + alpha - (height + pad_top + pad_bottom)
    extra_w = (tiles_w - 1) * tile + alpha - (width + pad_left + pad_right)
    return out_h, out_w, tiles_h, tiles_w, pad_bottom + max(extra_h, 0), pad_right + max(extra_w, 0)


def _winograd_nchw(data: te.Tensor, kernel_pack: te.Tensor, padding: tuple[int, int, int, int], tile: int) -> te.Tensor:
    """TOPI's NCHW Winograd compute with pre-transformed weights, padded for partial tiles."""
    batch, in_channels, height, width = (int(dim) for dim in data.shape)
    alpha, _, _, out_channels = (int(dim) for dim in kernel_pack.shape)
    m = tile
    out_h, out_w, tiles_h, tiles_w, pad_bottom, pad_right = _tiling(height, width, padding, tile)
    pad_top, pad_left = padding[:2]
    data_pad = topi.nn.pad(data, (0, 0, pad_top, pad_left), (0, 0, pad_bottom, pad_right), name="data_pad")
    a_mat, b_mat, _ = winograd_transform_matrices(m, KERNEL_SIZE, str(data.dtype))
    tiles = batch * tiles_h * tiles_w

    input_tile = te.compute(
        (in_channels, tiles, alpha, alpha),
        lambda ci, p, eps, nu: data_pad[p // (tiles_h * tiles_w), ci,
                                        ((p // tiles_w) % tiles_h) * m + eps, (p % tiles_w) * m + nu],
        name="input_tile", attrs={"schedule_rule": "None"})
    data_pack = _tile_transform(  # B^T d B of every input tile
        (alpha, alpha, in_channels, tiles), alpha,
        lambda eps, nu, ci, p, r_a, r_b: input_tile[ci, p, r_a, r_b] * b_mat[r_a, eps] * b_mat[r_b, nu],
        "data_pack", "conv2d_nchw_winograd_data_pack")
    ci = te.reduce_axis((0, in_channels), name="ci")
    bgemm = te.compute(
        (alpha, alpha, out_channels, tiles),
        lambda eps, nu, co, p: te.sum(data_pack[eps, nu, ci, p] * kernel_pack[eps, nu, ci, co], axis=[ci]),
        name="bgemm", attrs={"layout_free_placeholders": [kernel_pack]})
    inverse = _tile_transform(  # A^T M A of every product tile
        (out_channels, tiles, m, m), alpha,
        lambda co, p, vh, vw, r_a, r_b: bgemm[r_a, r_b, co, p] * a_mat[r_a, vh] * a_mat[r_b, vw],
        "inverse", "conv2d_nchw_winograd_inverse")
    return te.compute(
        (batch, out_channels, out_h, out_w),
        lambda n, co, h, w: inverse[co, n * tiles_h * tiles_w + (h // m) * tiles_w + (w // m), h % m, w % m],
        name="conv2d_winograd")


def _tile_transform(shape: tuple[int, ...], alpha: int, term: Callable[..., Any], name: str, rule: str) -> te.Tensor:
    """out[index] = sum over an alpha x alpha tile (r_a, r_b) of term(*index, r_a, r_b), scheduled by
    MetaSchedule's Winograd `rule`."""
    r_a = te.reduce_axis((0, alpha), "r_a")
    r_b = te.reduce_axis((0, alpha), "r_b")
    return te.compute(shape, lambda *index: te.sum(term(*index, r_a, r_b), axis=[r_a, r_b]), name=name,
                      attrs={"schedule_rule": rule})


# ------------------------------------------------------------------------------------ NHWC, for CPUs

_NHWC_DATA_PACK_RULE = "edgec_winograd_nhwc_data_pack"
_NHWC_INVERSE_RULE = "edgec_winograd_nhwc_inverse"
_NHWC_BGEMM_RULE = "edgec_winograd_nhwc_bgemm"


def _winograd_nhwc(data: te.Tensor, kernel_pack: te.Tensor, padding: tuple[int, int, int, int], tile: int) -> te.Tensor:
    """NHWC Winograd with pre-transformed weights [alpha, alpha, CI, CO]; separable explicit transforms.

    Stages: input_tile (alpha x alpha tiles of the padded input), data_pack (B^T d B, as B^T d then
    (B^T d) B), bgemm (the alpha^2 GEMMs over channels: what MetaSchedule tunes), inverse (A^T M A,
    as A^T M then (A^T M) A) and the NHWC output. Each 1-D pass is the sum of its non-zero terms:
    for F(4x4, 3x3) the two passes of B^T d B take 2 x 6 x 26 = 312 multiply-adds per tile where the
    2-D form takes 676, and their expressions stay small enough for MetaSchedule's search to be quick.
    """
    batch, height, width, in_channels = (int(dim) for dim in data.shape)
    alpha, _, _, out_channels = (int(dim) for dim in kernel_pack.shape)
    m = tile
    out_h, out_w, tiles_h, tiles_w, pad_bottom, pad_right = _tiling(height, width, padding, tile)
    pad_top, pad_left = padding[:2]
    # The padded input, the tile gather and the first passes are scheduled by edgec's rules for the
    # transform they feed ("None": no other rule may inline or tile them)
    untouched = {"schedule_rule": "None"}
    data_pad = topi.nn.pad(data, (0, pad_top, pad_left, 0), (0, pad_bottom, pad_right, 0), name="data_pad",
                           attrs=untouched)
    a_mat, b_mat, _ = _transform_matrices(tile)
    tiles = batch * tiles_h * tiles_w

    input_tile = te.compute(
        (alpha, alpha, tiles, in_channels),
        lambda eps, nu, p, ci: data_pad[p // (tiles_h * tiles_w), ((p // tiles_w) % tiles_h) * m + eps,
                                        (p % tiles_w) * m + nu, ci],
        name="input_tile", attrs=untouched)
    data_rows = te.compute(  # B^T d
        (alpha, alpha, tiles, in_channels),
        lambda eps, b, p, ci: _explicit_product(b_mat, eps, lambda a: input_tile[a, b, p, ci]),
        name="data_pack_rows", attrs=untouched)
    data_pack = te.compute(  # (B^T d) B
        (alpha, alpha, tiles, in_channels),
        lambda eps, nu, p, ci: _explicit_product(b_mat, nu, lambda b: data_rows[eps, b, p, ci]),
        name="data_pack", attrs={"schedule_rule": _NHWC_DATA_PACK_RULE})
    ci = te.reduce_axis((0, in_channels), name="ci")
    bgemm = te.compute(
        (alpha, alpha, tiles, out_channels),
        lambda eps, nu, p, co: te.sum(data_pack[eps, nu, p, ci] * kernel_pack[eps, nu, ci, co], axis=[ci]),
        name="bgemm", attrs={"layout_free_placeholders": [kernel_pack], "schedule_rule": _NHWC_BGEMM_RULE})
    # A sum over one term: MetaSchedule's tiling fuses a GEMM's only consumer into its tiles when
    # that consumer is elementwise, and fusing this one (it reads all alpha rows of products) fails.
    once = te.reduce_axis((0, 1), name="once")
    inverse_rows = te.compute(  # A^T M
        (m, alpha, tiles, out_channels),
        lambda vh, b, p, co: te.sum(_explicit_product(a_mat, vh, lambda a: bgemm[a, b, p, co + once]), axis=[once]),
        name="inverse_rows", attrs=untouched)
    inverse = te.compute(  # (A^T M) A
        (m, m, tiles, out_channels),
        lambda vh, vw, p, co: _explicit_product(a_mat, vw, lambda b: inverse_rows[vh, b, p, co]),
        name="inverse", attrs={"schedule_rule": _NHWC_INVERSE_RULE})
    return te.compute(
        (batch, out_h, out_w, out_channels),
        lambda n, h, w, co: inverse[h % m, w % m, n * tiles_h * tiles_w + (h // m) * tiles_w + (w // m), co],
        name="conv2d_winograd")


def _explicit_product(matrix: np.ndarray, column: Any, value: Callable[[int], Any]) -> Any:
    """sum over k of matrix[k, column] * value(k), as the sum of its non-zero terms, chosen by `column`.

    The choice is a chain of if_then_else on constants: once the schedule unrolls `column` (edgec's
    rules do), each output keeps only its own terms.
    """
    expr = None
    for c in range(matrix.shape[1]):
        total = None
        for k in range(matrix.shape[0]):
            coefficient = float(matrix[k, c])
            if coefficient != 0.0:
                term = value(k) if coefficient == 1.0 else value(k) * tvm.tirx.const(coefficient, "float32")
                total = term if total is None else total + term
        if total is None:
            total = tvm.tirx.const(0.0, "float32")
        expr = total if expr is None else tvm.tirx.if_then_else(column == c, total, expr)
    return expr


_TILES_PER_STEP = 2  # tiles per innermost step: enough reuse, little register pressure


def _schedule_transform(sch: Any, block: Any) -> Any:
    """Loops (row, col, tile, channel) -> parallel over (tile, channel) blocks, row and col unrolled,
    channels vectorized innermost; returns the loop under which producers can be computed."""
    row, col, tile, channel = sch.get_loops(block)
    channel_outer, channel_inner = split_lanes(sch, channel)
    tile_outer, tile_inner = sch.split(tile, [None, _TILES_PER_STEP])
    sch.reorder(tile_outer, channel_outer, tile_inner, row, col, channel_inner)
    sch.unroll(row)
    sch.unroll(col)
    sch.vectorize(channel_inner)
    sch.parallel(sch.fuse(tile_outer, channel_outer))
    return tile_inner


def _compute_at_step(sch: Any, producer: Any, step: Any) -> None:
    """The producer's part for one step, computed under `step`: its loops unrolled, channels vectorized."""
    sch.compute_at(producer, step)
    loops = sch.get_loops(producer)
    inner = loops[[sch.get(loop) for loop in loops].index(sch.get(step)) + 1:]
    for loop in inner[:-1]:
        if int(sch.get(loop).extent) > 1:
            sch.unroll(loop)
    sch.vectorize(inner[-1])


def _data_pack_rule(sch: Any, data_pack: Any) -> list[Any]:
    """MetaSchedule custom rule: the padded input as a parallel copy of its own (padding checks inside
    the gather cost twice as much), then the input transform's two passes with its tile gather per step."""
    (data_rows,) = sch.get_producers(data_pack)
    (input_tile,) = sch.get_producers(data_rows)
    for pad in sch.get_producers(input_tile):
        *rows, channel = sch.get_loops(pad)
        _, channel_inner = split_lanes(sch, channel)
        sch.parallel(sch.fuse(*rows))
        sch.vectorize(channel_inner)
    step = _schedule_transform(sch, data_pack)
    _compute_at_step(sch, data_rows, step)
    _compute_at_step(sch, input_tile, step)
    return [sch]


def _inverse_rule(sch: Any, inverse: Any) -> list[Any]:
    """MetaSchedule custom rule: the output transform's two passes (its consumer and epilogue follow the
    default rules)."""
    (inverse_rows,) = sch.get_producers(inverse)
    step = _schedule_transform(sch, inverse)
    _compute_at_step(sch, inverse_rows, step)
    return [sch]


# Register tile of the batched GEMM: at most this many tiles by this many vectors of output channels
_MAX_TILE_ROWS = 8
_MAX_TILE_VECTORS = 4


def _bgemm_rule(sch: Any, bgemm: Any) -> list[Any]:
    """MetaSchedule custom rule: the alpha^2 GEMMs [tiles x CI] x [CI x CO] as register-blocked
    micro-kernels, the shape that keeps the FMA units busy instead of waiting on loads and stores.

    Parallel over (alpha, alpha, blocks of output channels); in each, for every block of `rows` tiles,
    a `rows` x `vectors * lanes` accumulator tile stays in registers over the whole CI reduction: per
    input channel, `rows` broadcasts and `vectors` weight loads feed rows x vectors FMAs. MetaSchedule
    samples rows (<= 8) and vectors (<= 4) and keeps the fastest. The weight is layout-free, so its
    panels ([CI x vectors * lanes] per block) are prepacked contiguous at compile time. (MetaSchedule's
    generic multi-level tiling had found 2 x 1-vector tiles for this block, accumulators reloaded for
    every CI block; with this rule ResNet-18's Winograd kernels ran 1.0-1.37x faster in the model.)
    """
    eps, nu, tile, channel, reduction = sch.get_loops(bgemm)
    channel_outer, lanes = split_lanes(sch, channel)
    blocks, vectors = sch.split(channel_outer, sch.sample_perfect_tile(channel_outer, n=2,
                                                                        max_innermost_factor=_MAX_TILE_VECTORS))
    tile_outer, rows = sch.split(tile, sch.sample_perfect_tile(tile, n=2, max_innermost_factor=_MAX_TILE_ROWS))
    sch.reorder(eps, nu, blocks, tile_outer, reduction, rows, vectors, lanes)
    sch.parallel(sch.fuse(eps, nu, blocks))
    accumulator = sch.cache_write(bgemm, 0, "global")
    # Unit loops kept: the trace must make as many loops whatever tile sizes are sampled
    sch.reverse_compute_at(accumulator, tile_outer, preserve_unit_loops=True)
    *_, store_lanes = sch.get_loops(accumulator)
    sch.vectorize(store_lanes)
    sch.unroll(rows)
    sch.unroll(vectors)
    sch.vectorize(lanes)
    return [sch]


# MetaSchedule looks a block's `schedule_rule` up as a global function per target kind ("cpu": llvm)
tvm.register_global_func(f"s_tir.meta_schedule.cpu.{_NHWC_DATA_PACK_RULE}", _data_pack_rule, override=True)
tvm.register_global_func(f"s_tir.meta_schedule.cpu.{_NHWC_INVERSE_RULE}", _inverse_rule, override=True)
tvm.register_global_func(f"s_tir.meta_schedule.cpu.{_NHWC_BGEMM_RULE}", _bgemm_rule, override=True)
