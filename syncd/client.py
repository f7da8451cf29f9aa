"""Clients of the local API: :class:`Client` (blocking, for scripts and threads) and
:func:`open_client` (trio, pipelined). Both speak JSON-RPC 2.0 lines over the Unix socket,
offer one typed method per API method (plus :meth:`Client.call` for any method), and raise
typed errors:

- :class:`DaemonNotRunning` when nothing listens on the socket (the message names it);
- :class:`ConnectionLost` when the connection fails or was closed (no automatic reconnect);
- :class:`CallTimeout` when a call outlives the client's ``timeout``;
- :class:`RemoteError` subclasses for error responses, by code (:class:`InvalidParams`, ...)
  and, for -32000, by ``data.reason`` (:class:`NotFound`, :class:`NotTrusted`, ...).

Example::

    from syncd.client import Client
    with Client() as c:                      # the socket of the default instance
        c.put("notes", "todo", {"title": "milk"})
        print(c.get("notes", "todo"))        # {'exists': True, 'value': {'title': 'milk'}}

Responses are matched to requests by ``id``. An error response with ``"id": null`` (the
daemon's answer to a line it could not parse or that was too long) belongs to the oldest
request still waiting for its turn in the response order; ``sync`` requests are skipped
unless nothing else waits, because their responses do not keep that order (docs/api.md,
"Pipelining").
"""

from __future__ import annotations

import builtins
import json
import math
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from syncd.daemon.unixsock import connect_unix, short_address
from syncd.errors import SyncdError
from syncd.paths import resolve_paths

__all__ = [
    "MAX_RESPONSE_LINE",
    "WATCH_BUFFER",
    "ApplicationError",
    "AsyncClient",
    "AsyncSubscription",
    "CallTimeout",
    "Client",
    "ClientError",
    "ConnectionLost",
    "DaemonNotRunning",
    "InternalError",
    "InvalidParams",
    "InvalidPath",
    "InvalidRequest",
    "MethodNotFound",
    "NotFound",
    "NotTrusted",
    "ParseError",
    "RemoteError",
    "SyncdError",
    "Timeout",
    "TooLarge",
    "TypeMismatch",
    "default_socket",
    "error_from_response",
    "open_client",
]

MAX_RESPONSE_LINE = 1 << 30
"""The longest response line a client accepts; a longer one breaks the connection."""
WATCH_BUFFER = 1024
"""Notifications an :class:`AsyncSubscription` buffers before it ends with an overflow."""
RECEIVE_CHUNK = 1 << 16
SYNC_DEFAULT_TIMEOUT_S = 30.0  # the daemon's default ``timeout_s`` of ``sync``
UNORDERED_METHODS = frozenset(("sync",))  # responses that do not keep the request order


# --- errors ----------------------------------------------------------------------------------


class ClientError(SyncdError):
    """A problem talking to the daemon (``.reason``; no ``.code`` or ``.data``)."""

    reason = "client"


class DaemonNotRunning(ClientError):
    """Nothing is listening on the socket."""

    reason = "no_daemon"


class ConnectionLost(ClientError):
    """The connection failed, the daemon closed it, or the client was closed or broken."""

    reason = "connection_lost"


class CallTimeout(ClientError):
    """A call got no response within the client's ``timeout``."""

    reason = "call_timeout"


class RemoteError(ClientError):
    """An error response: ``code``, ``message``, ``data`` (with ``reason`` for -32000)."""

    code = 0

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        data = data or {}
        super().__init__(message, reason=str(data.get("reason", self.reason)))
        self.code = code
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        message = str(self.args[0]) if self.args else ""
        return (type(self), (self.code, message, self.data), self.__dict__)


class ParseError(RemoteError):
    """-32700: the daemon could not parse a line."""

    reason = "parse_error"


class InvalidRequest(RemoteError):
    """-32600: not a JSON-RPC request."""

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
    """``too_large`` (also a request line over the daemon's size limit)."""


class Timeout(ApplicationError):
    """``timeout`` (reported by the daemon; the client's own is :class:`CallTimeout`)."""


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


# --- paths and encoding ----------------------------------------------------------------------


def default_socket() -> Path:
    """The socket of the instance selected by the environment (``SYNCD_HOME``, XDG, ...)."""
    return resolve_paths().socket


def _socket_path(
    socket_path: str | os.PathLike[str] | None, home: str | os.PathLike[str] | None
) -> Path:
    if home is not None:
        if socket_path is not None:
            raise ValueError("give either a socket path or home=, not both")
        if not os.fspath(home):
            raise ValueError("home must not be empty")
        return resolve_paths(home).daemon_socket  # what `syncd --home HOME run` binds
    return Path(socket_path) if socket_path is not None else default_socket()


def _not_running(path: Path, exc: OSError) -> ClientError:
    if isinstance(exc, PermissionError):
        return ClientError(f"permission denied connecting to {path}", reason="permission_denied")
    return DaemonNotRunning(f"no syncd daemon is running at {path} (start one with `syncd run`)")


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


class _BadKey(Exception):
    """A dict key that is not a string, with the path to it (filled in while unwinding)."""

    def __init__(self, key: object) -> None:
        super().__init__(key)
        self.key = key
        self.path: builtins.list[object] = []


def _check_keys(value: Any) -> None:
    # json.dumps would turn {1: "x"} into {"1": "x"} without a word. Only containers are
    # visited; the path is built only when a bad key is found.
    children: Iterable[tuple[object, Any]]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise _BadKey(key)
        children = value.items()
    elif isinstance(value, list | tuple):
        children = enumerate(value)
    else:
        return
    for where, item in children:
        if isinstance(item, dict | list | tuple):
            try:
                _check_keys(item)
            except _BadKey as exc:
                exc.path.append(where)
                raise


def _non_finite_path(value: Any) -> builtins.list[object] | None:
    """The path to a NaN or infinite float inside ``value`` (None: there is none)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else []
    items: Iterable[tuple[object, Any]]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite_path(item)
        if found is not None:
            return [key, *found]
    return None


def _where(name: str, path: builtins.list[object]) -> str:
    return name + "".join(f"[{p!r}]" for p in path)


def _encode_tail(method: str, params: Mapping[str, Any]) -> bytes:
    """The request line after its id (``,"method":...,"params":...}\\n``), checked first:
    values the daemon cannot store raise here and nothing is sent."""
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, not {type(method).__name__}")
    for name, value in params.items():
        try:
            _check_keys(value)
        except _BadKey as exc:
            where = _where(name, exc.path[::-1])
            raise TypeError(
                f"param {name!r}: key {exc.key!r} in {where} is not a string "
                "(JSON object keys are strings; convert it yourself)"
            ) from None
        except RecursionError:
            raise ValueError(f"param {name!r} is nested too deeply") from None
    try:
        body = _ENCODER.encode(dict(params))
    except ValueError:
        for name, value in params.items():
            path = _non_finite_path(value)
            if path is not None:
                raise ValueError(
                    f"param {name!r}: {_where(name, path)} is NaN or infinite, which JSON "
                    "cannot represent and the daemon cannot store"
                ) from None
        raise
    except TypeError as exc:
        raise TypeError(f"params of {method!r}: {exc}") from None
    return b',"method":' + _ENCODER.encode(method).encode() + b',"params":' + body.encode() + b"}\n"


def _line(rid: int, tail: bytes) -> bytes:
    return b'{"jsonrpc":"2.0","id":%d' % rid + tail


def _allowance(timeout: float | None, method: str, params: Mapping[str, Any]) -> float | None:
    """How long a call may take: the client's timeout, plus the wait ``sync`` asks for."""
    if timeout is None:
        return None
    if method == "sync":
        wait = params.get("timeout_s", SYNC_DEFAULT_TIMEOUT_S)
        if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 0:
            return timeout + float(wait)
    return timeout


class _Correlator:
    """Which request a response answers (sans-IO; both clients use one per connection).

    Request ids increase in the order the lines are sent. The daemon answers in that order,
    except ``sync``, so a response to an ordered request ``n`` means every line sent before
    ``n`` has had its turn; an error with a null id is the turn of the oldest line that has not.
    """

    def __init__(self) -> None:
        self._next_id = 1
        self._waiting_turn: deque[int] = deque()  # ids whose turn has not come, in send order
        self._unordered: set[int] = set()  # ids of unanswered ``sync`` requests

    def add(self, method: str) -> int:
        """The id of a request about to be sent (call in send order)."""
        rid = self._next_id
        self._next_id += 1
        self._waiting_turn.append(rid)
        if method in UNORDERED_METHODS:
            self._unordered.add(rid)
        return rid

    def retract(self, rid: int) -> None:
        """Forget the request just added: not a byte of it was sent."""
        if self._waiting_turn and self._waiting_turn[-1] == rid:
            self._waiting_turn.pop()
        self._unordered.discard(rid)

    def route(self, msg_id: Any, is_error: bool) -> int | None:
        """The id of the request a response answers (None: none of ours)."""
        if msg_id is None:
            return self._claim_turn() if is_error else None
        if type(msg_id) is not int:
            return None
        if msg_id in self._unordered:
            self._unordered.discard(msg_id)
            with suppress(ValueError):
                self._waiting_turn.remove(msg_id)
            return msg_id
        while self._waiting_turn and self._waiting_turn[0] <= msg_id:
            self._waiting_turn.popleft()
        return msg_id

    def _claim_turn(self) -> int | None:
        owner = next((r for r in self._waiting_turn if r not in self._unordered), None)
        if owner is None:
            if not self._waiting_turn:
                return None
            # Only ``sync`` requests wait: the error can be nobody else's.
            owner = self._waiting_turn.popleft()
            self._unordered.discard(owner)
            return owner
        while self._waiting_turn[0] != owner:
            self._waiting_turn.popleft()  # a ``sync`` sent earlier: its turn has passed
        self._waiting_turn.popleft()
        return owner


def _parse_line(line: bytes, path: Path) -> dict[str, Any]:
    try:
        msg = json.loads(line)
    except ValueError:
        msg = None
    if not isinstance(msg, dict):
        raise ConnectionLost(f"the daemon at {path} sent a malformed line: {line[:200]!r}")
    return msg


def _result_object(result: Any, method: str) -> dict[str, Any]:
    if not isinstance(result, dict):
        raise ClientError(f"unexpected result of {method}: {result!r}")
    return result


def _result_field(result: Any, method: str, name: str) -> Any:
    obj = _result_object(result, method)
    if name not in obj:
        raise ClientError(f"unexpected result of {method}: {result!r}")
    return obj[name]


def _device_list(devices: Iterable[str]) -> builtins.list[str]:
    if isinstance(devices, str):
        raise TypeError("devices must be a list of device IDs, not one string")
    return builtins.list(devices)


def _trust_params(
    device_id: str, name: str | None, addresses: Iterable[str] | None
) -> dict[str, Any]:
    params: dict[str, Any] = {"device_id": device_id}
    if name is not None:
        params["name"] = name
    if addresses is not None:
        if isinstance(addresses, str):
            raise TypeError("addresses must be a list of HOST:PORT strings, not one string")
        params["addresses"] = builtins.list(addresses)
    return params


def _sync_params(ns: str, timeout_s: float | None) -> dict[str, Any]:
    return {"ns": ns} if timeout_s is None else {"ns": ns, "timeout_s": timeout_s}


# --- the blocking client ---------------------------------------------------------------------


class _Expired(Exception):
    """The deadline of a blocking call passed."""


class Client:
    """A blocking client over one connection.

    Threads may share a client: calls are serialized (each sends its request and gets its own
    response, even while another thread iterates :meth:`notifications`). ``timeout`` (seconds,
    None: wait forever) bounds each call; when it passes the call raises :class:`CallTimeout`
    and the client is broken: later calls raise :class:`ConnectionLost`. A lost connection is
    not reopened: make a new client.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        home: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.path = _socket_path(socket_path, home)
        self.timeout = timeout
        try:
            self._sock = connect_unix(self.path, timeout)
        except TimeoutError:
            raise CallTimeout(f"connecting to {self.path} timed out after {timeout} s") from None
        except OSError as exc:
            raise _not_running(self.path, exc) from None
        self._sock.setblocking(False)
        self._corr = _Correlator()
        self._send_lock = threading.Lock()
        # Guards everything below; the thread that reads (``_reading``) owns ``_buf``.
        self._cond = threading.Condition(threading.RLock())
        self._reading = False
        self._waiting: set[int] = set()
        self._results: dict[int, dict[str, Any]] = {}
        self._notifications: deque[dict[str, Any]] = deque()
        self._broken: str | None = None
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no newline

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
        """Close the connection (idempotent); calls and :meth:`notifications` waiting in other
        threads raise :class:`ConnectionLost`."""
        self._break(f"the client of {self.path} is closed")
        self._sock.close()

    def settimeout(self, seconds: float | None) -> None:
        """Set the timeout of later calls (as the ``timeout`` argument does)."""
        self.timeout = seconds

    def _break(self, reason: str) -> None:
        with self._cond:
            if self._broken is None:
                self._broken = reason
            self._cond.notify_all()
        with suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a thread waiting to read

    def _lost(self, reason: str) -> ConnectionLost:
        self._break(reason)
        return ConnectionLost(self._broken or reason)

    def _timed_out(self, what: str) -> CallTimeout:
        self._break(f"the connection to {self.path} was closed after a call timed out")
        return CallTimeout(f"{what} got no response from {self.path} within {self.timeout} s")

    def _wait_ready(self, events: int, deadline: float | None) -> None:
        if self._sock.fileno() < 0:
            raise OSError("the socket is closed")
        poller = select.poll()
        poller.register(self._sock.fileno(), events)
        if deadline is None:
            poller.poll()
            return
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(math.ceil(left * 1000)):
            raise _Expired

    def call(self, method: str, /, **params: Any) -> Any:
        """Call ``method`` with named params; return its result or raise a typed error."""
        return self._call(method, params)

    def _call(self, method: str, params: dict[str, Any]) -> Any:
        tail = _encode_tail(method, params)
        allowance = _allowance(self.timeout, method, params)
        deadline = None if allowance is None else time.monotonic() + allowance
        if not self._send_lock.acquire(timeout=-1 if allowance is None else allowance):
            raise self._timed_out(method)
        rid: int | None = None
        try:
            try:
                with self._cond:
                    if self._broken is not None:
                        raise ConnectionLost(self._broken)
                    rid = self._corr.add(method)
                    self._waiting.add(rid)
                self._send(_line(rid, tail), rid, deadline, method)
            finally:
                self._send_lock.release()
            msg = self._await(lambda: self._results.pop(rid, None), deadline, method)
        finally:
            if rid is not None:
                with self._cond:
                    # An abandoned call (interrupted, timed out): its response will be skipped.
                    self._waiting.discard(rid)
                    self._results.pop(rid, None)
        if "error" in msg:
            raise error_from_response(msg["error"])
        return msg.get("result")

    def _send(self, data: bytes, rid: int, deadline: float | None, method: str) -> None:
        view = memoryview(data)
        sent = 0
        exact = True  # False while a send() may have written bytes not yet counted
        try:
            while sent < len(view):
                exact = False
                try:
                    count = self._sock.send(view[sent:])
                except BlockingIOError:
                    exact = True
                    self._wait_ready(select.POLLOUT, deadline)
                    continue
                sent += count
                exact = True
        except BaseException as exc:
            # An interrupt (KeyboardInterrupt, ...) may land anywhere: undo only what is
            # known not to have been sent; a fragment, or maybe one, breaks the connection,
            # since the next request would be glued to it.
            if exact and sent == 0:
                with self._cond:
                    self._corr.retract(rid)
                    self._waiting.discard(rid)
            elif not exact or sent < len(view):
                self._break(f"the connection to {self.path} broke: a request was cut off")
            if isinstance(exc, _Expired):
                raise self._timed_out(method) from None
            if isinstance(exc, OSError):
                raise self._lost(f"lost the connection to {self.path}: {exc}") from None
            raise

    def _await(
        self,
        take: Callable[[], dict[str, Any] | None],
        deadline: float | None,
        what: str,
    ) -> dict[str, Any]:
        """Wait until ``take`` returns a message, reading for every waiting thread in turn."""
        while True:
            reader = False
            msg = None
            try:
                with self._cond:
                    while True:
                        got = take()
                        if got is not None:
                            return got
                        if self._broken is not None:
                            raise ConnectionLost(self._broken)
                        if not self._reading:
                            # (in this order: an interrupt between the two is harmless)
                            reader = True
                            self._reading = True
                            break
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            raise self._timed_out(what)
                        self._cond.wait(left)
                msg = self._read_message(deadline)
            except _Expired:
                raise self._timed_out(what) from None
            except ConnectionLost as exc:
                raise self._lost(str(exc)) from None
            except OSError as exc:
                raise self._lost(f"lost the connection to {self.path}: {exc}") from None
            finally:
                if reader:
                    with self._cond:
                        self._reading = False
                        if msg is not None:
                            self._deliver(msg)
                        self._cond.notify_all()

    def _read_message(self, deadline: float | None) -> dict[str, Any]:
        while True:
            newline = self._buf.find(b"\n", self._scanned)
            if newline >= 0:
                line = bytes(self._buf[:newline])
                del self._buf[: newline + 1]
                self._scanned = 0
                if line.strip():
                    return _parse_line(line, self.path)
                continue
            self._scanned = len(self._buf)
            if len(self._buf) > MAX_RESPONSE_LINE:
                raise ConnectionLost(f"a response from {self.path} is too long")
            if self._sock.fileno() < 0:
                raise ConnectionLost(self._broken or f"the client of {self.path} is closed")
            try:
                data = self._sock.recv(RECEIVE_CHUNK)
            except BlockingIOError:
                self._wait_ready(select.POLLIN, deadline)
                continue
            if not data:
                raise ConnectionLost(
                    self._broken or f"the daemon at {self.path} closed the connection"
                )
            self._buf += data

    def _deliver(self, msg: dict[str, Any]) -> None:
        if "id" not in msg:
            self._notifications.append(msg)
            return
        owner = self._corr.route(msg["id"], "error" in msg)
        if owner is not None and owner in self._waiting:
            self._results[owner] = msg

    def _next_notification(self) -> dict[str, Any] | None:
        return self._notifications.popleft() if self._notifications else None

    def notifications(self) -> Iterator[dict[str, Any]]:
        """Notifications (``{"method": "change"|"overflow", "params": {...}}``), blocking,
        without the timeout; :class:`ConnectionLost` when the connection ends."""
        while True:
            yield self._await(self._next_notification, None, "notifications")

    # typed methods ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``status``: ``{device_id, name, version, listen, peers_connected, namespaces}``."""
        return _result_object(self.call("status"), "status")

    def get(self, ns: str, key: str, conflicts: bool = False) -> dict[str, Any]:
        """``get``: ``{exists, value}`` (and ``conflicts: [{path, values}]`` if asked)."""
        if conflicts:
            return _result_object(self.call("get", ns=ns, key=key, conflicts=True), "get")
        return _result_object(self.call("get", ns=ns, key=key), "get")

    def put(self, ns: str, key: str, value: dict[str, Any]) -> None:
        """``put``: make the document equal to ``value``; returns once durable."""
        self.call("put", ns=ns, key=key, value=value)

    def patch(self, ns: str, key: str, ops: builtins.list[dict[str, Any]]) -> None:
        """``patch``: apply ``ops`` atomically; returns once durable."""
        self.call("patch", ns=ns, key=key, ops=ops)

    def delete(self, ns: str, key: str) -> bool:
        """``delete``; whether the document existed."""
        return bool(_result_field(self.call("delete", ns=ns, key=key), "delete", "existed"))

    def list(self, ns: str, prefix: str = "") -> builtins.list[str]:
        """``list``: the keys under ``prefix``, sorted."""
        keys = _result_field(self.call("list", ns=ns, prefix=prefix), "list", "keys")
        return builtins.list(keys)

    def watch(self, ns: str, prefix: str = "", initial: bool = False) -> int:
        """``watch``: the subscription id; read the changes with :meth:`notifications`."""
        result = self.call("watch", ns=ns, prefix=prefix, initial=initial)
        return int(_result_field(result, "watch", "subscription"))

    def unwatch(self, subscription: int) -> None:
        """``unwatch``: end a subscription (:class:`NotFound` if it is not one)."""
        self.call("unwatch", subscription=subscription)

    def peers(self) -> dict[str, Any]:
        """``peers``: ``{peers: [{id, name, trusted, connected, addresses, last_seen}],
        pending: [...]}``."""
        return _result_object(self.call("peers"), "peers")

    def trust(
        self, device_id: str, name: str | None = None, addresses: Iterable[str] | None = None
    ) -> None:
        """``trust``: trust a device (None keeps its current name/addresses)."""
        self.call("trust", **_trust_params(device_id, name, addresses))

    def untrust(self, device_id: str) -> None:
        """``untrust``: forget a device and its shares (:class:`NotFound` if unknown)."""
        self.call("untrust", device_id=device_id)

    def share(self, ns: str, devices: Iterable[str]) -> None:
        """``share``: share ``ns`` with trusted devices."""
        self.call("share", ns=ns, devices=_device_list(devices))

    def unshare(self, ns: str, devices: Iterable[str]) -> None:
        """``unshare``: stop sharing ``ns`` with devices."""
        self.call("unshare", ns=ns, devices=_device_list(devices))

    def namespaces(self) -> builtins.list[dict[str, Any]]:
        """``namespaces``: ``[{ns, devices, documents}]``, sorted by name."""
        result = _result_field(self.call("namespaces"), "namespaces", "namespaces")
        return builtins.list(result)

    def sync(self, ns: str, timeout_s: float | None = None) -> dict[str, Any]:
        """``sync``: ``{acked_by, pending}`` once connected devices sharing ``ns`` acknowledged
        every local change, or after ``timeout_s`` (daemon default 30) with laggards in
        ``pending``. The client's timeout is extended by that wait."""
        return _result_object(self.call("sync", **_sync_params(ns, timeout_s)), "sync")


# --- the trio client -------------------------------------------------------------------------


class _Slot:
    """Where the reader puts the outcome of one pending call."""

    __slots__ = ("done", "error", "on_result", "value")

    def __init__(self, on_result: Callable[[Any], Any] | None) -> None:
        self.done = trio.Event()
        self.on_result = on_result
        self.value: Any = None
        self.error: BaseException | None = None


class AsyncSubscription:
    """A watch subscription of an :class:`AsyncClient`.

    Iterate it (``async for note in sub``) or :meth:`receive` for notifications
    (``{"method": "change", "params": {...}}``). It buffers up to ``buffer`` notifications;
    when the daemon reports an overflow, or the buffer is full because nobody reads, it ends
    with one ``{"method": "overflow", "params": {"subscription": id}}`` (watch again with
    ``initial=True`` to catch up). When the connection is lost, iterating raises
    :class:`ConnectionLost` after the buffered notifications. ``async with`` closes it.
    """

    def __init__(self, client: AsyncClient, sub_id: int, buffer: int = WATCH_BUFFER) -> None:
        self.client = client
        self.id = sub_id
        self._send, self._recv = trio.open_memory_channel[dict[str, Any]](buffer)
        self._overflowed = False  # ended by an overflow not yet handed out
        self._lost: str | None = None  # ended by the loss of the connection
        self._closed = False

    def _offer(self, msg: dict[str, Any]) -> bool:
        """Buffer a notification without waiting; False when the buffer is full."""
        try:
            self._send.send_nowait(msg)
        except trio.WouldBlock:
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        return True

    def _end(self, *, overflow: bool = False, lost: str | None = None) -> None:
        self._overflowed = overflow
        self._lost = lost
        self._send.close()

    def __aiter__(self) -> AsyncSubscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def receive(self) -> dict[str, Any]:
        """The next notification; :class:`trio.EndOfChannel` once the subscription ended
        (after its ``overflow`` notification, if any), :class:`ConnectionLost` if the
        connection was lost."""
        try:
            return await self._recv.receive()
        except trio.EndOfChannel:
            if self._overflowed:
                self._overflowed = False
                return {"jsonrpc": "2.0", "method": "overflow", "params": {"subscription": self.id}}
            if self._lost is not None:
                raise ConnectionLost(self._lost) from None
            raise

    async def aclose(self) -> None:
        """Unsubscribe (idempotent): tasks iterating the subscription stop after what it holds."""
        if self._closed:
            return
        self._closed = True
        active = self.client._subs.pop(self.id, None) is self
        self._send.close()
        if active:
            # NotFound: the daemon ended it meanwhile (overflow); ConnectionLost: so did the
            # connection. Either way it is gone, which is what was asked.
            with suppress(NotFound, ConnectionLost):
                await self.client.unwatch(self.id)

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class AsyncClient:
    """A trio client from :func:`open_client`; concurrent calls are pipelined on one
    connection. ``timeout`` (seconds, None: none) bounds each call, which then raises
    :class:`CallTimeout`; the connection stays usable (the request line is always sent
    whole, even when the call is cancelled)."""

    def __init__(self, stream: trio.SocketStream, path: Path, timeout: float | None = None) -> None:
        self.stream = stream
        self.path = path
        self.timeout = timeout
        self._corr = _Correlator()
        self._pending: dict[int, _Slot] = {}
        self._subs: dict[int, AsyncSubscription] = {}
        self._orphan_watches: set[int] = set()  # ids of abandoned `watch` calls
        self._send_lock = trio.Lock()
        self._unusable: str | None = None  # why no more requests can be sent
        self._nursery: trio.Nursery | None = None  # for unwatching overflowed subscriptions

    @property
    def _closed(self) -> bool:
        return self._unusable is not None

    def _check_usable(self) -> None:
        if self._unusable is not None:
            raise ConnectionLost(self._unusable)

    async def call(self, method: str, /, **params: Any) -> Any:
        """Call ``method``; concurrent calls from several tasks share the connection."""
        return await self._call(method, params)

    async def _call(
        self,
        method: str,
        params: dict[str, Any],
        on_result: Callable[[Any], Any] | None = None,
    ) -> Any:
        tail = _encode_tail(method, params)
        self._check_usable()
        allowance = _allowance(self.timeout, method, params)
        deadline = math.inf if allowance is None else trio.current_time() + allowance
        slot = _Slot(on_result)
        rid: int | None = None
        with trio.CancelScope(deadline=deadline) as scope:
            async with self._send_lock:
                self._check_usable()
                rid = self._corr.add(method)
                self._pending[rid] = slot
                await self._send_request(rid, _line(rid, tail), deadline, method)
            try:
                await slot.done.wait()
            finally:
                if not slot.done.is_set():
                    self._pending.pop(rid, None)
                    if on_result is not None:
                        self._orphan_watches.add(rid)
        if not slot.done.is_set():
            assert scope.cancelled_caught
            raise CallTimeout(f"{method} got no response from {self.path} within {allowance} s")
        if slot.error is not None:
            raise slot.error
        return slot.value

    async def _send_request(self, rid: int, data: bytes, deadline: float, method: str) -> None:
        view = memoryview(data)
        sent = 0
        try:
            # Shielded: a cancelled call still sends the rest of its line, else the next
            # request would be glued to the fragment. Only the call's own deadline stops it.
            with trio.CancelScope(shield=True, deadline=deadline) as scope:
                while sent < len(view):
                    sent += await self.stream.socket.send(view[sent:])
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._pending.pop(rid, None)
            reason = f"lost the connection to {self.path}: {exc}"
            self._unusable = self._unusable or reason
            raise ConnectionLost(reason) from None
        if scope.cancelled_caught:
            self._pending.pop(rid, None)
            if sent == 0:
                self._corr.retract(rid)
            else:
                self._unusable = f"the connection to {self.path} broke: a request was cut off"
                with suppress(OSError):
                    # The daemon drops the fragment, answers the rest, and closes.
                    self.stream.socket.shutdown(socket.SHUT_WR)
            raise CallTimeout(f"{method} could not be sent to {self.path} in time")

    async def _reader(self) -> None:
        reason = f"the daemon at {self.path} closed the connection"
        parts: builtins.list[bytes] = []  # of an incomplete line
        size = 0
        try:
            while True:
                try:
                    data = await self.stream.receive_some(RECEIVE_CHUNK)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    reason = f"lost the connection to {self.path}: {exc}"
                    break
                if not data:
                    break
                parts.append(data)
                size += len(data)
                if b"\n" not in data:
                    if size > MAX_RESPONSE_LINE:
                        reason = f"a response from {self.path} is too long"
                        break
                    continue
                *lines, rest = b"".join(parts).split(b"\n")
                parts = [rest]
                size = len(rest)
                try:
                    for line in lines:
                        if line.strip():
                            self._dispatch(_parse_line(line, self.path))
                except ConnectionLost as exc:
                    reason = str(exc)
                    break
        finally:
            self._lose(reason)

    def _lose(self, reason: str) -> None:
        """The connection is gone: fail pending calls and end subscriptions."""
        self._unusable = self._unusable or reason
        pending, self._pending = self._pending, {}
        for slot in pending.values():
            slot.error = ConnectionLost(reason)
            slot.done.set()
        subs, self._subs = self._subs, {}
        for sub in subs.values():
            sub._end(lost=reason)
        self._orphan_watches.clear()

    def _dispatch(self, msg: dict[str, Any]) -> None:
        """Route one message; never waits (a slow subscriber must not stop responses)."""
        if "id" not in msg:
            self._notify(msg)
            return
        owner = self._corr.route(msg["id"], "error" in msg)
        if owner is None:
            return
        slot = self._pending.pop(owner, None)
        if slot is None:
            if owner in self._orphan_watches:
                self._orphan_watches.discard(owner)
                result = msg.get("result")
                if isinstance(result, dict) and isinstance(result.get("subscription"), int):
                    self._unwatch_soon(result["subscription"])
            return
        if "error" in msg:
            slot.error = error_from_response(msg["error"])
        elif slot.on_result is None:
            slot.value = msg.get("result")
        else:
            try:
                slot.value = slot.on_result(msg.get("result"))
            except (ClientError, KeyError, TypeError, ValueError):
                slot.error = ClientError(f"unexpected result: {msg.get('result')!r}")
        slot.done.set()

    def _notify(self, msg: dict[str, Any]) -> None:
        params = msg.get("params")
        sub_id = params.get("subscription") if isinstance(params, dict) else None
        sub = self._subs.get(sub_id) if isinstance(sub_id, int) else None
        if sub is None:
            return
        if msg.get("method") == "overflow":  # the daemon ended it
            del self._subs[sub.id]
            sub._end(overflow=True)
        elif not sub._offer(msg):  # nobody reads it: end it here as the daemon would
            del self._subs[sub.id]
            sub._end(overflow=True)
            self._unwatch_soon(sub.id)

    def _unwatch_soon(self, sub_id: int) -> None:
        if self._nursery is not None and self._unusable is None:
            self._nursery.start_soon(self._unwatch_quietly, sub_id)

    async def _unwatch_quietly(self, sub_id: int) -> None:
        with suppress(ClientError):
            await self._call("unwatch", {"subscription": sub_id})

    # typed methods ---------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """``status``: ``{device_id, name, version, listen, peers_connected, namespaces}``."""
        return _result_object(await self.call("status"), "status")

    async def get(self, ns: str, key: str, conflicts: bool = False) -> dict[str, Any]:
        """``get``: ``{exists, value}`` (and ``conflicts: [{path, values}]`` if asked)."""
        if conflicts:
            return _result_object(await self.call("get", ns=ns, key=key, conflicts=True), "get")
        return _result_object(await self.call("get", ns=ns, key=key), "get")

    async def put(self, ns: str, key: str, value: dict[str, Any]) -> None:
        """``put``: make the document equal to ``value``; returns once durable."""
        await self.call("put", ns=ns, key=key, value=value)

    async def patch(self, ns: str, key: str, ops: builtins.list[dict[str, Any]]) -> None:
        """``patch``: apply ``ops`` atomically; returns once durable."""
        await self.call("patch", ns=ns, key=key, ops=ops)

    async def delete(self, ns: str, key: str) -> bool:
        """``delete``; whether the document existed."""
        result = await self.call("delete", ns=ns, key=key)
        return bool(_result_field(result, "delete", "existed"))

    async def list(self, ns: str, prefix: str = "") -> builtins.list[str]:
        """``list``: the keys under ``prefix``, sorted."""
        keys = _result_field(await self.call("list", ns=ns, prefix=prefix), "list", "keys")
        return builtins.list(keys)

    async def watch(
        self, ns: str, prefix: str = "", initial: bool = False, buffer: int = WATCH_BUFFER
    ) -> AsyncSubscription:
        """``watch``: a subscription buffering up to ``buffer`` notifications (see
        :class:`AsyncSubscription`)."""
        made: builtins.list[AsyncSubscription] = []

        def register(result: Any) -> AsyncSubscription:
            # Runs in the reader, before it reads the notifications that follow the response.
            sub = AsyncSubscription(self, int(result["subscription"]), buffer)
            self._subs[sub.id] = sub
            made.append(sub)
            return sub

        params = {"ns": ns, "prefix": prefix, "initial": initial}
        try:
            sub: AsyncSubscription = await self._call("watch", params, register)
        except BaseException:
            for orphan in made:  # answered, but the caller will never see it
                if self._subs.pop(orphan.id, None) is orphan:
                    orphan._end()
                    self._unwatch_soon(orphan.id)
            raise
        return sub

    async def unwatch(self, subscription: int) -> None:
        """``unwatch`` by id (:meth:`AsyncSubscription.aclose` is the usual way)."""
        await self.call("unwatch", subscription=subscription)

    async def peers(self) -> dict[str, Any]:
        """``peers``: ``{peers: [{id, name, trusted, connected, addresses, last_seen}],
        pending: [...]}``."""
        return _result_object(await self.call("peers"), "peers")

    async def trust(
        self, device_id: str, name: str | None = None, addresses: Iterable[str] | None = None
    ) -> None:
        """``trust``: trust a device (None keeps its current name/addresses)."""
        await self.call("trust", **_trust_params(device_id, name, addresses))

    async def untrust(self, device_id: str) -> None:
        """``untrust``: forget a device and its shares (:class:`NotFound` if unknown)."""
        await self.call("untrust", device_id=device_id)

    async def share(self, ns: str, devices: Iterable[str]) -> None:
        """``share``: share ``ns`` with trusted devices."""
        await self.call("share", ns=ns, devices=_device_list(devices))

    async def unshare(self, ns: str, devices: Iterable[str]) -> None:
        """``unshare``: stop sharing ``ns`` with devices."""
        await self.call("unshare", ns=ns, devices=_device_list(devices))

    async def namespaces(self) -> builtins.list[dict[str, Any]]:
        """``namespaces``: ``[{ns, devices, documents}]``, sorted by name."""
        result = _result_field(await self.call("namespaces"), "namespaces", "namespaces")
        return builtins.list(result)

    async def sync(self, ns: str, timeout_s: float | None = None) -> dict[str, Any]:
        """``sync``: ``{acked_by, pending}`` (see :meth:`Client.sync`)."""
        return _result_object(await self.call("sync", **_sync_params(ns, timeout_s)), "sync")


async def _connect(path: Path, limit_s: float | None) -> trio.SocketStream:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with trio.move_on_after(math.inf if limit_s is None else limit_s) as scope:
            with short_address(path) as addr:
                await sock.connect(addr)
    except OSError as exc:
        sock.close()
        raise _not_running(path, exc) from None
    except BaseException:
        sock.close()
        raise
    if scope.cancelled_caught:
        sock.close()
        raise CallTimeout(f"connecting to {path} timed out after {limit_s} s")
    return trio.SocketStream(sock)


def _only_from_body(group: BaseExceptionGroup[BaseException], body: BaseException) -> bool:
    """Whether ``group`` holds ``body`` and nothing else but cancellations."""
    members = group.exceptions
    return body in members and all(e is body or isinstance(e, trio.Cancelled) for e in members)


@asynccontextmanager
async def open_client(
    socket_path: str | os.PathLike[str] | None = None,
    *,
    home: str | os.PathLike[str] | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 (the client's per-call timeout)
) -> AsyncIterator[AsyncClient]:
    """Connect to the daemon (at ``socket_path``, or that of ``home`` as with ``syncd --home``,
    else the default); the connection closes when the block exits, and an exception raised in
    the block propagates unchanged."""
    path = _socket_path(socket_path, home)
    stream = await _connect(path, timeout)
    client = AsyncClient(stream, path, timeout)
    body_error: BaseException | None = None
    try:
        try:
            async with trio.open_nursery() as nursery:
                client._nursery = nursery
                nursery.start_soon(client._reader)
                try:
                    yield client
                except BaseException as exc:
                    body_error = exc
                    raise
                finally:
                    client._lose(f"the client of {path} is closed")
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The nursery wraps even a lone exception of the block in a group.
            if body_error is None or not _only_from_body(group, body_error):
                raise
        else:
            return
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()
    # Raised outside the except clause, so the group does not become its __context__.
    raise body_error
