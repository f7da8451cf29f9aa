"""The error types syncd raises.

Everything syncd raises on purpose derives from :class:`SyncdError`, so a caller can tell a
reported problem from a bug. Each error that reaches a user or an API client carries a short
machine-readable ``reason`` (the JSON-RPC ``error.data.reason``).
"""

from __future__ import annotations


class SyncdError(Exception):
    """Base of every error syncd raises deliberately."""

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class CodecError(SyncdError):
    """Bytes that do not decode to a valid state, delta or frame (the only error decoders raise)."""

    reason = "bad_encoding"


class InvalidDeltaError(SyncdError):
    """A remote delta that the replica refuses (it claims dots that belong elsewhere); nothing
    of its batch was applied."""

    reason = "invalid_delta"


class PatchError(SyncdError):
    """An operation that cannot apply to a document; ``reason`` says why.

    Reasons: ``invalid_path`` (a path that does not resolve or an index out of range),
    ``type_mismatch`` (the operation does not fit the field's type), ``too_large``.
    """

    reason = "invalid_path"
    document_changed = False
    """Set when the document was changed before the error was found (a bug: a refused change
    must change nothing): its holder must discard it and load it again."""


class InvalidOperation(SyncdError):
    """A malformed operation (missing or ill-typed members): the caller's parameters are bad."""

    reason = "invalid_params"
