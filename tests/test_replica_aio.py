"""The replica from trio: group commit, change feed, failures, cancellation, closing."""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from syncd.crdt import Document, DotCounter
from syncd.errors import PatchError
from syncd.replica import Change, Patch, Put, ReplicaClosedError, Store, Writer, aio, open_replica
from syncd.replica.aio import INLINE_BATCH_MAX_S
from syncd.replica.verify import check_database


async def test_roundtrip(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite3"
    async with open_replica(db) as rep:
        await rep.put("ns", "a", {"t": "x"})
        await rep.patch("ns", "a", [{"op": "set", "path": ["u"], "value": 1}])
        assert (await rep.get("ns", "a")).value == {"t": "x", "u": 1}
        assert (await rep.delete("ns", "a")).existed
        assert not (await rep.delete("ns", "a")).existed
        assert await rep.list_keys("ns") == []
        await rep.trust("DEV")
        await rep.share("ns", ["DEV"])
        assert [n.devices for n in await rep.namespaces()] == [("DEV",)]
    assert check_database(db) == []


async def test_concurrent_writers_share_commits(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite3"
    async with open_replica(db) as rep:
        async with trio.open_nursery() as nursery:
            for w in range(64):
                nursery.start_soon(rep.put, "ns", f"k{w}", {"w": w})
        stats = rep.writer.stats
        assert stats.requests == 64
        assert stats.commits <= 16, stats  # 64 writes, a handful of fsyncs
    with Store(db) as s:
        assert len(s.list_keys("ns")) == 64


async def test_a_bad_patch_fails_alone(tmp_path: Path) -> None:
    async with open_replica(tmp_path / "r.sqlite3") as rep:
        await rep.put("ns", "k", {"t": "text"})
        results: dict[str, object] = {}

        async def good(i: int) -> None:
            results[f"g{i}"] = (await rep.put("ns", f"g{i}", {"i": i})).value

        async def bad() -> None:
            with pytest.raises(PatchError):
                await rep.patch("ns", "k", [{"op": "inc", "path": ["t"], "by": 1}])
            results["bad"] = "raised"

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(good, i)
            nursery.start_soon(bad)
        assert results == {"bad": "raised", **{f"g{i}": {"i": i} for i in range(10)}}


async def test_a_poisoned_batch_is_retried_without_the_culprit(tmp_path: Path) -> None:
    def poison(s: Store) -> None:
        s.apply_local("ns", "culprit", Put({"x": 1}))
        s.poisoned = True
        raise RuntimeError("boom")

    async with open_replica(tmp_path / "r.sqlite3") as rep:

        async def culprit() -> None:
            with pytest.raises(RuntimeError, match="boom"):
                await rep.call(poison)

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(rep.put, "ns", f"g{i}", {"i": i})
            nursery.start_soon(culprit)
        assert await rep.list_keys("ns") == sorted(f"g{i}" for i in range(20))


async def test_change_feed_in_commit_order_with_filters(tmp_path: Path) -> None:
    async with open_replica(tmp_path / "r.sqlite3") as rep:
        everything = rep.subscribe()
        notes_b = rep.subscribe("notes", "b/")
        seen: list[Change] = []
        remove = rep.add_change_listener(seen.append)
        await rep.put("notes", "a", {"n": 1})
        await rep.put("notes", "b/1", {"n": 2})
        await rep.put("other", "b/2", {"n": 3})
        await rep.delete("notes", "b/1")
        delta = Document().put({"r": 1}, DotCounter("peer", 1))
        await rep.apply_remote("notes", [("b/9", delta)], "DEV-P")
        remove()
        await rep.put("notes", "b/late", {})
        got = [(c.ns, c.key, c.value, c.origin) for c in seen]
        assert got == [
            ("notes", "a", {"n": 1}, "local"),
            ("notes", "b/1", {"n": 2}, "local"),
            ("other", "b/2", {"n": 3}, "local"),
            ("notes", "b/1", None, "local"),
            ("notes", "b/9", {"r": 1}, "DEV-P"),
        ]
        assert [(await everything.receive()).key for _ in range(6)] == [
            "a",
            "b/1",
            "b/2",
            "b/1",
            "b/9",
            "b/late",
        ]
        assert [(await notes_b.receive()).key for _ in range(4)] == ["b/1", "b/1", "b/9", "b/late"]
        notes_b.close()
        with pytest.raises(trio.EndOfChannel):
            await notes_b.receive()


async def test_slow_subscriber_overflows_and_is_told(tmp_path: Path) -> None:
    async with open_replica(tmp_path / "r.sqlite3") as rep:
        sub = rep.subscribe(max_buffer=3)
        for i in range(5):
            await rep.put("ns", f"k{i}", {})
        keys = [c.key async for c in sub]
        assert keys == ["k0", "k1", "k2"]
        assert sub.overflowed


async def test_cancelled_wait_leaves_the_replica_usable(tmp_path: Path) -> None:
    async with open_replica(tmp_path / "r.sqlite3") as rep:
        with trio.CancelScope() as scope:
            scope.cancel()
            await rep.put("ns", "never", {})
        assert not (await rep.get("ns", "never")).exists  # cancelled before submission
        with trio.move_on_after(0):
            await rep.put("ns", "maybe", {})
        await rep.put("ns", "after", {})
        assert "after" in await rep.list_keys("ns")


async def test_closed_replica_refuses_calls(tmp_path: Path) -> None:
    async with open_replica(tmp_path / "r.sqlite3") as rep:
        pass
    with pytest.raises(ReplicaClosedError):
        await rep.put("ns", "k", {})


def test_thread_callers(tmp_path: Path) -> None:
    writer = Writer(Store(tmp_path / "r.sqlite3"))
    bump = Patch([{"op": "inc", "path": ["v"], "by": 1}])
    try:
        change = writer.call(lambda s: s.apply_local("ns", "k", Put({"v": 1})))
        assert change.value == {"v": 1}
        with pytest.raises(PatchError):
            writer.call(lambda s: s.apply_local("ns", "k", bump))
    finally:
        writer.close()
    with pytest.raises(ReplicaClosedError):
        writer.call(lambda s: None)


def _commit_threads(store: Store) -> list[int]:
    """Record the thread of every commit (the store's fault hook, as the crash tests use)."""
    threads: list[int] = []

    def hook(point: str) -> None:
        if point == "committed":
            threads.append(threading.get_ident())

    store.fault_hook = hook
    return threads


@pytest.fixture
def fast_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches count as fast whatever the disk: for tests of what happens on the trio thread,
    which a loaded machine's slow fsyncs (a batch average over INLINE_BATCH_MAX_S) would
    otherwise send to the writer thread."""
    monkeypatch.setattr(aio, "INLINE_BATCH_MAX_S", 60.0)


@pytest.mark.usefixtures("fast_disk")
async def test_lone_writes_commit_on_the_trio_thread(tmp_path: Path) -> None:
    async with open_replica(tmp_path / "r.sqlite3") as rep:
        threads = _commit_threads(rep.writer.store)
        for i in range(5):
            await rep.put("ns", f"k{i}", {"i": i})
        assert threads == [threading.get_ident()] * 5  # no thread wake-ups for a lone write
        assert rep.writer.stats.inline_batches >= 5
        assert (await rep.get("ns", "k4")).value == {"i": 4}


async def test_slow_commits_move_to_the_writer_thread_and_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_replica(tmp_path / "r.sqlite3") as rep:
        store = rep.writer.store
        threads = _commit_threads(store)
        record = store.fault_hook
        assert record is not None
        slow = True
        ticks = 0
        ticks_during_sync: list[int] = []

        def slow_disk(point: str) -> None:
            record(point)
            if point == "flushed" and slow:
                before = ticks
                time.sleep(INLINE_BATCH_MAX_S * 5)  # a disk whose fsync takes 10 ms
                ticks_during_sync.append(ticks - before)

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await trio.lowlevel.checkpoint()

        store.fault_hook = slow_disk
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            await rep.put("ns", "first", {})  # on the trio thread, and measured too slow
            await rep.put("ns", "second", {})  # so this one goes to the writer thread
            nursery.cancel_scope.cancel()
        assert threads[0] == threading.get_ident() != threads[1]
        assert ticks_during_sync[0] == 0  # the loop was blocked by the first sync...
        assert ticks_during_sync[1] > 0  # ...and kept running during the second
        slow = False
        # Back on the loop once the average is under the threshold (here raised, so that
        # the test does not depend on how fast this machine's disk is right now).
        assert rep.writer.stats.batch_s_avg >= INLINE_BATCH_MAX_S
        monkeypatch.setattr(aio, "INLINE_BATCH_MAX_S", 1.0)
        await rep.put("ns", "fast", {})
        assert threads[-1] == threading.get_ident()


async def test_calls_keep_their_order_while_the_thread_has_work(tmp_path: Path) -> None:
    async with open_replica(tmp_path / "r.sqlite3") as rep:
        rep.writer.stats.batch_s_avg = 1.0  # as if the disk were slow: groups go to the thread
        seen: list[object] = []
        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(rep.put, "ns", f"k{i}", {"i": i})
            await trio.testing.wait_all_tasks_blocked()
            # Queued behind the outstanding puts, not run at once: sees them all.
            seen.append(await rep.list_keys("ns"))
        assert seen == [[f"k{i}" for i in range(10)]]
        assert rep.writer.stats.inline_batches == 0


async def test_close_waits_for_work_on_the_writer_thread(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite3"
    async with open_replica(db) as rep:
        rep.writer.stats.batch_s_avg = 1.0
        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(rep.put, "ns", f"k{i}", {"i": i})
            await trio.testing.wait_all_tasks_blocked()
            await rep.aclose()
        with pytest.raises(ReplicaClosedError):
            await rep.get("ns", "k0")
    with Store(db) as s:
        assert s.list_keys("ns") == [f"k{i}" for i in range(5)]
    assert check_database(db) == []


@pytest.mark.parametrize("fast", [True, False])
async def test_others_runnable_sees_the_run_queue(
    monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    if not fast:  # the public-statistics fallback answers the same
        monkeypatch.setattr(aio, "_RUN_CONTEXT", None)
    assert not aio.others_runnable()
    started = trio.Event()

    async def start() -> None:
        started.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(start)
        assert aio.others_runnable()  # the new task is ready, and has not run yet
        await started.wait()
        assert not aio.others_runnable()


class _Rounds(trio.abc.Instrument):
    """Counts the scheduler's rounds (each polls for I/O once)."""

    def __init__(self) -> None:
        self.count = 0

    def before_io_wait(self, timeout: float) -> None:
        self.count += 1


@pytest.mark.usefixtures("fast_disk")
async def test_calls_run_at_once_take_a_scheduler_round_only_when_one_is_due(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(aio, "_now", lambda: clock[0])
    rounds = _Rounds()
    async with open_replica(tmp_path / "r.sqlite3") as rep:
        trio.lowlevel.add_instrument(rounds)
        try:
            # The first calls take rounds (the committer task starts; none was taken yet).
            await rep.put("ns", "k", {"i": -1})
            await rep.put("ns", "k", {"i": 0})
            seen = rounds.count
            assert seen >= 1
            for i in range(1, 6):  # the clock stands still: none is due
                await rep.put("ns", "k", {"i": i})
                assert (await rep.get("ns", "k")).value == {"i": i}
            assert rounds.count == seen
            assert rep.writer.stats.inline_batches >= 11  # all of them ran at once
            clock[0] += aio.INLINE_YIELD_MAX_S * 1.5  # a writer in a loop: a round is due now
            await rep.put("ns", "k", {"i": 6})
            assert rounds.count == seen + 1
            await rep.put("ns", "k", {"i": 7})  # and then not again until the clock moves
            await rep.get("ns", "k")
            assert rounds.count == seen + 1
        finally:
            trio.lowlevel.remove_instrument(rounds)


@pytest.mark.usefixtures("fast_disk")
async def test_a_task_writing_in_a_loop_lets_a_task_waiting_for_io_run(tmp_path: Path) -> None:
    """With the real clock: the reader of a socket that became readable runs while another
    task is still writing in a tight loop, within about INLINE_YIELD_MAX_S."""
    a, b = trio.socket.socketpair()
    woke: list[float] = []

    async def reader() -> None:
        await b.recv(1)
        woke.append(time.perf_counter())

    async with open_replica(tmp_path / "r.sqlite3") as rep:
        await rep.put("ns", "warm", {})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            await a.send(b"x")
            sent = time.perf_counter()
            longest = 0.0
            writes = 0
            while not woke:
                t0 = time.perf_counter()
                await rep.put("ns", "k", {"i": writes})
                longest = max(longest, time.perf_counter() - t0)
                writes += 1
                assert writes < 100_000, "the reader never ran"
        assert rep.writer.stats.inline_batches >= writes
    # A round is due INLINE_YIELD_MAX_S after the last one (before the send), so the reader
    # runs after the first write that ends past it: within that plus two writes.
    assert woke[0] - sent <= aio.INLINE_YIELD_MAX_S + 2 * longest + 0.005
    a.close()
    b.close()


@pytest.mark.usefixtures("fast_disk")
async def test_a_failed_commit_fails_every_write_of_its_group_and_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_replica(tmp_path / "r.sqlite3") as rep:
        await rep.put("ns", "warm", {"v": 0})
        store = rep.writer.store
        full = True

        def disk_full(point: str) -> None:
            if point == "flushed" and full:
                raise sqlite3.OperationalError("database or disk is full")

        store.fault_hook = disk_full
        errors: list[BaseException] = []
        seen: list[str | None] = []
        trio_thread = threading.get_ident()

        def record(now: str | None) -> None:
            assert threading.get_ident() == trio_thread
            seen.append(now)

        rep.on_problem(record)

        async def put(i: int) -> None:
            try:
                await rep.put("ns", f"k{i}", {"i": i})
            except Exception as exc:
                errors.append(exc)

        with caplog.at_level(logging.WARNING, logger="syncd.replica"):
            async with trio.open_nursery() as nursery:
                for i in range(16):
                    nursery.start_soon(put, i)
        # Every writer of the group gets the disk's error (each its own outcome: one shared
        # outcome can be unwrapped once, and the others got outcome.AlreadyUsedError).
        assert len(errors) == 16
        assert all("disk is full" in str(e) for e in errors), errors
        assert rep.writer.stats.commits >= 1
        warnings = [r for r in caplog.records if "commit failed" in r.getMessage()]
        assert len(warnings) == 1  # repeated failures are not logged one by one
        problem = rep.problem
        assert problem is not None and problem.startswith("writes are refused since ")
        assert problem.endswith("database or disk is full"), problem
        assert rep.problem == problem  # a read that succeeds changes nothing
        await rep.get("ns", "warm")
        assert rep.problem == problem
        await trio.testing.wait_all_tasks_blocked()  # (a call from the writer thread, if any)
        assert seen == [problem]  # once when it starts, not at every failure
        full = False
        await rep.put("ns", "after", {"ok": True})
        assert rep.problem is None  # a write that commits ends it
        await trio.testing.wait_all_tasks_blocked()
        assert seen == [problem, None]
        rep.on_problem(None)
        assert (await rep.get("ns", "after")).value == {"ok": True}
        assert (await rep.get("ns", "k0")).value is None


@pytest.mark.usefixtures("fast_disk")
async def test_a_heavy_put_or_patch_leaves_the_event_loop(tmp_path: Path) -> None:
    # A text of a few thousand characters rewritten in many places costs put's diff up to
    # half a second, and thousands of fields cost in proportion: not on the trio thread,
    # whatever the document's stored size.
    rng = random.Random(5)
    long_text = "".join(rng.choice("ab") for _ in range(aio.INLINE_WEIGHT_MAX + 1))
    async with open_replica(tmp_path / "db.sqlite3") as rep:
        await rep.patch("n", "note", [{"op": "make", "path": ["m", "t"], "type": "text"}])
        await rep.put("n", "note", {"m": {"t": "short"}})
        stats = rep.writer.stats
        inline, batches = stats.inline_batches, stats.batches
        heavy: list[tuple[str, Any]] = [
            ("put", {"m": {"t": long_text}}),  # nested in a map
            ("put", {"l": list(range(aio.INLINE_WEIGHT_MAX + 1))}),
            ("put", {f"f{i}": i for i in range(aio.INLINE_WEIGHT_MAX + 1)}),
            ("patch", [{"op": "set", "path": ["m", "t"], "value": long_text[::-1]}]),
            ("patch", [{"op": "insert", "path": ["u"], "index": 0, "text": long_text}]),
        ]
        for n, (method, arg) in enumerate(heavy, 1):
            await getattr(rep, method)("n", f"k{n}" if method == "put" else "note", arg)
            assert (stats.inline_batches, stats.batches) == (inline, batches + n), method
        assert (await rep.get("n", "note")).value == {"m": {"t": long_text[::-1]}, "u": long_text}
    assert aio.json_weight({"a": {"b": "x" * 10, "c": [1, "yy"]}}) == 1 + 2 + 10 + 2 + 2


@pytest.mark.parametrize("where", ["trio thread", "writer thread"])
async def test_a_failing_problem_listener_loses_no_outcome(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # From the writer thread the listener runs as a trio callback, where an exception was
    # trio's internal error: the end of the daemon.
    monkeypatch.setattr(aio, "INLINE_BATCH_MAX_S", 60.0 if where == "trio thread" else 0.0)
    async with open_replica(tmp_path / "r.sqlite3") as rep:
        await rep.put("ns", "warm", {"v": 0})

        def disk_full(point: str) -> None:
            if point == "flushed":
                raise sqlite3.OperationalError("database or disk is full")

        called = trio.Event()

        def broken(problem: str | None) -> None:
            called.set()
            raise RuntimeError("listener bug")

        rep.on_problem(broken)
        rep.writer.store.fault_hook = disk_full
        with caplog.at_level(logging.ERROR, logger="syncd.replica"):
            with pytest.raises(Exception, match="disk is full"):  # an answer, not a hang
                await rep.put("ns", "k", {"v": 1})
            with trio.fail_after(5):
                await called.wait()
        assert (rep.writer.stats.inline_batches > 0) == (where == "trio thread")
        assert any("listener" in r.getMessage() for r in caplog.records)
        rep.writer.store.fault_hook = None
        await rep.put("ns", "k", {"v": 2})
        assert (await rep.get("ns", "k")).value == {"v": 2}


def test_a_patch_of_many_keystrokes_is_light() -> None:
    keystrokes = [{"op": "insert", "path": ["t"], "index": i, "text": "a"} for i in range(200)]
    assert aio.patch_weight(keystrokes) == 400
    assert aio.patch_weight(keystrokes) <= aio.INLINE_WEIGHT_MAX
    long_insert = [{"op": "insert", "path": ["t"], "index": 0, "text": "a" * 2000}]
    assert aio.patch_weight(long_insert) > aio.INLINE_WEIGHT_MAX
    assert aio.patch_weight({"op": "set"}) == 0  # (not a list: the store says so)


@pytest.mark.usefixtures("fast_disk")
async def test_writes_to_a_large_document_leave_the_event_loop(tmp_path: Path) -> None:
    # Rewriting a large text can take a good part of a second: on the trio thread every
    # other client would wait that long, even for a one-character patch (the whole state is
    # encoded again). The cache holds few such documents: their sizes are remembered.
    size = aio.INLINE_DOC_MAX_BYTES + 1000
    one_char = [{"op": "insert", "path": ["t"], "index": 0, "text": "z"}]
    async with open_replica(tmp_path / "db.sqlite3") as rep:
        await rep.patch("n", "small", [{"op": "make", "path": ["t"], "type": "text"}])
        for key in ("big", "other1", "other2", "other3", "other4"):
            await rep.patch("n", key, [{"op": "make", "path": ["t"], "type": "text"}])
            await rep.patch(
                "n", key, [{"op": "insert", "path": ["t"], "index": 0, "text": "x" * size}]
            )
        stats = rep.writer.stats
        inline = stats.inline_batches
        await rep.patch("n", "small", one_char)
        assert stats.inline_batches == inline + 1  # a small one still runs here
        batches = stats.batches
        await rep.patch("n", "big", one_char)  # dropped from the cache by the others
        assert stats.inline_batches == inline + 1  # the large one went to the writer thread
        assert stats.batches == batches + 1
        assert (await rep.get("n", "big")).value == {"t": "z" + "x" * size}
        assert (await rep.get("n", "small")).value == {"t": "z"}
