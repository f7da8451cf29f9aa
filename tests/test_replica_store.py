"""The synchronous store: writes, reads, persistence, errors, schema migration, lazy loading."""

from __future__ import annotations

import gc
import random
import shutil
import sqlite3
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from syncd.crdt import CausalContext, Document, DotCounter, decode_stored, encode_document
from syncd.crdt._seqtree import Piece
from syncd.errors import InvalidOperation, PatchError, SyncdError
from syncd.replica import (
    CorruptDatabaseError,
    DatabaseLockedError,
    DatabaseReplacedError,
    Delete,
    DiskFullError,
    DiskIOError,
    InvalidDeltaError,
    InvalidKeyError,
    Patch,
    Put,
    SchemaTooNewError,
    Store,
    StoreError,
    doclog,
    schema,
)
from syncd.replica import core as replica_core
from syncd.replica.verify import check_database
from syncd.sync.replica import SyncReplica
from tests.conftest import needs_python_source


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "home" / "replica.sqlite3"


def test_put_get_patch_delete_list(db: Path) -> None:
    with Store(db) as s:
        c = s.apply_local("notes", "a", Put({"title": "hello", "n": 1}))
        assert (c.value, c.existed, c.origin, c.deleted) == (
            {"title": "hello", "n": 1},
            False,
            "local",
            False,
        )
        s.apply_local(
            "notes",
            "a",
            Patch([{"op": "make", "path": ["n"], "type": "counter", "value": 1}]),
        )
        s.apply_local("notes", "a", Patch([{"op": "inc", "path": ["n"], "by": 2}]))
        s.apply_local("notes", "b/1", Put({}))
        s.apply_local("notes", "b/2", Put({"x": [1, 2]}))
        s.apply_local("other", "b/3", Put({"x": 1}))
        assert s.get("notes", "a").value == {"title": "hello", "n": 3}
        assert s.list_keys("notes") == ["a", "b/1", "b/2"]
        assert s.list_keys("notes", "b/") == ["b/1", "b/2"]
        assert s.list_keys("missing") == []
        d = s.apply_local("notes", "b/1", Delete())
        assert d.existed
        assert d.deleted
        assert d.delta is not None
        again = s.apply_local("notes", "b/1", Delete())
        assert not again.existed
        assert again.delta is None
        assert s.list_keys("notes", "b") == ["b/2"]
        assert not s.get("notes", "b/1").exists
        assert not s.get("nope", "x").exists
    assert check_database(db) == []


def test_prefix_listing_at_unicode_edges(db: Path) -> None:
    keys = ["a", "a\U0010ffff", "a\U0010ffffz", "ab", "\ud7ff", "\ue000", "b"]
    with Store(db) as s:
        for k in keys:
            s.apply_local("ns", k, Put({}))
        assert s.list_keys("ns") == sorted(keys)
        for prefix in ["a", "a\U0010ffff", "\ud7ff", "\U0010ffff"]:
            assert s.list_keys("ns", prefix) == [k for k in sorted(keys) if k.startswith(prefix)]


def test_state_survives_reopen_with_a_fresh_replica_id(db: Path) -> None:
    with Store(db) as s:
        first = s.replica_id
        s.apply_local("ns", "k", Put({"v": 1}))
        ctx1 = s.context("ns")
    with Store(db) as s:
        assert s.replica_id != first
        assert s.get("ns", "k").value == {"v": 1}
        assert s.context("ns") == ctx1
        c = s.apply_local("ns", "k", Put({"v": 2}))
        assert c.dots is not None
        assert c.dots[0] == 1
        assert set(s.context("ns").replicas()) == {first, s.replica_id}
    assert check_database(db) == []


def test_dot_counter_resumes_from_the_committed_context(db: Path) -> None:
    # The counter has no row of its own: a store reopened under the same replica id (only
    # possible on purpose; every open takes a fresh id) continues after the highest dot the
    # committed context holds, and honours a counter that an older version wrote.
    with Store(db) as s:
        for i in range(5):
            s.apply_local("ns", f"k{i}", Put({"i": i}))
        rid = s.replica_id
        top = s.context("ns").max(rid)
    conn = sqlite3.connect(db)
    (nxt,) = conn.execute("SELECT next FROM replicas WHERE replica = ?", (rid,)).fetchone()
    conn.close()
    assert nxt == 0  # not written per commit, nor is its context range
    assert check_database(db) == []
    with Store(db, replica_id=rid) as s:
        change = s.apply_local("ns", "again", Put({"i": 9}))
        assert change.dots is not None and change.dots[0] == top + 1
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE replicas SET next = 100 WHERE replica = ?", (rid,))
    conn.close()
    with Store(db, replica_id=rid) as s:
        change = s.apply_local("ns", "floor", Put({"i": 10}))
        assert change.dots is not None and change.dots[0] == 100
    assert check_database(db) == []


@pytest.mark.parametrize(
    "ops",
    [
        [{"op": "inc", "path": ["x", "y"], "by": 2**63}],
        [
            {"op": "insert", "path": ["x"], "index": 0, "text": "new"},
            {"op": "insert", "path": ["x", "a"], "index": 0, "text": "y"},
        ],
    ],
)
def test_a_refused_patch_leaves_a_document_that_reads_after_a_restart(
    db: Path, ops: list[dict[str, Any]]
) -> None:
    """Two patches the engine refused only after changing the document: the store rewound the
    dot counter, the next write took those dots again, and after a restart the document no
    longer decoded (a dot appearing twice)."""
    with Store(db) as s:
        s.apply_local("ns", "k", Put({"n": 1}))
        with pytest.raises(PatchError):
            s.apply_local("ns", "k", Patch(ops))
        assert s.get("ns", "k").value == {"n": 1}
        s.apply_local("ns", "k", Put({"n": 2, "z": "after"}))
    with Store(db) as s:
        assert s.get("ns", "k").value == {"n": 2, "z": "after"}
    assert check_database(db) == []


@needs_python_source
@pytest.mark.parametrize(
    "ops",
    [
        [{"op": "set", "path": ["n"], "value": 2}],
        [{"op": "set", "path": ["n"], "value": 2}, {"op": "set", "path": ["t"], "value": "y"}],
    ],
)
def test_a_refusal_found_after_the_document_changed_reloads_it(
    db: Path, ops: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Should the engine refuse a change only after changing the document (a bug, which the
    model test of tests/test_document_model.py found twice), the store must not keep that
    half-made change and give its dots out again: the document is reloaded as stored."""
    from syncd.crdt import mutate

    finish = mutate.Change._finish

    def refuse_late(change: mutate.Change, existed: bool) -> Document:
        monkeypatch.setattr(mutate.Change, "_finish", finish)  # once
        raise PatchError("refused late", reason="too_large")

    with Store(db) as s:
        s.apply_local("ns", "k", Put({"n": 1, "t": "x"}))
        before, ctx = s.document("ns", "k"), s.context("ns")
        monkeypatch.setattr(mutate.Change, "_finish", refuse_late)
        with pytest.raises(PatchError) as info:
            s.apply_local("ns", "k", Patch(ops))
        assert info.value.document_changed
        assert "a refused change to 'k' had changed it; reloading it" in caplog.text
        assert s.document("ns", "k") == before
        assert s.context("ns") == ctx
        s.apply_local("ns", "k", Put({"n": 3, "t": "x"}))
    with Store(db) as s:  # (the dots of the late refusal were taken again: no duplicate)
        assert s.get("ns", "k").value == {"n": 3, "t": "x"}
    assert check_database(db) == []


def test_failed_patch_changes_nothing(db: Path) -> None:
    with Store(db) as s:
        s.apply_local("ns", "k", Put({"t": "x"}))
        before, ctx = s.document("ns", "k"), s.context("ns")
        with pytest.raises(PatchError):
            s.apply_local("ns", "k", Patch([{"op": "inc", "path": ["t"], "by": 1}]))
        with pytest.raises(InvalidOperation):
            s.apply_local("ns", "k", Patch([{"op": "bogus"}]))
        with pytest.raises(InvalidOperation):
            s.apply_local("ns", "k", Put([1]))  # type: ignore[arg-type]
        assert s.document("ns", "k") == before
        assert s.context("ns") == ctx
        c = s.apply_local("ns", "k", Put({"t": "y"}))
        assert c.dots is not None
        assert c.dots[0] == ctx.max(s.replica_id) + 1
    assert check_database(db) == []


@pytest.mark.parametrize(
    "bad", ["", "x" * 1025, "a\x00b", "\ud800", pytest.param(3, marks=needs_python_source)]
)
def test_bad_names_are_refused(db: Path, bad: object) -> None:
    with Store(db) as s, pytest.raises(InvalidKeyError):
        s.apply_local("ns", bad, Put({}))  # type: ignore[arg-type]


def test_batch_commits_everything_together(db: Path) -> None:
    with Store(db) as s:
        s.begin()
        changes = [s.apply_local("ns", f"k{i}", Put({"i": i})) for i in range(10)]
        s.apply_local("ns", "k0", Put({"i": 100}))
        assert s.list_keys("ns")[:2] == ["k0", "k1"]  # visible inside the batch
        committed = s.commit()
        assert committed[:10] == changes
        assert len(committed) == 11
        s.begin()
        s.apply_local("ns", "gone", Put({}))
        s.rollback()
        assert not s.get("ns", "gone").exists
    with Store(db) as s:
        assert len(s.list_keys("ns")) == 10
        assert s.get("ns", "k0").value == {"i": 100}
    assert check_database(db) == []


def lacking(s: Store, ns: str, peer_ctx: CausalContext) -> dict[str, Document]:
    """What a peer with ``peer_ctx`` lacks, found through the dot index (as anti-entropy does)."""
    out: dict[str, Document] = {}
    for replica, lo, hi in s.context(ns).difference(peer_ctx).ranges():
        for row_lo, row_hi, key in s.index_rows(ns, replica, lo, hi):
            assert row_lo <= hi
            assert row_hi >= lo
            doc = s.load(ns, key)
            assert doc is not None
            delta = doc.delta_since(peer_ctx)
            if delta is not None:
                out[key] = delta
    return out


def test_dot_index_finds_exactly_what_a_peer_lacks(db: Path) -> None:
    with Store(db) as s:
        for i in range(50):
            s.apply_local("ns", f"k{i % 20}", Put({"i": i}))
        old = s.context("ns")
        peer = {f"k{i}": s.document("ns", f"k{i}") for i in range(20)}
        for i in range(50, 60):
            s.apply_local("ns", f"k{i % 7}", Put({"i": i}))
        s.apply_local("ns", "k3", Delete())
        got = lacking(s, "ns", old)
        assert set(got) == {f"k{i % 7}" for i in range(50, 60)} | {"k3"}
        # A peer that held `old` and joins the deltas ends equal to us.
        for key, delta in got.items():
            doc = peer[key]
            assert doc is not None
            doc.join(delta)
            assert doc == s.document("ns", key)
        assert sorted(lacking(s, "ns", CausalContext())) == sorted(f"k{i}" for i in range(20))
        assert lacking(s, "ns", s.context("ns")) == {}
        assert s.index_rows("ns", "nobody", 1, 10) == []


def test_store_is_what_the_sync_engine_needs(db: Path) -> None:
    with Store(db) as s:
        replica: SyncReplica = s
        assert replica.load("ns", "absent") is None


def test_devices_shares_and_peer_state(db: Path) -> None:
    with Store(db) as s:
        s.trust("DEV-B", "laptop", ["10.0.0.2:22000"])
        s.trust("DEV-A", None)
        with pytest.raises(SyncdError) as err:
            s.share("notes", ["DEV-A", "DEV-X"])
        assert err.value.reason == "not_trusted"
        assert s.shared_with("notes") == []
        s.share("notes", ["DEV-B", "DEV-A"])
        s.apply_local("notes", "k", Put({}))
        s.save_peer_state("DEV-B", "notes", b"\x01\x02")
        s.device_seen("DEV-B", 1234.5)
    with Store(db) as s:
        assert [(d.device_id, d.name, d.addresses, d.last_seen) for d in s.devices()] == [
            ("DEV-A", None, (), None),
            ("DEV-B", "laptop", ("10.0.0.2:22000",), 1234.5),
        ]
        assert [(n.name, n.devices, n.documents) for n in s.namespaces()] == [
            ("notes", ("DEV-A", "DEV-B"), 1)
        ]
        assert s.load_peer_state("DEV-B", "notes") == b"\x01\x02"
        assert s.load_peer_state("DEV-A", "notes") is None
        s.unshare("notes", ["DEV-A"])
        assert s.shared_with("notes") == ["DEV-B"]
        assert s.untrust("DEV-B")
        assert not s.untrust("DEV-B")
        assert s.shared_with("notes") == []


# -- refusing bad files ---------------------------------------------------------------------------


def test_garbage_file_is_refused_and_left_alone(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CorruptDatabaseError, match=str(db)):
        Store(db)
    assert db.read_bytes() == b"this is not a database" * 100


def test_an_emptied_database_is_refused_not_taken_for_new(db: Path) -> None:
    with Store(db) as s:
        s.apply_local("n", "k", Put({"a": 1}))
    wal = db.with_name(db.name + "-wal")
    db.write_bytes(b"")  # truncated (a WAL beside it may even hold acknowledged writes)
    wal.write_bytes(b"log that must not be dropped")
    with pytest.raises(CorruptDatabaseError, match="empty"):
        Store(db)
    assert db.read_bytes() == b""
    assert wal.read_bytes() == b"log that must not be dropped"


def test_a_new_database_is_made_beside_and_renamed_into_place(db: Path) -> None:
    db.parent.mkdir(parents=True)
    leftover = db.with_name(db.name + ".new")
    leftover.write_bytes(b"")  # a start that crashed while creating the database
    with Store(db) as s:
        s.apply_local("n", "k", Put({"a": 1}))
    assert not leftover.exists()
    with Store(db) as s:
        assert s.get("n", "k").value == {"a": 1}


def test_foreign_sqlite_database_is_refused(db: Path) -> None:
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(CorruptDatabaseError, match="did not create"):
        Store(db)


def test_another_applications_database_is_refused(db: Path) -> None:
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA application_id = 1234")
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    with pytest.raises(CorruptDatabaseError, match=r"not a syncd database \(application_id 0x4d2"):
        Store(db)


def test_a_database_path_that_cannot_be_read_names_it(db: Path) -> None:
    db.mkdir(parents=True)  # a directory where the database should be
    with pytest.raises(StoreError, match=f"{db}: cannot read the database"):
        Store(db)
    assert db.is_dir() and not any(db.iterdir())


def test_newer_schema_is_refused(db: Path) -> None:
    Store(db).close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(SchemaTooNewError, match=str(db)):
        Store(db)


def test_damaged_pages_give_a_clear_error(db: Path) -> None:
    with Store(db) as s, s.batch():
        for i in range(300):
            s.apply_local("ns", f"k{i}", Put({"text": "x" * 200, "i": i}))
    data = bytearray(db.read_bytes())
    page = 4096
    for p in range(2, len(data) // page):
        data[p * page : p * page + 64] = b"\xa5" * 64
    db.write_bytes(bytes(data))
    with pytest.raises(CorruptDatabaseError, match=str(db)):
        Store(db, check=True)
    with pytest.raises(CorruptDatabaseError, match=str(db)), Store(db) as s:  # noqa: PT012
        for i in range(300):
            s.get("ns", f"k{i}")


def test_second_open_is_refused(db: Path) -> None:
    with Store(db), pytest.raises(DatabaseLockedError, match="in use"):
        Store(db)


# -- schema migration -----------------------------------------------------------------------------


def test_opens_and_migrates_a_schema_1_database(db: Path) -> None:
    """Schema 1 had no dot index, devices, shares or peer state."""
    doc = Document()
    counter = DotCounter("old-replica", 1)
    doc.put({"title": "from v1"}, counter)
    gone = Document()
    gone.put({"x": 1}, counter)
    gone.delete(counter)
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for stmt in schema.SCHEMA_V1.split(";"):
        if stmt.strip():
            conn.execute(stmt)
    conn.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO namespaces (ns_id, name) VALUES (1, 'ns')")
    conn.execute(
        "INSERT INTO replicas (rid, ns_id, replica, next) VALUES (1, 1, 'old-replica', ?)",
        (counter.next,),
    )
    conn.execute("INSERT INTO ctx (rid, lo, hi) VALUES (1, 1, ?)", (counter.next - 1,))
    conn.execute(
        "INSERT INTO docs (ns_id, key, live, state) VALUES (1, 'a', 1, ?)", (encode_document(doc),)
    )
    conn.execute(
        "INSERT INTO docs (ns_id, key, live, state) VALUES (1, 'b', 0, ?)", (encode_document(gone),)
    )
    conn.close()
    with Store(db) as s:
        assert s.get("ns", "a").value == {"title": "from v1"}
        assert s.list_keys("ns") == ["a"]
        assert sorted(lacking(s, "ns", CausalContext())) == ["a", "b"]
        s.apply_local("ns", "c", Put({}))
        s.trust("DEV")
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    conn.close()
    assert check_database(db) == []


def test_a_failed_migration_reports_its_own_error_not_the_rollback(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After some errors (a full disk) SQLite has already rolled the transaction back; the
    # ROLLBACK that followed then failed and its "no transaction is active" hid the cause.
    Store(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION - 1}")
    conn.close()

    def disk_full(conn: sqlite3.Connection, build_index: Any) -> None:
        conn.execute("ROLLBACK")  # as SQLite does on SQLITE_FULL
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setitem(schema.MIGRATIONS, schema.SCHEMA_VERSION - 1, disk_full)
    with pytest.raises(StoreError, match="database or disk is full"):
        Store(db)


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_writes_are_refused_once_the_database_file_is_gone(db: Path, how: str) -> None:
    # Acknowledging writes into a file nothing will open again would lose them for sure.
    with Store(db) as s:
        s.apply_local("n", "before", Put({"v": 1}))
        for f in db.parent.glob(db.name + "*"):
            if f.name != db.name + ".lock":
                f.rename(f.with_name(f.name + ".moved"))
        if how == "replaced":  # a new, empty database where the old one was
            other = db.with_name("other.sqlite3")
            Store(other).close()
            other.rename(db)
        with pytest.raises(DatabaseReplacedError, match=f"{db}: the database file was {how}"):
            s.apply_local("n", "after", Put({"v": 2}))
        assert s.get("n", "before").value == {"v": 1}  # reads still work
        with pytest.raises(DatabaseReplacedError):
            s.apply_local("n", "after", Put({"v": 2}))


def test_a_database_put_back_while_open_does_not_get_the_old_write_ahead_log(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # SQLite would apply the old connection's -wal to whatever file is at the path next;
    # a backup restored under a running daemon came back as the database it replaced.
    backup = db.with_name("backup.sqlite3")
    with Store(backup) as b:
        b.apply_local("restored", "doc", Put({"v": 1}))
    s = Store(db)
    for i in range(20):
        s.apply_local("n", f"k{i}", Put({"v": i}))
    backup.rename(db)  # put back while the store has the old one open
    with pytest.raises(DatabaseReplacedError):
        s.apply_local("n", "x", Put({"v": 1}))
    with caplog.at_level("WARNING", logger="syncd.replica"):
        s.close()
    assert "its write-ahead log is set aside" in caplog.text
    assert sorted(p.name.split(".stale-")[0] for p in db.parent.glob("*.stale-*")) == [
        db.name + "-shm",
        db.name + "-wal",
    ]
    with Store(db) as again:
        assert again.list_keys("restored") == ["doc"]
        assert again.list_keys("n") == []


def test_a_write_ahead_log_without_its_database_is_set_aside_not_applied(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A daemon killed (its -wal holds the latest writes), then syncd.db moved away to start
    # empty: SQLite would apply the orphaned log to the new database.
    crashed = db.parent.parent / "crashed"
    crashed.mkdir()
    files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
    with Store(db) as s:
        for i in range(20):
            s.apply_local("n", f"k{i}", Put({"v": i}))
        for f in files:
            shutil.copy(f, crashed / f.name)  # the files as a kill -9 now would leave them
    for f in files:
        f.unlink(missing_ok=True)
    shutil.copy(crashed / (db.name + "-wal"), db.parent)
    shutil.copy(crashed / (db.name + "-shm"), db.parent)
    moved = crashed / db.name  # "moved away", without its log
    with caplog.at_level("WARNING", logger="syncd.replica"), Store(db) as fresh:
        assert fresh.list_keys("n") == []
    assert f"{db} does not exist but its write-ahead log does" in caplog.text
    assert f"rename {db.name}-wal.stale-" in caplog.text  # the one file to rename
    aside = sorted(db.parent.glob("*.stale-*"))
    assert [p.name.split(".stale-")[0] for p in aside] == [db.name + "-shm", db.name + "-wal"]
    # What the warning advises: the moved database with the log set aside next to it.
    for f in files:
        f.unlink(missing_ok=True)
    moved.rename(db)
    aside[1].rename(db.with_name(db.name + "-wal"))
    with Store(db) as recovered:
        assert len(recovered.list_keys("n")) == 20


def test_a_lone_index_file_is_set_aside_without_a_word_and_names_are_never_reused(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db.parent.mkdir(parents=True)
    shm = db.with_name(db.name + "-shm")
    for round_ in range(3):  # within one second: each gets a name of its own
        shm.write_bytes(b"round %d" % round_)
        with caplog.at_level("WARNING", logger="syncd.replica"), Store(db):
            pass
        for f in (db, db.with_name(db.name + "-wal"), shm):
            f.unlink(missing_ok=True)
    assert caplog.text == ""  # (SQLite rebuilds an index: nothing of value was in it)
    kept = sorted(f.read_bytes() for f in db.parent.glob(shm.name + ".stale-*"))
    assert kept == [b"round 0", b"round 1", b"round 2"]


@needs_python_source
def test_a_database_file_that_cannot_be_checked_is_an_io_error(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(db) as s:
        s.apply_local("n", "a", Put({"v": 1}))

        def unreadable(path: Path) -> tuple[int, int]:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(replica_core, "_file_id", unreadable)
        with pytest.raises(DiskIOError, match="cannot check the database file: Permission denied"):
            s.apply_local("n", "b", Put({"v": 2}))
        monkeypatch.undo()
        s.apply_local("n", "b", Put({"v": 2}))  # and the store goes on once it can
        assert s.get("n", "b").value == {"v": 2}


def test_sqlite_errors_map_to_reasons(db: Path) -> None:
    def err(code: int) -> sqlite3.Error:
        exc = sqlite3.OperationalError("x")
        exc.sqlite_errorcode = code
        return exc

    for code, cls in (
        (13, DiskFullError),
        (10 | (3 << 8), DiskIOError),
        (11, CorruptDatabaseError),
    ):
        got = schema.database_error(db, "commit failed", err(code))
        assert type(got) is cls and str(got).startswith(f"{db}: commit failed: x")
    assert DiskFullError.reason == "disk_full" and DiskIOError.reason == "io_error"


# -- lazy loading ---------------------------------------------------------------------------------


@needs_python_source
def test_100k_documents_open_and_one_get_loads_one(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(db, synchronous="normal") as s, s.batch():
        for i in range(100_000):
            s.apply_local("big", f"doc{i:06d}", Put({"i": i}))
    decoded: list[int] = []
    real = replica_core.decode_stored  # type: ignore[attr-defined]

    def counting(data: bytes) -> Document:
        decoded.append(len(data))
        return real(data)

    monkeypatch.setattr(replica_core, "decode_stored", counting)
    with Store(db) as s:
        assert s.get("big", "doc054321").value == {"i": 54321}
        assert len(decoded) == 1
        assert s.list_keys("big", "doc09999") == [f"doc09999{i}" for i in range(10)]
        assert len(decoded) == 1


def test_cache_is_bounded(db: Path) -> None:
    with Store(db, cache_items=50) as s:
        for i in range(500):
            s.apply_local("ns", f"k{i}", Put({"i": i}))
        assert len(s._cache) <= 50
        assert [s.get("ns", f"k{i}").value for i in range(0, 500, 97)] == [
            {"i": i} for i in range(0, 500, 97)
        ]


def _decoded_memory(state: bytes) -> int:
    """Bytes a decoded copy of ``state`` holds (traced allocations)."""
    gc.collect()
    tracemalloc.start()
    try:
        doc = decode_stored(state)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert doc.exists()
    return held


def test_the_default_cache_budget_bounds_the_memory_it_holds(db: Path) -> None:
    # The budget counts encoded bytes; a decoded document takes tens of times that (a
    # much-edited text most of all). 16 MiB, the first default, let a daemon whose documents
    # all fit in it grow towards 1 GB.
    rng = random.Random(3)
    with Store(db) as s:
        s.apply_local("ns", "k", Put({}))
        s.apply_local("ns", "k", Patch([{"op": "make", "path": ["t"], "type": "text"}]))
        length = 0
        for _ in range(1500):  # typed in many places: many runs
            at = rng.randint(0, length)
            s.apply_local(
                "ns", "k", Patch([{"op": "insert", "path": ["t"], "index": at, "text": "ab"}])
            )
            length += 2
        doc = s.document("ns", "k")
    assert doc is not None
    state = encode_document(doc)
    per_byte = _decoded_memory(state) / len(state)
    assert 20 < per_byte < 150  # (what the budget's docstring says, roughly)
    assert replica_core.DEFAULT_CACHE_BYTES * per_byte < 160 * 1024 * 1024


def _pieces(doc: Document) -> list[Piece]:
    return [
        piece
        for sst in doc._seqs.values()
        for idx in sst.seq._index.values()
        for run in idx.runs
        for piece in run.pieces
    ]


def _live_pieces() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is Piece)


def _typed(s: Store, key: str, rng: random.Random) -> None:
    """A text typed in many places (a structure of many pieces, with reference cycles)."""
    s.apply_local("ns", key, Patch([{"op": "make", "path": ["t"], "type": "text"}]))
    for n in range(0, 400, 2):
        at = rng.randint(0, n)
        s.apply_local(
            "ns", key, Patch([{"op": "insert", "path": ["t"], "index": at, "text": "ab"}])
        )


def test_documents_the_cache_drops_are_freed_at_once(db: Path) -> None:
    # A text's structure holds reference cycles, and the daemon's collector thresholds make
    # full collections rare: dropped documents piled up to several times the cache's size.
    rng = random.Random(4)
    gc.collect()
    gc.disable()
    try:
        baseline = _live_pieces()  # (whatever else the process holds)
        with Store(db, cache_items=2) as s:
            for i in range(12):
                _typed(s, f"k{i}", rng)
            held = _live_pieces() - baseline
            one = s.document("ns", "k11")  # a copy: as many pieces as one document has
            assert one is not None
            per_document = _live_pieces() - baseline - held
            assert per_document > 200
            assert held <= 3 * per_document  # what the cache holds (two), not twelve
            assert s.get("ns", "k0").value is not None  # (reloaded, not lost)
    finally:
        gc.enable()


@pytest.mark.parametrize("end", ["commit", "rollback"])
def test_documents_dropped_while_a_batch_writes_them_are_freed_after_it(db: Path, end: str) -> None:
    rng = random.Random(7)
    gc.collect()
    gc.disable()
    try:
        baseline = _live_pieces()
        with Store(db, cache_items=2) as s:
            s.begin()
            for i in range(8):  # all dirty: the cache drops them, the batch still needs them
                _typed(s, f"k{i}", rng)
            assert s.get("ns", "k0").value is not None  # (still whole meanwhile)
            if end == "commit":
                s.commit()
            else:
                s.rollback()
            held = _live_pieces() - baseline
            one = s.document("ns", "k1") if end == "commit" else None
            per_document = (_live_pieces() - baseline - held) if one else 200
            assert held <= 3 * per_document, (held, per_document)
    finally:
        gc.enable()
    assert check_database(db) == []


def test_a_dropped_document_still_in_use_is_left_alone(db: Path) -> None:
    rng = random.Random(6)
    with Store(db, cache_items=2) as s:
        _typed(s, "held", rng)
        doc = s.load("ns", "held")  # handed out (the sync engine reads it so)
        assert doc is not None
        before = doc.render()
        with s.batch():  # and one written in the batch that drops it
            s.apply_local("ns", "dirty", Put({"t": "x"}))
            for i in range(4):
                _typed(s, f"other{i}", rng)
            s.apply_local("ns", "dirty", Put({"t": "y"}))
        assert doc.render() == before  # still whole: not released (its cycles are kept)
        assert all(hasattr(piece, "run") for piece in _pieces(doc))
        assert decode_stored(encode_document(doc)) == doc
        assert s.get("ns", "dirty").value == {"t": "y"}
    with Store(db) as s:
        assert s.get("ns", "held").value == before
        assert s.get("ns", "dirty").value == {"t": "y"}
    assert check_database(db) == []


def test_own_context_is_implicit_then_written_at_the_next_open(db: Path) -> None:
    # An incarnation's own dots are 1..n without a gap, so its context range is not written
    # per commit (one WAL page less); the next open writes it, before peers may bring that
    # replica's dots back (a restored backup meeting a peer that holds newer ones).
    with Store(db) as s:
        for i in range(5):
            s.apply_local("ns", f"k{i}", Put({"i": i}))
        old, top = s.replica_id, s.context("ns").max(s.replica_id)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM ctx").fetchone() == (0,)
    conn.close()
    assert check_database(db) == []
    with Store(db) as s:
        own = s.context("ns").for_replica(old)
        assert own is not None
        assert list(own.pairs()) == [(1, top)]
        # A peer sends a document of the old incarnation that this copy never had.
        later = Document().put({"from": "peer"}, DotCounter(old, top + 5))
        s.apply_remote("ns", [("later", later)], "DEV-P")
    assert check_database(db) == []
    with Store(db) as s:
        held = s.context("ns").for_replica(old)
        assert held is not None
        sent = later.ctx.for_replica(old)
        assert sent is not None and min(sent.pairs())[0] == top + 5
        assert list(held.pairs()) == [(1, top), *sent.pairs()]  # no gap papered over
        assert s.get("ns", "later").value == {"from": "peer"}


def test_a_rollback_does_not_hand_out_committed_dots_again(db: Path) -> None:
    # After a failed batch the store reloads its contexts from the database; the counter
    # must resume after the dots of the writes that did commit.
    with Store(db) as s:
        for i in range(5):
            s.apply_local("ns", f"k{i}", Put({"i": i}))
        before = s.context("ns").max(s.replica_id)
        s.begin()
        s.apply_local("ns", "k0", Put({"i": 100}))
        s.rollback()
        change = s.apply_local("ns", "k9", Put({"i": 9}))
        assert change.dots is not None and change.dots[0] == before + 1
        assert s.get("ns", "k0").value == {"i": 0}
    assert check_database(db) == []


def _log_rows(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM doc_deltas").fetchone()[0])
    finally:
        conn.close()


def _stored_state(db: Path, key: str) -> bytes:
    conn = sqlite3.connect(db)
    try:
        return bytes(conn.execute("SELECT state FROM docs WHERE key = ?", (key,)).fetchone()[0])
    finally:
        conn.close()


def _keystroke(i: int) -> Patch:
    return Patch([{"op": "insert", "path": ["body"], "index": 1000 + i, "text": "z"}])


def test_small_writes_to_a_large_document_go_to_its_delta_log(db: Path) -> None:
    body = "".join(chr(97 + (i * 7) % 26) for i in range(40_000))
    with Store(db) as s:
        make = {"op": "make", "path": ["body"], "type": "text", "value": body}
        s.apply_local("n", "big", Patch([make]))
        base = _stored_state(db, "big")
        assert len(base) >= doclog.LOG_MIN_STATE_BYTES
        for i in range(10):
            s.apply_local("n", "big", _keystroke(i))
        assert _log_rows(db) == 10
        assert _stored_state(db, "big") == base  # the base was not rewritten
        before = s.document("n", "big")
    assert check_database(db) == []
    with Store(db) as s:  # base + log, joined back
        assert s.document("n", "big") == before
        for i in range(10, 10 + doclog.LOG_MAX_ROWS):
            s.apply_local("n", "big", _keystroke(i))
        folded = s.document("n", "big")
    assert _log_rows(db) < doclog.LOG_MAX_ROWS  # folded into a new base on the way
    assert _stored_state(db, "big") != base
    assert check_database(db) == []
    with Store(db) as s:
        assert s.document("n", "big") == folded
        value = s.get("n", "big").value
        assert value is not None
        assert value["body"].count("z") == body.count("z") + 10 + doclog.LOG_MAX_ROWS


def test_delta_log_keeps_deletes_and_remote_changes(db: Path) -> None:
    with Store(db, log_min_bytes=0, log_max_share=0) as s:  # every document logs
        s.apply_local("n", "k", Put({"t": "x"}))
        s.apply_local("n", "k", Put({"t": "y", "u": 1}))
        s.apply_local("n", "gone", Put({"t": "x"}))
        s.apply_local("n", "gone", Delete())
        peer = Document().put({"from": "peer"}, DotCounter("peer", 1))
        s.apply_remote("n", [("k", peer)], "DEV-P")
        assert _log_rows(db) >= 3
        expected = {key: s.document("n", key) for key in ("k", "gone")}
        assert s.list_keys("n") == ["k"]
    assert check_database(db) == []
    with Store(db) as s:
        assert {key: s.document("n", key) for key in ("k", "gone")} == expected
        assert s.get("n", "k").value == {"t": "y", "u": 1, "from": "peer"}
        assert not s.get("n", "gone").exists
        assert s.list_keys("n") == ["k"]


def test_an_unreadable_delta_log_is_reported_not_skipped(db: Path) -> None:
    with Store(db, log_min_bytes=0, log_max_share=0) as s:
        s.apply_local("n", "k", Put({"t": "x"}))
        s.apply_local("n", "k", Put({"t": "y"}))
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE doc_deltas SET delta = x'ff00ff'")
    conn.close()
    with Store(db) as s, pytest.raises(CorruptDatabaseError, match="delta log of document 'k'"):
        s.get("n", "k")
    assert any("does not decode" in p for p in check_database(db))


@pytest.mark.parametrize("logged", [False, True])
def test_a_document_never_grows_past_the_size_limit(
    db: Path, monkeypatch: pytest.MonkeyPatch, logged: bool
) -> None:
    # Such a document used to be stored, and then refused by the reader (the limit is what a
    # peer accepts), after a restart: an acknowledged write made it unreadable.
    monkeypatch.setattr(replica_core, "MAX_DOCUMENT_BYTES", 20_000)
    with Store(db, log_min_bytes=1_000 if logged else doclog.LOG_MIN_STATE_BYTES) as s:
        s.apply_local("n", "k", Put({"a": "x" * 9_000}))
        s.apply_local("n", "k", Patch([{"op": "set", "path": ["b"], "value": "y" * 9_000}]))
        with pytest.raises(PatchError) as info:
            s.apply_local("n", "k", Patch([{"op": "set", "path": ["c"], "value": "z" * 9_000}]))
        assert info.value.reason == "too_large"
        assert set(s.get("n", "k").value or {}) == {"a", "b"}
        s.apply_local("n", "other", Put({"ok": True}))  # the store is still usable
        huge = Document()
        huge.put({"d": "w" * 30_000}, DotCounter("feedfacefeedface"))
        with pytest.raises(InvalidDeltaError):
            s.apply_remote("n", [("k", huge)], "DEV")
        assert set(s.get("n", "k").value or {}) == {"a", "b"}
    with Store(db) as s:  # and all of it reads back
        assert set(s.get("n", "k").value or {}) == {"a", "b"}
        assert s.get("n", "other").value == {"ok": True}
    assert check_database(db) == []


def test_changes_carry_a_value_only_when_wanted(db: Path) -> None:
    with Store(db) as s:
        s.wants_value = lambda ns, key: key.startswith("w")
        shown = s.apply_local("n", "w1", Put({"a": 1}))
        quiet = s.apply_local("n", "x1", Put({"a": 1}))
        gone = s.apply_local("n", "x1", Delete())
        assert (shown.value, shown.exists, shown.deleted) == ({"a": 1}, True, False)
        assert (quiet.value, quiet.exists, quiet.deleted) == (None, True, False)
        assert (gone.value, gone.exists, gone.deleted) == (None, False, True)
        assert s.get("n", "x1").value is None and s.get("n", "w1").value == {"a": 1}


def test_a_logged_document_that_fits_is_not_refused_for_its_log(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Base plus log overstate a document whose values were overwritten; a write that fits
    # was refused, and so was every later one: deleting the document did not help either.
    monkeypatch.setattr(replica_core, "MAX_DOCUMENT_BYTES", 20_000)
    with Store(db, log_min_bytes=1_000) as s:
        s.apply_local("n", "k", Put({"a": "x" * 12_000}))
        for i in range(3):  # overwrite it with small values: logged, the base stays
            s.apply_local("n", "k", Patch([{"op": "set", "path": ["a"], "value": f"v{i}"}]))
        s.apply_local("n", "k", Patch([{"op": "set", "path": ["b"], "value": "y" * 12_000}]))
        assert s.get("n", "k").value == {"a": "v2", "b": "y" * 12_000}
        s.apply_local("n", "k", Delete())
        s.apply_local("n", "k", Put({"c": "z" * 15_000}))  # fits: the document is small now
        with pytest.raises(PatchError):  # and what does not fit is still refused
            s.apply_local("n", "k", Patch([{"op": "set", "path": ["d"], "value": "w" * 9_000}]))
    with Store(db) as s:
        assert s.get("n", "k").value == {"c": "z" * 15_000}
    assert check_database(db) == []
