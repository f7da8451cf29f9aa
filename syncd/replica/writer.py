"""The writer thread: the one owner of the store, committing waiting work in groups.

Callers on any thread :meth:`Writer.submit` requests (a function of the store). The thread
takes every request waiting, runs them all inside one batch (:meth:`Store.begin`) and commits
them with one transaction and one fsync, then reports each request's outcome. While a commit
is being synced, new requests queue up and form the next group, so the more writers wait the
larger the groups get (group commit); a lone write still commits at once, and nobody's write
is reported before it is durable.

A caller may also run a group itself, on its own thread, while the writer thread is idle
(:meth:`Writer.run_here`): the trio side does so when commits are fast, which saves the two
thread wake-ups a request costs (see :mod:`syncd.replica.aio`). One lock makes sure only one
thread uses the store at a time.

Outcomes are handed to the request's *sink* once per batch (not once per request), so a
sink that crosses into trio costs one wake-up per batch. A sink can also be registered to see
every batch's committed changes (the change feed).

Failures: a request that fails cleanly (e.g. a bad patch) fails alone. A request that fails
after changing state poisons the batch: it is rolled back, that request fails and the others
are run again in the next batch (nothing of them had been reported). If the commit itself
fails, every request of the batch fails with that error.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import outcome

from syncd.logrepeat import RepeatLimiter
from syncd.replica.errors import ReplicaClosedError, StoreError
from syncd.replica.model import Change
from syncd.replica.store import Store

T = TypeVar("T")
MAX_BATCH = 512
log = logging.getLogger("syncd.replica")


class Sink(Protocol):
    """Receives a batch's outcomes (and, if registered as a listener, its changes)."""

    def batch_done(
        self, done: list[tuple[Request, outcome.Outcome[Any]]], changes: list[Change]
    ) -> None:
        """Called on the writer thread after each batch; must not block."""
        ...


class Request:
    """One unit of work for the writer: ``fn(store)``; its outcome goes to ``sink``."""

    __slots__ = ("abandoned", "doc", "fn", "heavy", "sink", "waiter")

    def __init__(
        self,
        fn: Callable[[Store], Any],
        sink: Sink,
        waiter: Any = None,
        doc: tuple[str, str] | None = None,
        heavy: bool = False,
    ) -> None:
        self.fn = fn
        self.sink = sink
        self.waiter = waiter
        """Whatever the sink needs to wake the caller (a trio task, an event)."""
        self.doc = doc
        """``(ns, key)`` of the document ``fn`` writes, if known: a hint to load it early."""
        self.heavy = heavy
        """Whether ``fn`` may take long whatever the document's size (see ``aio.py``)."""
        self.abandoned = False
        """Set by a caller that stopped waiting; the request may still run."""


Report = tuple[list[tuple[Request, outcome.Outcome[Any]]], list[Change]]
"""A batch's outcomes for the sinks, and its committed changes for the listeners."""


@dataclass(slots=True)
class WriterStats:
    """Counters for tests and benchmarks."""

    requests: int = 0
    batches: int = 0
    commits: int = 0
    retried: int = 0
    inline_batches: int = 0
    """Batches run by a caller through :meth:`Writer.run_here` rather than by the thread."""
    batch_s_avg: float = 0.0
    """Moving average of the seconds a batch takes, commit included (weight 1/4 to the last)."""


class _ThreadSink:
    """Wakes callers blocked in :meth:`Writer.call` (one ``threading.Event`` each)."""

    def batch_done(
        self, done: list[tuple[Request, outcome.Outcome[Any]]], changes: list[Change]
    ) -> None:
        for req, result in done:
            box, event = req.waiter
            box.append(result)
            event.set()


class Writer:
    """Owns a :class:`Store` on a thread of its own; see the module docstring."""

    def __init__(self, store: Store, *, max_batch: int = MAX_BATCH) -> None:
        self.store = store
        self.max_batch = max_batch
        self.stats = WriterStats()
        self._queue: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._listeners: list[Sink] = []
        self._lock = threading.Lock()
        self._store_lock = threading.Lock()  # held by whoever runs a batch
        self._closed = False
        self._failure: BaseException | None = None
        self._thread_sink = _ThreadSink()
        self.failing: tuple[float, str] | None = None
        """While commits fail: since when (Unix time) and the latest failure; None otherwise."""
        self.on_failing: Callable[[], None] | None = None
        """Called when commits start or stop failing (on the thread that ran the batch, once
        its outcomes are reported; it must not block)."""
        self._failing_changed = False
        self._failures = RepeatLimiter(log, "failed commits", logging.ERROR)
        """Failed commits: at once, then once a minute while the same one repeats, and a line
        when commits succeed again."""
        self._request_failures = RepeatLimiter(log, "failed requests", logging.ERROR)
        """Requests the store failed (a read of a damaged document, ...), likewise."""
        self._worker = threading.Thread(target=self._run, name="syncd-replica-writer", daemon=True)
        self._worker.start()

    # -- callers -------------------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Queue a request (any thread)."""
        with self._lock:
            if self._closed:
                raise ReplicaClosedError(f"{self.store.path}: the replica is closed")
            self._queue.put(request)

    def call(self, fn: Callable[[Store], T]) -> T:
        """Run ``fn(store)`` on the writer thread and wait for its committed result."""
        box: list[outcome.Outcome[T]] = []
        event = threading.Event()
        self.submit(Request(fn, self._thread_sink, (box, event)))
        event.wait()
        return box[0].unwrap()

    def run_here(self, requests: list[Request]) -> bool:
        """Run ``requests`` as group(s) on the calling thread, if the writer thread is idle.

        Returns False without running anything if the thread holds the store or the writer
        is closed (submit them instead). Otherwise every request has run, committed and been
        reported to its sink (on this thread) when it returns True. Requests already
        submitted are not waited for: a caller that needs them ordered before ``requests``
        must not call this while they are outstanding.
        """
        if not self._store_lock.acquire(blocking=False):
            return False
        reports: list[Report] = []
        try:
            if self._closed:
                return False
            pending = requests
            while pending:
                batch, pending = pending[: self.max_batch], pending[self.max_batch :]
                self.stats.inline_batches += 1
                retry = self._run_batch(batch, reports)
                self.stats.retried += len(retry)
                pending = retry + pending
        finally:
            self._store_lock.release()
        self._report(reports)
        return True

    def add_listener(self, sink: Sink) -> None:
        """Show ``sink`` every batch's committed changes (with its own outcomes, if any)."""
        with self._lock:
            self._listeners = [*self._listeners, sink]

    def remove_listener(self, sink: Sink) -> None:
        """Stop showing ``sink`` the changes."""
        with self._lock:
            self._listeners = [s for s in self._listeners if s is not sink]

    def close(self) -> None:
        """Finish the queued requests, close the store and stop the thread (blocking)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)
        self._worker.join()

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        pending: list[Request] = []
        stopping = False
        try:
            while pending or not stopping:
                if not pending:
                    item = self._queue.get()
                    if item is None:
                        stopping = True
                        continue
                    pending.append(item)
                while len(pending) < self.max_batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True
                        break
                    pending.append(item)
                batch, pending = pending[: self.max_batch], pending[self.max_batch :]
                reports: list[Report] = []
                with self._store_lock:
                    retry = self._run_batch(batch, reports)
                # Reported once the store is free again: whoever a report wakes may want it.
                self._report(reports)
                self.stats.retried += len(retry)
                pending = retry + pending
        except BaseException as exc:  # a bug in the writer itself: fail loudly, not silently
            self._failure = exc
            raise
        finally:
            self._shutdown(pending)

    def _run_batch(self, batch: list[Request], reports: list[Report]) -> list[Request]:
        """Run and commit one group; return the requests to run again (after a poisoning).

        What to tell the sinks is appended to ``reports``, for :meth:`_report` once the store
        lock is released.
        """
        started = time.perf_counter()
        store = self.store
        self.stats.batches += 1
        done: list[tuple[Request, outcome.Outcome[Any]]] = []
        if len(batch) > 1:
            docs = [req.doc for req in batch if req.doc is not None]
            if len(docs) > 1:
                store.prefetch(docs)  # a few queries instead of one per document not loaded
        store.begin()
        for i, req in enumerate(batch):
            result = outcome.capture(req.fn, store)
            if isinstance(result, outcome.Error) and isinstance(result.error, StoreError):
                error = result.error
                self._request_failures.note(
                    f"a request failed: {error}", kind=f"{type(error).__name__} {error.reason}"
                )
            if store.poisoned:
                store.rollback()
                reports.append(([(req, result)], []))
                return batch[:i] + batch[i + 1 :]
            done.append((req, result))
        timed = store.has_writes  # reads and no-op writes would make the average look fast
        try:
            changes = store.commit()
        except BaseException as exc:
            # Logged at once, then at most once a minute while the same failure repeats.
            self._failures.note(f"a commit failed, its writes were refused: {exc}")
            if self.failing is not None:
                self.failing = (self.failing[0], str(exc))
            else:
                self.failing = (time.time(), str(exc))
                self._failing_changed = True
            # One outcome each: an outcome can be unwrapped only once.
            reports.append(([(req, outcome.Error(exc)) for req in batch], []))
            changes = None
        stats = self.stats
        if timed:
            stats.batch_s_avg += (time.perf_counter() - started - stats.batch_s_avg) / 4
        if changes is not None:
            if timed:
                self._failures.recovered("commits succeed again")
                if self.failing is not None:
                    self.failing = None
                    self._failing_changed = True
            stats.commits += 1
            stats.requests += len(batch)
            reports.append((done, changes))
        return []

    def _report(self, reports: list[Report]) -> None:
        for done, changes in reports:
            self._deliver(done, changes)
        if self._failing_changed:
            self._tell_failing()

    def _tell_failing(self) -> None:
        """Call :attr:`on_failing` (after the outcomes: a listener that fails loses none)."""
        self._failing_changed = False
        callback = self.on_failing
        if callback is None:
            return
        try:
            callback()
        except Exception:
            log.exception("the listener of failing commits failed")

    def _deliver(
        self, done: list[tuple[Request, outcome.Outcome[Any]]], changes: list[Change]
    ) -> None:
        listeners = self._listeners if changes else ()
        if len(done) == 1:  # the common case (a lone write), without the grouping below
            sink = done[0][0].sink
            sink.batch_done(done, changes if sink in listeners else [])
            for other in listeners:
                if other is not sink:
                    other.batch_done([], changes)
            return
        by_sink: dict[int, tuple[Sink, list[tuple[Request, outcome.Outcome[Any]]]]] = {}
        for item in done:
            sink = item[0].sink
            by_sink.setdefault(id(sink), (sink, []))[1].append(item)
        listening = {id(s) for s in listeners}
        for sink in listeners:
            by_sink.setdefault(id(sink), (sink, []))
        for key, (sink, items) in by_sink.items():
            sink.batch_done(items, changes if key in listening else [])

    def _shutdown(self, pending: list[Request]) -> None:
        with self._lock:
            self._closed = True
        leftovers = list(pending)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                leftovers.append(item)
        closed = ReplicaClosedError(f"{self.store.path}: the replica is closed")
        if self._failure is not None:
            closed.__cause__ = self._failure
        self._deliver([(req, outcome.Error(closed)) for req in leftovers], [])
        with self._store_lock:
            self.store.close()
