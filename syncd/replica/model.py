"""The values the replica takes and returns: writes, changes, snapshots, devices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from syncd.crdt.document import Document
from syncd.names import name_problem
from syncd.replica.errors import InvalidKeyError

LOCAL = "local"
"""The ``origin`` of a change made on this device."""


@dataclass(frozen=True, slots=True)
class Put:
    """Make the document equal to ``value`` (a JSON object), per the contract's put semantics."""

    value: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Patch:
    """Apply operations atomically: the ``ops`` array as JSON, or already parsed."""

    ops: list[Any]


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete the document."""


Write = Put | Patch | Delete


@dataclass(slots=True)  # not frozen: one is made per write, and frozen ones cost 4x to make
class Change:
    """One committed change to one document, as the change feed and the writers see it.

    Treat it, and its ``delta``, as read-only: the same object goes to every listener.
    ``delta`` is what a peer must join to get the change (None when the write changed
    nothing, e.g. deleting an absent document). ``value`` is the
    document rendered after the change (None when deleted or absent, or when the store was
    told nobody wants it: ``Store.wants_value``). ``dots`` is, for a local change, the range of
    counters it took from this replica's dot counter. ``exists``: whether the document exists
    after the change.
    """

    ns: str
    key: str
    value: dict[str, Any] | None
    origin: str
    existed: bool
    delta: Document | None
    dots: tuple[int, int] | None = None
    exists: bool = True

    @property
    def deleted(self) -> bool:
        """True when the document does not exist after the change."""
        return not self.exists


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A document as read: ``value`` is None when absent or deleted."""

    ns: str
    key: str
    value: dict[str, Any] | None
    conflicts: list[dict[str, Any]] | None = None

    @property
    def exists(self) -> bool:
        """True when the document exists."""
        return self.value is not None


@dataclass(frozen=True, slots=True)
class Device:
    """A trusted device: its ID, optional name, static addresses, last time seen (Unix)."""

    device_id: str
    name: str | None
    addresses: tuple[str, ...]
    last_seen: float | None


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    """A namespace, the devices it is shared with and how many documents exist in it."""

    name: str
    devices: tuple[str, ...]
    documents: int


def check_name(what: str, name: object) -> str:
    """Validate a namespace name or document key and return it.

    Any non-empty string of valid Unicode (no surrogates, no NUL) up to
    1024 UTF-8 bytes is accepted (:mod:`syncd.names`).
    """
    problem = name_problem(name)
    if problem is not None:
        raise InvalidKeyError(f"{what} {problem}")
    assert isinstance(name, str)
    return name


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (None: none)."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        nxt = last + 1
        if nxt == 0xD800:
            nxt = 0xE000
        if nxt <= 0x10FFFF:
            return "".join(chars) + chr(nxt)
    return None
