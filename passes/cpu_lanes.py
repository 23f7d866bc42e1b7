"""Vector lanes for edgec's MetaSchedule rules on CPUs (shared by the Winograd and depthwise rules)."""

from __future__ import annotations

from typing import Any

import tvm
from tvm.target import codegen

VECTOR_LANES = 8  # float32 lanes of AVX2; LLVM splits them for NEON
AVX512_LANES = 16


def vector_lanes() -> int:
    """float32 lanes of the target being tuned (MetaSchedule's rules get no target: edgec's tuning
    runs them inside the target's scope): 16 with AVX-512, else 8."""
    target = tvm.target.Target.current(allow_none=True)
    if target is not None and target.kind.name == "llvm" and "avx512f" in codegen.llvm_get_cpu_features(target):
        return AVX512_LANES
    return VECTOR_LANES


def split_lanes(sch: Any, loop: Any) -> tuple[Any, Any]:
    """`loop` split into (outer, lanes) with the most vector lanes its extent is a multiple of."""
    extent = int(sch.get(loop).extent)
    lanes = next(v for v in (vector_lanes(), VECTOR_LANES, 4, 2, 1) if extent % v == 0)
    return sch.split(loop, [None, lanes])
