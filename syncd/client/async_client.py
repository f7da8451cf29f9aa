"""The trio client: :func:`open_client`, :class:`AsyncClient` (pipelined calls) and its
watch subscriptions, :class:`AsyncSubscription`.
"""

from __future__ import annotations

import builtins
import math
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from syncd.client.errors import (
    CallTimeout,
    ClientError,
    ConnectionLost,
    NotFound,
    error_from_response,
)
from syncd.client.protocol import (
    MAX_RESPONSE_LINE,
    RECEIVE_CHUNK,
    WATCH_BUFFER,
    Correlator,
    call_allowance,
    check_timeout,
    device_list,
    encode_tail,
    is_initial,
    not_running,
    parse_line,
    refusal,
    request_line,
    resolve_socket,
    result_field,
    result_object,
    sync_params,
    trust_params,
)
from syncd.daemon.unixsock import peer_uid, short_address


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
    (``{"method": "change", "params": {...}}``). It buffers up to ``buffer`` notifications
    of changes (initial values, which the daemon sends only as fast as they are read from the
    connection, are not counted); when the daemon reports an overflow, or the buffer is full
    because nobody reads, it ends
    with one ``{"method": "overflow", "params": {"subscription": id}}`` (watch again with
    ``initial=True`` to catch up). When the connection is lost, iterating raises
    :class:`ConnectionLost` after the buffered notifications. ``async with`` closes it.
    """

    def __init__(self, client: AsyncClient, sub_id: int, buffer: int = WATCH_BUFFER) -> None:
        self.client = client
        self.id = sub_id
        self._send, self._recv = trio.open_memory_channel[dict[str, Any]](math.inf)
        self._buffer = buffer
        self._live = 0  # buffered notifications that count against the buffer
        self._overflowed = False  # ended by an overflow not yet handed out
        self._lost: str | None = None  # ended by the loss of the connection
        self._closed = False

    def _offer(self, msg: dict[str, Any]) -> bool:
        """Buffer a notification without waiting; False when the buffer is full."""
        live = not is_initial(msg)
        if live and self._live >= self._buffer:
            return False
        try:
            self._send.send_nowait(msg)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return True
        self._live += live
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
            msg = await self._recv.receive()
        except trio.EndOfChannel:
            if self._overflowed:
                self._overflowed = False
                return {"jsonrpc": "2.0", "method": "overflow", "params": {"subscription": self.id}}
            if self._lost is not None:
                raise ConnectionLost(self._lost) from None
            raise
        self._live -= not is_initial(msg)
        return msg

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
            try:
                with suppress(NotFound, ConnectionLost):
                    await self.client._call("unwatch", {"subscription": self.id})
            except trio.Cancelled:
                # Closed from a cancelled scope (`async with` left by move_on_after): the
                # daemon must still hear of it, or the subscription would live on there.
                self.client._unwatch_soon(self.id)
                raise

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
    """A trio client from :func:`open_client` (only: its reader runs in that block's
    nursery); concurrent calls are pipelined on one connection. ``timeout`` (seconds, None:
    none) bounds each call, which then raises :class:`CallTimeout`; the connection stays
    usable (a cancelled call still sends the rest of its request line), unless the deadline
    itself cut a request line short: then later calls raise :class:`ConnectionLost`."""

    def __init__(self, stream: trio.SocketStream, path: Path, timeout: float | None = None) -> None:
        self.stream = stream
        self.path = path
        self.timeout = timeout
        self._corr = Correlator()
        self._pending: dict[int, _Slot] = {}
        self._subs: dict[int, AsyncSubscription] = {}
        self._orphan_watches: set[int] = set()  # ids of abandoned `watch` calls
        self._send_lock = trio.Lock()
        self._unusable: str | None = None  # why no more requests can be sent
        self._nursery: trio.Nursery | None = None  # for unwatching overflowed subscriptions
        self._unclaimed: str | None = None  # an error no request was waiting for (a refusal)

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
        tail = encode_tail(method, params)
        self._check_usable()
        allowance = call_allowance(self.timeout, method, params)
        deadline = math.inf if allowance is None else trio.current_time() + allowance
        slot = _Slot(on_result)
        rid: int | None = None
        with trio.CancelScope(deadline=deadline) as scope:
            async with self._send_lock:
                self._check_usable()
                rid = self._corr.add(method)
                self._pending[rid] = slot
                await self._send_request(rid, request_line(rid, tail), deadline, method)
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
                            self._dispatch(parse_line(line, self.path, self._corr))
                except ConnectionLost as exc:
                    reason = str(exc)
                    break
        finally:
            if self._unclaimed is not None:
                reason = f"{reason}: {self._unclaimed}"
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
            error = msg.get("error")
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                self._unclaimed = error["message"]  # e.g. too many connections, then a close
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
        return result_object(await self.call("status"), "status")

    async def get(self, ns: str, key: str, conflicts: bool = False) -> dict[str, Any]:
        """``get``: ``{exists, value}`` (and ``conflicts: [{path, values}]`` if asked)."""
        if conflicts:
            return result_object(await self.call("get", ns=ns, key=key, conflicts=True), "get")
        return result_object(await self.call("get", ns=ns, key=key), "get")

    async def put(self, ns: str, key: str, value: dict[str, Any]) -> None:
        """``put``: make the document equal to ``value``; returns once durable."""
        await self.call("put", ns=ns, key=key, value=value)

    async def patch(self, ns: str, key: str, ops: builtins.list[dict[str, Any]]) -> None:
        """``patch``: apply ``ops`` atomically; returns once durable."""
        await self.call("patch", ns=ns, key=key, ops=ops)

    async def delete(self, ns: str, key: str) -> bool:
        """``delete``; whether the document existed."""
        result = await self.call("delete", ns=ns, key=key)
        return bool(result_field(result, "delete", "existed"))

    async def list(self, ns: str, prefix: str = "") -> builtins.list[str]:
        """``list``: the keys under ``prefix``, sorted."""
        keys = result_field(await self.call("list", ns=ns, prefix=prefix), "list", "keys")
        return builtins.list(keys)

    async def watch(
        self, ns: str, prefix: str = "", initial: bool = False, buffer: int = WATCH_BUFFER
    ) -> AsyncSubscription:
        """``watch``: a subscription buffering up to ``buffer`` notifications (see
        :class:`AsyncSubscription`)."""
        if type(buffer) is not int or buffer < 1:
            raise ValueError(f"buffer must be a positive int, not {buffer!r}")
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
        """``unwatch`` by id (:meth:`AsyncSubscription.aclose` is the usual way); its
        :class:`AsyncSubscription`, if any, ends too."""
        try:
            await self.call("unwatch", subscription=subscription)
        except NotFound:
            self._end_subscription(subscription)  # the daemon had ended it already
            raise
        self._end_subscription(subscription)

    def _end_subscription(self, sub_id: int) -> None:
        sub = self._subs.pop(sub_id, None)
        if sub is not None:
            sub._closed = True
            sub._end()

    async def peers(self) -> dict[str, Any]:
        """``peers``: ``{peers: [{id, name, trusted, connected, addresses, last_seen}],
        pending: [...]}``."""
        return result_object(await self.call("peers"), "peers")

    async def trust(
        self, device_id: str, name: str | None = None, addresses: Iterable[str] | None = None
    ) -> None:
        """``trust``: trust a device (None keeps its current name/addresses)."""
        await self.call("trust", **trust_params(device_id, name, addresses))

    async def untrust(self, device_id: str) -> None:
        """``untrust``: forget a device and its shares (:class:`NotFound` if unknown)."""
        await self.call("untrust", device_id=device_id)

    async def share(self, ns: str, devices: Iterable[str]) -> None:
        """``share``: share ``ns`` with trusted devices."""
        await self.call("share", ns=ns, devices=device_list(devices))

    async def unshare(self, ns: str, devices: Iterable[str]) -> None:
        """``unshare``: stop sharing ``ns`` with devices."""
        await self.call("unshare", ns=ns, devices=device_list(devices))

    async def namespaces(self) -> builtins.list[dict[str, Any]]:
        """``namespaces``: ``[{ns, devices, documents}]``, sorted by name."""
        result = result_field(await self.call("namespaces"), "namespaces", "namespaces")
        return builtins.list(result)

    async def sync(self, ns: str, timeout_s: float | None = None) -> dict[str, Any]:
        """``sync``: ``{acked_by, pending}`` (see :meth:`Client.sync`)."""
        return result_object(await self.call("sync", **sync_params(ns, timeout_s)), "sync")


async def _connect(
    path: Path, limit_s: float | None, home: str | os.PathLike[str] | None
) -> trio.SocketStream:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with trio.move_on_after(math.inf if limit_s is None else limit_s) as scope:
            with short_address(path) as addr:
                await sock.connect(addr)
    except OSError as exc:
        sock.close()
        raise not_running(path, exc, home) from None
    except BaseException:
        sock.close()
        raise
    if scope.cancelled_caught:
        sock.close()
        raise CallTimeout(f"connecting to {path} timed out after {limit_s} s")
    try:
        uid = peer_uid(sock)
    except OSError as exc:
        sock.close()
        raise not_running(path, exc, home) from None
    refused = refusal(uid, path)
    if refused is not None:
        sock.close()
        raise refused
    return trio.SocketStream(sock)


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
    path = resolve_socket(socket_path, home)
    stream = await _connect(path, check_timeout(timeout), home)
    client = AsyncClient(stream, path, timeout)
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            client._nursery = nursery
            nursery.start_soon(client._reader)
            try:
                yield client
            except BaseException as exc:
                # Raised below, outside the nursery: inside, it would come out wrapped in
                # the nursery's group (and a group of the block's own, in another one).
                body_error = exc
            finally:
                client._lose(f"the client of {path} is closed")
                nursery.cancel_scope.cancel()
    except BaseException as exc:
        # Leaving the nursery inside a cancelled scope raises Cancelled: the block's own
        # exception, if any, is what the caller must see, not that.
        if body_error is None or not _only_cancellation(exc):
            raise
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()
    if body_error is not None:
        raise body_error


def _only_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cancellation(e) for e in exc.exceptions)
    return isinstance(exc, trio.Cancelled)
