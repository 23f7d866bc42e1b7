"""Accuracy guard: how far a compiled artifact is from its float reference, and how accurate it is.

`--eval-data FILE.npz` holds one array per model input, keyed by input name, with the samples stacked on
a new leading axis (shape (N, *input_shape)); a batch-1 model also takes (N, *input_shape[1:])). An
optional `label` array (N,) of class indices gives top-1 accuracy and the expected calibration error
(ECE) of the first output's softmax, also after temperature scaling (compiler/calibration.py). The
reference is the float model the artifact was compiled from (ONNX through onnxruntime, .pt2 through
PyTorch), or `--reference MODEL`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compiler.artifact import sha256_file
from compiler.errors import InputError
from compiler.frontends import require_framework
from compiler.specs import TensorSpec

LABEL_KEY = "label"
ECE_BINS = 15  # equal-width confidence bins of the expected calibration error, as in Guo et al. 2017
Runner = Callable[[Mapping[str, np.ndarray]], Sequence[np.ndarray]]


@dataclass(frozen=True)
class EvalReport:
    samples: int
    top1_accuracy: float | None  # against labels, when given
    reference_top1_accuracy: float | None
    top1_agreement: float  # artifact's top-1 equals the reference's, first output
    sqnr_db: float  # signal-to-quantization-noise ratio of all outputs against the reference
    max_abs_diff: float
    reference: str
    # expected calibration error of the first output's softmax (labels given, one class-score vector
    # per sample): the artifact's, the float reference's, and the artifact's after temperature scaling
    ece: float | None = None
    reference_ece: float | None = None
    calibrated_ece: float | None = None
    temperature: float | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["sqnr_db"] = None if math.isinf(self.sqnr_db) else self.sqnr_db  # JSON has no infinity
        return data


def load_eval_data(path: Path, specs: Sequence[TensorSpec], what: str = "evaluation data"
                   ) -> tuple[list[dict[str, np.ndarray]], np.ndarray | None]:
    """Split FILE.npz into per-sample input dicts (checked against `specs`) and the optional labels.

    `what` names the data in errors (evaluation data, calibration data).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} '{path}' does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (ValueError, OSError) as err:
        raise InputError(f"{what} '{path}' is not an .npz file ({err}); write it with numpy.savez") from err
    labels = arrays.pop(LABEL_KEY, None)
    expected = [spec.name for spec in specs]
    if sorted(arrays) != sorted(expected):
        raise InputError(f"{what} '{path}' has arrays {', '.join(sorted(arrays)) or 'none'}; the model's inputs are: "
                         f"{', '.join(expected)} (plus optional '{LABEL_KEY}')")
    samples = [_samples(spec, arrays[spec.name], path, what) for spec in specs]
    count = len(samples[0])
    if any(len(s) != count for s in samples) or (labels is not None and labels.shape != (count,)):
        raise InputError(f"{what} '{path}': every array (and '{LABEL_KEY}', shape (N,)) needs the same sample count N")
    per_sample = [{spec.name: s[i] for spec, s in zip(specs, samples)} for i in range(count)]
    return per_sample, labels


def _samples(spec: TensorSpec, array: np.ndarray, path: Path, what: str) -> np.ndarray:
    if array.shape[1:] == spec.shape:
        stacked = array
    elif spec.shape[:1] == (1,) and array.shape[1:] == spec.shape[1:]:
        stacked = array[:, None]
    else:
        shape = "x".join(map(str, spec.shape))
        raise InputError(f"{what} '{path}': '{spec.name}' has shape {'x'.join(map(str, array.shape))}; "
                         f"expected N x {shape} (samples stacked on a new first axis)")
    if str(stacked.dtype) != spec.dtype:
        raise InputError(f"{what} '{path}': '{spec.name}' is {stacked.dtype}; the model expects {spec.dtype}")
    return stacked


def evaluate(run: Runner, reference: Runner, samples: Sequence[Mapping[str, np.ndarray]],
             labels: np.ndarray | None, reference_name: str, temperature: float | None = None) -> EvalReport:
    """Run both on every sample and compare: top-1 (first output), SQNR and max abs diff (all outputs);
    with labels, the calibration error of the first output (also after scaling by `temperature`)."""
    ours = [list(run(sample)) for sample in samples]
    theirs = [list(reference(sample)) for sample in samples]
    ours_top1 = top1([outs[0] for outs in ours])
    reference_top1 = top1([outs[0] for outs in theirs])
    calibration = {}
    if labels is not None and is_class_scores([outs[0] for outs in ours]):
        logits = as_logits(np.stack([outs[0].reshape(-1) for outs in ours]))
        calibration = dict(
            ece=expected_calibration_error(softmax(logits), labels),
            reference_ece=expected_calibration_error(
                softmax(as_logits(np.stack([outs[0].reshape(-1) for outs in theirs]))), labels),
        )
        if temperature is not None:
            calibration.update(calibrated_ece=expected_calibration_error(softmax(logits, temperature), labels),
                               temperature=float(temperature))
    return EvalReport(
        samples=len(samples),
        top1_accuracy=None if labels is None else float((ours_top1 == labels).mean()),
        reference_top1_accuracy=None if labels is None else float((reference_top1 == labels).mean()),
        top1_agreement=float((ours_top1 == reference_top1).mean()),
        sqnr_db=sqnr_db([o for outs in ours for o in outs], [r for outs in theirs for r in outs]),
        max_abs_diff=max(float(np.abs(o - r).max()) for a, b in zip(ours, theirs) for o, r in zip(a, b)),
        reference=reference_name,
        **calibration,
    )


def cache_outputs(run: Runner) -> Runner:
    """`run` once per sample: evaluating and calibrating on the same sample objects runs the model once."""
    seen: dict[int, tuple[Mapping[str, np.ndarray], list[np.ndarray]]] = {}

    def cached(sample: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if id(sample) not in seen:
            seen[id(sample)] = (sample, list(run(sample)))  # the sample is kept: its id stays its own
        return seen[id(sample)][1]

    return cached


# --------------------------------------------------------------------------------------- calibration


def is_class_scores(outputs: Sequence[np.ndarray]) -> bool:
    """Whether every output is one float vector of two or more class scores (shape (C,), (1, C), ...)."""
    return bool(outputs) and all(np.issubdtype(o.dtype, np.floating) and o.size >= 2 and o.size == o.shape[-1]
                                 for o in outputs)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) over the last axis, in float64, stable for any magnitude."""
    scaled = np.asarray(logits, np.float64) / temperature
    exp = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def as_logits(scores: np.ndarray) -> np.ndarray:
    """Class scores (N, C) as logits: already probabilities (non-negative, each row summing to 1 within
    1e-3) become their log, clipped at 1e-12, so that temperature scaling applies to them too."""
    scores = np.asarray(scores, np.float64)
    if np.all(scores >= 0) and np.allclose(scores.sum(axis=-1), 1.0, rtol=0, atol=1e-3):
        return np.log(np.clip(scores, 1e-12, None))
    return scores


def class_logits(outputs: Sequence[np.ndarray]) -> np.ndarray | None:
    """One output per sample as an (N, classes) logit matrix (`as_logits`), or None when they are not
    class scores (`is_class_scores`)."""
    if not is_class_scores(outputs):
        return None
    return as_logits(np.stack([np.asarray(o).reshape(-1) for o in outputs]))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE (Guo et al. 2017): confidences (max probability) in equal-width bins (lo, hi]; the mean over
    samples of |accuracy - mean confidence| of each sample's bin."""
    probabilities = np.asarray(probabilities, np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    which = np.digitize(confidence, np.linspace(0.0, 1.0, bins + 1)[1:-1], right=True)
    error = 0.0
    for b in np.unique(which):
        members = which == b
        error += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return float(error / len(confidence))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature T in `bounds` minimising the negative log-likelihood of softmax(logits / T).

    The NLL is convex in 1/T, hence unimodal in log T: a golden-section search in log T finds it.
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    if labels.shape != logits.shape[:1] or not np.issubdtype(labels.dtype, np.integer) or \
            labels.min(initial=0) < 0 or labels.max(initial=0) >= logits.shape[1]:
        raise InputError(f"labels must be {len(logits)} class indices in [0, {logits.shape[1]}) to fit a temperature")
    picked = logits[np.arange(len(labels)), labels]

    def nll(log_t: float) -> float:
        scaled = logits / math.exp(log_t)
        top = scaled.max(axis=1)
        return float(np.mean(top + np.log(np.exp(scaled - top[:, None]).sum(axis=1)) - picked / math.exp(log_t)))

    ratio = (math.sqrt(5) - 1) / 2
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    while hi - lo > 1e-6:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return math.exp((lo + hi) / 2)


def top1(outputs: Sequence[np.ndarray]) -> np.ndarray:
    """The index of the largest value of each output (one class score vector per sample)."""
    return np.array([output.reshape(-1).argmax() for output in outputs])


def sqnr_db(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """Signal-to-noise ratio in dB of `outputs` against `reference` (paired arrays), inf when equal."""
    signal = sum(float(np.sum(np.square(r.astype(np.float64)))) for r in reference)
    noise = sum(float(np.sum(np.square(o.astype(np.float64) - r))) for o, r in zip(outputs, reference))
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def reference_runner(model: Path, specs: Sequence[TensorSpec]) -> Runner:
    """Run the float model with its own framework: onnxruntime for .onnx, PyTorch for .pt2."""
    model = Path(model)
    if not model.is_file():
        raise InputError(f"reference model '{model}' does not exist; pass --reference MODEL")
    if model.suffix.lower() == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        return lambda inputs: session.run(None, dict(inputs))
    if model.suffix.lower() == ".pt2":
        torch = require_framework("torch")

        program = torch.export.load(str(model)).module()
        order = [spec.name for spec in specs]

        def run_torch(inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            with torch.no_grad():
                result = program(*(torch.from_numpy(inputs[name]) for name in order))
            return [t.numpy() for t in (result if isinstance(result, (tuple, list)) else [result])]

        return run_torch
    raise InputError(f"cannot run reference model '{model.name}'; use an .onnx or .pt2 file")


def manifest_reference(model_info: Mapping[str, Any]) -> Path:
    """The model the artifact was compiled from, if it is still there unchanged."""
    path = model_info.get("path")
    if not path or not Path(path).is_file() or sha256_file(Path(path)) != model_info.get("sha256"):
        raise InputError("the artifact's source model is gone or changed since compiling; pass --reference MODEL")
    return Path(path)
