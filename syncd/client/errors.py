"""The errors of the clients: :class:`ClientError` and its subclasses, and
:func:`error_from_response`, the typed exception for a JSON-RPC error object.
"""

from __future__ import annotations

from typing import Any

from syncd.errors import SyncdError


class ClientError(SyncdError):
    """A problem talking to the daemon (``.reason``; no ``.code`` or ``.data``)."""

    reason = "client"


class DaemonNotRunning(ClientError):
    """Nothing is listening on the socket."""

    reason = "no_daemon"


class ConnectionLost(ClientError):
    """The connection failed, the daemon closed it, or the client was closed or broken."""

    reason = "connection_lost"


class CallTimeout(ClientError):
    """A call got no response within the client's ``timeout``."""

    reason = "call_timeout"


class RemoteError(ClientError):
    """An error response: ``code``, ``message``, ``data`` (with ``reason`` for -32000)."""

    code = 0
    reason = "remote_error"

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        data = data or {}
        super().__init__(message, reason=str(data.get("reason", self.reason)))
        self.code = code
        self.data = data

    def __repr__(self) -> str:
        message = str(self.args[0]) if self.args else ""
        return f"{type(self).__name__}({self.code}, {message!r}, {self.data!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        message = str(self.args[0]) if self.args else ""
        return (type(self), (self.code, message, self.data), self.__dict__)


class ParseError(RemoteError):
    """-32700: the daemon could not parse a line."""

    reason = "parse_error"


class InvalidRequest(RemoteError):
    """-32600: not a JSON-RPC request."""

    reason = "invalid_request"


class MethodNotFound(RemoteError):
    """-32601."""

    reason = "method_not_found"


class InvalidParams(RemoteError):
    """-32602 (``reason`` ``invalid_device_id`` for a mistyped device ID)."""

    reason = "invalid_params"


class InternalError(RemoteError):
    """-32603: a bug in the daemon."""

    reason = "internal_error"


class ApplicationError(RemoteError):
    """-32000: the request was valid but could not be done; see ``reason``."""

    reason = "error"


class NotFound(ApplicationError):
    """``not_found``."""

    reason = "not_found"


class NotTrusted(ApplicationError):
    """``not_trusted``."""

    reason = "not_trusted"


class TypeMismatch(ApplicationError):
    """``type_mismatch``."""

    reason = "type_mismatch"


class InvalidPath(ApplicationError):
    """``invalid_path``."""

    reason = "invalid_path"


class TooLarge(ApplicationError):
    """``too_large`` (also a request line over the daemon's size limit)."""

    reason = "too_large"


class Timeout(ApplicationError):
    """``timeout`` (reported by the daemon; the client's own is :class:`CallTimeout`)."""

    reason = "timeout"


_BY_CODE: dict[int, type[RemoteError]] = {
    -32700: ParseError,
    -32600: InvalidRequest,
    -32601: MethodNotFound,
    -32602: InvalidParams,
    -32603: InternalError,
    -32000: ApplicationError,
}
_BY_REASON: dict[str, type[ApplicationError]] = {
    "not_found": NotFound,
    "not_trusted": NotTrusted,
    "type_mismatch": TypeMismatch,
    "invalid_path": InvalidPath,
    "too_large": TooLarge,
    "timeout": Timeout,
}


def error_from_response(error: Any) -> RemoteError:
    """The typed exception for a JSON-RPC error object."""
    if not isinstance(error, dict):
        return RemoteError(0, f"malformed error response: {error!r}")
    code = error.get("code")
    message = str(error.get("message", "error"))
    data = error.get("data") if isinstance(error.get("data"), dict) else None
    cls: type[RemoteError] = (
        _BY_CODE.get(code, RemoteError) if isinstance(code, int) else RemoteError
    )
    if cls is ApplicationError and data is not None:
        cls = _BY_REASON.get(str(data.get("reason")), ApplicationError)
    return cls(code if isinstance(code, int) else 0, message, data)
