"""Dots: the unique names of events, and the counter that hands them out.

A dot is ``(replica, counter)``: the ``counter``-th event made by ``replica`` in one namespace.
Dots are never reused; the replica that owns a :class:`DotCounter` persists its position
atomically with the state it wrote (see docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass

ReplicaId = str
Dot = tuple[ReplicaId, int]


@dataclass(slots=True)
class DotCounter:
    """Hands out fresh dots for one replica: counters ``next``, ``next + 1``, ..."""

    replica: ReplicaId
    next: int = 1

    def take(self, n: int = 1) -> int:
        """Reserve ``n`` consecutive counters and return the first."""
        if n < 1:
            raise ValueError("take() needs n >= 1")
        first = self.next
        self.next = first + n
        return first

    def dot(self) -> Dot:
        """One fresh dot."""
        return (self.replica, self.take())
