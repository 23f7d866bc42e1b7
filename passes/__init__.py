"""edgec's own IRModule -> IRModule passes, one per file; `compiler/pipeline.py` orders them."""

from passes.clip import clip_as_min_max
from passes.default_schedule import ScheduleReport, default_schedules
from passes.depthwise import depthwise_rule
from passes.fast_math import fast_math
from passes.layout import LayoutConfig, convert_layout
from passes.qdq import lower_qdq_to_integer
from passes.prune import PruneConfig, PruneReport, plan_pruning, prune_channels
from passes.quantize import Int8Payoff, IntegerForm, QuantizeConfig, quantize_int8
from passes.requantize import fold_requantize
from passes.simplify import simplify_for_inference
from passes.winograd import WinogradConfig, winograd_conv2d

__all__ = ["Int8Payoff", "IntegerForm", "LayoutConfig", "ScheduleReport", "default_schedules", "PruneConfig", "PruneReport", "QuantizeConfig", "clip_as_min_max", "convert_layout", "depthwise_rule", "fast_math", "fold_requantize", "lower_qdq_to_integer", "plan_pruning",
           "prune_channels", "quantize_int8", "simplify_for_inference", "WinogradConfig", "winograd_conv2d"]
