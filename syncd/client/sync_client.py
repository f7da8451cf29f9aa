"""The blocking client, :class:`Client`: for scripts and threads."""

from __future__ import annotations

import builtins
import math
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from types import TracebackType
from typing import Any, Self

from syncd.client import protocol
from syncd.client.errors import CallTimeout, ClientError, ConnectionLost, error_from_response
from syncd.daemon.unixsock import connect_unix, peer_uid


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
        self.path = protocol.resolve_socket(socket_path, home)
        self.timeout = protocol.check_timeout(timeout)
        try:
            self._sock = connect_unix(self.path, timeout)
        except TimeoutError:
            raise CallTimeout(f"connecting to {self.path} timed out after {timeout} s") from None
        except OSError as exc:
            raise protocol.not_running(self.path, exc, home) from None
        refused = protocol.refusal(peer_uid(self._sock), self.path)
        if refused is not None:
            self._sock.close()
            raise refused
        self._sock.setblocking(False)
        self._corr = protocol.Correlator()
        self._send_lock = threading.Lock()
        # Guards everything below; the thread that reads (``_reading``) owns ``_buf``.
        self._cond = threading.Condition(threading.RLock())
        self._reading = False
        self._waiting: set[int] = set()
        self._results: dict[int, dict[str, Any]] = {}
        self._notifications: deque[dict[str, Any]] = deque()
        self._queued: dict[int, int] = {}  # notifications buffered, per subscription
        self._overflowed: set[int] = set()  # ended here: buffer full (or by the daemon)
        self._unwatch_due: set[int] = set()  # ended here: the daemon must hear it at once
        self._broken: str | None = None
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no newline

    def __enter__(self) -> Self:
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
        self.timeout = protocol.check_timeout(seconds)

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
        if self._unwatch_due:
            self._send_due_unwatches()
        return self._call(method, params)

    def _call(self, method: str, params: dict[str, Any]) -> Any:
        tail = protocol.encode_tail(method, params)
        allowance = protocol.call_allowance(self.timeout, method, params)
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
                self._send(protocol.request_line(rid, tail), rid, deadline, method)
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
                except OSError:
                    exact = True  # a send() that fails wrote nothing
                    raise
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
                    return protocol.parse_line(line, self.path, self._corr)
                continue
            self._scanned = len(self._buf)
            if len(self._buf) > protocol.MAX_RESPONSE_LINE:
                raise ConnectionLost(f"a response from {self.path} is too long")
            if self._sock.fileno() < 0:
                raise ConnectionLost(self._broken or f"the client of {self.path} is closed")
            try:
                data = self._sock.recv(protocol.RECEIVE_CHUNK)
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
            self._buffer_notification(msg)
            return
        owner = self._corr.route(msg["id"], "error" in msg)
        if owner is not None and owner in self._waiting:
            self._results[owner] = msg

    def _buffer_notification(self, msg: dict[str, Any]) -> None:
        """Queue a notification, at most :data:`WATCH_BUFFER` per subscription: one whose
        reader falls that far behind ends with an ``overflow`` (as the daemon ends one)."""
        params = msg.get("params")
        sub = params.get("subscription") if isinstance(params, dict) else None
        if not isinstance(sub, int):
            self._notifications.append(msg)
            return
        if sub in self._overflowed:
            return  # ended: what still comes before the daemon hears of it is dropped
        if msg.get("method") == "overflow":
            self._overflowed.add(sub)
        elif protocol.is_initial(msg):
            self._notifications.append(msg)  # not counted (see protocol.is_initial)
            return
        elif self._queued.get(sub, 0) >= protocol.WATCH_BUFFER:
            self._overflowed.add(sub)
            self._unwatch_due.add(sub)
            msg = {"jsonrpc": "2.0", "method": "overflow", "params": {"subscription": sub}}
        self._queued[sub] = self._queued.get(sub, 0) + 1
        self._notifications.append(msg)

    def _next_notification(self) -> dict[str, Any] | None:
        if not self._notifications:
            return None
        msg = self._notifications.popleft()
        params = msg.get("params")
        sub = params.get("subscription") if isinstance(params, dict) else None
        if isinstance(sub, int) and sub in self._queued and not protocol.is_initial(msg):
            self._queued[sub] -= 1
            if not self._queued[sub]:
                del self._queued[sub]
        return msg

    def notifications(self) -> Iterator[dict[str, Any]]:
        """Notifications (``{"method": "change"|"overflow", "params": {...}}``), blocking,
        without the timeout; :class:`ConnectionLost` when the connection ends.

        Each subscription buffers at most :data:`~syncd.client.WATCH_BUFFER` notifications
        here; one whose notifications are not read (a program that watches and keeps calling)
        ends with an ``overflow`` notification, as when the daemon ends it: watch again with
        ``initial=True`` to catch up.
        """
        while True:
            msg = self._await(self._next_notification, None, "notifications")
            self._send_due_unwatches()
            yield msg

    def _send_due_unwatches(self) -> None:
        """Unwatch the subscriptions ended here (buffer full): else the daemon would go on
        sending, and rendering, their changes for nothing."""
        with self._cond:
            due, self._unwatch_due = self._unwatch_due, set()
        for sub in sorted(due):
            with suppress(ClientError):
                self._call("unwatch", {"subscription": sub})

    # typed methods ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``status``: ``{device_id, name, version, listen, peers_connected, namespaces}``."""
        return protocol.result_object(self.call("status"), "status")

    def get(self, ns: str, key: str, conflicts: bool = False) -> dict[str, Any]:
        """``get``: ``{exists, value}`` (and ``conflicts: [{path, values}]`` if asked)."""
        if conflicts:
            return protocol.result_object(self.call("get", ns=ns, key=key, conflicts=True), "get")
        return protocol.result_object(self.call("get", ns=ns, key=key), "get")

    def put(self, ns: str, key: str, value: dict[str, Any]) -> None:
        """``put``: make the document equal to ``value``; returns once durable."""
        self.call("put", ns=ns, key=key, value=value)

    def patch(self, ns: str, key: str, ops: builtins.list[dict[str, Any]]) -> None:
        """``patch``: apply ``ops`` atomically; returns once durable."""
        self.call("patch", ns=ns, key=key, ops=ops)

    def delete(self, ns: str, key: str) -> bool:
        """``delete``; whether the document existed."""
        return bool(protocol.result_field(self.call("delete", ns=ns, key=key), "delete", "existed"))

    def list(self, ns: str, prefix: str = "") -> builtins.list[str]:
        """``list``: the keys under ``prefix``, sorted."""
        keys = protocol.result_field(self.call("list", ns=ns, prefix=prefix), "list", "keys")
        return builtins.list(keys)

    def watch(self, ns: str, prefix: str = "", initial: bool = False) -> int:
        """``watch``: the subscription id; read the changes with :meth:`notifications`."""
        result = self.call("watch", ns=ns, prefix=prefix, initial=initial)
        return int(protocol.result_field(result, "watch", "subscription"))

    def unwatch(self, subscription: int) -> None:
        """``unwatch``: end a subscription (:class:`NotFound` if it is not one)."""
        self.call("unwatch", subscription=subscription)

    def peers(self) -> dict[str, Any]:
        """``peers``: ``{peers: [{id, name, trusted, connected, addresses, last_seen}],
        pending: [...]}``."""
        return protocol.result_object(self.call("peers"), "peers")

    def trust(
        self, device_id: str, name: str | None = None, addresses: Iterable[str] | None = None
    ) -> None:
        """``trust``: trust a device (None keeps its current name/addresses)."""
        self.call("trust", **protocol.trust_params(device_id, name, addresses))

    def untrust(self, device_id: str) -> None:
        """``untrust``: forget a device and its shares (:class:`NotFound` if unknown)."""
        self.call("untrust", device_id=device_id)

    def share(self, ns: str, devices: Iterable[str]) -> None:
        """``share``: share ``ns`` with trusted devices."""
        self.call("share", ns=ns, devices=protocol.device_list(devices))

    def unshare(self, ns: str, devices: Iterable[str]) -> None:
        """``unshare``: stop sharing ``ns`` with devices."""
        self.call("unshare", ns=ns, devices=protocol.device_list(devices))

    def namespaces(self) -> builtins.list[dict[str, Any]]:
        """``namespaces``: ``[{ns, devices, documents}]``, sorted by name."""
        result = protocol.result_field(self.call("namespaces"), "namespaces", "namespaces")
        return builtins.list(result)

    def sync(self, ns: str, timeout_s: float | None = None) -> dict[str, Any]:
        """``sync``: ``{acked_by, pending}`` once connected devices sharing ``ns`` acknowledged
        every local change, or after ``timeout_s`` (daemon default 30) with laggards in
        ``pending``. The client's timeout is extended by that wait."""
        return protocol.result_object(
            self.call("sync", **protocol.sync_params(ns, timeout_s)), "sync"
        )
