"""The messages of the peer protocol, and their CBOR form (protocol/SPEC.md §4, messages.cddl).

Every message is a CBOR array whose first element is its type number. The classes here are the
*events* of :class:`~syncd.sync.connection.Connection`: frozen, compared by value, and
validated on the way in (:func:`from_item` raises only RemoteProtocolError) and on the way out
(:func:`to_item` raises LocalProtocolError), so a message that encodes also decodes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import pairwise

from syncd.crdt.context import CausalContext
from syncd.names import MAX_NAME_BYTES
from syncd.sync import cbor
from syncd.sync.cbor import Item
from syncd.sync.errors import LocalProtocolError, ProtocolError, RemoteProtocolError

HELLO, CLOSE, PING, PONG, OFFER, SUMMARY, DELTAS, ACK = range(8)

MAX_VERSIONS = 16
MAX_REPLICA_BYTES = 64
MAX_DETAIL_BYTES = 1024
MAX_NAMESPACES = 4096
_REASON = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass(frozen=True, slots=True)
class Hello:
    """First message each way: the protocol versions this side speaks, ascending."""

    versions: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Close:
    """The sender is closing the connection; ``reason`` is machine-readable (SPEC §7)."""

    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Ping:
    """Liveness probe; the peer answers with a Pong carrying the same nonce."""

    nonce: int


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to a Ping."""

    nonce: int


@dataclass(frozen=True, slots=True)
class Offer:
    """The namespaces the sender shares with this peer (sorted); ``reply`` asks for the peer's."""

    namespaces: tuple[str, ...]
    reply: bool = False


NOTICE, CATCH_ME_UP, EXCHANGE = 0, 1, 2
"""Summary modes (SPEC §4.6): a notice only says what the sender holds; ``CATCH_ME_UP`` also
asks for what the context lacks; ``EXCHANGE`` asks for that and for the peer's summary."""


@dataclass(frozen=True, slots=True)
class Summary:
    """The sender's causal context of ``ns``, and what it wants done with it (``mode``)."""

    ns: str
    ctx: CausalContext
    mode: int = NOTICE


@dataclass(frozen=True, slots=True)
class Deltas:
    """A delta group: message number ``n`` of this direction's stream for ``ns``.

    ``entries`` are ``(key, encoded delta)``; ``covered`` holds the dot ranges that the sender
    vouches are now complete at the receiver (empty for live pushes; SPEC §5.4).
    """

    ns: str
    n: int
    entries: tuple[tuple[str, bytes], ...]
    covered: CausalContext = field(default_factory=CausalContext)


@dataclass(frozen=True, slots=True)
class Ack:
    """The receiver has durably applied delta group ``n`` of ``ns``."""

    ns: str
    n: int


Message = Hello | Close | Ping | Pong | Offer | Summary | Deltas | Ack


# -- validation helpers ------------------------------------------------------------------------


def _bad(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(what, reason="bad_message")


def _uint(x: Item, what: str, lo: int = 0, hi: int = cbor.MAX_UINT) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not lo <= x <= hi:
        raise _bad(f"{what} must be an integer in {lo}..{hi}")
    return x


def _text(x: Item, what: str, lo: int, hi: int) -> str:
    if not isinstance(x, str):
        raise _bad(f"{what} must be a text string")
    n = len(x.encode("utf-8"))
    if not lo <= n <= hi:
        raise _bad(f"{what} must be {lo}..{hi} bytes of UTF-8")
    return x


def _name(x: Item, what: str) -> str:
    s = _text(x, what, 1, MAX_NAME_BYTES)
    if "\x00" in s:
        raise _bad(f"{what} must not contain NUL")
    return s


def _bool(x: Item, what: str) -> bool:
    if not isinstance(x, bool):
        raise _bad(f"{what} must be a boolean")
    return x


def _array(x: Item, what: str) -> list[Item]:
    if not isinstance(x, list):
        raise _bad(f"{what} must be an array")
    return x


def _shape(item: list[Item], n: int, name: str) -> None:
    if len(item) != n:
        raise _bad(f"{name} must have {n} elements, not {len(item)}")


# -- causal contexts ---------------------------------------------------------------------------


def context_to_item(ctx: CausalContext) -> Item:
    """``[* [replica, [start, end, start, end, ...]]]``, replicas ascending."""
    out: list[Item] = []
    for r in ctx.replicas():
        rs = ctx.for_replica(r)
        assert rs is not None
        flat: list[Item] = []
        for s, e in rs.pairs():
            flat.append(s)
            flat.append(e)
        out.append([r, flat])
    return out


def context_from_item(x: Item, what: str) -> CausalContext:
    """Decode a context; SPEC §4.1: replicas strictly ascending, ranges sorted, disjoint and
    non-adjacent, counters >= 1 (one encoding per context)."""
    ctx = CausalContext()
    prev: str | None = None
    for entry in _array(x, what):
        pair = _array(entry, f"{what} entry")
        if len(pair) != 2:
            raise _bad(f"{what} entry must be [replica, ranges]")
        r = _text(pair[0], f"{what} replica", 1, MAX_REPLICA_BYTES)
        if prev is not None and r.encode("utf-8") <= prev.encode("utf-8"):
            raise _bad(f"{what} replicas must be strictly ascending")
        prev = r
        flat = _array(pair[1], f"{what} ranges")
        if not flat or len(flat) % 2:
            raise _bad(f"{what} ranges must be a non-empty list of start, end pairs")
        last_end = -1
        for i in range(0, len(flat), 2):
            s = _uint(flat[i], f"{what} range start", 1)
            e = _uint(flat[i + 1], f"{what} range end", 1)
            if e < s:
                raise _bad(f"{what} range ends before it starts")
            if s <= last_end + 1:
                raise _bad(f"{what} ranges must be ascending, disjoint and non-adjacent")
            last_end = e
            ctx.add_range(r, s, e)
    return ctx


# -- messages <-> items ------------------------------------------------------------------------


def to_item(msg: Message) -> Item:
    """The CBOR item of ``msg``; raises LocalProtocolError if ``msg`` is not valid to send."""
    try:
        item = _to_item(msg)
        from_item(item)  # one validator for both directions
    except RemoteProtocolError as e:
        raise LocalProtocolError(f"refusing to send an invalid message: {e}") from None
    return item


def _to_item(msg: Message) -> Item:
    if isinstance(msg, Hello):
        return [HELLO, list(msg.versions)]
    if isinstance(msg, Close):
        return [CLOSE, msg.reason, msg.detail]
    if isinstance(msg, Ping):
        return [PING, msg.nonce]
    if isinstance(msg, Pong):
        return [PONG, msg.nonce]
    if isinstance(msg, Offer):
        return [OFFER, list(msg.namespaces), msg.reply]
    if isinstance(msg, Summary):
        return [SUMMARY, msg.ns, context_to_item(msg.ctx), msg.mode]
    if isinstance(msg, Deltas):
        entries: list[Item] = [[k, d] for k, d in msg.entries]
        return [DELTAS, msg.ns, msg.n, entries, context_to_item(msg.covered)]
    if isinstance(msg, Ack):
        return [ACK, msg.ns, msg.n]
    raise LocalProtocolError(f"not a protocol message: {msg!r}")


def from_item(item: Item) -> Message:
    """Validate a decoded item as a message (SPEC §4); raises only RemoteProtocolError."""
    arr = _array(item, "a message")
    if not arr:
        raise _bad("a message must not be empty")
    kind = _uint(arr[0], "the message type")
    if kind == HELLO:
        # SPEC §3: later versions may append elements to the hello; they are ignored.
        if len(arr) < 2:
            raise _bad("hello must have at least 2 elements")
        vs = _array(arr[1], "hello versions")
        if not 1 <= len(vs) <= MAX_VERSIONS:
            raise _bad(f"hello must list 1..{MAX_VERSIONS} versions")
        versions = tuple(_uint(v, "a version", 1, 0xFFFF) for v in vs)
        if any(a >= b for a, b in pairwise(versions)):
            raise _bad("hello versions must be strictly ascending")
        return Hello(versions)
    if kind == CLOSE:
        _shape(arr, 3, "close")
        reason = _text(arr[1], "close reason", 1, 64)
        if not _REASON.fullmatch(reason):
            raise _bad("close reason must match [a-z][a-z0-9_]*")
        return Close(reason, _text(arr[2], "close detail", 0, MAX_DETAIL_BYTES))
    if kind in (PING, PONG):
        _shape(arr, 2, "ping" if kind == PING else "pong")
        nonce = _uint(arr[1], "nonce")
        return Ping(nonce) if kind == PING else Pong(nonce)
    if kind == OFFER:
        _shape(arr, 3, "offer")
        raw = _array(arr[1], "offer namespaces")
        if len(raw) > MAX_NAMESPACES:
            raise _bad(f"offer lists more than {MAX_NAMESPACES} namespaces")
        nss = tuple(_name(x, "a namespace") for x in raw)
        if any(a.encode() >= b.encode() for a, b in pairwise(nss)):
            raise _bad("offer namespaces must be strictly ascending")
        return Offer(nss, _bool(arr[2], "offer reply"))
    if kind == SUMMARY:
        _shape(arr, 4, "summary")
        ns = _name(arr[1], "namespace")
        ctx = context_from_item(arr[2], "summary context")
        return Summary(ns, ctx, _uint(arr[3], "summary mode", NOTICE, EXCHANGE))
    if kind == DELTAS:
        _shape(arr, 5, "deltas")
        ns = _name(arr[1], "namespace")
        n = _uint(arr[2], "delta group number", 1)
        entries: list[tuple[str, bytes]] = []
        seen: set[str] = set()
        for e in _array(arr[3], "delta entries"):
            pair = _array(e, "a delta entry")
            if len(pair) != 2:
                raise _bad("a delta entry must be [key, delta]")
            key = _name(pair[0], "a key")
            if key in seen:
                raise _bad("a key appears twice in one delta group")
            seen.add(key)
            delta = pair[1]
            if not isinstance(delta, bytes) or not delta:
                raise _bad("a delta must be a non-empty byte string")
            entries.append((key, delta))
        covered = context_from_item(arr[4], "covered")
        return Deltas(ns, n, tuple(entries), covered)
    if kind == ACK:
        _shape(arr, 3, "ack")
        ns = _name(arr[1], "namespace")
        return Ack(ns, _uint(arr[2], "acknowledged group number", 1))
    raise RemoteProtocolError(f"unknown message type {kind}", reason="unknown_message")


def encode_message(msg: Message) -> bytes:
    """The CBOR body of ``msg`` (no length prefix)."""
    return cbor.encode(to_item(msg))


def decode_message(body: bytes) -> Message:
    """Decode a frame body; raises only RemoteProtocolError."""
    try:
        return from_item(cbor.decode(body))
    except ProtocolError:
        raise
    except Exception as e:  # pragma: no cover - a bug; the fuzz tests look for these
        raise RemoteProtocolError(f"undecodable message: {e!r}", reason="bad_message") from e


__all__ = [
    "CATCH_ME_UP",
    "EXCHANGE",
    "NOTICE",
    "Ack",
    "Close",
    "Deltas",
    "Hello",
    "Message",
    "Offer",
    "Ping",
    "Pong",
    "Summary",
    "context_from_item",
    "context_to_item",
    "decode_message",
    "encode_message",
    "from_item",
    "to_item",
]
