"""An in-memory replica for the simulator, tests and benchmarks.

It implements :class:`~syncd.sync.replica.SyncReplica` with plain dictionaries: per namespace a
map key → :class:`Document`, the namespace context, a dot counter, and the dot index (sorted
rows of ``(lo, hi, key)`` per replica). "Durable" here means "in this object": the simulator
models a restart by building a new engine over the same MemoryReplica.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from syncd.crdt.context import CausalContext
from syncd.crdt.document import Document
from syncd.crdt.dots import DotCounter, ReplicaId
from syncd.crdt.remote import check_remote_deltas
from syncd.sync.replica import IndexRow


class _Index:
    """Rows ``(lo, hi, key)`` of one replica, sorted by ``lo`` (disjoint)."""

    __slots__ = ("his", "keys", "los")

    def __init__(self) -> None:
        self.los: list[int] = []
        self.his: list[int] = []
        self.keys: list[str] = []

    def put(self, lo: int, hi: int, key: str) -> None:
        """Replace this document's rows inside ``lo..hi`` (a maximal range of its context)."""
        i = bisect_left(self.los, lo)
        j = bisect_right(self.los, hi)
        self.los[i:j] = [lo]
        self.his[i:j] = [hi]
        self.keys[i:j] = [key]

    def rows(self, lo: int, hi: int) -> Iterator[IndexRow]:
        i = bisect_right(self.los, lo) - 1
        if i < 0 or self.his[i] < lo:
            i += 1
        los, his, keys = self.los, self.his, self.keys
        while i < len(los) and los[i] <= hi:
            yield los[i], his[i], keys[i]
            i += 1


@dataclass
class Namespace:
    """One namespace of a :class:`MemoryReplica`."""

    counter: DotCounter
    docs: dict[str, Document] = field(default_factory=dict)
    ctx: CausalContext = field(default_factory=CausalContext)
    index: dict[ReplicaId, _Index] = field(default_factory=dict)

    def absorb(self, key: str, doc: Document, delta_ctx: CausalContext) -> None:
        """Record that ``doc`` (at ``key``) just joined a change whose context is ``delta_ctx``."""
        self.ctx.update(delta_ctx)
        for r, lo, _hi in delta_ctx.ranges():
            rs = doc.ctx.for_replica(r)
            assert rs is not None
            i = bisect_right(rs.starts, lo) - 1
            idx = self.index.get(r)
            if idx is None:
                idx = self.index[r] = _Index()
            idx.put(rs.starts[i], rs.ends[i], key)


class MemoryReplica:
    """A replica held in memory (see the module docstring)."""

    def __init__(self, replica_id: ReplicaId) -> None:
        self.replica_id = replica_id
        self.namespaces: dict[str, Namespace] = {}
        self.peer_states: dict[tuple[str, str], bytes] = {}

    def clone(self, replica_id: ReplicaId) -> MemoryReplica:
        """A copy of every namespace under a new replica id (a peer that saw the same)."""
        out = MemoryReplica(replica_id)
        for name, n in self.namespaces.items():
            c = out.namespace(name)
            c.docs = {k: d.copy() for k, d in n.docs.items()}
            c.ctx = n.ctx.copy()
            for r, idx in n.index.items():
                ci = c.index[r] = _Index()
                ci.los, ci.his, ci.keys = idx.los.copy(), idx.his.copy(), idx.keys.copy()
        return out

    def namespace(self, ns: str) -> Namespace:
        """The namespace ``ns``, created empty on first use."""
        n = self.namespaces.get(ns)
        if n is None:
            n = self.namespaces[ns] = Namespace(DotCounter(self.replica_id))
        return n

    # -- local writes (what the daemon does through the real replica) ---------------------------

    def write(
        self, ns: str, key: str, change: Callable[[Document, DotCounter], Document]
    ) -> Document:
        """Apply a local change (``lambda doc, counter: doc.put(value, counter)``); the delta."""
        n = self.namespace(ns)
        doc = n.docs.get(key)
        if doc is None:
            doc = n.docs[key] = Document()
        delta = change(doc, n.counter)
        n.absorb(key, doc, delta.ctx)
        return delta

    def put(self, ns: str, key: str, value: dict[str, Any]) -> Document:
        """``put`` per the contract; returns the delta."""
        return self.write(ns, key, lambda d, c: d.put(value, c))

    def patch(self, ns: str, key: str, ops: list[Any]) -> Document:
        """``patch`` with parsed ops; returns the delta."""
        return self.write(ns, key, lambda d, c: d.patch(ops, c))

    def delete(self, ns: str, key: str) -> Document:
        """Delete the document; returns the delta."""
        return self.write(ns, key, lambda d, c: d.delete(c))

    def render(self, ns: str) -> dict[str, Any]:
        """Every existing document rendered: key → JSON."""
        n = self.namespace(ns)
        out: dict[str, Any] = {}
        for key in sorted(n.docs):
            value = n.docs[key].render()
            if value is not None:
                out[key] = value
        return out

    # -- SyncReplica ------------------------------------------------------------------------

    def context(self, ns: str) -> CausalContext:
        return self.namespace(ns).ctx

    def index_rows(self, ns: str, replica: ReplicaId, lo: int, hi: int) -> Iterator[IndexRow]:
        idx = self.namespace(ns).index.get(replica)
        if idx is not None:
            yield from idx.rows(lo, hi)

    def load(self, ns: str, key: str) -> Document | None:
        return self.namespace(ns).docs.get(key)

    def apply_remote(
        self, ns: str, batch: Sequence[tuple[str, Document]], origin: str
    ) -> list[tuple[str, Document]]:
        n = self.namespace(ns)

        def doc_ctx(key: str) -> CausalContext | None:
            doc = n.docs.get(key)
            return doc.ctx if doc is not None else None

        check_remote_deltas(batch, self.replica_id, n.ctx, doc_ctx)
        out: list[tuple[str, Document]] = []
        for key, delta in batch:
            doc = n.docs.get(key)
            if doc is None:
                doc = n.docs[key] = Document()
            before = doc.ctx.copy()
            if not doc.join(delta):
                continue
            part = delta.delta_since(before)
            if part is not None:
                out.append((key, part))
            n.absorb(key, doc, delta.ctx)
        return out

    def load_peer_state(self, peer: str, ns: str) -> bytes | None:
        return self.peer_states.get((peer, ns))

    def save_peer_state(self, peer: str, ns: str, data: bytes) -> None:
        self.peer_states[(peer, ns)] = data


__all__ = ["MemoryReplica", "Namespace"]
