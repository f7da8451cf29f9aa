"""The JSON-RPC API end to end over its real Unix socket, on the real SQLite replica.

Every method, every error code, pipelining, batches, and hostile input that must leave the
server serving. (Process-level behaviour is in test_daemon_process.py.)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from syncd.config import ApiConfig
from syncd.daemon import rpc, server
from syncd.daemon.rpc import LineSplitter, parse_message
from syncd.daemon.store import NoNetwork
from syncd.deviceid import format_device_id
from tests.daemon_harness import Api, Line, line_connection, request_line, running_api

OTHER = format_device_id(b"\x01" * 32)
THIRD = format_device_id(b"\x02" * 32)


@pytest.fixture
async def api(tmp_path: Path) -> Any:
    async with running_api(tmp_path) as api:
        yield api


@pytest.fixture
async def conn(api: Api) -> Any:
    async with line_connection(api.socket) as conn:
        yield conn


def result(msg: dict[str, Any]) -> Any:
    assert "error" not in msg, msg
    return msg["result"]


def error(msg: dict[str, Any], code: int, reason: str | None = None) -> dict[str, Any]:
    assert "error" in msg, msg
    err: dict[str, Any] = msg["error"]
    assert err["code"] == code, err
    if reason is not None:
        assert err["data"]["reason"] == reason, err
    assert isinstance(err["message"], str)
    assert err["message"]
    return err


# --- methods -------------------------------------------------------------------------------


async def test_status(conn: Line, api: Api) -> None:
    r = result(await conn.call("status", {}))
    assert r == {
        "device_id": api.device_id,
        "name": "test",
        "version": "0.1.0",
        "listen": "x:1",
        "peers_connected": 0,
        "namespaces": [],
    }
    assert result(await conn.call("status"))["device_id"] == api.device_id  # params optional


async def test_put_get_list_delete(conn: Line) -> None:
    assert result(await conn.call("get", {"ns": "n", "key": "a"})) == {
        "exists": False,
        "value": None,
    }
    assert result(await conn.call("put", {"ns": "n", "key": "a", "value": {"t": "x"}})) == {
        "ok": True
    }
    await conn.call("put", {"ns": "n", "key": "b/1", "value": {}})
    await conn.call("put", {"ns": "n", "key": "b/2", "value": {"z": [1, 2]}})
    assert result(await conn.call("get", {"ns": "n", "key": "a"})) == {
        "exists": True,
        "value": {"t": "x"},
    }
    assert result(await conn.call("list", {"ns": "n"})) == {"keys": ["a", "b/1", "b/2"]}
    assert result(await conn.call("list", {"ns": "n", "prefix": "b/"})) == {"keys": ["b/1", "b/2"]}
    assert result(await conn.call("list", {"ns": "other"})) == {"keys": []}
    assert result(await conn.call("delete", {"ns": "n", "key": "a"})) == {
        "ok": True,
        "existed": True,
    }
    assert result(await conn.call("delete", {"ns": "n", "key": "a"})) == {
        "ok": True,
        "existed": False,
    }
    assert result(await conn.call("get", {"ns": "n", "key": "a"}))["exists"] is False
    status = result(await conn.call("status"))
    assert status["namespaces"] == ["n"]


async def test_get_with_conflicts(conn: Line) -> None:
    await conn.call("put", {"ns": "n", "key": "a", "value": {"t": 1}})
    r = result(await conn.call("get", {"ns": "n", "key": "a", "conflicts": True}))
    assert r == {"exists": True, "value": {"t": 1}, "conflicts": []}


async def test_patch(conn: Line) -> None:
    ops = [
        {"op": "make", "path": ["n"], "type": "counter"},
        {"op": "inc", "path": ["n"], "by": 5},
        {"op": "make", "path": ["s"], "type": "set"},
        {"op": "add", "path": ["s"], "value": "x"},
        {"op": "make", "path": ["t"], "type": "text"},
        {"op": "insert", "path": ["t"], "index": 0, "text": "hello"},
    ]
    assert result(await conn.call("patch", {"ns": "n", "key": "p", "ops": ops})) == {"ok": True}
    value = result(await conn.call("get", {"ns": "n", "key": "p"}))["value"]
    assert value == {"n": 5, "s": ["x"], "t": "hello"}


async def test_patch_errors_carry_the_engines_reason(conn: Line) -> None:
    await conn.call("put", {"ns": "n", "key": "p", "value": {"r": 1}})
    make = [{"op": "make", "path": ["t"], "type": "text", "value": "abc"}]
    assert result(await conn.call("patch", {"ns": "n", "key": "p", "ops": make}))
    bad_type = [{"op": "inc", "path": ["r"], "by": 1}]
    error(
        await conn.call("patch", {"ns": "n", "key": "p", "ops": bad_type}), -32000, "type_mismatch"
    )
    bad_path = [{"op": "delete", "path": ["t"], "index": 10, "count": 1}]
    error(
        await conn.call("patch", {"ns": "n", "key": "p", "ops": bad_path}), -32000, "invalid_path"
    )
    malformed = [{"op": "frobnicate", "path": []}]
    error(await conn.call("patch", {"ns": "n", "key": "p", "ops": malformed}), -32602)
    # Atomic: a failing patch changed nothing.
    ops = [{"op": "set", "path": ["r"], "value": 2}, {"op": "inc", "path": ["r"], "by": 1}]
    error(await conn.call("patch", {"ns": "n", "key": "p", "ops": ops}), -32000, "type_mismatch")
    assert result(await conn.call("get", {"ns": "n", "key": "p"}))["value"] == {"r": 1, "t": "abc"}


async def test_trust_peers_share_namespaces_untrust(conn: Line, api: Api) -> None:
    assert result(await conn.call("peers")) == {"peers": [], "pending": []}
    r = await conn.call(
        "trust", {"device_id": OTHER.lower(), "name": "lap", "addresses": ["10.0.0.2:7400"]}
    )
    assert result(r) == {"ok": True}
    peers = result(await conn.call("peers"))
    assert peers == {
        "peers": [
            {
                "id": OTHER,
                "name": "lap",
                "trusted": True,
                "connected": False,
                "addresses": ["10.0.0.2:7400"],
                "last_seen": None,
            }
        ],
        "pending": [],
    }
    error(await conn.call("share", {"ns": "n", "devices": [THIRD]}), -32000, "not_trusted")
    assert result(await conn.call("share", {"ns": "n", "devices": [OTHER]})) == {"ok": True}
    await conn.call("put", {"ns": "n", "key": "a", "value": {}})
    assert result(await conn.call("namespaces")) == {
        "namespaces": [{"ns": "n", "devices": [OTHER], "documents": 1}]
    }
    # Nobody is connected: sync has nothing to wait for.
    assert result(await conn.call("sync", {"ns": "n", "timeout_s": 5})) == {
        "acked_by": [],
        "pending": [],
    }
    assert result(await conn.call("unshare", {"ns": "n", "devices": [OTHER]})) == {"ok": True}
    ns = result(await conn.call("namespaces"))["namespaces"]
    assert ns == [{"ns": "n", "devices": [], "documents": 1}]
    # untrust takes the contract's params of trust too (checked, then of no use).
    bad = {"device_id": OTHER, "addresses": ["nowhere"]}
    assert error(await conn.call("untrust", bad), -32602)["data"]["param"] == "addresses"
    bad = {"device_id": OTHER, "name": "a\u200bb"}
    assert error(await conn.call("untrust", bad), -32602)["data"]["param"] == "name"
    assert len(result(await conn.call("peers"))["peers"]) == 1  # (refused: still trusted)
    both = {"device_id": OTHER, "name": "phone", "addresses": ["10.0.0.1:7400"]}
    assert result(await conn.call("untrust", both)) == {"ok": True}
    error(await conn.call("untrust", {"device_id": OTHER}), -32000, "not_found")
    assert result(await conn.call("peers"))["peers"] == []
    error(await conn.call("trust", {"device_id": api.device_id}), -32602)


async def test_mistyped_device_id_is_rejected(conn: Line) -> None:
    typo = ("B" if OTHER[0] != "B" else "C") + OTHER[1:]
    err = error(await conn.call("trust", {"device_id": typo}), -32602, "invalid_device_id")
    assert err["data"]["param"] == "device_id"
    error(await conn.call("share", {"ns": "n", "devices": [typo]}), -32602, "invalid_device_id")
    error(await conn.call("untrust", {"device_id": "short"}), -32602, "invalid_device_id")


# --- error codes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"garbage",
        b"{",
        b'{"jsonrpc": "2.0", "method": "status", "id": 1',
        b"\xff\xfe\x00",
        b'{"jsonrpc":"2.0","id":1,"method":"put","params":{"ns":"n","key":"k","value":{"x":NaN}}}',
        b"[" * 100_000,
    ],
)
async def test_parse_error_keeps_the_connection_usable(conn: Line, line: bytes) -> None:
    await conn.send_raw(line + b"\n")
    msg = await conn.recv()
    error(msg, -32700)
    assert msg["id"] is None
    assert result(await conn.call("status"))["version"]


@pytest.mark.parametrize(
    ("message", "rid"),
    [
        (1, None),
        ("x", None),
        ({}, None),
        ({"method": "status", "id": 3}, 3),
        ({"jsonrpc": "1.0", "method": "status", "id": 4}, 4),
        ({"jsonrpc": "2.0", "method": 5, "id": 5}, 5),
        ({"jsonrpc": "2.0", "method": "status", "id": [1]}, None),
        ({"jsonrpc": "2.0", "method": "status", "id": True}, None),
        ({"jsonrpc": "2.0", "method": "status", "id": 6, "extra": 1}, 6),
        ([], None),
    ],
)
async def test_invalid_request(conn: Line, message: Any, rid: Any) -> None:
    await conn.send_raw(json.dumps(message).encode() + b"\n")
    msg = await conn.recv()
    error(msg, -32600)
    assert msg["id"] == rid
    assert result(await conn.call("status"))["version"]


async def test_method_not_found(conn: Line) -> None:
    msg = await conn.call("frobnicate", {})
    error(msg, -32601)
    assert "frobnicate" in msg["error"]["message"]


@pytest.mark.parametrize(
    ("method", "params", "param"),
    [
        ("get", {"key": "a"}, "ns"),
        ("get", {"ns": "", "key": "a"}, "ns"),
        ("get", {"ns": 1, "key": "a"}, "ns"),
        ("get", {"ns": "n", "key": "a", "conflicts": "yes"}, "conflicts"),
        ("get", {"ns": "n", "key": "a\x00b"}, "key"),
        ("get", {"ns": "n", "key": "k" * 1025}, "key"),
        ("get", {"ns": "n", "key": "a", "bogus": 1}, "bogus"),
        ("put", {"ns": "n", "key": "a", "value": [1]}, "value"),
        ("put", {"ns": "n", "key": "a"}, "value"),
        ("patch", {"ns": "n", "key": "a", "ops": {}}, "ops"),
        ("list", {"ns": "n", "prefix": 3}, "prefix"),
        ("watch", {"ns": "n", "initial": 1}, "initial"),
        ("trust", {"device_id": OTHER, "addresses": ["nohost"]}, "addresses"),
        ("trust", {"device_id": OTHER, "name": ""}, "name"),
        ("share", {"ns": "n", "devices": []}, "devices"),
        ("share", {"ns": "n", "devices": [1]}, "devices"),
        ("sync", {"ns": "n", "timeout_s": -1}, "timeout_s"),
        ("sync", {"ns": "n", "timeout_s": "soon"}, "timeout_s"),
        ("status", {"verbose": True}, "verbose"),
        ("trust", {"device_id": 7}, "device_id"),
        ("trust", {"device_id": OTHER, "addresses": "10.0.0.1:1"}, "addresses"),
        (
            "trust",
            {"device_id": OTHER, "addresses": [f"10.0.0.1:{p}" for p in range(1, 66)]},
            "addresses",
        ),
        ("trust", {"device_id": OTHER, "addresses": [80]}, "addresses"),
        ("untrust", {}, "device_id"),
        ("unwatch", {"subscription": "1"}, "subscription"),
        ("unwatch", {"subscription": 1.5}, "subscription"),
        ("unwatch", {}, "subscription"),
        ("delete", {"ns": "n", "key": "a", "existed": True}, "existed"),
    ],
)
async def test_invalid_params_name_the_param(
    conn: Line, method: str, params: dict[str, Any], param: str
) -> None:
    err = error(await conn.call(method, params), -32602, None)
    assert err["data"]["param"] == param
    assert err["data"]["reason"] in ("invalid_params", "invalid_device_id")


async def test_positional_params_are_invalid(conn: Line) -> None:
    error(await conn.call("get", ["n", "a"]), -32602, "invalid_params")


async def test_put_ns_with_surrogate_is_invalid(conn: Line) -> None:
    await conn.send_raw(
        b'{"jsonrpc":"2.0","id":9,"method":"get","params":{"ns":"\\ud800","key":"a"}}\n'
    )
    error(await conn.recv(), -32602)


# --- framing -------------------------------------------------------------------------------


async def test_pipelined_requests_all_get_answers_by_id(conn: Line) -> None:
    lines = b"".join(
        request_line("put", {"ns": "p", "key": str(i), "value": {"i": i}}, f"r{i}")
        for i in range(200)
    )
    await conn.send_raw(lines)
    ids = set()
    for _ in range(200):
        msg = await conn.recv()
        assert result(msg) == {"ok": True}
        ids.add(msg["id"])
    assert ids == {f"r{i}" for i in range(200)}
    assert len(result(await conn.call("list", {"ns": "p"}))["keys"]) == 200


async def test_notification_requests_run_without_answer(conn: Line) -> None:
    await conn.send_raw(
        b'{"jsonrpc":"2.0","method":"put","params":{"ns":"n","key":"q","value":{"a":1}}}\n'
    )
    msg = await conn.call("get", {"ns": "n", "key": "q"})
    assert result(msg)["value"] == {"a": 1}


async def test_batch(conn: Line) -> None:
    batch = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "put",
            "params": {"ns": "n", "key": "b", "value": {}},
        },
        {"jsonrpc": "2.0", "method": "status"},
        {"jsonrpc": "2.0", "id": 2, "method": "nope"},
        5,
    ]
    await conn.send_raw(json.dumps(batch).encode() + b"\n")
    msg = await conn.recv()
    assert isinstance(msg, list)
    assert len(msg) == 3
    assert msg[0] == {"jsonrpc": "2.0", "id": 1, "result": {"ok": True}}
    error(msg[1], -32601)
    error(msg[2], -32600)


async def test_blank_lines_and_crlf_are_tolerated(conn: Line) -> None:
    await conn.send_raw(b"\n\r\n  \n")
    await conn.send_raw(b'{"jsonrpc":"2.0","id":1,"method":"status"}\r\n')
    assert result(await conn.recv())["version"]


async def test_request_split_across_writes(conn: Line) -> None:
    data = b'{"jsonrpc":"2.0","id":7,"method":"status"}\n'
    for i in range(len(data)):
        await conn.send_raw(data[i : i + 1])
    assert (await conn.recv())["id"] == 7


async def test_huge_line_gets_an_error_and_the_connection_survives(tmp_path: Path) -> None:
    from syncd.config import ApiConfig

    async with (
        running_api(tmp_path, ApiConfig(max_line_bytes=64 * 1024)) as api,
        line_connection(api.socket) as conn,
    ):
        chunk = b"x" * 65536
        for _ in range(64):  # 4 MiB of one line, far beyond the limit
            await conn.send_raw(chunk)
        await conn.send_raw(b"\n")
        msg = await conn.recv()
        err = error(msg, -32000, "too_large")
        assert err["data"]["limit"] == 64 * 1024
        # Exactly at the limit is accepted.
        value = {"s": "y" * (64 * 1024 - 100)}
        line = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "put",
                "params": {"ns": "n", "key": "k", "value": value},
            }
        ).encode()
        assert len(line) <= 64 * 1024
        await conn.send_raw(line + b"\n")
        assert result(await conn.recv()) == {"ok": True}
        assert result(await conn.call("status"))["version"]


async def test_connection_limit_refuses_with_a_reason(tmp_path: Path) -> None:
    from syncd.config import ApiConfig

    async with running_api(tmp_path, ApiConfig(max_connections=2)) as api:
        async with line_connection(api.socket) as a, line_connection(api.socket) as b:
            assert result(await a.call("status"))
            assert result(await b.call("status"))
            async with line_connection(api.socket) as c:
                error(await c.recv(), -32000, "too_many_connections")
        # After the two closed, a new one is served.
        with trio.fail_after(10):
            while True:
                async with line_connection(api.socket) as d:
                    await d.send("status")
                    msg = await d.recv()
                    if "result" in msg:
                        break
                    error(msg, -32000, "too_many_connections")


async def test_many_connections_opened_and_dropped(api: Api, conn: Line) -> None:
    for i in range(200):
        async with line_connection(api.socket) as c:
            if i % 2:
                await c.send_raw(b'{"jsonrpc":"2.0","id":1,"method":"sta')
    assert result(await conn.call("status"))["version"]


async def test_client_disconnecting_mid_write_still_commits(api: Api, conn: Line) -> None:
    async with line_connection(api.socket) as c:
        await c.send("put", {"ns": "n", "key": "gone", "value": {"v": 1}})
    # The write was accepted before the client left; it must land.
    with trio.fail_after(10):
        while not result(await conn.call("get", {"ns": "n", "key": "gone"}))["exists"]:
            await trio.lowlevel.checkpoint()


async def test_large_answers_to_a_client_that_reads_late_arrive_whole(conn: Line) -> None:
    # An answer larger than the socket buffer is written partly at once and finished by the
    # connection's writer task; answers made meanwhile queue behind it, whole and in order.
    big = {"text": "x" * 3_000_000}
    assert result(await conn.call("put", {"ns": "n", "key": "big", "value": big})) == {"ok": True}
    assert result(await conn.call("put", {"ns": "n", "key": "small", "value": {"s": 1}}))
    first = await conn.send("get", {"ns": "n", "key": "big"})
    second = await conn.send("get", {"ns": "n", "key": "small"})
    pipelined = [await conn.send("get", {"ns": "n", "key": k}) for k in ("big", "small") * 3]
    got = {}
    for _ in range(2 + len(pipelined)):
        msg = await conn.recv()
        got[msg["id"]] = result(msg)["value"]
    assert got[first] == big
    assert got[second] == {"s": 1}
    assert [got[i] for i in pipelined] == [big, {"s": 1}] * 3


async def test_a_slow_disk_does_not_stall_answers_that_need_no_store(api: Api, conn: Line) -> None:
    # Commits that take long move to the replica's writer thread; meanwhile the loop keeps
    # answering other connections, and this one's later answers follow in request order.
    store = api.store.replica.writer.store
    slow, hold = True, False
    release = threading.Event()

    def slow_disk(point: str) -> None:
        if point == "flushed" and slow:
            time.sleep(0.05)  # a disk whose fsync takes 50 ms
        if point == "flushed" and hold:
            release.wait(10)  # ... and then one that hangs until the test lets it go

    store.fault_hook = slow_disk
    assert result(await conn.call("put", {"ns": "n", "key": "a", "value": {"v": 1}}))
    slow, hold = False, True
    put_id = await conn.send("put", {"ns": "n", "key": "b", "value": {"v": 2}})
    status_id = await conn.send("status")
    async with line_connection(api.socket) as other:
        error(await other.call("unwatch", {"subscription": 12345}), -32000, "not_found")
        assert result(await other.call("status"))["version"]
    hold = False
    release.set()
    first, second = await conn.recv(), await conn.recv()
    assert (first["id"], second["id"]) == (put_id, status_id)
    assert result(first) == {"ok": True}
    assert result(await conn.call("get", {"ns": "n", "key": "b"}))["value"] == {"v": 2}


# --- audit findings: values, ids, notifications, order, departing clients ---------------------


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (b'{"big":123456789012345678901234567890}', -32602),
        (b'{"big":18446744073709551616}', -32602),
        (b'{"x":1e400}', -32700),
        (b'{"x":[-1e400]}', -32700),
    ],
)
async def test_values_a_document_cannot_store_are_refused(
    api: Api, conn: Line, value: bytes, code: int
) -> None:
    line = b'{"jsonrpc":"2.0","id":1,"method":"put","params":{"ns":"n","key":"k","value":%s}}\n'
    await conn.send_raw(line % value)
    err = error(await conn.recv(), code)
    if code == -32602:
        assert err["data"]["param"] == "value"
    assert result(await conn.call("get", {"ns": "n", "key": "k"}))["exists"] is False
    # The largest integers that fit are stored, and read back after the cache is gone.
    fits = {"hi": 2**64 - 1, "lo": -(2**64) + 1, "f": 1.5e308}
    assert result(await conn.call("put", {"ns": "n", "key": "k", "value": fits}))
    api.store.replica.writer.store._cache.clear()
    assert result(await conn.call("get", {"ns": "n", "key": "k"}))["value"] == fits


async def test_a_counter_cannot_overflow(conn: Line) -> None:
    top = {"op": "inc", "path": ["c"], "by": 2**63 - 1}
    assert result(await conn.call("patch", {"ns": "n", "key": "k", "ops": [top]}))
    one = {"op": "inc", "path": ["c"], "by": 1}
    error(await conn.call("patch", {"ns": "n", "key": "k", "ops": [one]}), -32000, "too_large")
    for by in (2**63, 2**64 - 1):  # storable numbers the counter's share cannot take
        beyond = {"op": "inc", "path": ["c"], "by": by}
        error(
            await conn.call("patch", {"ns": "n", "key": "k", "ops": [beyond]}), -32000, "too_large"
        )
    huge = {"op": "inc", "path": ["c"], "by": 2**64}  # not even a storable number
    error(await conn.call("patch", {"ns": "n", "key": "k", "ops": [huge]}), -32602)
    assert result(await conn.call("get", {"ns": "n", "key": "k"}))["value"] == {"c": 2**63 - 1}
    # Whether an inc fits depends on the result, not on `by` alone.
    down = {"op": "inc", "path": ["c"], "by": -(2**64) + 1}
    assert result(await conn.call("patch", {"ns": "n", "key": "k", "ops": [down]}))
    assert result(await conn.call("get", {"ns": "n", "key": "k"}))["value"] == {"c": -(2**63)}
    # A put of a number no counter can show makes the field equal to it, as a register.
    assert result(await conn.call("put", {"ns": "n", "key": "k", "value": {"c": 2**63}}))
    assert result(await conn.call("get", {"ns": "n", "key": "k"}))["value"] == {"c": 2**63}


async def test_unknown_members_of_an_operation_are_refused(conn: Line) -> None:
    await conn.call("patch", {"ns": "n", "key": "k", "ops": [{"op": "inc", "path": ["c"]}]})
    typo = {"op": "inc", "path": ["c"], "bye": 5}
    err = error(await conn.call("patch", {"ns": "n", "key": "k", "ops": [typo]}), -32602)
    assert "bye" in err["message"]
    make = {"op": "make", "path": ["t"], "type": "text", "valeu": "hello"}
    error(await conn.call("patch", {"ns": "n", "key": "k", "ops": [make]}), -32602)
    assert result(await conn.call("get", {"ns": "n", "key": "k"}))["value"] == {"c": 1}


@pytest.mark.parametrize(
    "line",
    [
        '{"jsonrpc":"2.0","id":1,"method":"status"}'.encode("utf-16"),
        b'{"jsonrpc":"2.0","id":1,"method":"get","params":{"ns":"\xed\xb3\xbf","key":"k"}}',
    ],
)
async def test_text_that_is_not_utf8_is_a_parse_error(conn: Line, line: bytes) -> None:
    await conn.send_raw(line + b"\n")
    error(await conn.recv(), -32700)
    assert result(await conn.call("status"))["version"]


async def test_ids_and_names_that_are_not_unicode_are_echoed_as_json(conn: Line) -> None:
    await conn.send_raw(b'{"jsonrpc":"2.0","id":"\\udcff","method":"status"}\n')
    raw = await conn.stream.receive_some(1 << 16)
    assert b'"id":"\\udcff"' in raw  # valid JSON text: the escape the client sent
    assert json.loads(raw)["result"]["version"]
    await conn.send_raw(
        b'[{"jsonrpc":"2.0","id":1,"method":"put","params":{"ns":"n","key":"b","value":{}}},'
        b'{"jsonrpc":"2.0","id":2,"method":"status","params":{"\\udcff":1}}]\n'
    )
    batch = await conn.recv()
    assert isinstance(batch, list)
    assert result(batch[0]) == {"ok": True}
    err = error(batch[1], -32602)
    assert err["data"]["param"] == "\udcff"


async def test_numeric_ids_of_any_kind_are_echoed(conn: Line) -> None:
    for rid in (1.5, 2.0, -7, 10**30):
        await conn.send("status", rid=rid)
        msg = await conn.recv()
        assert msg["id"] == rid
        assert type(msg["id"]) is type(rid)


async def test_notifications_are_never_answered_and_params_must_be_structured(
    conn: Line,
) -> None:
    await conn.send_raw(b'{"jsonrpc":"2.0","method":"status","params":[1]}\n')
    await conn.send_raw(b'[{"jsonrpc":"2.0","method":"get","params":["n","k"]}]\n')
    await conn.send_raw(b'{"jsonrpc":"2.0","id":5,"method":"status","params":null}\n')
    msg = await conn.recv()  # the first answer is the one to the request with an id
    assert msg["id"] == 5
    error(msg, -32600)
    assert result(await conn.call("status"))["version"]


async def test_pipelined_responses_come_back_in_request_order(conn: Line) -> None:
    ids = []
    lines = []
    for i in range(600):
        rid = f"r{i}"
        ids.append(rid)
        if i % 3 == 0:
            lines.append(
                request_line("put", {"ns": "o", "key": f"k{i % 7}", "value": {"i": i}}, rid)
            )
        elif i % 3 == 1:
            lines.append(request_line("get", {"ns": "o", "key": f"k{i % 7}"}, rid))
        else:
            lines.append(request_line("status", {}, rid))
    await conn.send_raw(b"".join(lines))
    got = [(await conn.recv())["id"] for _ in ids]
    assert got == ids


async def test_pipelined_trust_requests_take_effect_in_the_order_sent(conn: Line) -> None:
    # Sent in one go, without waiting: each request must see the ones before it.
    lines = [
        request_line("trust", {"device_id": OTHER, "name": "first"}, 1),
        request_line("share", {"ns": "p", "devices": [OTHER]}, 2),
        request_line("trust", {"device_id": OTHER, "addresses": ["10.0.0.9:1"]}, 3),
        request_line("trust", {"device_id": OTHER, "name": "third"}, 4),
        request_line("peers", {}, 5),
        request_line("untrust", {"device_id": OTHER}, 6),
        request_line("trust", {"device_id": THIRD, "name": "t"}, 7),
        request_line("untrust", {"device_id": THIRD}, 8),
        request_line("peers", {}, 9),
    ]
    await conn.send_raw(b"".join(lines))
    got = {}
    for _ in lines:
        msg = await conn.recv()
        got[msg["id"]] = msg
    for rid in (1, 2, 3, 4, 6, 7, 8):
        assert result(got[rid]) == {"ok": True}, got[rid]
    [peer] = result(got[5])["peers"]
    assert (peer["name"], peer["addresses"]) == ("third", ["10.0.0.9:1"])
    assert result(got[9])["peers"] == []


class WaitingNetwork(NoNetwork):
    """OTHER is connected and acknowledges only when the test says so."""

    def __init__(self) -> None:
        self.acked = trio.Event()

    def connected(self) -> frozenset[str]:
        return frozenset([OTHER])

    async def wait_synced(
        self, ns: str, devices: Sequence[str], timeout_s: float
    ) -> tuple[list[str], list[str]]:
        await self.acked.wait()
        return list(devices), []


async def test_a_sync_does_not_hold_back_later_answers(api: Api, conn: Line) -> None:
    network = WaitingNetwork()
    api.server.service.network = network
    result(await conn.call("trust", {"device_id": OTHER}))
    result(await conn.call("share", {"ns": "n", "devices": [OTHER]}))
    await conn.send_raw(
        request_line("sync", {"ns": "n", "timeout_s": 60}, "s")
        + request_line("status", {}, "a")
        + request_line("put", {"ns": "n", "key": "k", "value": {}}, "b")
    )
    # The sync waits for the peer; the requests after it are answered meanwhile, in order.
    with trio.fail_after(10):
        assert [(await conn.recv())["id"] for _ in range(2)] == ["a", "b"]
    network.acked.set()
    msg = await conn.recv()
    assert msg["id"] == "s"
    assert result(msg) == {"acked_by": [OTHER], "pending": []}


async def test_requests_sent_before_the_client_leaves_still_run(api: Api) -> None:
    async with line_connection(api.socket) as watcher:
        sub = result(await watcher.call("watch", {"ns": "gone", "prefix": "last"}))
        async with line_connection(api.socket) as conn:
            await conn.send_raw(
                b"".join(
                    request_line("put", {"ns": "gone", "key": f"k{i}", "value": {"i": i}}, i)
                    for i in range(500)
                )
                + request_line("put", {"ns": "gone", "key": "last", "value": {}}, "last")
            )
        # The requests run in order: once the last one's change is seen, all have run.
        change = await watcher.recv()
        assert change["params"]["subscription"] == sub["subscription"]
        assert change["params"]["key"] == "last"
        keys = result(await watcher.call("list", {"ns": "gone"}))["keys"]
    assert len(keys) == 501


async def test_a_write_of_the_current_value_notifies_nobody(conn: Line, api: Api) -> None:
    async with line_connection(api.socket) as watcher:
        result(await watcher.call("watch", {"ns": "n"}))
        for value in ({"x": 1}, {"x": 1}, {"x": 2}):
            assert result(await conn.call("put", {"ns": "n", "key": "k", "value": value}))
        same = {"op": "set", "path": ["x"], "value": 2}
        assert result(await conn.call("patch", {"ns": "n", "key": "k", "ops": [same]}))
        assert result(await conn.call("patch", {"ns": "n", "key": "k", "ops": []}))
        result(await conn.call("put", {"ns": "n", "key": "k", "value": {"x": 3}}))
        seen = [(await watcher.recv())["params"]["value"] for _ in range(3)]
    assert seen == [{"x": 1}, {"x": 2}, {"x": 3}]


async def test_shutdown_does_not_wait_for_a_client_that_never_reads(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api, line_connection(api.socket) as conn:
        assert result(await conn.call("put", {"ns": "n", "key": "k", "value": {"s": "x" * 60_000}}))
        # 2,000 answers of 60 KB each: far more than the socket buffers hold.
        await conn.send_raw(
            b"".join(request_line("get", {"ns": "n", "key": "k"}, i) for i in range(2000))
        )
        with trio.fail_after(10):  # the grace period is 60 s: it must not be waited out
            await api.server.shutdown(60)


@pytest.mark.parametrize(
    "params",
    [
        {"name": "a\u0085b"},
        {"name": "zero\u200bwidth"},
        {"addresses": ["\udcff:1"]},
        {"addresses": [" 1.2.3.4:80"]},
        {"addresses": ["999.1.1.1:80"]},
        {"addresses": ["host:0"]},
    ],
)
async def test_trust_refuses_names_and_addresses_it_could_not_show(
    conn: Line, params: dict[str, Any]
) -> None:
    error(await conn.call("trust", {"device_id": OTHER, **params}), -32602, "invalid_params")
    assert result(await conn.call("peers"))["peers"] == []


async def test_too_many_addresses_are_refused_as_such(conn: Line) -> None:
    addrs = [f"10.0.0.1:{port}" for port in range(1, 66)]
    err = error(
        await conn.call("trust", {"device_id": OTHER, "addresses": addrs}), -32602, "invalid_params"
    )
    assert err["message"] == "param 'addresses' may list at most 64 addresses (65 given)"
    assert result(await conn.call("trust", {"device_id": OTHER, "addresses": addrs[:64]}))


async def test_repeated_addresses_are_kept_once_and_sharing_with_itself_is_refused(
    conn: Line, api: Api
) -> None:
    addrs = ["10.0.0.1:1", "10.0.0.2:2", "10.0.0.1:1"]
    assert result(await conn.call("trust", {"device_id": OTHER, "addresses": addrs}))
    [peer] = result(await conn.call("peers"))["peers"]
    assert peer["addresses"] == ["10.0.0.1:1", "10.0.0.2:2"]
    err = error(
        await conn.call("share", {"ns": "n", "devices": [api.device_id]}), -32602, "invalid_params"
    )
    assert "this device itself" in err["message"]
    assert err["data"]["param"] == "devices"


# --- sans-IO pieces ------------------------------------------------------------------------


def test_line_splitter_bounds_memory() -> None:
    s = LineSplitter(10)
    assert s.feed(b"abc\nde") == [b"abc"]
    assert s.feed(b"f\n") == [b"def"]
    assert s.feed(b"0123456789A") == [None]
    assert s.pending == 0
    assert s.feed(b"more junk" * 1000) == []
    assert s.pending == 0
    assert s.feed(b"tail\nok\n") == [b"ok"]
    assert s.feed(b"0123456789\n") == [b"0123456789"]
    assert s.feed(b"0123456789a\nz\n") == [None, b"z"]


def test_parse_message_shapes() -> None:
    msgs, batch = parse_message(b'{"jsonrpc":"2.0","method":"m"}')
    assert not batch
    assert msgs[0].is_notification  # type: ignore[union-attr]
    msgs, batch = parse_message(b'[{"jsonrpc":"2.0","method":"m","id":null}]')
    assert batch
    assert not msgs[0].is_notification  # type: ignore[union-attr]


async def test_a_batch_response_is_bounded_like_a_line(tmp_path: Path) -> None:
    # One batch line of many gets of a large document once built every response in memory:
    # a batch counts as one request in flight, so that got around max_in_flight.
    limits = ApiConfig(max_line_bytes=64 * 1024)
    async with running_api(tmp_path, limits) as api, line_connection(api.socket) as conn:
        big = {"t": "x" * 20_000}
        assert result(await conn.call("put", {"ns": "n", "key": "big", "value": big}))
        batch = [
            {"jsonrpc": "2.0", "id": i, "method": "get", "params": {"ns": "n", "key": "big"}}
            for i in range(50)
        ]
        put = {"ns": "n", "key": "x", "value": {"v": 1}}
        batch.append({"jsonrpc": "2.0", "method": "put", "params": put})  # a notification
        await conn.send_raw(json.dumps(batch).encode() + b"\n")
        answers = await conn.recv()
        assert len(answers) == 50  # the notification at the end gets no answer either way
        served = [a for a in answers if "result" in a]
        refused = [a for a in answers if "error" in a]
        assert 3 <= len(served) <= 4  # up to the 64 KiB budget, then one more
        assert all(r["result"]["value"] == big for r in served)
        assert all(e["error"]["data"]["reason"] == "too_large" for e in refused)
        assert [a["id"] for a in answers] == list(range(50))
        # Past the budget a notification still runs: it adds nothing to the response.
        assert result(await conn.call("get", {"ns": "n", "key": "x"}))["value"] == {"v": 1}


@pytest.mark.parametrize(
    "response",
    [
        {"jsonrpc": "2.0", "id": 7, "result": {"ok": True}},
        {"jsonrpc": "2.0", "id": -(2**70), "result": {"ok": True}},
        {"jsonrpc": "2.0", "id": "7", "result": {"ok": True}},
        {"jsonrpc": "2.0", "id": True, "result": {"ok": True}},
        {"jsonrpc": "2.0", "id": 7.5, "result": {"ok": True}},
        {"jsonrpc": "2.0", "id": None, "result": {"ok": True}},
        {"jsonrpc": "2.0", "id": 7, "result": {"ok": 1}},
        {"jsonrpc": "2.0", "id": 7, "result": {"ok": True, "existed": False}},
        {"jsonrpc": "2.0", "id": 7, "error": {"code": -32000, "message": "x"}},
    ],
)
def test_a_write_answer_is_the_bytes_the_encoder_makes(response: dict[str, Any]) -> None:
    # Write answers skip the encoder (server._encoded): they must not differ from it.
    assert server._encoded(response) + b"\n" == rpc.encode(response)
