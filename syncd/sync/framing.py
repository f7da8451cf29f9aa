"""Frames: a 4-byte big-endian length, then that many bytes of one CBOR message (SPEC §2).

:class:`FrameReader` is the incremental half (bytes in, whole frame bodies out), in the manner
of wsproto's ``Buffer``: it never holds more than one maximum frame plus one read.
"""

from __future__ import annotations

from syncd.crdt.codec import MAX_DOCUMENT_BYTES
from syncd.sync.errors import LocalProtocolError, RemoteProtocolError

HEADER = 4
MAX_FRAME = MAX_DOCUMENT_BYTES + 1024 * 1024
"""SPEC §2: the largest frame body a peer may send (65 MiB: room for one delta of the largest
document the codec accepts); a larger declared length is an error that closes the connection
before the body is read."""


def frame(body: bytes, max_frame: int = MAX_FRAME) -> bytes:
    """Prefix ``body`` with its length."""
    if not 0 < len(body) <= max_frame:
        raise LocalProtocolError(f"frame body of {len(body)} bytes is outside 1..{max_frame}")
    return len(body).to_bytes(HEADER, "big") + body


class FrameReader:
    """Splits a byte stream into frame bodies."""

    __slots__ = ("_buf", "_eof", "_pos", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0
        self._eof = False

    def feed(self, data: bytes) -> None:
        """Append received bytes; ``b""`` means the peer closed its side."""
        if self._eof and data:
            raise LocalProtocolError("data received after end of stream")
        if not data:
            self._eof = True
            return
        if self._pos and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buf) - self._pos

    @property
    def at_eof(self) -> bool:
        """True once the end of stream was fed and every whole frame was taken."""
        return self._eof and self.buffered == 0

    def next_frame(self) -> bytes | None:
        """The next whole frame body, or None until more bytes arrive.

        Raises RemoteProtocolError for a length of 0 or above the maximum (SPEC §2), and for a
        stream that ends inside a frame.
        """
        avail = self.buffered
        if avail >= HEADER:
            size = int.from_bytes(self._buf[self._pos : self._pos + HEADER], "big")
            if size == 0:
                raise RemoteProtocolError("frame of length 0", reason="bad_frame")
            if size > self.max_frame:
                raise RemoteProtocolError(
                    f"frame of {size} bytes exceeds the maximum of {self.max_frame}",
                    reason="frame_too_large",
                )
            if avail >= HEADER + size:
                start = self._pos + HEADER
                body = bytes(self._buf[start : start + size])
                self._pos = start + size
                return body
        if self._eof and avail:
            raise RemoteProtocolError("stream ended inside a frame", reason="truncated")
        return None


__all__ = ["HEADER", "MAX_FRAME", "FrameReader", "frame"]
