"""Remote deltas through the store: idempotent, order-independent, durable, validated."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.crdt import Document, DotCounter
from syncd.replica import InvalidDeltaError, Put, Store
from syncd.replica.verify import check_database
from tests.crdt_strategies import random_change

KEYS = ["a", "b", "c"]
Log = list[tuple[str, str, Document]]


def make_log(rng: random.Random, steps: int) -> Log:
    """Deltas made by three peers editing shared documents, sometimes after gossiping."""
    counters = [DotCounter(f"peer{i}") for i in range(3)]
    docs: list[dict[str, Document]] = [{}, {}, {}]
    log: Log = []
    for _ in range(steps):
        p = rng.randrange(3)
        key = rng.choice(KEYS)
        delta = random_change(rng, docs[p].setdefault(key, Document()), counters[p])
        if delta.is_bottom():
            continue
        log.append((f"DEV{p}", key, delta))
        if rng.random() < 0.5:
            docs[rng.randrange(3)].setdefault(key, Document()).join(delta)
    return log


def reference(log: Log) -> dict[str, Document]:
    out: dict[str, Document] = {}
    for _, key, delta in log:
        out.setdefault(key, Document()).join(delta)
    return out


@settings(max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 25))
def test_any_order_with_duplicates_and_reopens_converges(seed: int, steps: int) -> None:
    rng = random.Random(seed)
    log = make_log(rng, steps)
    ref = reference(log)
    with tempfile.TemporaryDirectory() as tmp:
        a_path, b_path = Path(tmp, "a.sqlite3"), Path(tmp, "b.sqlite3")
        with Store(a_path, synchronous="normal") as a:
            for origin, key, delta in log:
                for got_key, new in a.apply_remote("ns", [(key, delta)], origin):
                    assert got_key == key
                    assert delta.ctx.includes(new.ctx)  # only what was new is returned
            before = a.context("ns")
            # Idempotent: everything again changes nothing.
            for origin, key, delta in log:
                assert a.apply_remote("ns", [(key, delta)], origin) == []
            assert a.context("ns") == before
        shuffled = [item for item in log for _ in range(rng.choice([1, 2]))]
        rng.shuffle(shuffled)
        # b keeps every document as a base plus logged deltas (see doclog.py); a does not.
        b = Store(b_path, synchronous="normal", log_min_bytes=0, log_max_share=0)
        try:
            i = 0
            while i < len(shuffled):
                group = shuffled[i : i + rng.randint(1, 4)]
                b.apply_remote("ns", [(k, d) for _, k, d in group], group[0][0])
                i += len(group)
                if rng.random() < 0.2:
                    b.close()
                    b = Store(b_path, synchronous="normal", log_min_bytes=0, log_max_share=0)
        finally:
            b.close()
        with Store(a_path) as a, Store(b_path) as b:
            union = Document().ctx
            for key in KEYS:
                want = ref.get(key)
                assert a.document("ns", key) == want
                assert b.document("ns", key) == want
                if want is not None:
                    union.update(want.ctx)
                    assert b.get("ns", key).value == want.render()
            assert a.context("ns") == union == b.context("ns")
        assert check_database(a_path) == []
        assert check_database(b_path) == []


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "r.sqlite3")
    s.apply_local("ns", "mine", Put({"v": 1}))
    return s


def unchanged(store: Store, fn: object) -> None:
    """Run ``fn`` expecting InvalidDeltaError, and check nothing changed."""
    ctx = store.context("ns")
    docs = {k: store.document("ns", k) for k in ("mine", "x", "y")}
    with pytest.raises(InvalidDeltaError):
        fn()  # type: ignore[operator]
    assert store.context("ns") == ctx
    assert {k: store.document("ns", k) for k in ("mine", "x", "y")} == docs
    store.close()
    assert check_database(store.path) == []


def test_delta_claiming_our_own_unmade_dots_is_refused(store: Store) -> None:
    forged = Document()
    forged.put({"evil": 1}, DotCounter(store.replica_id, 1000))
    unchanged(store, lambda: store.apply_remote("ns", [("x", forged)], "DEV1"))


def test_delta_reusing_dots_of_another_document_is_refused(store: Store) -> None:
    mine = store.document("ns", "mine")
    assert mine is not None
    other = Document()
    other.join(mine)  # the same dots, presented as a different document
    good = Document()
    good.put({"ok": 1}, DotCounter("peer", 1))
    unchanged(store, lambda: store.apply_remote("ns", [("y", good), ("x", other)], "DEV1"))


def test_two_documents_claiming_the_same_new_dots_are_refused(store: Store) -> None:
    d = Document()
    d.put({"ok": 1}, DotCounter("peer", 1))
    unchanged(store, lambda: store.apply_remote("ns", [("x", d), ("y", d)], "DEV1"))


def test_delta_holding_dots_outside_its_context_is_refused(store: Store) -> None:
    d = Document()
    d.put({"ok": 1}, DotCounter("peer", 1))
    d.ctx.remove_range("peer", 1, 1)
    unchanged(store, lambda: store.apply_remote("ns", [("x", d)], "DEV1"))


def test_non_document_is_refused(store: Store) -> None:
    unchanged(store, lambda: store.apply_remote("ns", [("x", b"bytes")], "DEV1"))  # type: ignore[list-item]


def test_remote_change_is_durable_and_reported(tmp_path: Path) -> None:
    d = Document()
    delta = d.put({"t": "remote"}, DotCounter("peer", 1))
    with Store(tmp_path / "r.sqlite3") as s:
        s.begin()
        ((key, new),) = s.apply_remote("ns", [("k", delta)], "DEV1")
        assert key == "k"
        assert new == delta
        (change,) = s.commit()
        assert (change.value, change.origin, change.existed) == ({"t": "remote"}, "DEV1", False)
    with Store(tmp_path / "r.sqlite3") as s:
        assert s.get("ns", "k").value == {"t": "remote"}
        assert s.context("ns") == delta.ctx


def test_dot_index_rows_can_end_at_the_largest_counter(store: Store) -> None:
    # 256 index rows (one page) whose last ends at 2**63 - 1: the next page's cursor would
    # be 2**63, which SQLite cannot bind (a bare OverflowError at every catch-up).
    a, b = Document(), Document()
    a.put({"z": "a"}, DotCounter("A", 1))
    b.put({"z": "b"}, DotCounter("B", 1))
    for c in range(1, 256, 2):
        a.ctx.add_range("X", c, c)
    for c in range(2, 255, 2):
        b.ctx.add_range("X", c, c)
    b.ctx.add_range("X", 256, 2**63 - 1)
    store.apply_remote("ns", [("a", a), ("b", b)], "DEV1")
    rows = store.index_rows("ns", "X", 1, 2**63 - 1)
    assert len(rows) == 256
    assert rows[-1] == (256, 2**63 - 1, "b")


def test_the_sync_engine_closes_on_a_refused_delta(store: Store) -> None:
    from syncd.crdt import encode_document
    from syncd.sync.engine import SyncEngine
    from syncd.sync.errors import RemoteProtocolError
    from syncd.sync.messages import Deltas, Offer

    engine = SyncEngine(store)
    engine.connect("peer", {"ns"}, 0.0)
    engine.next_messages("peer", 0.0)
    engine.receive("peer", Offer(("ns",), False), 0.0)
    forged = Document()
    forged.put({"evil": 1}, DotCounter(store.replica_id, 1000))  # dots only we make
    with pytest.raises(RemoteProtocolError) as info:
        engine.receive("peer", Deltas("ns", 1, (("x", encode_document(forged)),)), 0.0)
    assert info.value.reason == "bad_delta"
    assert store.document("ns", "x") is None
