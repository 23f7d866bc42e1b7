"""compiler/bench.py and the settings of compiler/runtime/rpc.py, without any RPC process (see test_rpc.py)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from compiler.artifact import read_manifest
from compiler.bench import (VM_BUILTINS, BenchSpec, LatencyStats, Spread, bench, kernel_times, paired_latencies,
                            random_inputs)
from compiler.errors import ArtifactError, BenchError, EdgecError, RemoteError
from compiler.specs import TensorSpec
from compiler.runtime.rpc import RemoteSpec, parse_host_port
from tests.helpers import edgec, edgec_json, one_line_error


def test_stats_are_numpy_percentiles_of_the_samples():
    samples = [5.0, 1.0, 2.0, 3.0, 4.0, 100.0, 2.5, 2.0, 1.5, 3.5]
    stats = LatencyStats.from_samples(samples, warmup=4)
    p50, p90, p99 = np.percentile(samples, [50, 90, 99])
    assert (stats.runs, stats.warmup) == (10, 4)
    assert (stats.min, stats.max) == (1.0, 100.0)
    assert stats.p50 == pytest.approx(p50) and stats.p90 == pytest.approx(p90) and stats.p99 == pytest.approx(p99)
    assert stats.p50 == pytest.approx(2.75) and stats.p90 == pytest.approx(14.5)  # linear interpolation
    assert stats.mean == pytest.approx(12.45) and stats.std == pytest.approx(np.std(samples))
    assert stats.to_json() == {"runs": 10, "warmup": 4, "min": 1.0, "mean": stats.mean, "p50": stats.p50,
                               "p90": stats.p90, "p99": stats.p99, "max": 100.0, "std": stats.std}
    one = LatencyStats.from_samples([0.5], warmup=0)
    assert one.min == one.p50 == one.p99 == one.max == 0.5 and one.std == 0


class _ScriptedEngines:
    """Engines whose run k after warm-up takes `costs[name][k // runs]` on a fake clock: one cost per round."""

    def __init__(self, costs: dict[str, list[float]], runs: int, warmup: int):
        self.costs, self.runs, self.warmup = costs, runs, warmup
        self.now, self.calls, self.order = 0.0, Counter(), []

    def engine(self, name: str):
        def run():
            k = self.calls[name] - self.warmup
            self.calls[name] += 1
            if k >= 0:
                self.order.append(name)
                self.now += self.costs[name][k // self.runs]
        return run

    def clock(self) -> float:
        return self.now


def test_paired_latencies_take_ratios_round_by_round_in_rotating_order():
    # The machine is 3x slower in round 1 for "ref" but not for "b": the ratio of overall medians
    # (7 / 10) misses that b takes half ref's time in the median round.
    costs = {"ref": [10.0, 30.0, 10.0], "b": [5.0, 9.0, 7.0], "c": [20.0, 60.0, 20.0]}
    script = _ScriptedEngines(costs, runs=2, warmup=1)
    timed = paired_latencies({name: script.engine(name) for name in costs}, "ref", rounds=3, runs=2, warmup=1,
                             settle_s=0, clock=script.clock)
    assert timed.reference == "ref"
    assert timed.median_s == {"ref": 10.0, "b": 7.0, "c": 20.0}
    assert timed.relative["b"] == Spread(median=0.5, low=0.3, high=0.7)
    assert timed.relative["c"] == Spread(2.0, 2.0, 2.0) and timed.relative["ref"] == Spread(1.0, 1.0, 1.0)
    rounds = [script.order[i:i + 6:2] for i in range(0, 18, 6)]  # each engine's runs are back to back
    assert rounds == [["ref", "b", "c"], ["b", "c", "ref"], ["c", "ref", "b"]]
    assert script.order == [name for r in rounds for name in r for _ in range(2)]


def test_paired_latencies_settle_each_engine_before_timing_its_turn():
    """An engine's first run after another engine's turn is 10x slow (the other's thread pool still
    spins): untimed settle runs leave it out, so each engine is timed as it runs alone."""
    now, last = [0.0], [None]

    def engine(name: str, cost: float):
        def run():
            now[0] += cost * (10 if last[0] not in (None, name) else 1)
            last[0] = name
        return run

    def timed(settle_s: float):
        return paired_latencies({"ref": engine("ref", 1.0), "b": engine("b", 2.0)}, "ref", rounds=4, runs=1,
                                warmup=0, settle_s=settle_s, clock=lambda: now[0])

    # unsettled, every other turn starts after the other engine (the order rotates): medians of 10x and 1x runs
    assert timed(settle_s=0).median_s == {"ref": 5.5, "b": 11.0}
    settled = timed(settle_s=3.0)  # runs until 3 s have passed: the slow first one (10 or 20 s) is enough
    assert settled.median_s == {"ref": 1.0, "b": 2.0} and settled.relative["b"] == Spread(2.0, 2.0, 2.0)


def test_paired_latencies_need_the_reference_among_the_engines():
    with pytest.raises(ValueError, match="reference engine 'x' is not among"):
        paired_latencies({"a": lambda: None}, "x", rounds=1, runs=1)
    with pytest.raises(ValueError, match="at least one round of one run"):
        paired_latencies({"a": lambda: None}, "a", rounds=0, runs=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"warmup": -1}, "--warmup must be an integer >= 0, got -1"),
     ({"runs": 0}, "--runs must be an integer >= 1, got 0"),
     ({"runs": 2.5}, "--runs must be an integer >= 1, got 2.5")],
)
def test_bench_spec_rejects_out_of_range_counts(kwargs, message):
    with pytest.raises(BenchError, match=message):
        BenchSpec(**kwargs)
    assert BenchSpec() == BenchSpec(warmup=10, runs=100)


def test_random_inputs_are_seeded_and_match_the_specs():
    specs = (TensorSpec("x", (1, 3, 4, 4), "float32"), TensorSpec("ids", (2, 5), "int64"), TensorSpec("mask", (5,), "bool"))
    first, again, other = random_inputs(specs), random_inputs(specs), random_inputs(specs, seed=1)
    for spec in specs:
        assert first[spec.name].shape == spec.shape and str(first[spec.name].dtype) == spec.dtype
        np.testing.assert_array_equal(first[spec.name], again[spec.name])
    assert not np.array_equal(first["x"], other["x"])
    assert 0 <= first["ids"].min() and first["ids"].max() < 8
    with pytest.raises(BenchError, match="dtype complex64"):
        random_inputs((TensorSpec("z", (2,), "complex64"),))


@pytest.mark.parametrize(
    ("text", "address"),
    [("127.0.0.1:9190", ("127.0.0.1", 9190)), ("board.local:9090", ("board.local", 9090)), ("[::1]:9190", ("::1", 9190))],
)
def test_parse_host_port(text, address):
    assert parse_host_port(text) == address


@pytest.mark.parametrize("text", ["9190", "host", ":9190", "host:", "host:port", "host:0", "host:70000", "host:-1"])
def test_parse_host_port_rejects_in_one_line(text):
    with pytest.raises(RemoteError) as err:
        parse_host_port(text, "--rpc-tracker")
    assert str(err.value) == f"bad --rpc-tracker '{text}'; write HOST:PORT, e.g. 127.0.0.1:9190"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({}, "no RPC server given; pass --rpc-tracker HOST:PORT --rpc-key KEY, or --rpc HOST:PORT"),
     ({"tracker": ("h", 1)}, "--rpc-tracker needs --rpc-key KEY"),
     ({"key": "k"}, "--rpc-key needs --rpc-tracker HOST:PORT"),
     ({"tracker": ("h", 1), "key": "k", "address": ("h", 2)}, "not both"),
     ({"address": ("h", 2), "timeout_s": 0}, "--timeout must be more than 0 seconds, got 0")],
)
def test_remote_spec_needs_tracker_and_key_or_an_address(kwargs, message):
    with pytest.raises(RemoteError, match=message):
        RemoteSpec(**kwargs)


def test_remote_spec_describes_itself():
    tracked = RemoteSpec(tracker=("10.0.0.2", 9190), key="rk3588")
    assert tracked.describe() == "the RPC server under key 'rk3588' at the tracker 10.0.0.2:9190"
    assert tracked.to_json() == {"tracker": "10.0.0.2:9190", "key": "rk3588", "timeout_s": 60.0}
    assert RemoteSpec(address=("::1", 9090)).to_json()["address"] == "[::1]:9090"


def test_bench_local_times_single_runs(compiled):
    stats = bench(compiled("digits", "onnx", "host"), BenchSpec(warmup=2, runs=25))
    assert (stats.runs, stats.warmup) == (25, 2)
    assert 0 < stats.min <= stats.p50 <= stats.p90 <= stats.p99 <= stats.max


def test_bench_local_peak_memory_is_the_processes_during_the_runs_only(compiled):
    artifact = compiled("digits", "onnx", "host")
    info = edgec_json("bench", artifact, "--runs", 5, "--warmup", 1)
    assert info["stats"]["peak_rss_bytes"] > read_manifest(artifact).memory["weights_bytes"]
    # 300 MB touched and freed before the runs: the high-water mark is reset, so the peak excludes it
    np.ones(300_000_000 // 8)
    lifetime_peak = _vm_hwm_bytes()
    stats = bench(artifact, BenchSpec(warmup=1, runs=5))
    assert 0 < stats.peak_rss_bytes < lifetime_peak - 200e6
    assert "peak resident memory: " in edgec("bench", artifact, "--runs", 2, "--warmup", 0)


def _vm_hwm_bytes() -> int:
    """This process's peak resident memory so far (VmHWM), as Linux reports it."""
    with open("/proc/self/status") as status:
        (line,) = [line for line in status if line.startswith("VmHWM:")]
    return int(line.split()[1]) * 1024


def test_bench_under_qemu_times_single_runs_of_the_aarch64_runner(compiled):
    stats = bench(compiled("digits", "onnx", "cortex-a72"), BenchSpec(warmup=1, runs=12), "qemu")
    assert (stats.runs, stats.warmup) == (12, 1)
    assert 0 < stats.min <= stats.p50 <= stats.p90 <= stats.p99 <= stats.max
    assert stats.peak_rss_bytes > 1e6  # the runner's, reported in its bench line (qemu's memory included)


def test_bench_device_choices(compiled):
    artifact = compiled("digits", "onnx", "host")
    with pytest.raises(ArtifactError, match="use --device local"):
        bench(artifact, BenchSpec(), "qemu")
    with pytest.raises(RemoteError, match="needs --rpc-tracker"):
        bench(artifact, BenchSpec(), "rpc")
    with pytest.raises(EdgecError, match="unknown device 'gpu'; choose from: local, qemu, rpc"):
        bench(artifact, BenchSpec(), "gpu")


def test_kernel_times_count_every_kernel_call_once_per_run(compiled):
    artifact = compiled("digits", "onnx", "host")
    (times,) = kernel_times([artifact], BenchSpec(warmup=1, runs=7), rounds=3)
    kernels = [k for k in times if k.name != VM_BUILTINS]
    assert {k.name: k.calls for k in kernels} == _kernel_calls_in_main(artifact)
    assert all(k.ms > 0 and k.calls >= 1 for k in times)
    assert [k.ms for k in times] == sorted((k.ms for k in times), reverse=True)
    assert any(k.name.startswith("fused_conv2d") for k in kernels)


def _kernel_calls_in_main(artifact) -> dict[str, int]:
    """Calls of compiled kernels in the VM program's `main`, read from its bytecode listing."""
    import tvm
    from tvm import relax

    library = tvm.runtime.load_module(str(artifact / read_manifest(artifact).library))
    listing = relax.VMExecutable(library).as_text()
    main = listing[listing.index("@main:"):].split("\n\n")[0]
    calls = Counter(line.split()[1] for line in main.splitlines() if line.strip().startswith("call "))
    return {name: n for name, n in calls.items() if not name.startswith("vm.builtin.")}


def test_kernel_times_of_two_builds_on_the_cli(compiled):
    nchw, nhwc = compiled("digits", "onnx", "host"), compiled("digits", "onnx", "x86-64")
    info = edgec_json("bench", nchw, "--runs", 6, "--warmup", 1, "--kernels", 3, "--against", nhwc)
    rows = info["kernels"]
    assert len(rows) == 3 and rows[0]["ms"] >= rows[1]["ms"] >= rows[2]["ms"] > 0
    assert all("against_ms" in row for row in rows)
    (own,) = kernel_times([nhwc], BenchSpec(warmup=1, runs=2))
    for row in rows:  # the other build's time where it has a kernel of that name, else none
        assert (row["against_ms"] is None) == (row["name"] not in {k.name for k in own})
    text = edgec("bench", nchw, "--runs", 4, "--warmup", 0, "--kernels", 2)
    assert "per kernel, ms per run" in text and len(text.strip().splitlines()) == 4 + 2 + 2  # with peak memory


def test_kernel_options_in_one_line(compiled):
    artifact = compiled("digits", "onnx", "host")
    assert "add --kernels N" in one_line_error("bench", artifact, "--against", artifact)
    assert "use --device local, not qemu" in one_line_error("bench", artifact, "--kernels", 3, "--device", "qemu")
    assert "--kernels must be an integer >= 0" in one_line_error("bench", artifact, "--kernels", -1)
