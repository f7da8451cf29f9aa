"""Text and list fields: the Fugue sequence CRDT as a causal dot store.

Fugue (Weidner, Gentle & Kleppmann, "The Art of the Fugue", 2023) keeps a tree of immutable
nodes; the sequence is the in-order walk: a node's left children, the node, its right
children. To insert at visible index ``i`` between the visible node ``a`` at ``i - 1`` (the
root when ``i == 0``) and ``b``, the node right after ``a`` in the walk (dead or alive): the new
node becomes the right child of ``a`` if ``a`` has no right child, else the left child of
``b`` (which then has no left child). Two runs typed concurrently at one place, forwards or
backwards, end up in different subtrees and never interleave.

**Sibling order** (the only tie-break, the same on every replica): children on the same side
of the same parent are ordered by their dot ``(replica, counter)``, replica ids compared as
Python strings (code points), then counters. The nodes after a node ``(r, c)`` that it typed
forwards count as its right child ``(r, c + 1)`` like any other.

As a dot store: every node is a dot, nodes are never removed, only made dead (their value is
dropped, the structure stays). The state is the node set plus the live set; join is the
causal join (see :meth:`Sequence.join`). A node whose parent is unknown is kept but not
rendered until the parent arrives, so the result depends only on the node and live sets.

Removals: a replica whose causal context holds a removed node's dot must also hold the node
(dead), or that node's children, which anti-entropy does send, can never be placed there. So
ship removals with their nodes: ``subset(seq.delete(...))`` is the dead nodes, values dropped.

Storage: runs of consecutive dots typed forwards, split into pieces in a chunked list keyed
by visible length (see :mod:`syncd.crdt._seqtree`). A cursor makes an edit near the last one
cost O(1) amortised (typing forwards just grows the last piece); a far jump sums the block
lengths in C (n / 32 blocks at most) and scans one block. A delta is a lazy one-run sequence
that builds its structure only when used. Merging: :mod:`syncd.crdt._seqjoin`; encoding:
:mod:`syncd.crdt._seqcodec`.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator
from typing import Any

from syncd.crdt import _seqcodec
from syncd.crdt._seqjoin import SeqJoin
from syncd.crdt._seqtree import Block, Piece, RepIndex, Run, _key
from syncd.crdt.context import CausalContext
from syncd.errors import CodecError

Range = tuple[str, int, int]


class Sequence(SeqJoin):
    """Fugue sequence for text (items are 1-char str) or list (items are atomic JSON values)."""

    __slots__ = ("is_text",)

    def __init__(self, is_text: bool) -> None:
        self.is_text = is_text
        self._init()

    # -- reading -----------------------------------------------------------------------------

    def __len__(self) -> int:
        """The number of visible (live, placed) items."""
        if self._lz is not None:
            self._mat()
        return self._len

    def __repr__(self) -> str:
        if self._lz is not None:
            self._mat()
        return f"Sequence({self.value()!r}, runs={sum(len(i.runs) for i in self._index.values())})"

    def value(self) -> str | list[Any]:
        """The visible items: a ``str`` for text, a ``list`` for a list."""
        if self._lz is not None:
            self._mat()
        if self.is_text:
            return "".join([p.val for b in self._blocks for p in b.items if p.val is not None])
        out: list[Any] = []
        for b in self._blocks:
            for p in b.items:
                if p.val is not None:
                    out.extend(p.val)
        return out

    def item(self, index: int) -> Any:
        """Visible item ``index`` (``0 <= index < len(self)``): a character or a list value."""
        if self._lz is not None:
            self._mat()
        blk, pi, offset = self._locate(index)
        return blk.items[pi].val[offset]

    def is_bottom(self) -> bool:
        """True when the sequence holds no node at all."""
        if self._lz is not None:
            self._mat()
        return not self._index

    def live_ranges(self) -> Iterator[Range]:
        """The dots of live nodes (placed or not) as ``(replica, start, end)`` ranges."""
        if self._lz is not None:
            self._mat()
        cur: list[Any] | None = None
        for r in self._runs():
            for p in r.pieces:
                if p.val is None:
                    continue
                if cur is not None and cur[0] == r.rep and cur[2] + 1 == p.start:
                    cur[2] = p.start + p.n - 1
                else:
                    if cur is not None:
                        yield (cur[0], cur[1], cur[2])
                    cur = [r.rep, p.start, p.start + p.n - 1]
        if cur is not None:
            yield (cur[0], cur[1], cur[2])

    def node_ranges(self) -> Iterator[Range]:
        """The dots of every node, live or dead, as ``(replica, start, end)`` ranges."""
        if self._lz is not None:
            self._mat()
        for rep in sorted(self._index):
            cur: list[int] | None = None
            for r in self._index[rep].runs:
                if cur is not None and cur[1] + 1 == r.start:
                    cur[1] = r.start + r.n - 1
                else:
                    if cur is not None:
                        yield (rep, cur[0], cur[1])
                    cur = [r.start, r.start + r.n - 1]
            if cur is not None:
                yield (rep, cur[0], cur[1])

    def _canon(self) -> tuple[list[tuple[str, int, int, Any, bool]], list[Range], Any]:
        """Maximal runs ``(rep, start, n, pdot, side)``, live ranges, live values (dot order)."""
        if self._lz is not None:
            self._mat()
        runs: list[tuple[str, int, int, Any, bool]] = []
        vals: list[Any] = []
        for r in self._runs():
            if runs:
                rep, st, n, pd, sd = runs[-1]
                end = st + n - 1
                if rep == r.rep and end + 1 == r.start and r.side and r.pdot == (rep, end):
                    runs[-1] = (rep, st, n + r.n, pd, sd)
                else:
                    runs.append((r.rep, r.start, r.n, r.pdot, r.side))
            else:
                runs.append((r.rep, r.start, r.n, r.pdot, r.side))
            vals.extend(p.val for p in r.pieces if p.val is not None)
        if self.is_text:
            values: Any = "".join(vals)
        else:
            values = [v for chunk in vals for v in chunk]
        return runs, list(self.live_ranges()), values

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return self.is_text == other.is_text and self._canon() == other._canon()

    __hash__ = None  # type: ignore[assignment]

    # -- local changes -----------------------------------------------------------------------

    def insert(self, index: int, items: str | list[Any], replica: str, first: int) -> Sequence:
        """Insert ``items`` at visible ``index`` (0..len) with dots ``(replica, first)``,
        ``(replica, first + 1)``, ...; return the delta holding just the new (live) nodes.

        Raises IndexError if ``index`` is out of range.
        """
        if self._lz is not None:
            self._mat()
        tp = self._tp
        n = len(items)
        if tp is not None and index == self._ti and n:
            run = tp.run
            if run.rep == replica and first == run.start + run.n:
                # Typing forwards: the node before is the end of this run and of piece tp,
                # live, visible at index - 1 and without right children (every other change
                # clears _tp), so the new nodes continue the run.
                if self.is_text:
                    tp.val = tp.val + items
                else:
                    if type(items) is not list:
                        raise TypeError("list items must be a list")
                    tp.val.extend(items)
                tp.n += n
                run.n += n
                tp.blk.vis += n  # type: ignore[union-attr]
                self._len += n
                self._ti = index + n
                return self._delta(replica, first, items, (replica, first - 1), True)
        return self._insert(index, items, replica, first)

    def _insert(self, index: int, items: str | list[Any], replica: str, first: int) -> Sequence:
        if not 0 <= index <= self._len:
            raise IndexError(f"insert index {index} out of range 0..{self._len}")
        if self.is_text != isinstance(items, str) or not isinstance(items, str | list):
            raise TypeError("text items must be a str, list items a list")
        self._tp = None
        n = len(items)
        if not n:
            return Sequence(self.is_text)
        val = items if self.is_text else list(items)
        pdot: tuple[str, int] | None
        if index == 0:
            if self._root:
                b = self._blocks[0].items[0]
                pdot, side = (b.run.rep, b.start), False
            else:
                pdot, side = None, True
            self._cb = self._co = 0
            x = Run(replica, first, n, pdot, side)
            x.pieces = [Piece(x, first, n, val, None)]
            x.pstarts = [first]
            self._add_run(x)
            self._tp, self._ti = x.pieces[-1], n
            return self._delta(replica, first, items, pdot, side)
        # The new nodes go right after node a = (run, c), the visible one at index - 1: as
        # its right child if it has none, else as the left child of the node after it.
        blk, pi, off = self._locate(index - 1)
        p = blk.items[pi]
        run = p.run
        c = p.start + off
        kids = run.kids
        at = pi + 1
        if c == run.start + run.n - 1 and (kids is None or c not in kids):
            if run.rep == replica and first == c + 1:
                # Continue a's run (a ends its run, so it ends piece p, which is live).
                if self.is_text:
                    p.val = p.val + items
                else:
                    p.val.extend(val)
                p.n += n
                run.n += n
                blk.vis += n
                self._len += n
                self._tp, self._ti = p, index + n
                return self._delta(replica, first, items, (replica, c), True)
            prun, pc, side = run, c, True
        elif off < p.n - 1:
            prun, pc, side = run, c + 1, False
            self._split(p, c + 1)
            blk = p.blk  # type: ignore[assignment]
            at = blk.items.index(p) + 1
        else:
            # The node after a starts the next piece (maybe in the next block): inserting
            # right after p is inserting right before it.
            q = blk.items[pi + 1] if at < len(blk.items) else self._blocks[self._cb + 1].items[0]
            prun, pc, side = q.run, q.start, False
        pdot = (prun.rep, pc)
        x = Run(replica, first, n, pdot, side)
        piece = Piece(x, first, n, val, None)
        x.pieces = [piece]
        x.pstarts = [first]
        x.placed = True
        # a had no right child / b no left child: x is the only child on its side.
        slot = pc if side else -pc
        pk = prun.kids
        if pk is None:
            prun.kids = {slot: [x]}
        else:
            lst = pk.get(slot)
            if lst is None:
                pk[slot] = [x]
            else:
                lst.insert(bisect_right(lst, (replica, first), key=_key), x)
        self._index_run(x)
        self._insert_pieces(blk, at, [piece])
        self._tp, self._ti = piece, index + n
        return self._delta(replica, first, items, pdot, side)

    def _delta(
        self, replica: str, first: int, items: str | list[Any], pdot: Any, side: bool
    ) -> Sequence:
        return self._one_run(
            replica, first, len(items), items if self.is_text else list(items), pdot, side
        )

    def _one_run(self, rep: str, start: int, n: int, val: Any, pdot: Any, side: bool) -> Sequence:
        """A new sequence holding one run (``val``: its values, or None when dead).

        Built lazily (see :meth:`_mat`): a delta that is only encoded or dropped never
        allocates the structure, nor the reference cycles the garbage collector must chase.
        """
        d = Sequence.__new__(Sequence)
        d.is_text = self.is_text
        d._lz = (rep, start, n, val, pdot, side)
        return d

    def _mat(self) -> None:
        """Build the structure of a lazy one-run sequence."""
        lz = self._lz
        assert lz is not None
        rep, start, n, val, pdot, side = lz
        self._init()
        x = Run(rep, start, n, pdot, side)
        x.pieces = [Piece(x, start, n, val, None)]
        x.pstarts = [start]
        if pdot is None:
            self._add_run(x)
        else:
            idx = RepIndex()
            idx.starts.append(start)
            idx.runs.append(x)
            self._index[rep] = idx
            self._pending[pdot[0]] = {pdot[1]: [x]}

    def delete(self, index: int, count: int) -> list[Range]:
        """Make visible items ``index .. index + count - 1`` dead; return their dots as ranges.

        Raises IndexError if the span is out of range.
        """
        if self._lz is not None:
            self._mat()
        if index < 0 or count < 0 or index + count > self._len:
            raise IndexError(f"delete {index}+{count} out of range 0..{self._len}")
        out: list[Range] = []
        if not count:
            return out
        self._tp = None
        blk, pi, off = self._locate(index)
        p = blk.items[pi]
        if off + count <= p.n:
            return self._delete_in_piece(blk, pi, p, off, count)
        segs: list[tuple[Run, int, int]] = []
        rem = count
        bi = self._cb
        while True:
            items = blk.items
            while pi < len(items):
                p = items[pi]
                if p.val is not None:
                    m = min(rem, p.n - off)
                    s = p.start + off
                    segs.append((p.run, s, s + m - 1))
                    rem -= m
                    off = 0
                    if not rem:
                        break
                pi += 1
            if not rem:
                break
            bi += 1
            blk = self._blocks[bi]
            pi = 0
        for r, s, e in segs:
            self._kill(r, s, e, out)
        return out

    def _delete_in_piece(self, blk: Block, pi: int, p: Piece, off: int, count: int) -> list[Range]:
        """Delete ``count`` items of live piece ``p`` (``blk.items[pi]``) from offset ``off``:
        grow a dead neighbour of the same run when there is one (backspacing, deleting
        forwards), else cut ``p`` and mark the middle dead."""
        run = p.run
        s = p.start + off
        e = s + count - 1
        items = blk.items
        whole = count == p.n
        if off == 0 and pi > 0:
            q = items[pi - 1]
            if q.val is None and q.run is run and q.start + q.n == s:
                q.n += count
                j = bisect_right(run.pstarts, s) - 1
                if whole:
                    del items[pi]
                    del run.pieces[j]
                    del run.pstarts[j]
                    if pi < len(items):
                        r = items[pi]
                        if r.val is None and r.run is run and r.start == e + 1:
                            q.n += r.n
                            del items[pi]
                            del run.pieces[j]
                            del run.pstarts[j]
                else:
                    p.start += count
                    p.n -= count
                    p.val = p.val[count:]
                    run.pstarts[j] = p.start
                blk.vis -= count
                self._len -= count
                return [(run.rep, s, e)]
        if off + count == p.n and pi + 1 < len(items):
            r = items[pi + 1]
            if r.val is None and r.run is run and r.start == e + 1:
                j = bisect_right(run.pstarts, s) - 1  # p's index in its run
                if whole:
                    del items[pi]
                    del run.pieces[j]
                    del run.pstarts[j]
                else:
                    p.n -= count
                    p.val = p.val[:off]
                    j += 1
                r.start = s
                r.n += count
                run.pstarts[j] = s
                blk.vis -= count
                self._len -= count
                return [(run.rep, s, e)]
        if off:
            p = self._split(p, s)
        if not whole and count < p.n:
            self._split(p, s + count)
        p.val = None
        p.blk.vis -= count  # type: ignore[union-attr]
        self._len -= count
        return [(run.rep, s, e)]

    # -- merging -----------------------------------------------------------------------------

    def join(self, other: Sequence, self_ctx: CausalContext, other_ctx: CausalContext) -> bool:
        """Causal join of ``other`` into this sequence; True if anything changed.

        ``self_ctx`` and ``other_ctx`` are the two sides' causal contexts (not mutated; the
        caller joins them afterwards). Nodes are united; a dot is live afterwards iff it is
        (live here and (live there or not in ``other_ctx``)) or (live there and not in
        ``self_ctx``). Costs O(size of ``other`` + log n) plus the dots killed.
        """
        if self._lz is not None:
            self._mat()
        if other is self:
            return False
        self._tp = None
        lz = other._lz
        if lz is not None:
            done = self._join_one(lz, self_ctx, other_ctx)
            if done is not None:
                return done
            other._mat()
        return self._join_all(other, self_ctx, other_ctx)

    def kill(self, ctx: CausalContext) -> list[Range]:
        """Make dead every live node whose dot is in ``ctx``; return the ranges killed."""
        if self._lz is not None:
            self._mat()
        out = self._kill_removed(ctx, _all_of)
        if out:
            self._tp = None
            self._cb = self._co = 0
        return out

    def restricted(self, ctx: CausalContext) -> Sequence:
        """The nodes whose dots are not in ``ctx``, with their liveness (what a replica with
        context ``ctx`` lacks)."""
        if self._lz is not None:
            self._mat()
        out = Sequence(self.is_text)
        for r in self._runs():
            rs = ctx.for_replica(r.rep)
            e0 = r.start + r.n - 1
            for s, e in [(r.start, e0)] if rs is None else list(rs.missing(r.start, e0)):
                x = self._copy_part(r, s, e, None)
                out._add_run(x)
        return out

    def subset(self, ranges: Iterable[Range]) -> Sequence:
        """The nodes whose dots are in ``ranges``, with their liveness.

        Ship this with a removal (``subset(seq.delete(...))``, all dead, no values): a replica
        whose context holds a removed dot must also hold its node, or the dot's children,
        which anti-entropy sends, could never be placed there.
        """
        if self._lz is not None:
            self._mat()
        if type(ranges) is list and len(ranges) == 1:
            rep, s, e = ranges[0]
            r = self._find(rep, s)
            if r is not None and e < r.start + r.n:
                p = r.piece_at(s)
                if p.val is None and e < p.start + p.n:
                    # Dead nodes inside one run (what a delete returns): no values to copy.
                    if s == r.start:
                        return self._one_run(rep, s, e - s + 1, None, r.pdot, r.side)
                    return self._one_run(rep, s, e - s + 1, None, (rep, s - 1), True)
        out = Sequence(self.is_text)
        for rep, s, e in ranges:
            idx = self._index.get(rep)
            if idx is None:
                continue
            for r in list(idx.overlapping(s, e)):
                a, b = max(s, r.start), min(e, r.start + r.n - 1)
                oix = out._index.get(rep)
                parts = [(a, b, None)] if oix is None else list(oix.parts(a, b))
                for u, v, known in parts:
                    if known is None:
                        out._add_run(self._copy_part(r, u, v, None))
        return out

    def copy(self) -> Sequence:
        """An independent copy (same structure; mutating one never changes the other)."""
        if self._lz is not None:
            self._mat()
        c = Sequence(self.is_text)
        runs: dict[int, Run] = {}
        pieces: dict[int, Piece] = {}
        text = self.is_text
        for rep, idx in self._index.items():
            ni = RepIndex()
            ni.starts = idx.starts.copy()
            for r in idx.runs:
                nr = Run(r.rep, r.start, r.n, r.pdot, r.side)
                nr.placed = r.placed
                nr.pstarts = r.pstarts.copy()
                nps = []
                for p in r.pieces:
                    v = p.val
                    q = Piece(nr, p.start, p.n, v if text or v is None else list(v), None)
                    nps.append(q)
                    pieces[id(p)] = q
                nr.pieces = nps
                runs[id(r)] = nr
                ni.runs.append(nr)
            c._index[rep] = ni
        for idx in self._index.values():
            for r in idx.runs:
                if r.kids:
                    runs[id(r)].kids = {k: [runs[id(x)] for x in v] for k, v in r.kids.items()}
        c._root = [runs[id(r)] for r in self._root]
        c._pending = {
            rep: {k: [runs[id(x)] for x in v] for k, v in d.items()}
            for rep, d in self._pending.items()
        }
        for b in self._blocks:
            nb = Block([pieces[id(p)] for p in b.items], b.vis)
            for q in nb.items:
                q.blk = nb
            c._blocks.append(nb)
        c._len = self._len
        return c

    # -- encoding ----------------------------------------------------------------------------

    def to_cbor(self, replica_index: dict[str, int]) -> Any:
        """Columnar CBOR-able form; replica ids become indexes from ``replica_index``.

        ``[groups, gaps, lens, parents, xreps, live, values]``, runs in dot order (maximal
        runs): ``groups`` is ``[replica index, run count]*``; per run ``gaps`` is its start
        minus the previous run's end + 1 (0 before the first run of a replica), ``lens`` its
        length, ``parents`` ``0`` for the root, ``(start - p) * 4 + side`` for a parent dot
        ``p`` of the same replica below ``start``, else ``p * 4 + 2 + side`` with the parent's
        replica index next in ``xreps`` (side 1 = right child). ``live`` alternates counts of
        live and dead nodes in dot order, starting with live; ``values`` holds the live values
        in dot order (a ``str`` for text, a list for a list).
        """
        if self._lz is not None:
            self._mat()
        return _seqcodec.encode(self, replica_index)

    @classmethod
    def from_cbor(cls, obj: Any, replicas: list[str], is_text: bool) -> Sequence:
        """Decode :meth:`to_cbor` output; raises :class:`~syncd.errors.CodecError` only."""
        try:
            return _seqcodec.decode(obj, replicas, is_text)
        except CodecError:
            raise
        except (TypeError, ValueError, IndexError, KeyError, AttributeError) as exc:
            raise CodecError(f"bad sequence: {exc}") from exc


def _all_of(rep: str, a: int, b: int) -> Iterator[tuple[int, int]]:
    """For :meth:`Sequence.kill`: the other side holds none of ``a..b``."""
    yield a, b
