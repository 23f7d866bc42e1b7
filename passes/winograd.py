"""Winograd convolution: 3x3 stride-1 float convolutions computed as F(m x m, 3x3).

A 3x3 convolution computes each m x m output tile from an (m+2) x (m+2) input tile. Winograd's
minimal filtering transforms both into an alpha x alpha grid (alpha = m + 2), where the convolution
becomes alpha^2 independent matrix products over channels, and transforms the result back. F(4x4, 3x3)
needs 36 multiplies per 16 outputs instead of 144: 4x fewer in the dominant GEMM, paid for by two
cheap transforms. The weight transform happens here, at compile time.

The kernel is TOPI's Winograd compute (tvm.topi.nn.conv2d), restated so that the input is padded far
enough for the last partial tile (TOPI's NCHW form reads past the padded input when the output size
is not a multiple of m). Its stages keep TOPI's names and `schedule_rule` attributes, so MetaSchedule's
Winograd rules for CPUs and GPUs schedule the transforms and tunes the batched GEMM; the transformed
weight is a layout-free constant, so the tuned kernel's weight layout is prepacked at compile time.
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

KERNEL_SIZE = 3
# TIR op pattern "out-elementwise fusable": like a direct conv, bias, activation and residual add
# fuse into the Winograd kernel's output stage (TVM's analysis sees several reductions and would
# otherwise call the kernel opaque and leave them as kernels of their own).
_OUT_ELEMWISE_FUSABLE = 4


@dataclass(frozen=True)
class WinogradConfig:
    """Whether convolutions become Winograd, which ones, and with which output tile."""

    enabled: bool = True
    tile: int = 4  # m of F(m x m, 3x3): 4 needs 36 multiplies per 16 outputs, 2 needs 16 per 4
    # Both channel counts at least this: below it the transforms cost more than the GEMM saves
    min_channels: int = 16
    # Direct multiply-adds at least this: on small images the transforms and the padding of partial
    # tiles cost more than the GEMM saves (the digits CNN's 8x8 and 4x4 convs ran 2-3x slower tuned)
    min_macs: int = 10_000_000
    chosen_by: str = "--winograd"  # or "preset": who decided `enabled` (for the manifest)

    def __post_init__(self) -> None:
        if self.tile not in (2, 4, 6):
            raise EdgecError(f"Winograd tile {self.tile} is not supported; choose 2, 4 or 6")
        if self.min_channels < 1 or self.min_macs < 0:
            raise EdgecError(f"Winograd thresholds must be positive, got min_channels={self.min_channels}, "
                             f"min_macs={self.min_macs}")

    def to_json(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "tile": self.tile, "min_channels": self.min_channels,
                "min_macs": self.min_macs, "chosen_by": self.chosen_by}


@dataclass(frozen=True)
class WinogradReport:
    layers: tuple[dict[str, Any], ...]  # name, channels in/out, output size, of every rewritten conv

    def to_json(self) -> dict[str, Any]:
        return {"winograd_layers": len(self.layers), "layers": list(self.layers)}


def winograd_conv2d(config: WinogradConfig, on_report: Callable[[WinogradReport], None] | None = None
                    ) -> tvm.transform.Pass:
    """Rewrite every eligible conv2d in `main` into a Winograd F(tile x tile, 3x3) kernel.

    Eligible: float32, NCHW data with OIHW constant weights, 3x3, stride 1, dilation 1, one group,
    at least `config.min_channels` input and output channels and `config.min_macs` multiply-adds.
    Others are left as they are.
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


def _eligible(call: relax.Call, out: relax.Var, config: WinogradConfig) -> bool:
    if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
        return False
    data, weight = call.args
    attrs = call.attrs
    if not isinstance(weight, tvm.ir.GenericConst) or not isinstance(data.ty, relax.TensorType):
        return False
    if not all(isinstance(dim, tvm.tirx.IntImm) for dim in out.ty.shape):  # the kernel is built for static shapes
        return False
    shape = [int(dim) for dim in weight.ty.shape]
    return (str(data.ty.dtype) == "float32" and str(attrs.out_dtype or "float32") in ("", "void", "float32")
            and str(attrs.data_layout) == "NCHW" and str(attrs.kernel_layout) == "OIHW"
            and str(attrs.out_layout or "NCHW") == "NCHW"
            and shape[2:] == [KERNEL_SIZE, KERNEL_SIZE] and int(attrs.groups) == 1
            and [int(s) for s in attrs.strides] == [1, 1] and [int(d) for d in attrs.dilation] == [1, 1]
            and min(shape[:2]) >= config.min_channels
            and np.prod(shape) * np.prod([int(d) for d in out.ty.shape][2:]) >= config.min_macs)


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
        if not _eligible(call, binding.var, self.config):
            super().visit_var_binding_(binding)
            return
        data = self.visit_expr(call.args[0])
        weight = call.args[1].value.numpy()
        padding = tuple(int(p) for p in call.attrs.padding)
        kernel = self.builder_.call_te(_winograd_nchw, data, relax.const(transform_weight(weight, self.config.tile)),
                                       padding=padding, tile=self.config.tile, primfunc_name_hint="conv2d_winograd")
        func_var = kernel.args[0]
        self.builder_.update_func(func_var, self.builder_.get()[func_var].with_attr("op_pattern", _OUT_ELEMWISE_FUSABLE))
        new = (self.builder_.emit(kernel, name_hint=binding.var.name) if isinstance(binding.var, relax.DataflowVar)
               else self.builder_.emit_output(kernel, name_hint=binding.var.name))
        self.set_var_remap(binding.var, new)
        out_shape = [int(dim) for dim in binding.var.ty.shape]
        self.layers.append({"name": binding.var.name, "in_channels": weight.shape[1], "out_channels": weight.shape[0],
                            "output_hw": out_shape[2:], "tile": self.config.tile})


def _winograd_nchw(data: te.Tensor, kernel_pack: te.Tensor, padding: tuple[int, int, int, int], tile: int) -> te.Tensor:
    """TOPI's NCHW Winograd compute with pre-transformed weights, padded for partial tiles."""
    batch, in_channels, height, width = (int(dim) for dim in data.shape)
    alpha, _, _, out_channels = (int(dim) for dim in kernel_pack.shape)
    m = tile
    pad_top, pad_left, pad_bottom, pad_right = padding
    out_h = height + pad_top + pad_bottom - KERNEL_SIZE + 1
    out_w = width + pad_left + pad_right - KERNEL_SIZE + 1
    tiles_h, tiles_w = (out_h + m - 1) // m, (out_w + m - 1) // m
    # the last tile row/column reads alpha inputs from its start: pad the input that far
    extra_h = (tiles_h - 1) * m + alpha - (height + pad_top + pad_bottom)
    extra_w = (tiles_w - 1) * m + alpha - (width + pad_left + pad_right)
    data_pad = topi.nn.pad(data, (0, 0, pad_top, pad_left),
                           (0, 0, pad_bottom + max(extra_h, 0), pad_right + max(extra_w, 0)), name="data_pad")
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
