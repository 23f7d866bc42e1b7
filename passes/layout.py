"""Data layout of convolutions: NCHW (as imported) or NHWC (channels innermost, for SIMD over channels).

Tuned convs run faster in NHWC on x86-64 (python -m examples.benchmark: MobileNetV2 7.5 ms NHWC
against 12.6 ms NCHW; ResNet-18 41 ms NHWC direct against 50 ms NCHW even with Winograd).

Blocked NCHW{c}c layouts are not offered here: Relax's ConvertLayout cannot infer conv2d in them (in
TVM 0.27 it fails with "Layouts must have the same size"); blocking inside kernels is the job of
MetaSchedule's layout rewrite (weight prepacking) during tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax

from compiler.errors import EdgecError
from passes.clip import clip_as_min_max

# data and kernel layouts of conv2d per choice; NCHW is the imported form, so it needs no rewrite
LAYOUTS: dict[str, list[str] | None] = {"NCHW": None, "NHWC": ["NHWC", "OHWI"]}


@dataclass(frozen=True)
class LayoutConfig:
    layout: str = "NCHW"
    chosen_by: str = "--layout"  # or "preset" (for the manifest)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise EdgecError(f"unknown --layout '{self.layout}'; choose from: {', '.join(LAYOUTS)}")


def convert_layout(config: LayoutConfig) -> tvm.transform.Pass:
    """Rewrite conv2d, and the elementwise ops and pools around it, into `config.layout`.

    Needs: weights bound as constants, so that weight transposes fold away at compile time.
    Guarantees: every conv2d uses the requested data/kernel layout; clamps are `relax.maximum/minimum`
    (passes/clip.py), so that the layout passes through activations such as ReLU6; layout transforms
    remain only at the graph's edges and where an op cannot follow; the function's inputs and
    outputs keep their imported layout and shapes; numerics are unchanged.
    """
    layouts = LAYOUTS[config.layout]
    if layouts is None:
        return tvm.transform.Sequential([], name="convert_layout")
    return tvm.transform.Sequential(
        [clip_as_min_max(), relax.transform.ConvertLayout({"relax.nn.conv2d": layouts}),
         relax.transform.FoldConstant(), relax.transform.DeadCodeElimination()],
        name="convert_layout",
    )


def conv_layouts(mod: tvm.IRModule) -> list[str]:
    """The data layout of every conv2d in `mod`, in visiting order (for reports and tests)."""
    found = []

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == "relax.nn.conv2d":
            found.append(str(expr.attrs.data_layout))

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found
