"""Joining one Fugue sequence into another (the merge half of :mod:`syncd.crdt.sequence`)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator
from typing import Any

from syncd.crdt._seqtree import Piece, Run, SeqCore
from syncd.crdt.context import CausalContext, Ranges

Range = tuple[str, int, int]


class SeqJoin(SeqCore):
    """The causal join; see :meth:`syncd.crdt.sequence.Sequence.join` for the rule."""

    __slots__ = ()

    def _join_all(self, other: SeqCore, self_ctx: CausalContext, other_ctx: CausalContext) -> bool:
        """The general join (``other`` materialised)."""
        changed = False
        new: list[Run] = []
        for rep, oidx in other._index.items():
            sidx = self._index.get(rep)
            srs = self_ctx.for_replica(rep)
            ors = other_ctx.for_replica(rep)
            for orun in oidx.runs:
                s0, e0 = orun.start, orun.start + orun.n - 1
                if sidx is None:
                    new.append(self._copy_part(orun, s0, e0, srs))
                    continue
                for s, e, srun in list(sidx.parts(s0, e0)):
                    if srun is None:
                        new.append(self._copy_part(orun, s, e, srs))
                    elif self._reconcile(srun, orun, s, e, srs, ors):
                        changed = True

        def lacks(rep: str, a: int, b: int) -> Iterator[tuple[int, int]]:
            oix = other._index.get(rep)
            if oix is None:
                yield a, b
            else:
                for u, v, orr in oix.parts(a, b):
                    if orr is None:
                        yield u, v

        if self._kill_removed(other_ctx, lacks):
            changed = True
        for nr in new:
            self._add_run(nr)
            changed = True
        if changed:
            self._cb = self._co = 0
        return changed

    def _join_one(
        self, lz: tuple[str, int, int, Any, Any, bool], self_ctx: CausalContext, octx: CausalContext
    ) -> bool | None:
        """:meth:`join` of a lazy one-run sequence in the common cases (new nodes, or a
        removal of nodes held here); None for the general path."""
        rep, s, n, val, pdot, side = lz
        e = s + n - 1
        sidx = self._index.get(rep)
        x: Run | None = None
        changed = False
        if sidx is None or next(sidx.overlapping(s, e), None) is None:
            srs = self_ctx.for_replica(rep)
            if val is not None and srs is not None and next(srs.overlapping(s, e), None):
                return None
            x = Run(rep, s, n, pdot, side)
            x.pieces = [Piece(x, s, n, val if self.is_text or val is None else list(val), None)]
            x.pstarts = [s]
        else:
            r = sidx.find(s)
            if r is None or e >= r.start + r.n:
                return None
            if val is None:
                ors = octx.for_replica(rep)
                if ors is not None:
                    out: list[Range] = []
                    for a, b in list(ors.overlapping(s, e)):
                        self._kill(r, a, b, out)
                    changed = bool(out)
            else:
                srs = self_ctx.for_replica(rep)
                if srs is None or next(srs.missing(s, e), None) is not None:
                    return None

        def lacks(rp: str, a: int, b: int) -> Iterator[tuple[int, int]]:
            if rp != rep or b < s or a > e:
                yield a, b
                return
            if a < s:
                yield a, s - 1
            if b > e:
                yield e + 1, b

        if self._kill_removed(octx, lacks):
            changed = True
        if x is not None:
            self._add_run(x)
            changed = True
        if changed:
            self._cb = self._co = 0
        return changed

    def _kill_removed(
        self, octx: CausalContext, lacks: Callable[[str, int, int], Iterator[tuple[int, int]]]
    ) -> list[Range]:
        """Kill the live dots here that are in ``octx`` but that the other side lacks
        (``lacks(rep, a, b)``: the parts of ``a..b`` it does not hold): removed there.
        Returns the ranges killed."""
        out: list[Range] = []
        for rep, sidx in self._index.items():
            ors = octx.for_replica(rep)
            if ors is None:
                continue
            last = sidx.runs[-1]
            for s, e in list(ors.overlapping(sidx.starts[0], last.start + last.n - 1)):
                for r in list(sidx.overlapping(s, e)):
                    a, b = max(s, r.start), min(e, r.start + r.n - 1)
                    for u, v in list(lacks(rep, a, b)):
                        self._kill(r, u, v, out)
        return out

    def _copy_part(self, orun: Run, s: int, e: int, srs: Ranges | None) -> Run:
        """A new run for counters ``s..e`` of ``orun`` (from another sequence); nodes whose dot
        is in ``srs`` (seen here already, so removed here) are dead."""
        pdot = orun.pdot if s == orun.start else (orun.rep, s - 1)
        x = Run(orun.rep, s, e - s + 1, pdot, orun.side if s == orun.start else True)
        pieces: list[Piece] = []

        def add(a: int, b: int, val: Any) -> None:
            if val is None and pieces and pieces[-1].val is None:
                pieces[-1].n += b - a + 1
            else:
                pieces.append(Piece(x, a, b - a + 1, val, None))

        for p in self._slices(orun, s, e):
            a, b = max(s, p.start), min(e, p.start + p.n - 1)
            if p.val is None:
                add(a, b, None)
                continue
            cur = a
            if srs is not None:
                for x1, y1 in srs.overlapping(a, b):
                    if x1 > cur:
                        add(cur, x1 - 1, p.val[cur - p.start : x1 - p.start])
                    add(x1, y1, None)
                    cur = y1 + 1
            if cur <= b:
                add(cur, b, p.val[cur - p.start : b - p.start + 1])
        x.pieces = pieces
        x.pstarts = [p.start for p in pieces]
        return x

    @staticmethod
    def _slices(r: Run, s: int, e: int) -> Iterator[Piece]:
        """The pieces of run ``r`` overlapping ``s..e``."""
        pieces = r.pieces
        i = max(bisect_right(r.pstarts, s) - 1, 0)
        while i < len(pieces) and pieces[i].start <= e:
            p = pieces[i]
            if p.start + p.n > s:
                yield p
            i += 1

    def _reconcile(
        self, srun: Run, orun: Run, s: int, e: int, srs: Ranges | None, ors: Ranges | None
    ) -> bool:
        """Liveness of the shared nodes ``s..e`` (in ``srun`` here, ``orun`` there)."""
        changed = False
        out: list[Range] = []
        for p in list(self._slices(orun, s, e)):
            a, b = max(s, p.start), min(e, p.start + p.n - 1)
            if p.val is not None:
                gaps = [(a, b)] if srs is None else list(srs.missing(a, b))
                for x, y in gaps:
                    if self._revive(srun, x, y, p.val, p.start):
                        changed = True
            elif ors is not None:
                for x, y in list(ors.overlapping(a, b)):
                    self._kill(srun, x, y, out)
        return changed or bool(out)
