"""edgec's own IRModule -> IRModule passes, one per file; `compiler/pipeline.py` orders them."""

from passes.prune import PruneConfig, PruneReport, plan_pruning, prune_channels
from passes.simplify import simplify_for_inference

__all__ = ["PruneConfig", "PruneReport", "plan_pruning", "prune_channels", "simplify_for_inference"]
