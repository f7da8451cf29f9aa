"""Clients of the local API: :class:`Client` (blocking, for scripts) and :func:`open_client`
(trio, pipelined). Both speak JSON-RPC 2.0 lines over the Unix socket and raise typed errors:

- :class:`DaemonNotRunning` when nothing listens on the socket (the message names it);
- :class:`RemoteError` subclasses for error responses, by code (:class:`InvalidParams`, ...)
  and, for -32000, by ``data.reason`` (:class:`NotFound`, :class:`NotTrusted`, ...).

Example::

    from syncd.client import Client
    with Client() as c:                      # the socket of the default instance
        c.put("notes", "todo", {"title": "milk"})
        print(c.get("notes", "todo"))        # {'exists': True, 'value': {'title': 'milk'}}
"""

from __future__ import annotations

import itertools
import json
import os
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from syncd.daemon.unixsock import connect_unix, short_address
from syncd.errors import SyncdError
from syncd.paths import resolve_paths

MAX_RESPONSE_LINE = 1 << 30


class ClientError(SyncdError):
    """A problem talking to the daemon."""

    reason = "client"


class DaemonNotRunning(ClientError):
    """Nothing is listening on the socket."""

    reason = "no_daemon"


class ConnectionLost(ClientError):
    """The daemon closed the connection before answering."""

    reason = "connection_lost"


class RemoteError(ClientError):
    """An error response: ``code``, ``message``, ``data`` (with ``reason`` for -32000)."""

    code = 0

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        data = data or {}
        super().__init__(message, reason=str(data.get("reason", self.reason)))
        self.code = code
        self.data = data


class ParseError(RemoteError):
    """-32700: the daemon could not parse a line."""

    reason = "parse_error"


class InvalidRequest(RemoteError):
    """-32600: not a JSON-RPC request (or a line over the size limit)."""

    reason = "invalid_request"


class MethodNotFound(RemoteError):
    """-32601."""

    reason = "method_not_found"


class InvalidParams(RemoteError):
    """-32602 (``reason`` ``invalid_device_id`` for a mistyped device ID)."""

    reason = "invalid_params"


class InternalError(RemoteError):
    """-32603: a bug in the daemon."""

    reason = "internal_error"


class ApplicationError(RemoteError):
    """-32000: the request was valid but could not be done; see ``reason``."""

    reason = "error"


class NotFound(ApplicationError):
    """``not_found``."""


class NotTrusted(ApplicationError):
    """``not_trusted``."""


class TypeMismatch(ApplicationError):
    """``type_mismatch``."""


class InvalidPath(ApplicationError):
    """``invalid_path``."""


class TooLarge(ApplicationError):
    """``too_large``."""


class Timeout(ApplicationError):
    """``timeout``."""


_BY_CODE: dict[int, type[RemoteError]] = {
    -32700: ParseError,
    -32600: InvalidRequest,
    -32601: MethodNotFound,
    -32602: InvalidParams,
    -32603: InternalError,
    -32000: ApplicationError,
}
_BY_REASON: dict[str, type[ApplicationError]] = {
    "not_found": NotFound,
    "not_trusted": NotTrusted,
    "type_mismatch": TypeMismatch,
    "invalid_path": InvalidPath,
    "too_large": TooLarge,
    "timeout": Timeout,
}


def error_from_response(error: Any) -> RemoteError:
    """The typed exception for a JSON-RPC error object."""
    if not isinstance(error, dict):
        return RemoteError(0, f"malformed error response: {error!r}")
    code = error.get("code")
    message = str(error.get("message", "error"))
    data = error.get("data") if isinstance(error.get("data"), dict) else None
    cls: type[RemoteError] = (
        _BY_CODE.get(code, RemoteError) if isinstance(code, int) else RemoteError
    )
    if cls is ApplicationError and data is not None:
        cls = _BY_REASON.get(str(data.get("reason")), ApplicationError)
    return cls(code if isinstance(code, int) else 0, message, data)


def default_socket() -> Path:
    """The socket of the instance selected by the environment (``SYNCD_HOME``, XDG, ...)."""
    return resolve_paths().socket


def _request(rid: int, method: str, params: dict[str, Any]) -> bytes:
    msg = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


def _not_running(path: Path, exc: OSError) -> ClientError:
    if isinstance(exc, PermissionError):
        return ClientError(f"permission denied connecting to {path}", reason="permission_denied")
    return DaemonNotRunning(f"no syncd daemon is running at {path} (start one with `syncd run`)")


class Client:
    """A blocking client: one request at a time over one connection."""

    def __init__(self, socket_path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(socket_path) if socket_path is not None else default_socket()
        try:
            self._sock = connect_unix(self.path)
        except OSError as exc:
            raise _not_running(self.path, exc) from None
        self._file = self._sock.makefile("rb")
        self._ids = itertools.count(1)
        self._notifications: deque[dict[str, Any]] = deque()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self._file.close()
        self._sock.close()

    def _read(self) -> dict[str, Any]:
        line = self._file.readline(MAX_RESPONSE_LINE)
        if not line:
            raise ConnectionLost(f"the daemon at {self.path} closed the connection")
        msg = json.loads(line)
        if not isinstance(msg, dict):
            raise ClientError(f"unexpected message from the daemon: {line[:200]!r}")
        return msg

    def call(self, method: str, **params: Any) -> Any:
        """Call ``method`` with named params; return its result or raise a typed error."""
        rid = next(self._ids)
        try:
            self._sock.sendall(_request(rid, method, params))
        except OSError as exc:
            raise ConnectionLost(f"lost the connection to {self.path}: {exc}") from None
        while True:
            msg = self._read()
            if "id" not in msg:
                self._notifications.append(msg)
                continue
            if msg.get("id") != rid:
                if "error" in msg:
                    raise error_from_response(msg["error"])
                continue
            if "error" in msg:
                raise error_from_response(msg["error"])
            return msg.get("result")

    def notifications(self) -> Iterator[dict[str, Any]]:
        """Notifications (``{"method": "change"|"overflow", "params": {...}}``), blocking."""
        while True:
            while self._notifications:
                yield self._notifications.popleft()
            msg = self._read()
            if "id" not in msg:
                yield msg

    def settimeout(self, seconds: float | None) -> None:
        """Timeout for socket operations (``socket.timeout`` is raised when it expires)."""
        self._sock.settimeout(seconds)

    # typed wrappers -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``status``."""
        return dict(self.call("status"))

    def get(self, ns: str, key: str, conflicts: bool = False) -> dict[str, Any]:
        """``get``: ``{"exists", "value"}`` (and ``conflicts``)."""
        if conflicts:
            return dict(self.call("get", ns=ns, key=key, conflicts=True))
        return dict(self.call("get", ns=ns, key=key))

    def put(self, ns: str, key: str, value: dict[str, Any]) -> None:
        """``put``; returns once durable."""
        self.call("put", ns=ns, key=key, value=value)

    def patch(self, ns: str, key: str, ops: list[dict[str, Any]]) -> None:
        """``patch``; returns once durable."""
        self.call("patch", ns=ns, key=key, ops=ops)

    def delete(self, ns: str, key: str) -> bool:
        """``delete``; whether the document existed."""
        return bool(self.call("delete", ns=ns, key=key)["existed"])

    def list(self, ns: str, prefix: str = "") -> list[str]:
        """``list``: sorted keys."""
        return list(self.call("list", ns=ns, prefix=prefix)["keys"])

    def watch(self, ns: str, prefix: str = "", initial: bool = False) -> int:
        """``watch``; read the changes with :meth:`notifications`."""
        return int(self.call("watch", ns=ns, prefix=prefix, initial=initial)["subscription"])


class AsyncSubscription:
    """A watch subscription of an :class:`AsyncClient`; iterate for notifications."""

    def __init__(
        self, client: AsyncClient, sub_id: int, recv: trio.MemoryReceiveChannel[dict[str, Any]]
    ) -> None:
        self.client = client
        self.id = sub_id
        self._recv = recv

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._recv.__aiter__()

    async def receive(self) -> dict[str, Any]:
        """The next notification (``{"method": ..., "params": ...}``)."""
        return await self._recv.receive()

    async def aclose(self) -> None:
        """Unsubscribe."""
        self.client._subs.pop(self.id, None)
        await self.client.call("unwatch", subscription=self.id)


class AsyncClient:
    """A trio client; concurrent calls are pipelined on one connection."""

    def __init__(self, stream: trio.SocketStream, path: Path) -> None:
        self.stream = stream
        self.path = path
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._subs: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._send_lock = trio.Lock()
        self._closed = False

    async def call(self, method: str, **params: Any) -> Any:
        """Call ``method``; concurrent calls from several tasks share the connection."""
        result = await self._call(method, params, None)
        return result

    async def _call(
        self, method: str, params: dict[str, Any], on_result: Callable[[Any], None] | None
    ) -> Any:
        if self._closed:
            raise ConnectionLost(f"the connection to {self.path} is closed")
        rid = next(self._ids)
        done = trio.Event()
        slot: list[Any] = [on_result]
        self._pending[rid] = (done, slot)
        try:
            async with self._send_lock:
                await self.stream.send_all(_request(rid, method, params))
            await done.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ConnectionLost(f"lost the connection to {self.path}") from None
        finally:
            self._pending.pop(rid, None)
        outcome = slot[-1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def watch(self, ns: str, prefix: str = "", initial: bool = False) -> AsyncSubscription:
        """Subscribe; notifications are buffered up to 1024, then the reader waits."""
        send, recv = trio.open_memory_channel[dict[str, Any]](1024)

        def register(result: Any) -> None:
            self._subs[int(result["subscription"])] = send

        result = await self._call(
            "watch", {"ns": ns, "prefix": prefix, "initial": initial}, register
        )
        return AsyncSubscription(self, int(result["subscription"]), recv)

    async def _reader(self) -> None:
        buf = b""
        try:
            while True:
                data = await self.stream.receive_some(1 << 20)
                if not data:
                    break
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        await self._dispatch(json.loads(line))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._closed = True
            lost = ConnectionLost(f"the daemon at {self.path} closed the connection")
            for done, slot in self._pending.values():
                slot.append(lost)
                done.set()
            for send in self._subs.values():
                send.close()

    async def _dispatch(self, msg: Any) -> None:
        if not isinstance(msg, dict):
            return
        if "id" not in msg:
            params = msg.get("params")
            sub_id = params.get("subscription") if isinstance(params, dict) else None
            if not isinstance(sub_id, int) or sub_id not in self._subs:
                return
            send = self._subs[sub_id]
            await send.send(msg)
            if msg.get("method") == "overflow":
                del self._subs[sub_id]
                send.close()
            return
        entry = self._pending.get(msg["id"]) if isinstance(msg["id"], int) else None
        if entry is None:
            return
        done, slot = entry
        if "error" in msg:
            slot.append(error_from_response(msg["error"]))
        else:
            on_result = slot[0]
            if on_result is not None:
                on_result(msg.get("result"))
            slot.append(msg.get("result"))
        done.set()


@asynccontextmanager
async def open_client(
    socket_path: str | os.PathLike[str] | None = None,
) -> AsyncIterator[AsyncClient]:
    """Connect to the daemon; the connection closes when the block exits."""
    path = Path(socket_path) if socket_path is not None else default_socket()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with short_address(path) as addr:
            await sock.connect(addr)
    except OSError as exc:
        sock.close()
        raise _not_running(path, exc) from None
    stream = trio.SocketStream(sock)
    client = AsyncClient(stream, path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client._reader)
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()
            await stream.aclose()
