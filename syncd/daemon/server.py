"""The local API server: JSON-RPC 2.0 lines over the Unix socket.

Per connection: one reader splits lines (bounded, see :class:`LineSplitter`) and starts a
task per request, up to ``max_in_flight`` at once (then it stops reading, so a client that
pipelines without reading responses is slowed, not buffered); one writer sends responses and
notifications, coalescing what is ready into one write. Responses go out in the order of the
requests, except that of ``sync``, which may wait for peers and so is sent when it is ready
(every response carries its request's ``id``). Watch subscriptions are pumped by one task each
from their bounded queue (see :mod:`syncd.daemon.watch`).

A client that goes away does not cancel what it sent: every request read before the end of
the stream still runs (a write still commits), and its response is dropped.

The common case of a client that waits for each answer takes a shorter path: while commits
are fast, a lone request that only needs the store is handled by the reader itself, and its
answer is written to the socket at once when nothing else is queued (the writer task only
sends what did not fit).

Shutdown (:meth:`ApiServer.shutdown`): stop accepting, stop reading every connection, let the
requests in flight finish (writes are shielded, so an accepted write always commits) within a
grace period, give their responses a moment to be read, close.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import logging
import os
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from syncd.config import ApiConfig
from syncd.daemon.methods import Service
from syncd.daemon.rpc import (
    APPLICATION_ERROR,
    INTERNAL_ERROR,
    Invalid,
    LineSplitter,
    Message,
    RpcError,
    encode,
    encode_notification,
    error_object,
    parse_message,
    result_object,
)
from syncd.daemon.store import Change, Store
from syncd.daemon.unixsock import peer_credentials
from syncd.daemon.watch import Subscription, WatchHub
from syncd.errors import SyncdError
from syncd.logrepeat import RepeatLimiter

log = logging.getLogger("syncd.api")

MAX_SUBSCRIPTIONS_PER_CONNECTION = 64
ACCEPT_CAPACITY_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
"""accept() errors that mean the process or system is out of a resource: wait and retry."""
ACCEPT_RETRY_S = 0.1
MAX_REFUSALS_IN_PROGRESS = 32
"""Refused connections that get their one-line reason at once; past that they are closed
without it (a client flooding the socket must not exhaust the daemon's descriptors)."""
RECEIVE_CHUNK = 256 * 1024
NOTIFY_BACKLOG_BYTES = 1024 * 1024
"""A subscription takes its next change out of its queue only while less than this much of
its connection's notifications is queued and unsent, so the changes a watcher does not read
stay in their subscriptions' queues (the latest per document, at most ``watch_queue``), not
in the outgoing channel, whose room is counted in lines (96 by default), each up to a
document's size. Responses do not count: ``max_in_flight`` bounds them."""

# Subscriptions started by the request being handled in this task: their pumps may send only
# after the response carrying their id has been queued.
_announcements: contextvars.ContextVar[list[trio.Event]] = contextvars.ContextVar("announcements")


QUICK_METHODS = frozenset(("get", "put", "patch", "delete", "list", "status", "namespaces"))
"""Methods that return as soon as the store has answered (no waiting on peers or timers)."""

UNORDERED_METHODS = frozenset(("sync",))
"""Methods that may wait long (for peers): their responses do not hold back later ones."""

FLUSH_S = 1.0
"""At shutdown, how long finished requests' responses may wait for a client to read them."""


Parsed = tuple[list[Message], bool]
"""What :func:`parse_message` returns: the messages of a line, and whether it was a batch."""


def _quick(message: Message) -> bool:
    return not isinstance(message, Invalid) and message.method in QUICK_METHODS


def _ordered(messages: list[Message]) -> bool:
    return not any(not isinstance(m, Invalid) and m.method in UNORDERED_METHODS for m in messages)


_BATCH_FULL = RpcError(
    APPLICATION_ERROR,
    "not run: the batch's responses reached api.max_line_bytes",
    reason="too_large",
)


def _encoded(response: dict[str, Any]) -> bytes:
    """One response object as JSON, without the newline (an unencodable result, a bug, is
    answered with -32603 instead)."""
    rid = response.get("id")
    result = response.get("result")
    if type(rid) is int and type(result) is dict and len(result) == 1 and result.get("ok") is True:
        # Most answers (a write's): the bytes the encoder makes, without building one.
        return b'{"jsonrpc":"2.0","id":%d,"result":{"ok":true}}' % rid
    try:
        return encode(response)[:-1]
    except (TypeError, ValueError) as exc:
        log.exception("cannot encode a response")
        err = RpcError(INTERNAL_ERROR, f"internal error: {exc}")
        return encode(error_object(response.get("id"), err))[:-1]


def _refusal(message: str, reason: str) -> bytes:
    return encode(error_object(None, RpcError(APPLICATION_ERROR, message, reason=reason)))


def _change_params(sub: Subscription, change: Change, initial: bool = False) -> dict[str, Any]:
    params: dict[str, Any] = {
        "subscription": sub.id,
        "ns": change.ns,
        "key": change.key,
        "value": change.value,
        "deleted": change.deleted,
        "origin": change.origin,
    }
    if initial:
        params["initial"] = True
    return params


class Connection:
    """One client connection; it is the :class:`Session` its requests run in."""

    def __init__(
        self, server: ApiServer, stream: trio.SocketStream, limits: ApiConfig, name: str = "client"
    ) -> None:
        self.server = server
        self.name = name
        """How the log names the connection (``client pid N``)."""
        self.stream = stream
        self.limits = limits
        self.subs: dict[int, Subscription] = {}
        self._read_scope = trio.CancelScope()
        self._pump_scopes: set[trio.CancelScope] = set()
        self._subs_stopped = False
        self._in_flight = trio.Semaphore(limits.max_in_flight)
        self._lines: deque[bytes | Parsed | None] = deque()
        # Outgoing lines, each marked True for a notification.
        self._send: trio.MemorySendChannel[tuple[bytes, bool]] | None = None
        self._queued = 0  # lines in the outgoing channel
        self._notify_backlog = 0  # bytes of notifications in the channel or being sent
        self._notify_sent = trio.Event()  # set when the writer has sent some
        self._writing = False  # the writer task is sending
        self._peer_gone = False  # sending failed: responses are dropped from now on
        self._work: trio.Nursery | None = None
        # Responses in request order: each line taken gets a number; a finished line's
        # response waits in _held until every earlier line's has gone out.
        self._taken = 0
        self._next_out = 0
        self._held: dict[int, tuple[bytes | None, list[trio.Event], bool]] = {}
        self._flushing = False

    def stop(self) -> None:
        """Stop reading requests and end subscriptions; requests in flight still finish."""
        self._read_scope.cancel()
        self._stop_subscriptions()

    def _stop_subscriptions(self) -> None:
        self._subs_stopped = True
        for scope in self._pump_scopes:
            scope.cancel()

    async def run(self) -> None:
        """Serve the connection until EOF, an I/O error, or :meth:`stop`."""
        # Room for every in-flight request's response (plus notifications): a batch of
        # completions queues its responses without blocking, and the writer sends them in one
        # write instead of waking blocked senders one by one.
        send, recv = trio.open_memory_channel[tuple[bytes, bool]](self.limits.max_in_flight + 32)
        try:
            async with trio.open_nursery() as conn:
                conn.start_soon(self._writer, recv)
                async with send:
                    self._send = send
                    async with trio.open_nursery() as work:
                        self._work = work
                        with self._read_scope:
                            await self._read_loop(work)
                        # EOF or stop: subscriptions end; requests in flight finish.
                        self._stop_subscriptions()
        finally:
            for sub in list(self.subs.values()):
                self.server.hub.unsubscribe(sub)
            self.subs.clear()
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    async def _read_loop(self, work: trio.Nursery) -> None:
        splitter = LineSplitter(self.limits.max_line_bytes)
        while True:
            try:
                data = await self._receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            lines: list[bytes | Parsed | None] = list(splitter.feed(data))
            if (
                len(lines) == 1
                and lines[0] is not None
                and not self._requests_in_flight()
                and self.server.service.store.commits_fast
            ):
                # One request and nothing else in flight (a client waiting for each answer),
                # and the disk keeps up: handle it here rather than in a task of its own.
                # Requests that may wait long are still given a task, so they never hold up
                # the connection. Shielded from stop(), like a request in its own task: it
                # finishes and is answered.
                assert isinstance(lines[0], bytes)
                parsed = parse_message(lines[0])
                if not parsed[1] and _quick(parsed[0][0]):
                    self._in_flight.acquire_nowait()
                    self.server.executing += 1
                    with trio.CancelScope(shield=True):
                        await self._handle_messages(*parsed, self._take())
                    continue
                lines = [parsed]
            for line in lines:
                # No scheduler round per line unless the in-flight limit is reached; the order
                # of requests is kept by _next_line.
                try:
                    self._in_flight.acquire_nowait()
                except trio.WouldBlock:
                    await self._in_flight.acquire()
                self._lines.append(line)
                self.server.executing += 1
                work.start_soon(self._next_line)

    async def _receive(self) -> bytes:
        """``self.stream.receive_some(RECEIVE_CHUNK)``, with the same errors and checkpoints
        (but none before an error), without the layers of trio's generic socket wrappers
        (two context managers, one of them asynchronous), which cost a few µs per request:
        the receive, a checkpoint when data was waiting, else a wait for the socket to be
        readable and the receive again."""
        # (The descriptor's number is safe to keep: only run() closes the stream, once the
        # reader has ended.)
        fd = self.stream.socket.fileno()
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            try:
                data = os.read(fd, RECEIVE_CHUNK)
            except BlockingIOError:
                pass
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
            while True:
                await trio.lowlevel.wait_readable(fd)
                try:
                    return os.read(fd, RECEIVE_CHUNK)
                except BlockingIOError:
                    pass
        except OSError as exc:
            if exc.errno == errno.EBADF:
                raise trio.ClosedResourceError("this socket was already closed") from None
            raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc

    async def _next_line(self) -> None:
        """Handle the oldest line not yet taken.

        Tasks started in one scheduler round may run in any order, so a task is not bound to
        a line when started: each takes the oldest one when it first runs, and runs until its
        request reaches the store without yielding, so the requests of one connection reach
        the store in the order they were sent (a put followed by a get sees the put).
        """
        line = self._lines.popleft()
        seq = self._take()
        if line is None:
            await self._too_long(seq)
        elif isinstance(line, bytes):
            await self._handle_messages(*parse_message(line), seq)
        else:
            await self._handle_messages(*line, seq)

    def _take(self) -> int:
        """The number of the line being taken (the order its response goes out in)."""
        seq = self._taken
        self._taken += 1
        return seq

    async def _too_long(self, seq: int) -> None:
        self.server.line_done()
        err = RpcError(
            APPLICATION_ERROR,
            f"request line longer than {self.limits.max_line_bytes} bytes; discarded",
            reason="too_large",
            limit=self.limits.max_line_bytes,
        )
        await self._finish(seq, encode(error_object(None, err)), [])

    async def _finish(
        self,
        seq: int,
        data: bytes | None,
        announcements: list[trio.Event],
        release: bool = True,
    ) -> None:
        """Send line ``seq``'s response (None: none) once every earlier line's has gone.

        The line's in-flight slot is released (``release``) when its response is sent, so
        responses held back are bounded by ``max_in_flight``; a subscription's announcements
        fire once the response carrying its id is queued.
        """
        self._held[seq] = (data, announcements, release)
        if self._flushing:
            return  # the task sending earlier lines' responses sends this one too
        self._flushing = True
        try:
            while self._next_out in self._held:
                data, events, release = self._held.pop(self._next_out)
                self._next_out += 1
                await self._send_response(data, events, release)
        finally:
            self._flushing = False

    async def _send_response(
        self, data: bytes | None, announcements: list[trio.Event], release: bool
    ) -> None:
        """Send a line's response (if any), then let its subscriptions start and free its slot."""
        try:
            if data is not None:
                await self._respond(data)
        finally:
            for event in announcements:
                event.set()
            if release:
                self._in_flight.release()

    async def _notification_room(self) -> None:
        """Wait until less than :data:`NOTIFY_BACKLOG_BYTES` of notifications is unsent (a
        subscription calls this before it takes a change out of its queue)."""
        while self._notify_backlog >= NOTIFY_BACKLOG_BYTES and not self._peer_gone:
            if self._notify_sent.is_set():
                self._notify_sent = trio.Event()
            await self._notify_sent.wait()

    async def _emit(self, data: bytes) -> None:
        """Queue a notification (in order: with no checkpoint before it is queued unless
        the channel is full, where senders wait in turn)."""
        assert self._send is not None
        if self._peer_gone:
            return
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            self._queued += 1
            self._notify_backlog += len(data)
            try:
                await self._send.send((data, True))
            except BaseException:  # not queued (cancelled, or the channel is closed)
                self._queued -= 1
                self._notify_backlog -= len(data)
                raise

    async def _respond(self, data: bytes) -> None:
        """Send or queue a response; without a checkpoint unless the outgoing queue is full.

        When this is the only request in flight and nothing is queued or being sent, the
        response is written straight to the socket (as much as it takes without blocking): no
        wake-up of the writer task for a client that waits for each answer. The rest, if any,
        is queued in order. Answers to pipelined requests are queued, so that the writer task
        sends those of a group commit with one write.
        """
        assert self._send is not None
        if self._peer_gone:
            return
        # The caller's own request holds one slot.
        if not self._queued and not self._writing and self._requests_in_flight() <= 1:
            try:
                sent = os.write(self.stream.socket.fileno(), data)
            except OSError:  # full (EAGAIN), or broken: the writer task finds out which
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            self._queued += 1
            try:
                try:
                    self._send.send_nowait((data, False))
                except trio.WouldBlock:
                    await self._send.send((data, False))
            except BaseException:  # not queued (cancelled, or the channel is closed)
                self._queued -= 1
                raise

    def _requests_in_flight(self) -> int:
        return self.limits.max_in_flight - self._in_flight.value

    async def _handle_messages(self, messages: list[Message], is_batch: bool, seq: int) -> None:
        announcements: list[trio.Event] = []
        _announcements.set(announcements)
        ordered = _ordered(messages)
        if not ordered:
            # Its response goes out whenever it is ready; later lines need not wait for it.
            # (The line keeps its in-flight slot while it runs.)
            await self._finish(seq, None, [], release=False)
        data = None
        try:
            data = await self._run_messages(messages, is_batch)
        finally:
            self.server.line_done()
            if ordered:
                await self._finish(seq, data, announcements)
            else:
                await self._send_response(data, announcements, True)

    async def _run_messages(self, messages: list[Message], is_batch: bool) -> bytes | None:
        """Run a line's requests; its response line (None when nothing is answered)."""
        parts: list[bytes] = []  # each response encoded once, without its newline
        used = 0

        def answer(response: dict[str, Any]) -> None:
            nonlocal used
            parts.append(_encoded(response))
            used += len(parts[-1])

        debug = log.isEnabledFor(logging.DEBUG)
        # A batch is one line in flight however many requests it holds: what its response
        # may take is bounded like one request line's. Past that, requests with an id are
        # refused, not run; notifications still run (they add nothing to the response).
        budget = self.limits.max_line_bytes if is_batch else None
        for msg in messages:
            over = budget is not None and used > budget
            if isinstance(msg, Invalid):
                if debug:
                    log.debug("%s: invalid request: %s", self.name, msg.error)
                if not msg.silent:
                    answer(error_object(msg.id, _BATCH_FULL if over else msg.error))
                continue
            if over and not msg.is_notification:
                answer(error_object(msg.id, _BATCH_FULL))
                continue
            started = trio.current_time() if debug else 0.0
            outcome = "ok"
            try:
                result = await self.server.service.call(self, msg.method, msg.params)
                response = result_object(msg.id, result)
            except RpcError as exc:
                response = error_object(msg.id, exc)
                outcome = f"error {exc.code}" + (f" {exc.reason}" if exc.reason else "")
            if debug:
                log.debug(
                    "%s: %s id=%.40s: %s in %.3f ms",
                    self.name,
                    msg.method,
                    "-" if msg.is_notification else json.dumps(msg.id),
                    outcome,
                    (trio.current_time() - started) * 1e3,
                )
            if not msg.is_notification:
                answer(response)
        if not parts:
            return None
        if not is_batch:
            return parts[0] + b"\n"
        return b"[" + b",".join(parts) + b"]\n"

    async def _writer(self, recv: trio.MemoryReceiveChannel[tuple[bytes, bool]]) -> None:
        async with recv:
            async for first, is_notification in recv:
                self._writing = True
                chunks = [first]
                size = len(first)
                notified = size if is_notification else 0
                while size < RECEIVE_CHUNK:
                    try:
                        more, is_notification = recv.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    chunks.append(more)
                    size += len(more)
                    notified += len(more) if is_notification else 0
                self._queued -= len(chunks)
                try:
                    if not self._peer_gone:
                        await self.stream.send_all(b"".join(chunks) if len(chunks) > 1 else first)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    # The client went away. What it sent still runs (a write it sent still
                    # commits); there is nobody left to answer or notify.
                    self._peer_gone = True
                    self._stop_subscriptions()
                finally:
                    self._writing = False
                    if notified:
                        self._notify_backlog -= notified
                        self._notify_sent.set()

    # --- Session -------------------------------------------------------------------------

    async def watch(self, ns: str, prefix: str, initial: bool) -> int:
        """Subscribe this connection to changes of ``ns``/``prefix``."""
        if len(self.subs) >= MAX_SUBSCRIPTIONS_PER_CONNECTION:
            raise RpcError(
                APPLICATION_ERROR,
                f"at most {MAX_SUBSCRIPTIONS_PER_CONNECTION} subscriptions per connection",
                reason="too_many_subscriptions",
            )
        sub = self.server.hub.subscribe(ns, prefix, self.limits.watch_queue)
        self.subs[sub.id] = sub
        keys = None
        if initial:
            # Which documents the snapshot covers is fixed now, as the subscription starts
            # (subscribed first: a change made meanwhile is queued, never lost); a document
            # that a later request creates is a live change, not an initial one.
            try:
                keys = await self.server.service.store.list_keys(ns, prefix)
            except BaseException:
                self.unwatch(sub.id)
                raise
            sub.start_pending(keys)
        announced = trio.Event()
        _announcements.get().append(announced)
        assert self._work is not None
        self._work.start_soon(self._pump, sub, keys, announced)
        return sub.id

    def unwatch(self, sub_id: int) -> bool:
        """End one of this connection's subscriptions."""
        sub = self.subs.pop(sub_id, None)
        if sub is None:
            return False
        self.server.hub.unsubscribe(sub)
        return True

    async def _pump(
        self, sub: Subscription, initial: list[str] | None, announced: trio.Event
    ) -> None:
        scope = trio.CancelScope()
        if self._subs_stopped:
            scope.cancel()
        self._pump_scopes.add(scope)
        try:
            with scope:
                await self._pump_changes(sub, initial, announced)
        except Exception:  # a bug: this subscription ends, the daemon and its clients go on
            log.exception("watch subscription %d failed; ended", sub.id)
            with contextlib.suppress(Exception):
                await self._end_with_overflow(sub)
        finally:
            self._pump_scopes.discard(scope)

    async def _pump_changes(
        self, sub: Subscription, initial: list[str] | None, announced: trio.Event
    ) -> None:
        await announced.wait()  # the {subscription} response goes out first
        snapshot: dict[str, int] = {}
        if initial is not None:
            await self._send_snapshot(sub, initial, snapshot)
        while True:
            await sub.wait()
            if sub.closed:
                return
            if sub.overflowed:
                log.info("watch subscription %d overflowed; ended", sub.id)
                await self._end_with_overflow(sub)
                return
            await self._send_queued(sub, snapshot)

    async def _send_queued(self, sub: Subscription, snapshot: dict[str, int]) -> None:
        """Send the changes queued for ``sub``, each taken out of its queue once there is
        room (:meth:`_notification_room`), but none older than the initial value already
        sent of its document. Stops when ``sub`` ends or overflows (the caller goes on)."""
        changes = sub.drain()
        while True:
            await self._notification_room()
            if sub.closed or sub.overflowed:
                return
            taken = next(changes, None)
            if taken is None:
                return
            seq, change = taken
            if snapshot and snapshot.get(change.key, 0) >= seq:
                continue  # older than what the snapshot already sent
            if change.value is None and not change.deleted:
                # Made while no subscription wanted its value (this one started as the
                # change was being committed): show the current document instead.
                current = await self._current(change)
                if current is None:
                    continue
                if sub.closed:  # (unwatched meanwhile: its answer may have gone out)
                    return
                change = current
            await self._emit(encode_notification("change", _change_params(sub, change)))

    async def _end_with_overflow(self, sub: Subscription) -> None:
        """End ``sub`` and tell its watcher to watch again (``overflow``)."""
        if self.unwatch(sub.id):
            await self._emit(encode_notification("overflow", {"subscription": sub.id}))

    async def _current(self, change: Change) -> Change | None:
        """``change`` with the document's current value (what a later change would show);
        None if it cannot be read (the change is then not shown at all, never half)."""
        try:
            doc = await self.server.service.store.get(change.ns, change.key)
        except SyncdError as exc:
            log.error("watch: cannot read %r: %s", change.key, exc)
            return None
        return Change(change.ns, change.key, doc.value, not doc.exists, change.origin)

    async def _send_snapshot(
        self, sub: Subscription, keys: list[str], snapshot: dict[str, int]
    ) -> None:
        """The current value of each of ``keys`` that still exists, as ``initial`` changes;
        ``snapshot`` records the change feed's position at each read, so that queued changes
        the value already holds are not sent after it."""
        store: Store = self.server.service.store
        for key in keys:
            await self._notification_room()
            if sub.closed or sub.overflowed:
                return
            seq = self.server.hub.seq
            deletion = sub.take_pending(key)  # its changes from now on are queued
            try:
                doc = await store.get(sub.ns, key)
            except SyncdError as exc:  # a damaged document: the others are still sent
                log.error("watch subscription %d: cannot read %r: %s", sub.id, key, exc)
                sub.return_pending(seq, key, deletion)  # tried again as a live change
                continue
            if sub.closed:  # (unwatched during the read: its answer may have gone out)
                return
            if doc.exists:
                snapshot[key] = seq
                change = Change(sub.ns, key, doc.value, False, "local")
                await self._emit(encode_notification("change", _change_params(sub, change, True)))
            elif deletion is not None:  # deleted since the subscription started
                await self._emit(encode_notification("change", _change_params(sub, deletion)))
            # (One deleted after this read: its queued deletion is not skipped.)
            # Changes of documents already sent (or new ones) go out as they come, so that
            # they do not pile up behind a long snapshot.
            await self._send_queued(sub, snapshot)


class ApiServer:
    """Accepts connections on a listening Unix socket and serves each one."""

    def __init__(self, service: Service, hub: WatchHub, limits: Callable[[], ApiConfig]) -> None:
        self.service = service
        self.hub = hub
        self.limits = limits
        self.connections: set[Connection] = set()
        self._accept_scope = trio.CancelScope()
        self._conn_nursery: trio.Nursery | None = None
        self._done = trio.Event()
        self._stopping = False
        self._uid = os.getuid()
        self._refusals = RepeatLimiter(log, "refused connections")
        self._refusing = 0  # refusals being sent (each holds its connection up to 1 s)
        self._accept_failures = RepeatLimiter(log, "failed accepts", logging.ERROR)
        self.executing = 0
        """Lines read and not yet run, on every connection (shutdown waits for them)."""
        self._idle = trio.Event()

    def line_done(self) -> None:
        """A line counted in :attr:`executing` has run."""
        self.executing -= 1
        if not self.executing:
            self._idle.set()

    async def serve(
        self, sock: trio.socket.SocketType, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """Accept and serve until :meth:`shutdown`; closes ``sock`` when accepting stops."""
        listener = trio.SocketListener(sock)
        try:
            async with trio.open_nursery() as nursery:
                self._conn_nursery = nursery
                task_status.started()
                with self._accept_scope:
                    async with listener:
                        while True:
                            try:
                                stream = await listener.accept()
                            except OSError as exc:
                                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                                    raise
                                # Out of file descriptors or memory: the connections that
                                # are open go on; accepting resumes once some have closed.
                                self._accept_failures.note(
                                    f"cannot accept API connections: {exc.strerror} "
                                    f"({len(self.connections)} connections open); retrying",
                                    kind=f"accept errno {exc.errno}",
                                )
                                await trio.sleep(ACCEPT_RETRY_S)
                                continue
                            nursery.start_soon(self._serve_one, stream)
        finally:
            self._done.set()

    async def _serve_one(self, stream: trio.SocketStream) -> None:
        try:
            pid, uid = peer_credentials(stream.socket)
        except OSError:
            await stream.aclose()
            return
        limits = self.limits()
        refusal = None
        if uid != self._uid:
            # Keyed on the uid, not the pid: a client retrying in a loop has a new pid each time.
            self._refusals.note(f"refused API connections from uid {uid}")
            log.debug("refused API connection from uid %d (pid %d)", uid, pid)
            refusal = _refusal(
                f"connection refused: uid {uid} is not the daemon's uid {self._uid}",
                "permission_denied",
            )
        elif len(self.connections) >= limits.max_connections:
            self._refusals.note(f"refused API connection: {len(self.connections)} connections open")
            refusal = _refusal(
                f"too many connections (limit {limits.max_connections})", "too_many_connections"
            )
        if refusal is not None:
            if self._refusing >= MAX_REFUSALS_IN_PROGRESS:
                await stream.aclose()  # no file descriptors held for a flood of refusals
                return
            self._refusing += 1
            try:
                await self._refuse(stream, refusal)
            finally:
                self._refusing -= 1
            return
        if self._stopping:
            await stream.aclose()
            return
        conn = Connection(self, stream, limits, f"client pid {pid}")
        self.connections.add(conn)
        log.debug("%s connected (%d connections)", conn.name, len(self.connections))
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
            log.debug("%s disconnected", conn.name)

    async def _refuse(self, stream: trio.SocketStream, refusal: bytes) -> None:
        """Send one error line, then close without resetting: the client gets to read it."""
        with (
            trio.move_on_after(1),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await stream.send_all(refusal)
            await stream.send_eof()
            drained = 0
            while drained < (1 << 20):
                data = await stream.receive_some(65536)
                if not data:
                    break
                drained += len(data)
        await stream.aclose()

    async def shutdown(self, grace_s: float) -> None:
        """Stop accepting, let the requests read so far run (up to ``grace_s``), give their
        responses up to :data:`FLUSH_S` to be read, then close every connection."""
        self._stopping = True
        self._accept_scope.cancel()
        for conn in list(self.connections):
            conn.stop()
        with trio.move_on_after(grace_s):
            while self.executing:
                self._idle = trio.Event()
                await self._idle.wait()
        if self.executing:
            log.warning("requests still running after %.0f s; cancelling them", grace_s)
        else:
            # A client that does not read its responses must not hold up the exit.
            with trio.move_on_after(FLUSH_S):
                await self._done.wait()
        if not self._done.is_set():
            if self._conn_nursery is not None:
                self._conn_nursery.cancel_scope.cancel()
            await self._done.wait()
