"""Watch subscriptions: notifications, initial snapshots, back-pressure and overflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from syncd.client import AsyncClient, InvalidParams, NotFound, open_client
from syncd.config import ApiConfig
from syncd.crdt import Document
from syncd.daemon import server
from syncd.daemon.store import Change
from syncd.replica import StoreError
from tests.conftest import needs_python_source
from tests.daemon_harness import (
    Line,
    api_and_two_connections,
    line_connection,
    request_line,
    running_api,
)


async def put_zeros(store: Any, *keys: str) -> None:
    """Documents ``{"v": 0}`` at ``keys`` of namespace ``n``."""
    for key in keys:
        await store.put("n", key, {"v": 0})


async def watch_initial(w: Line) -> None:
    """Watch namespace ``n`` with ``initial: true`` and read the response."""
    await w.send("watch", {"ns": "n", "initial": True})
    assert "subscription" in (await w.recv())["result"]


def before_reads(api: Any, monkeypatch: pytest.MonkeyPatch, hook: Any) -> None:
    """Make the daemon's document reads (``store.get``) await ``hook(key)`` first: it may
    change documents, or raise to fail the read."""
    real_get = api.store.get

    async def get(ns: str, key: str, *, conflicts: bool = False) -> Any:
        await hook(key)
        return await real_get(ns, key, conflicts=conflicts)

    monkeypatch.setattr(api.store, "get", get)


async def next_notification(conn: Line) -> dict[str, Any]:
    while True:
        msg = await conn.recv()
        if "method" in msg:
            return dict(msg)


async def test_watch_streams_local_changes_in_order(tmp_path: Path) -> None:
    async with api_and_two_connections(tmp_path) as (_api, w, c):
        await w.send("watch", {"ns": "n", "prefix": "a/"})
        response = await w.recv()  # the response comes before any notification
        sub = response["result"]["subscription"]
        await c.call("put", {"ns": "n", "key": "a/1", "value": {"v": 1}})
        await c.call("put", {"ns": "n", "key": "b/1", "value": {"v": 0}})  # other prefix
        await c.call("put", {"ns": "other", "key": "a/1", "value": {"v": 0}})  # other ns
        await c.call(
            "patch",
            {"ns": "n", "key": "a/1", "ops": [{"op": "set", "path": ["v"], "value": 2}]},
        )
        await c.call("delete", {"ns": "n", "key": "a/1"})
        got = [await next_notification(w) for _ in range(3)]
        assert [g["method"] for g in got] == ["change"] * 3
        params = [g["params"] for g in got]
        assert params[0] == {
            "subscription": sub,
            "ns": "n",
            "key": "a/1",
            "value": {"v": 1},
            "deleted": False,
            "origin": "local",
        }
        assert params[1]["value"] == {"v": 2}
        assert params[2]["deleted"] is True
        assert params[2]["value"] is None


async def test_initial_sends_current_documents_first(tmp_path: Path) -> None:
    async with api_and_two_connections(tmp_path) as (_api, c, w):
        for key in ("k1", "k2", "z"):
            await c.call("put", {"ns": "n", "key": key, "value": {"key": key}})
        await c.call("delete", {"ns": "n", "key": "k2"})
        await w.send("watch", {"ns": "n", "prefix": "k", "initial": True})
        assert "subscription" in (await w.recv())["result"]
        first = await next_notification(w)
        assert first["params"]["key"] == "k1"
        assert first["params"]["initial"] is True
        assert first["params"]["value"] == {"key": "k1"}
        await c.call("put", {"ns": "n", "key": "k3", "value": {}})
        after = await next_notification(w)
        assert after["params"]["key"] == "k3"
        assert "initial" not in after["params"]


async def test_initial_covers_the_documents_of_requests_sent_before_watch_only(
    tmp_path: Path,
) -> None:
    async with running_api(tmp_path) as api, line_connection(api.socket) as c:
        put = {"ns": "n", "key": "before", "value": {"v": 1}}
        lines = [
            request_line("put", put, 1),
            request_line("watch", {"ns": "n", "initial": True}, 2),
            request_line("put", {"ns": "n", "key": "after", "value": {"v": 2}}, 3),
        ]
        await c.send_raw(b"".join(lines))  # pipelined: nothing waits for an answer
        notes: list[dict[str, Any]] = []
        answered: set[int] = set()
        while len(notes) < 2 or len(answered) < 3:
            msg = await c.recv()
            if "method" in msg:
                notes.append(msg["params"])
            else:
                answered.add(msg["id"])
        assert [(n["key"], n.get("initial", False)) for n in notes] == [
            ("before", True),
            ("after", False),
        ]


async def test_unwatch(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api, line_connection(api.socket) as w:
        sub = (await w.call("watch", {"ns": "n"}))["result"]["subscription"]
        assert len(api.hub) == 1
        assert (await w.call("unwatch", {"subscription": sub}))["result"] == {"ok": True}
        assert len(api.hub) == 0
        err = (await w.call("unwatch", {"subscription": sub}))["error"]
        assert err["data"]["reason"] == "not_found"
        # Closing a connection ends its subscriptions.
        async with line_connection(api.socket) as w:
            await w.call("watch", {"ns": "n"})
            assert len(api.hub) == 1
        with trio.fail_after(5):
            while len(api.hub):
                await trio.lowlevel.checkpoint()


async def test_stuck_watcher_never_blocks_writers_and_overflows(tmp_path: Path) -> None:
    limits = ApiConfig(watch_queue=8)
    big = "x" * 20_000
    async with api_and_two_connections(tmp_path, limits) as (api, stuck, writer):
        sub = (await stuck.call("watch", {"ns": "n"}))["result"]["subscription"]
        # The watcher never reads. 1000 writes of 20 kB (20 MB of notifications, far more
        # than the socket buffers and the queue) must still all be acknowledged.
        with trio.fail_after(60):
            for i in range(1000):
                r = await writer.call(
                    "put", {"ns": "n", "key": f"k{i % 50}", "value": {"s": big, "i": i}}
                )
                assert r["result"] == {"ok": True}
                (s,) = [x for x in api.hub._subs.values()]
                assert len(s.queue) <= 8
        # Now the watcher reads: whatever was in flight, then an overflow notice.
        with trio.fail_after(30):
            while True:
                note = await next_notification(stuck)
                if note["method"] == "overflow":
                    break
        assert note["params"] == {"subscription": sub}
        assert len(api.hub) == 0
        # Resubscribing with initial: true brings it up to date.
        await stuck.send("watch", {"ns": "n", "initial": True})
        await stuck.recv()
        seen = {}
        for _ in range(50):
            note = await next_notification(stuck)
            seen[note["params"]["key"]] = note["params"]["value"]["i"]
        assert seen[f"k{999 % 50}"] == 999


async def test_a_stuck_watcher_of_large_documents_holds_their_changes_not_lines(
    tmp_path: Path,
) -> None:
    # 200 changes of 100 kB documents: lines ready to send would be 20 MB for a watcher that
    # does not read. The connection queues output only up to NOTIFY_BACKLOG_BYTES; past that
    # the changes wait in the subscription's queue, the latest per document.
    big = "x" * 100_000
    async with api_and_two_connections(tmp_path, ApiConfig(watch_queue=1000)) as (
        api,
        stuck,
        writer,
    ):
        await stuck.call("watch", {"ns": "n"})
        with trio.fail_after(60):
            for i in range(200):
                value = {"s": big, "i": i}
                r = await writer.call("put", {"ns": "n", "key": f"k{i % 4}", "value": value})
                assert r["result"] == {"ok": True}
        (sub,) = api.hub._subs.values()
        assert len(sub.queue) == 4  # what was not sent yet: the latest of each document
        await writer.call("put", {"ns": "n", "key": "last", "value": {"i": -1}})
        received = 0
        latest: dict[str, int] = {}
        with trio.fail_after(30):
            while "last" not in latest:
                note = await next_notification(stuck)
                received += len(note["params"]["value"].get("s", ""))
                latest[note["params"]["key"]] = note["params"]["value"]["i"]
        # What had been sent or queued when the watcher started reading: at most the
        # backlog (1 MiB), a line past it, the socket's buffer (~200 kB); then the queue's
        # latest. (96 lines ready to send, the channel's room, would be 9.6 MB.)
        assert server.NOTIFY_BACKLOG_BYTES <= 1024 * 1024
        assert received <= 3_000_000
        assert latest == {"k0": 196, "k1": 197, "k2": 198, "k3": 199, "last": -1}


async def test_no_change_follows_the_answer_to_unwatch(tmp_path: Path) -> None:
    # 40 changes of 100 kB documents wait behind the unsent backlog when the watcher
    # unwatches: none of them may come after the answer (it ends the subscription).
    big = "x" * 100_000
    async with api_and_two_connections(tmp_path, ApiConfig(watch_queue=1000)) as (_api, w, writer):
        sub = (await w.call("watch", {"ns": "n"}))["result"]["subscription"]
        with trio.fail_after(30):
            for i in range(40):
                value = {"s": big, "i": i}
                await writer.call("put", {"ns": "n", "key": f"k{i}", "value": value})
        unwatch = await w.send("unwatch", {"subscription": sub})
        before, after = [], []
        with trio.fail_after(30):
            while (msg := await w.recv()).get("id") != unwatch:
                before.append(msg["params"]["key"])
            assert msg["result"] == {"ok": True}
            # Whatever the daemon queued after the answer comes before this one's.
            status = await w.send("status")
            while (msg := await w.recv()).get("id") != status:
                after.append(msg["params"]["key"])
        assert before  # (some were on their way)
        assert after == []


async def test_pipelined_responses_do_not_hold_back_notifications(tmp_path: Path) -> None:
    # A client keeps 40 reads of a 100 kB document in flight on the connection it watches
    # on: more than the notification backlog in responses, all the time. Its change comes.
    big = "x" * 100_000
    async with api_and_two_connections(tmp_path) as (_api, c, writer):
        await writer.call("put", {"ns": "m", "key": "big", "value": {"s": big}})
        await c.call("watch", {"ns": "n"})
        for _ in range(40):
            await c.send("get", {"ns": "m", "key": "big"})
        await writer.call("put", {"ns": "n", "key": "a", "value": {"i": 1}})
        responses = 0
        with trio.fail_after(30):
            while (msg := await c.recv()).get("method") != "change":
                responses += 1
                await c.send("get", {"ns": "m", "key": "big"})
        assert msg["params"]["key"] == "a"
        assert responses < 200


async def test_too_many_subscriptions(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api, line_connection(api.socket) as w:
        for _ in range(64):
            assert "result" in await w.call("watch", {"ns": "n"})
        err = (await w.call("watch", {"ns": "n"}))["error"]
        assert err["data"]["reason"] == "too_many_subscriptions"


# --- the async client ----------------------------------------------------------------------


async def test_async_client_pipelines_and_watches(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api, open_client(api.socket) as client:
        sub = await client.watch("n", initial=False)
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(put, client, i)
        keys: set[str] = set()
        while len(keys) < 50:
            note = await sub.receive()
            assert note["method"] == "change"
            keys.add(note["params"]["key"])
        assert len((await client.call("list", ns="n"))["keys"]) == 50
        await sub.aclose()
        with pytest.raises(NotFound):
            await client.call("untrust", device_id="A" * 7 + "-" + "AAAAAAA-" * 6 + "AAAAAAA")
        with pytest.raises(InvalidParams) as info:
            await client.call("get", ns="", key="k")
        assert info.value.code == -32602


async def put(client: AsyncClient, i: int) -> None:
    assert await client.call("put", ns="n", key=f"k{i}", value={"i": i}) == {"ok": True}


@needs_python_source
async def test_values_are_rendered_only_for_changes_a_watcher_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rendering a large text at every keystroke cost a copy per change (1 GB for fast typing
    # into a 3 MB note); nobody looks at it unless a watcher shows that key.
    renders: list[int] = []
    real = Document.render

    def counting(doc: Document) -> Any:
        renders.append(1)
        return real(doc)

    monkeypatch.setattr(Document, "render", counting)
    async with api_and_two_connections(tmp_path) as (api, c, w):
        for i in range(5):
            await c.call("put", {"ns": "n", "key": "b", "value": {"i": i}})
        assert renders == []
        sub = (await w.call("watch", {"ns": "n", "prefix": "a"}))["result"]["subscription"]
        await c.call("put", {"ns": "n", "key": "b", "value": {"i": 9}})
        await c.call("put", {"ns": "n", "key": "a", "value": {"i": 1}})
        assert len(renders) == 1  # only "a", which the watcher shows
        note = await next_notification(w)
        assert note["params"]["value"] == {"i": 1}
        await w.call("unwatch", {"subscription": sub})
        await w.call("watch", {"ns": "n"})
        # A change committed unrendered as the subscription started shows the current value.
        api.hub.publish(Change("n", "b", None, False, "local"))
        note = await next_notification(w)
        assert note["params"]["key"] == "b" and note["params"]["value"] == {"i": 9}
        assert note["params"]["deleted"] is False


def test_a_watcher_behind_holds_one_change_per_document() -> None:
    # 1,500 keystrokes into one large note used to queue 1,500 full copies for a watcher
    # that did not read; the latest change of a document includes the earlier ones.
    from syncd.daemon.watch import WatchHub

    hub = WatchHub()
    sub = hub.subscribe("n", "", limit=3)
    for i in range(1500):
        hub.publish(Change("n", "note", {"i": i}, False, "local"))
    hub.publish(Change("n", "other", {}, False, "local"))
    hub.publish(Change("n", "note", {"i": "last"}, False, "local"))
    assert not sub.overflowed
    assert [(c.key, c.value) for _, c in sub.drain()] == [("other", {}), ("note", {"i": "last"})]
    for key in ("a", "b", "c", "d"):  # the limit counts documents
        hub.publish(Change("n", key, {}, False, "local"))
    assert sub.overflowed


async def test_a_document_deleted_during_the_initial_snapshot_is_reported_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with api_and_two_connections(tmp_path) as (api, c, w):
        for key in ("a", "b"):
            await c.call("put", {"ns": "n", "key": key, "value": {}})

        async def deleting_b(key: str) -> None:
            if key == "a":  # while the snapshot reads "a", someone deletes "b"
                await api.store.delete("n", "b")

        before_reads(api, monkeypatch, deleting_b)
        await watch_initial(w)
        notes = [(await next_notification(w))["params"] for _ in range(2)]
        assert [(n["key"], n["deleted"], n.get("initial", False)) for n in notes] == [
            ("a", False, True),
            ("b", True, False),  # was: nothing at all for "b"
        ]


async def test_a_watcher_reading_at_full_speed_does_not_overflow_on_its_snapshot(
    tmp_path: Path,
) -> None:
    # 200 documents of 50 kB and a queue of 8. While the snapshot is being sent, a writer
    # changes 150 of them, some already sent and some not: the changes of documents not sent
    # yet are in their initial values, the others go out between the initial ones. Queued
    # behind the whole snapshot they overflowed the queue, and a resubscription the same way.
    pad = "x" * 50_000
    async with api_and_two_connections(tmp_path, ApiConfig(watch_queue=8)) as (api, w, c):
        for i in range(200):
            await c.call("put", {"ns": "n", "key": f"k{i:03}", "value": {"v": 0, "pad": pad}})
        await w.send("watch", {"ns": "n", "initial": True})
        sub = (await w.recv())["result"]["subscription"]
        seen: dict[str, int] = {}
        initial_keys: set[str] = set()

        async def write() -> None:
            for n in range(150):  # 150 different documents, spread over the snapshot's order
                key = f"k{(n * 37) % 200:03}"
                await c.call("put", {"ns": "n", "key": key, "value": {"v": n + 1, "pad": pad}})

        async with trio.open_nursery() as nursery:
            first = await next_notification(w)  # the snapshot has begun
            seen[first["params"]["key"]] = first["params"]["value"]["v"]
            initial_keys.add(first["params"]["key"])
            nursery.start_soon(write)
            with trio.fail_after(60):
                while len(initial_keys) < 200 or nursery.child_tasks:
                    note = await next_notification(w)
                    assert note["method"] == "change", note
                    params = note["params"]
                    seen[params["key"]] = params["value"]["v"]
                    if params.get("initial"):
                        initial_keys.add(params["key"])
        # Whatever the writes queued after the last read has come too once this one is seen.
        await c.call("put", {"ns": "n", "key": "zz", "value": {"v": 0}})
        with trio.fail_after(30):
            while "zz" not in seen:
                note = await next_notification(w)
                assert note["method"] == "change", note
                seen[note["params"]["key"]] = note["params"]["value"]["v"]
        for i in range(200):
            got = await c.call("get", {"ns": "n", "key": f"k{i:03}"})
            assert seen[f"k{i:03}"] == got["result"]["value"]["v"]
        assert [s.id for s in api.hub._subs.values()] == [sub]  # never overflowed


async def test_a_change_made_while_the_snapshot_is_listed_is_in_the_initial_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_api(tmp_path) as api, line_connection(api.socket) as w:
        await put_zeros(api.store, "a", "b")
        real_list = api.store.list_keys

        async def list_changing_b(ns: str, prefix: str = "") -> list[str]:
            keys = await real_list(ns, prefix)
            await api.store.put("n", "b", {"v": 1})  # published before the snapshot starts
            return keys

        monkeypatch.setattr(api.store, "list_keys", list_changing_b)
        await watch_initial(w)
        notes = [(await next_notification(w))["params"] for _ in range(2)]
        assert [(n["key"], n["value"], n.get("initial")) for n in notes] == [
            ("a", {"v": 0}, True),
            ("b", {"v": 1}, True),  # was: a live b first, then the same value as initial
        ]
        await api.store.put("n", "a", {"v": 2})  # and nothing else was queued for b
        note = (await next_notification(w))["params"]
        assert (note["key"], note["value"]) == ("a", {"v": 2})


async def test_changes_of_a_document_whose_initial_read_fails_still_arrive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_api(tmp_path) as api, line_connection(api.socket) as w:
        await put_zeros(api.store, "a", "b", "c")
        failed: list[str] = []

        async def flaky(key: str) -> None:
            if key == "a":  # while "a" is read, "b" changes and "c" is deleted
                await api.store.put("n", "b", {"v": 1})
                await api.store.delete("n", "c")
            if key in ("b", "c") and key not in failed:
                failed.append(key)
                raise StoreError(f"cannot read {key} just now")

        before_reads(api, monkeypatch, flaky)
        await watch_initial(w)
        with trio.fail_after(10):  # (they never came: a regression hangs here otherwise)
            notes = [(await next_notification(w))["params"] for _ in range(3)]
        got = {(n["key"], str(n["value"]), n["deleted"], n.get("initial", False)) for n in notes}
        assert got == {
            ("a", "{'v': 0}", False, True),
            ("b", "{'v': 1}", False, False),  # read again when sent: its current value
            ("c", "None", True, False),  # its deletion, kept while it was pending
        }


async def test_a_document_recreated_while_its_failed_initial_read_ran_shows_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_api(tmp_path) as api, line_connection(api.socket) as w:
        await put_zeros(api.store, "a", "c")
        failed = False

        async def flaky(key: str) -> None:
            nonlocal failed
            if key == "a":
                await api.store.delete("n", "c")  # "c" is deleted while pending...
            if key == "c" and not failed:
                failed = True
                await api.store.put("n", "c", {"v": 9})  # ...made again during its read
                raise StoreError("cannot read c just now")

        before_reads(api, monkeypatch, flaky)
        await watch_initial(w)
        last: dict[str, Any] = {}
        with trio.fail_after(10):
            while "c" not in last:
                params = (await next_notification(w))["params"]
                last[params["key"]] = params
        await api.store.put("n", "a", {"v": 1})  # a marker: everything before it has come
        with trio.fail_after(10):
            while last["a"]["value"] != {"v": 1}:
                params = (await next_notification(w))["params"]
                last[params["key"]] = params
        assert (last["c"]["deleted"], last["c"]["value"]) == (False, {"v": 9})
