"""The durable replica: CRDT documents in SQLite, changed in group-committed transactions.

:class:`Store` is synchronous and single-threaded: exactly one thread uses it at a time (the
one running a batch of :mod:`syncd.replica.writer`, or a test). Changes made between
:meth:`Store.begin` and :meth:`Store.commit` share one SQLite transaction and one fsync; the
new document states, the namespace contexts and the dot index of a batch are committed
together or not at all. Outside a batch every call commits on its own.

Documents are loaded lazily into a bounded cache; namespace contexts are loaded when a
namespace is first used. A change that fails cleanly (a bad patch, an invalid delta) changes
nothing; any other failure in the middle of a batch *poisons* it: :meth:`rollback` then
discards the transaction and every in-memory state it touched.

Replica ids: every :class:`Store` opened gets a fresh random replica id, so no incarnation of
the database ever reuses another's dots, even if the file was restored from an older copy
(see docs/durability.md). Within an incarnation the dot counter needs no row of its own: the
namespace context, committed with every state, holds the highest dot taken.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from syncd.crdt import CausalContext, Document
from syncd.crdt.ops import parse_ops
from syncd.crdt.remote import check_remote_deltas
from syncd.errors import InvalidOperation, PatchError, SyncdError
from syncd.replica import directory, ranges, schema
from syncd.replica.core import NamespaceState, StoreCore, log
from syncd.replica.errors import InvalidDeltaError
from syncd.replica.model import (
    LOCAL,
    Change,
    Delete,
    Device,
    NamespaceInfo,
    Patch,
    Put,
    Snapshot,
    Write,
    check_name,
    prefix_upper_bound,
)


class Store(StoreCore):
    """A replica's database: see the module docstring."""

    # -- changes -----------------------------------------------------------------------------

    def apply_local(self, ns: str, key: str, write: Write) -> Change:
        """Apply a local put, patch or delete; return the change with its delta.

        Outside a batch it returns after the change is committed; inside one, :meth:`commit`
        makes it durable. A patch that does not apply raises and changes nothing.
        """
        if type(ns) is not str or ns not in self._namespaces:  # known ones were checked
            check_name("namespace", ns)
        check_name("key", key)
        ops = parse_ops(write.ops) if isinstance(write, Patch) else None
        if isinstance(write, Put) and not isinstance(write.value, dict):
            raise InvalidOperation("a document must be a JSON object")
        return self._auto(lambda: self._apply_local(ns, key, write, ops))

    def _apply_local(self, ns: str, key: str, write: Write, ops: list[Any] | None) -> Change:
        nss = self._namespace(ns, create=True)
        assert nss is not None
        entry = self._entry(nss, key, create=True)
        assert entry is not None
        doc = entry.doc
        existed = doc.exists()
        if isinstance(write, Delete) and not existed:
            return Change(ns, key, None, LOCAL, False, None, exists=False)
        counter = self._counter(nss)
        before = counter.next
        self.poisoned = True
        try:
            if isinstance(write, Put):
                delta = doc.put(write.value, counter)
            elif isinstance(write, Patch):
                assert ops is not None
                delta = doc.patch(ops, counter)
            else:
                delta = doc.delete(counter)
        except (PatchError, InvalidOperation) as exc:
            if isinstance(exc, PatchError) and exc.document_changed:
                # A refusal that was not atomic (a bug): the batch stays poisoned, so it is
                # rolled back and the document reloaded as stored, rather than kept with a
                # half-made change whose dots the next write would take again.
                log.error("a refused change to %r had changed it; reloading it: %s", key, exc)
                raise
            counter.next = before
            self.poisoned = False
            raise
        taken = (before, counter.next - 1) if counter.next > before else None
        changed = True
        if taken is not None:
            self._record_taken(entry, *taken)
        elif not delta.is_bottom():
            self._record(entry, delta)
        else:  # nothing changed (e.g. a put of the current value): no write, no feed entry
            changed = False
        if changed:
            self._encode_change(entry, delta)  # raises (poisoned) if the document is too large
        change = Change(
            ns, key, self._rendered(ns, key, doc), LOCAL, existed, delta, taken, doc.exists()
        )
        if changed:
            self._changes.append(change)
        self.poisoned = False
        self._hook("applied")
        return change

    def _rendered(self, ns: str, key: str, doc: Document) -> dict[str, Any] | None:
        """The document as a change shows it, if anyone wants it (:attr:`wants_value`): a
        rendering costs time and memory in proportion to the document (a large text per
        keystroke), so it is made only for changes someone will look at."""
        wants = self.wants_value
        return doc.render() if wants is None or wants(ns, key) else None

    def apply_remote(
        self, ns: str, deltas: Sequence[tuple[str, Document]], origin: str
    ) -> list[tuple[str, Document]]:
        """Join deltas from peer ``origin`` (``(key, delta)`` pairs) in one transaction.

        Returns, for each delta that changed something, ``(key, new part)`` where the new part
        is ``delta.delta_since(context before)`` (what is worth relaying); the changes go to
        the change feed with ``origin``. Idempotent and order-independent. All deltas are
        validated first; if one is invalid, :class:`InvalidDeltaError` is raised and nothing
        is applied.
        """
        check_name("namespace", ns)
        check_name("origin", origin)
        # (Typed as the caller should pass them, checked as anything: the compiled build
        # would otherwise refuse a wrong type with a bare TypeError.)
        unchecked: Sequence[tuple[object, object]] = deltas
        for key, delta in unchecked:
            check_name("key", key)
            if not isinstance(delta, Document):
                raise InvalidDeltaError(f"delta for {key!r} is not a document")
        return self._auto(lambda: self._apply_remote(ns, deltas, origin))

    def _apply_remote(
        self, ns: str, deltas: Sequence[tuple[str, Document]], origin: str
    ) -> list[tuple[str, Document]]:
        nss = self._namespace(ns, create=False)
        self._validate(nss, deltas)
        if nss is None:
            nss = self._namespace(ns, create=True)
            assert nss is not None
        self.poisoned = True
        out: list[tuple[str, Document]] = []
        for key, delta in deltas:
            entry = self._entry(nss, key, create=True)
            assert entry is not None
            existed = entry.doc.exists()
            before = entry.doc.ctx.copy()
            if entry.doc.join(delta):
                self._record(entry, delta)
                try:
                    self._encode_change(entry, delta)
                except PatchError as exc:
                    raise InvalidDeltaError(f"delta for {key!r} refused: {exc}") from None
                new = delta.delta_since(before) or Document()
                out.append((key, new))
                doc = entry.doc
                value = self._rendered(ns, key, doc)
                self._changes.append(
                    Change(ns, key, value, origin, existed, new, None, doc.exists())
                )
        self.poisoned = False
        return out

    def _validate(self, nss: NamespaceState | None, deltas: Sequence[tuple[str, Document]]) -> None:
        """Refuse deltas that claim dots this replica never made or that belong elsewhere
        (:func:`syncd.crdt.remote.check_remote_deltas`)."""

        def doc_ctx(key: str) -> CausalContext | None:
            entry = self._entry(nss, key, create=False) if nss is not None else None
            return entry.doc.ctx if entry is not None else None

        ns_ctx = self._ctx(nss) if nss is not None else CausalContext()
        check_remote_deltas(deltas, self.replica_id, ns_ctx, doc_ctx)

    # -- reads -------------------------------------------------------------------------------

    def get(self, ns: str, key: str, *, conflicts: bool = False) -> Snapshot:
        """The document as it is now (value None when absent or deleted)."""
        nss = self._namespace(check_name("namespace", ns), create=False)
        entry = self._entry(nss, check_name("key", key), create=False) if nss else None
        if entry is None or not entry.doc.exists():
            return Snapshot(ns, key, None, [] if conflicts else None)
        return Snapshot(ns, key, entry.doc.render(), entry.doc.conflicts() if conflicts else None)

    def document(self, ns: str, key: str) -> Document | None:
        """A copy of the stored document state (None if never stored)."""
        nss = self._namespace(check_name("namespace", ns), create=False)
        entry = self._entry(nss, check_name("key", key), create=False) if nss else None
        if entry is None or (entry.doc_id is None and entry.doc.is_bottom()):
            return None
        return entry.doc.copy()

    def list_keys(self, ns: str, prefix: str = "") -> list[str]:
        """The keys of existing documents of ``ns`` starting with ``prefix``, sorted."""
        nss = self._namespace(check_name("namespace", ns), create=False)
        if nss is None:
            return []
        self._flushed()
        upper = prefix_upper_bound(prefix)
        if upper is None:
            rows = self._query(
                "SELECT key FROM docs WHERE ns_id = ? AND live = 1 AND key >= ? ORDER BY key",
                (nss.ns_id, prefix),
            )
        else:
            rows = self._query(
                "SELECT key FROM docs WHERE ns_id = ? AND live = 1 AND key >= ? AND key < ? "
                "ORDER BY key",
                (nss.ns_id, prefix, upper),
            )
        return [r[0] for r in rows]

    def context(self, ns: str) -> CausalContext:
        """A copy of the namespace's causal context (empty for an unknown namespace)."""
        nss = self._namespace(check_name("namespace", ns), create=False)
        return CausalContext() if nss is None else self._ctx(nss).copy()

    def index_rows(self, ns: str, replica: str, lo: int, hi: int) -> list[tuple[int, int, str]]:
        """``(lo, hi, key)``: the dot-index rows of ``replica`` overlapping ``lo..hi``, ascending.

        Each row is one maximal range of one document's context; rows never overlap (a dot
        belongs to one document). This is how anti-entropy finds the documents holding dots a
        peer lacks without scanning the namespace.
        """
        nss = self._namespace(check_name("namespace", ns), create=False)
        rid = None if nss is None or not self._ctx(nss) else nss.rids.get(replica)
        if rid is None:
            return []
        self._flushed()
        try:
            return list(ranges.index_rows(self._conn, rid, lo, hi))
        except sqlite3.Error as exc:
            raise schema.database_error(self.path, "read failed", exc) from exc

    def load(self, ns: str, key: str) -> Document | None:
        """The stored document itself (deleted ones included), or None if never stored.

        Not a copy: callers on the writer thread must not mutate it, and must not hand it to
        another thread (use :meth:`document` for a copy).
        """
        nss = self._namespace(check_name("namespace", ns), create=False)
        entry = self._entry(nss, check_name("key", key), create=False) if nss else None
        if entry is None or (entry.doc_id is None and entry.doc.is_bottom()):
            return None
        entry.lent = True  # (so the cache never releases it: see StoreCore._release_dropped)
        return entry.doc

    # -- devices, shares, peers ----------------------------------------------------------------

    def trust(
        self, device_id: str, name: str | None = None, addresses: Iterable[str] | None = None
    ) -> None:
        """Trust a device, or update it: ``name`` or ``addresses`` left None keep their value
        (none for a new device)."""
        addrs = None if addresses is None else list(addresses)
        self._auto(lambda: directory.trust(self._tx(), device_id, name, addrs))

    def untrust(self, device_id: str) -> bool:
        """Forget a device and its shares; True if it was trusted."""
        return self._auto(lambda: directory.untrust(self._tx(), device_id))

    def device_seen(self, device_id: str, when: float) -> None:
        """Record when a trusted device was last seen (Unix time)."""
        self._auto(lambda: directory.seen(self._tx(), device_id, when))

    def devices(self) -> list[Device]:
        """The trusted devices, sorted by ID."""
        return directory.devices(self._conn)

    def share(self, ns: str, device_ids: Iterable[str]) -> None:
        """Share ``ns`` with trusted devices; refuses (changing nothing) if one is not."""
        check_name("namespace", ns)
        ids = list(device_ids)
        bad = directory.untrusted(self._conn, ids)
        if bad:
            raise SyncdError(f"device not trusted: {', '.join(bad)}", reason="not_trusted")

        def run() -> None:
            nss = self._namespace(ns, create=True)
            assert nss is not None
            directory.share(self._tx(), nss.ns_id, ids)

        self._auto(run)

    def unshare(self, ns: str, device_ids: Iterable[str]) -> None:
        """Stop sharing ``ns`` with devices."""
        nss = self._namespace(check_name("namespace", ns), create=False)
        if nss is not None:
            ids = list(device_ids)
            self._auto(lambda: directory.unshare(self._tx(), nss.ns_id, ids))

    def shared_with(self, ns: str) -> list[str]:
        """The devices ``ns`` is shared with, sorted."""
        nss = self._namespace(check_name("namespace", ns), create=False)
        return [] if nss is None else directory.shared_with(self._conn, nss.ns_id)

    def namespaces(self) -> list[NamespaceInfo]:
        """Every namespace with its devices and live document count, sorted by name."""
        self._flushed()
        counts = dict(self._query("SELECT ns_id, count(*) FROM docs WHERE live = 1 GROUP BY ns_id"))
        shares = directory.shares_by_namespace(self._conn)
        return [
            NamespaceInfo(n.name, tuple(shares.get(n.ns_id, ())), counts.get(n.ns_id, 0))
            for n in sorted(self._namespaces.values(), key=lambda n: n.name)
        ]

    def load_peer_state(self, peer: str, ns: str) -> bytes | None:
        """The opaque sync metadata stored for (peer, namespace), or None."""
        nss = self._namespace(check_name("namespace", ns), create=False)
        return None if nss is None else directory.peer_state(self._conn, peer, nss.ns_id)

    def save_peer_state(self, peer: str, ns: str, data: bytes) -> None:
        """Store opaque sync metadata for (peer, namespace), durably."""
        check_name("namespace", ns)
        check_name("peer", peer)

        def run() -> None:
            nss = self._namespace(ns, create=True)
            assert nss is not None
            directory.set_peer_state(self._tx(), peer, nss.ns_id, bytes(data))

        self._auto(run)
