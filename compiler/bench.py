"""Latency of a compiled artifact on any device of compiler.runtime (here, under qemu, over RPC), per
kernel here, and engines compared in interleaved rounds.

Every timed run is one sample (TVM's time_evaluator with number=1, repeat=runs), so percentiles
describe single inferences, after `warmup` untimed runs. Inputs are random data of the manifest's
shapes and dtypes, seeded, so two benchmarks of one artifact feed identical inputs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compiler.errors import BenchError
from compiler.runtime import RemoteSpec, open_model
from compiler.runtime.instructions import InstructionCount
from compiler.specs import BenchSpec, LatencyStats, TensorSpec


def random_inputs(specs: Sequence[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs of the specs' shapes and dtypes: standard normal floats, integers in [0, 8), booleans."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            arrays[spec.name] = rng.standard_normal(spec.shape).astype(dtype)
        elif dtype.kind in "iu":
            arrays[spec.name] = rng.integers(0, 8, spec.shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[spec.name] = rng.integers(0, 2, spec.shape).astype(dtype)
        else:
            raise BenchError(f"input '{spec.name}' has dtype {spec.dtype}, for which edgec cannot make random data")
    return arrays


def bench(artifact: Path, spec: BenchSpec, device: str = "local", remote: RemoteSpec | None = None) -> LatencyStats:
    """Benchmark `artifact` on `device` (compiler.specs.DEVICES); `remote` names the server for "rpc".
    Under qemu the runs prove the artifact runs, not the device's speed; over RPC they are timed on
    the device itself."""
    with open_model(artifact, device, remote) as model:
        return model.bench(random_inputs(model.manifest.inputs), spec)


def count_instructions(artifact: Path, runs: int = 3) -> InstructionCount:
    """Guest instructions per inference of an emulated (aarch64) artifact under qemu, at one thread on
    its preset's core: a speed proxy for ARM builds (compiler.runtime.instructions)."""
    with open_model(artifact, "qemu") as model:
        return model.count_instructions(random_inputs(model.manifest.inputs), runs)


@dataclass(frozen=True)
class KernelTime:
    """A function the VM calls (a kernel, or `VM_BUILTINS` for all of its builtins together): calls
    and milliseconds per run, the mean over the timed runs."""

    name: str
    calls: int
    ms: float


VM_BUILTINS = "(VM builtins)"


def check_kernel_options(top: int, against: Path | None, device: str) -> None:
    """`edgec bench --kernels N [--against B]`: per-kernel times need the artifact in this process."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise BenchError(f"--kernels must be an integer >= 0 (how many kernels to list), got {top!r}")
    if against is not None and not top:
        raise BenchError("--against compares per-kernel times: add --kernels N")
    if top and device != "local":
        raise BenchError(f"--kernels times each kernel in this process; use --device local, not {device}")


def kernel_times(artifacts: Sequence[Path], spec: BenchSpec, rounds: int = 5) -> list[list[KernelTime]]:
    """Per-kernel times of each artifact in this process, slowest first.

    With several artifacts (two builds of one model, say with and without a new tuning record) the
    runs are interleaved: `rounds` rounds, each running every artifact `runs / rounds` times, in
    alternating order, so that a machine whose speed drifts (a shared host's does, by up to 2x
    between minutes) weighs on all of them alike.
    """
    models = [open_model(artifact) for artifact in artifacts]
    inputs = [random_inputs(model.manifest.inputs) for model in models]
    for model, feed in zip(models, inputs):
        for _ in range(spec.warmup):
            model.run(feed)
    rounds = max(1, min(rounds, spec.runs))
    totals: list[dict[str, list]] = [{} for _ in models]
    for round_index in range(rounds):
        runs = spec.runs // rounds + (round_index < spec.runs % rounds)
        order = range(len(models)) if round_index % 2 == 0 else reversed(range(len(models)))
        for i in order:
            for name, (calls, seconds) in models[i].kernel_seconds(inputs[i], runs).items():
                key = VM_BUILTINS if name.startswith("vm.builtin.") else name
                entry = totals[i].setdefault(key, [0, 0.0])
                entry[0] += calls
                entry[1] += seconds
    return [
        sorted((KernelTime(name, calls // spec.runs, seconds / spec.runs * 1e3) for name, (calls, seconds) in found.items()),
               key=lambda k: -k.ms)
        for found in totals
    ]


@dataclass(frozen=True)
class Spread:
    """A per-round figure: its median over the rounds, and the lowest and highest round."""

    median: float
    low: float
    high: float


@dataclass(frozen=True)
class PairedLatencies:
    """Engines timed in the same rounds: each one's median seconds per run over all its runs, and
    each one's time relative to the reference engine's, round by round (other / reference: > 1 means
    the reference is faster)."""

    reference: str
    median_s: dict[str, float]
    relative: dict[str, Spread]


def paired_latencies(engines: Mapping[str, Callable[[], object]], reference: str, rounds: int, runs: int,
                     warmup: int = 3, settle_s: float = 0.05, clock: Callable[[], float] = time.perf_counter
                     ) -> PairedLatencies:
    """Time `engines` in `rounds` rounds of `runs` runs each, and compare them round by round.

    A shared host's speed drifts (this project's CI machine by up to 2x between minutes), and
    engines do not slow down alike, so a ratio of overall medians moves with the minutes each
    engine happened to run in. Each round is short (every engine's runs back to back), its first
    engine rotates from round to round (none always runs after the same neighbour), and the ratio
    to `reference` is taken within each round: its median over the rounds, with the lowest and
    highest round, is the comparison. Runs within a round stay consecutive, so each engine runs
    with its own data in cache, as it would alone, after untimed runs for `settle_s` seconds: engines
    with thread pools of their own keep them spinning for tens of milliseconds after their last run
    (on the 2-core machine, edgec's first MobileNetV2 run after onnxruntime's took 45-52 ms, the next
    3.2 ms; the digits CNN, 12 us alone, read 40 us after two settle runs), which a deployed model,
    alone in its process, never meets.
    """
    if reference not in engines:
        raise ValueError(f"reference engine {reference!r} is not among {sorted(engines)}")
    if rounds < 1 or runs < 1:
        raise ValueError(f"need at least one round of one run, got rounds={rounds}, runs={runs}")
    names = list(engines)
    for name in names:
        for _ in range(warmup):
            engines[name]()  # caches, thread pools, lazy initialization
    samples: dict[str, list[float]] = {name: [] for name in names}
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        start = round_index % len(names)
        for name in names[start:] + names[:start]:
            settle_from = clock()
            while clock() - settle_from < settle_s:
                engines[name]()
            times = []
            for _ in range(runs):
                began = clock()
                engines[name]()
                times.append(clock() - began)
            samples[name].extend(times)
            per_round[name].append(statistics.median(times))
    relative = {}
    for name in names:
        ratios = [other / ref for other, ref in zip(per_round[name], per_round[reference])]
        relative[name] = Spread(statistics.median(ratios), min(ratios), max(ratios))
    return PairedLatencies(reference, {name: statistics.median(values) for name, values in samples.items()}, relative)
