"""The replica from trio: awaitable operations and a change feed, with group commit.

A call queues a request and parks the calling task. One committer task takes everything
queued in a scheduler round as one group and runs it in one of two places:

- on the trio thread itself (:meth:`Writer.run_here`), while batches are fast (a moving
  average under :data:`INLINE_BATCH_MAX_S`): the loop is blocked for that long, but a lone
  write then costs no thread wake-ups at all, which is most of what separates it from a raw
  SQLite commit;
- on the writer thread, when batches are slow (a slow disk's fsync, large documents), or a
  request writes a document stored larger than :data:`INLINE_DOC_MAX_BYTES`, so the loop
  keeps serving while the disk or the CPU works. One ``run_sync_soon`` callback per batch then
  reschedules every task of the batch.

Requests reach the store in the order they were made either way: the committer never runs a
group here while requests it handed to the thread are outstanding. A read made while nothing
is queued runs at once, without waiting for a round, and so does a write made while nothing
is queued and no other task is ready to run (nobody could join its group). Such a call returns
without a scheduler round while none is due (:data:`INLINE_YIELD_MAX_S`). Writes are
reported only once durable, and the committed changes go to subscribers in commit order.

Cancelling a call stops the wait, not the request: a write whose caller was cancelled may
still be applied (and then appears in the change feed).
"""

from __future__ import annotations

import datetime
import importlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

import outcome
import trio

from syncd.crdt import CausalContext, Document
from syncd.replica.errors import ReplicaClosedError
from syncd.replica.model import Change, Delete, Device, NamespaceInfo, Patch, Put, Snapshot
from syncd.replica.store import Store
from syncd.replica.writer import Request, Writer

T = TypeVar("T")
log = logging.getLogger("syncd.replica")
ChangeListener = Callable[[Change], None]


def _trio_run_context() -> Any:
    """trio's run state, to read the run queue's length without building full statistics
    (None with another trio layout: the public statistics are used then)."""
    try:
        return importlib.import_module("trio._core._run").GLOBAL_RUN_CONTEXT
    except (ImportError, AttributeError):  # pragma: no cover
        return None


_RUN_CONTEXT = _trio_run_context()


def others_runnable() -> bool:
    """Whether any task is ready to run (so it could still join the current group).

    ``trio.lowlevel.current_statistics()`` answers this too, but it also counts every task
    waiting on I/O, which costs time in proportion to the open sockets (the daemon's API
    connections) on every write; the length of the run queue is all this needs.
    """
    runq = getattr(getattr(_RUN_CONTEXT, "runner", None), "runq", None)
    if runq is None:
        return trio.lowlevel.current_statistics().tasks_runnable > 0
    return len(runq) > 0


INLINE_BATCH_MAX_S = 0.002
"""Groups run on the trio thread while the writer's average batch time (commit included) is
below this; above it they go to the writer thread until batches are fast again."""
INLINE_YIELD_MAX_S = 0.001
"""A call run at once on the trio thread returns without a scheduler round (a round costs a
lone writer ~5 % of its CPU per write, for nothing when no other task waits), unless another
task is ready to run or the calls run at once have gone this long without one: so a task
that writes in a loop keeps others from their I/O for at most about this long (plus one
write, which blocks the loop anyway). Most callers wait for I/O between calls (the API
server reads the next request), which is a scheduler round of its own."""

_now = time.perf_counter  # (tests replace it)

INLINE_DOC_MAX_BYTES = 256 * 1024
"""A write to a document this large (stored) goes to the writer thread even when batches are
fast: rewriting a large text (a put's diff) can take a good part of a second, which the
event loop, and every other client, would wait for."""
INLINE_WEIGHT_MAX = 1024
"""...and so does a put or patch whose JSON weighs more than this (:func:`json_weight`): a
put diffs each string or array it gives a text or list field, which takes up to half a
second for a text of a few thousand characters rewritten in many places (the diff gives up
at ``diff.MAX_EDIT_DISTANCE``), and any write costs in proportion to the fields and items it
carries, whatever the document's stored size."""


def json_weight(value: Any, limit: int = INLINE_WEIGHT_MAX) -> int:
    """A measure of the work a JSON value brings to a write: one per object member and array
    item, the length of each string; counting stops once past ``limit``."""
    weight = 0
    todo = [value]
    while todo and weight <= limit:
        item = todo.pop()
        t = type(item)
        if t is dict:
            weight += len(item)
            todo.extend(item.values())
        elif t is list:
            weight += len(item)
            todo.extend(item)
        elif t is str:
            weight += len(item)
    return weight


def patch_weight(ops: Any) -> int:
    """:func:`json_weight` of what a patch's operations carry (values, items, text), plus one
    per operation: a patch of many keystrokes is light, one inserting a long text is not."""
    if type(ops) is not list:
        return 0
    weight = len(ops)
    for op in ops:
        if weight > INLINE_WEIGHT_MAX:
            break
        if type(op) is dict:
            for member in ("value", "values", "text"):
                if member in op:
                    weight += json_weight(op[member])
    return weight


class Subscription:
    """A bounded stream of committed changes matching ``ns`` and ``prefix``.

    Iterate it (``async for change in sub``). If the subscriber falls more than ``max_buffer``
    changes behind, the stream ends early with :attr:`overflowed` set: the subscriber missed
    changes and must resynchronise (e.g. re-read what it watches).
    """

    def __init__(self, replica: AsyncReplica, ns: str | None, prefix: str, max_buffer: int):
        self.ns = ns
        self.prefix = prefix
        self.overflowed = False
        self._replica = replica
        self._send, self._receive = trio.open_memory_channel[Change](max_buffer)

    def _offer(self, change: Change) -> None:
        if self.overflowed or (self.ns is not None and change.ns != self.ns):
            return
        if not change.key.startswith(self.prefix):
            return
        try:
            self._send.send_nowait(change)
        except trio.WouldBlock:
            self.overflowed = True
            self._send.close()
        except trio.ClosedResourceError:
            pass

    def close(self) -> None:
        """Stop receiving changes."""
        self._replica._subscriptions.discard(self)
        self._send.close()

    def __aiter__(self) -> AsyncIterator[Change]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Change]:
        async for change in self._receive:
            yield change

    async def receive(self) -> Change:
        """The next change; raises ``trio.EndOfChannel`` when closed or overflowed."""
        return await self._receive.receive()


class _TrioSink:
    """Delivers a batch's outcomes and changes into trio with one callback per batch."""

    def __init__(self, replica: AsyncReplica, token: trio.lowlevel.TrioToken) -> None:
        self._replica = replica
        self._token = token
        self._trio_thread = threading.get_ident()

    def batch_done(
        self, done: list[tuple[Request, outcome.Outcome[Any]]], changes: list[Change]
    ) -> None:
        if threading.get_ident() == self._trio_thread:  # a group run here by the committer
            self._replica._deliver(done, changes)
            return
        with suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._replica._deliver_from_thread, done, changes)

    def in_trio(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the trio thread: now if this is it, else as soon as it can."""
        if threading.get_ident() == self._trio_thread:
            fn()
            return
        with suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn)


class _BoxSink:
    """Keeps the outcome of a request run on the calling thread."""

    def __init__(self, box: list[outcome.Outcome[Any]]) -> None:
        self._box = box

    def batch_done(
        self, done: list[tuple[Request, outcome.Outcome[Any]]], changes: list[Change]
    ) -> None:
        self._box.extend(result for _, result in done)


class AsyncReplica:
    """The replica for trio code; open with :func:`open_replica`."""

    def __init__(self, writer: Writer, token: trio.lowlevel.TrioToken) -> None:
        self._writer = writer
        self.replica_id = writer.store.replica_id
        self.path = writer.store.path
        self._sink = _TrioSink(self, token)
        self._subscriptions: set[Subscription] = set()
        self._listeners: list[ChangeListener] = []
        self._queued: list[Request] = []
        self._outstanding = 0  # requests handed to the writer thread, not yet reported
        self._committer: trio.lowlevel.Task | None = None  # set while it is parked
        self._closing = False
        self._drained = trio.Event()
        self._yielded_at = 0.0  # when a call run at once last ended with a scheduler round
        writer.add_listener(self._sink)

    @property
    def commits_fast(self) -> bool:
        """Whether groups run on the trio thread now: batches average under the limit, and
        no group given to the writer thread is unfinished (order comes first)."""
        return self._writer.stats.batch_s_avg < INLINE_BATCH_MAX_S and not self._outstanding

    @property
    def problem(self) -> str | None:
        """What is wrong with the replica now, in one line (commits failing: since when, and
        the latest error), or None."""
        failing = self._writer.failing
        if failing is None:
            return None
        since, error = failing
        when = datetime.datetime.fromtimestamp(since).isoformat(sep=" ", timespec="seconds")
        return f"writes are refused since {when}: {' '.join(error.splitlines())}"

    def on_problem(self, listener: Callable[[str | None], None] | None) -> None:
        """Call ``listener(problem)`` in the trio thread whenever :attr:`problem` starts or
        ends (None: no more calls). It must not block."""
        if listener is None:
            self._writer.on_failing = None
            return

        def tell() -> None:
            # (Run by trio itself when the writer thread asks: an exception here would end
            # the whole run, as trio's internal error.)
            try:
                listener(self.problem)
            except Exception:
                log.exception("the listener of the replica's problems failed")

        self._writer.on_failing = lambda: self._sink.in_trio(tell)

    @property
    def writer(self) -> Writer:
        """The writer thread (its ``stats`` count batches and commits)."""
        return self._writer

    # -- plumbing --------------------------------------------------------------------------------

    async def call(
        self, fn: Callable[[Store], T], doc: tuple[str, str] | None = None, heavy: bool = False
    ) -> T:
        """Run ``fn(store)`` in the next group; return once that group has committed.

        ``doc``: the ``(ns, key)`` that ``fn`` writes, if known (lets the writer load the
        documents of a batch together). ``heavy``: ``fn`` may take long whatever the
        document's size, so it runs on the writer thread.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closing:
            raise ReplicaClosedError(f"{self.path}: the replica is closed")
        if (
            not self._queued
            and not self._outstanding
            and self.commits_fast
            and not others_runnable()
            and not heavy
            and not self._large(doc)
        ):
            # Nobody else can make a call before this one would commit (no other task is
            # ready to run): commit it at once rather than through the committer.
            done = self._run_now(fn, doc)
            if done is not None:
                await self._after_inline()
                return done.unwrap()
        request = Request(fn, self._sink, trio.lowlevel.current_task(), doc, heavy)
        self._queue(request)

        def abort(_: Any) -> trio.lowlevel.Abort:
            request.abandoned = True
            return trio.lowlevel.Abort.SUCCEEDED

        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    async def read(self, fn: Callable[[Store], T]) -> T:
        """Run ``fn(store)``, which must not write; at once if nothing is queued or running."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._queued and not self._outstanding and not self._closing:
            done = self._run_now(fn)
            if done is not None:
                await self._after_inline()
                return done.unwrap()
        return await self.call(fn)

    async def _after_inline(self) -> None:
        """End a call run at once: with a scheduler round only when one is due
        (:data:`INLINE_YIELD_MAX_S`)."""
        if others_runnable() or _now() - self._yielded_at >= INLINE_YIELD_MAX_S:
            await trio.lowlevel.cancel_shielded_checkpoint()
            self._yielded_at = _now()

    def _run_now(
        self, fn: Callable[[Store], T], doc: tuple[str, str] | None = None
    ) -> outcome.Outcome[T] | None:
        """Run ``fn`` as a group of its own on this thread; None if the writer is busy."""
        box: list[outcome.Outcome[T]] = []
        return box[0] if self._writer.run_here([Request(fn, _BoxSink(box), None, doc)]) else None

    def _large(self, doc: tuple[str, str] | None) -> bool:
        """Whether a write to ``doc`` should leave the event loop (:data:`INLINE_DOC_MAX_BYTES`).

        Called only while the writer thread has nothing outstanding (it reads the cache)."""
        return doc is not None and self._writer.store.known_bytes(*doc) >= INLINE_DOC_MAX_BYTES

    def _queue(self, request: Request) -> None:
        self._queued.append(request)
        committer, self._committer = self._committer, None
        if committer is not None:
            trio.lowlevel.reschedule(committer)

    @trio.lowlevel.enable_ki_protection
    async def _commit_loop(self) -> None:
        """The committer task: run each round's queued requests as one group."""
        try:
            await self._commit_rounds()
        finally:
            # Cancelled at close (nothing is queued then), or a bug: fail what is left.
            self._closing = True
            left, self._queued = self._queued, []
            closed = ReplicaClosedError(f"{self.path}: the replica is closed")
            self._deliver([(r, outcome.Error(closed)) for r in left], [])
            self._drained.set()

    async def _commit_rounds(self) -> None:
        while True:
            if not self._queued:
                if self._closing and not self._outstanding:
                    self._drained.set()
                self._committer = trio.lowlevel.current_task()
                # Woken by the first call of a round; the others of its round queue before
                # this task runs again.
                await trio.lowlevel.wait_task_rescheduled(self._abort_park)
            group, self._queued = self._queued, []
            writer = self._writer
            if (
                not self.commits_fast  # (first: _large reads the store, idle only then)
                or any(request.heavy or self._large(request.doc) for request in group)
                or not writer.run_here(group)
            ):
                for i, request in enumerate(group):
                    try:
                        writer.submit(request)
                    except ReplicaClosedError as exc:
                        self._deliver([(r, outcome.Error(exc)) for r in group[i:]], [])
                        break
                    self._outstanding += 1

    def _abort_park(self, _: Any) -> trio.lowlevel.Abort:
        self._committer = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _deliver(
        self, done: list[tuple[Request, outcome.Outcome[Any]]], changes: list[Change]
    ) -> None:
        reschedule = trio.lowlevel.reschedule
        for request, result in done:
            if not request.abandoned:
                reschedule(request.waiter, result)
        if not changes:
            return
        subs = list(self._subscriptions)
        listeners = self._listeners
        for change in changes:
            for sub in subs:
                sub._offer(change)
            for listener in listeners:
                listener(change)

    def _deliver_from_thread(
        self, done: list[tuple[Request, outcome.Outcome[Any]]], changes: list[Change]
    ) -> None:
        self._outstanding -= len(done)
        if self._closing and not self._outstanding and not self._queued:
            self._drained.set()
        self._deliver(done, changes)

    def subscribe(
        self, ns: str | None = None, prefix: str = "", *, max_buffer: int = 1024
    ) -> Subscription:
        """A :class:`Subscription` to committed changes (all namespaces when ``ns`` is None)."""
        sub = Subscription(self, ns, prefix, max_buffer)
        self._subscriptions.add(sub)
        return sub

    def set_value_filter(self, wants: Callable[[str, str], bool] | None) -> None:
        """Render the ``value`` of a change only when ``wants(ns, key)`` (see
        ``Store.wants_value``; it is called on the writer thread too, so it must be
        thread-safe and quick); None: always."""
        self._writer.store.wants_value = wants

    def add_change_listener(self, listener: ChangeListener) -> Callable[[], None]:
        """Call ``listener(change)`` in the trio thread after every commit, in commit order.

        It must not block. Returns a function that removes it.
        """
        self._listeners = [*self._listeners, listener]

        def remove() -> None:
            self._listeners = [x for x in self._listeners if x is not listener]

        return remove

    async def aclose(self) -> None:
        """Finish queued work, close the database and stop the writer thread.

        Calls made from now on raise :class:`ReplicaClosedError`.
        """
        self._closing = True
        if not self._queued and not self._outstanding:
            self._drained.set()
        await self._drained.wait()
        for sub in list(self._subscriptions):
            sub.close()
        await trio.to_thread.run_sync(self._writer.close)

    # -- documents -------------------------------------------------------------------------------

    async def get(self, ns: str, key: str, *, conflicts: bool = False) -> Snapshot:
        """The document (value None when absent or deleted)."""
        return await self.read(lambda s: s.get(ns, key, conflicts=conflicts))

    async def put(self, ns: str, key: str, value: dict[str, Any]) -> Change:
        """Make the document equal to ``value``; returns once durable."""
        heavy = json_weight(value) > INLINE_WEIGHT_MAX
        return await self.call(lambda s: s.apply_local(ns, key, Put(value)), (ns, key), heavy)

    async def patch(self, ns: str, key: str, ops: list[Any]) -> Change:
        """Apply the JSON ``ops`` atomically; returns once durable."""
        heavy = patch_weight(ops) > INLINE_WEIGHT_MAX
        return await self.call(lambda s: s.apply_local(ns, key, Patch(ops)), (ns, key), heavy)

    async def delete(self, ns: str, key: str) -> Change:
        """Delete the document (``change.existed`` tells whether it existed)."""
        return await self.call(lambda s: s.apply_local(ns, key, Delete()), (ns, key))

    async def list_keys(self, ns: str, prefix: str = "") -> list[str]:
        """Keys of the existing documents of ``ns`` starting with ``prefix``, sorted."""
        return await self.read(lambda s: s.list_keys(ns, prefix))

    # -- sync ------------------------------------------------------------------------------------

    async def apply_remote(
        self, ns: str, deltas: Sequence[tuple[str, Document]], origin: str
    ) -> list[tuple[str, Document]]:
        """Join a peer's deltas durably; returns the new parts (see :meth:`Store.apply_remote`)."""
        return await self.call(lambda s: s.apply_remote(ns, deltas, origin))

    async def context(self, ns: str) -> CausalContext:
        """A copy of the namespace's causal context."""
        return await self.read(lambda s: s.context(ns))

    async def document(self, ns: str, key: str) -> Document | None:
        """A copy of the stored document state (None if never stored)."""
        return await self.read(lambda s: s.document(ns, key))

    async def load_peer_state(self, peer: str, ns: str) -> bytes | None:
        """Opaque sync metadata stored for (peer, namespace)."""
        return await self.read(lambda s: s.load_peer_state(peer, ns))

    async def save_peer_state(self, peer: str, ns: str, data: bytes) -> None:
        """Store opaque sync metadata for (peer, namespace), durably."""
        await self.call(lambda s: s.save_peer_state(peer, ns, data))

    # -- devices and shares ----------------------------------------------------------------------

    async def namespaces(self) -> list[NamespaceInfo]:
        """Every namespace with its devices and document count, sorted by name."""
        return await self.read(lambda s: s.namespaces())

    async def devices(self) -> list[Device]:
        """The trusted devices, sorted by ID."""
        return await self.read(lambda s: s.devices())

    async def trust(
        self, device_id: str, name: str | None = None, addresses: Iterable[str] | None = None
    ) -> None:
        """Trust a device, or update it (None keeps the name or addresses it has)."""
        addrs = None if addresses is None else list(addresses)
        await self.call(lambda s: s.trust(device_id, name, addrs))

    async def untrust(self, device_id: str) -> bool:
        """Forget a device and its shares; True if it was trusted."""
        return await self.call(lambda s: s.untrust(device_id))

    async def device_seen(self, device_id: str, when: float) -> None:
        """Record when a trusted device was last seen (Unix time)."""
        await self.call(lambda s: s.device_seen(device_id, when))

    async def share(self, ns: str, device_ids: Iterable[str]) -> None:
        """Share ``ns`` with trusted devices (``SyncdError`` reason ``not_trusted`` if not)."""
        ids = list(device_ids)
        await self.call(lambda s: s.share(ns, ids))

    async def unshare(self, ns: str, device_ids: Iterable[str]) -> None:
        """Stop sharing ``ns`` with devices."""
        ids = list(device_ids)
        await self.call(lambda s: s.unshare(ns, ids))

    async def shared_with(self, ns: str) -> list[str]:
        """The devices ``ns`` is shared with, sorted."""
        return await self.read(lambda s: s.shared_with(ns))


@asynccontextmanager
async def open_replica(path: Any, **options: Any) -> AsyncIterator[AsyncReplica]:
    """Open the replica at ``path`` (options as for :class:`Store`) for the duration."""
    store = await trio.to_thread.run_sync(lambda: Store(path, **options))
    replica = AsyncReplica(Writer(store), trio.lowlevel.current_trio_token())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(replica._commit_loop)
        try:
            yield replica
        finally:
            with trio.CancelScope(shield=True):
                await replica.aclose()
            nursery.cancel_scope.cancel()
