"""edgec's Python-free RPC server (`edgec-runner rpc-server`, compiler/runtime/rpc_server.cc), built
for aarch64 and run under qemu-aarch64 against TVM's real tracker on 127.0.0.1: runs, benchmarks
and tuning over RPC, as on a firmware image with no Python."""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import numpy as np
import pytest

from compiler.bench import random_inputs
from compiler.runtime import open_model
from compiler.runtime.rpc import RemoteSpec
from targets import resolve_target
from tests.helpers import edgec_json
from tests.rpc_processes import HOST, free_servers, start_device_server, start_tracker

pytestmark = pytest.mark.skipif(resolve_target("cortex-a72").execution_here().mode != "qemu",
                                reason="needs qemu-user and the aarch64 cross toolchain")


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    logs = tmp_path_factory.mktemp("device-rpc")
    started = []
    try:
        yield logs, start_tracker(logs, started), started
    finally:
        for process in started:
            process.kill()


def test_the_aarch64_server_runs_and_benchmarks_like_a_local_qemu_run(tracker, compiled):
    logs, port, started = tracker
    server = start_device_server(logs, port, "a72", started)
    artifact = compiled("digits", "onnx", "cortex-a72")
    remote = RemoteSpec(tracker=(HOST, port), key="a72", timeout_s=60)
    # a peer that connects and says nothing (a scanner, a half-open socket) is dropped after the
    # handshake timeout, not served forever: the real client behind it still gets the device
    listening = re.search(r"listening on [\d.]+:(\d+)", server.log.read_text())
    assert listening, server.log.read_text()
    server_port = int(listening.group(1))
    silent = socket.create_connection((HOST, server_port))
    with silent, open_model(artifact, "rpc", remote) as model:
        inputs = random_inputs(model.manifest.inputs, seed=4)
        over_rpc = model.run(inputs)
    with open_model(artifact, "qemu") as model:
        emulated = model.run(inputs)
    np.testing.assert_array_equal(over_rpc["output"], emulated["output"])  # the same library, the same core
    report = edgec_json("bench", artifact, "--rpc-tracker", f"{HOST}:{port}", "--rpc-key", "a72", "--runs", "3",
                        "--warmup", "1")
    assert report["device"]["kind"] == "rpc" and report["stats"]["runs"] == 3
    # each session ended in its own child; the server put itself back on the tracker for the next client
    deadline = time.monotonic() + 30
    while free_servers(port, "a72") != 1:
        server.check_alive()
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.2)
    assert "listening on" in server.log.read_text()


def test_tuning_over_rpc_measures_on_the_emulated_device_and_survives_its_death(tracker, example, tmp_path):
    """A few trials of `edgec tune --target cortex-a72 --rpc-*` measured by the aarch64 server (timings
    meaningless under emulation: the flow is what is tested); the server killed while a batch runs:
    its candidates fail, tuning goes on with the replacement, records committed before stay."""
    from compiler.frontends import load_model
    from compiler.tuning import TuneOptions, tune_model

    logs, port, started = tracker
    server = start_device_server(logs, port, "tune-a72", started)
    root = tmp_path / "logs"
    records = root / "cortex-a72" / "database_tuning_record.json"
    remote = RemoteSpec(tracker=(HOST, port), key="tune-a72", timeout_s=30)
    options = TuneOptions(resolve_target("cortex-a72"), tuning_log=root, remote=remote, trials=12, trials_per_iter=2,
                          population=16, seed=0, build_workers=2, log_file=tmp_path / "tune.log")

    def kill_then_replace():
        deadline = time.monotonic() + 240
        while not (records.is_file() and len(records.read_text().splitlines()) >= 2) and time.monotonic() < deadline:
            time.sleep(0.2)
        server.kill()
        start_device_server(logs, port, "tune-a72", started)

    killer = threading.Thread(target=kill_then_replace)
    killer.start()
    report = tune_model(load_model(example("digits").onnx), options)
    killer.join()
    measured = [json.loads(line)[1][1] for line in records.read_text().splitlines()]
    finite = [run for run in measured if run and run[0] < 1e9]
    assert len(measured) == report.trials >= 8  # every candidate recorded, failed ones with a sentinel
    assert len(finite) >= 2, measured  # those before the kill (and after the replacement) were measured
