"""JSON-RPC 2.0 messages, one per line: parsing, validation and encoding (no I/O).

:class:`LineSplitter` turns received bytes into lines with a hard size cap;
:func:`parse_message` turns one line into requests (or an error response);
:func:`encode_result`/:func:`encode_error`/:func:`encode_notification` build response lines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from syncd import jsontext
from syncd.errors import SyncdError

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
APPLICATION_ERROR = -32000

RequestId = str | int | float | None


class RpcError(SyncdError):
    """An error to send back to the client as a JSON-RPC error object."""

    def __init__(self, code: int, message: str, *, reason: str | None = None, **data: Any):
        super().__init__(message, reason=reason)
        self.code = code
        self.data: dict[str, Any] = dict(data)
        if reason is not None:
            self.data["reason"] = reason


def invalid_params(message: str, *, reason: str = "invalid_params", **data: Any) -> RpcError:
    """-32602 with ``data.reason``."""
    return RpcError(INVALID_PARAMS, message, reason=reason, **data)


@dataclass(frozen=True, slots=True)
class Request:
    """A validated request; ``is_notification`` when it had no ``id`` (no response is sent)."""

    id: RequestId
    method: str
    params: dict[str, Any]
    is_notification: bool


@dataclass(frozen=True, slots=True)
class Invalid:
    """A message that is not run; it gets an error response unless ``silent``.

    ``silent``: a well-formed notification whose params cannot be used (positional params):
    a server never answers a notification, not even with an error.
    """

    id: RequestId
    error: RpcError
    silent: bool = False


Message = Request | Invalid


# One encoder for every message: ``json.dumps`` with keyword arguments builds a new one per
# call, which costs more than encoding a small response.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _loads(line: bytes) -> Any:
    return jsontext.loads(jsontext.decode_utf8(line))


def parse_message(line: bytes) -> tuple[list[Message], bool]:
    """Parse one line; returns (messages, is_batch).

    An unparseable line yields one :class:`Invalid` with -32700; an empty batch one with
    -32600. Batch members are validated one by one.
    """
    try:
        data = _loads(line)
    except RecursionError:
        return [Invalid(None, RpcError(PARSE_ERROR, "parse error: JSON nested too deeply"))], False
    except (ValueError, UnicodeDecodeError) as exc:
        return [Invalid(None, RpcError(PARSE_ERROR, f"parse error: {exc}"))], False
    if isinstance(data, list):
        if not data:
            return [Invalid(None, RpcError(INVALID_REQUEST, "invalid request: empty batch"))], False
        return [_validate(item) for item in data], True
    return [_validate(data)], False


_MEMBERS = frozenset(("jsonrpc", "method", "params", "id"))


def _valid_id(value: Any) -> bool:
    # JSON-RPC allows any number; fractional ones are discouraged, not forbidden.
    t = type(value)
    return value is None or t is str or t is int or t is float


def _validate(data: Any) -> Message:
    if not isinstance(data, dict):
        return Invalid(None, RpcError(INVALID_REQUEST, "invalid request: not a JSON object"))
    has_id = "id" in data
    rid = data.get("id")
    if has_id and not _valid_id(rid):
        return Invalid(
            None, RpcError(INVALID_REQUEST, "invalid request: id must be a string, number or null")
        )
    if data.get("jsonrpc") != "2.0":
        return Invalid(rid, RpcError(INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"'))
    method = data.get("method")
    if not isinstance(method, str):
        return Invalid(rid, RpcError(INVALID_REQUEST, 'invalid request: "method" must be a string'))
    if not data.keys() <= _MEMBERS:
        extra = set(data) - _MEMBERS
        return Invalid(
            rid, RpcError(INVALID_REQUEST, f"invalid request: unexpected members {sorted(extra)}")
        )
    params = data.get("params", {})
    if type(params) is list:  # a valid request, but every method takes named params
        return Invalid(
            rid,
            invalid_params("invalid params: params must be an object (named parameters)"),
            silent=not has_id,
        )
    if type(params) is not dict:
        return Invalid(
            rid, RpcError(INVALID_REQUEST, 'invalid request: "params" must be an object or array')
        )
    return Request(rid, method, params, not has_id)


def _dumps(obj: Any) -> bytes:
    try:
        return _ENCODER.encode(obj).encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        # A lone surrogate (a client's "\udcff" id or param name, echoed back) is not UTF-8;
        # as a JSON escape it is valid JSON text, and the client gets back what it sent.
        return _ASCII_ENCODER.encode(obj).encode("ascii") + b"\n"


def result_object(rid: RequestId, result: Any) -> dict[str, Any]:
    """A success response object."""
    return {"jsonrpc": "2.0", "id": rid, "result": result}


def error_object(rid: RequestId, error: RpcError) -> dict[str, Any]:
    """An error response object."""
    err: dict[str, Any] = {"code": error.code, "message": str(error)}
    if error.data:
        err["data"] = error.data
    return {"jsonrpc": "2.0", "id": rid, "error": err}


def encode(obj: Any) -> bytes:
    """One response line (a response object or a batch array)."""
    return _dumps(obj)


def encode_notification(method: str, params: dict[str, Any]) -> bytes:
    """A notification line from the daemon (e.g. ``change``, ``overflow``)."""
    return _dumps({"jsonrpc": "2.0", "method": method, "params": params})


class LineSplitter:
    """Splits a byte stream into lines of at most ``max_line`` bytes (without the newline).

    An over-long line is never buffered whole: :meth:`feed` reports it once as ``None`` and
    the rest of it is discarded up to the next newline, so memory stays bounded.
    """

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | None]:
        """Add received bytes; return complete lines (``None`` for each over-long line)."""
        out: list[bytes | None] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            piece = data[start:nl]
            start = nl + 1
            if self._discarding:
                self._discarding = False
                continue
            if len(self._buf) + len(piece) > self.max_line:
                self._buf.clear()
                out.append(None)
                continue
            if self._buf:
                self._buf += piece
                line = bytes(self._buf)
                self._buf.clear()
            else:
                line = piece
            if line.strip():
                out.append(line)
        rest = data[start:]
        if not self._discarding and rest:
            if len(self._buf) + len(rest) > self.max_line:
                self._buf.clear()
                self._discarding = True
                out.append(None)
            else:
                self._buf += rest
        return out

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held in the buffer."""
        return len(self._buf)
