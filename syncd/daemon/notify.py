"""systemd notifications (sd_notify) without a dependency.

Datagrams go to ``$NOTIFY_SOCKET`` (``@name`` is an abstract socket); errors are ignored, as
sd_notify does: the daemon works the same when nobody listens. Sends never block: a receiver
that does not read (its queue full) loses the message rather than stalling the event loop.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping

import trio

MIN_WATCHDOG_INTERVAL_S = 0.05
"""Pings are at least this far apart, whatever ``WATCHDOG_USEC`` says (``1`` would spin)."""


class Notifier:
    """Sends ``READY=1``, ``STATUS=…``, ``WATCHDOG=1``, ``STOPPING=1`` to the service manager."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None
        self.watchdog_usec = 0
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and (not pid or pid == str(os.getpid())):
            self.watchdog_usec = int(usec)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """Whether a service manager is listening."""
        return self.address is not None

    def send(self, **fields: str) -> None:
        """Send ``KEY=value`` lines (keys are upper-cased) in one datagram."""
        if self.address is None:
            return
        message = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._sock.sendto(message, self.address)
        except OSError:  # nobody there, or a full queue (EAGAIN): dropped, as sd_notify does
            pass

    def ready(self, status: str) -> None:
        """The service is up: the socket answers and the store is open."""
        self.send(ready="1", status=status)

    def status(self, status: str) -> None:
        """A one-line summary."""
        self.send(status=status)

    def stopping(self, status: str = "stopping") -> None:
        """The service is shutting down."""
        self.send(stopping="1", status=status)

    async def watchdog(self) -> None:
        """Send ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` (forever; returns at once if unset)."""
        if not self.watchdog_usec or self.address is None:
            return
        interval = max(self.watchdog_usec / 2 / 1_000_000, MIN_WATCHDOG_INTERVAL_S)
        while True:
            self.send(watchdog="1")
            await trio.sleep(interval)

    def close(self) -> None:
        """Close the notification socket."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
