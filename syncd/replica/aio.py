"""The replica from trio: awaitable operations and a change feed, over the writer thread.

A call submits a request to the writer thread and parks the calling task; when the batch it
belongs to has committed, one ``run_sync_soon`` callback per batch reschedules every task of
that batch and feeds the committed changes to subscribers. There is no thread hop per call.

Cancelling a call stops the wait, not the request: a write whose caller was cancelled may
still be applied (and then appears in the change feed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

import outcome
import trio

from syncd.crdt import CausalContext, Document
from syncd.replica.model import Change, Delete, Device, NamespaceInfo, Patch, Put, Snapshot
from syncd.replica.store import Store
from syncd.replica.writer import Request, Writer

T = TypeVar("T")
ChangeListener = Callable[[Change], None]


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

    def batch_done(
        self, done: list[tuple[Request, outcome.Outcome[Any]]], changes: list[Change]
    ) -> None:
        with suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._replica._deliver, done, changes)


class AsyncReplica:
    """The replica for trio code; open with :func:`open_replica`."""

    def __init__(self, writer: Writer, token: trio.lowlevel.TrioToken) -> None:
        self._writer = writer
        self.replica_id = writer.store.replica_id
        self.path = writer.store.path
        self._sink = _TrioSink(self, token)
        self._subscriptions: set[Subscription] = set()
        self._listeners: list[ChangeListener] = []
        writer.add_listener(self._sink)

    @property
    def writer(self) -> Writer:
        """The writer thread (its ``stats`` count batches and commits)."""
        return self._writer

    # -- plumbing --------------------------------------------------------------------------------

    async def call(self, fn: Callable[[Store], T], doc: tuple[str, str] | None = None) -> T:
        """Run ``fn(store)`` on the writer thread; return once its batch has committed.

        ``doc``: the ``(ns, key)`` that ``fn`` writes, if known (lets the writer load the
        documents of a batch together).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        task = trio.lowlevel.current_task()
        request = Request(fn, self._sink, task, doc)
        self._writer.submit(request)

        def abort(_: Any) -> trio.lowlevel.Abort:
            request.abandoned = True
            return trio.lowlevel.Abort.SUCCEEDED

        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

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

    def subscribe(
        self, ns: str | None = None, prefix: str = "", *, max_buffer: int = 1024
    ) -> Subscription:
        """A :class:`Subscription` to committed changes (all namespaces when ``ns`` is None)."""
        sub = Subscription(self, ns, prefix, max_buffer)
        self._subscriptions.add(sub)
        return sub

    def add_change_listener(self, listener: ChangeListener) -> Callable[[], None]:
        """Call ``listener(change)`` in the trio thread after every commit, in commit order.

        It must not block. Returns a function that removes it.
        """
        self._listeners = [*self._listeners, listener]

        def remove() -> None:
            self._listeners = [x for x in self._listeners if x is not listener]

        return remove

    async def aclose(self) -> None:
        """Finish queued work, close the database and stop the writer thread."""
        for sub in list(self._subscriptions):
            sub.close()
        await trio.to_thread.run_sync(self._writer.close)

    # -- documents -------------------------------------------------------------------------------

    async def get(self, ns: str, key: str, *, conflicts: bool = False) -> Snapshot:
        """The document (value None when absent or deleted)."""
        return await self.call(lambda s: s.get(ns, key, conflicts=conflicts))

    async def put(self, ns: str, key: str, value: dict[str, Any]) -> Change:
        """Make the document equal to ``value``; returns once durable."""
        return await self.call(lambda s: s.apply_local(ns, key, Put(value)), (ns, key))

    async def patch(self, ns: str, key: str, ops: list[Any]) -> Change:
        """Apply the JSON ``ops`` atomically; returns once durable."""
        return await self.call(lambda s: s.apply_local(ns, key, Patch(ops)), (ns, key))

    async def delete(self, ns: str, key: str) -> Change:
        """Delete the document (``change.existed`` tells whether it existed)."""
        return await self.call(lambda s: s.apply_local(ns, key, Delete()), (ns, key))

    async def list_keys(self, ns: str, prefix: str = "") -> list[str]:
        """Keys of the existing documents of ``ns`` starting with ``prefix``, sorted."""
        return await self.call(lambda s: s.list_keys(ns, prefix))

    # -- sync ------------------------------------------------------------------------------------

    async def apply_remote(
        self, ns: str, deltas: Sequence[tuple[str, Document]], origin: str
    ) -> list[tuple[str, Document]]:
        """Join a peer's deltas durably; returns the new parts (see :meth:`Store.apply_remote`)."""
        return await self.call(lambda s: s.apply_remote(ns, deltas, origin))

    async def context(self, ns: str) -> CausalContext:
        """A copy of the namespace's causal context."""
        return await self.call(lambda s: s.context(ns))

    async def document(self, ns: str, key: str) -> Document | None:
        """A copy of the stored document state (None if never stored)."""
        return await self.call(lambda s: s.document(ns, key))

    async def load_peer_state(self, peer: str, ns: str) -> bytes | None:
        """Opaque sync metadata stored for (peer, namespace)."""
        return await self.call(lambda s: s.load_peer_state(peer, ns))

    async def save_peer_state(self, peer: str, ns: str, data: bytes) -> None:
        """Store opaque sync metadata for (peer, namespace), durably."""
        await self.call(lambda s: s.save_peer_state(peer, ns, data))

    # -- devices and shares ----------------------------------------------------------------------

    async def namespaces(self) -> list[NamespaceInfo]:
        """Every namespace with its devices and document count, sorted by name."""
        return await self.call(lambda s: s.namespaces())

    async def devices(self) -> list[Device]:
        """The trusted devices, sorted by ID."""
        return await self.call(lambda s: s.devices())

    async def trust(
        self, device_id: str, name: str | None = None, addresses: Iterable[str] = ()
    ) -> None:
        """Trust a device (or update its name and addresses)."""
        addrs = list(addresses)
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
        return await self.call(lambda s: s.shared_with(ns))


@asynccontextmanager
async def open_replica(path: Any, **options: Any) -> AsyncIterator[AsyncReplica]:
    """Open the replica at ``path`` (options as for :class:`Store`) for the duration."""
    store = await trio.to_thread.run_sync(lambda: Store(path, **options))
    replica = AsyncReplica(Writer(store), trio.lowlevel.current_trio_token())
    try:
        yield replica
    finally:
        with trio.CancelScope(shield=True):
            await replica.aclose()
