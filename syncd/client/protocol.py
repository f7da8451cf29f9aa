"""What both clients share: the socket to connect to, request lines (checked before
anything is sent), matching responses to requests by ``id`` (:class:`Correlator`),
parsing response lines and the params and results of the typed methods.
"""

from __future__ import annotations

import builtins
import json
import math
import os
from collections import deque
from collections.abc import Iterable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

from syncd.client.errors import ClientError, ConnectionLost, DaemonNotRunning
from syncd.paths import resolve_paths

MAX_RESPONSE_LINE = 1 << 30
"""The longest response line a client accepts; a longer one breaks the connection."""
RECEIVE_CHUNK = 1 << 16
WATCH_BUFFER = 1024
"""Notifications a subscription buffers in the client (per subscription, in both clients)
before it ends with an overflow, as the daemon's own queue does."""
SYNC_DEFAULT_TIMEOUT_S = 30.0  # the daemon's default ``timeout_s`` of ``sync``
UNORDERED_METHODS = frozenset(("sync",))  # responses that do not keep the request order


# --- paths and encoding ----------------------------------------------------------------------


def default_socket() -> Path:
    """The socket of the instance the environment selects: ``SYNCD_SOCKET``, else that of
    ``SYNCD_HOME``, else the XDG (or systemd) runtime directory's."""
    return resolve_paths().socket


def resolve_socket(
    socket_path: str | os.PathLike[str] | None, home: str | os.PathLike[str] | None
) -> Path:
    if home is not None:
        if socket_path is not None:
            raise ValueError("give either a socket path or home=, not both")
        if not os.fspath(home):
            raise ValueError("home must not be empty")
        return resolve_paths(home).daemon_socket  # what `syncd --home HOME run` binds
    if socket_path is not None and not os.fspath(socket_path):
        raise ValueError("the socket path must not be empty")
    return Path(socket_path) if socket_path is not None else default_socket()


def check_timeout(timeout: float | None) -> float | None:
    """A client's ``timeout``: None (wait forever) or a positive number of seconds."""
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout < math.inf
    ):
        raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
    return timeout


def refusal(peer_uid: int, path: Path) -> ClientError | None:
    """The error for a daemon that will refuse this process (it serves its own uid only)."""
    me = os.getuid()
    if peer_uid == me:
        return None
    return ClientError(
        f"permission denied: the daemon at {path} runs as uid {peer_uid} and accepts only "
        f"its own user's connections (this is uid {me})",
        reason="permission_denied",
    )


def not_running(path: Path, exc: OSError, home: str | os.PathLike[str] | None) -> ClientError:
    if isinstance(exc, PermissionError):
        return ClientError(f"permission denied connecting to {path}", reason="permission_denied")
    start = "syncd run" if home is None else f"syncd --home {os.fspath(home)} run"
    return DaemonNotRunning(f"no syncd daemon is running at {path} (start one with `{start}`)")


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


class _BadKey(Exception):
    """A dict key that is not a string, with the path to it (filled in while unwinding)."""

    def __init__(self, key: object) -> None:
        super().__init__(key)
        self.key = key
        self.path: builtins.list[object] = []


def _check_keys(value: Any) -> None:
    # json.dumps would turn {1: "x"} into {"1": "x"} without a word. Only containers are
    # visited; the path is built only when a bad key is found.
    children: Iterable[tuple[object, Any]]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise _BadKey(key)
        children = value.items()
    elif isinstance(value, list | tuple):
        children = enumerate(value)
    else:
        return
    for where, item in children:
        if isinstance(item, dict | list | tuple):
            try:
                _check_keys(item)
            except _BadKey as exc:
                exc.path.append(where)
                raise


def _non_finite_path(value: Any) -> builtins.list[object] | None:
    """The path to a NaN or infinite float inside ``value`` (None: there is none)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else []
    items: Iterable[tuple[object, Any]]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite_path(item)
        if found is not None:
            return [key, *found]
    return None


def _where(name: str, path: builtins.list[object]) -> str:
    return name + "".join(f"[{p!r}]" for p in path)


def encode_tail(method: str, params: Mapping[str, Any]) -> bytes:
    """The request line after its id (``,"method":...,"params":...}\\n``), checked first:
    values the daemon cannot store raise here and nothing is sent."""
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, not {type(method).__name__}")
    for name, value in params.items():
        try:
            _check_keys(value)
        except _BadKey as exc:
            where = _where(name, exc.path[::-1])
            raise TypeError(
                f"param {name!r}: key {exc.key!r} in {where} is not a string "
                "(JSON object keys are strings; convert it yourself)"
            ) from None
        except RecursionError:
            raise ValueError(f"param {name!r} is nested too deeply") from None
    try:
        body = _ENCODER.encode(dict(params))
    except ValueError:
        for name, value in params.items():
            path = _non_finite_path(value)
            if path is not None:
                raise ValueError(
                    f"param {name!r}: {_where(name, path)} is NaN or infinite, which JSON "
                    "cannot represent and the daemon cannot store"
                ) from None
        raise
    except TypeError as exc:
        raise TypeError(f"params of {method!r}: {exc}") from None
    return b',"method":' + _ENCODER.encode(method).encode() + b',"params":' + body.encode() + b"}\n"


def request_line(rid: int, tail: bytes) -> bytes:
    return b'{"jsonrpc":"2.0","id":%d' % rid + tail


def call_allowance(timeout: float | None, method: str, params: Mapping[str, Any]) -> float | None:
    """How long a call may take: the client's timeout, plus the wait ``sync`` asks for."""
    if timeout is None:
        return None
    if method == "sync":
        wait = params.get("timeout_s", SYNC_DEFAULT_TIMEOUT_S)
        if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 0:
            return timeout + float(wait)
    return timeout


class Correlator:
    """Which request a response answers (sans-IO; both clients use one per connection).

    Request ids increase in the order the lines are sent. The daemon answers in that order,
    except ``sync``, so a response to an ordered request ``n`` means every line sent before
    ``n`` has had its turn; an error with a null id is the turn of the oldest line that has not.
    """

    def __init__(self) -> None:
        self._next_id = 1
        self._waiting_turn: deque[int] = deque()  # ids whose turn has not come, in send order
        self._unordered: set[int] = set()  # ids of unanswered ``sync`` requests

    def add(self, method: str) -> int:
        """The id of a request about to be sent (call in send order)."""
        rid = self._next_id
        self._next_id += 1
        self._waiting_turn.append(rid)
        if method in UNORDERED_METHODS:
            self._unordered.add(rid)
        return rid

    def retract(self, rid: int) -> None:
        """Forget the request just added: not a byte of it was sent."""
        if self._waiting_turn and self._waiting_turn[-1] == rid:
            self._waiting_turn.pop()
        self._unordered.discard(rid)

    def never_sent(self, msg_id: Any) -> bool:
        """Whether a response's id names no request of this connection: the other end is not
        answering our requests (another service on the socket?), so waiting is pointless."""
        return msg_id is not None and (type(msg_id) is not int or not 0 < msg_id < self._next_id)

    def route(self, msg_id: Any, is_error: bool) -> int | None:
        """The id of the request a response answers (None: none of ours)."""
        if msg_id is None:
            return self._claim_turn() if is_error else None
        if type(msg_id) is not int:
            return None
        if msg_id in self._unordered:
            self._unordered.discard(msg_id)
            with suppress(ValueError):
                self._waiting_turn.remove(msg_id)
            return msg_id
        while self._waiting_turn and self._waiting_turn[0] <= msg_id:
            self._waiting_turn.popleft()
        return msg_id

    def _claim_turn(self) -> int | None:
        owner = next((r for r in self._waiting_turn if r not in self._unordered), None)
        if owner is None:
            if not self._waiting_turn:
                return None
            # Only ``sync`` requests wait: the error can be nobody else's.
            owner = self._waiting_turn.popleft()
            self._unordered.discard(owner)
            return owner
        while self._waiting_turn[0] != owner:
            self._waiting_turn.popleft()  # a ``sync`` sent earlier: its turn has passed
        self._waiting_turn.popleft()
        return owner


def is_initial(msg: dict[str, Any]) -> bool:
    """Whether a notification is an initial value of a ``watch`` with ``initial: true``:
    those are paced by the daemon (it sends them only as fast as the connection is read) and
    bounded by the documents watched, so the clients' buffers do not count them."""
    params = msg.get("params")
    return isinstance(params, dict) and params.get("initial") is True


def parse_line(line: bytes, path: Path, corr: Correlator) -> dict[str, Any]:
    """A message from the daemon; :class:`ConnectionLost` if it is no JSON object, or a
    response to a request never sent on this connection."""
    try:
        msg = json.loads(line)
    except ValueError:
        msg = None
    if not isinstance(msg, dict):
        raise ConnectionLost(f"the daemon at {path} sent a malformed line: {line[:200]!r}")
    if "id" in msg and corr.never_sent(msg["id"]):
        raise ConnectionLost(
            f"{path} answered a request that was never sent (id {msg['id']!r}): "
            "is this the socket of a syncd daemon?"
        )
    return msg


def result_object(result: Any, method: str) -> dict[str, Any]:
    if not isinstance(result, dict):
        raise ClientError(f"unexpected result of {method}: {result!r}")
    return result


def result_field(result: Any, method: str, name: str) -> Any:
    obj = result_object(result, method)
    if name not in obj:
        raise ClientError(f"unexpected result of {method}: {result!r}")
    return obj[name]


def device_list(devices: Iterable[str]) -> builtins.list[str]:
    if isinstance(devices, str):
        raise TypeError("devices must be a list of device IDs, not one string")
    return builtins.list(devices)


def trust_params(
    device_id: str, name: str | None, addresses: Iterable[str] | None
) -> dict[str, Any]:
    params: dict[str, Any] = {"device_id": device_id}
    if name is not None:
        params["name"] = name
    if addresses is not None:
        if isinstance(addresses, str):
            raise TypeError("addresses must be a list of HOST:PORT strings, not one string")
        params["addresses"] = builtins.list(addresses)
    return params


def sync_params(ns: str, timeout_s: float | None) -> dict[str, Any]:
    return {"ns": ns} if timeout_s is None else {"ns": ns, "timeout_s": timeout_s}
