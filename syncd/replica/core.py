"""The persistence mechanics under :class:`syncd.replica.store.Store`.

Batches and transactions, lazy loading of namespaces and documents, and writing a batch's
dirty state (documents, namespace-context and dot-index ranges) in one transaction.
:class:`StoreCore` is synchronous and single-threaded; see :mod:`syncd.replica.store` for
the public operations built on it.
"""

import fcntl
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Self, TypeVar

from syncd.crdt import CausalContext, Document, DotCounter, decode_stored, encode_document
from syncd.crdt.codec import MAX_DOCUMENT_BYTES
from syncd.errors import CodecError, PatchError
from syncd.replica import doclog, ranges, schema
from syncd.replica.cache import LRUCache
from syncd.replica.errors import (
    CorruptDatabaseError,
    DatabaseLockedError,
    DatabaseReplacedError,
    DiskIOError,
    InvalidKeyError,
    StoreError,
)
from syncd.replica.model import (
    Change,
    check_name,
)

T = TypeVar("T")
log = logging.getLogger("syncd.replica")
DEFAULT_CACHE_ITEMS = 4096
DEFAULT_CACHE_BYTES = 1024 * 1024
"""Encoded bytes of the documents kept loaded. A decoded document takes 40 to 120 times its
encoded size in memory (a text's runs, a map's fields and dots as Python objects; a text
typed in many places is the worst; only one written in one piece stays near 1 time), so
this keeps the cache near 120 MB at most; 16 MiB, the earlier budget, let a daemon grow
towards 1 GB. (A document the cache drops is freed at once: see :meth:`_release_dropped`.)"""
LARGE_DOC_BYTES = 64 * 1024
"""Documents stored at least this large have their size remembered after the cache drops
them (:meth:`StoreCore.known_bytes`: the trio side keeps writes to large ones off its
event loop)."""
PREFETCH_CHUNK = 64
_PREFETCH_SQL = (
    f"SELECT key, doc_id, state, {doclog.HAS_LOG} FROM docs WHERE ns_id = ? AND key IN ("
    + ", ".join("?" * PREFETCH_CHUNK)
    + ")"
)


def new_replica_id() -> str:
    """A fresh random replica id (64 bits, hex)."""
    return secrets.token_hex(8)


class NamespaceState:
    __slots__ = ("counter", "ctx", "dirty", "implicit_own", "name", "ns_id", "rids")

    def __init__(self, ns_id: int, name: str) -> None:
        self.ns_id = ns_id
        self.name = name
        self.ctx: CausalContext | None = None  # loaded on first use
        self.rids: dict[str, int] = {}
        self.counter: DotCounter | None = None  # this incarnation's, once it wrote here
        self.implicit_own = False  # this incarnation's context range is not written to ctx
        self.dirty: dict[str, list[ranges.Span]] = {}


class DocEntry:
    __slots__ = (
        "base_bytes",
        "dirty",
        "doc",
        "doc_id",
        "fresh",
        "key",
        "lent",
        "log_bytes",
        "log_rows",
        "log_seq",
        "ns",
        "pending",
        "rewrite",
        "state",
        "stored_live",
    )

    def __init__(self, ns: NamespaceState, key: str, doc: Document, doc_id: int | None) -> None:
        self.ns = ns
        self.key = key
        self.doc = doc
        self.doc_id = doc_id
        self.stored_live = doc.exists() if doc_id is not None else None
        self.dirty: dict[str, list[ranges.Span]] = {}
        self.fresh: list[ranges.Span] = []
        """Spans of this store's own dots that the document did not hold before this batch."""
        self.lent = False
        """Whether :meth:`Store.load` handed the document itself out (it is never released)."""
        self.pending: list[bytes] = []
        """Encoded deltas joined in this batch, for a logged document (see doclog.py)."""
        self.state: bytes | None = None
        """The encoded state after this batch's last change, for a document that is not
        logged (encoded when the change is made, to know its size; written by the flush)."""
        self.rewrite = False
        """Set when this batch stores the whole state of a logged document (its log would
        have made it look larger than it is): its later changes in the batch do the same."""
        self.base_bytes = 0  # the stored state's size, and the stored log's rows and bytes
        self.log_rows = 0
        self.log_bytes = 0
        self.log_seq = 0  # the next log row's number

    @property
    def stored_bytes(self) -> int:
        """What the document takes on disk (a stand-in for its size in memory)."""
        return self.base_bytes + self.log_bytes


class StoreCore:
    """Batches, loading and flushing; the base of :class:`syncd.replica.store.Store`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "full",
        cache_items: int = DEFAULT_CACHE_ITEMS,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        replica_id: str | None = None,
        check: bool = False,
        log_min_bytes: int = doclog.LOG_MIN_STATE_BYTES,
        log_max_share: int = doclog.LOG_MAX_SHARE,
    ) -> None:
        self.path = Path(path)
        self._log_min_bytes = log_min_bytes
        self._log_max_share = log_max_share
        self.replica_id = replica_id or new_replica_id()
        self._lock_fd = _lock(self.path)
        try:
            created = not self.path.exists()
            if created:
                self._set_aside_orphaned_log()
            try:
                self._conn = schema.open_database(
                    self.path, synchronous=synchronous, build_index=ranges.build_index
                )
            except CodecError as exc:
                raise CorruptDatabaseError(f"{self.path}: migration failed: {exc}") from exc
            if created:
                _fsync_dir(self.path.parent)
            self._file_id = _file_id(self.path)
            self._log_ids = _log_file_ids(self.path)
            if check:
                schema.quick_check(self._conn, self.path)
            self._settle_own_contexts()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._cache: LRUCache[tuple[int, str], DocEntry] = LRUCache(
            cache_items, cache_bytes, self._release_dropped
        )
        self._large: dict[tuple[int, str], int] = {}
        """Stored sizes of the large documents loaded so far (cached or not), for
        :meth:`known_bytes`: the cache holds only a few of them."""
        self._namespaces: dict[str, NamespaceState] = {}
        self._dirty: dict[tuple[int, str], DocEntry] = {}
        self._changes: list[Change] = []
        self._next_doc_id: int | None = None
        self._batch = False
        self._in_tx = False
        self.poisoned = False
        self.closed = False
        self.fault_hook: Callable[[str], None] | None = None
        """Called at named points of a commit ("flushed", "committed"); tests use it to crash."""
        self.wants_value: Callable[[str, str], bool] | None = None
        """Which changes need their ``value`` rendered (``(ns, key) -> bool``, called at each
        change, on whichever thread runs the store); None: every change. A change nobody
        wants the value of has ``value`` None (``exists`` still tells whether the document
        exists)."""
        self._load_namespaces()

    # -- lifecycle -------------------------------------------------------------------------

    def _settle_own_contexts(self) -> None:
        """Write the context ranges that earlier incarnations left implicit (schema 3)."""
        conn = self._conn
        try:
            rids = ranges.implicit_rids(conn)
            if not rids:
                return  # no write transaction at open unless there is something to write
            conn.execute("BEGIN IMMEDIATE")
            try:
                ranges.settle_own_contexts(conn, rids)
                conn.execute("COMMIT")
            except BaseException:
                schema.rollback_quietly(conn)
                raise
        except sqlite3.Error as exc:
            self._conn.close()
            raise schema.database_error(self.path, "cannot open the database", exc) from exc

    def close(self) -> None:
        """Close the database (an open batch is rolled back)."""
        if self.closed:
            return
        if self._in_tx:
            self.rollback()
        self.closed = True
        try:
            moved = self._file_change() is not None
        except OSError:
            moved = True
        self._conn.close()
        if moved:
            self._set_aside_log()
        os.close(self._lock_fd)

    def _set_aside_log(self) -> None:
        """The database file was replaced or deleted while open: move this connection's
        write-ahead log (and its index) out of the way, or SQLite would apply it to the file
        now at :attr:`path` (a backup put back, say) the next time it is opened."""
        ours = []
        for log_path, ident in zip(_log_files(self.path), self._log_ids, strict=True):
            with suppress(OSError):
                if ident is not None and _file_id(log_path) == ident:  # (not one put back)
                    ours.append(log_path)
        moved = _set_aside(ours)
        if moved:
            log.warning(
                "%s was replaced or deleted while syncd had it open: its write-ahead log is "
                "set aside (%s in %s) so that it is not applied to the file now there",
                self.path,
                ", ".join(moved.values()),
                self.path.parent,
            )

    def _set_aside_orphaned_log(self) -> None:
        """No database file, yet a write-ahead log (a database moved or deleted after a daemon
        that did not stop cleanly): SQLite would apply it to the new, empty database. Move it
        out of the way instead (it holds the last writes of the database that was moved); a
        lost ``-shm`` alone (an index SQLite rebuilds) goes too, without a word."""
        wal, shm = _log_files(self.path)
        moved = _set_aside([f for f in (wal, shm) if os.path.lexists(f)])
        if wal in moved:
            log.warning(
                "%s does not exist but its write-ahead log does (the database was moved or "
                "deleted after syncd stopped without closing it): %s is set aside as %s so "
                "that it is not applied to a new database. It holds the latest writes of the "
                "database that was there: to keep them, stop syncd, put that database back "
                "and rename %s to %s next to it",
                self.path,
                wal.name,
                moved[wal],
                moved[wal],
                wal.name,
            )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- batches ---------------------------------------------------------------------------

    def begin(self) -> None:
        """Start a batch: every change until :meth:`commit` shares one transaction."""
        if self._batch:
            raise RuntimeError("a batch is already open")
        self._batch = True

    @property
    def has_writes(self) -> bool:
        """Whether the open batch has anything to write (so its commit will sync the disk)."""
        return self._in_tx or bool(self._dirty)

    def commit(self) -> list[Change]:
        """Write the batch's changes and commit them durably; return them in order.

        On failure the batch is rolled back (see :meth:`rollback`) and the error raised.
        """
        if self.poisoned:
            self.rollback()
            raise StoreError(f"{self.path}: batch aborted by an earlier failure")
        try:
            self._flush()
            if self._in_tx:
                if not self._conn.in_transaction:
                    raise StoreError(f"{self.path}: the transaction was aborted by SQLite")
                self._hook("flushed")
                self._check_file()
                self._conn.execute("COMMIT")
                self._in_tx = False
                self._hook("committed")
        except BaseException as exc:
            self.rollback()
            if isinstance(exc, sqlite3.Error):
                raise schema.database_error(self.path, "commit failed", exc) from exc
            raise
        self._batch = False
        changes, self._changes = self._changes, []
        return changes

    def _check_file(self) -> None:
        """Refuse to commit into a database file that is no longer at :attr:`path` (deleted,
        or replaced by another file, while open): the write would be acknowledged and then
        lost, as nothing will open that file again."""
        try:
            what = self._file_change()
        except OSError as exc:  # a directory made unreadable, a stale NFS handle...
            raise DiskIOError(
                f"{self.path}: cannot check the database file: {exc.strerror}"
            ) from None
        if what is not None:
            raise DatabaseReplacedError(
                f"{self.path}: the database file was {what} while syncd had it open; writes "
                "are refused. Put the database back (or restore it from a backup) and restart "
                "syncd; a restart without it starts an empty database"
            )

    def _file_change(self) -> str | None:
        """What became of the database file since it was opened: None (still at
        :attr:`path`), "deleted" or "replaced by another file"."""
        try:
            now = _file_id(self.path)
        except FileNotFoundError:
            return "deleted"
        return None if now == self._file_id else "replaced by another file"

    def rollback(self) -> None:
        """Discard the open batch and every in-memory state it may have touched."""
        if self._in_tx:
            self._in_tx = False
            schema.rollback_quietly(self._conn)  # (it may already be gone after an I/O error)
        self._batch = False
        self.poisoned = False
        self._changes = []
        self._cache.clear()
        self._forget_dirty()
        self._next_doc_id = None
        self._load_namespaces()

    @contextmanager
    def batch(self) -> Any:
        """``with store.batch():`` groups the changes inside into one transaction."""
        self.begin()
        try:
            yield self
        except BaseException:
            self.rollback()
            raise
        self.commit()

    def _auto(self, fn: Callable[[], T]) -> T:
        """Run a change inside the open batch, or in a batch of its own."""
        if self._batch:
            if self.poisoned:  # (the writer rolls back at once; a caller of batch() may not)
                raise StoreError(f"{self.path}: batch aborted by an earlier failure")
            return self._guarded(fn)
        self.begin()
        try:
            result = self._guarded(fn)
        except BaseException:
            if self.poisoned:
                self.rollback()
            else:
                self.commit()  # a clean failure: keep e.g. a namespace row it created
            raise
        self.commit()
        return result

    def _guarded(self, fn: Callable[[], T]) -> T:
        """Run ``fn``; a database error may have left a partial write: poison the batch."""
        try:
            return fn()
        except sqlite3.Error as exc:
            self.poisoned = True
            raise schema.database_error(self.path, "write failed", exc) from exc

    def _tx(self) -> sqlite3.Connection:
        """The connection, inside the batch's write transaction."""
        if not self._in_tx:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise schema.database_error(self.path, "cannot start a write", exc) from exc
            self._in_tx = True
        return self._conn

    def _hook(self, point: str) -> None:
        if self.fault_hook is not None:
            self.fault_hook(point)

    # -- namespaces and documents ------------------------------------------------------------

    def _load_namespaces(self) -> None:
        rows = self._query("SELECT ns_id, name FROM namespaces")
        self._namespaces = {name: NamespaceState(ns_id, name) for ns_id, name in rows}

    def _release_dropped(self, entry: DocEntry) -> None:
        """Free a document the cache let go of, at once: a text's or list's structure holds
        reference cycles (a piece points back to its run and its block), which only a full
        collection would free, and :mod:`syncd.gcpolicy` makes those rare, so dropped
        documents piled up to several times the cache's size. Not one that
        :meth:`Store.load` handed out, and one this batch still writes only once the batch
        is done with it (:meth:`_forget_dirty`). (A released document can still be read and
        encoded; only changing it fails.)"""
        if not entry.lent and self._dirty.get((entry.ns.ns_id, entry.key)) is not entry:
            entry.doc.release()

    def _forget_dirty(self) -> None:
        """End the batch's hold on its documents (after its flush, or its rollback):
        release those the cache dropped meanwhile (see :meth:`_release_dropped`)."""
        for ck, entry in self._dirty.items():
            if not entry.lent and self._cache.peek(ck) is not entry:
                entry.doc.release()
        self._dirty.clear()

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise schema.database_error(self.path, "read failed", exc) from exc

    def _namespace(self, name: str, create: bool) -> NamespaceState | None:
        nss = self._namespaces.get(name)
        if nss is None and create:
            cur = self._tx().execute("INSERT INTO namespaces (name) VALUES (?)", (name,))
            assert cur.lastrowid is not None
            nss = self._namespaces[name] = NamespaceState(cur.lastrowid, name)
            nss.ctx = CausalContext()
        return nss

    def _ctx(self, nss: NamespaceState) -> CausalContext:
        """The namespace's context (and replica rids), loaded on first use."""
        if nss.ctx is None:
            try:
                nss.ctx, nss.rids = ranges.load_ctx(self._conn, nss.ns_id)
            except sqlite3.Error as exc:
                raise schema.database_error(self.path, "read failed", exc) from exc
        return nss.ctx

    def _decode(self, nss: NamespaceState, key: str, state: bytes) -> Document:
        try:
            return decode_stored(state)
        except CodecError as exc:
            raise CorruptDatabaseError(
                f"{self.path}: document {key!r} of namespace {nss.name!r} is unreadable: {exc}"
            ) from exc

    def _loaded(
        self,
        nss: NamespaceState,
        key: str,
        doc_id: int,
        state: bytes,
        log: list[tuple[int, bytes]] | None,
    ) -> DocEntry:
        """A stored document, decoded with its delta log joined in, and cached.

        Raises :class:`CorruptDatabaseError` if the state or a logged delta does not decode.
        """
        doc = self._decode(nss, key, state)
        entry = DocEntry(nss, key, doc, doc_id)
        entry.base_bytes = len(state)
        if log:
            try:
                doclog.replay(doc, log)
            except CodecError as exc:
                raise CorruptDatabaseError(
                    f"{self.path}: the delta log of document {key!r} of namespace "
                    f"{nss.name!r} is unreadable: {exc}"
                ) from exc
            entry.stored_live = doc.exists()
            entry.log_rows = len(log)
            entry.log_bytes = sum(len(blob) for _, blob in log)
            entry.log_seq = log[-1][0] + 1
        self._cache_put((nss.ns_id, key), entry)
        return entry

    def _log_of(self, doc_id: int) -> list[tuple[int, bytes]] | None:
        try:
            return doclog.load(self._conn, [doc_id]).get(doc_id)
        except sqlite3.Error as exc:
            raise schema.database_error(self.path, "read failed", exc) from exc

    def _entry(self, nss: NamespaceState, key: str, create: bool) -> DocEntry | None:
        """The loaded document (dirty first, then cache, then disk), or a new empty one."""
        ck = (nss.ns_id, key)
        entry = self._dirty.get(ck) or self._cache.get(ck)
        if entry is not None:
            return entry
        row = self._query(
            f"SELECT doc_id, state, {doclog.HAS_LOG} FROM docs WHERE ns_id = ? AND key = ?",
            (nss.ns_id, key),
        )
        if row:
            doc_id, state, has_log = row[0]
            entry = self._loaded(nss, key, doc_id, state, self._log_of(doc_id) if has_log else None)
        elif create:
            entry = DocEntry(nss, key, Document(), None)
            self._cache.put(ck, entry, 64)
        return entry

    def _cache_put(self, ck: tuple[int, str], entry: DocEntry) -> None:
        size = entry.stored_bytes
        if size >= LARGE_DOC_BYTES:
            self._large[ck] = size
        elif ck in self._large:
            del self._large[ck]
        self._cache.put(ck, entry, size)

    @property
    def cache_budget(self) -> tuple[int, int]:
        """The document cache's limits: (documents, bytes of their stored form)."""
        return self._cache.max_items, self._cache.max_bytes

    def known_bytes(self, ns: str, key: str) -> int:
        """What a loaded document takes stored (0 if it is not loaded): a hint of what a write
        to it will cost, read without loading anything (safe while no batch runs)."""
        nss = self._namespaces.get(ns)
        if nss is None:
            return 0
        ck = (nss.ns_id, key)
        return self._cache.weight_of(ck) or self._large.get(ck, 0)

    def prefetch(self, docs: Iterable[tuple[str, str]]) -> None:
        """Load the documents ``(ns, key)`` that are not loaded yet, a few per query.

        A hint, called between batches by the writer with the documents its next batch will
        write: one query per :data:`PREFETCH_CHUNK` documents instead of one each (and one
        release of the GIL instead of one per document). Keys found nowhere are remembered as
        new documents, as a write would; errors are left for the writes themselves to meet.
        """
        if self._batch or self.closed:
            return
        wanted: dict[int, tuple[NamespaceState, list[str]]] = {}
        seen: set[tuple[int, str]] = set()
        room = self._cache.max_items // 2  # never evict what this batch is about to use
        for ns, key in docs:
            if len(seen) >= room:
                break
            nss = self._namespaces.get(ns) if type(ns) is str else None
            if nss is None or type(key) is not str:
                continue
            ck = (nss.ns_id, key)
            if ck in seen or ck in self._dirty or ck in self._cache:
                continue
            try:
                check_name("key", key)
            except InvalidKeyError:
                continue
            seen.add(ck)
            wanted.setdefault(nss.ns_id, (nss, []))[1].append(key)
        loaded, budget = 0, self._cache.max_bytes // 2  # (by size too: the same reason)
        try:
            for nss, keys in wanted.values():
                for start in range(0, len(keys), PREFETCH_CHUNK):
                    loaded += self._prefetch_chunk(nss, keys[start : start + PREFETCH_CHUNK])
                    if loaded >= budget:
                        return
        except sqlite3.Error:
            return

    def _prefetch_chunk(self, nss: NamespaceState, keys: list[str]) -> int:
        """Load one chunk of documents; their stored bytes."""
        pad = [keys[0]] * (PREFETCH_CHUNK - len(keys))  # one statement text for any count
        rows = self._conn.execute(_PREFETCH_SQL, (nss.ns_id, *keys, *pad)).fetchall()
        logged = [doc_id for _, doc_id, _, has_log in rows if has_log]
        logs = doclog.load(self._conn, logged) if logged else {}
        found = set()
        loaded = 0
        for key, doc_id, state, _ in rows:
            found.add(key)
            try:
                loaded += self._loaded(nss, key, doc_id, state, logs.get(doc_id)).stored_bytes
            except CorruptDatabaseError:
                continue  # the write that loads it reports the damage
        for key in keys:
            if key not in found:
                self._cache.put((nss.ns_id, key), DocEntry(nss, key, Document(), None), 64)
        return loaded

    def _counter(self, nss: NamespaceState) -> DotCounter:
        """This incarnation's dot counter for a namespace (its row is made on first use).

        The counter is not written at each commit: it resumes after the highest dot of this
        replica that the namespace context holds, and that context is committed in the same
        transaction as every state that took a dot (a dot taken by a change that never
        committed was never seen by anyone). ``next``, written by older versions, is a floor.
        """
        if nss.counter is None:
            ctx = self._ctx(nss)  # rids first
            conn = self._tx()
            row = conn.execute(
                "SELECT rid, next FROM replicas WHERE ns_id = ? AND replica = ?",
                (nss.ns_id, self.replica_id),
            ).fetchone()
            if row is None:
                cur = conn.execute(  # next = 0: its context range is implicit (schema.py)
                    "INSERT INTO replicas (ns_id, replica, next) VALUES (?, ?, 0)",
                    (nss.ns_id, self.replica_id),
                )
                assert cur.lastrowid is not None
                row = (cur.lastrowid, None)
                nss.implicit_own = True
            # else: a replica id given to the constructor that has been used here before;
            # its context is written to ctx like anyone's.
            nss.rids[self.replica_id] = row[0]
            start = max(row[1] or 1, ctx.max(self.replica_id) + 1)
            nss.counter = DotCounter(self.replica_id, start)
        return nss.counter

    def _record_taken(self, entry: DocEntry, lo: int, hi: int) -> None:
        """Note a local change that took this store's dots ``lo..hi``, for :meth:`_flush`.

        A local delta's context holds the dots it took plus those of the content it removed
        or overwrote; the latter are already in the document's context, so in the namespace
        context and the dot index too. Only the taken dots are new, and no row of either
        table ends inside a range made of them alone.
        """
        nss = entry.ns
        replica = self.replica_id
        self._ctx(nss).add_range(replica, lo, hi)
        span = (lo, hi)
        nss.dirty.setdefault(replica, []).append(span)
        entry.dirty.setdefault(replica, []).append(span)
        entry.fresh.append(span)
        self._dirty[(nss.ns_id, entry.key)] = entry

    def _record(self, entry: DocEntry, delta: Document) -> None:
        """Note what a joined or local delta changed, for :meth:`_flush`."""
        nss = entry.ns
        ctx = self._ctx(nss)
        for replica, lo, hi in delta.ctx.ranges():
            ctx.add_range(replica, lo, hi)
            nss.dirty.setdefault(replica, []).append((lo, hi))
            entry.dirty.setdefault(replica, []).append((lo, hi))
            if replica not in nss.rids:
                nss.rids[replica] = ranges.rid_for(self._tx(), nss.ns_id, replica)
        self._dirty[(nss.ns_id, entry.key)] = entry

    def _flush(self) -> None:
        """Write every dirty document, context range and index range."""
        if not self._dirty:
            return
        conn = self._tx()
        touched: dict[int, NamespaceState] = {}
        inserts: list[tuple[int, int, str, bool, bytes]] = []
        live_updates: list[tuple[bool, bytes, int]] = []
        state_updates: list[tuple[bytes, int]] = []
        live_only: list[tuple[bool, int]] = []
        index = ranges.IndexWrites()
        log = doclog.LogWrites()
        for ck, entry in self._dirty.items():
            nss = entry.ns
            touched[nss.ns_id] = nss
            doc = entry.doc
            live = doc.exists()
            fresh = entry.doc_id is None
            if not self._log_pending(entry, log):
                state = entry.state if entry.state is not None else encode_document(doc)
                if entry.doc_id is None:
                    entry.doc_id = self._take_doc_id()
                    inserts.append((entry.doc_id, nss.ns_id, entry.key, live, state))
                elif live != entry.stored_live:
                    live_updates.append((live, state, entry.doc_id))
                else:
                    state_updates.append((state, entry.doc_id))
                if entry.log_rows:
                    log.folded.append((entry.doc_id,))
                entry.base_bytes = len(state)
                entry.log_rows = entry.log_bytes = entry.log_seq = 0
            elif live != entry.stored_live:
                assert entry.doc_id is not None
                live_only.append((live, entry.doc_id))
            entry.pending.clear()
            entry.state = None
            entry.rewrite = False
            entry.stored_live = live
            doc_id = entry.doc_id
            assert doc_id is not None
            for replica, spans in entry.dirty.items():
                rs = doc.ctx.for_replica(replica)
                assert rs is not None
                index.add(
                    nss.rids[replica],
                    doc_id,
                    ranges.covering(rs, spans),
                    fresh,
                    entry.fresh if replica == self.replica_id else (),
                )
            entry.dirty.clear()
            entry.fresh.clear()
            self._cache_put(ck, entry)
        self._forget_dirty()
        if inserts:
            conn.executemany(
                "INSERT INTO docs (doc_id, ns_id, key, live, state) VALUES (?, ?, ?, ?, ?)",
                inserts,
            )
        if live_updates:
            conn.executemany("UPDATE docs SET live = ?, state = ? WHERE doc_id = ?", live_updates)
        if state_updates:
            conn.executemany("UPDATE docs SET state = ? WHERE doc_id = ?", state_updates)
        if live_only:
            conn.executemany("UPDATE docs SET live = ? WHERE doc_id = ?", live_only)
        log.write(conn)
        index.write(conn)
        for nss in touched.values():
            ctx = self._ctx(nss)
            for replica, spans in nss.dirty.items():
                if replica == self.replica_id and nss.implicit_own:
                    continue  # implicit: 1..max(hi) of its dot-index rows (schema.py)
                rs = ctx.for_replica(replica)
                assert rs is not None
                ranges.write_ctx(conn, nss.rids[replica], ranges.covering(rs, spans))
            nss.dirty.clear()

    def _logged(self, entry: DocEntry) -> bool:
        """Whether the document's changes go to its delta log (a large stored document)."""
        return (
            entry.doc_id is not None
            and entry.base_bytes >= self._log_min_bytes
            and not entry.rewrite
        )

    def _encode_change(self, entry: DocEntry, delta: Document) -> None:
        """Encode what the flush will write for a change just made to ``entry``, and refuse
        one that makes the document larger than :data:`MAX_DOCUMENT_BYTES` (no peer would
        accept it).

        A logged document keeps the encoded delta (its stored size is then at most the base,
        the log and the new deltas); any other keeps its new encoded state. Raises
        :class:`PatchError` (``too_large``) with the batch poisoned: the document has changed
        in memory, and only a rollback restores it.
        """
        if self._logged(entry):
            entry.pending.append(encode_document(delta))
            size = entry.base_bytes + entry.log_bytes + sum(map(len, entry.pending))
            if size > MAX_DOCUMENT_BYTES:
                # Base plus log only bound the size from above (overwritten values are still
                # counted): measure the document itself, and store it whole if it fits.
                entry.state = encode_document(entry.doc)
                size = len(entry.state)
                entry.pending.clear()
                entry.rewrite = True
        else:
            entry.state = encode_document(entry.doc)
            size = len(entry.state)
        if size > MAX_DOCUMENT_BYTES:
            self.poisoned = True
            raise PatchError(
                f"document {entry.key!r} would take {size} bytes, more than the limit of "
                f"{MAX_DOCUMENT_BYTES} bytes",
                reason="too_large",
            )

    def _log_pending(self, entry: DocEntry, log: doclog.LogWrites) -> bool:
        """Queue the batch's deltas of a large stored document as log rows, if they fit."""
        doc_id = entry.doc_id
        if doc_id is None or not entry.pending or not self._logged(entry):
            return False  # small: rewritten whole (its deltas were never encoded)
        blobs = entry.pending
        size = sum(len(blob) for blob in blobs)
        if not doclog.fits(
            entry.base_bytes, entry.log_rows, entry.log_bytes, len(blobs), size, self._log_max_share
        ):
            return False
        for blob in blobs:
            log.appends.append((doc_id, entry.log_seq, blob))
            entry.log_seq += 1
        entry.log_rows += len(blobs)
        entry.log_bytes += size
        return True

    def _take_doc_id(self) -> int:
        """A fresh document id (ids are handed out here, so inserts can be batched)."""
        if self._next_doc_id is None:
            (top,) = self._conn.execute("SELECT coalesce(max(doc_id), 0) FROM docs").fetchone()
            self._next_doc_id = int(top) + 1
        doc_id = self._next_doc_id
        self._next_doc_id += 1
        return doc_id

    def _flushed(self) -> None:
        """Make pending writes visible to SQL queries in this batch."""
        if self._dirty:
            try:
                self._flush()
            except sqlite3.Error as exc:
                self.poisoned = True
                raise schema.database_error(self.path, "write failed", exc) from exc


def _lock(path: Path) -> int:
    """Hold an exclusive lock on ``<path>.lock`` for as long as the store is open."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(f"{lock_path}: cannot open the lock file: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise DatabaseLockedError(
            f"{path}: the database is in use by another process (lock {lock_path})"
        ) from None
    return fd


def _log_files(path: Path) -> tuple[Path, Path]:
    """The write-ahead log and its index (``-wal``, ``-shm``) of the database at ``path``."""
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def _log_file_ids(path: Path) -> list[tuple[int, int] | None]:
    """Which files the write-ahead log and its index of the database at ``path`` are now
    (None: absent), in the order of :func:`_log_files`."""
    ids: list[tuple[int, int] | None] = []
    for log_path in _log_files(path):
        try:
            ids.append(_file_id(log_path))
        except OSError:
            ids.append(None)
    return ids


def _set_aside(files: Iterable[Path]) -> dict[Path, str]:
    """Rename each file to ``NAME.stale-TIME`` (``-2``, ``-3``... after it if that name is
    taken: an earlier one is never overwritten); those that cannot be renamed stay. Returns
    the new name of each file moved. (Only this store, holding the database's lock, names
    files so: a name found free stays free.)"""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = {}
    for file in files:
        aside = file.with_name(f"{file.name}.stale-{stamp}")
        n = 1
        while os.path.lexists(aside):
            n += 1
            aside = file.with_name(f"{file.name}.stale-{stamp}-{n}")
        with suppress(OSError):
            os.rename(file, aside)
            moved[file] = aside.name
    return moved


def _file_id(path: Path) -> tuple[int, int]:
    """Which file ``path`` names now (device and inode)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _fsync_dir(directory_path: Path) -> None:
    fd = os.open(directory_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
