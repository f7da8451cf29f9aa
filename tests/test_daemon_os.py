"""The daemon's dealings with the OS around it: the API socket's file, sd_notify and the
home's set-up lock."""

from __future__ import annotations

import fcntl
import itertools
import os
import socket
import sys
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from syncd.daemon.logs import stderr_is_journal
from syncd.daemon.notify import MIN_WATCHDOG_INTERVAL_S, Notifier
from syncd.daemon.run import DaemonError, waiting_home_setup_lock
from syncd.daemon.unixsock import SocketInUseError, bind_unix
from syncd.paths import resolve_paths


def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "syncd.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # nobody accepts connections on it any more
    sock = bind_unix(path)
    try:
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(path))
        client.close()
    finally:
        sock.close()


def test_a_live_socket_is_not_taken_over(tmp_path: Path) -> None:
    # Another daemon (say, of another state directory sharing the runtime directory) serves it.
    path = tmp_path / "syncd.sock"
    other = bind_unix(path)
    try:
        inode = path.stat().st_ino
        with pytest.raises(SocketInUseError, match="another server"):
            bind_unix(path)
        assert path.stat().st_ino == inode
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(path))  # still the other server's
        client.close()
    finally:
        other.close()


def test_a_burst_of_connections_waits_in_the_backlog(tmp_path: Path) -> None:
    # 300 clients connecting while the daemon is busy: a non-blocking connect fails with
    # EAGAIN once the listen backlog is full (it was 128).
    kernel_max = int(Path("/proc/sys/net/core/somaxconn").read_text())  # (4096 since 5.4)
    listener = bind_unix(tmp_path / "s.sock")
    clients: list[socket.socket] = []
    try:
        for _ in range(min(300, kernel_max)):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            clients.append(c)
            c.setblocking(False)
            c.connect(str(tmp_path / "s.sock"))  # nobody accepts yet
    finally:
        for c in clients:
            c.close()
        listener.close()


def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "syncd.sock"
    path.write_text("someone's notes")
    with pytest.raises(SocketInUseError, match="not a socket"):
        bind_unix(path)
    assert path.read_text() == "someone's notes"


def test_a_notify_socket_nobody_reads_never_blocks(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    try:
        # Far more datagrams than the receiver's queue holds (max_dgram_qlen is ~10): a
        # blocking send would hang here, stalling the daemon's event loop.
        def flood() -> None:
            for i in range(500):
                notifier.status(f"{i}")

        sender = threading.Thread(target=flood)
        sender.start()
        sender.join(10)
        assert not sender.is_alive()
        assert receiver.recv(100) == b"STATUS=0"  # what fitted was delivered
    finally:
        notifier.close()
        receiver.close()


def test_watchdog_pings_are_spaced_whatever_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    # WATCHDOG_USEC=1 asks for a ping every half microsecond: a loop that would spin.
    notifier = Notifier({"NOTIFY_SOCKET": "@unused", "WATCHDOG_USEC": "1"})
    pings: list[float] = []

    def send(**fields: str) -> None:
        assert fields == {"watchdog": "1"}
        pings.append(trio.current_time())
        if len(pings) > 1000:
            raise RuntimeError("the watchdog spins")

    monkeypatch.setattr(notifier, "send", send)

    async def one_virtual_second() -> None:
        with trio.move_on_after(1):
            await notifier.watchdog()

    trio.run(one_virtual_second, clock=trio.testing.MockClock(autojump_threshold=0))
    assert 2 <= len(pings) <= 1 / MIN_WATCHDOG_INTERVAL_S + 1
    assert min(b - a for a, b in itertools.pairwise(pings)) >= MIN_WATCHDOG_INTERVAL_S * 0.99


def test_journal_stream_must_name_stderr() -> None:
    st = os.fstat(sys.stderr.fileno())
    assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
    assert not stderr_is_journal({"JOURNAL_STREAM": "garbage"})
    assert not stderr_is_journal({})


async def test_the_daemon_waits_for_a_home_being_set_up_but_not_for_ever(tmp_path: Path) -> None:
    """`syncd run` waits (without blocking its event loop) while an `init` holds the home's
    set-up lock, and gives up with a clear error after a while: an `init` stopped with the
    lock held would otherwise hold up the daemon, signals included, for good."""
    paths = resolve_paths(tmp_path / "h", env={})
    paths.state_dir.mkdir()
    held = os.open(paths.state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(DaemonError, match=r"has held its lock for 0\.05 s"):
            async with waiting_home_setup_lock(paths, patience_s=0.05):
                pass
        entered = trio.Event()

        async def take() -> None:
            async with waiting_home_setup_lock(paths):
                entered.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(take)
            await trio.testing.wait_all_tasks_blocked()
            assert not entered.is_set()  # waiting, and the loop runs: this task does
            os.close(held)
            held = -1
            with trio.fail_after(5):
                await entered.wait()
    finally:
        if held >= 0:
            os.close(held)
