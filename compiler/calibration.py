"""Confidence calibration of a compiled classifier: one softmax temperature for its first output.

Temperature scaling (Guo et al. 2017) divides the logits by a scalar T fitted on labelled data (the
T minimising the negative log-likelihood): top-1 is unchanged, confidences move towards accuracies.
T lives in the manifest's `calibration` field; `edgec run --calibrated`, `edgec-runner --calibrated T`
and the bundle's C header apply it as softmax(logits / T) over the last axis (an output that already
holds probabilities gets log(p) as its logits, see `compiler.evaluate.as_logits`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from compiler.artifact import Manifest, read_manifest, write_manifest
from compiler.errors import EdgecError, InputError
from compiler.evaluate import (
    ECE_BINS, Runner, as_logits, class_logits, expected_calibration_error, fit_temperature, is_class_scores, softmax,
)

if TYPE_CHECKING:
    from compiler.runtime import RemoteSpec


def calibrate_artifact(artifact: Path, samples: Sequence[Mapping[str, np.ndarray]], labels: np.ndarray | None,
                       eval_source: str, run: Runner | None = None, device: str = "local",
                       remote: RemoteSpec | None = None) -> dict[str, Any]:
    """Fit T on the artifact's first output over `samples` and store it in its manifest; returns the record.

    `run` gives the artifact's outputs per sample (the caller may already hold them); without it the
    artifact is opened on `device` (compiler.runtime.open_model) and run here.
    """
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    if labels is None:
        raise InputError(f"fitting a temperature needs labels: add a 'label' array (N,) of class indices to {eval_source}")
    if run is None:
        from compiler.runtime import open_model

        with open_model(artifact, device, remote) as model:
            outputs = [next(iter(model.run(sample).values())) for sample in samples]
    else:
        outputs = [list(run(sample))[0] for sample in samples]
    return store_calibration(artifact, outputs, labels, eval_source, manifest)


def store_calibration(artifact: Path, outputs: Sequence[np.ndarray], labels: np.ndarray, eval_source: str,
                      manifest: Manifest | None = None) -> dict[str, Any]:
    """Fit T on outputs the artifact already gave (its first output per sample) and store the record."""
    manifest = manifest or read_manifest(artifact)
    record = calibration_record(outputs, labels, manifest.outputs[0].name, eval_source)
    write_manifest(artifact, dataclasses.replace(manifest, calibration=record))
    return record


def calibration_record(outputs: Sequence[np.ndarray], labels: np.ndarray, output: str, eval_source: str
                       ) -> dict[str, Any]:
    """The manifest's `calibration` field from the first output of every sample and their labels."""
    logits = class_logits(outputs)
    if logits is None:
        shape = "x".join(map(str, outputs[0].shape)) if len(outputs) else "none"
        raise InputError(f"output '{output}' ({shape}) is not one vector of class scores per sample; "
                         "temperature scaling applies to classifiers")
    temperature = fit_temperature(logits, labels)
    return {
        "temperature": temperature,
        "output": output,
        "bins": ECE_BINS,
        "ece_before": expected_calibration_error(softmax(logits), labels),
        "ece_after": expected_calibration_error(softmax(logits, temperature), labels),
        "eval_data": eval_source,
        "samples": len(outputs),
    }


def manifest_temperature(manifest: Manifest) -> float | None:
    """The temperature stored in the manifest, or None."""
    return None if manifest.calibration is None else float(manifest.calibration["temperature"])


def require_temperature(manifest: Manifest, artifact: Path) -> float:
    """The stored temperature; a one-line error naming how to fit one when there is none."""
    temperature = manifest_temperature(manifest)
    if temperature is None:
        raise EdgecError(f"artifact '{artifact}' has no softmax temperature; fit one with "
                         "edgec evaluate --fit-temperature or edgec optimize")
    return temperature


def calibrated(output: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) over the last axis of one run's first output, in the output's dtype."""
    if not is_class_scores([output]):
        raise InputError(f"the first output ({'x'.join(map(str, output.shape))} {output.dtype}) is not a vector "
                         "of class scores; --calibrated applies to classifiers")
    return softmax(as_logits(output), temperature).astype(output.dtype)
