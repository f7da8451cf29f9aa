"""The daemon's view of the replica: the async interface its request handlers call.

The JSON-RPC layer depends only on :class:`Store` (and :class:`Network` for peers), never on a
concrete database, so it is tested against an in-memory store and run against the SQLite
replica through an adapter (:mod:`syncd.daemon.replica_store`). docs/architecture.md, "The
daemon's view of the replica", describes the same contract.

Errors: a store raises :class:`syncd.errors.SyncdError` subclasses whose ``reason`` becomes the
JSON-RPC ``error.data.reason`` (``InvalidOperation`` means bad params, -32602; anything else
derived from ``SyncdError`` is -32000). Any other exception is a bug (-32603, logged).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

JSONObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class DocumentView:
    """A rendered document; ``conflicts`` is filled only when asked for."""

    exists: bool
    value: JSONObject | None
    conflicts: list[JSONObject] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Change:
    """One committed change of one document, as watchers see it."""

    ns: str
    key: str
    value: JSONObject | None
    deleted: bool
    origin: str  # "local" or the device ID the change came from


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A trusted device as the store keeps it."""

    device_id: str
    name: str | None
    addresses: tuple[str, ...] = ()
    last_seen: float | None = None  # Unix time


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    """A namespace: the devices it is shared with and how many documents it holds."""

    ns: str
    devices: tuple[str, ...]
    documents: int


ChangeListener = Callable[[Change], None]


class Store(Protocol):
    """What the daemon needs from the replica. Every write returns once it is durable."""

    async def get(self, ns: str, key: str, *, conflicts: bool = False) -> DocumentView:
        """The document (``exists=False, value=None`` when absent)."""
        ...

    async def put(self, ns: str, key: str, value: JSONObject) -> None:
        """Make the document equal to ``value`` (put semantics); durable on return."""
        ...

    async def patch(self, ns: str, key: str, ops: list[Any]) -> None:
        """Apply JSON ops atomically; durable on return. Raises InvalidOperation/PatchError."""
        ...

    async def delete(self, ns: str, key: str) -> bool:
        """Delete the document; returns whether it existed. Durable on return."""
        ...

    async def list_keys(self, ns: str, prefix: str = "") -> list[str]:
        """Keys of the existing documents of ``ns`` that start with ``prefix``, sorted."""
        ...

    async def namespaces(self) -> list[NamespaceInfo]:
        """Every namespace that has documents or is shared with a device, sorted by name."""
        ...

    async def devices(self) -> list[DeviceRecord]:
        """The trusted devices, sorted by ID."""
        ...

    async def trust(
        self, device_id: str, name: str | None, addresses: Sequence[str] | None
    ) -> None:
        """Trust a device, or update it: a ``name`` or ``addresses`` of None keeps the
        device's own (none for a new one), in the same write. ``device_id`` is canonical."""
        ...

    async def untrust(self, device_id: str) -> bool:
        """Forget a device and its shares; returns whether it was trusted."""
        ...

    async def share(self, ns: str, devices: Sequence[str]) -> None:
        """Share ``ns`` with trusted devices; raises ``SyncdError(reason="not_trusted")``."""
        ...

    async def unshare(self, ns: str, devices: Sequence[str]) -> None:
        """Stop sharing ``ns`` with devices (no error if it was not shared)."""
        ...

    @property
    def commits_fast(self) -> bool:
        """Whether a write now commits within a few milliseconds (the disk keeps up).

        The server then handles a lone request in the connection's reader; otherwise each
        request gets a task, so that a slow commit does not hold up the connection's next
        requests.
        """
        ...

    @property
    def problem(self) -> str | None:
        """What is wrong with the store now, in one line (e.g. commits failing), or None."""
        ...

    def on_problem(self, listener: Callable[[str | None], None] | None) -> None:
        """Call ``listener(problem)`` (in the trio thread, must not block) whenever
        :attr:`problem` starts or ends; None: no more calls."""
        ...

    def set_value_filter(self, wants: Callable[[str, str], bool] | None) -> None:
        """Give changes a ``value`` only when ``wants(ns, key)`` (any thread; quick); the others
        carry ``value`` None and ``deleted`` still right. None: every change."""
        ...

    def add_change_listener(self, listener: ChangeListener) -> Callable[[], None]:
        """Call ``listener`` (in the trio thread, must not block) after every committed change.

        Returns a function that removes the listener. Changes are reported in commit order.
        """
        ...


class Network(Protocol):
    """What the daemon needs from the peer layer (5/8); :class:`NoNetwork` until then."""

    def connected(self) -> frozenset[str]:
        """Device IDs with a live, authenticated connection."""
        ...

    def pending(self) -> list[JSONObject]:
        """Unknown devices that tried to connect or were discovered."""
        ...

    async def wait_synced(
        self, ns: str, devices: Sequence[str], timeout_s: float
    ) -> tuple[list[str], list[str]]:
        """Wait until ``devices`` acknowledged every local change of ``ns``.

        Returns (acked_by, pending) when all acknowledged or after ``timeout_s``.
        """
        ...


class NoNetwork:
    """The peer layer before transport exists: nobody is connected, nothing is pending."""

    def connected(self) -> frozenset[str]:
        """Nobody."""
        return frozenset()

    def pending(self) -> list[JSONObject]:
        """Nothing."""
        return []

    async def wait_synced(
        self, ns: str, devices: Sequence[str], timeout_s: float
    ) -> tuple[list[str], list[str]]:
        """Nothing connected to wait for: returns at once."""
        return [], list(devices)
