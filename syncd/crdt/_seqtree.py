"""The data structure under :class:`syncd.crdt.sequence.Sequence` (see that module first).

Three kinds of object:

- :class:`Run`: nodes ``(rep, start) .. (rep, start + n - 1)``; the first is the ``side`` child
  of ``pdot`` (``None`` = the root), each later one the right child of the one before. Runs
  never change shape except to grow at their end. ``kids`` holds, per counter ``c`` of the run,
  the runs placed as right children of node ``c`` under key ``c`` and as left children under
  key ``-c``, each list sorted by dot; the implicit "next item of the run" is not listed.
- :class:`Piece`: a slice of one run that is contiguous in the document order and all live
  (``val`` is the ``str`` or ``list`` of its values) or all dead (``val is None``: dead values
  are dropped). A run's pieces, by counter, are ``run.pieces`` with starts ``run.pstarts``.
- :class:`Block`: a chunk of at most ``MAX_BLOCK`` consecutive pieces with their visible
  length. ``SeqCore._blocks`` is the whole document order (live and dead nodes), so finding a
  visible index sums block lengths (from a cursor cache) and then piece lengths in one block.

Runs whose parent is missing (or not placed yet) are "pending": indexed, not in any block,
listed in ``_pending`` under their parent's dot, and placed as soon as the parent is.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from itertools import accumulate
from typing import Any

from syncd.crdt.dots import Dot

MAX_BLOCK = 32


def _key(r: Run) -> tuple[str, int]:
    return (r.rep, r.start)


class Run:
    """A run of nodes with consecutive counters from one replica (see module docstring)."""

    __slots__ = ("kids", "n", "pdot", "pieces", "placed", "pstarts", "rep", "side", "start")

    def __init__(self, rep: str, start: int, n: int, pdot: Dot | None, side: bool) -> None:
        self.rep = rep
        self.start = start
        self.n = n
        self.pdot = pdot
        self.side = side  # True: right child
        self.kids: dict[int, list[Run]] | None = None
        self.pieces: list[Piece] = []
        self.pstarts: list[int] = []
        self.placed = False

    def __repr__(self) -> str:
        s = "R" if self.side else "L"
        return f"Run({self.rep}:{self.start}+{self.n} <{s} {self.pdot})"

    def piece_at(self, c: int) -> Piece:
        return self.pieces[bisect_right(self.pstarts, c) - 1]


class Piece:
    """A slice of a run, contiguous in document order, all live or all dead."""

    __slots__ = ("blk", "n", "run", "start", "val")

    def __init__(self, run: Run, start: int, n: int, val: Any, blk: Block | None) -> None:
        self.run = run
        self.start = start
        self.n = n
        self.val = val  # str / list of values, or None when dead
        self.blk = blk

    def __repr__(self) -> str:
        return f"Piece({self.run.rep}:{self.start}+{self.n} {self.val!r})"


class Block:
    """Consecutive pieces of the document order and their visible length."""

    __slots__ = ("items", "vis")

    def __init__(self, items: list[Piece], vis: int) -> None:
        self.items = items
        self.vis = vis


class RepIndex:
    """One replica's runs, sorted by start counter (disjoint)."""

    __slots__ = ("runs", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.runs: list[Run] = []

    def find(self, c: int) -> Run | None:
        i = bisect_right(self.starts, c) - 1
        if i >= 0:
            r = self.runs[i]
            if c < r.start + r.n:
                return r
        return None

    def add(self, r: Run) -> None:
        starts = self.starts
        if not starts or starts[-1] < r.start:
            starts.append(r.start)
            self.runs.append(r)
        else:
            i = bisect_right(starts, r.start)
            starts.insert(i, r.start)
            self.runs.insert(i, r)

    def overlapping(self, s: int, e: int) -> Iterator[Run]:
        """Runs holding any counter of ``s..e``, in order."""
        starts, runs = self.starts, self.runs
        i = max(bisect_right(starts, s) - 1, 0)
        n = len(runs)
        while i < n:
            r = runs[i]
            if r.start > e:
                return
            if r.start + r.n > s:
                yield r
            i += 1

    def parts(self, s: int, e: int) -> Iterator[tuple[int, int, Run | None]]:
        """``s..e`` cut into maximal parts, each inside one run (or None where no run is)."""
        cur = s
        for r in self.overlapping(s, e):
            if r.start > cur:
                yield cur, r.start - 1, None
                cur = r.start
            end = min(e, r.start + r.n - 1)
            yield cur, end, r
            cur = end + 1
        if cur <= e:
            yield cur, e, None


class SeqCore:
    """Structure and placement for :class:`~syncd.crdt.sequence.Sequence`."""

    __slots__ = (
        "_blocks",
        "_cb",
        "_co",
        "_index",
        "_len",
        "_lz",
        "_pending",
        "_root",
        "_ti",
        "_tp",
    )
    is_text: bool

    def _init(self) -> None:
        self._lz: tuple[str, int, int, Any, Any, bool] | None = None
        self._blocks: list[Block] = []
        self._len = 0
        self._index: dict[str, RepIndex] = {}
        self._root: list[Run] = []  # runs whose parent is the root, sorted by dot
        self._pending: dict[str, dict[int, list[Run]]] = {}  # parent dot -> waiting runs
        self._cb = 0  # cursor: a block index and the visible offset where it starts
        self._co = 0
        self._tp: Piece | None = None  # typing cursor: see Sequence.insert
        self._ti = 0

    # -- lookup ------------------------------------------------------------------------------

    def release(self) -> None:
        """Break the cycles of the structure (each piece points back to its run and its
        block) so that reference counting frees it. The sequence can still be read and
        encoded, not changed (the back references are gone: a change raises
        ``AttributeError``). Releasing again does nothing."""
        for idx in self._index.values() if self._lz is None else ():
            for run in idx.runs:
                for piece in run.pieces:
                    if hasattr(piece, "run"):
                        del piece.run, piece.blk
        self._tp = None

    def _find(self, rep: str, c: int) -> Run | None:
        idx = self._index.get(rep)
        return idx.find(c) if idx is not None else None

    def _runs(self) -> Iterator[Run]:
        """Every run, by replica then counter."""
        for rep in sorted(self._index):
            yield from self._index[rep].runs

    def _locate(self, i: int) -> tuple[Block, int, int]:
        """The block, piece index and offset in that piece of visible item ``i`` (< len)."""
        blocks = self._blocks
        bi, co = self._cb, self._co
        if bi >= len(blocks):
            bi = co = 0
        if i < co:
            if i < co // 4:
                bi = co = 0
            else:
                while i < co:
                    bi -= 1
                    co -= blocks[bi].vis
        if i - co >= 8192:
            # Far jump: prefix sums in C, then bisect.
            sums = list(accumulate([b.vis for b in blocks[bi:]], initial=co))
            j = bisect_right(sums, i) - 1
            bi += j
            co = sums[j]
        while True:
            v = blocks[bi].vis
            if i < co + v:
                break
            co += v
            bi += 1
        self._cb = bi
        self._co = co
        rem = i - co
        blk = blocks[bi]
        for pi, p in enumerate(blk.items):
            if p.val is not None:
                if rem < p.n:
                    return blk, pi, rem
                rem -= p.n
        raise AssertionError("block visible length out of sync")

    def _block_index(self, blk: Block) -> int:
        return self._blocks.index(blk)

    # -- the document order ------------------------------------------------------------------

    def _split(self, p: Piece, c: int) -> Piece:
        """Cut piece ``p`` before counter ``c`` (inside it); return the second part."""
        k = c - p.start
        val = p.val
        if val is not None:
            q = Piece(p.run, c, p.n - k, val[k:], p.blk)
            p.val = val[:k]
        else:
            q = Piece(p.run, c, p.n - k, None, p.blk)
        p.n = k
        run = p.run
        j = bisect_right(run.pstarts, p.start)
        run.pstarts.insert(j, c)
        run.pieces.insert(j, q)
        blk = p.blk
        if blk is not None:
            items = blk.items
            items.insert(items.index(p) + 1, q)
            if len(items) > MAX_BLOCK:
                self._split_block(blk)
        return q

    def _split_block(self, blk: Block) -> None:
        i = self._block_index(blk)
        items = blk.items
        half = len(items) // 2
        nb = Block(items[half:], 0)
        del items[half:]
        vis = 0
        for p in nb.items:
            p.blk = nb
            if p.val is not None:
                vis += p.n
        nb.vis = vis
        blk.vis -= vis
        self._blocks.insert(i + 1, nb)
        if self._cb > i:
            self._cb += 1

    def _insert_pieces(self, blk: Block, i: int, new: list[Piece]) -> None:
        blk.items[i:i] = new
        vis = 0
        for p in new:
            p.blk = blk
            if p.val is not None:
                vis += p.n
        blk.vis += vis
        self._len += vis
        if len(blk.items) > MAX_BLOCK:
            self._split_block(blk)

    def _ins_before(self, r: Run, c: int, new: list[Piece]) -> None:
        p = r.piece_at(c)
        if p.start < c:
            p = self._split(p, c)
        blk = p.blk
        assert blk is not None
        self._insert_pieces(blk, blk.items.index(p), new)

    def _ins_after(self, r: Run, c: int, new: list[Piece]) -> None:
        p = r.piece_at(c)
        if c < p.start + p.n - 1:
            self._split(p, c + 1)
        blk = p.blk
        assert blk is not None
        self._insert_pieces(blk, blk.items.index(p) + 1, new)

    # -- the tree ----------------------------------------------------------------------------

    @staticmethod
    def _leftmost(r: Run, c: int) -> tuple[Run, int]:
        """The first node, in document order, of the subtree of node ``(r, c)``."""
        while True:
            kids = r.kids
            if kids is None:
                return r, c
            left = kids.get(-c)
            if not left:
                return r, c
            r = left[0]
            c = r.start

    @staticmethod
    def _rightmost(r: Run, c: int) -> tuple[Run, int]:
        """The last node, in document order, of the subtree of node ``(r, c)``."""
        while True:
            end = r.start + r.n - 1
            kids = r.kids
            if not kids:
                return r, end
            for cc in sorted(k for k in kids if k >= c):
                m = kids[cc][-1]  # the greatest right child of (r, cc)
                if cc == end or (m.rep, m.start) > (r.rep, cc + 1):
                    r, c = m, m.start
                    break
            else:
                return r, end

    def _place(self, x: Run) -> None:
        """Put run ``x`` (whose parent is placed) in the document order, then its waiting kids."""
        stack = [x]
        pending = self._pending
        while stack:
            x = stack.pop()
            self._place_one(x)
            pr = pending.get(x.rep)
            if pr:
                s, e = x.start, x.start + x.n - 1
                if len(pr) <= x.n:
                    hits = [c for c in pr if s <= c <= e]
                else:
                    hits = [c for c in range(s, e + 1) if c in pr]
                for c in hits:
                    stack.extend(pr.pop(c))
                if not pr:
                    del pending[x.rep]

    def _place_one(self, x: Run) -> None:
        key = (x.rep, x.start)
        pdot = x.pdot
        x.placed = True
        if pdot is None:
            sibs = self._root
            i = bisect_right(sibs, key, key=_key)
            sibs.insert(i, x)
            if i + 1 < len(sibs):
                y = sibs[i + 1]
                self._ins_before(*self._leftmost(y, y.start), x.pieces)
            elif i > 0:
                w = sibs[i - 1]
                self._ins_after(*self._rightmost(w, w.start), x.pieces)
            else:
                if not self._blocks:
                    self._blocks.append(Block([], 0))
                self._insert_pieces(self._blocks[0], 0, x.pieces)
            return
        p = self._find(pdot[0], pdot[1])
        assert p is not None
        assert p.placed
        pc = pdot[1]
        side = x.side
        kids = p.kids
        if kids is None:
            kids = p.kids = {}
        slot = pc if side else -pc
        lst = kids.get(slot)
        if lst is None:
            lst = kids[slot] = [x]
            i = 0
        else:
            i = bisect_right(lst, key, key=_key)
            lst.insert(i, x)
        # The siblings around x on its side; a right child's include the run's next node.
        nxt: tuple[Run, int] | None = (lst[i + 1], lst[i + 1].start) if i + 1 < len(lst) else None
        prv: tuple[Run, int] | None = (lst[i - 1], lst[i - 1].start) if i else None
        if side and pc < p.start + p.n - 1:
            kk = (p.rep, pc + 1)
            if kk > key:
                if nxt is None or kk < (nxt[0].rep, nxt[1]):
                    nxt = (p, pc + 1)
            elif prv is None or kk > (prv[0].rep, prv[1]):
                prv = (p, pc + 1)
        if nxt is not None:
            self._ins_before(*self._leftmost(*nxt), x.pieces)
        elif not side:
            self._ins_before(p, pc, x.pieces)
        elif prv is not None:
            self._ins_after(*self._rightmost(*prv), x.pieces)
        else:
            self._ins_after(p, pc, x.pieces)

    def _add_run(self, x: Run) -> None:
        """Add run ``x`` (none of its dots known yet, pieces filled, not in any block)."""
        pdot = x.pdot
        if pdot is None:
            self._index_run(x)
            self._place(x)
            return
        p = self._find(pdot[0], pdot[1])
        if p is None or not p.placed:
            self._index_run(x)
            pr = self._pending.get(pdot[0])
            if pr is None:
                pr = self._pending[pdot[0]] = {}
            pr.setdefault(pdot[1], []).append(x)
            return
        pc = pdot[1]
        if (
            x.side
            and p.rep == x.rep
            and pc == x.start - 1
            and p.start + p.n == x.start
            and (p.kids is None or pc not in p.kids)  # no right child yet
        ):
            self._extend(p, x)
            return
        self._index_run(x)
        self._place(x)

    def _index_run(self, x: Run) -> None:
        idx = self._index.get(x.rep)
        if idx is None:
            idx = self._index[x.rep] = RepIndex()
        idx.add(x)

    def _extend(self, p: Run, x: Run) -> None:
        """Append run ``x`` to run ``p``, whose last node is its parent and has no right kids."""
        last = p.pieces[-1]
        p.n += x.n
        new = x.pieces
        for q in new:
            q.run = p
        first = new[0]
        if (first.val is None) == (last.val is None):
            # Same liveness: grow the last piece.
            if first.val is not None:
                last.val = last.val + first.val
                assert last.blk is not None
                last.blk.vis += first.n
                self._len += first.n
            last.n += first.n
            new = new[1:]
        if new:
            p.pieces.extend(new)
            p.pstarts.extend(q.start for q in new)
            blk = last.blk
            assert blk is not None
            self._insert_pieces(blk, blk.items.index(last) + 1, new)
        xs, xe = x.start, x.start + x.n - 1
        x.placed = True
        x.n = 0
        # Kids waiting for x's nodes now hang from p's.
        pr = self._pending.get(p.rep)
        if pr:
            if len(pr) <= xe - xs + 1:
                hits = [c for c in pr if xs <= c <= xe]
            else:
                hits = [c for c in range(xs, xe + 1) if c in pr]
            stack: list[Run] = []
            for c in hits:
                stack.extend(pr.pop(c))
            if not pr:
                del self._pending[p.rep]
            for k in stack:
                self._place(k)

    # -- liveness ----------------------------------------------------------------------------

    def _carve(self, r: Run, s: int, e: int, live: bool) -> Iterator[Piece]:
        """The pieces of run ``r`` within ``s..e`` that are live (or dead), split so that each
        lies inside ``s..e``; the caller may change a yielded piece's liveness."""
        pieces = r.pieces
        i = max(bisect_right(r.pstarts, s) - 1, 0)
        while i < len(pieces):
            p = pieces[i]
            if p.start > e:
                break
            if (p.val is not None) != live or p.start + p.n <= s:
                i += 1
                continue
            if p.start < s:
                p = self._split(p, s)
                i += 1
            if p.start + p.n - 1 > e:
                self._split(p, e + 1)
            yield p
            i += 1

    def _kill(self, r: Run, s: int, e: int, out: list[tuple[str, int, int]]) -> None:
        """Make dead the live nodes of run ``r`` within ``s..e``; append the ranges killed."""
        killed: list[Piece] = []
        for p in self._carve(r, s, e, live=True):
            p.val = None
            if p.blk is not None:
                p.blk.vis -= p.n
                self._len -= p.n
            if out and out[-1][0] == r.rep and out[-1][2] == p.start - 1:
                out[-1] = (r.rep, out[-1][1], p.start + p.n - 1)
            else:
                out.append((r.rep, p.start, p.start + p.n - 1))
            killed.append(p)
        for p in killed:
            if p.n:
                self._merge_dead(p)

    def _merge_dead(self, p: Piece) -> None:
        """Merge dead piece ``p`` with dead neighbours of the same run next to it in order."""
        r = p.run
        j = bisect_right(r.pstarts, p.start) - 1
        if j + 1 < len(r.pieces):
            q = r.pieces[j + 1]
            if q.val is None and self._adjacent(p, q):
                self._absorb(p, q, j + 1)
        if j > 0:
            q = r.pieces[j - 1]
            if q.val is None and self._adjacent(q, p):
                self._absorb(q, p, j)

    @staticmethod
    def _adjacent(p: Piece, q: Piece) -> bool:
        """Piece ``q`` (the next of ``p`` in its run) comes right after ``p`` in the order."""
        if p.start + p.n != q.start:
            return False
        blk = p.blk
        if blk is None:
            return q.blk is None
        if q.blk is not blk:
            return False
        items = blk.items
        i = items.index(p)
        return i + 1 < len(items) and items[i + 1] is q

    def _absorb(self, p: Piece, q: Piece, j: int) -> None:
        """Merge dead ``q`` (index ``j`` of the run's pieces) into dead ``p`` just before it."""
        p.n += q.n
        q.n = 0
        r = p.run
        del r.pieces[j]
        del r.pstarts[j]
        if q.blk is not None:
            q.blk.items.remove(q)

    def _revive(self, r: Run, s: int, e: int, vals: Any, vstart: int) -> bool:
        """Make live the dead nodes of ``r`` within ``s..e``; value of counter c is
        ``vals[c - vstart]``."""
        changed = False
        for p in self._carve(r, s, e, live=False):
            p.val = vals[p.start - vstart : p.start - vstart + p.n]
            if p.blk is not None:
                p.blk.vis += p.n
                self._len += p.n
            changed = True
        return changed
