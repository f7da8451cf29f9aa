"""A full consistency check of a replica database (crash tests, and a future ``fsck``).

It decodes every document, so its cost is that of the whole database: never on a hot path.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from syncd.crdt import CausalContext, decode_stored
from syncd.errors import CodecError
from syncd.replica import doclog
from syncd.replica.ranges import implicit_rids, own_top


def check_database(path: Path | str) -> list[str]:
    """Every inconsistency found in the database at ``path`` (empty when consistent).

    Checks SQLite's own integrity, that every document decodes (with its delta log) and its
    ``live`` flag matches, that each namespace's stored context is the union of its
    documents' contexts, that the dot index holds exactly the ranges of each document's
    context, and that no dot belongs to two documents. (Dot counters are not rows: they
    follow from the context. The context of a replica with ``next = 0`` is implicit,
    ``1..max(hi)`` of its index rows: the check then shows that range to be exactly what its
    documents hold.)
    Opens the file read-only; run it when no store has it open, or accept a snapshot.
    """
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return _check(conn)
    finally:
        conn.close()


def _check(conn: sqlite3.Connection) -> list[str]:
    problems = [f"integrity: {r[0]}" for r in conn.execute("PRAGMA integrity_check")]
    if problems == ["integrity: ok"]:
        problems = []
    names: dict[int, tuple[int, str]] = {}
    for rid, ns_id, replica in conn.execute("SELECT rid, ns_id, replica FROM replicas"):
        names[rid] = (ns_id, replica)
    union: dict[int, CausalContext] = {}
    expected_index: set[tuple[int, int, int, int]] = set()
    owner: dict[tuple[int, str], CausalContext] = {}
    logs: dict[int, list[tuple[int, bytes]]] = {}
    for doc_id, seq, blob in conn.execute("SELECT doc_id, seq, delta FROM doc_deltas"):
        logs.setdefault(doc_id, []).append((seq, bytes(blob)))
    for doc_id, ns_id, key, live, state in conn.execute(
        "SELECT doc_id, ns_id, key, live, state FROM docs"
    ):
        try:
            doc = decode_stored(bytes(state))
            doclog.replay(doc, sorted(logs.pop(doc_id, [])))
        except CodecError as exc:
            problems.append(f"document {key!r} (ns {ns_id}) does not decode: {exc}")
            continue
        if bool(live) != doc.exists():
            problems.append(f"document {key!r} (ns {ns_id}): live={live} but exists={doc.exists()}")
        ns_union = union.setdefault(ns_id, CausalContext())
        rid_of = {rep: rid for rid, (n, rep) in names.items() if n == ns_id}
        for replica, lo, hi in doc.ctx.ranges():
            seen = ns_union.for_replica(replica)
            if seen is not None and next(seen.overlapping(lo, hi), None) is not None:
                problems.append(f"document {key!r} (ns {ns_id}) shares dots of {replica} {lo}-{hi}")
            rid = rid_of.get(replica)
            if rid is None:
                problems.append(f"document {key!r} (ns {ns_id}) has unknown replica {replica}")
                continue
            expected_index.add((rid, hi, lo, doc_id))
        ns_union.update(doc.ctx)
        owner[(ns_id, key)] = doc.ctx
    stored: dict[int, CausalContext] = {}
    for rid, lo, hi in conn.execute("SELECT rid, lo, hi FROM ctx"):
        ns_id, replica = names[rid]
        stored.setdefault(ns_id, CausalContext()).add_range(replica, lo, hi)
    for rid in implicit_rids(conn):
        ns_id, replica = names[rid]  # implicit context 1..max(hi) (see schema.py)
        top = own_top(conn, rid)
        if top:
            stored.setdefault(ns_id, CausalContext()).add_range(replica, 1, top)
    for ns_id in set(stored) | set(union):
        if stored.get(ns_id, CausalContext()) != union.get(ns_id, CausalContext()):
            problems.append(
                f"namespace {ns_id}: stored context {stored.get(ns_id)!r} is not the union "
                f"of its documents' {union.get(ns_id)!r}"
            )
    problems += [f"delta log of a document that does not exist: {doc_id}" for doc_id in logs]
    index = set(conn.execute("SELECT rid, hi, lo, doc_id FROM dot_index"))
    if index != expected_index:
        problems.append(
            f"dot index differs: {len(index - expected_index)} extra rows, "
            f"{len(expected_index - index)} missing rows"
        )
    return problems
