"""Accuracy-aware quantization: keep in float the layers whose int8 form costs the most accuracy.

Given evaluation samples (with labels, or without: then agreement with the float model's top-1 is
the accuracy) and the largest accepted drop, the float graph (after simplify and pruning) and its
quantized forms are compiled for this machine and run:

1. everything quantized (but the user's `--keep-float` layers): if the drop is inside the band, done;
2. else each layer is quantized alone and ranked by the SQNR of the model's outputs (lowest first:
   the layer whose quantization alone hurts most);
3. layers are moved to float in that order until the drop is inside the band.

Integer arithmetic is exact on every target, so the accuracy measured here is the target's up to
float rounding in the rescale epilogues.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import tvm

from compiler.errors import InputError
from compiler.evaluate import sqnr_db, top1
from compiler.pipeline import PipelineConfig, run_graph_passes
from passes.quantize import (QuantizeConfig, calibrate, check_keep_float, find_layers, rewrite_to_integer, run_on_host,
                             unpaid_layers)


@dataclass(frozen=True)
class AccuracyGuard:
    """`--eval-data` samples (and labels) with `--max-accuracy-drop` (a fraction: 0.01 is one point)."""

    samples: tuple[Mapping[str, np.ndarray], ...] = field(compare=False, repr=False)
    labels: np.ndarray | None = field(compare=False, repr=False)
    max_drop: float
    source: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.max_drop < 1:
            raise InputError(f"--max-accuracy-drop is a fraction in [0, 1) (0.01 = one point), got {self.max_drop}")
        if not self.samples:
            raise InputError(f"evaluation data '{self.source}' holds no samples")


def guard_quantization(mod: tvm.IRModule, config: PipelineConfig, guard: AccuracyGuard | None
                       ) -> tuple[PipelineConfig, dict[str, Any] | None]:
    """`config` with the float layers the guard chose (and the guard's report); as is without a guard."""
    if guard is None or config.quantize is None:
        return config, None
    quantize, report = choose_float_layers(mod, config, guard)
    return replace(config, quantize=quantize), report


def choose_float_layers(mod: tvm.IRModule, config: PipelineConfig, guard: AccuracyGuard) -> tuple[QuantizeConfig, dict[str, Any]]:
    """The quantize settings whose accuracy drop on `guard`'s data is within its band, and what was tried."""
    assert config.quantize is not None
    float_mod = run_graph_passes(mod, replace(config, quantize=None, dump_ir=None))
    reference = _outputs(float_mod, guard.samples)
    float_accuracy = _accuracy(reference, reference, guard.labels)
    found = find_layers(float_mod)
    layers = [layer.name for layer in found]
    check_keep_float(found, config.quantize.keep_float)
    unpaid = unpaid_layers(found, config.quantize)  # float in every candidate: int8 would not be faster
    ranges = calibrate(float_mod, [layer.input for layer in found], config.quantize)  # once for every candidate

    def accuracy_with(keep: Sequence[str]) -> tuple[float, list[np.ndarray]]:
        quantized = rewrite_to_integer(float_mod, {layer: ranges[layer.input] for layer in found
                                                   if layer.name not in keep and layer.name not in unpaid},
                                       config.quantize.form)
        outputs = _outputs(quantized, guard.samples)
        return _accuracy(outputs, reference, guard.labels), outputs

    keep = list(config.quantize.keep_float)
    accuracy, _ = accuracy_with(keep)
    steps = [{"kept_float": list(keep), "accuracy": accuracy}]
    sensitivity: list[dict[str, Any]] = []
    if float_accuracy - accuracy > guard.max_drop:
        for name in layers:
            if name not in keep and name not in unpaid:
                _, outputs = accuracy_with([other for other in layers if other != name])
                sensitivity.append({"layer": name, "sqnr_db": sqnr_db(outputs, reference)})
        sensitivity.sort(key=lambda entry: entry["sqnr_db"])
        for entry in sensitivity:
            keep.append(entry["layer"])
            accuracy, _ = accuracy_with(keep)
            steps.append({"kept_float": list(keep), "accuracy": accuracy})
            if float_accuracy - accuracy <= guard.max_drop:
                break
    report = {
        "eval_data": guard.source, "samples": len(guard.samples),
        "metric": "top-1 accuracy" if guard.labels is not None else "top-1 agreement with the float model",
        "float_accuracy": float_accuracy, "quantized_accuracy": accuracy, "drop": float_accuracy - accuracy,
        "max_drop": guard.max_drop, "within_band": float_accuracy - accuracy <= guard.max_drop,
        "kept_float": keep, "sensitivity": sensitivity, "steps": steps,
    }
    return replace(config.quantize, keep_float=tuple(keep)), report


def _outputs(mod: tvm.IRModule, samples: Sequence[Mapping[str, np.ndarray]]) -> list[np.ndarray]:
    """The first output of `main` for every sample, compiled for this machine."""
    return [outputs[0] for outputs in run_on_host(mod, samples)]


def _accuracy(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray], labels: np.ndarray | None) -> float:
    return float((top1(outputs) == (labels if labels is not None else top1(reference))).mean())
