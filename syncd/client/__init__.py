"""Clients of the local API: :class:`Client` (blocking, for scripts and threads) and
:func:`open_client` (trio, pipelined). Both speak JSON-RPC 2.0 lines over the Unix socket,
offer one typed method per API method (plus :meth:`Client.call` for any method), and raise
typed errors:

- :class:`DaemonNotRunning` when nothing listens on the socket (the message names it);
- :class:`ConnectionLost` when the connection fails or was closed (no automatic reconnect);
- :class:`CallTimeout` when a call outlives the client's ``timeout``;
- :class:`RemoteError` subclasses for error responses, by code (:class:`InvalidParams`, ...)
  and, for -32000, by ``data.reason`` (:class:`NotFound`, :class:`NotTrusted`, ...).

Example::

    from syncd.client import Client
    with Client() as c:                      # the socket of the default instance
        c.put("notes", "todo", {"title": "milk"})
        print(c.get("notes", "todo"))        # {'exists': True, 'value': {'title': 'milk'}}

Responses are matched to requests by ``id``. An error response with ``"id": null`` (the
daemon's answer to a line it could not parse or that was too long) belongs to the oldest
request still waiting for its turn in the response order; ``sync`` requests are skipped
unless nothing else waits, because their responses do not keep that order (docs/api.md,
"Pipelining").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from syncd.client.errors import (
    ApplicationError,
    CallTimeout,
    ClientError,
    ConnectionLost,
    DaemonNotRunning,
    InternalError,
    InvalidParams,
    InvalidPath,
    InvalidRequest,
    MethodNotFound,
    NotFound,
    NotTrusted,
    ParseError,
    RemoteError,
    Timeout,
    TooLarge,
    TypeMismatch,
    error_from_response,
)
from syncd.client.protocol import MAX_RESPONSE_LINE, WATCH_BUFFER, default_socket
from syncd.client.sync_client import Client
from syncd.errors import SyncdError

if TYPE_CHECKING:
    from syncd.client.async_client import AsyncClient, AsyncSubscription, open_client
else:

    def __getattr__(name: str) -> Any:
        # The trio client is imported on first use: importing trio takes longer than
        # everything else the CLI needs, and the blocking client does not use it. (Only at
        # run time: type checkers see the imports above, and so catch misspelt names.)
        if name in _ASYNC_NAMES:
            from syncd.client import async_client

            return getattr(async_client, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(globals()) | _ASYNC_NAMES)


_ASYNC_NAMES = frozenset({"AsyncClient", "AsyncSubscription", "open_client"})


__all__ = [
    "MAX_RESPONSE_LINE",
    "WATCH_BUFFER",
    "ApplicationError",
    "AsyncClient",
    "AsyncSubscription",
    "CallTimeout",
    "Client",
    "ClientError",
    "ConnectionLost",
    "DaemonNotRunning",
    "InternalError",
    "InvalidParams",
    "InvalidPath",
    "InvalidRequest",
    "MethodNotFound",
    "NotFound",
    "NotTrusted",
    "ParseError",
    "RemoteError",
    "SyncdError",
    "Timeout",
    "TooLarge",
    "TypeMismatch",
    "default_socket",
    "error_from_response",
    "open_client",
]
