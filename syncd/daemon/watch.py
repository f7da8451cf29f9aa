"""Watch subscriptions: fan committed changes out to clients without ever blocking a writer.

The store calls :meth:`WatchHub.publish` (synchronously, in the trio thread) after each commit.
Publishing appends the change to every matching subscription's bounded queue and returns; a
subscription whose queue is full is marked *overflowed*, its queue is dropped, and its pump
sends one ``overflow`` notification and ends. The client may resubscribe with
``initial: true`` to get the current documents again. A queued change is replaced by a newer
one of the same document. So a watcher that never reads costs at most ``watch_queue`` queued
changes (one per document), and writers never wait for it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import trio

from syncd.daemon.store import Change


class Subscription:
    """One client's interest in ``ns`` keys starting with ``prefix``, with a bounded queue."""

    def __init__(self, sub_id: int, ns: str, prefix: str, limit: int) -> None:
        self.id = sub_id
        self.ns = ns
        self.prefix = prefix
        self.limit = limit
        self.queue: dict[str, tuple[int, Change]] = {}
        """Changes not yet sent, the latest per key, in the order of those latest changes."""
        self.pending: set[str] = set()
        """Keys whose initial value (``initial: true``) is still to be read: their changes
        are not queued, since the value read later holds them (a watcher must not overflow
        on its own snapshot while documents are being written)."""
        self.pending_deleted: dict[str, Change] = {}
        """The deletion of a pending key, if that was its last change (sent if the document
        is then gone, so that the watcher hears of it)."""
        self.overflowed = False
        self.closed = False
        self._wakeup = trio.Event()

    def matches(self, change: Change) -> bool:
        """Whether the change is for this subscription's namespace and prefix."""
        return change.ns == self.ns and change.key.startswith(self.prefix)

    def offer(self, seq: int, change: Change) -> None:
        """Queue a change without blocking; overflow when the queue is full.

        A change replaces a queued one of the same key (whose effect it includes): a watcher
        that falls behind holds one change per document, not one per keystroke, and the
        limit counts documents.
        """
        if self.closed or self.overflowed:
            return
        if change.key in self.pending:
            self._hold(change)
            return
        queue = self.queue
        if queue.pop(change.key, None) is None and len(queue) >= self.limit:
            self.overflowed = True
            queue.clear()
        else:
            queue[change.key] = (seq, change)
        self._wakeup.set()

    def start_pending(self, keys: list[str]) -> None:
        """The initial values of ``keys`` are to be sent: from now on their changes wait for
        those values, and what is queued for them already is in them too (a deletion is
        kept, as in :meth:`offer`)."""
        for key in keys:
            queued = self.queue.pop(key, None)
            if queued is not None:
                self._hold(queued[1])
        self.pending.update(keys)

    def _hold(self, change: Change) -> None:
        """A change of a pending key: its initial value will hold it, but a deletion is kept
        (see :attr:`pending_deleted`)."""
        if change.deleted:
            self.pending_deleted[change.key] = change
        else:
            self.pending_deleted.pop(change.key, None)

    def return_pending(self, seq: int, key: str, deletion: Change | None) -> None:
        """The initial value of ``key`` could not be read: what it would have held is
        queued as a live change instead (its deletion, or a change whose value is read
        when it is sent)."""
        if key in self.queue:
            return  # a change made during the read is queued: newer, and complete
        self.offer(seq, deletion or Change(self.ns, key, None, False, "local"))

    def take_pending(self, key: str) -> Change | None:
        """``key``'s initial value is being read now: its later changes are queued again.
        Returns its deletion if one came while it was pending."""
        self.pending.discard(key)
        return self.pending_deleted.pop(key, None)

    def close(self) -> None:
        """End the subscription (unwatch or connection gone)."""
        self.closed = True
        self.queue.clear()
        self.pending.clear()
        self.pending_deleted.clear()
        self._wakeup.set()

    async def wait(self) -> None:
        """Wait until there is something to deliver, an overflow, or a close."""
        while not (self.queue or self.overflowed or self.closed):
            await self._wakeup.wait()
            self._wakeup = trio.Event()

    def drain(self) -> Iterator[tuple[int, Change]]:
        """Take every queued change, oldest first."""
        queue = self.queue
        while queue:
            key = next(iter(queue))
            yield queue.pop(key)


class WatchHub:
    """Every live subscription of the daemon; :meth:`publish` is the store's change listener."""

    def __init__(self) -> None:
        self._subs: dict[int, Subscription] = {}
        self._ids = itertools.count(1)
        self._seq = 0
        self._interests: tuple[tuple[str, str], ...] = ()  # (ns, prefix) of every subscription

    def wants(self, ns: str, key: str) -> bool:
        """Whether some subscription would show a change of ``ns``/``key`` (so the store
        renders its value). Safe from any thread: it reads one immutable snapshot."""
        return any(ns == n and key.startswith(p) for n, p in self._interests)

    def _update_interests(self) -> None:
        self._interests = tuple({(s.ns, s.prefix) for s in self._subs.values()})

    @property
    def seq(self) -> int:
        """Sequence number of the last published change (orders snapshots and changes)."""
        return self._seq

    def subscribe(self, ns: str, prefix: str, limit: int) -> Subscription:
        """Register a new subscription."""
        sub = Subscription(next(self._ids), ns, prefix, limit)
        self._subs[sub.id] = sub
        self._update_interests()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Remove and close a subscription."""
        self._subs.pop(sub.id, None)
        self._update_interests()
        sub.close()

    def publish(self, change: Change) -> None:
        """Queue ``change`` for every matching subscription; never blocks."""
        self._seq += 1
        for sub in self._subs.values():
            if sub.matches(change):
                sub.offer(self._seq, change)

    def __len__(self) -> int:
        return len(self._subs)
