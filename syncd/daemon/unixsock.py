"""Unix socket plumbing shared by the server and the clients.

``sockaddr_un`` holds at most 107 bytes of path. Deep homes (e.g. pytest's temporary
directories) exceed that, so a long path is reached through ``/proc/self/fd/N/NAME`` with an
open descriptor of its directory; both ``bind`` and ``connect`` resolve it like a path.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

MAX_SUN_PATH = 107


@contextlib.contextmanager
def short_address(path: Path) -> Iterator[str]:
    """A path usable as an AF_UNIX address for ``path`` while the context is open."""
    text = os.fsdecode(path)
    if len(os.fsencode(text)) <= MAX_SUN_PATH:
        yield text
        return
    dirfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{dirfd}/{path.name}"
    finally:
        os.close(dirfd)


class SocketInUseError(OSError):
    """Something else is at the socket's path: a live server, or a file that is no socket."""


class NotASocketError(SocketInUseError):
    """A file that is not a socket stands where the socket goes."""


def bind_unix(path: Path, backlog: int = socket.SOMAXCONN) -> socket.socket:
    """A listening AF_UNIX stream socket at ``path`` with mode 0600.

    The backlog is as long as the kernel allows (``net.core.somaxconn``): a burst of scripts
    connecting at once waits for the accept loop instead of failing (a non-blocking connect
    gets EAGAIN once the backlog is full).

    A stale socket there (nobody accepts connections) is removed. A socket that still accepts
    connections belongs to another server (e.g. a daemon of another state directory sharing
    this runtime directory), and a file that is not a socket is not ours to delete: both
    raise :class:`SocketInUseError`. The umask is set around ``bind`` (before the daemon
    starts threads).
    """
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            with short_address(path) as addr:
                sock.bind(addr)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_stale(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise NotASocketError(f"{path} exists and is not a socket; move it away")
    try:
        probe = connect_unix(path, timeout=1.0)
    except OSError:  # refused (stale), or unreachable: nobody serves it
        path.unlink(missing_ok=True)
        return
    probe.close()
    raise SocketInUseError(f"another server is accepting connections on {path}")


def connect_unix(path: Path, timeout: float | None = None) -> socket.socket:
    """A blocking AF_UNIX stream socket connected to ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        with short_address(path) as addr:
            sock.connect(addr)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock


class _HasSockopt(Protocol):
    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


def peer_credentials(sock: _HasSockopt) -> tuple[int, int]:
    """``(pid, uid)`` of the process at the other end (SO_PEERCRED); any socket object, a
    trio one included."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return int(pid), int(uid)


def peer_uid(sock: _HasSockopt) -> int:
    """The uid of the process at the other end (SO_PEERCRED)."""
    return peer_credentials(sock)[1]
