"""Helpers for the daemon tests: an in-process API server and a real ``syncd run`` process.

Neither sleeps to wait: the in-process server is ready when ``nursery.start`` returns; the
process is ready when its READY=1 datagram reaches our fake ``NOTIFY_SOCKET``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import pytest
import trio

from syncd.config import ApiConfig
from syncd.daemon.methods import Service
from syncd.daemon.replica_store import ReplicaStore
from syncd.daemon.server import ApiServer
from syncd.daemon.store import NoNetwork
from syncd.daemon.unixsock import bind_unix, connect_unix, short_address
from syncd.daemon.watch import WatchHub
from syncd.identity import create_identity
from syncd.replica import open_replica


def root_tool(tool: str, why: str, *, root: bool = True) -> str:
    """The path of ``tool`` for a test that needs it (and root, unless ``root`` is False):
    skips, saying why, when they are missing, except under CI (``CI=true``), where such
    tests must run."""
    path = shutil.which(tool)
    if path is not None and (os.getuid() == 0 or not root):
        return path
    cannot_run(f"needs {'root and ' if root else ''}{tool} {why}")


def cannot_run(why: str) -> NoReturn:
    """Skip a test that this machine cannot run; under CI (``CI=true``), fail it instead:
    CI runs as root with every tool the suite uses."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}; CI must run this test")
    pytest.skip(why)


START_TIMEOUT_S = 30.0


def request_line(method: str, params: Any, rid: Any) -> bytes:
    """One JSON-RPC request line (``params`` left out when None)."""
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        msg["params"] = params
    return json.dumps(msg).encode() + b"\n"


@dataclass
class Api:
    """A running in-process API server."""

    socket: Path
    server: ApiServer
    store: ReplicaStore
    hub: WatchHub
    device_id: str


@asynccontextmanager
async def running_api(home: Path, limits: ApiConfig | None = None) -> AsyncIterator[Api]:
    """The daemon's API (real replica, real Unix socket) served from this trio run."""
    limits = limits or ApiConfig()
    identity = create_identity(home)
    async with open_replica(home / "syncd.db") as replica:
        store = ReplicaStore(replica)
        hub = WatchHub()
        store.set_value_filter(hub.wants)  # as syncd run does
        remove = store.add_change_listener(hub.publish)
        service = Service(store, NoNetwork(), identity.device_id, lambda: "test", lambda: "x:1")
        server = ApiServer(service, hub, lambda: limits)
        path = home / "syncd.sock"
        sock = trio.socket.from_stdlib_socket(bind_unix(path))
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve, sock)
                yield Api(path, server, store, hub, identity.device_id)
                await server.shutdown(5)
        finally:
            remove()


class Line:
    """A raw JSON-RPC line connection (trio), for byte-exact protocol tests."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buf = b""
        self._ids = 0

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are."""
        await self.stream.send_all(data)

    async def send(self, method: str, params: Any = None, rid: Any = "auto") -> Any:
        """Send one request; returns its id."""
        if rid == "auto":
            self._ids += 1
            rid = self._ids
        await self.send_raw(request_line(method, params, rid))
        return rid

    async def recv(self) -> Any:
        """The next message (fails if the connection closes first)."""
        while b"\n" not in self._buf:
            data = await self.stream.receive_some(1 << 20)
            if not data:
                raise EOFError("connection closed")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    async def call(self, method: str, params: Any = None) -> Any:
        """Send a request and return its response object (result or error)."""
        rid = await self.send(method, params)
        while True:
            msg = await self.recv()
            if msg.get("id") == rid:
                return msg

    async def aclose(self) -> None:
        """Close."""
        await self.stream.aclose()


@asynccontextmanager
async def line_connection(path: Path) -> AsyncIterator[Line]:
    """A raw connection to the socket at ``path``."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with short_address(path) as addr:
        await sock.connect(addr)
    conn = Line(trio.SocketStream(sock))
    try:
        yield conn
    finally:
        await conn.aclose()


@asynccontextmanager
async def api_and_two_connections(
    home: Path, limits: ApiConfig | None = None
) -> AsyncIterator[tuple[Api, Line, Line]]:
    """:func:`running_api` and two raw connections to it (a watcher and a writer, say)."""
    async with (
        running_api(home, limits) as api,
        line_connection(api.socket) as first,
        line_connection(api.socket) as second,
    ):
        yield api, first, second


# --- a real daemon process -------------------------------------------------------------------


class NotifyReceiver:
    """A fake systemd: an abstract AF_UNIX datagram socket collecting sd_notify messages."""

    def __init__(self) -> None:
        self.name = f"@syncd-test-{secrets.token_hex(8)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.messages: list[dict[str, str]] = []

    def wait_for(
        self,
        key: str,
        value: str | None = None,
        timeout: float = START_TIMEOUT_S,
        alive: Callable[[], bool] | None = None,
        contains: str | None = None,
        since: int = 0,
    ) -> dict[str, str]:
        """Block until a message with ``key`` (=``value``, or holding ``contains``) arrives;
        returns the first such from message number ``since`` on."""

        def wanted(msg: dict[str, str]) -> bool:
            return key in msg and (
                (value is None or msg[key] == value) and (contains is None or contains in msg[key])
            )

        for msg in self.messages[since:]:
            if wanted(msg):
                return msg
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {key} notification within {timeout} s: {self.messages}")
            if alive is not None and not alive():
                raise TimeoutError(f"the daemon exited before {key}")
            self.sock.settimeout(min(left, 0.25))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            msg = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(msg)
            if wanted(msg):
                return msg

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


class DaemonProcess:
    """``python -m syncd --home HOME run`` with a fake NOTIFY_SOCKET."""

    def __init__(
        self,
        home: Path,
        env: Mapping[str, str] | None = None,
        *,
        prefix: Sequence[str] = (),
        home_option: bool = True,
    ) -> None:
        self.home = home
        self.prefix = list(prefix)
        """Put before the command (e.g. ``setpriv ... --``)."""
        self.home_option = home_option
        """Whether to pass ``--home`` (False: the paths come from the environment)."""
        self.socket = home / "syncd.sock"
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: NotifyReceiver | None = None
        self.stderr_path = home.parent / f"{home.name}.stderr"
        self.stderr_file: BinaryIO | None = None

    def env(self) -> dict[str, str]:
        """The daemon's environment."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCD_", "NOTIFY_"))}
        env.pop("JOURNAL_STREAM", None)
        env.pop("WATCHDOG_USEC", None)
        env.update(self.extra_env)
        return env

    def start(self, *args: str, wait_ready: bool = True) -> None:
        """Start the daemon and (by default) wait for READY=1 (again after a stop)."""
        if self.notify is not None:
            self.notify.close()
        if self.stderr_file is not None:
            self.stderr_file.close()
            self.stderr_file = None
        self.notify = NotifyReceiver()
        env = self.env()
        env["NOTIFY_SOCKET"] = self.notify.name
        self.stderr_file = open(self.stderr_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                *self.prefix,
                sys.executable,
                "-m",
                "syncd",
                *(["--home", str(self.home)] if self.home_option else []),
                "run",
                *args,
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr_file,
        )
        if wait_ready:
            self.wait_ready()

    def start_failing(self) -> str:
        """Start the daemon expecting it to give up (exit 1); returns what it logged."""
        self.start(wait_ready=False)
        assert self.wait() == 1, self.stderr()
        return self.stderr()

    def wait_ready(self) -> dict[str, str]:
        """Wait for READY=1 (failing with the daemon's stderr if it exits first)."""
        assert self.notify is not None
        assert self.proc is not None
        try:
            proc = self.proc
            return self.notify.wait_for("READY", "1", alive=lambda: proc.poll() is None)
        except TimeoutError:
            raise AssertionError(f"daemon not ready; stderr:\n{self.stderr()}") from None

    def stderr(self) -> str:
        """What the daemon logged so far."""
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, signum: int) -> None:
        """Send a signal."""
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = START_TIMEOUT_S) -> int:
        """Wait for exit; returns the exit status."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int:
        """SIGTERM and wait."""
        self.signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        """SIGKILL (idempotent) and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(START_TIMEOUT_S)

    def close(self) -> None:
        """Kill if still running and release resources."""
        self.kill()
        if self.notify is not None:
            self.notify.close()
        if self.stderr_file is not None:
            self.stderr_file.close()
            self.stderr_file = None

    def call(self, method: str, **params: Any) -> Any:
        """One request with the blocking client; returns the result."""
        from syncd.client import Client

        with Client(self.socket) as client:
            return client.call(method, **params)


@contextmanager
def daemon_process(home: Path, *args: str, **env: str) -> Iterator[DaemonProcess]:
    """A started daemon that is always killed at the end."""
    daemon = DaemonProcess(home, env)
    try:
        daemon.start(*args)
        yield daemon
    finally:
        daemon.close()


class RawConn:
    """A blocking raw JSON-RPC connection: bytes out, one JSON message per line in."""

    def __init__(self, path: Path) -> None:
        self.sock = connect_unix(path)
        self.sock.settimeout(START_TIMEOUT_S)
        self.file = self.sock.makefile("rb")
        self.ids = 0
        self.notes: list[dict[str, Any]] = []

    def send(self, data: bytes) -> None:
        """Send bytes as they are."""
        self.sock.sendall(data)

    def recv(self) -> Any:
        """The next JSON line (EOFError when the daemon closed the connection)."""
        line = self.file.readline()
        if not line:
            raise EOFError("connection closed")
        assert line.endswith(b"\n"), line
        return json.loads(line)

    def request(self, method: str, params: Any = None, rid: Any = "auto") -> Any:
        """Send one request; returns its id."""
        if rid == "auto":
            self.ids += 1
            rid = self.ids
        self.send(request_line(method, params, rid))
        return rid

    def response(self, rid: Any) -> dict[str, Any]:
        """The response to request ``rid`` (notifications before it are kept for later)."""
        while True:
            msg = self.recv()
            if "id" not in msg:
                self.notes.append(msg)
                continue
            assert msg["id"] == rid, msg
            return dict(msg)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One request; returns the whole response object."""
        return self.response(self.request(method, params))

    def result(self, method: str, **params: Any) -> Any:
        """One request that must succeed; returns its result."""
        msg = self.call(method, **params)
        assert "result" in msg, msg
        return msg["result"]

    def error(self, method: str, **params: Any) -> dict[str, Any]:
        """One request that must fail; returns its error."""
        msg = self.call(method, **params)
        assert "error" in msg, msg
        return dict(msg["error"])

    def notification(self) -> dict[str, Any]:
        """The next notification."""
        if self.notes:
            return self.notes.pop(0)
        msg = self.recv()
        assert "id" not in msg, msg
        return dict(msg)

    def close(self) -> None:
        """Close."""
        self.file.close()
        self.sock.close()


def serve_for_module(home: Path) -> Iterator[DaemonProcess]:
    """Body of a module-scoped daemon fixture: start on ``home``, stop with SIGTERM (exit 0)."""
    d = DaemonProcess(home)
    try:
        d.start()
        yield d
        assert d.stop() == 0
    finally:
        d.close()


def put_lines(ns: str, count: int, prefix: str = "k") -> bytes:
    """``count`` pipelined ``put`` requests as one byte string: ids ``0..``, keys
    ``{prefix}0..``, values ``{"i": id}``."""
    return b"".join(
        request_line("put", {"ns": ns, "key": f"{prefix}{i}", "value": {"i": i}}, i)
        for i in range(count)
    )
