"""Causal contexts: the set of dots a replica has seen, kept as ranges per replica.

The delta-CRDT paper keeps a causal context as a compact version vector plus a "dot cloud" of
dots that arrived out of order. Dots in syncd are counted per replica *per namespace*, so the
dots that belong to one document are not contiguous; a sorted list of disjoint inclusive
ranges per replica covers both cases: a version vector is one range ``[1, n]``, a cloud is a
few more ranges, and a document typed in bursts is one range per burst.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator

from syncd.crdt.dots import Dot, ReplicaId


class Ranges:
    """A set of positive integers as sorted, disjoint, non-adjacent inclusive ranges."""

    __slots__ = ("ends", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def copy(self) -> Ranges:
        r = Ranges()
        r.starts = self.starts.copy()
        r.ends = self.ends.copy()
        return r

    def __contains__(self, n: int) -> bool:
        i = bisect_right(self.starts, n) - 1
        return i >= 0 and self.ends[i] >= n

    def __len__(self) -> int:
        """How many integers the set holds."""
        return sum(self.ends) - sum(self.starts) + len(self.starts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ranges):
            return NotImplemented
        return self.starts == other.starts and self.ends == other.ends

    def __repr__(self) -> str:
        return "Ranges(" + ", ".join(f"{s}-{e}" for s, e in self.pairs()) + ")"

    def pairs(self) -> Iterator[tuple[int, int]]:
        return zip(self.starts, self.ends, strict=True)

    def max(self) -> int:
        """The largest member, 0 when empty."""
        return self.ends[-1] if self.ends else 0

    def prefix(self) -> int:
        """``n`` such that ``1..n`` all belong (the version-vector entry); 0 if 1 is absent."""
        if self.starts and self.starts[0] == 1:
            return self.ends[0]
        return 0

    def add(self, n: int) -> None:
        """Add one integer (fast when it extends the last range, the common case)."""
        ends = self.ends
        if ends and ends[-1] + 1 == n:
            ends[-1] = n
            return
        self.add_range(n, n)

    def add_range(self, start: int, end: int) -> None:
        """Add ``start..end`` inclusive."""
        if start > end:
            return
        starts, ends = self.starts, self.ends
        if not ends or start > ends[-1] + 1:
            starts.append(start)
            ends.append(end)
            return
        if start == ends[-1] + 1:
            ends[-1] = end
            return
        # First range that could touch [start, end]: its end >= start - 1.
        i = bisect_left(ends, start - 1)
        # Ranges i..j-1 overlap or touch; j is the first whose start > end + 1.
        j = bisect_right(starts, end + 1)
        if i == j:
            starts.insert(i, start)
            ends.insert(i, end)
            return
        new_start = min(start, starts[i])
        new_end = max(end, ends[j - 1])
        starts[i:j] = [new_start]
        ends[i:j] = [new_end]

    def remove_range(self, start: int, end: int) -> None:
        """Remove ``start..end`` inclusive."""
        if start > end or not self.starts:
            return
        starts, ends = self.starts, self.ends
        i = bisect_left(ends, start)
        j = bisect_right(starts, end)
        if i >= j:
            return
        new_s: list[int] = []
        new_e: list[int] = []
        if starts[i] < start:
            new_s.append(starts[i])
            new_e.append(start - 1)
        if ends[j - 1] > end:
            new_s.append(end + 1)
            new_e.append(ends[j - 1])
        starts[i:j] = new_s
        ends[i:j] = new_e

    def update(self, other: Ranges) -> None:
        """Union in place."""
        if not self.starts:
            self.starts = other.starts.copy()
            self.ends = other.ends.copy()
            return
        for s, e in other.pairs():
            self.add_range(s, e)

    def overlapping(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """The parts of ``start..end`` that belong to the set, in order."""
        starts, ends = self.starts, self.ends
        i = bisect_left(ends, start)
        n = len(starts)
        while i < n and starts[i] <= end:
            yield max(start, starts[i]), min(end, ends[i])
            i += 1

    def missing(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """The parts of ``start..end`` that do not belong to the set, in order."""
        cur = start
        for s, e in self.overlapping(start, end):
            if s > cur:
                yield cur, s - 1
            cur = e + 1
        if cur <= end:
            yield cur, end


class CausalContext:
    """The dots seen, as :class:`Ranges` per replica. Join is union."""

    __slots__ = ("_by_replica",)

    def __init__(self) -> None:
        self._by_replica: dict[ReplicaId, Ranges] = {}

    @classmethod
    def from_dots(cls, dots: Iterable[Dot]) -> CausalContext:
        ctx = cls()
        for r, n in dots:
            ctx.add(r, n)
        return ctx

    @classmethod
    def from_ranges(cls, ranges: Iterable[tuple[ReplicaId, int, int]]) -> CausalContext:
        ctx = cls()
        for r, s, e in ranges:
            ctx.add_range(r, s, e)
        return ctx

    def copy(self) -> CausalContext:
        ctx = CausalContext()
        ctx._by_replica = {r: rs.copy() for r, rs in self._by_replica.items()}
        return ctx

    def __contains__(self, dot: Dot) -> bool:
        rs = self._by_replica.get(dot[0])
        return rs is not None and dot[1] in rs

    def has(self, replica: ReplicaId, counter: int) -> bool:
        rs = self._by_replica.get(replica)
        return rs is not None and counter in rs

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CausalContext):
            return NotImplemented
        return self._by_replica == other._by_replica

    def __repr__(self) -> str:
        inner = ", ".join(f"{r}: {rs!r}" for r, rs in sorted(self._by_replica.items()))
        return "CausalContext({" + inner + "})"

    def __bool__(self) -> bool:
        return bool(self._by_replica)

    def size(self) -> int:
        """How many dots the context holds."""
        return sum(len(rs) for rs in self._by_replica.values())

    def replicas(self) -> list[ReplicaId]:
        return sorted(self._by_replica)

    def for_replica(self, replica: ReplicaId) -> Ranges | None:
        """The ranges seen from ``replica`` (do not mutate), or None."""
        return self._by_replica.get(replica)

    def max(self, replica: ReplicaId) -> int:
        rs = self._by_replica.get(replica)
        return rs.max() if rs is not None else 0

    def version_vector(self) -> dict[ReplicaId, int]:
        """The contiguous prefix ``1..n`` per replica (replicas without dot 1 omitted)."""
        return {r: p for r, rs in self._by_replica.items() if (p := rs.prefix())}

    def add(self, replica: ReplicaId, counter: int) -> None:
        rs = self._by_replica.get(replica)
        if rs is None:
            rs = self._by_replica[replica] = Ranges()
        ends = rs.ends
        if ends and ends[-1] + 1 == counter:
            ends[-1] = counter
        else:
            rs.add_range(counter, counter)

    def add_range(self, replica: ReplicaId, start: int, end: int) -> None:
        if start > end:
            return
        rs = self._by_replica.get(replica)
        if rs is None:
            rs = self._by_replica[replica] = Ranges()
        ends = rs.ends
        if ends and ends[-1] + 1 == start:
            ends[-1] = end
        else:
            rs.add_range(start, end)

    def remove_range(self, replica: ReplicaId, start: int, end: int) -> None:
        rs = self._by_replica.get(replica)
        if rs is None:
            return
        rs.remove_range(start, end)
        if not rs.starts:
            del self._by_replica[replica]

    def update(self, other: CausalContext) -> None:
        """Join ``other`` into this context."""
        for r, ors in other._by_replica.items():
            rs = self._by_replica.get(r)
            if rs is None:
                self._by_replica[r] = ors.copy()
            else:
                rs.update(ors)

    def ranges(self) -> Iterator[tuple[ReplicaId, int, int]]:
        """Every range as ``(replica, start, end)``, replicas sorted."""
        for r in sorted(self._by_replica):
            for s, e in self._by_replica[r].pairs():
                yield r, s, e

    def dots(self) -> Iterator[Dot]:
        for r, s, e in self.ranges():
            for n in range(s, e + 1):
                yield (r, n)

    def difference(self, other: CausalContext) -> CausalContext:
        """The dots of this context that ``other`` lacks."""
        out = CausalContext()
        for r, rs in self._by_replica.items():
            ors = other._by_replica.get(r)
            for s, e in rs.pairs():
                if ors is None:
                    out.add_range(r, s, e)
                else:
                    for ms, me in ors.missing(s, e):
                        out.add_range(r, ms, me)
        return out

    def includes(self, other: CausalContext) -> bool:
        """True when every dot of ``other`` is in this context."""
        for r, ors in other._by_replica.items():
            rs = self._by_replica.get(r)
            if rs is None:
                return False
            for s, e in ors.pairs():
                if next(rs.missing(s, e), None) is not None:
                    return False
        return True
