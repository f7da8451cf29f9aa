"""The Python clients (:mod:`syncd.client`): error propagation, response matching, cancellation,
back-pressure, threads, timeouts, subscriptions, the typed methods and the documented examples.

Most tests talk to the in-process daemon of :func:`running_api`; the blocking client runs in a
worker thread there (``trio.to_thread``). Behaviour that needs a daemon misbehaving on cue (a
response held back, a connection reset) uses a scripted fake daemon on a Unix socket. Tests of
what used to hang carry a generous ``fail_after`` guard so that a regression fails instead.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import syncd.client
from syncd.client import (
    ApplicationError,
    AsyncClient,
    CallTimeout,
    Client,
    ClientError,
    ConnectionLost,
    DaemonNotRunning,
    InvalidParams,
    NotFound,
    ParseError,
    RemoteError,
    SyncdError,
    TooLarge,
    error_from_response,
    open_client,
)
from syncd.config import ApiConfig
from syncd.daemon.unixsock import bind_unix
from syncd.identity import create_identity
from tests.daemon_harness import Line, running_api

HANG_GUARD_S = 30  # only reached when a regression makes something hang
WATCH_BUFFER = 1024  # the documented default of AsyncClient.watch(buffer=)
API_DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"


# --- fake daemons ----------------------------------------------------------------------------


async def respond(conn: Line, rid: Any, result: Any = None, error: Any = None) -> None:
    """Send one response line."""
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid}
    if error is not None:
        msg["error"] = error
    else:
        msg["result"] = result
    await conn.send_raw(json.dumps(msg).encode() + b"\n")


@asynccontextmanager
async def fake_daemon(
    tmp_path: Path, script: Callable[[Line], Awaitable[None]]
) -> AsyncIterator[Path]:
    """A socket whose first connection is served by ``script``; cancelled at the end."""
    path = tmp_path / "fake.sock"
    listener = trio.socket.from_stdlib_socket(bind_unix(path))

    async def serve() -> None:
        conn, _ = await listener.accept()
        line = Line(trio.SocketStream(conn))
        try:
            await script(line)
        finally:
            await line.aclose()

    with listener:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            yield path
            nursery.cancel_scope.cancel()


class ThreadDaemon:
    """A blocking fake daemon in a thread, for tests whose client runs in the main thread."""

    def __init__(self, path: Path, script: Callable[[socket.socket], None]) -> None:
        self.path = path
        self.listener = bind_unix(path)
        self.script = script
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                self.script(conn)
        except BaseException as exc:
            self.error = exc

    def close(self) -> None:
        """Wait for the script (it must end once the client is closed), re-raise its error."""
        self.thread.join(HANG_GUARD_S)
        self.listener.close()
        assert not self.thread.is_alive(), "the fake daemon's script did not finish"
        if self.error is not None:
            raise self.error


@contextmanager
def thread_daemon(tmp_path: Path, script: Callable[[socket.socket], None]) -> Iterator[Path]:
    """A :class:`ThreadDaemon` that is always joined."""
    daemon = ThreadDaemon(tmp_path / "fake.sock", script)
    try:
        yield daemon.path
    finally:
        daemon.close()


def read_request(conn: socket.socket) -> dict[str, Any]:
    """One request line from a blocking socket (read byte-wise: nothing beyond it is taken)."""
    data = b""
    while not data.endswith(b"\n"):
        byte = conn.recv(1)
        if not byte:
            raise EOFError("client closed")
        data += byte
    msg = json.loads(data)
    assert isinstance(msg, dict)
    return msg


def send_line(conn: socket.socket, msg: dict[str, Any]) -> None:
    """One JSON line to a blocking socket."""
    conn.sendall(json.dumps(msg).encode() + b"\n")


def wait_closed(conn: socket.socket) -> None:
    """Read until the client closes the connection."""
    while conn.recv(1 << 16):
        pass


NOT_FOUND = {"code": -32000, "message": "no such thing", "data": {"reason": "not_found"}}
PARSE_ERROR = {"code": -32700, "message": "parse error"}


# --- 1. exceptions inside open_client --------------------------------------------------------


async def test_open_client_propagates_exceptions_of_its_block(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        mine = ValueError("mine")
        with pytest.raises(ValueError, match="mine") as info:
            async with open_client(api.socket):
                raise mine
        assert info.value is mine
        with pytest.raises(NotFound):
            async with open_client(api.socket) as client:
                await client.call("unwatch", subscription=12345)
        # The client is closed afterwards and the daemon keeps serving.
        async with open_client(api.socket) as client:
            assert await client.call("list", ns="n") == {"keys": []}
        with pytest.raises(ConnectionLost, match="closed"):
            await client.call("status")


# --- 2. error responses with a null id -------------------------------------------------------


async def test_async_null_id_error_goes_to_the_request_it_answers(tmp_path: Path) -> None:
    limits = ApiConfig(max_line_bytes=4096)
    async with running_api(tmp_path, limits) as api, open_client(api.socket) as client:
        outcomes: dict[str, Any] = {}

        async def put(key: str, size: int) -> None:
            try:
                outcomes[key] = await client.call("put", ns="n", key=key, value={"s": "x" * size})
            except RemoteError as exc:
                outcomes[key] = exc

        with trio.fail_after(HANG_GUARD_S):
            async with trio.open_nursery() as nursery:
                for key, size in [("a", 10), ("big", 10_000), ("c", 10), ("huge", 20_000)]:
                    nursery.start_soon(put, key, size)
        assert isinstance(outcomes["big"], TooLarge)
        assert outcomes["big"].code == -32000
        assert outcomes["big"].data["limit"] == 4096
        assert isinstance(outcomes["huge"], TooLarge)
        assert outcomes["a"] == outcomes["c"] == {"ok": True}
        assert await client.call("list", ns="n") == {"keys": ["a", "c"]}


async def test_async_null_id_error_skips_a_sync_waiting_for_peers(tmp_path: Path) -> None:
    got_put = trio.Event()

    async def script(conn: Line) -> None:
        sync_req = await conn.recv()
        put_req = await conn.recv()
        assert (sync_req["method"], put_req["method"]) == ("sync", "put")
        got_put.set()
        await respond(conn, None, error=PARSE_ERROR)  # in order: the put's
        await respond(conn, sync_req["id"], {"acked_by": [], "pending": []})
        await conn.recv()

    async with fake_daemon(tmp_path, script) as path, open_client(path) as client:
        sync_done: list[dict[str, Any]] = []

        async def sync() -> None:
            sync_done.append(await client.call("sync", ns="n"))

        with trio.fail_after(HANG_GUARD_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sync)
                await trio.testing.wait_all_tasks_blocked()  # the sync is sent first
                with pytest.raises(ParseError):
                    await client.call("put", ns="n", key="k", value={})
        assert sync_done == [{"acked_by": [], "pending": []}]


# --- 3. cancellation while sending -----------------------------------------------------------


async def test_cancelled_call_never_leaves_half_a_line(tmp_path: Path) -> None:
    go = trio.Event()
    received: list[str] = []

    async def script(conn: Line) -> None:
        await go.wait()  # not reading yet: the client's big request cannot all be sent
        for _ in range(2):
            req = await conn.recv()  # a glued line would not parse
            received.append(req["method"])
            await respond(conn, req["id"], {"ok": True})
        await conn.recv()

    async with fake_daemon(tmp_path, script) as path, open_client(path) as client:
        with trio.fail_after(HANG_GUARD_S):
            async with trio.open_nursery() as nursery:
                scope = trio.CancelScope()

                async def big_put() -> None:
                    with scope:
                        await client.call("put", ns="n", key="big", value={"s": "x" * 4_000_000})

                nursery.start_soon(big_put)
                await trio.testing.wait_all_tasks_blocked()  # blocked mid-line
                scope.cancel()
                go.set()
            assert scope.cancelled_caught
            assert await client.call("status") == {"ok": True}
    assert received == ["put", "status"]


# --- 4. a subscriber nobody reads ------------------------------------------------------------


async def test_unread_subscription_overflows_instead_of_stopping_responses(
    tmp_path: Path,
) -> None:
    writes = WATCH_BUFFER + 50
    async with running_api(tmp_path) as api, open_client(api.socket) as client:
        sub = await client.watch("n")
        with trio.fail_after(HANG_GUARD_S):
            for i in range(writes):
                await client.call("put", ns="n", key=f"k{i}", value={"i": i})
        notes = [await sub.receive() for _ in range(WATCH_BUFFER + 1)]
        assert [n["params"]["key"] for n in notes[:-1]] == [f"k{i}" for i in range(WATCH_BUFFER)]
        assert notes[-1] == {
            "jsonrpc": "2.0",
            "method": "overflow",
            "params": {"subscription": sub.id},
        }
        with pytest.raises(trio.EndOfChannel):
            await sub.receive()
        # The client unsubscribed it at the daemon too.
        await trio.testing.wait_all_tasks_blocked()
        assert len(api.hub) == 0
        assert (await client.call("delete", ns="n", key="k0"))["existed"]


# --- 5. threads sharing a blocking client ----------------------------------------------------


def hammer(path: Path, other_device: str, threads: int = 8, rounds: int = 40) -> None:
    """Threads sharing one client; each checks it gets its own results and errors, while one
    more thread iterates the notifications."""
    failures: list[BaseException] = []
    with Client(path) as client:
        client.watch("watched")
        seen: list[str] = []

        def watcher() -> None:
            try:
                for note in client.notifications():
                    seen.append(note["params"]["key"])
                    if len(seen) == threads:
                        return
            except BaseException as exc:
                failures.append(exc)

        def worker(t: int) -> None:
            try:
                for i in range(rounds):
                    client.put("n", f"t{t}", {"t": t, "i": i})
                    assert client.get("n", f"t{t}")["value"] == {"t": t, "i": i}
                    with pytest.raises(NotFound):
                        client.untrust(other_device)
                    with pytest.raises(InvalidParams, match="'ns'"):
                        client.get("", f"t{t}")
                client.put("watched", f"w{t}", {})
            except BaseException as exc:
                failures.append(exc)

        # daemon threads: a regression that hangs them must not hang the test run's exit
        pool = [threading.Thread(target=watcher, daemon=True)]
        pool += [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
        for thread in pool:
            thread.start()
        deadline = time.monotonic() + HANG_GUARD_S
        for thread in pool:
            thread.join(max(0.0, deadline - time.monotonic()))
        hung = [thread for thread in pool if thread.is_alive()]
    for thread in hung:
        thread.join(HANG_GUARD_S)  # closing the client ends their calls
    assert not hung, f"{len(hung)} threads hung"
    assert not failures, failures
    assert sorted(seen) == sorted(f"w{t}" for t in range(threads))


async def test_threads_share_a_blocking_client(tmp_path: Path) -> None:
    other_device = create_identity(tmp_path / "other").device_id
    async with running_api(tmp_path / "home") as api:
        await trio.to_thread.run_sync(hammer, api.socket, other_device)


# --- 6. responses to abandoned calls (blocking client) ---------------------------------------


class Interrupted(Exception):
    """Raised where a KeyboardInterrupt would be."""


WAITING_CALLS = frozenset(("poll", "recv", "recv_into", "readline"))


@contextmanager
def interrupt_when_waiting() -> Iterator[threading.Event]:
    """Once the yielded event is set, raise :class:`Interrupted` in this thread as it starts
    to wait for data (its next call of a C function in ``WAITING_CALLS``), as Ctrl-C would
    interrupt a blocked call; a timed signal could land before the request is sent."""
    armed = threading.Event()

    def profile(frame: object, event: str, arg: object) -> None:
        if event == "c_call" and armed.is_set() and getattr(arg, "__name__", "") in WAITING_CALLS:
            armed.clear()
            raise Interrupted

    sys.setprofile(profile)
    try:
        yield armed
    finally:
        sys.setprofile(None)


@pytest.mark.parametrize("stale", ["error", "null_id_error", "result"])
def test_blocking_call_skips_the_response_of_an_interrupted_call(
    tmp_path: Path, stale: str
) -> None:
    def script(conn: socket.socket) -> None:
        first = read_request(conn)
        second = read_request(conn)
        if stale == "error":
            send_line(conn, {"jsonrpc": "2.0", "id": first["id"], "error": NOT_FOUND})
        elif stale == "null_id_error":
            send_line(conn, {"jsonrpc": "2.0", "id": None, "error": PARSE_ERROR})
        else:
            send_line(conn, {"jsonrpc": "2.0", "id": first["id"], "result": "first"})
        send_line(conn, {"jsonrpc": "2.0", "id": second["id"], "result": "second"})
        third = read_request(conn)
        send_line(conn, {"jsonrpc": "2.0", "id": None, "error": PARSE_ERROR})
        assert third["method"] == "third"
        wait_closed(conn)

    with (
        thread_daemon(tmp_path, script) as path,
        Client(path) as client,
        interrupt_when_waiting() as armed,
    ):
        armed.set()
        with pytest.raises(Interrupted):
            client.call("first")  # given up while waiting for its response
        assert client.call("second") == "second"
        with pytest.raises(ParseError):  # a null id: the oldest unanswered is this one
            client.call("third")


# --- 7. connection failures and timeouts -----------------------------------------------------


def test_blocking_connection_reset_is_connection_lost(tmp_path: Path) -> None:
    def script(conn: socket.socket) -> None:
        conn.recv(1)  # and close with the rest unread: the client's read gets ECONNRESET

    with thread_daemon(tmp_path, script) as path, Client(path) as client:
        with pytest.raises(ConnectionLost) as info:
            client.status()
        assert isinstance(info.value, SyncdError)
        with pytest.raises(ConnectionLost):
            client.status()
        with pytest.raises(ConnectionLost):
            next(client.notifications())


def test_blocking_client_after_close(tmp_path: Path) -> None:
    with thread_daemon(tmp_path, wait_closed) as path:
        client = Client(path)
        client.close()
        client.close()
        with pytest.raises(ConnectionLost, match="closed"):
            next(client.notifications())
        with pytest.raises(ConnectionLost, match="closed"):
            client.list("n")


def test_blocking_timeout_raises_call_timeout_then_the_client_is_broken(tmp_path: Path) -> None:
    def script(conn: socket.socket) -> None:
        read_request(conn)  # never answered
        wait_closed(conn)

    with thread_daemon(tmp_path, script) as path, Client(path, timeout=0.05) as client:
        with pytest.raises(CallTimeout, match="status") as info:
            client.status()
        assert isinstance(info.value, SyncdError)
        with pytest.raises(ConnectionLost, match="timed out"):
            client.status()


async def test_blocking_timeout_leaves_fast_calls_alone(tmp_path: Path) -> None:
    def calls(path: Path) -> None:
        with Client(path, timeout=HANG_GUARD_S) as client:
            client.settimeout(None)
            client.settimeout(HANG_GUARD_S)
            client.put("n", "k", {"v": 1})
            assert client.get("n", "k")["value"] == {"v": 1}

    async with running_api(tmp_path) as api:
        await trio.to_thread.run_sync(calls, api.socket)


async def test_async_timeout_keeps_the_connection_usable(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async def script(conn: Line) -> None:
        await conn.recv()  # never answered
        second = await conn.recv()
        await respond(conn, second["id"], "second")
        await conn.recv()

    async with fake_daemon(tmp_path, script) as path, open_client(path, timeout=5) as client:
        start = trio.current_time()
        with pytest.raises(CallTimeout, match="first") as info:
            await client.call("first")
        assert trio.current_time() - start == pytest.approx(5)
        assert isinstance(info.value, SyncdError)
        assert await client.call("second") == "second"


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"this is not json\n", "sent a malformed line: b'this is not json'"),
        (b"[1, 2]\n", "sent a malformed line"),
        (b"", "closed the connection"),
        (b"x" * 5000, "is too long"),
    ],
    ids=["not-json", "not-an-object", "closed", "endless-line"],
)
async def test_a_misbehaving_daemon_is_connection_lost_for_both_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reply: bytes, message: str
) -> None:
    # The response-line limit (1 GiB) lowered so that a line without end exceeds it.
    monkeypatch.setattr(syncd.client.async_client, "MAX_RESPONSE_LINE", 1000)
    monkeypatch.setattr(syncd.client.protocol, "MAX_RESPONSE_LINE", 1000)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()

    async def script(conn: Line) -> None:
        await conn.recv()
        await conn.send_raw(reply)  # then the connection closes

    with trio.fail_after(HANG_GUARD_S):
        async with fake_daemon(tmp_path / "a", script) as path, open_client(path) as client:
            with pytest.raises(ConnectionLost, match=re.escape(message)):
                await client.status()
            with pytest.raises(ConnectionLost):  # and stays lost
                await client.status()

    def blocking_script(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(reply)

    def blocking() -> None:
        with thread_daemon(tmp_path / "b", blocking_script) as path, Client(path) as client:
            with pytest.raises(ConnectionLost, match=re.escape(message)):
                client.status()
            with pytest.raises(ConnectionLost):
                client.status()

    await trio.to_thread.run_sync(blocking)


async def test_a_result_of_the_wrong_shape_is_a_client_error(tmp_path: Path) -> None:
    async def script(conn: Line) -> None:
        for result in ([1], {"nokeys": True}, {"exists": True, "value": {}}):
            await respond(conn, (await conn.recv())["id"], result)
        await conn.recv()

    async with fake_daemon(tmp_path, script) as path, open_client(path) as client:
        with pytest.raises(ClientError, match=r"unexpected result of status: \[1\]"):
            await client.status()
        with pytest.raises(ClientError, match="unexpected result of list"):
            await client.list("n")
        assert await client.get("n", "k") == {"exists": True, "value": {}}  # still usable


@pytest.mark.parametrize("wrong_id", [99, "1", 0])
async def test_an_answer_to_a_request_never_sent_ends_the_connection(
    tmp_path: Path, wrong_id: Any
) -> None:
    # Another service on the socket: its answers are not ours, and waiting would never end.
    async def script(conn: Line) -> None:
        await conn.recv()
        await respond(conn, wrong_id, {"ok": True})
        await conn.recv()

    async with fake_daemon(tmp_path, script) as path, open_client(path) as client:
        with pytest.raises(ConnectionLost, match=re.escape(f"never sent (id {wrong_id!r})")):
            await client.status()


def test_the_blocking_client_also_ends_on_an_answer_to_a_request_never_sent(
    tmp_path: Path,
) -> None:
    def script(conn: socket.socket) -> None:
        request = read_request(conn)
        send_line(conn, {"jsonrpc": "2.0", "id": request["id"] + 1, "result": {}})
        with suppress(EOFError):
            read_request(conn)

    with thread_daemon(tmp_path, script) as path, Client(path) as client:
        with pytest.raises(ConnectionLost, match=r"never sent \(id 2\)"):
            client.status()
        with pytest.raises(ConnectionLost):  # the connection is done with
            client.status()


async def test_initial_values_do_not_count_against_the_client_buffers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The daemon paces initial values by the connection; a consumer that does some work per
    # note must not see its snapshot end in an overflow, again at every resubscription.
    monkeypatch.setattr(syncd.client.protocol, "WATCH_BUFFER", 16)
    async with running_api(tmp_path) as api, open_client(api.socket) as client:
        for i in range(300):
            await client.put("n", f"k{i:03}", {"i": i})
        async with await client.watch("n", initial=True, buffer=16) as sub:
            await client.status()  # the reader takes in far more than 16 meanwhile
            keys = [(await sub.receive())["params"]["key"] for _ in range(300)]
            assert keys == [f"k{i:03}" for i in range(300)]
            for i in range(20):  # live changes nobody reads still count
                await client.put("n", "live", {"i": i})
            notes = [await sub.receive() for _ in range(17)]
            assert [n["method"] for n in notes] == ["change"] * 16 + ["overflow"]

    def daemon(conn: socket.socket) -> None:
        send_line(
            conn, {"jsonrpc": "2.0", "id": read_request(conn)["id"], "result": {"subscription": 1}}
        )
        status = read_request(conn)
        for i in range(300):  # the snapshot comes before the answer to the next call
            params = {"subscription": 1, "key": f"k{i:03}", "initial": True}
            send_line(conn, {"jsonrpc": "2.0", "method": "change", "params": params})
        send_line(conn, {"jsonrpc": "2.0", "id": status["id"], "result": {}})
        wait_closed(conn)

    def blocking() -> None:
        with thread_daemon(tmp_path / "fake", daemon) as path, Client(path) as c:
            c.watch("n", initial=True)
            c.status()  # buffers the whole snapshot on the way to its answer
            got: list[str] = []
            for note in c.notifications():
                assert note["method"] == "change", (len(got), note)
                got.append(note["params"]["key"])
                if len(got) == 300:
                    break
            assert got == [f"k{i:03}" for i in range(300)]

    (tmp_path / "fake").mkdir()
    await trio.to_thread.run_sync(blocking)


async def test_connect_to_no_daemon(tmp_path: Path) -> None:
    with pytest.raises(DaemonNotRunning, match=re.escape(str(tmp_path / "syncd.sock"))):
        async with open_client(home=tmp_path):
            pass
    with pytest.raises(DaemonNotRunning):
        Client(home=tmp_path)


# --- 8. subscription lifecycle ---------------------------------------------------------------


async def test_subscription_aclose_ends_iteration_and_is_idempotent(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api, open_client(api.socket) as client:
        sub = await client.watch("n")
        got: list[str] = []
        first = trio.Event()

        async def iterate() -> None:
            async for note in sub:
                got.append(note["params"]["key"])
                first.set()

        with trio.fail_after(HANG_GUARD_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(iterate)
                await client.call("put", ns="n", key="a", value={})
                await first.wait()
                await sub.aclose()
        assert got == ["a"]
        assert len(api.hub) == 0
        await sub.aclose()  # a no-op, not NotFound


async def test_subscription_is_an_async_context_manager(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api, open_client(api.socket) as client:
        async with await client.watch("n", initial=True) as sub:
            assert len(api.hub) == 1
            await client.put("n", "k", {"v": 1})
            note = await sub.receive()
            assert note["params"]["value"] == {"v": 1}
        assert len(api.hub) == 0


async def test_subscription_raises_connection_lost_when_the_connection_ends(
    tmp_path: Path,
) -> None:
    async def script(conn: Line) -> None:
        req = await conn.recv()
        await respond(conn, req["id"], {"subscription": 7})
        note = {"subscription": 7, "ns": "n", "key": "k", "value": {}, "deleted": False}
        await conn.send_raw(
            json.dumps({"jsonrpc": "2.0", "method": "change", "params": note}).encode() + b"\n"
        )
        # and close

    async with fake_daemon(tmp_path, script) as path, open_client(path) as client:
        sub = await client.watch("n")
        keys = []

        async def drain() -> None:
            async for note in sub:
                keys.append(note["params"]["key"])

        with pytest.raises(ConnectionLost, match="closed the connection"):
            await drain()
        assert keys == ["k"]
        with pytest.raises(ConnectionLost):
            await client.call("status")
        await sub.aclose()


async def test_abandoned_watch_is_unwatched_when_its_response_comes(tmp_path: Path) -> None:
    watch_sent = trio.Event()
    abandoned = trio.Event()
    unwatched: list[dict[str, Any]] = []

    async def script(conn: Line) -> None:
        watch = await conn.recv()
        watch_sent.set()
        await abandoned.wait()
        await respond(conn, watch["id"], {"subscription": 5})
        unwatch = await conn.recv()
        unwatched.append(unwatch)
        await respond(conn, unwatch["id"], {"ok": True})
        await conn.recv()

    async with fake_daemon(tmp_path, script) as path, open_client(path) as client:
        with trio.fail_after(HANG_GUARD_S):
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    await client.watch("n")

                nursery.start_soon(watch)
                await watch_sent.wait()
                nursery.cancel_scope.cancel()
            abandoned.set()
            while not unwatched:
                await trio.testing.wait_all_tasks_blocked()
    assert unwatched[0]["method"] == "unwatch"
    assert unwatched[0]["params"] == {"subscription": 5}


# --- 9. typed methods ------------------------------------------------------------------------


async def exercise_async(client: AsyncClient, other: str) -> None:
    status = await client.status()
    assert set(status) >= {"device_id", "name", "version", "listen", "peers_connected"}
    await client.put("n", "k", {"title": "a", "tags": ["x"]})
    await client.patch("n", "k", [{"op": "set", "path": ["title"], "value": "b"}])
    assert await client.get("n", "k") == {"exists": True, "value": {"title": "b", "tags": ["x"]}}
    assert (await client.get("n", "k", conflicts=True))["conflicts"] == []
    assert await client.list("n") == ["k"]
    assert await client.list("n", prefix="z") == []
    await client.trust(other, name="phone", addresses=["127.0.0.1:7400"])
    (peer,) = (await client.peers())["peers"]
    assert (peer["id"], peer["name"], peer["addresses"]) == (other, "phone", ["127.0.0.1:7400"])
    await client.share("n", [other])
    assert await client.namespaces() == [{"ns": "n", "devices": [other], "documents": 1}]
    assert await client.sync("n", timeout_s=1) == {"acked_by": [], "pending": []}
    await client.unshare("n", [other])
    await client.untrust(other)
    with pytest.raises(NotFound):
        await client.untrust(other)
    with pytest.raises(TypeError, match="list of device IDs"):
        await client.share("n", other)
    async with await client.watch("n", initial=True) as sub:
        assert (await sub.receive())["params"]["key"] == "k"
        await client.unwatch(sub.id)
    assert await client.delete("n", "k") is True
    assert await client.delete("n", "k") is False


def exercise_blocking(client: Client, other: str) -> None:
    status = client.status()
    assert set(status) >= {"device_id", "name", "version", "listen", "peers_connected"}
    client.put("n", "k", {"title": "a", "tags": ["x"]})
    client.patch("n", "k", [{"op": "set", "path": ["title"], "value": "b"}])
    assert client.get("n", "k") == {"exists": True, "value": {"title": "b", "tags": ["x"]}}
    assert client.get("n", "k", conflicts=True)["conflicts"] == []
    assert client.list("n") == ["k"]
    client.trust(other, name="phone", addresses=["127.0.0.1:7400"])
    (peer,) = client.peers()["peers"]
    assert (peer["id"], peer["name"]) == (other, "phone")
    client.share("n", [other])
    assert client.namespaces() == [{"ns": "n", "devices": [other], "documents": 1}]
    assert client.sync("n", timeout_s=1) == {"acked_by": [], "pending": []}
    client.unshare("n", [other])
    client.untrust(other)
    sub = client.watch("n", initial=True)
    assert next(client.notifications())["params"]["subscription"] == sub
    client.unwatch(sub)
    with pytest.raises(NotFound):
        client.unwatch(sub)
    assert client.delete("n", "k") is True
    assert client.delete("n", "k") is False


async def test_typed_methods_of_both_clients(tmp_path: Path) -> None:
    other = create_identity(tmp_path / "other").device_id
    home = tmp_path / "home"
    async with running_api(home) as api:
        async with open_client(home=home) as client:
            await exercise_async(client, other)
        with pytest.raises(ValueError, match="not both"):
            async with open_client(api.socket, home=home):
                pass

        def blocking() -> None:
            with Client(home=home) as client:
                assert client.path == api.socket
                exercise_blocking(client, other)

        await trio.to_thread.run_sync(blocking)


# --- 10. values the daemon cannot store ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ({"x": math.nan}, ValueError, r"param 'value': value\['x'\] is NaN or infinite"),
        ({"a": [1, {"b": -math.inf}]}, ValueError, r"value\['a'\]\[1\]\['b'\] is NaN"),
        ({1: "x"}, TypeError, r"param 'value': key 1 in value is not a string"),
        ({"a": [{"b": {None: 1}}]}, TypeError, r"key None in value\['a'\]\[0\]\['b'\]"),
        ({"s": {1, 2}}, TypeError, r"not JSON serializable"),
    ],
)
async def test_unstorable_values_are_refused_before_sending(
    tmp_path: Path, value: dict[Any, Any], error: type[Exception], message: str
) -> None:
    async with running_api(tmp_path) as api, open_client(api.socket) as client:
        with pytest.raises(error, match=message):
            await client.call("put", ns="n", key="k", value=value)
        assert (await client.call("get", ns="n", key="k"))["exists"] is False

        def blocking() -> None:
            with Client(api.socket) as c, pytest.raises(error, match=message):
                c.put("n", "k", value)

        await trio.to_thread.run_sync(blocking)


# --- 11. the documented examples -------------------------------------------------------------


def doc_examples() -> list[str]:
    """The Python code blocks of the "Python clients" section of docs/api.md."""
    text = API_DOC.read_text()
    section = text[text.index("## Python clients (`syncd.client`)") :]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


async def test_documented_examples_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocking, asynchronous = doc_examples()[:2]
    monkeypatch.setenv("SYNCD_HOME", str(tmp_path))  # the examples use the default socket
    monkeypatch.delenv("SYNCD_SOCKET", raising=False)
    async with running_api(tmp_path):
        await trio.to_thread.run_sync(exec, blocking, {})
        out = capsys.readouterr().out
        assert "{'exists': True, 'value': {'title': 'shopping'}}" in out
        assert "-32000 type_mismatch" in out
        assert "todo {'title': 'shopping'}" in out
        # The async example ends with trio.run(main); here trio already runs.
        body, run = asynchronous.rstrip().rsplit("\n", 1)
        assert run == "trio.run(main)"
        namespace: dict[str, Any] = {}
        exec(body, namespace)
        with trio.fail_after(HANG_GUARD_S):
            await namespace["main"]()
        assert "100 changes" in capsys.readouterr().out


# --- 12. typing and pickling -----------------------------------------------------------------


def test_public_names_and_pickling() -> None:
    for name in syncd.client.__all__:
        assert hasattr(syncd.client, name), name
    assert SyncdError is syncd.SyncdError
    assert syncd.client.WATCH_BUFFER == WATCH_BUFFER
    errors: list[ClientError] = [
        error_from_response(NOT_FOUND),
        error_from_response({"code": -32602, "message": "bad", "data": {"param": "ns"}}),
        error_from_response({"code": -32000, "message": "odd", "data": {"reason": "weird"}}),
        ConnectionLost("gone"),
        CallTimeout("slow"),
        ClientError("denied", reason="permission_denied"),
    ]
    for exc in errors:
        copy = pickle.loads(pickle.dumps(exc))
        assert type(copy) is type(exc)
        assert str(copy) == str(exc)
        assert copy.reason == exc.reason
        if isinstance(exc, RemoteError):
            assert isinstance(copy, RemoteError)
            assert (copy.code, copy.data) == (exc.code, exc.data)
    assert isinstance(errors[2], ApplicationError)
    assert errors[2].reason == "weird"
    assert os.fspath(syncd.client.default_socket())


# --- 9. second audit: cancellation, groups, refusals, buffers --------------------------------


async def test_an_exception_group_of_the_block_comes_out_unwrapped(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        group = ExceptionGroup("mine", [ValueError("x")])
        with pytest.raises(ExceptionGroup) as info:
            async with open_client(api.socket):
                raise group
        assert info.value is group

        async def fail() -> None:
            raise KeyError("task")

        with pytest.raises(ExceptionGroup) as failed:
            async with open_client(api.socket), trio.open_nursery() as nursery:
                nursery.start_soon(fail)
        assert [type(e) for e in failed.value.exceptions] == [KeyError]  # one group, not two


async def test_a_subscription_left_from_a_cancelled_scope_is_still_unwatched(
    tmp_path: Path,
) -> None:
    async with running_api(tmp_path) as api, open_client(api.socket) as client:
        for _ in range(70):  # more than the 64 a connection may hold at once
            with trio.CancelScope() as scope:
                async with await client.watch("n"):
                    scope.cancel()
                    await trio.sleep_forever()
        while len(api.hub):  # the last unwatches are on their way
            await client.status()
        with pytest.raises(ValueError, match="buffer"):
            await client.watch("n", buffer=0)
        assert len(api.hub) == 0  # refused before anything was sent


async def test_unwatch_by_id_ends_the_local_subscription(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api, open_client(api.socket) as client:
        sub = await client.watch("n")
        await client.unwatch(sub.id)
        with trio.fail_after(HANG_GUARD_S):
            assert [note async for note in sub] == []
        assert len(api.hub) == 0


async def test_the_reason_of_a_refusal_reaches_the_async_client(tmp_path: Path) -> None:
    async def script(conn: Line) -> None:
        refusal = {"code": -32000, "message": "too many connections (limit 2)"}
        await respond(conn, None, error={**refusal, "data": {"reason": "too_many_connections"}})

    async with fake_daemon(tmp_path, script) as path, open_client(path) as client:
        # The refusal and the close arrive before any call: no request claims the error.
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(ConnectionLost, match=r"too many connections \(limit 2\)"):
            await client.status()


def test_a_daemon_of_another_user_is_refused_at_connect() -> None:
    path = Path("/run/x.sock")
    refused = syncd.client.protocol.refusal(os.getuid() + 1, path)
    assert isinstance(refused, ClientError) and refused.reason == "permission_denied"
    assert str(os.getuid() + 1) in str(refused)
    assert syncd.client.protocol.refusal(os.getuid(), path) is None


def flood_after_watch(conn: socket.socket, changes: int) -> None:
    """A fake daemon's side: answer ``watch`` (subscription 7), send ``changes`` change
    notifications, then answer one ``status`` (whose answer comes after them all)."""
    request = read_request(conn)
    send_line(conn, {"jsonrpc": "2.0", "id": request["id"], "result": {"subscription": 7}})
    for i in range(changes):
        params = {"subscription": 7, "ns": "n", "key": f"k{i}", "value": {}}
        send_line(conn, {"jsonrpc": "2.0", "method": "change", "params": params})
    request = read_request(conn)
    send_line(conn, {"jsonrpc": "2.0", "id": request["id"], "result": {}})


def test_a_blocking_subscription_nobody_reads_ends_with_an_overflow(tmp_path: Path) -> None:
    def script(conn: socket.socket) -> None:
        flood_after_watch(conn, WATCH_BUFFER + 500)
        request = read_request(conn)  # the unwatch the overflow brings
        assert request["method"] == "unwatch" and request["params"] == {"subscription": 7}
        send_line(conn, {"jsonrpc": "2.0", "id": request["id"], "result": {"ok": True}})
        wait_closed(conn)

    with thread_daemon(tmp_path, script) as path, Client(path) as client:
        assert client.watch("n") == 7
        assert client.status() == {}
        notes = client.notifications()
        got = [next(notes) for _ in range(WATCH_BUFFER + 1)]
        assert [n["method"] for n in got[:-1]] == ["change"] * WATCH_BUFFER  # bounded
        assert got[-1] == {"jsonrpc": "2.0", "method": "overflow", "params": {"subscription": 7}}


def test_a_stale_blocking_client_says_the_daemon_is_gone(tmp_path: Path) -> None:
    def script(conn: socket.socket) -> None:
        request = read_request(conn)
        send_line(conn, {"jsonrpc": "2.0", "id": request["id"], "result": {}})
        conn.shutdown(socket.SHUT_RDWR)  # the daemon goes away between calls

    with thread_daemon(tmp_path, script) as path, Client(path) as client:
        assert client.status() == {}

        def call_until_lost() -> None:
            for _ in range(3):  # the first send may still fit in the socket buffer
                client.status()

        with pytest.raises(ConnectionLost) as info:
            call_until_lost()
        assert "cut off" not in str(info.value)


def test_timeouts_must_be_positive(tmp_path: Path) -> None:
    with thread_daemon(tmp_path, wait_closed) as path:
        for bad in (0, -1, math.nan, "5", True):
            with pytest.raises(ValueError, match="timeout"):
                Client(path, timeout=bad)  # type: ignore[arg-type]
        with Client(path, timeout=2.5) as client, pytest.raises(ValueError, match="timeout"):
            client.settimeout(0)


def test_a_capped_blocking_subscription_is_unwatched_at_the_next_call(tmp_path: Path) -> None:
    def script(conn: socket.socket) -> None:
        flood_after_watch(conn, WATCH_BUFFER + 10)
        request = read_request(conn)  # the next call sends the unwatch first
        assert request["method"] == "unwatch" and request["params"] == {"subscription": 7}
        send_line(conn, {"jsonrpc": "2.0", "id": request["id"], "result": {"ok": True}})
        request = read_request(conn)
        assert request["method"] == "status"
        send_line(conn, {"jsonrpc": "2.0", "id": request["id"], "result": {}})
        wait_closed(conn)

    with thread_daemon(tmp_path, script) as path, Client(path) as client:
        client.watch("n")
        assert client.status() == {}
        assert client.status() == {}  # nobody read the notifications, yet the unwatch went


async def test_the_block_s_exception_survives_a_cancelled_scope(tmp_path: Path) -> None:
    async def fail_in_a_cancelled_scope(path: Path) -> None:
        with trio.CancelScope() as scope:
            async with open_client(path):
                scope.cancel()
                raise KeyError("missing")

    async with running_api(tmp_path) as api:
        with pytest.raises(KeyError, match="missing"):  # was lost: the scope took Cancelled
            await fail_in_a_cancelled_scope(api.socket)
