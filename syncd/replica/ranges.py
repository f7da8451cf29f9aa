"""Persisting causal contexts as rows of ranges: the namespace context and the dot index.

Both tables hold sorted, disjoint ranges per ``rid`` (one replica in one namespace): ``ctx``
the namespace context, ``dot_index`` each document's context. An update writes only the
ranges a change touched: after the in-memory context absorbed the change, every touched span
lies inside one range of it, which replaces the rows it swallowed.
"""

from __future__ import annotations

import sqlite3
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence

from syncd.crdt import CausalContext, Ranges, decode_stored
from syncd.errors import CodecError

Span = tuple[int, int]


def covering(ranges: Ranges, spans: Iterable[Span]) -> set[Span]:
    """The ranges of ``ranges`` that contain the given spans (each span lies inside one)."""
    out: set[Span] = set()
    starts, ends = ranges.starts, ranges.ends
    for lo, _ in spans:
        i = bisect_right(starts, lo) - 1
        out.add((starts[i], ends[i]))
    return out


def write_ctx(conn: sqlite3.Connection, rid: int, merged: Iterable[Span]) -> None:
    """Replace the namespace-context rows of ``rid`` swallowed by each merged range."""
    for lo, hi in merged:
        conn.execute("DELETE FROM ctx WHERE rid = ? AND lo BETWEEN ? AND ?", (rid, lo, hi))
        conn.execute("INSERT INTO ctx (rid, lo, hi) VALUES (?, ?, ?)", (rid, lo, hi))


class IndexWrites:
    """The dot-index rows a flush replaces, written with one ``executemany`` each."""

    __slots__ = ("deletes", "inserts")

    def __init__(self) -> None:
        self.deletes: list[tuple[int, int, int, int]] = []
        self.inserts: list[tuple[int, int, int, int]] = []

    def add(
        self,
        rid: int,
        doc_id: int,
        merged: Iterable[Span],
        fresh: bool,
        new: Sequence[Span] = (),
    ) -> None:
        """Replace the rows of one document swallowed by each merged range.

        A dot belongs to one document only, so the rows of ``rid`` whose end lies in a range
        of this document's context are this document's own: the range scan touches no others.
        A ``fresh`` document has no rows yet; nor has any row of it an end inside one of the
        ``new`` spans (dots the document did not hold before), so a merged range lying inside
        one needs no delete.
        """
        for lo, hi in merged:
            if not fresh and not any(a <= lo and hi <= b for a, b in new):
                self.deletes.append((rid, lo, hi, doc_id))
            self.inserts.append((rid, hi, lo, doc_id))

    def write(self, conn: sqlite3.Connection) -> None:
        """Execute the deletes, then the inserts."""
        if self.deletes:
            conn.executemany(
                "DELETE FROM dot_index WHERE rid = ? AND hi BETWEEN ? AND ? AND doc_id = ?",
                self.deletes,
            )
        conn.executemany(
            "INSERT INTO dot_index (rid, hi, lo, doc_id) VALUES (?, ?, ?, ?)", self.inserts
        )


def load_ctx(conn: sqlite3.Connection, ns_id: int) -> tuple[CausalContext, dict[str, int]]:
    """A namespace's context and its replica ids → rids."""
    rids: dict[str, int] = {}
    own: list[tuple[str, int]] = []
    for rid, replica, nxt in conn.execute(
        "SELECT rid, replica, next FROM replicas WHERE ns_id = ?", (ns_id,)
    ):
        rids[replica] = rid
        if nxt == 0:
            own.append((replica, rid))
    names = {rid: replica for replica, rid in rids.items()}
    ctx = CausalContext()
    for rid, lo, hi in conn.execute(
        "SELECT c.rid, c.lo, c.hi FROM ctx c JOIN replicas r ON r.rid = c.rid "
        "WHERE r.ns_id = ? ORDER BY c.rid, c.lo",
        (ns_id,),
    ):
        ctx.add_range(names[rid], lo, hi)
    for replica, rid in own:
        top = own_top(conn, rid)
        if top:
            ctx.add_range(replica, 1, top)
    return ctx, rids


def own_top(conn: sqlite3.Connection, rid: int) -> int:
    """The highest dot of ``rid`` in the dot index (0 if none)."""
    (top,) = conn.execute("SELECT max(hi) FROM dot_index WHERE rid = ?", (rid,)).fetchone()
    return int(top or 0)


def implicit_rids(conn: sqlite3.Connection) -> list[int]:
    """The rids whose context is implicit, ``1..max(hi)`` of their dot index (``next = 0``)."""
    return [rid for (rid,) in conn.execute("SELECT rid FROM replicas WHERE next = 0")]


def settle_own_contexts(conn: sqlite3.Connection, rids: Iterable[int]) -> None:
    """Write the context range of earlier incarnations of this store (:func:`implicit_rids`).

    Run at open, before this incarnation writes: after that, peers may send the dots of an
    earlier incarnation back (after a restore from a backup, say), and ``1..max(hi)`` would
    no longer be exact. Up to now it is: those dots were all made and committed here, in
    order. Inside the caller's transaction.
    """
    for rid in rids:
        top = own_top(conn, rid)
        conn.execute("DELETE FROM ctx WHERE rid = ?", (rid,))  # a subset of 1..top, if any
        if top:
            conn.execute("INSERT INTO ctx (rid, lo, hi) VALUES (?, 1, ?)", (rid, top))
        conn.execute("UPDATE replicas SET next = NULL WHERE rid = ?", (rid,))


def rid_for(conn: sqlite3.Connection, ns_id: int, replica: str) -> int:
    """The rid of ``replica`` in a namespace, creating its row if needed."""
    row = conn.execute(
        "SELECT rid FROM replicas WHERE ns_id = ? AND replica = ?", (ns_id, replica)
    ).fetchone()
    if row is not None:
        return int(row[0])
    cur = conn.execute("INSERT INTO replicas (ns_id, replica) VALUES (?, ?)", (ns_id, replica))
    assert cur.lastrowid is not None
    return cur.lastrowid


def index_rows(
    conn: sqlite3.Connection, rid: int, lo: int, hi: int, batch: int = 256
) -> Iterator[tuple[int, int, str]]:
    """``(lo, hi, key)`` of the dot-index rows of ``rid`` that overlap ``lo..hi``, ascending.

    Rows of one rid are disjoint ranges, so ordered by end they are ordered by start too: the
    scan starts at the first end ``>= lo`` and stops at the first start ``> hi``.
    """
    cursor = lo
    while True:
        rows = conn.execute(
            "SELECT i.lo, i.hi, d.key FROM dot_index i JOIN docs d ON d.doc_id = i.doc_id "
            "WHERE i.rid = ? AND i.hi >= ? ORDER BY i.hi LIMIT ?",
            (rid, cursor, batch),
        ).fetchall()
        for row in rows:
            if row[0] > hi:
                return
            yield row
        if len(rows) < batch or rows[-1][1] >= hi:
            return  # (also: a row may end at the largest counter, where no cursor goes past)
        cursor = rows[-1][1] + 1


def build_index(conn: sqlite3.Connection) -> None:
    """Fill ``dot_index`` from every stored document (migration from schema 1)."""
    conn.execute("DELETE FROM dot_index")
    for doc_id, ns_id, state in conn.execute("SELECT doc_id, ns_id, state FROM docs").fetchall():
        try:
            doc = decode_stored(bytes(state))
        except CodecError as exc:
            raise CodecError(f"document {doc_id} does not decode: {exc}") from exc
        for replica, lo, hi in doc.ctx.ranges():
            conn.execute(
                "INSERT INTO dot_index (rid, hi, lo, doc_id) VALUES (?, ?, ?, ?)",
                (rid_for(conn, ns_id, replica), hi, lo, doc_id),
            )
