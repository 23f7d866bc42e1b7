"""Value types that compiling, running and timing share, with no dependency on any of them: a model
tensor's name, shape and dtype, the device names artifacts run on, a benchmark's settings and a
benchmark's latency statistics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from compiler.errors import BenchError

# Where an artifact runs (compiler.runtime.open_model): in this process on the host CPU, with the
# C++ runner under qemu-user, or on a TVM RPC server.
DEVICES = ("local", "qemu", "rpc")


@dataclass(frozen=True)
class TensorSpec:
    """Name, static shape and dtype of one model input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), tuple(int(d) for d in data["shape"]), str(data["dtype"]))


@dataclass(frozen=True)
class BenchSpec:
    """`warmup` untimed runs, then `runs` timed ones."""

    warmup: int = 10
    runs: int = 100

    def __post_init__(self) -> None:
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise BenchError(f"--warmup must be an integer >= 0, got {self.warmup!r}")
        if isinstance(self.runs, bool) or not isinstance(self.runs, int) or self.runs < 1:
            raise BenchError(f"--runs must be an integer >= 1, got {self.runs!r}")


@dataclass(frozen=True)
class LatencyStats:
    """Latency of single runs in milliseconds; percentiles interpolate linearly (numpy's default)."""

    runs: int
    warmup: int
    min: float
    mean: float
    p50: float
    p90: float
    p99: float
    max: float
    std: float  # population standard deviation
    # Peak resident memory of the whole process that ran the model, in bytes: on the local device the
    # Python process with TVM (its high-water mark over warm-up and timed runs), under qemu the C++
    # runner (with the emulator); None where not measured (rpc, or no /proc)
    peak_rss_bytes: int | None = None

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], warmup: int, *, peak_rss_bytes: int | None = None) -> LatencyStats:
        samples = np.asarray(samples_ms, dtype=np.float64)
        if samples.ndim != 1 or samples.size == 0:
            raise ValueError(f"need a non-empty 1-D sequence of samples, got shape {samples.shape}")
        p50, p90, p99 = (float(v) for v in np.percentile(samples, [50, 90, 99]))
        return cls(
            runs=int(samples.size), warmup=int(warmup), min=float(samples.min()), mean=float(samples.mean()),
            p50=p50, p90=p90, p99=p99, max=float(samples.max()), std=float(samples.std()),
            peak_rss_bytes=peak_rss_bytes,
        )

    def to_json(self) -> dict[str, Any]:
        """The fields as a dict; `peak_rss_bytes` only where it was measured."""
        out = asdict(self)
        if self.peak_rss_bytes is None:
            del out["peak_rss_bytes"]
        return out
