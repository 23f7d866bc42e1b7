"""edgec's own IRModule -> IRModule passes, one per file; `compiler/pipeline.py` orders them."""

from passes.simplify import simplify_for_inference

__all__ = ["simplify_for_inference"]
