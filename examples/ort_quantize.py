"""onnxruntime's static int8 quantization of an ONNX model: the reference int8 engine of the tests and the
benchmark, and the pre-quantized input (QDQ or QOperator) that `edgec compile` takes as it is."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np


def quantize_with_onnxruntime(source: Path, out: Path, samples: Iterable[Mapping[str, np.ndarray]],
                              quant_format: str = "QDQ") -> Path:
    """`quantize_static` of `source` into `out` on `samples` (one feed dict each): per-channel int8
    weights, uint8 activations, in onnxruntime's QDQ or QOperator format."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.samples = iter(samples)

        def get_next(self):
            return next(self.samples, None)

    quantize_static(str(source), str(out), Reader(), quant_format=QuantFormat[quant_format], per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return Path(out)
