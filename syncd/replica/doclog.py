"""The per-document delta log: small writes to large documents without re-encoding them.

A write normally stores the document's whole encoded state. For a document whose stored state
is large (at least :data:`LOG_MIN_STATE_BYTES`), re-encoding it for every keystroke costs
milliseconds (~10 ms for the 143 KB state of the automerge-paper text) and writes every page
of it to the WAL. Such a document keeps its stored state as a *base* and appends the deltas
of later writes to ``doc_deltas``; loading it joins them back in order. Joins are idempotent
and the state after a change is the state before joined with its delta, so base plus deltas
is exactly the document. The log is folded back into a new base (one full encode) once it
holds :data:`LOG_MAX_ROWS` deltas or a :data:`LOG_MAX_SHARE` of the base's size, which bounds
both the load cost and the space. Base, log rows and everything else of a write are
committed in the same transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from syncd.crdt import Document, decode_stored

LOG_MIN_STATE_BYTES = 16 * 1024
"""Documents whose stored state is smaller are rewritten whole (one page or a few)."""
LOG_MAX_ROWS = 64
"""A log with this many deltas is folded into a new base at the next write."""
LOG_MAX_SHARE = 4
"""...and so is one whose deltas add up to more than 1/LOG_MAX_SHARE of the base's size."""

_LOAD_CHUNK = 64

HAS_LOG = "EXISTS (SELECT 1 FROM doc_deltas l WHERE l.doc_id = docs.doc_id)"
"""A column for queries of ``docs``: whether the document has logged deltas (so that
documents without a log, nearly all, are loaded with one query)."""


def load(conn: sqlite3.Connection, doc_ids: Iterable[int]) -> dict[int, list[tuple[int, bytes]]]:
    """The logged deltas ``(seq, blob)`` of the given documents, in order, by document."""
    ids = list(doc_ids)
    out: dict[int, list[tuple[int, bytes]]] = {}
    for start in range(0, len(ids), _LOAD_CHUNK):
        chunk = ids[start : start + _LOAD_CHUNK]
        marks = ", ".join("?" * len(chunk))
        for doc_id, seq, blob in conn.execute(
            f"SELECT doc_id, seq, delta FROM doc_deltas WHERE doc_id IN ({marks}) "
            "ORDER BY doc_id, seq",
            chunk,
        ):
            out.setdefault(doc_id, []).append((seq, blob))
    return out


def replay(doc: Document, rows: list[tuple[int, bytes]]) -> None:
    """Join the logged deltas into ``doc`` (its base); raises ``CodecError`` on a bad blob."""
    for _, blob in rows:
        doc.join(decode_stored(blob))


def fits(
    base_bytes: int,
    log_rows: int,
    log_bytes: int,
    new_rows: int,
    new_bytes: int,
    max_share: int = LOG_MAX_SHARE,
) -> bool:
    """Whether ``new_rows`` deltas of ``new_bytes`` go to the log rather than a new base.

    (``max_share`` 0 lifts the size rule, which tests use to log small documents too.)
    """
    return log_rows + new_rows <= LOG_MAX_ROWS and (log_bytes + new_bytes) * max_share <= base_bytes


class LogWrites:
    """The log rows a flush appends and the logs it folds, written with one statement each."""

    __slots__ = ("appends", "folded")

    def __init__(self) -> None:
        self.appends: list[tuple[int, int, bytes]] = []
        self.folded: list[tuple[int]] = []

    def write(self, conn: sqlite3.Connection) -> None:
        """Execute the deletes of folded logs, then the appends."""
        if self.folded:
            conn.executemany("DELETE FROM doc_deltas WHERE doc_id = ?", self.folded)
        if self.appends:
            conn.executemany(
                "INSERT INTO doc_deltas (doc_id, seq, delta) VALUES (?, ?, ?)", self.appends
            )
