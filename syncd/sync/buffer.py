"""The delta buffer of one namespace: Algorithm 2 of Almeida et al. (2018) with the fixes of
Enes et al., "Efficient Synchronization of State-based CRDTs" (ICDE 2019).

Every change that reaches the replica, made here or received from a peer, is appended with the
next sequence number. Each connected peer has a pointer into the buffer (what was pushed) and
the engine's ack map says what it acknowledged; entries every connected peer acknowledged are
garbage-collected. The two fixes:

- *avoid back-propagation* (BP): an entry remembers its ``origin``, and is never pushed back
  to the peer it came from;
- *remove redundant state* (RR): a received delta is buffered only for the part that was new
  to this replica (:meth:`~syncd.sync.replica.SyncReplica.apply_remote` returns it), so a
  delta that arrives twice by two paths is relayed at most once.

A peer that disconnects leaves the ack map: when it returns it catches up from its causal
context (SPEC §5.3), so the buffer never grows for an absent peer, and trimming the buffer
(by size) loses nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from syncd.crdt.codec import encode_document
from syncd.crdt.context import CausalContext
from syncd.crdt.document import Document


@dataclass(slots=True)
class BufferedDelta:
    """One buffered change: ``delta`` of document ``key``, ``origin`` None when local."""

    seq: int
    key: str
    delta: Document
    data: bytes
    origin: str | None
    time: float

    @property
    def ctx(self) -> CausalContext:
        """The dots the change covers."""
        return self.delta.ctx


class DeltaBuffer:
    """Buffered deltas of one namespace, by sequence number."""

    __slots__ = ("_entries", "next_seq", "size")

    def __init__(self) -> None:
        self._entries: deque[BufferedDelta] = deque()
        self.next_seq = 1
        self.size = 0
        """Total encoded bytes held."""

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def first_seq(self) -> int:
        """The sequence number of the oldest entry held (``next_seq`` when empty)."""
        return self._entries[0].seq if self._entries else self.next_seq

    def append(self, key: str, delta: Document, origin: str | None, now: float) -> BufferedDelta:
        """Buffer a change and give it the next sequence number."""
        entry = BufferedDelta(self.next_seq, key, delta, encode_document(delta), origin, now)
        self.next_seq += 1
        self._entries.append(entry)
        self.size += len(entry.data)
        return entry

    def since(self, seq: int) -> Iterator[BufferedDelta]:
        """Entries with sequence number ``>= seq``, oldest first."""
        entries = self._entries
        if not entries:
            return
        start = max(0, seq - entries[0].seq)
        for i in range(start, len(entries)):
            yield entries[i]

    def gc(self, upto: int) -> None:
        """Drop entries with sequence number ``<= upto`` (acknowledged by every peer)."""
        entries = self._entries
        while entries and entries[0].seq <= upto:
            self.size -= len(entries.popleft().data)

    def trim(self, max_bytes: int) -> int:
        """Drop the oldest entries until at most ``max_bytes`` are held; the last seq dropped
        (0 if none)."""
        dropped = 0
        entries = self._entries
        while entries and self.size > max_bytes:
            e = entries.popleft()
            self.size -= len(e.data)
            dropped = e.seq
        return dropped


__all__ = ["BufferedDelta", "DeltaBuffer"]
