"""The errors of the peer protocol.

Split the way h11 splits them: a :class:`RemoteProtocolError` means the peer sent something the
specification forbids (close the connection, naming ``reason``); a :class:`LocalProtocolError`
means this side tried to do something the specification forbids (a bug in the caller). Decoders
of wire data let only :class:`RemoteProtocolError` escape.
"""

from __future__ import annotations

from syncd.errors import SyncdError


class ProtocolError(SyncdError):
    """Base of both protocol errors; ``reason`` is the close reason to send (SPEC §7)."""

    reason = "protocol_error"


class LocalProtocolError(ProtocolError):
    """This side broke the protocol (for example, sent data before the hello)."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol, or sent bytes that do not decode to a valid frame."""


__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]
