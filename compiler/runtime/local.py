"""Load a host-runnable artifact into TVM's Relax VM in this process and run it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from compiler.runtime.common import check_inputs, open_verified
from compiler.runtime.threads import configure_threads
from compiler.specs import BenchSpec, LatencyStats


class LocalModel:
    """A verified artifact loaded on the host CPU."""

    def __init__(self, artifact: Path):
        import tvm
        from tvm import relax

        configure_threads()
        self.artifact = Path(artifact)
        self.manifest, _ = open_verified(self.artifact, "native", "--device qemu for emulated aarch64 artifacts")
        self._device = tvm.cpu()
        library = tvm.runtime.load_module(str(self.artifact / self.manifest.library))
        self._vm = relax.VirtualMachine(library, self._device)
        self._main = self._vm["main"]
        # One tensor per input, refilled on every run: run()'s own cost matters for small models (the
        # digits CNN computes in 25 us; a new tensor per input, Tensor.copyfrom/numpy() and the
        # function lookup had added about 70 us).
        self._input_tensors = [tvm.runtime.empty(spec.shape, spec.dtype, self._device) for spec in self.manifest.inputs]
        self._input_views = [np.from_dlpack(tensor) for tensor in self._input_tensors]  # numpy's view, to fill them

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; returns outputs keyed by the manifest's output names."""
        result = self._main(*self._tensors(inputs))
        values = [result] if len(self.manifest.outputs) == 1 and not _is_array(result) else list(result)
        # Copied out (through DLPack, cheaper than Tensor.numpy): an output can be an input tensor
        # itself (an Identity model), which the next run refills.
        return {spec.name: np.from_dlpack(value).copy() for spec, value in zip(self.manifest.outputs, values)}

    def bench(self, inputs: Mapping[str, np.ndarray], spec: BenchSpec) -> LatencyStats:
        """Latency of single runs after `spec.warmup` untimed ones (TVM's time_evaluator, number=1),
        with this whole process's peak resident memory over those runs (Python and TVM included)."""
        measured = _reset_peak_rss()
        for _ in range(spec.warmup):
            self.run(inputs)
        seconds = self.latencies(inputs, repeat=spec.runs, number=1)
        peak = _peak_rss_bytes() if measured else None
        return LatencyStats.from_samples([s * 1e3 for s in seconds], spec.warmup, peak_rss_bytes=peak)

    def close(self) -> None:
        """Nothing to release: the library stays loaded while the object lives."""

    def __enter__(self) -> LocalModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def latencies(self, inputs: Mapping[str, np.ndarray], repeat: int = 10, number: int = 1) -> list[float]:
        """Seconds per run, one sample per repeat (each the mean of `number` back-to-back runs)."""
        timer = self._vm.time_evaluator("main", self._device, number=number, repeat=repeat)
        return list(timer(*self._tensors(inputs)).results)

    def kernel_seconds(self, inputs: Mapping[str, np.ndarray], runs: int) -> dict[str, tuple[int, float]]:
        """Calls and seconds of every function the VM calls (kernels and its builtins), summed over
        `runs` runs. Each call is timed by the VM's instrument hook, a Python callback: it adds a few
        microseconds per call, which the kernels' own times hardly include but the run's total does."""
        import time

        totals: dict[str, list] = {}
        started: list[float] = []

        def instrument(func, name, before_run, ret_value, *args) -> int:
            if before_run:
                started.append(time.perf_counter())
            else:
                entry = totals.setdefault(name, [0, 0.0])
                entry[0] += 1
                entry[1] += time.perf_counter() - started.pop()
            return 0  # run the call as usual

        tensors = self._tensors(inputs)
        self._vm.set_instrument(instrument)
        try:
            for _ in range(runs):
                self._vm["main"](*tensors)
        finally:
            self._vm.set_instrument(None)
        return {name: (calls, seconds) for name, (calls, seconds) in totals.items()}

    def _tensors(self, inputs: Mapping[str, np.ndarray]) -> list:
        """The input tensors, filled with `inputs` (checked against the manifest); the next call
        refills the same tensors."""
        for view, array in zip(self._input_views, check_inputs(self.manifest.inputs, inputs)):
            np.copyto(view, array)
        return self._input_tensors


def _reset_peak_rss() -> bool:
    """Reset this process's resident-memory high-water mark (VmHWM) to its current RSS (Linux >= 4.0);
    False where /proc cannot do it, and then no peak is reported (it would include earlier work)."""
    try:
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int | None:
    """VmHWM of /proc/self/status in bytes: the process's peak resident memory since the last reset."""
    try:
        with open("/proc/self/status") as stream:
            for line in stream:
                if line.startswith("VmHWM:"):
                    value, unit = line.split()[1:3]
                    return int(value) * 1024 if unit == "kB" else None
    except OSError:
        pass
    return None


def _is_array(value: object) -> bool:
    import tvm

    return not isinstance(value, tvm.runtime.Tensor)
