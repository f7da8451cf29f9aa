"""The columnar encoding of :class:`~syncd.crdt.sequence.Sequence` (see ``to_cbor``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from syncd.crdt._seqtree import Piece, Run
from syncd.errors import CodecError

if TYPE_CHECKING:
    from syncd.crdt.sequence import Sequence


def encode(seq: Sequence, replica_index: dict[str, int]) -> Any:
    """See :meth:`Sequence.to_cbor`."""
    runs, _live, values = seq._canon()
    groups: list[int] = []
    gaps: list[int] = []
    lens: list[int] = []
    parents: list[int] = []
    xreps: list[int] = []
    prev_rep: str | None = None
    prev_end = 0
    for rep, start, n, pdot, side in runs:
        if rep != prev_rep:
            groups += [replica_index[rep], 0]
            prev_rep, prev_end = rep, 0
        groups[-1] += 1
        gaps.append(start - prev_end - 1)
        lens.append(n)
        prev_end = start + n - 1
        if pdot is None:
            parents.append(0)
        elif pdot[0] == rep and pdot[1] < start:
            parents.append((start - pdot[1]) * 4 + side)
        else:
            parents.append(pdot[1] * 4 + 2 + side)
            xreps.append(replica_index[pdot[0]])
    live: list[int] = []
    state = True
    cur = 0
    for r in seq._runs():
        for p in r.pieces:
            if (p.val is not None) != state:
                live.append(cur)
                cur = 0
                state = not state
            cur += p.n
    live.append(cur)
    while live and live[-1] == 0:
        live.pop()
    return [groups, gaps, lens, parents, xreps, live, values]


def decode(obj: Any, replicas: list[str], is_text: bool) -> Sequence:
    """Build a sequence from :func:`encode` output; raises CodecError on bad input (and
    may raise TypeError, ValueError, ... which the caller turns into CodecError)."""

    def ints(v: Any, lo: int) -> list[int]:
        if type(v) is not list or any(type(i) is not int or i < lo for i in v):
            raise CodecError("bad sequence: expected a list of integers")
        return v

    if type(obj) is not list or len(obj) != 7:
        raise CodecError("bad sequence: expected a list of 7 columns")
    groups, gaps, lens, parents, xreps = (ints(obj[i], 0) for i in range(5))
    live = ints(obj[5], 0)
    values = obj[6]
    nrep = len(replicas)
    if len(groups) % 2 or any(g >= nrep for g in groups[::2]) or 0 in groups[1::2]:
        raise CodecError("bad sequence: bad replica groups")
    if len({replicas[g] for g in groups[::2]}) != len(groups) // 2 or any(g >= nrep for g in xreps):
        raise CodecError("bad sequence: bad replica indexes")
    nruns = sum(groups[1::2])
    if not len(gaps) == len(lens) == len(parents) == nruns or 0 in lens:
        raise CodecError("bad sequence: inconsistent run columns")
    total = sum(lens)
    if sum(live) != total:
        raise CodecError("bad sequence: live counts do not cover the nodes")
    nlive = sum(live[::2])
    if is_text:
        if type(values) is not str or len(values) != nlive:
            raise CodecError("bad sequence: text values do not match the live nodes")
    elif type(values) is not list or len(values) != nlive:
        raise CodecError("bad sequence: list values do not match the live nodes")
    # (The items themselves are checked by the document codec, as register values are.)
    from syncd.crdt.sequence import Sequence

    seq = Sequence(is_text)
    # Liveness as (live?, count) segments consumed in dot order.
    segs = [(i % 2 == 0, c) for i, c in enumerate(live) if c]
    si, sleft = 0, segs[0][1] if segs else 0
    vpos = 0
    ri = xi = 0
    for g in range(0, len(groups), 2):
        rep = replicas[groups[g]]
        prev_end = 0
        for _ in range(groups[g + 1]):
            start = prev_end + gaps[ri] + 1
            n = lens[ri]
            code = parents[ri]
            side = bool(code & 1)
            pdot: tuple[str, int] | None
            if code == 0:
                pdot, side = None, True
            elif code < 4 and not code & 2:
                raise CodecError("bad sequence: left child of the root")
            elif code & 2:
                if xi >= len(xreps):
                    raise CodecError("bad sequence: missing parent replica")
                prep, pc = replicas[xreps[xi]], code >> 2
                xi += 1
                # A parent is older than its children: of the same replica, a lower counter
                # (a later one could close a cycle that re-encoding would turn into a run
                # holding its own parent, which no longer decodes).
                if pc < 1 or (prep == rep and pc >= start):
                    raise CodecError("bad sequence: bad parent")
                pdot = (prep, pc)
            else:
                pc = start - (code >> 2)
                if pc < 1:
                    raise CodecError("bad sequence: bad parent")
                pdot = (rep, pc)
            x = Run(rep, start, n, pdot, side)
            c, left = start, n
            while left:
                alive, _cnt = segs[si]
                m = min(left, sleft)
                if alive:
                    val: Any = values[vpos : vpos + m]
                    vpos += m
                else:
                    val = None
                x.pieces.append(Piece(x, c, m, val, None))
                x.pstarts.append(c)
                c += m
                left -= m
                sleft -= m
                if not sleft:
                    si += 1
                    sleft = segs[si][1] if si < len(segs) else 0
            seq._add_run(x)
            prev_end = start + n - 1
            ri += 1
    if xi != len(xreps):
        raise CodecError("bad sequence: unused parent replicas")
    return seq
