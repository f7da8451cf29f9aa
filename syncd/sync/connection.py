"""The connection state machine: bytes in, events out; events in, bytes out (SPEC §3).

Modelled on h11's ``Connection``: it does no I/O and reads no clock. The driver feeds received
bytes to :meth:`Connection.receive_data`, pulls events with :meth:`Connection.next_event` until
it gets :data:`NEED_DATA`, and writes whatever :meth:`Connection.send` returns.

What it enforces: each side's first message is its hello; a version both sides speak is chosen
(the highest); data messages flow only once both hellos are through; nothing follows a close.
Any violation by the peer raises :class:`RemoteProtocolError` from ``next_event`` and moves the
connection to :attr:`State.ERROR`, where the only thing left to do is to send one
:class:`~syncd.sync.messages.Close` naming the error's ``reason``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NoReturn

from syncd.sync.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from syncd.sync.framing import MAX_FRAME, FrameReader, frame
from syncd.sync.messages import Close, Hello, Message, decode_message, encode_message

SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
"""The protocol versions this implementation speaks."""


class State(enum.Enum):
    """Where a connection is."""

    HANDSHAKE = "handshake"
    """At least one hello is still missing."""
    OPEN = "open"
    """Both hellos are through and a version is chosen: data may flow."""
    CLOSED = "closed"
    """A close was sent or received, or the stream ended."""
    ERROR = "error"
    """The protocol was broken; send a Close naming the reason and drop the connection."""


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()
"""Returned by :meth:`Connection.next_event` when it needs more bytes."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer's byte stream ended. ``clean`` is True if it sent a Close first."""

    clean: bool


Event = Message | ConnectionClosed


def choose_version(ours: tuple[int, ...], theirs: tuple[int, ...]) -> int | None:
    """SPEC §3: the highest version both sides list, or None."""
    common = set(ours) & set(theirs)
    return max(common) if common else None


class Connection:
    """One peer connection's protocol state (either side; the protocol is symmetric)."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._reader = FrameReader(max_frame)
        self.max_frame = max_frame
        self.our_versions: tuple[int, ...] | None = None
        self.their_versions: tuple[int, ...] | None = None
        self.version: int | None = None
        self.we_closed = False
        self.they_closed: Close | None = None
        self.error: ProtocolError | None = None
        self._eof_reported = False
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def state(self) -> State:
        """The current state (derived from what was sent and received)."""
        if self.error is not None:
            return State.ERROR
        if self.we_closed or self.they_closed is not None or self._reader.at_eof:
            return State.CLOSED
        if self.version is not None:
            return State.OPEN
        return State.HANDSHAKE

    # -- receiving ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the peer; ``b""`` means end of stream."""
        self.bytes_received += len(data)
        self._reader.feed(data)

    def next_event(self) -> Event | _NeedData:
        """The next event from the peer, or NEED_DATA. Raises RemoteProtocolError once (and
        moves to ERROR) when the peer broke the protocol; after that, raises it again."""
        if self.error is not None:
            raise self.error
        if self._pending_incompatible():
            return self._fail(self._incompatible())
        try:
            body = self._reader.next_frame()
        except RemoteProtocolError as e:
            return self._fail(e)
        if body is None:
            if self._reader.at_eof:
                self._eof_reported = True
                return ConnectionClosed(clean=self.they_closed is not None)
            return NEED_DATA
        try:
            msg = decode_message(body)
        except RemoteProtocolError as e:
            return self._fail(e)
        return self._process_received(msg)

    def _fail(self, e: ProtocolError) -> NoReturn:
        self.error = e
        raise e

    def _process_received(self, msg: Message) -> Event | _NeedData:
        if self.they_closed is not None:
            return self._fail(RemoteProtocolError("message after close", reason="protocol_error"))
        if isinstance(msg, Close):
            # SPEC §3.3: a close may come at any time, even before the hello.
            self.they_closed = msg
            return msg
        if isinstance(msg, Hello):
            if self.their_versions is not None:
                return self._fail(RemoteProtocolError("second hello", reason="protocol_error"))
            self.their_versions = msg.versions
            if self.our_versions is not None:
                self.version = choose_version(self.our_versions, msg.versions)
                if self.version is None:
                    return self._fail(self._incompatible())
            return msg
        # SPEC §3.1: nothing but hello and close before both hellos are through.
        if self.their_versions is None:
            return self._fail(
                RemoteProtocolError(
                    f"expected hello, got {type(msg).__name__}", reason="protocol_error"
                )
            )
        if self.version is None:
            return self._fail(
                RemoteProtocolError(
                    f"{type(msg).__name__} before our hello could have arrived",
                    reason="protocol_error",
                )
            )
        return msg

    def _pending_incompatible(self) -> bool:
        return (
            self.our_versions is not None
            and self.their_versions is not None
            and self.version is None
        )

    def _incompatible(self) -> RemoteProtocolError:
        theirs = ", ".join(map(str, self.their_versions or ()))
        ours = ", ".join(map(str, self.our_versions or ()))
        return RemoteProtocolError(
            f"no common protocol version: peer speaks {theirs}; this side speaks {ours}",
            reason="incompatible_version",
        )

    # -- sending -------------------------------------------------------------------------------

    def send(self, msg: Message) -> bytes:
        """The bytes that carry ``msg``; raises LocalProtocolError if it may not be sent now."""
        if self.we_closed:
            raise LocalProtocolError("cannot send after our close")
        if isinstance(msg, Close):
            data = frame(encode_message(msg), self.max_frame)
            self.we_closed = True
        elif self.error is not None:
            raise LocalProtocolError("after a protocol error only a close may be sent")
        elif isinstance(msg, Hello):
            if self.our_versions is not None:
                raise LocalProtocolError("hello already sent")
            if self.they_closed is not None:
                raise LocalProtocolError("the peer has closed")
            data = frame(encode_message(msg), self.max_frame)
            self.our_versions = msg.versions
            if self.their_versions is not None:
                # Incompatibility, if any, is reported by the next call to next_event().
                self.version = choose_version(msg.versions, self.their_versions)
        else:
            if self.state is not State.OPEN:
                raise LocalProtocolError(
                    f"cannot send {type(msg).__name__} in state {self.state.value}"
                )
            data = frame(encode_message(msg), self.max_frame)
        self.bytes_sent += len(data)
        return data


__all__ = [
    "NEED_DATA",
    "SUPPORTED_VERSIONS",
    "Connection",
    "ConnectionClosed",
    "Event",
    "State",
    "choose_version",
]
