"""``syncd run`` as a real process: readiness, signals, crashes, hostile clients, other uids."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from syncd.client import Client
from syncd.daemon.held_signals import HELD, hold_signals, take_held_signals
from tests.daemon_harness import (
    START_TIMEOUT_S,
    DaemonProcess,
    RawConn,
    cannot_run,
    daemon_process,
    put_lines,
    root_tool,
)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_ready_status_and_sigterm(home: Path) -> None:
    with daemon_process(home) as d:
        assert d.notify is not None
        ready = d.wait_ready()
        assert "ready" in ready["STATUS"]
        assert stat.S_IMODE(d.socket.stat().st_mode) == 0o600
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        assert d.call("status")["device_id"][:7] in ready["STATUS"]
        assert f"socket {d.socket}" in ready["STATUS"]
        assert "connection" not in ready["STATUS"]  # no count that goes stale at once
        assert d.stop() == 0
        assert d.notify.wait_for("STOPPING", "1")
        assert not d.socket.exists()
        assert "stopped" in d.stderr()
        # Until the transport exists, the log says that nothing goes to other devices.
        assert (
            "connections to other devices are not in this version yet: trust and share "
            "settings are kept, but no data is exchanged, and the listen address "
            "0.0.0.0:7400 is not opened"
        ) in d.stderr()


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (SigCgt in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def test_signals_held_before_the_daemon_listens_are_recorded_in_order() -> None:
    saved = {signum: signal.getsignal(signum) for signum in HELD}
    try:
        hold_signals()
        os.kill(os.getpid(), signal.SIGHUP)  # would end the process without the hold
        os.kill(os.getpid(), signal.SIGTERM)
        assert take_held_signals() == [signal.SIGHUP, signal.SIGTERM]
        assert take_held_signals() == []
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def test_stop_and_reload_signals_during_start_up_are_acted_on_once_ready(home: Path) -> None:
    d = DaemonProcess(home)
    try:
        d.start(wait_ready=False)
        assert d.proc is not None
        deadline = time.monotonic() + 30
        while not _catches(d.proc.pid, signal.SIGTERM):  # `syncd run` took over the signals
            assert d.proc.poll() is None and time.monotonic() < deadline, d.stderr()
            time.sleep(0.001)
        d.signal(signal.SIGHUP)
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
        log = d.stderr()
        assert "ready" in log and "SIGTERM received; stopping" in log, log
        assert log.index("config reloaded") < log.index("SIGTERM received")
    finally:
        d.close()


def test_a_second_sigterm_during_shutdown_still_exits_0(home: Path) -> None:
    for _ in range(3):
        d = DaemonProcess(home)
        try:
            d.start()
            assert d.proc is not None
            seen = d.stderr().count("SIGTERM received")
            d.signal(signal.SIGTERM)
            while d.stderr().count("SIGTERM received") == seen and d.proc.poll() is None:
                time.sleep(0.0005)  # the first one is being acted on: shutdown has begun
            d.signal(signal.SIGTERM)
            assert d.wait() == 0, d.stderr()
            assert not d.socket.exists()
        finally:
            d.close()


def test_sigint_is_a_clean_stop_too(home: Path) -> None:
    with daemon_process(home) as d:
        d.signal(signal.SIGINT)
        assert d.wait() == 0
        assert not d.socket.exists()


def test_watchdog_pings_when_asked(home: Path) -> None:
    with daemon_process(home, WATCHDOG_USEC="200000") as d:
        assert d.notify is not None
        d.notify.wait_for("WATCHDOG", "1")


def test_first_run_initializes_the_home(home: Path) -> None:
    with daemon_process(home) as d:
        assert (home / "key.pem").exists()
        assert stat.S_IMODE((home / "key.pem").stat().st_mode) == 0o600
        assert (home / "config.toml").exists()
        out = subprocess.run(
            [sys.executable, "-m", "syncd", "--home", str(home), "id"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == d.call("status")["device_id"]


def test_inits_and_a_first_run_started_together_make_one_identity(home: Path) -> None:
    """`syncd init` five times and a first `syncd run`, all at once on a new home: every init
    prints the one device ID there is, and the daemon does not take the home it races to
    make for one whose database was lost (two inits at once made two keys, one printing a
    device ID that no longer existed)."""
    d = DaemonProcess(home)
    inits: list[subprocess.Popen[str]] = []
    try:
        d.start(wait_ready=False)
        inits = [
            subprocess.Popen(
                [sys.executable, "-m", "syncd", "--home", str(home), "init"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(5)
        ]
        said = [p.communicate(timeout=START_TIMEOUT_S) for p in inits]
        d.wait_ready()
        device_id = d.call("status")["device_id"]
        for p, (out, err) in zip(inits, said, strict=True):
            assert (p.returncode, out.strip()) == (0, device_id), err
        assert "no database" not in d.stderr(), d.stderr()
        assert d.stop() == 0
    finally:
        for p in inits:
            if p.poll() is None:
                p.kill()
                p.wait()
        d.close()


def test_single_instance_and_stale_socket(home: Path) -> None:
    home.mkdir(mode=0o700)
    # A stale socket file from a crashed daemon: nobody listens on it.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(home / "syncd.sock"))
    stale.close()
    with daemon_process(home) as d:
        assert d.call("status")["version"]
        second = subprocess.run(
            [sys.executable, "-m", "syncd", "--home", str(home), "run"],
            capture_output=True,
            text=True,
            timeout=30,
            env=d.env(),
        )
        assert second.returncode == 1
        assert "already running" in second.stderr
        assert str(home / "syncd.lock") in second.stderr
        # The first daemon is unaffected.
        assert d.call("status")["version"]


def test_bad_config_names_key_and_file(home: Path) -> None:
    home.mkdir(mode=0o700)
    (home / "config.toml").write_text("[api]\nmax_line_bytes = 'big'\n")
    d = DaemonProcess(home)
    try:
        err = d.start_failing()
        assert "api.max_line_bytes" in err
        assert str(home / "config.toml") in err
        # Nothing was created on the way: the error is the only line.
        assert len(err.strip().splitlines()) == 1
        assert [p.name for p in home.iterdir()] == ["config.toml"]  # nothing created
    finally:
        d.close()


def test_sighup_reloads_and_survives_a_bad_config(home: Path) -> None:
    with daemon_process(home) as d:
        assert d.notify is not None
        listen = d.call("status")["listen"]
        (home / "config.toml").write_text('name = "renamed"\nlisten = "127.0.0.1:9999"\n')
        d.signal(signal.SIGHUP)
        d.notify.messages.clear()
        d.notify.wait_for("STATUS")
        status = d.call("status")
        assert status["name"] == "renamed"
        assert status["listen"] == listen  # the address in use until a restart
        assert "listen address 127.0.0.1:9999 takes effect after a restart" in d.stderr()
        (home / "config.toml").write_text("name = [\n")
        d.signal(signal.SIGHUP)
        d.notify.messages.clear()
        d.notify.wait_for("STATUS")
        assert d.call("status")["name"] == "renamed"
        assert "config not reloaded" in d.stderr()
        assert d.stop() == 0


def test_the_store_section_sets_the_document_cache(home: Path) -> None:
    home.mkdir(mode=0o700)
    config = home / "config.toml"
    config.write_text('log_level = "debug"\n[store]\ncache_documents = 100\ncache_stored_mb = 3\n')
    with daemon_process(home) as d:
        assert d.notify is not None
        assert "keeps up to 100 documents decoded, 3 MiB of them stored" in d.stderr()
        # A reload cannot resize the open replica's cache: it says so and keeps the old one.
        config.write_text('log_level = "debug"\n[store]\ncache_documents = 200\n')
        d.signal(signal.SIGHUP)
        d.notify.messages.clear()
        d.notify.wait_for("STATUS")
        assert "[store] settings take effect after a restart" in d.stderr()
        assert d.stop() == 0
    with daemon_process(home) as d:
        assert "keeps up to 200 documents decoded, 1 MiB of them stored" in d.stderr()
        assert d.stop() == 0


def test_a_missing_certificate_is_reissued_at_start_and_logged(home: Path) -> None:
    with daemon_process(home) as d:
        device_id = d.call("status")["device_id"]
        assert d.stop() == 0
    (home / "cert.pem").unlink()
    with daemon_process(home) as d:
        assert d.call("status")["device_id"] == device_id
        assert f"re-issued the certificate {home / 'cert.pem'} from the key" in d.stderr()
        assert d.stop() == 0


def test_a_missing_config_is_said_at_start(home: Path) -> None:
    with daemon_process(home) as d:
        assert d.stop() == 0
    (home / "config.toml").unlink()
    with daemon_process(home) as d:
        assert d.call("status")["listen"] == "0.0.0.0:7400"
        assert f"no config file at {home / 'config.toml'}: using the defaults" in d.stderr()
        assert d.stop() == 0


def test_journal_logging_has_priorities_and_no_timestamps(home: Path, tmp_path: Path) -> None:
    d = DaemonProcess(home)
    d.stderr_path.touch()
    st = os.stat(d.stderr_path)
    d.extra_env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    try:
        d.start()
        assert d.stop() == 0
        lines = [line for line in d.stderr().splitlines() if line]
        assert lines
        assert all(line.startswith(("<6>", "<7>", "<4>", "<3>")) for line in lines), lines
        assert any(line.startswith("<6>syncd.daemon: ") for line in lines)
        assert not any(line[3:7].isdigit() for line in lines)  # no "2025-..." timestamps
        # A start-up failure is the unit's reason for failing: an error, not info.
        (home / "config.toml").write_text("nmae = 1\n")
        last = d.start_failing().splitlines()[-1]
        assert last.startswith("<3>syncd: "), last
        assert "unknown key `nmae`" in last
    finally:
        d.close()


def test_terminal_logging_has_timestamps_and_log_level(home: Path) -> None:
    with daemon_process(home, "--log-level", "warning") as d:
        assert d.stop() == 0
    assert "ready" not in d.stderr()  # info suppressed at warning level
    with daemon_process(home) as d:
        assert d.stop() == 0
    last = d.stderr().splitlines()[-1]
    assert last[:4].isdigit()
    assert " INFO syncd.daemon: stopped" in last


def test_a_lock_file_that_cannot_be_opened_is_named_with_what_failed(home: Path) -> None:
    home.mkdir(mode=0o700)
    (home / "syncd.lock").mkdir()
    d = DaemonProcess(home)
    try:
        last = d.start_failing().splitlines()[-1]
        assert last.endswith(f"cannot open the lock file {home / 'syncd.lock'}: Is a directory")
    finally:
        d.close()


def test_a_file_where_the_socket_goes_is_left_alone_and_named(home: Path) -> None:
    home.mkdir(mode=0o700)
    (home / "syncd.sock").write_text("mine")
    d = DaemonProcess(home)
    try:
        last = d.start_failing().splitlines()[-1]
        assert last == f"syncd: {home / 'syncd.sock'} exists and is not a socket; move it away"
        assert (home / "syncd.sock").read_text() == "mine"
    finally:
        d.close()


def _cli_status(home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncd", "--home", str(home), "status"],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_daemon_whose_socket_was_deleted_is_not_reported_as_absent(home: Path) -> None:
    with daemon_process(home) as d:
        d.socket.unlink()
        out = _cli_status(home)
        assert out.returncode == 3
        assert "a syncd daemon holds this home's lock" in out.stderr
        assert f"its socket {d.socket} is missing" in out.stderr
        assert d.stop() == 0
    out = _cli_status(home)
    assert out.returncode == 3
    assert "no syncd daemon is running" in out.stderr  # stopped: the lock is free again


def test_a_damaged_document_does_not_stop_a_watch_or_the_daemon(home: Path) -> None:
    with daemon_process(home) as d:
        c = RawConn(d.socket)
        c.result("put", ns="n", key="bad", value={"v": 1})
        c.result("put", ns="n", key="good", value={"v": 2})
        c.close()
        assert d.stop() == 0
    with sqlite3.connect(home / "syncd.db") as db:  # damage one document's stored state
        db.execute("UPDATE docs SET state = x'00' WHERE key = 'bad'")
    with daemon_process(home) as d:
        c = RawConn(d.socket)
        try:
            rid = c.request("watch", {"ns": "n", "initial": True})
            assert "subscription" in c.response(rid)["result"]
            note = c.recv()
            assert note["params"]["key"] == "good" and note["params"]["initial"] is True
            err = c.call("get", ns="n", key="bad")["error"]
            assert err["data"]["reason"] == "corrupt_database"
            assert c.result("status")["device_id"]  # still serving
        finally:
            c.close()
        assert d.stop() == 0
    assert "cannot read 'bad'" in d.stderr()


def test_a_put_over_the_line_limit_is_explained_by_the_cli(home: Path) -> None:
    home.mkdir(mode=0o700)
    (home / "config.toml").write_text('name = "x"\n[api]\nmax_line_bytes = 1024\n')
    big = json.dumps({"t": "x" * 2000})
    with daemon_process(home):
        out = subprocess.run(
            [sys.executable, "-m", "syncd", "--home", str(home), "put", "n", "k", big],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert out.returncode == 1
    assert out.stderr == (
        "syncd: the request is too large: the daemon takes requests of up to 1024 bytes "
        "(api.max_line_bytes in its config)\n"
    )


def test_debug_logging_shows_connections_and_requests(home: Path) -> None:
    with daemon_process(home, "--log-level", "debug") as d:
        c = RawConn(d.socket)
        try:
            c.result("put", ns="n", key="k", value={"a": 1})
            assert c.call("get", ns="n", key="k", conflicts="yes")["error"]["code"] == -32602
            c.send(b"{not json}\n")
            assert c.recv()["error"]["code"] == -32700
        finally:
            c.close()
        assert d.stop() == 0
    err = d.stderr()
    assert f"opened {home / 'syncd.db'}" in err
    assert re.search(r"DEBUG syncd\.api: client pid \d+ connected", err), err
    assert re.search(r"client pid \d+: put id=1: ok in [0-9.]+ ms", err), err
    assert re.search(r"client pid \d+: get id=2: error -32602 invalid_params in [0-9.]+ ms", err), (
        err
    )
    assert "invalid request: " in err
    assert re.search(r"client pid \d+ disconnected", err), err
    # ...and none of it at the default level.
    with daemon_process(home) as d:
        c = RawConn(d.socket)
        c.result("status")
        c.close()
        assert d.stop() == 0
    later = d.stderr()[len(err) :]  # the log file of a home is appended to
    assert "ready" in later
    assert "DEBUG" not in later


def test_hostile_clients_leave_the_daemon_serving(home: Path) -> None:
    with daemon_process(home) as d:
        watcher = RawConn(d.socket)
        try:
            watcher.send(b'{"jsonrpc":"2.0","id":1,"method":"status"}\n')
            assert watcher.recv()["id"] == 1
            garbage = [
                b"\x00\x01\x02garbage\n",
                b"{not json}\n",
                b'{"jsonrpc":"2.0","id":1,"method":"put","params":{"ns":"n"}}\n',
                b"[" * 200_000 + b"\n",
                b'"just a string"\n',
            ]
            for payload in garbage:
                c = RawConn(d.socket)
                c.send(payload)
                assert "error" in c.recv()
                c.close()
            # A 20 MiB line: an error (too_large), the daemon's memory is not used for it.
            c = RawConn(d.socket)
            chunk = b"A" * (1 << 20)
            for _ in range(20):
                c.send(chunk)
            c.send(b"\n")
            err = c.recv()["error"]
            assert err["data"]["reason"] == "too_large"
            c.close()
            # 200 connections opened and dropped, some mid-request.
            for i in range(200):
                s = socket.socket(socket.AF_UNIX)
                s.connect(str(d.socket))
                if i % 3 == 0:
                    s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"put","par')
                s.close()
            # The long-lived client and new clients are still served.
            watcher.send(b'{"jsonrpc":"2.0","id":2,"method":"status"}\n')
            assert watcher.recv()["id"] == 2
            assert d.call("put", ns="n", key="k", value={"ok": 1}) == {"ok": True}
            assert d.proc is not None
            assert d.proc.poll() is None
        finally:
            watcher.close()
        assert d.stop() == 0


def test_running_out_of_file_descriptors_pauses_accepting_instead_of_crashing(
    home: Path,
) -> None:
    # Under a descriptor limit of 64, 100 clients that hold their connections open make
    # accept() fail with EMFILE: the daemon logs it, keeps its open connections served, and
    # accepts again once clients leave.
    prlimit = root_tool("prlimit", "to lower the daemon's descriptor limit", root=False)
    d = DaemonProcess(home, prefix=[prlimit, "--nofile=64:64", "--"])
    held: list[socket.socket] = []
    try:
        d.start()
        first = RawConn(d.socket)
        for _ in range(100):  # past the limit; those not accepted wait in the listen backlog
            s = socket.socket(socket.AF_UNIX)
            held.append(s)
            s.connect(str(d.socket))
        message = "cannot accept API connections: Too many open files"
        deadline = time.monotonic() + 30
        while message not in d.stderr():
            assert d.proc is not None and d.proc.poll() is None, d.stderr()
            assert time.monotonic() < deadline, d.stderr()
            time.sleep(0.01)
        first.send(b'{"jsonrpc":"2.0","id":1,"method":"status"}\n')
        assert first.recv()["id"] == 1  # an open connection is still served
        for s in held:
            s.close()
        held.clear()
        assert d.call("put", ns="n", key="k", value={"v": 1}) == {"ok": True}
        first.close()
        assert "Traceback" not in d.stderr()
        assert d.stop() == 0
    finally:
        for s in held:
            s.close()
        d.close()


def test_a_database_deleted_under_the_daemon_refuses_writes_and_is_reported(home: Path) -> None:
    from syncd.client import ApplicationError, Client

    init = subprocess.run(
        [sys.executable, "-m", "syncd", "--home", str(home), "init"], capture_output=True
    )
    assert init.returncode == 0, init.stderr
    with daemon_process(home) as d:
        assert "no database" not in d.stderr()  # init made it: a first run is not a loss
        d.call("put", ns="n", key="before", value={"v": 1})
        for f in home.glob("syncd.db*"):
            if not f.name.endswith(".lock"):
                f.unlink()
        with Client(d.socket) as client:
            with pytest.raises(ApplicationError) as info:
                client.put("n", "after", {"v": 2})
            assert info.value.reason == "database_replaced"
            assert "the database file was deleted while syncd had it open" in str(info.value)
            assert client.get("n", "before")["value"] == {"v": 1}  # still served from memory
            (problem,) = client.status()["problems"]
            assert "the database file was deleted" in problem
        assert "a commit failed, its writes were refused" in d.stderr()
        assert d.notify is not None  # systemctl status shows it too
        status = d.notify.wait_for("STATUS", contains="writes are refused since")["STATUS"]
        assert status.startswith("ready; device ") and "the database file was deleted" in status
        shown = subprocess.run(
            [sys.executable, "-m", "syncd", "--home", str(home), "status"],
            capture_output=True,
            text=True,
        )
        assert shown.returncode == 0, shown.stderr
        assert "problem:     writes are refused since " in shown.stdout
        assert d.stop() == 0
    with daemon_process(home) as d:  # the restart says what happened before starting afresh
        assert f"no database at {home / 'syncd.db'} although this home has an identity" in (
            d.stderr()
        )
        assert d.call("list", ns="n") == {"keys": []}
        assert d.stop() == 0


@pytest.mark.root
def test_a_socket_that_cannot_be_removed_at_stop_is_reported(home: Path) -> None:
    setpriv = root_tool("setpriv", "to run the daemon without capabilities")
    no_caps = [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--"]
    d = DaemonProcess(home, prefix=no_caps)
    try:
        d.start()
        home.chmod(0o500)  # without CAP_DAC_OVERRIDE even root cannot unlink in it now
        assert d.stop() == 0
        assert f"cannot remove the socket {home / 'syncd.sock'}: Permission denied" in d.stderr()
    finally:
        home.chmod(0o700)
        d.close()


@pytest.mark.root
def test_a_full_disk_refuses_writes_until_space_is_freed_and_loses_nothing(
    tmp_path: Path,
) -> None:
    mount = root_tool("mount", "to put the daemon's home on a small tmpfs")
    umount = root_tool("umount", "to remove that tmpfs again")
    disk = tmp_path / "disk"
    disk.mkdir()
    made = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:  # (a container without CAP_SYS_ADMIN)
        cannot_run(f"cannot mount a tmpfs: {made.stderr.strip()}")
    try:
        _full_disk(disk, tmp_path)
    finally:
        subprocess.run([umount, "--lazy", str(disk)], check=False)


def _full_disk(disk: Path, tmp_path: Path) -> None:
    home = disk / "home"
    d = DaemonProcess(home)
    d.stderr_path = tmp_path / "daemon.stderr"  # not on the disk it fills
    acked: dict[str, int] = {}
    try:
        d.start()
        from syncd.client import ApplicationError, Client

        with Client(d.socket) as client:
            for i in range(20):  # acknowledged before the disk fills
                client.put("n", f"k{i}", {"i": i})
                acked[f"k{i}"] = i
        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:  # fill what the database has not taken
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
        with Client(d.socket) as client:
            refused: ApplicationError | None = None
            for i in range(2000):
                try:
                    client.put("n", f"k{i % 50}", {"i": i, "pad": "x" * 2000})
                except ApplicationError as exc:
                    refused = exc
                    break
                acked[f"k{i % 50}"] = i
            assert refused is not None, "1 MiB never filled up"
            assert refused.reason == "disk_full", refused
            assert "database or disk is full" in str(refused)
            assert client.list("n") == sorted(acked)  # reads go on
            (problem,) = client.status()["problems"]
            assert "database or disk is full" in problem
            filler.unlink()  # space freed: writes resume without a restart
            client.put("n", "after", {"i": -1})
            acked["after"] = -1
            assert "problems" not in client.status()
        assert d.notify is not None  # systemctl status says it, and that it is over
        failing = d.notify.wait_for("STATUS", contains="writes are refused since")
        assert "disk is full" in failing["STATUS"]
        after = d.notify.messages.index(failing) + 1
        again = d.notify.wait_for("STATUS", contains="ready; device ", since=after)["STATUS"]
        assert "refused" not in again
        log = d.stderr()
        assert "a commit failed, its writes were refused" in log
        assert "commits succeed again" in log
        d.kill()  # and nothing acknowledged is lost
        d.start()
        with Client(d.socket) as client:
            for key, i in acked.items():
                assert client.get("n", key)["value"]["i"] == i
        assert d.stop() == 0
    finally:
        d.close()


def test_kill_9_keeps_every_acknowledged_write(home: Path) -> None:
    d = DaemonProcess(home)
    try:
        d.start()
        acked: dict[str, int] = {}
        client = Client(d.socket)
        for i in range(300):
            client.put("crash", f"k{i % 37}", {"i": i})
            acked[f"k{i % 37}"] = i
        # Kill while a pipelined burst is in flight: whatever was acknowledged must survive.
        burst = RawConn(d.socket)
        burst.send(put_lines("crash", 2000, prefix="b"))
        burst_acked = []
        for _ in range(50):
            msg = burst.recv()
            assert msg["result"] == {"ok": True}
            burst_acked.append(msg["id"])
        d.signal(signal.SIGKILL)
        assert d.wait() == -signal.SIGKILL
        client.close()
        burst.close()
        assert d.socket.exists()  # a stale socket stays behind after kill -9
        d.close()
        d.start()  # removes the stale socket, takes the lock the kernel released
        with Client(d.socket) as again:
            for key, i in acked.items():
                assert again.get("crash", key)["value"] == {"i": i}
            for i in burst_acked:
                assert again.get("crash", f"b{i}")["value"] == {"i": i}
        assert d.stop() == 0
    finally:
        d.close()


NOBODY_CLIENT = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(sys.argv[1])
    except OSError as e:
        print("CONNECT", e.errno)
        sys.exit(0)
    s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"status"}\\n')
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    print("GOT", data.decode().strip())
    """
)


@pytest.mark.root
def test_system_unit_layout_reads_an_admins_config_directory_it_cannot_write(
    tmp_path: Path,
) -> None:
    # As under syncd@.service: state and runtime directories of the service's own, the
    # configuration directory someone else's (root's there), readable, not writable.
    setpriv = root_tool("setpriv", "to run the daemon without capabilities")
    state, run, conf = tmp_path / "state", tmp_path / "run", tmp_path / "conf"
    for directory in (state, run, conf):
        directory.mkdir(mode=0o700)
    conf.chmod(0o755)
    os.chown(conf, pwd.getpwnam("nobody").pw_uid, -1)
    env = {
        "STATE_DIRECTORY": str(state),
        "RUNTIME_DIRECTORY": str(run),
        "CONFIGURATION_DIRECTORY": str(conf),
    }
    no_caps = [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--"]
    d = DaemonProcess(state, env, prefix=no_caps, home_option=False)
    d.socket = run / "syncd.sock"
    try:
        d.start()  # no config.toml yet, and none can be written: the defaults
        assert d.call("status")["listen"] == "0.0.0.0:7400"
        assert d.stop() == 0
        assert f"cannot write {conf / 'config.toml'}: Permission denied; running with " in (
            d.stderr()
        )
        assert stat.S_IMODE(conf.stat().st_mode) == 0o755  # left as the admin made it
        (conf / "config.toml").write_text('name = "set-by-admin"\n')
        (conf / "config.toml").chmod(0o644)
        d.start()
        assert d.call("status")["name"] == "set-by-admin"
        assert d.stop() == 0
    finally:
        d.close()


def _as_nobody(path: Path) -> str:
    setpriv = root_tool("setpriv", "to run a client as another user")
    nobody = pwd.getpwnam("nobody")
    out = subprocess.run(
        [
            setpriv,
            f"--reuid={nobody.pw_uid}",
            f"--regid={nobody.pw_gid}",
            "--clear-groups",
            sys.executable,
            "-c",
            NOBODY_CLIENT,
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.strip()


@pytest.mark.root
def test_other_uid_cannot_reach_the_socket(home: Path) -> None:
    with daemon_process(home) as d:
        # 0700 directory, 0600 socket: the kernel refuses another uid.
        assert _as_nobody(d.socket) == "CONNECT 13"


@pytest.mark.root
def test_other_uid_is_refused_by_peer_credentials() -> None:
    # Even with the file permissions opened up, SO_PEERCRED refuses the other uid. (A home
    # directly under /tmp, so that no private parent directory stops "nobody" first.)
    top = Path(tempfile.mkdtemp(prefix="syncd-peercred-", dir="/tmp"))
    try:
        home = top / "home"
        with daemon_process(home) as d:
            os.chmod(top, 0o755)
            os.chmod(home, 0o755)
            os.chmod(d.socket, 0o666)
            out = _as_nobody(d.socket)
            assert out.startswith("GOT "), out
            reply = json.loads(out[4:])
            assert reply["error"]["code"] == -32000
            assert reply["error"]["data"]["reason"] == "permission_denied"
            assert "refused API connections from uid" in d.stderr()
            assert d.call("status")["version"]
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_sigterm_finishes_requests_in_flight(home: Path) -> None:
    d = DaemonProcess(home)
    try:
        d.start()
        burst = RawConn(d.socket)
        burst.send(put_lines("term", 3000, prefix="k"))
        acked = [burst.recv()["id"]]
        d.signal(signal.SIGTERM)
        # Requests already read are finished and answered; then the daemon closes cleanly.
        while True:
            try:
                msg = burst.recv()
            except (EOFError, ConnectionResetError):
                break
            assert msg["result"] == {"ok": True}
            acked.append(msg["id"])
        burst.close()
        assert d.wait() == 0
        assert not d.socket.exists()
        d.close()
        d.start()
        with Client(d.socket) as c:
            for i in acked:
                assert c.get("term", f"k{i}")["value"] == {"i": i}
        assert d.stop() == 0
    finally:
        d.close()


def test_run_ignores_the_client_socket_override(tmp_path: Path) -> None:
    # $SYNCD_SOCKET (like --socket) only tells clients where to connect: a daemon started with
    # it pointing at another instance's socket binds its own and leaves the other one alone.
    with daemon_process(tmp_path / "a") as first:
        first_id = first.call("status")["device_id"]
        stray = tmp_path / "elsewhere" / "other.sock"
        for name, override in (("b", first.socket), ("c", stray)):
            home = tmp_path / name
            env = {"SYNCD_HOME": str(home), "SYNCD_SOCKET": str(override)}
            other = DaemonProcess(home, env, home_option=False)  # the home from $SYNCD_HOME
            try:
                other.start()
                assert other.socket == home / "syncd.sock"
                assert other.call("status")["device_id"] != first_id
                assert first.call("status")["device_id"] == first_id
                assert "ignoring --socket/$SYNCD_SOCKET" in other.stderr()
                assert other.stop() == 0
            finally:
                other.close()
        assert not stray.parent.exists()
        assert first.call("status")["device_id"] == first_id
        assert first.stop() == 0
