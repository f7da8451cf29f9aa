"""What the sync engine needs from a replica (docs/architecture.md, "The sync engine's view of
the replica"), as a :class:`typing.Protocol`.

The SQLite replica (``syncd/replica/``) and the in-memory :class:`~syncd.sync.memory.
MemoryReplica` used by the simulator both provide it. Everything is per namespace; the engine
never writes documents except through :meth:`SyncReplica.apply_remote`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from syncd.crdt.context import CausalContext
from syncd.crdt.document import Document
from syncd.crdt.dots import ReplicaId

IndexRow = tuple[int, int, str]
"""``(lo, hi, key)``: the document ``key`` holds dots ``lo..hi`` of some replica."""


class SyncReplica(Protocol):
    """The replica as the sync engine sees it."""

    def context(self, ns: str) -> CausalContext:
        """The namespace's causal context (the union of its documents' contexts, deleted
        documents included). The engine does not mutate it, and reads it anew each time."""
        ...

    def index_rows(self, ns: str, replica: ReplicaId, lo: int, hi: int) -> Iterable[IndexRow]:
        """The dot-index rows of ``replica`` that overlap ``lo..hi``, ascending.

        A row is one maximal range of one document's context; rows never overlap, because a
        dot belongs to one document only. Rows must reflect every committed change.
        """
        ...

    def load(self, ns: str, key: str) -> Document | None:
        """The document's current state (deleted documents included), or None if never seen.
        The engine does not mutate it."""
        ...

    def apply_remote(
        self, ns: str, batch: Sequence[tuple[str, Document]], origin: str
    ) -> list[tuple[str, Document]]:
        """Join each ``(key, delta)`` received from peer ``origin`` into its document.

        Must be durable when it returns (the engine acknowledges the batch right after), and
        should commit the batch in one transaction. Returns, for each delta that changed
        something, the part that was new (``delta.delta_since(ctx_before)``): the engine
        buffers only that part for relaying (Enes et al., "remove redundant state").
        Raises :class:`syncd.errors.InvalidDeltaError`, with nothing of the batch applied,
        for a delta it refuses (the engine closes the connection: ``bad_delta``).
        """
        ...

    def load_peer_state(self, peer: str, ns: str) -> bytes | None:
        """Opaque per-peer sync metadata saved by :meth:`save_peer_state`, or None."""
        ...

    def save_peer_state(self, peer: str, ns: str, data: bytes) -> None:
        """Persist ``data`` for ``(peer, ns)`` (may be batched with the next commit)."""
        ...


__all__ = ["IndexRow", "SyncReplica"]
