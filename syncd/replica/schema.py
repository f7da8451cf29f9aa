"""The database file: its schema, forward migrations, and opening it safely.

The schema is versioned with ``PRAGMA user_version`` and marked as ours with ``PRAGMA
application_id``. Opening never resets anything: a file that is not a syncd database, is
damaged, or was written by a newer syncd raises an error that names the file. An older schema
is migrated forward, one version per transaction.

(SQLite 3.40's integrity check misreports NOT NULL columns of a WITHOUT ROWID table that come
after a primary-key column declared later, so primary-key columns are declared first.)

Tables (``rid`` numbers one replica within one namespace; dot counters are per namespace):

- ``namespaces(ns_id, name)``
- ``replicas(rid, ns_id, replica, next)``: every replica whose dots the namespace holds.
  ``next`` is 0 for the replica of a store's own incarnation until that incarnation's
  context has been written to ``ctx`` (see below), NULL otherwise. (Schema 2 wrote the dot
  counter there at each commit; such a value is honoured as a floor.)
- ``ctx(rid, lo, hi)``: the namespace causal context, disjoint ranges ``lo..hi`` per replica.
  The dots of the incarnation that is writing are not written here at each commit: they
  are ``1..n`` without a gap (a store hands them out in order, and only its own commits
  bring them), ``n`` being the highest in ``dot_index``, so a row ``next = 0`` stands for
  the range ``1..max(hi)``. The next open writes that range here and sets ``next`` to NULL
  (schema 3): from then on peers may bring that replica's dots like anyone's.
- ``docs(doc_id, ns_id, key, live, state)``: encoded CRDT state of every document, deleted
  ones included (their context still matters to anti-entropy); ``live`` mirrors ``exists()``.
- ``dot_index(rid, hi, doc_id, lo)``: the ranges of each document's context, so "documents
  holding dots a peer lacks" is a range query (schema 2). Every committed dot is here.
- ``doc_deltas(doc_id, seq, delta)``: deltas written to a large document since its ``state``
  was last stored whole; the document is ``state`` joined with them in ``seq`` order (schema
  4, see ``doclog.py``).
- ``peer_state(peer, ns_id, data)``: opaque per-peer sync metadata (schema 2).
- ``devices(device_id, name, addresses, last_seen)``: the trusted devices, and
  ``shares(ns_id, device_id)``: which namespace is shared with which of them (schema 2).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from syncd.replica.errors import (
    CorruptDatabaseError,
    DatabaseLockedError,
    DiskFullError,
    DiskIOError,
    SchemaTooNewError,
    StoreError,
)

APPLICATION_ID = 0x73796E63  # "sync"
SCHEMA_VERSION = 4
SQLITE_MAGIC = b"SQLite format 3\x00"
SYNCHRONOUS_LEVELS = ("full", "normal", "extra")

# Schema 1, kept verbatim: migrations start from it and a test creates it.
SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE namespaces (ns_id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE replicas (
    rid INTEGER PRIMARY KEY,
    ns_id INTEGER NOT NULL,
    replica TEXT NOT NULL,
    next INTEGER,
    UNIQUE (ns_id, replica)
);
CREATE TABLE ctx (
    rid INTEGER NOT NULL,
    lo INTEGER NOT NULL,
    hi INTEGER NOT NULL,
    PRIMARY KEY (rid, lo)
) WITHOUT ROWID;
CREATE TABLE docs (
    doc_id INTEGER PRIMARY KEY,
    ns_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    live INTEGER NOT NULL,
    state BLOB NOT NULL,
    UNIQUE (ns_id, key)
);
"""

SCHEMA_V2_ADDITIONS = """
CREATE TABLE dot_index (
    rid INTEGER NOT NULL,
    hi INTEGER NOT NULL,
    doc_id INTEGER NOT NULL,
    lo INTEGER NOT NULL,
    PRIMARY KEY (rid, hi, doc_id)
) WITHOUT ROWID;
CREATE INDEX docs_live ON docs (ns_id, live, key);
CREATE TABLE peer_state (
    peer TEXT NOT NULL,
    ns_id INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (peer, ns_id)
) WITHOUT ROWID;
CREATE TABLE devices (
    device_id TEXT PRIMARY KEY,
    name TEXT,
    addresses TEXT NOT NULL,
    last_seen REAL
) WITHOUT ROWID;
CREATE TABLE shares (
    ns_id INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    PRIMARY KEY (ns_id, device_id)
) WITHOUT ROWID;
"""

SCHEMA_V4_ADDITIONS = """
CREATE TABLE doc_deltas (
    doc_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    delta BLOB NOT NULL,
    PRIMARY KEY (doc_id, seq)
) WITHOUT ROWID;
"""

IndexBuilder = Callable[[sqlite3.Connection], None]


def rollback_quietly(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any, raising nothing: called while an error is on
    its way out, which must not be replaced by "cannot rollback" (SQLite rolls back by itself
    after some errors, such as a full disk)."""
    if conn.in_transaction:
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def database_error(path: Path, doing: str, exc: sqlite3.Error) -> StoreError:
    """Translate an ``sqlite3`` error into a :class:`StoreError` that names the file."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    message = f"{path}: {doing}: {exc}"
    if primary in (11, 26):  # SQLITE_CORRUPT, SQLITE_NOTADB
        return CorruptDatabaseError(
            message + " (the database looks damaged. If the disk itself failed, see the system "
            "log and fix that first: a failing disk also gives this error. Otherwise restore "
            "the database from a backup or move it away, with its -wal and -shm files)"
        )
    if primary in (5, 6):  # SQLITE_BUSY, SQLITE_LOCKED
        return DatabaseLockedError(message)
    if primary == 13:  # SQLITE_FULL
        return DiskFullError(message)
    if primary == 10:  # SQLITE_IOERR
        return DiskIOError(message)
    return StoreError(message)


def _check_header(path: Path) -> None:
    """An existing file must start with the SQLite magic; anything else is refused.

    That includes an empty file: syncd makes a new database under another name and renames it
    into place (:func:`open_database`), so an empty one was truncated, and SQLite would take
    it for a new database (and drop a write-ahead log beside it).
    """
    try:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the database: {exc}") from exc
    if not head:
        raise CorruptDatabaseError(
            f"{path}: the database file is empty (truncated?); restore it from a backup, or move "
            "it away to start with an empty database (refusing to treat it as new)"
        )
    if head != SQLITE_MAGIC:
        raise CorruptDatabaseError(f"{path}: not an SQLite database (refusing to overwrite it)")


def _create_file(path: Path, build_index: IndexBuilder) -> None:
    """Make a new, empty database at ``path`` atomically: built beside it, then renamed."""
    tmp = path.with_name(path.name + ".new")
    for leftover in (tmp, *(tmp.with_name(tmp.name + x) for x in ("-wal", "-shm", "-journal"))):
        leftover.unlink(missing_ok=True)  # from a start that crashed while creating
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            _prepare(conn, tmp, "full", build_index)
        finally:
            conn.close()  # the last connection checkpoints the log into the file
        os.replace(tmp, path)
    except sqlite3.Error as exc:
        raise database_error(path, "cannot create the database", exc) from exc


def _create(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _statements(SCHEMA_V1 + SCHEMA_V2_ADDITIONS + SCHEMA_V4_ADDITIONS):
            conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)
        raise


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _migrate_1_to_2(conn: sqlite3.Connection, build_index: IndexBuilder) -> None:
    for statement in _statements(SCHEMA_V2_ADDITIONS):
        conn.execute(statement)
    build_index(conn)


def _migrate_2_to_3(conn: sqlite3.Connection, build_index: IndexBuilder) -> None:
    """Nothing to rewrite: schema 3 only gives ``next = 0`` a meaning, which schema 2 never
    wrote. The version is raised so that older builds refuse a file whose ``ctx`` may lack
    the range of a ``next = 0`` replica."""


def _migrate_3_to_4(conn: sqlite3.Connection, build_index: IndexBuilder) -> None:
    for statement in _statements(SCHEMA_V4_ADDITIONS):
        conn.execute(statement)


def open_database(
    path: Path, *, synchronous: str = "full", build_index: IndexBuilder
) -> sqlite3.Connection:
    """Open (creating if absent) the database at ``path``, migrated to the current schema.

    ``build_index`` fills ``dot_index`` from the stored documents (used by the migration from
    schema 1, which had no index). The connection is in autocommit mode (explicit ``BEGIN
    IMMEDIATE``), WAL, with the given ``synchronous`` level.
    """
    if synchronous not in SYNCHRONOUS_LEVELS:
        raise ValueError(f"synchronous must be one of {SYNCHRONOUS_LEVELS}")
    if not path.exists():
        _create_file(path, build_index)
    _check_header(path)
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise database_error(path, "cannot open the database", exc) from exc
    try:
        _prepare(conn, path, synchronous, build_index)
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(
    conn: sqlite3.Connection, path: Path, synchronous: str, build_index: IndexBuilder
) -> None:
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{path}: cannot switch the database to WAL mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if app_id == 0 and version == 0:
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise CorruptDatabaseError(
                    f"{path}: an SQLite database that syncd did not create (refusing to use it)"
                )
            _create(conn)
            return
        if app_id != APPLICATION_ID:
            raise CorruptDatabaseError(
                f"{path}: not a syncd database (application_id {app_id:#x}; refusing to use it)"
            )
        if version > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"{path}: written by a newer syncd (schema {version}; this build knows up to "
                f"{SCHEMA_VERSION}); upgrade syncd to open it"
            )
        while version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                MIGRATIONS[version](conn, build_index)
                conn.execute(f"PRAGMA user_version = {version + 1}")
                conn.execute("COMMIT")
            except BaseException:
                rollback_quietly(conn)
                raise
            version += 1
    except sqlite3.Error as exc:
        raise database_error(path, "cannot open the database", exc) from exc


def quick_check(conn: sqlite3.Connection, path: Path) -> None:
    """Run SQLite's ``quick_check``; raise :class:`CorruptDatabaseError` on any finding."""
    try:
        rows = [r[0] for r in conn.execute("PRAGMA quick_check")]
    except sqlite3.Error as exc:
        raise database_error(path, "integrity check failed", exc) from exc
    if rows != ["ok"]:
        raise CorruptDatabaseError(f"{path}: integrity check failed: {'; '.join(rows[:5])}")


MIGRATIONS: dict[int, Callable[[sqlite3.Connection, IndexBuilder], None]] = {
    1: _migrate_1_to_2,
    2: _migrate_2_to_3,
    3: _migrate_3_to_4,
}
