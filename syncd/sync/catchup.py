"""Catch-up: stream what a peer's causal context lacks, in bounded groups (SPEC §5.3, §5.4).

Given the dots the peer misses, ``M = ours \\ theirs``, the plan walks ``M`` in a fixed order
(replicas ascending, then counters ascending) through the replica's dot index, and sends each
document that holds a missing dot once, as ``doc.delta_since(theirs)``, the first time one of
its index rows comes up. Bytes are thus proportional to what the peer misses: the index finds
the documents without a scan, and a document's delta holds only what the peer lacks.

Removals reach the peer too: a removal leaves no dot in the store, but it leaves the *event
dot* of the change in the document's context (docs/architecture.md, "every change carries a
fresh dot"), so the document shows up in the index walk, and its delta's context carries the
removed dots.

Each group claims ``covered``: the part of ``M`` that lies before the walk's position. Every
document holding a dot there has been sent (rows are visited in order, and each document is
sent whole), so the claim never names a dot the peer will not have once the groups so far have
arrived. The last group claims all of ``M``.
"""

from __future__ import annotations

from dataclasses import dataclass

from syncd.crdt.codec import encode_document
from syncd.crdt.context import CausalContext
from syncd.sync.replica import SyncReplica


@dataclass(slots=True)
class Group:
    """One delta group's content."""

    entries: list[tuple[str, bytes]]
    ctx: CausalContext
    """The union of the deltas' contexts: what the peer has once it applied the group."""
    covered: CausalContext
    size: int


class CatchUp:
    """The plan to bring one peer up to date in one namespace."""

    __slots__ = ("_done", "_pos", "_replicas", "_ri", "_sent", "missing", "peer_ctx")

    def __init__(self, missing: CausalContext, peer_ctx: CausalContext) -> None:
        self.missing = missing
        self.peer_ctx = peer_ctx
        self._replicas = missing.replicas()
        self._ri = 0
        self._pos = 1
        self._sent: set[str] = set()
        self._done = not self._replicas

    @property
    def done(self) -> bool:
        """True when every group was produced."""
        return self._done

    def _covered(self) -> CausalContext:
        if self._done:
            return self.missing.copy()
        out = CausalContext()
        for r in self._replicas[: self._ri]:
            rs = self.missing.for_replica(r)
            assert rs is not None
            for s, e in rs.pairs():
                out.add_range(r, s, e)
        r = self._replicas[self._ri]
        rs = self.missing.for_replica(r)
        assert rs is not None
        for s, e in rs.overlapping(1, self._pos - 1):
            out.add_range(r, s, e)
        return out

    def next_group(self, replica: SyncReplica, ns: str, max_bytes: int) -> Group | None:
        """The next group (at most ``max_bytes`` of deltas unless one delta alone is bigger),
        or None when done."""
        if self._done:
            return None
        entries: list[tuple[str, bytes]] = []
        ctx = CausalContext()
        size = 0
        while self._ri < len(self._replicas):
            r = self._replicas[self._ri]
            rs = self.missing.for_replica(r)
            assert rs is not None
            for s, e in list(rs.overlapping(self._pos, rs.max())):
                for lo, hi, key in replica.index_rows(ns, r, s, e):
                    if hi < self._pos:
                        continue
                    if key not in self._sent:
                        doc = replica.load(ns, key)
                        delta = doc.delta_since(self.peer_ctx) if doc is not None else None
                        if delta is not None:
                            data = encode_document(delta)
                            if entries and size + len(data) > max_bytes:
                                # Stop before this row: everything below it is covered.
                                self._pos = max(self._pos, lo)
                                return Group(entries, ctx, self._covered(), size)
                            entries.append((key, data))
                            ctx.update(delta.ctx)
                            size += len(data)
                        self._sent.add(key)
                    self._pos = hi + 1
                self._pos = max(self._pos, e + 1)
            self._ri += 1
            self._pos = 1
        self._done = True
        return Group(entries, ctx, self._covered(), size)


__all__ = ["CatchUp", "Group"]
