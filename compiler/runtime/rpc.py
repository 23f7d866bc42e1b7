"""Remote devices over TVM's RPC: reach a server through a tracker (by device key) or directly, with
every wait bounded, and run an artifact's library there.

TVM's own client waits without bound in three places, each of which would hang `edgec bench`:
`connect_tracker` retries a refused connection for 60 s, `TrackerSession.request` blocks until a
device under the key is free (forever when none is registered), and `rpc.connect` to a server that
is serving another client blocks until that session ends. Here each is bounded by
`RemoteSpec.timeout_s`, and each failure is one `RemoteError` line that says what to do.
"""

from __future__ import annotations

import gc
import socket
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compiler.artifact import read_manifest, verify_files
from compiler.errors import RemoteError
from compiler.runtime.common import check_inputs
from compiler.specs import BenchSpec, LatencyStats
from targets import Preset

# What the tvm.error.InternalError says when the server is gone: the reply to a call was a shutdown
# ("Check failed: (code == RPCCode::kReturn) is false: code=kShutdown", or "code=1"), or the socket
# channel failed ("Socket SockChannel::Send Error:Broken pipe").
_DISCONNECTED = ("RPCCode::kReturn", "kShutdown", "SockChannel::", "Broken pipe", "Connection reset")


@dataclass(frozen=True)
class RemoteSpec:
    """Which RPC server to use: a device key at a tracker, or one server's address."""

    tracker: tuple[str, int] | None = None
    key: str | None = None
    address: tuple[str, int] | None = None
    timeout_s: float = 60.0  # the longest wait for the tracker, a free device, and the server's session
    session_timeout_s: float = 0.0  # the server ends a session older than this; 0: no limit

    def __post_init__(self) -> None:
        if self.address is not None and (self.tracker is not None or self.key is not None):
            raise RemoteError("give either --rpc-tracker HOST:PORT with --rpc-key KEY, or --rpc HOST:PORT, not both")
        if self.address is None and self.tracker is None:
            hint = "--rpc-key needs --rpc-tracker HOST:PORT" if self.key else "no RPC server given"
            raise RemoteError(f"{hint}; pass --rpc-tracker HOST:PORT --rpc-key KEY, or --rpc HOST:PORT")
        if self.tracker is not None and not self.key:
            raise RemoteError("--rpc-tracker needs --rpc-key KEY, the key the device's rpc_server registered with")
        if not self.timeout_s > 0:
            raise RemoteError(f"--timeout must be more than 0 seconds, got {self.timeout_s!r}")
        if self.session_timeout_s < 0:
            raise RemoteError(f"session timeout must be >= 0 seconds (0: no limit), got {self.session_timeout_s!r}")

    def describe(self) -> str:
        if self.address is not None:
            return f"the RPC server at {_show(self.address)}"
        return f"the RPC server under key '{self.key}' at the tracker {_show(self.tracker)}"

    def to_json(self) -> dict[str, Any]:
        if self.address is not None:
            return {"address": _show(self.address), "timeout_s": self.timeout_s}
        return {"tracker": _show(self.tracker), "key": self.key, "timeout_s": self.timeout_s}


def parse_host_port(text: str, what: str = "address") -> tuple[str, int]:
    """`HOST:PORT` (or `[IPv6]:PORT`) as a (host, port) pair."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RemoteError(f"bad {what} '{text}'; write HOST:PORT, e.g. 127.0.0.1:9190")
    return host, int(port)


def connect(spec: RemoteSpec):
    """An open `tvm.rpc.RPCSession` on the server `spec` names, or one line saying why not."""
    if spec.address is not None:
        return _open_session(spec.address, "", spec, f"the RPC server at {_show(spec.address)}")
    tracker = _Tracker(spec.tracker, spec.timeout_s)
    try:
        found = tracker.request_within(spec.key, spec.timeout_s)
    finally:
        tracker.close()
    if found is None:
        raise RemoteError(_no_free_device(spec))
    host, port, match_key = found
    where = f"the RPC server at {host}:{port} (key '{spec.key}' at tracker {_show(spec.tracker)})"
    return _open_session((host, port), match_key, spec, where)


class RemoteModel:
    """A verified artifact uploaded to an RPC server and loaded into a Relax VM there.

    Inputs go through the VM's stateful API (`set_input` / `invoke_stateful` / `get_outputs`): a
    plain call of a function that returns a tuple gives back an opaque RPCObjectRef over RPC.
    """

    def __init__(self, artifact: Path, remote: RemoteSpec):
        from tvm import relax

        self.artifact = Path(artifact)
        self.manifest = read_manifest(self.artifact)
        self.preset = Preset.from_json(self.manifest.target)
        verify_files(self.artifact, self.manifest)
        self.where = remote.describe()
        self._session = connect(remote)
        library = self.artifact / self.manifest.library
        try:
            with self._step(f"uploading {library.name}"):
                self._session.upload(str(library), self.manifest.library)
            with self._step(f"loading {library.name}", hint=f"is the device a {self.preset.name} ({self.preset.triple})?"):
                self.device = self._session.device(self.preset.device)
                self._vm = relax.VirtualMachine(self._session.load_module(self.manifest.library), self.device)
        except BaseException:
            self.close()
            raise

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on the device; outputs come back keyed by the manifest's output names."""
        self._set_inputs(inputs)
        with self._step("running main"):
            self._vm.invoke_stateful("main")
            values = _flatten(self._vm.get_outputs("main"))
            return {spec.name: value.numpy() for spec, value in zip(self.manifest.outputs, values)}

    def latencies(self, inputs: Mapping[str, np.ndarray], repeat: int, warmup: int = 0) -> list[float]:
        """Seconds per run, one sample per run, timed on the device after `warmup` untimed runs."""
        self._set_inputs(inputs)
        with self._step("benchmarking"):
            for _ in range(warmup):
                self._vm.invoke_stateful("main")
            timer = self._vm.time_evaluator("invoke_stateful", self.device, number=1, repeat=repeat, min_repeat_ms=0)
            return list(timer("main").results)

    def bench(self, inputs: Mapping[str, np.ndarray], spec: BenchSpec) -> LatencyStats:
        """Latency of single runs, timed on the device itself."""
        seconds = self.latencies(inputs, repeat=spec.runs, warmup=spec.warmup)
        return LatencyStats.from_samples([s * 1e3 for s in seconds], spec.warmup)

    def _set_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        import tvm

        with self._step("sending inputs"):
            tensors = [tvm.runtime.tensor(a, self.device) for a in check_inputs(self.manifest.inputs, inputs)]
            self._vm.set_input("main", *tensors)

    def close(self) -> None:
        """End the session now: the server serves one client at a time.

        The session lasts while any remote handle does, and reference cycles hold some (the closure
        in `VirtualMachine.get_outputs`; frames that tracebacks kept alive while torch was first
        imported): hence the collection after dropping ours.
        """
        self._vm = self.device = self._session = None
        gc.collect()

    def __enter__(self) -> RemoteModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _step(self, step: str, hint: str = "") -> _RemoteStep:
        return _RemoteStep(self.where, step, hint)


class _RemoteStep:
    """A context that turns what TVM raises when the server dies, expires or fails into one line.

    The TVM error is chained without its traceback (which `__exit__` also lets go of): the frames
    below hold the session, which would keep the server busy while the caller keeps the error.
    """

    def __init__(self, where: str, step: str, hint: str):
        self.where, self.step, self.hint = where, step, hint

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, err: BaseException | None, tb: Any) -> bool:
        del tb
        message = None if err is None else self._message(err)
        if message is None:
            return False
        raise RemoteError(message) from err.with_traceback(None)

    def _message(self, err: BaseException) -> str | None:
        import tvm

        if isinstance(err, tvm.error.RPCSessionTimeoutError):
            return f"the session with {self.where} expired while {self.step}: {_last_line(err)}"
        if isinstance(err, tvm.error.RPCError):  # raised on the server and sent back
            return f"{self.where} failed while {self.step}: {_last_line(err)}{'; ' + self.hint if self.hint else ''}"
        if isinstance(err, tvm.error.InternalError) and any(marker in str(err) for marker in _DISCONNECTED):
            return (f"lost {self.where} while {self.step}: the connection closed ({_last_line(err)}); "
                    "the server crashed or was stopped: restart it and retry")
        return None


class _Tracker:
    """A tracker connection that speaks TVM's tracker protocol (tvm.rpc.base) with bounded waits."""

    def __init__(self, address: tuple[str, int], timeout_s: float):
        from tvm.rpc import base

        self.address = address
        self._timeout_s = timeout_s
        try:
            self._sock = socket.create_connection(address, timeout=timeout_s)
        except OSError as err:
            host, port = address
            raise RemoteError(
                f"cannot reach the RPC tracker at {host}:{port} ({_os_reason(err, timeout_s)}); "
                f"start it with: python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port {port}"
            ) from None
        try:
            self._sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            magic = struct.unpack("<i", base.recvall(self._sock, 4))[0]
        except OSError as err:
            self.close()
            raise RemoteError(f"{_show(address)} is not an RPC tracker ({_os_reason(err, timeout_s)})") from None
        if magic != base.RPC_TRACKER_MAGIC:
            self.close()
            raise RemoteError(f"{_show(address)} is not an RPC tracker (it answered the handshake with {magic:#x})")

    def summary(self) -> dict[str, Any]:
        """The tracker's {"queue_info": {key: {"free", "pending"}}, "server_info": [{"key", "addr"}]}."""
        from tvm.rpc import base

        try:
            return self._call([base.TrackerCode.SUMMARY], "reading its summary", self._timeout_s)[1]
        except TimeoutError:
            raise RemoteError(f"the RPC tracker at {_show(self.address)} did not send its summary within {self._timeout_s:g} s") from None

    def request_within(self, key: str, timeout_s: float) -> tuple[str, int, str] | None:
        """(host, port, match key) of a free server under `key`, or None if none was free in time.

        Giving up closes the connection: the tracker then drops the request instead of handing it
        the next free server.
        """
        from tvm.rpc import base

        try:
            reply = self._call([base.TrackerCode.REQUEST, key, "", 1], f"waiting for key '{key}'", timeout_s)
        except TimeoutError:
            self.close()
            return None
        host, port, match_key = reply[1]
        return host, int(port), match_key

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _call(self, message: list, doing: str, timeout_s: float) -> list:
        """Send one message and read the reply; TimeoutError when none comes within `timeout_s`."""
        from tvm.rpc import base

        self._sock.settimeout(timeout_s)
        try:
            base.sendjson(self._sock, message)
            reply = base.recvjson(self._sock)
        except TimeoutError:
            raise
        except OSError as err:
            raise RemoteError(f"lost the RPC tracker at {_show(self.address)} while {doing} ({err}); is it still running?") from None
        if not isinstance(reply, list) or reply[0] != base.TrackerCode.SUCCESS:
            raise RemoteError(f"the RPC tracker at {_show(self.address)} refused {doing}: {reply!r}")
        return reply


def _no_free_device(spec: RemoteSpec) -> str:
    """Why no device under the key came free: none registered, or every one busy."""
    tracker = _Tracker(spec.tracker, spec.timeout_s)
    try:
        summary = tracker.summary()
    finally:
        tracker.close()
    servers = [s for s in summary.get("server_info", []) if s.get("key") == f"server:{spec.key}"]
    waited = f"waited {spec.timeout_s:g} s"
    if not servers:
        keys = sorted({s["key"].split(":", 1)[-1] for s in summary.get("server_info", [])})
        known = f"keys with servers: {', '.join(keys)}" if keys else "no server is registered at all"
        host, port = spec.tracker
        return (
            f"no RPC server is registered under key '{spec.key}' at the tracker {host}:{port} ({waited}; {known}); "
            f"start one on the device with: python -m tvm.exec.rpc_server --tracker {host}:{port} --key {spec.key}"
        )
    return (
        f"all {len(servers)} device(s) under key '{spec.key}' at the tracker {_show(spec.tracker)} are busy "
        f"({waited}); retry when they are free or raise --timeout"
    )


def _open_session(address: tuple[str, int], match_key: str, spec: RemoteSpec, where: str):
    """`tvm.rpc.connect` in a helper thread, given up after `spec.timeout_s`.

    A server that serves another client accepts the TCP connection but answers the handshake only
    once that session ends. A thread given up on ends by itself then, dropping the session it got.
    """
    import tvm
    from tvm import rpc

    attempt: dict[str, Any] = {}
    lock, given_up = threading.Lock(), threading.Event()

    def run() -> None:
        try:
            outcome = {"session": rpc.connect(address[0], address[1], match_key, session_timeout=spec.session_timeout_s)}
        except (tvm.error.InternalError, tvm.error.RPCError, OSError) as err:
            outcome = {"error": err}
        with lock:
            if not given_up.is_set():
                attempt.update(outcome)

    thread = threading.Thread(target=run, name=f"edgec-rpc-connect-{_show(address)}", daemon=True)
    thread.start()
    thread.join(spec.timeout_s)
    with lock:
        if not attempt:
            given_up.set()
    if given_up.is_set():
        raise RemoteError(
            f"{where} accepted the connection but started no session within {spec.timeout_s:g} s: it serves one "
            "client at a time and is busy, or it is not a TVM RPC server; retry later or raise --timeout"
        )
    error = attempt.get("error")
    if isinstance(error, tvm.error.RPCSessionTimeoutError):
        raise RemoteError(f"{where} ended the session before it started: {_last_line(error)}") from error
    if error is not None:
        if spec.address is not None:
            fix = f"start it with: python -m tvm.exec.rpc_server --host 0.0.0.0 --port {address[1]}"
        else:
            fix = "the tracker lists the server at that address: check that this machine can reach it (rpc_server --custom-addr sets the address it reports)"
        raise RemoteError(f"cannot reach {where} ({_probe(address, spec.timeout_s)}); {fix}") from error
    return attempt["session"]


def _probe(address: tuple[str, int], timeout_s: float) -> str:
    """Why a TCP connection to `address` fails (asked only after TVM's connect failed)."""
    try:
        with socket.create_connection(address, timeout=min(timeout_s, 5.0)):
            return "it accepted a TCP connection but not the RPC handshake"
    except OSError as err:
        return _os_reason(err, timeout_s)


def _os_reason(err: OSError, timeout_s: float) -> str:
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(err, socket.gaierror):
        return "unknown host"
    return err.strerror or str(err) or type(err).__name__


def _flatten(value: Any) -> list:
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in _flatten(item)]
    return [value]


def _last_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _show(address: tuple[str, int] | None) -> str:
    assert address is not None
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

