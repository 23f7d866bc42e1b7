"""TVM's real RPC tracker and servers as processes on 127.0.0.1, for the RPC and remote-tuning tests.

Every process runs in its own process group and is killed with it (its PopenWorker and session
children included).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HOST = "127.0.0.1"
STARTUP_S = 60  # a tracker or server imports TVM (seconds each on two cores) before it listens


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Process:
    """A `python -m MODULE ...` process group, logged to a file."""

    def __init__(self, log: Path, module: str | None, *args: object):
        """`python -m module args...`; with `module` None, `args` is the whole command."""
        self.log = log
        command = [*([sys.executable, "-m", module] if module else []), *map(str, args)]
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL the whole group: the process, its PopenWorker and any session it forked."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def check_alive(self) -> None:
        assert self.popen.poll() is None, f"{self.popen.args} exited:\n{self.log.read_text()}"


def wait_for(predicate: Callable[[], bool], what: str, process: Process, timeout_s: float = STARTUP_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        process.check_alive()
        assert time.monotonic() < deadline, f"{what} not ready after {timeout_s} s:\n{process.log.read_text()}"
        time.sleep(0.1)


def accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def tracker_summary(port: int) -> dict:
    """TVM's own tracker client (not edgec's) reads the tracker's state."""
    import tvm.rpc

    tracker = tvm.rpc.connect_tracker(HOST, port)
    try:
        return tracker.summary()
    finally:
        tracker.close()


def free_servers(port: int, key: str) -> int:
    return tracker_summary(port)["queue_info"].get(key, {}).get("free", 0)


def start_tracker(logs: Path, started: list[Process]) -> int:
    """Start a tracker (appended to `started`, for the caller to kill) and return its port once it listens."""
    port = free_port()
    tracker = Process(logs / "tracker.log", "tvm.exec.rpc_tracker", "--host", HOST, "--port", port, "--port-end", port + 1)
    started.append(tracker)
    wait_for(lambda: accepts(port), "the tracker", tracker)
    return port


def start_server(logs: Path, tracker_port: int, key: str, started: list[Process], wait: bool = True) -> Process:
    """Start an RPC server registered under `key`; with `wait`, return once the tracker lists it as free."""
    port = free_port()
    server = Process(logs / f"server-{key}.log", "tvm.exec.rpc_server", "--tracker", f"{HOST}:{tracker_port}",
                     "--key", key, "--host", HOST, "--port", port, "--port-end", port + 1)
    started.append(server)
    if wait:
        wait_for(lambda: free_servers(tracker_port, key) == 1, f"server '{key}'", server)
    return server


def start_device_server(logs: Path, tracker_port: int, key: str, started: list[Process], arch: str = "aarch64") -> Process:
    """edgec's own server (`edgec-runner rpc-server`, no Python), cross-built for `arch` and run as the
    device would run it (under qemu for aarch64); returns once the tracker lists it as free."""
    from compiler.runtime.toolchain import build_runner, runner_command

    port = free_port()
    command = [*runner_command(arch, build_runner(arch)), "rpc-server", "--tracker", f"{HOST}:{tracker_port}",
               "--key", key, "--host", HOST, "--port", port, "--port-end", port + 1]
    server = Process(logs / f"device-server-{key}.log", None, *command)
    started.append(server)
    wait_for(lambda: free_servers(tracker_port, key) == 1, f"device server '{key}'", server)
    return server
