"""Benchmarks and runs over TVM's real RPC: a tracker and servers started as processes on 127.0.0.1.

Every process is started in its own process group and killed with it (its PopenWorker and session
children included) when the module ends, whatever the tests did. Failure cases assert the one-line
message and a bound on the wall time: none may hang.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from compiler.bench import BenchSpec, LatencyStats, bench, random_inputs
from compiler.errors import RemoteError
from compiler.runtime import open_model
from compiler.runtime.rpc import RemoteModel, RemoteSpec, connect
from tests.helpers import edgec, edgec_json, one_line_error
from tests.rpc_processes import (HOST, Process, accepts, free_port, free_servers, start_server, start_tracker,
                                 tracker_summary, wait_for)

@dataclass
class Cluster:
    tracker: int  # port
    servers: dict[str, Process]  # key at the tracker -> server (one each)
    standalone: int  # port of a server without tracker

    def spec(self, key: str, timeout_s: float = 30) -> RemoteSpec:
        return RemoteSpec(tracker=(HOST, self.tracker), key=key, timeout_s=timeout_s)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """A tracker with one server under each of three keys, and a standalone server."""
    try:
        import tornado  # noqa: F401
    except ImportError:
        pytest.fail("TVM's RPC tracker needs tornado: pip install tornado (it belongs in pyproject's test extras)")
    logs = tmp_path_factory.mktemp("rpc-logs")
    started: list[Process] = []
    try:
        port = start_tracker(logs, started)
        servers = {key: start_server(logs, port, key, started, wait=False) for key in ("edge", "doomed-bench", "doomed-run")}
        standalone = free_port()
        alone = Process(logs / "standalone.log", "tvm.exec.rpc_server", "--host", HOST, "--port", standalone,
                        "--port-end", standalone + 1)
        started.append(alone)
        for key, server in servers.items():
            wait_for(lambda: free_servers(port, key) == 1, f"server '{key}'", server)  # noqa: B023
        wait_for(lambda: accepts(standalone), "the standalone server", alone)
        yield Cluster(port, servers, standalone)
    finally:
        for process in started:
            process.kill()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    from compiler.build import CompileOptions, compile_model
    from compiler.frontends import import_onnx
    from examples.onnx_cases import opset_model
    from targets import resolve_target

    out = tmp_path_factory.mktemp("rpc") / "opset13-host"
    compile_model(import_onnx(opset_model(13)), CompileOptions(resolve_target("host")), out)
    return out


def _run_once(artifact: Path, inputs: dict, remote: RemoteSpec) -> dict[str, np.ndarray]:
    with open_model(artifact, "rpc", remote) as model:
        return model.run(inputs)


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def test_tracker_down_says_how_to_start_it():
    import tvm.rpc  # noqa: F401  (imported before the clock starts: importing TVM takes seconds)

    port = free_port()
    start = time.monotonic()
    with pytest.raises(RemoteError) as err:
        connect(RemoteSpec(tracker=(HOST, port), key="edge"))
    assert one_line(err) == (
        f"cannot reach the RPC tracker at 127.0.0.1:{port} (connection refused); "
        f"start it with: python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port {port}"
    )
    assert time.monotonic() - start < 2  # TVM's own connect_tracker retries for 60 s


def test_key_without_server_waits_the_timeout_then_says_none_is_registered(cluster):
    start = time.monotonic()
    with pytest.raises(RemoteError) as err:
        connect(cluster.spec("nobody", timeout_s=3))
    elapsed = time.monotonic() - start
    message = one_line(err)
    assert f"no RPC server is registered under key 'nobody' at the tracker 127.0.0.1:{cluster.tracker}" in message
    assert "waited 3 s; keys with servers: doomed-bench, doomed-run, edge" in message
    assert f"python -m tvm.exec.rpc_server --tracker 127.0.0.1:{cluster.tracker} --key nobody" in message
    assert 3 <= elapsed < 6


def test_key_whose_only_server_is_busy_says_busy(cluster):
    held = connect(cluster.spec("edge"))  # the only server under "edge" now serves this session
    try:
        assert tracker_summary(cluster.tracker)["queue_info"]["edge"] == {"free": 0, "pending": 0}
        start = time.monotonic()
        with pytest.raises(RemoteError) as err:
            connect(cluster.spec("edge", timeout_s=3))
        assert one_line(err) == (
            f"all 1 device(s) under key 'edge' at the tracker 127.0.0.1:{cluster.tracker} are busy "
            "(waited 3 s); retry when they are free or raise --timeout"
        )
        assert 3 <= time.monotonic() - start < 6
    finally:
        del held
        gc.collect()
    # The request given up on was withdrawn: the freed server goes back to the queue, unclaimed.
    wait_for(lambda: free_servers(cluster.tracker, "edge") == 1, "the released server", cluster.servers["edge"], 15)


def test_server_killed_mid_bench_fails_in_one_line(cluster, artifact):
    result: dict[str, BaseException | LatencyStats] = {}

    def long_bench() -> None:
        try:
            result["stats"] = bench(artifact, BenchSpec(warmup=0, runs=10**9), "rpc", cluster.spec("doomed-bench"))
        except RemoteError as err:
            result["error"] = err

    thread = threading.Thread(target=long_bench, daemon=True)
    thread.start()
    server = cluster.servers["doomed-bench"]
    wait_for(lambda: "load_module" in server.log.read_text(), "the bench session to load the library", server, 30)
    time.sleep(1)  # creating the VM and sending inputs take milliseconds: timing has started
    killed = time.monotonic()
    server.kill()
    thread.join(15)
    assert not thread.is_alive(), "bench hangs after its server died"
    assert time.monotonic() - killed < 15
    message = str(result["error"])
    assert "\n" not in message
    assert message.startswith(f"lost the RPC server under key 'doomed-bench' at the tracker 127.0.0.1:{cluster.tracker} while benchmarking")
    assert message.endswith("the server crashed or was stopped: restart it and retry")


def test_server_killed_between_load_and_run_fails_in_one_line(cluster, artifact):
    with RemoteModel(artifact, cluster.spec("doomed-run")) as model:
        inputs = random_inputs(model.manifest.inputs)
        cluster.servers["doomed-run"].kill()
        start = time.monotonic()
        with pytest.raises(RemoteError) as err:
            model.run(inputs)
    assert one_line(err).startswith("lost the RPC server under key 'doomed-run'")
    assert "while sending inputs" in str(err.value) and "restart it and retry" in str(err.value)
    assert time.monotonic() - start < 5


def test_bench_over_tracker_and_outputs_match_local(cluster, artifact):
    from compiler.runtime import LocalModel

    stats = bench(artifact, BenchSpec(warmup=3, runs=50), "rpc", cluster.spec("edge"))
    assert set(stats.to_json()) == {"runs", "warmup", "min", "mean", "p50", "p90", "p99", "max", "std"}
    assert (stats.runs, stats.warmup) == (50, 3)
    assert 0 < stats.min <= stats.p50 <= stats.p90 <= stats.p99 <= stats.max
    assert stats.min <= stats.mean <= stats.max and stats.std >= 0

    local = LocalModel(artifact)
    inputs = random_inputs(local.manifest.inputs, seed=7)
    remote = _run_once(artifact, inputs, cluster.spec("edge"))
    expected = local.run(inputs)
    assert remote.keys() == expected.keys() == {"output"}
    assert remote["output"].shape == (1, 5)
    assert np.abs(remote["output"] - expected["output"]).max() < 1e-6


def test_library_the_device_cannot_load_names_the_target(cluster, compiled):
    arm = compiled("digits", "onnx", "cortex-a72")  # aarch64 code, offered to this x86-64 server
    with pytest.raises(RemoteError) as err:
        _run_once(arm, {"input": np.zeros((1, 1, 8, 8), "float32")}, cluster.spec("edge"))
    message = one_line(err)
    assert message.startswith("the RPC server under key 'edge'") and "failed while loading model.so" in message
    assert message.endswith("is the device a cortex-a72 (aarch64-linux-gnu)?")
    # The failed session was closed: the server is free again.
    wait_for(lambda: free_servers(cluster.tracker, "edge") == 1, "the released server", cluster.servers["edge"], 15)


def test_direct_server_without_tracker(cluster, artifact):
    from compiler.runtime import LocalModel

    spec = RemoteSpec(address=(HOST, cluster.standalone), timeout_s=30)
    local = LocalModel(artifact)
    inputs = random_inputs(local.manifest.inputs)
    assert np.abs(_run_once(artifact, inputs, spec)["output"] - local.run(inputs)["output"]).max() < 1e-6
    stats = bench(artifact, BenchSpec(warmup=1, runs=10), "rpc", spec)
    assert stats.runs == 10 and stats.p50 <= stats.max


def test_direct_server_busy_with_another_client_is_a_bounded_wait(cluster):
    held = connect(RemoteSpec(address=(HOST, cluster.standalone)))
    try:
        start = time.monotonic()
        with pytest.raises(RemoteError) as err:
            connect(RemoteSpec(address=(HOST, cluster.standalone), timeout_s=2))
        assert one_line(err).startswith(
            f"the RPC server at 127.0.0.1:{cluster.standalone} accepted the connection but started no session within 2 s"
        )
        assert time.monotonic() - start < 4
    finally:
        del held
        gc.collect()
    # The handshake given up on completes now and its session is dropped: the server serves the next client.
    del err
    session = connect(RemoteSpec(address=(HOST, cluster.standalone), timeout_s=15))
    del session
    gc.collect()


def test_direct_server_down_says_how_to_start_it():
    port = free_port()
    with pytest.raises(RemoteError) as err:
        connect(RemoteSpec(address=(HOST, port)))
    assert one_line(err) == (
        f"cannot reach the RPC server at 127.0.0.1:{port} (connection refused); "
        f"start it with: python -m tvm.exec.rpc_server --host 0.0.0.0 --port {port}"
    )


def test_cli_bench_over_rpc_as_json(cluster, artifact):
    report = edgec_json("bench", artifact, "--device", "rpc", "--rpc-tracker", f"{HOST}:{cluster.tracker}", "--rpc-key", "edge",
                        "--warmup", 2, "--runs", 20)
    assert report["device"] == {"kind": "rpc", "tracker": f"127.0.0.1:{cluster.tracker}", "key": "edge", "timeout_s": 60.0}
    assert report["artifact"]["target"] == "host" and report["artifact"]["library"] == "model.so"
    assert report["unit"] == "ms"
    stats = report["stats"]
    assert (stats["runs"], stats["warmup"]) == (20, 2)
    assert stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
    direct = edgec_json("bench", artifact, "--device", "rpc", "--rpc", f"{HOST}:{cluster.standalone}", "--runs", 5)
    assert direct["device"]["address"] == f"127.0.0.1:{cluster.standalone}" and direct["stats"]["runs"] == 5


def test_cli_bench_local_prints_a_table(artifact):
    lines = edgec("bench", artifact, "--runs", 10, "--warmup", 1).splitlines()
    assert lines[0].endswith("(host) on local: 10 runs after 1 warm-up runs, ms")
    assert lines[1].split() == ["min", "mean", "p50", "p90", "p99", "max", "std"]
    values = [float(v) for v in lines[2].split()]
    assert len(values) == 7 and values[0] <= values[2] <= values[3] <= values[4] <= values[5]


def test_cli_bench_one_line_errors(artifact):
    assert "bad --rpc-tracker 'nohost'; write HOST:PORT" in one_line_error(
        "bench", artifact, "--device", "rpc", "--rpc-tracker", "nohost", "--rpc-key", "edge")
    assert "bad --rpc '127.0.0.1:99999'" in one_line_error("bench", artifact, "--device", "rpc", "--rpc", "127.0.0.1:99999")
    port = free_port()
    assert f"cannot reach the RPC tracker at 127.0.0.1:{port} (connection refused)" in one_line_error(
        "bench", artifact, "--device", "rpc", "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", "edge")
    assert "--rpc-tracker needs --rpc-key KEY" in one_line_error(
        "bench", artifact, "--device", "rpc", "--rpc-tracker", f"127.0.0.1:{port}")
    assert "not both" in one_line_error(
        "bench", artifact, "--device", "rpc", "--rpc-tracker", "h:1", "--rpc-key", "k", "--rpc", "h:2")
    assert "--rpc applies to --device rpc, not --device local" in one_line_error("bench", artifact, "--device", "local", "--rpc", "h:2")
    assert "--rpc-tracker, --rpc-key apply to --device rpc, not --device qemu" in one_line_error(
        "run", artifact, "--device", "qemu", "--rpc-tracker", "h:1", "--rpc-key", "k")
    assert "--rpc applies to --device rpc" in one_line_error("evaluate", artifact, "--eval-data", "x.npz", "-d", "local", "--rpc", "h:2")
    assert "use --device local" in one_line_error("bench", artifact, "--device", "qemu")  # a host artifact
    assert "--runs must be an integer >= 1, got 0" in one_line_error("bench", artifact, "--runs", 0)


def test_cli_run_over_rpc_matches_a_local_run(artifact, cluster, tmp_path):
    from compiler.runtime import LocalModel

    model = LocalModel(artifact)
    inputs = random_inputs(model.manifest.inputs, seed=3)
    for name, array in inputs.items():
        np.save(tmp_path / f"{name}.npy", array)
    tracker = f"{HOST}:{cluster.tracker}"
    args = [f"--input={name}={tmp_path / name}.npy" for name in inputs]
    edgec("run", artifact, "--device", "rpc", "--rpc-tracker", tracker, "--rpc-key", "edge", *args, "-o", tmp_path / "out.npz")
    with np.load(tmp_path / "out.npz") as remote:
        for name, expected in model.run(inputs).items():
            assert np.abs(remote[name] - expected).max() < 1e-6


def test_rpc_flags_imply_the_rpc_device(cluster, artifact, tmp_path):
    """No --device: an --rpc flag means the RPC device, for bench and run alike."""
    report = edgec_json("bench", artifact, "--rpc", f"{HOST}:{cluster.standalone}", "--runs", 3, "--warmup", 0)
    assert report["device"]["kind"] == "rpc" and report["device"]["address"] == f"127.0.0.1:{cluster.standalone}"
    inputs = random_inputs(open_model(artifact).manifest.inputs, seed=5)
    np.savez(tmp_path / "inputs.npz", **inputs)
    edgec("run", artifact, "--inputs", tmp_path / "inputs.npz", "--rpc-tracker", f"{HOST}:{cluster.tracker}",
          "--rpc-key", "edge", "-o", tmp_path / "out.npz")
    with np.load(tmp_path / "out.npz") as remote:
        for name, expected in open_model(artifact).run(inputs).items():
            assert np.abs(remote[name] - expected).max() < 1e-6


def test_cli_evaluate_over_rpc_matches_a_local_evaluation(cluster, compiled, example, tmp_path):
    digits = compiled("digits", "onnx", "host")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "eval.npz", input=rng.standard_normal((12, 1, 1, 8, 8)).astype("float32"),
             label=rng.integers(0, 10, 12))
    args = ["evaluate", digits, "--eval-data", tmp_path / "eval.npz", "--reference", example("digits").onnx]
    local = edgec_json(*args)
    remote = edgec_json(*args, "--device", "rpc", "--rpc", f"{HOST}:{cluster.standalone}")
    assert remote["samples"] == local["samples"] == 12
    assert remote["top1_agreement"] == local["top1_agreement"] == 1.0
    assert remote["top1_accuracy"] == local["top1_accuracy"]
    assert remote["sqnr_db"] is None or remote["sqnr_db"] > 80
    # the session was closed: the standalone server serves the next client at once
    with open_model(digits, "rpc", RemoteSpec(address=(HOST, cluster.standalone), timeout_s=5)) as model:
        assert model.manifest.inputs[0].name == "input"
