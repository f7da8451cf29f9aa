"""End-to-end checks of /work/shared/CONTRACT.md from a user's side.

Everything goes through a real ``syncd run`` process: the CLI as subprocesses (``syncd`` and
``python -m syncd``), the API as raw JSON-RPC lines on the Unix socket. Nothing sleeps to wait:
readiness is the daemon's READY=1, a watch is known to be live when its first line arrives.
Every process started here is killed in teardown, even when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncd.deviceid import format_device_id
from tests.daemon_harness import DaemonProcess, RawConn, serve_for_module

OTHER = format_device_id(b"\x07" * 32)
THIRD = format_device_id(b"\x09" * 32)
TIMEOUT = 30.0
SYNCD = Path(sys.executable).parent / "syncd"


def _env(**extra: str) -> dict[str, str]:
    drop = ("SYNCD_", "XDG_", "NOTIFY_")
    systemd = ("CONFIGURATION_DIRECTORY", "STATE_DIRECTORY", "RUNTIME_DIRECTORY")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k not in systemd}
    env.update(extra)
    return env


def cli(
    *args: str, stdin: str | bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m syncd ARGS`` and capture everything."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    proc = subprocess.run(
        [sys.executable, "-m", "syncd", *args],
        input=data,
        capture_output=True,
        env=env if env is not None else _env(),
        timeout=TIMEOUT,
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def fails(proc: subprocess.CompletedProcess[str], fragment: str, status: int | None = None) -> None:
    """Non-zero exit with exactly one line on stderr that contains ``fragment``."""
    assert proc.returncode != 0, proc.stdout
    if status is not None:
        assert proc.returncode == status, (proc.returncode, proc.stderr)
    assert proc.stderr.startswith("syncd: "), proc.stderr
    assert proc.stderr.endswith("\n") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert fragment in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon started on an empty home: ``run`` initializes it first."""
    yield from serve_for_module(tmp_path_factory.mktemp("contract") / "home")


@pytest.fixture
def home(daemon: DaemonProcess) -> tuple[str, str]:
    return ("--home", str(daemon.home))


Conn = RawConn


@pytest.fixture
def conn(daemon: DaemonProcess) -> Iterator[Conn]:
    c = Conn(daemon.socket)
    try:
        yield c
    finally:
        c.close()


# --- install, run, paths ---------------------------------------------------------------------


def test_run_on_empty_home_initialized_it(daemon: DaemonProcess, home: tuple[str, str]) -> None:
    assert (daemon.home / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (daemon.socket.stat().st_mode & 0o777) == 0o600
    device_id = ok(cli(*home, "id")).strip()
    status = json.loads(ok(cli(*home, "--json", "status")))
    assert status["device_id"] == device_id
    assert set(status) == {
        "device_id",
        "name",
        "version",
        "listen",
        "peers_connected",
        "namespaces",
    }
    text = ok(cli(*home, "status"))
    for label in ("device ID", "name", "version", "listen", "peers", "namespaces"):
        assert label in text


def test_global_options_env_and_python_m(daemon: DaemonProcess, home: tuple[str, str]) -> None:
    ok(cli(*home, "put", "g", "k", '{"a": 1}'))
    assert json.loads(ok(cli(*home, "--json", "get", "g", "k"))) == {"a": 1}
    env = _env(SYNCD_HOME=str(daemon.home))
    assert json.loads(ok(cli("--json", "get", "g", "k", env=env))) == {"a": 1}
    # also tolerated after the command
    assert json.loads(ok(cli("get", "g", "k", "--json", *home))) == {"a": 1}
    # --home wins over SYNCD_HOME
    fails(cli("--home", "/nonexistent/h", "ls", "g", env=env), "/nonexistent/h/syncd.sock", 3)
    if SYNCD.exists():
        script = subprocess.run(
            [str(SYNCD), *home, "--json", "get", "g", "k"],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=TIMEOUT,
        )
        assert script.returncode == 0, script.stderr
        assert json.loads(script.stdout) == {"a": 1}


def test_socket_paths_xdg_and_systemd(tmp_path: Path) -> None:
    xdg = _env(
        HOME=str(tmp_path / "u"),
        XDG_CONFIG_HOME=str(tmp_path / "cfg"),
        XDG_STATE_HOME=str(tmp_path / "st"),
        XDG_RUNTIME_DIR=str(tmp_path / "rt"),
    )
    fails(cli("status", env=xdg), f"{tmp_path}/rt/syncd/syncd.sock", 3)
    systemd = dict(xdg, RUNTIME_DIRECTORY=str(tmp_path / "sd"), STATE_DIRECTORY=str(tmp_path / "x"))
    fails(cli("status", env=systemd), f"{tmp_path}/sd/syncd.sock", 3)
    fails(cli("id", env=systemd), str(tmp_path / "x"), 1)  # identity lives in $STATE_DIRECTORY
    home = dict(systemd, SYNCD_HOME=str(tmp_path / "h"))
    fails(cli("status", env=home), f"{tmp_path}/h/syncd.sock", 3)


def test_no_daemon_says_so_and_names_the_socket(tmp_path: Path) -> None:
    sock = str(tmp_path / "syncd.sock")
    for argv in (
        ["status"],
        ["get", "n", "k"],
        ["put", "n", "k", "{}"],
        ["ls", "n"],
        ["watch", "n"],
        ["sync", "n"],
        ["peers"],
    ):
        proc = cli("--home", str(tmp_path), *argv)
        fails(proc, sock)
        assert "no syncd daemon is running" in proc.stderr


def test_init_is_idempotent(tmp_path: Path) -> None:
    h = ("--home", str(tmp_path / "h"))
    device_id = ok(cli(*h, "init", "--name", "lap", "--listen", "127.0.0.1:7999")).strip()
    assert len(device_id.replace("-", "")) == 56
    assert (tmp_path / "h" / "key.pem").stat().st_mode & 0o777 == 0o600
    files = {p.name: p.read_bytes() for p in (tmp_path / "h").iterdir()}
    again = cli(*h, "init", "--name", "other")
    assert again.returncode == 0
    assert again.stdout.strip() == device_id
    assert "already initialized" in again.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "h").iterdir()} == files
    assert json.loads(ok(cli(*h, "--json", "init"))) == {"device_id": device_id, "created": False}
    assert ok(cli(*h, "id")).strip() == device_id
    # bad input is rejected before anything is created
    for argv in (["--name", ""], ["--name", "a\tb"], ["--listen", "nope"]):
        fails(cli("--home", str(tmp_path / "bad"), "init", *argv), "--", 2)
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").iterdir())
    fails(cli("--home", str(tmp_path / "none"), "id"), "syncd init", 1)


# --- documents through the CLI ---------------------------------------------------------------


def test_document_commands(home: tuple[str, str]) -> None:
    assert ok(cli(*home, "put", "docs", "b", '{"title": "x", "n": 1}')) == ""
    assert json.loads(ok(cli(*home, "get", "docs", "b"))) == {"title": "x", "n": 1}
    assert json.loads(ok(cli(*home, "--json", "put", "docs", "a", "-", stdin='{"é": "ü"}'))) == {
        "ok": True
    }
    assert json.loads(ok(cli(*home, "get", "docs", "a"))) == {"é": "ü"}
    ops = '[{"op":"make","path":["c"],"type":"counter"},{"op":"inc","path":["c"],"by":3}]'
    ok(cli(*home, "patch", "docs", "b", ops))
    ok(cli(*home, "patch", "docs", "b", "-", stdin='[{"op":"inc","path":["c"],"by":-1}]'))
    assert json.loads(ok(cli(*home, "--json", "get", "docs", "b")))["c"] == 2
    ok(cli(*home, "put", "docs", "a/2", "{}"))
    assert ok(cli(*home, "ls", "docs")) == "a\na/2\nb\n"
    assert ok(cli(*home, "ls", "docs", "a/")) == "a/2\n"
    assert json.loads(ok(cli(*home, "--json", "ls", "docs"))) == {"keys": ["a", "a/2", "b"]}
    conflicts = json.loads(ok(cli(*home, "--json", "get", "docs", "b", "--conflicts")))
    assert conflicts == {"value": {"title": "x", "n": 1, "c": 2}, "conflicts": []}
    assert json.loads(ok(cli(*home, "--json", "del", "docs", "b"))) == {"ok": True, "existed": True}
    again = cli(*home, "del", "docs", "b")
    assert again.returncode == 0 and again.stdout == ""
    missing = cli(*home, "get", "docs", "b")
    fails(missing, "no document 'b'", 1)
    assert missing.stdout == ""
    fails(cli(*home, "--json", "get", "docs", "b"), "no document", 1)
    out = ok(cli(*home, "ns"))
    assert "docs" in out
    ns = json.loads(ok(cli(*home, "--json", "ns")))["namespaces"]
    assert {"ns": "docs", "devices": [], "documents": 2} in ns


def test_cli_input_errors_are_one_line(home: tuple[str, str]) -> None:
    fails(cli(*home, "frobnicate"), "invalid choice", 2)
    fails(cli(*home, "get", "n"), "required", 2)
    fails(cli(*home, "put", "n", "k", "{nope"), "not valid JSON", 2)
    fails(cli(*home, "put", "n", "k", '{"a": NaN}'), "not valid JSON", 2)
    fails(cli(*home, "put", "n", "k", "[1]"), "must be a JSON object", 2)
    fails(cli(*home, "put", "n", "k", "-", stdin=b'{"a": "\xff"}'), "not valid UTF-8", 2)
    fails(cli(*home, "patch", "n", "k", '{"op": "inc"}'), "must be a JSON array", 2)
    fails(cli(*home, "patch", "n", "k", '[{"op": "bogus", "path": []}]'), "ops[0].op", 2)
    ok(cli(*home, "put", "n", "r", '{"r": 1}'))
    fails(cli(*home, "patch", "n", "r", '[{"op":"inc","path":["r"],"by":1}]'), "counter", 1)
    fails(cli(*home, "sync", "n", "--timeout", "-1"), "--timeout", 2)
    fails(cli(*home, "get", "n", ""), "key must not be empty", 2)


def test_devices(daemon: DaemonProcess, home: tuple[str, str]) -> None:
    me = ok(cli(*home, "id")).strip()
    typo = ("B" if OTHER[0] != "B" else "C") + OTHER[1:]
    fails(cli(*home, "trust", typo), "mistyped", 2)
    fails(cli(*home, "trust", OTHER[:20]), "invalid device ID", 2)
    fails(cli(*home, "trust", OTHER, "--addr", "nohost"), "--addr", 2)
    fails(cli(*home, "trust", OTHER, "--addr", "h:99999"), "--addr", 2)
    fails(cli(*home, "trust", OTHER, "--name", ""), "--name", 2)
    fails(cli(*home, "trust", me), "itself", 1)
    plain = OTHER.replace("-", "").lower()
    ok(cli(*home, "trust", plain, "--name", "phone", "--addr", "127.0.0.1:7400"))
    ok(cli(*home, "trust", OTHER, "--name", "phone2"))  # keeps the addresses
    peers = json.loads(ok(cli(*home, "--json", "peers")))
    assert set(peers) == {"peers", "pending"}
    (peer,) = [p for p in peers["peers"] if p["id"] == OTHER]
    assert peer == {
        "id": OTHER,
        "name": "phone2",
        "trusted": True,
        "connected": False,
        "addresses": ["127.0.0.1:7400"],
        "last_seen": None,
    }
    text = ok(cli(*home, "peers"))
    assert OTHER in text and "phone2" in text and "127.0.0.1:7400" in text
    fails(cli(*home, "share", "shared", OTHER, THIRD), "not trusted", 1)
    ok(cli(*home, "share", "shared", OTHER))
    ns = json.loads(ok(cli(*home, "--json", "ns")))["namespaces"]
    assert {"ns": "shared", "devices": [OTHER], "documents": 0} in ns
    assert OTHER in ok(cli(*home, "ns"))
    assert "nothing to wait for" in ok(cli(*home, "sync", "shared", "--timeout", "1"))
    sync = json.loads(ok(cli(*home, "--json", "sync", "shared")))
    assert sync == {"acked_by": [], "pending": []}
    ok(cli(*home, "unshare", "shared", OTHER))
    ok(cli(*home, "untrust", OTHER))
    fails(cli(*home, "untrust", OTHER), "not trusted", 1)
    assert all(p["id"] != OTHER for p in daemon.call("peers")["peers"])


def test_folder_commands_exist_but_are_not_available(home: tuple[str, str]) -> None:
    for argv in (["add", "notes", "/tmp"], ["ls"], ["rm", "notes"]):
        fails(cli(*home, "folder", *argv), "not available", 1)
    fails(cli(*home, "folder"), "required", 2)
    fails(cli(*home, "folder", "add", "notes"), "required", 2)


# --- watch -----------------------------------------------------------------------------------


def _watch(home: tuple[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "syncd", *home, "watch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def _end(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=TIMEOUT)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_watch_streams_until_interrupted(
    daemon: DaemonProcess, home: tuple[str, str], signum: int
) -> None:
    ns = f"watch{signum}"
    daemon.call("put", ns=ns, key="a", value={"v": 0})
    proc = _watch(home, ns, "--initial")
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # the subscription is live from here
        assert first["key"] == "a" and first["initial"] is True
        daemon.call("put", ns=ns, key="b", value={"v": 1})
        daemon.call("delete", ns=ns, key="a")
        lines = [json.loads(proc.stdout.readline()) for _ in range(2)]
        assert lines == [
            {"ns": ns, "key": "b", "value": {"v": 1}, "deleted": False, "origin": "local"},
            {"ns": ns, "key": "a", "value": None, "deleted": True, "origin": "local"},
        ]
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0
        assert err == ""
    finally:
        _end(proc)


def test_watch_into_a_closed_pipe_ends_quietly(
    daemon: DaemonProcess, home: tuple[str, str]
) -> None:
    daemon.call("put", ns="wpipe", key="a", value={"v": 0})
    proc = _watch(home, "wpipe", "--initial")
    try:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.readline()
        proc.stdout.close()  # like `| head -1` exiting
        i = 0
        while proc.poll() is None:  # each change makes watch write, until it notices EPIPE
            i += 1
            daemon.call("put", ns="wpipe", key="a", value={"v": i})
            try:
                proc.wait(0.05 * i)
            except subprocess.TimeoutExpired:
                assert i < 100
        assert proc.stderr.read() == ""
        assert proc.returncode in (0, -signal.SIGPIPE)
    finally:
        _end(proc)


def test_watch_api_notifications(daemon: DaemonProcess, conn: Conn) -> None:
    daemon.call("put", ns="wapi", key="x/1", value={"n": 1})
    sub = conn.result("watch", ns="wapi", prefix="x/", initial=True)
    assert set(sub) == {"subscription"} and isinstance(sub["subscription"], int)
    initial = conn.notification()
    assert initial["method"] == "change"
    assert initial["params"]["initial"] is True and initial["params"]["key"] == "x/1"
    daemon.call("put", ns="wapi", key="y", value={})  # outside the prefix
    daemon.call("put", ns="wapi", key="x/2", value={"n": 2})
    note = conn.notification()
    assert note == {
        "jsonrpc": "2.0",
        "method": "change",
        "params": {
            "subscription": sub["subscription"],
            "ns": "wapi",
            "key": "x/2",
            "value": {"n": 2},
            "deleted": False,
            "origin": "local",
        },
    }
    assert conn.result("unwatch", subscription=sub["subscription"]) == {"ok": True}
    err = conn.error("unwatch", subscription=sub["subscription"])
    assert err["code"] == -32000 and err["data"]["reason"] == "not_found"


# --- JSON-RPC framing and errors --------------------------------------------------------------


def test_framing_and_request_errors(conn: Conn) -> None:
    conn.send(b"garbage\n")
    msg = conn.recv()
    assert msg["id"] is None and msg["error"]["code"] == -32700
    assert conn.result("status")["version"]  # the connection stays usable
    for line in (
        b"[]",
        b"{}",
        b"[1]",
        b'"x"',
        b"42",
        b'{"jsonrpc":"1.0","id":5,"method":"status"}',
    ):
        conn.send(line + b"\n")
        got = conn.recv()
        got = got[0] if isinstance(got, list) else got
        assert got["error"]["code"] == -32600, (line, got)
    conn.send(b'{"jsonrpc":"2.0","id":6}\n')
    assert conn.recv() == {
        "jsonrpc": "2.0",
        "id": 6,
        "error": {"code": -32600, "message": 'invalid request: "method" must be a string'},
    }
    conn.send(b'{"jsonrpc":"2.0","id":1,"method":"status"} NaN\n')
    assert conn.recv()["error"]["code"] == -32700
    assert conn.error("no_such_method")["code"] == -32601
    for rid in ("str-id", 0, -7, 2**40, None):
        assert conn.response(conn.request("status", {}, rid=rid))["id"] == rid
    # pipelining: many requests in one write, every response carries its request's id
    batch = b"".join(
        json.dumps(
            {"jsonrpc": "2.0", "id": f"p{i}", "method": "list", "params": {"ns": "n"}}
        ).encode()
        + b"\n"
        for i in range(30)
    )
    conn.send(batch)
    assert sorted(conn.recv()["id"] for _ in range(30)) == sorted(f"p{i}" for i in range(30))
    # a notification (no id) gets no answer
    conn.send(b'{"jsonrpc":"2.0","method":"status"}\n')
    assert conn.result("list", ns="n", prefix="zzz") == {"keys": []}


def test_pipelined_requests_take_effect_in_order(conn: Conn) -> None:
    """Writes and reads pipelined on one connection apply in the order they were sent."""
    lines = []
    for i in range(60):
        lines.append(
            {
                "jsonrpc": "2.0",
                "id": f"w{i}",
                "method": "put",
                "params": {"ns": "order", "key": "k", "value": {"n": i}},
            }
        )
        lines.append(
            {
                "jsonrpc": "2.0",
                "id": f"r{i}",
                "method": "get",
                "params": {"ns": "order", "key": "k"},
            }
        )
    conn.send(b"".join(json.dumps(m).encode() + b"\n" for m in lines))
    got = {m["id"]: m for m in (conn.recv() for _ in range(len(lines)))}
    for i in range(60):
        assert got[f"w{i}"]["result"] == {"ok": True}
        assert got[f"r{i}"]["result"] == {"exists": True, "value": {"n": i}}


@pytest.mark.parametrize(
    ("method", "params", "param"),
    [
        ("get", {}, "ns"),
        ("get", {"ns": 1, "key": "k"}, "ns"),
        ("get", {"ns": "", "key": "k"}, "ns"),
        ("get", {"ns": "n"}, "key"),
        ("get", {"ns": "n", "key": 5}, "key"),
        ("get", {"ns": "n", "key": "k", "conflicts": "yes"}, "conflicts"),
        ("get", {"ns": "n", "key": "k", "bogus": 1}, "bogus"),
        ("put", {"ns": "n", "key": "k"}, "value"),
        ("put", {"ns": "n", "key": "k", "value": [1]}, "value"),
        ("put", {"ns": "n", "key": "k", "value": "s"}, "value"),
        ("put", {"ns": "n", "key": "k", "value": {"a": "\udcff"}}, "value"),
        ("patch", {"ns": "n", "key": "k", "ops": {}}, "ops"),
        ("patch", {"ns": "n", "key": "k", "ops": [1]}, "ops"),
        ("patch", {"ns": "n", "key": "k", "ops": [{"op": "bogus", "path": []}]}, "ops"),
        ("patch", {"ns": "n", "key": "k", "ops": [{"op": "bogus"}]}, "ops"),
        ("patch", {"ns": "n", "key": "k", "ops": [{"op": "inc", "path": "c"}]}, "ops"),
        ("patch", {"ns": "n", "key": "k", "ops": [{"op": "inc", "path": ["c"], "by": 1.5}]}, "ops"),
        (
            "patch",
            {"ns": "n", "key": "k", "ops": [{"op": "make", "path": ["c"], "type": "x"}]},
            "ops",
        ),
        ("delete", {"ns": "n"}, "key"),
        ("list", {"ns": "n", "prefix": 3}, "prefix"),
        ("watch", {"ns": "n", "initial": 1}, "initial"),
        ("sync", {"ns": "n", "timeout_s": -1}, "timeout_s"),
        ("sync", {"ns": "n", "timeout_s": "1"}, "timeout_s"),
        ("trust", {}, "device_id"),
        ("trust", {"device_id": "nope"}, "device_id"),
        ("trust", {"device_id": OTHER, "addresses": ["nohost"]}, "addresses"),
        ("trust", {"device_id": OTHER, "name": ""}, "name"),
        ("share", {"ns": "n", "devices": []}, "devices"),
        ("share", {"ns": "n", "devices": "x"}, "devices"),
        ("status", {"x": 1}, "x"),
    ],
)
def test_bad_params(conn: Conn, method: str, params: dict[str, Any], param: str) -> None:
    err = conn.error(method, **params)
    assert err["code"] == -32602, err
    assert err["data"]["param"] == param, err
    assert err["message"]


def test_positional_params_and_own_id(conn: Conn) -> None:
    assert conn.response(conn.request("status", []))["error"]["code"] == -32602
    me = conn.result("status")["device_id"]
    assert conn.error("trust", device_id=me)["code"] == -32602
    typo = ("B" if OTHER[0] != "B" else "C") + OTHER[1:]
    err = conn.error("trust", device_id=typo)
    assert err["data"]["reason"] == "invalid_device_id"


def test_application_errors(conn: Conn) -> None:
    conn.result("put", ns="app", key="k", value={"r": 1})
    conn.result(
        "patch",
        ns="app",
        key="k",
        ops=[{"op": "make", "path": ["t"], "type": "text", "value": "x"}],
    )

    def reason(*ops: dict[str, Any]) -> str:
        err = conn.error("patch", ns="app", key="k", ops=list(ops))
        assert err["code"] == -32000, err
        return str(err["data"]["reason"])

    assert reason({"op": "inc", "path": ["r"], "by": 1}) == "type_mismatch"
    assert reason({"op": "inc", "path": ["r", "deeper"], "by": 1}) == "type_mismatch"
    assert reason({"op": "add", "path": ["r"], "value": 1}) == "type_mismatch"
    assert reason({"op": "insert", "path": ["t"], "index": 99, "text": "x"}) == "invalid_path"
    conn.result("patch", ns="app", key="k", ops=[{"op": "make", "path": ["l"], "type": "list"}])
    assert reason({"op": "set", "path": ["l", 3], "value": 1}) == "invalid_path"
    err = conn.error("share", ns="app", devices=[OTHER])
    assert (err["code"], err["data"]["reason"]) == (-32000, "not_trusted")
    err = conn.error("untrust", device_id=THIRD)
    assert (err["code"], err["data"]["reason"]) == (-32000, "not_found")


# --- result shapes and the data model ----------------------------------------------------------


def test_result_shapes(conn: Conn) -> None:
    status = conn.result("status")
    assert set(status) == {
        "device_id",
        "name",
        "version",
        "listen",
        "peers_connected",
        "namespaces",
    }
    assert conn.result("get", ns="shape", key="k") == {"exists": False, "value": None}
    missing = conn.result("get", ns="shape", key="k", conflicts=True)
    assert missing == {"exists": False, "value": None, "conflicts": []}
    assert conn.result("put", ns="shape", key="k", value={"a": 1}) == {"ok": True}
    assert conn.result("get", ns="shape", key="k", conflicts=True) == {
        "exists": True,
        "value": {"a": 1},
        "conflicts": [],
    }
    assert conn.result("patch", ns="shape", key="k", ops=[]) == {"ok": True}
    assert conn.result("list", ns="shape") == {"keys": ["k"]}
    assert conn.result("delete", ns="shape", key="k") == {"ok": True, "existed": True}
    assert conn.result("delete", ns="shape", key="k") == {"ok": True, "existed": False}
    assert conn.result("delete", ns="never-used", key="k") == {"ok": True, "existed": False}
    assert set(conn.result("peers")) == {"peers", "pending"}
    names = [n["ns"] for n in conn.result("namespaces")["namespaces"]]
    assert names == sorted(names)
    # nothing left in them and not shared: not listed
    assert "shape" not in names and "never-used" not in names
    assert "shape" not in conn.result("status")["namespaces"]
    assert conn.result("sync", ns="shape", timeout_s=0) == {"acked_by": [], "pending": []}
    assert conn.result("trust", device_id=THIRD, name="t") == {"ok": True}
    assert conn.result("share", ns="shape", devices=[THIRD]) == {"ok": True}
    assert {"ns": "shape", "devices": [THIRD], "documents": 0} in conn.result("namespaces")[
        "namespaces"
    ]
    assert conn.result("unshare", ns="shape", devices=[THIRD]) == {"ok": True}
    assert conn.result("untrust", device_id=THIRD) == {"ok": True}


def test_put_and_patch_semantics(conn: Conn) -> None:
    def doc() -> Any:
        return conn.result("get", ns="model", key="d")["value"]

    def patch(*ops: dict[str, Any]) -> None:
        assert conn.result("patch", ns="model", key="d", ops=list(ops)) == {"ok": True}

    conn.result("put", ns="model", key="d", value={"title": "t", "m": {"x": [1, 2]}})
    patch(
        {"op": "make", "path": ["text"], "type": "text", "value": "hello"},
        {"op": "make", "path": ["count"], "type": "counter", "value": 5},
        {"op": "make", "path": ["tags"], "type": "set", "value": ["b", "a"]},
        {"op": "make", "path": ["items"], "type": "list", "value": [1, 2]},
        {"op": "make", "path": ["sub"], "type": "map", "value": {"k": 1}},
        {"op": "make", "path": ["reg"], "type": "register", "value": [3, 4]},
    )
    assert doc() == {
        "title": "t",
        "m": {"x": [1, 2]},
        "text": "hello",
        "count": 5,
        "tags": ["a", "b"],
        "items": [1, 2],
        "sub": {"k": 1},
        "reg": [3, 4],
    }
    patch(
        {"op": "insert", "path": ["text"], "index": 5, "text": " world"},
        {"op": "delete", "path": ["text"], "index": 0, "count": 1},
        {"op": "inc", "path": ["count"], "by": -2},
        {"op": "add", "path": ["tags"], "value": "c"},
        {"op": "remove", "path": ["tags"], "value": "a"},
        {"op": "insert", "path": ["items"], "index": 1, "values": ["x", "y"]},
        {"op": "delete", "path": ["items"], "index": 0, "count": 1},
        {"op": "set", "path": ["items", 0], "value": "X"},
        {"op": "set", "path": ["sub", "new"], "value": {"deep": True}},
        {"op": "del", "path": ["sub", "k"]},
    )
    assert doc() == {
        "title": "t",
        "m": {"x": [1, 2]},
        "text": "ello world",
        "count": 3,
        "tags": ["b", "c"],
        "items": ["X", "y", 2],
        "sub": {"new": {"deep": True}},
        "reg": [3, 4],
    }
    # put keeps each field's type: text edits, counter difference, set adds/removes
    conn.result(
        "put",
        ns="model",
        key="d",
        value={"text": "Hello world!", "count": 10, "tags": ["z", "b"], "sub": {"new": {}}},
    )
    assert doc() == {"text": "Hello world!", "count": 10, "tags": ["b", "z"], "sub": {"new": {}}}
    patch({"op": "inc", "path": ["count"], "by": 1}, {"op": "add", "path": ["tags"], "value": "a"})
    patch({"op": "set", "path": ["text"], "value": "Hello!"})
    assert doc() == {"text": "Hello!", "count": 11, "tags": ["a", "b", "z"], "sub": {"new": {}}}
    # atomic: a failing op changes nothing, not even the ops before it
    before = doc()
    err = conn.error(
        "patch",
        ns="model",
        key="d",
        ops=[{"op": "inc", "path": ["count"], "by": 1}, {"op": "inc", "path": ["text"], "by": 1}],
    )
    assert err["data"]["reason"] == "type_mismatch"
    assert doc() == before


def test_writes_are_durable_across_a_restart(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path / "dur")
    try:
        d.start()
        d.call("put", ns="dur", key="k", value={"v": 1})
        d.call("patch", ns="dur", key="k", ops=[{"op": "make", "path": ["c"], "type": "counter"}])
        d.kill()  # no clean shutdown: what was acknowledged must be on disk
        d.close()
        d = DaemonProcess(tmp_path / "dur")
        d.start()
        assert d.call("get", ns="dur", key="k") == {"exists": True, "value": {"v": 1, "c": 0}}
        assert d.stop() == 0
    finally:
        d.close()


def test_large_documents_and_lines(conn: Conn) -> None:
    body = "x" * (10 * 1024 * 1024)
    assert conn.result("put", ns="big", key="b", value={"body": body}) == {"ok": True}
    assert conn.result("get", ns="big", key="b")["value"]["body"] == body
    conn.send(b'{"jsonrpc":"2.0","id":9,"method":"put","params":{"value":"')
    chunk = b"y" * (1 << 20)
    for _ in range(17):
        conn.send(chunk)
    conn.send(b'"}}\n')
    err = conn.recv()
    assert err["error"]["code"] == -32000
    assert err["error"]["data"]["reason"] == "too_large"
    assert conn.result("list", ns="big") == {"keys": ["b"]}  # still usable


def test_lone_surrogates_do_not_hurt_other_writes(daemon: DaemonProcess, conn: Conn) -> None:
    other = Conn(daemon.socket)
    try:
        conn.request("put", {"ns": "u", "key": "bad", "value": {"s": "\udcff"}}, rid="bad")
        other.request("put", {"ns": "u", "key": "good", "value": {"s": "ok"}}, rid="good")
        assert conn.response("bad")["error"]["code"] == -32602
        assert other.response("good")["result"] == {"ok": True}
    finally:
        other.close()
    assert conn.result("list", ns="u") == {"keys": ["good"]}


def test_socket_refuses_nothing_from_the_same_user(daemon: DaemonProcess) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(TIMEOUT)
        s.connect(str(daemon.socket))
        s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"status"}\n')
        assert b'"result"' in s.makefile("rb").readline()
    finally:
        s.close()
