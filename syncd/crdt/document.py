"""Documents: a root OR-map plus its causal context; states and deltas alike.

The join follows the causal dot-store rule of Almeida et al.: a dot is kept if both sides hold
it, or one side holds it and the other side's context has not seen it. To make a small delta
cost little against a large document, every document indexes where each of its *atomic* dots
lives (register and counter entries, set element dots, ``present`` markers); sequences index
their own dots. Removals are then found by looking the delta's context up in the index, and
additions by walking the delta's (small) index.

Local mutations (:meth:`Document.put`, :meth:`Document.patch`, :meth:`Document.delete`) change
the document in place and return the delta that a peer joins to get the same change. Every
delta carries at least one dot its receivers have not seen (see docs/architecture.md, "every
change carries a fresh dot").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from syncd.crdt import stores
from syncd.crdt.context import CausalContext
from syncd.crdt.dots import Dot, DotCounter
from syncd.crdt.sequence import Sequence
from syncd.crdt.stores import (
    COUNTER,
    LIST,
    MAP,
    PRESENT,
    REGISTER,
    SET,
    TEXT,
    AtomStore,
    MapStore,
    SeqStore,
    SetStore,
)
from syncd.errors import PatchError

Step = tuple[str, str]
"""One step down a document: (field name, type tag)."""
FieldPath = tuple[Step, ...]
Loc = tuple[FieldPath, str | None]
"""Where an atomic dot lives: the path of its store, and ``None`` for a register or counter
entry, :data:`PRESENT` for a container's marker, or a set element's canonical JSON."""
_SEQ_TAGS = frozenset((TEXT, LIST))


class Document:
    """A JSON document of CRDT fields; also the type of deltas."""

    __slots__ = ("_seqs", "_where", "ctx", "root")

    def __init__(self) -> None:
        self.root = MapStore()
        self.ctx = CausalContext()
        self._where: dict[Dot, Loc] = {}
        self._seqs: dict[FieldPath, SeqStore] = {}

    # -- reading -------------------------------------------------------------------------

    def exists(self) -> bool:
        """True unless the document was never written or is deleted."""
        return self.root.visible()

    def render(self) -> dict[str, Any] | None:
        """The document as JSON per the contract, or None when it does not exist."""
        if not self.exists():
            return None
        return stores.render_map(self.root)

    def conflicts(self) -> list[dict[str, Any]]:
        """``[{path, values}]`` for every shown register holding concurrent values (winner
        first)."""
        out: list[dict[str, Any]] = []
        if self.exists():
            stores.collect_conflicts(self.root, [], out)
        return out

    def is_bottom(self) -> bool:
        """True for the empty state (no dots seen at all)."""
        return not self.ctx and self.root.is_empty()

    def live_dots(self) -> Iterator[Dot]:
        """Every dot some store of the document holds (atomic dots and live sequence items)."""
        yield from self._where
        for sst in self._seqs.values():
            for r, s, e in sst.seq.live_ranges():
                for n in range(s, e + 1):
                    yield (r, n)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Document):
            return NotImplemented
        return self.ctx == other.ctx and self.root == other.root

    def release(self) -> None:
        """Let go of this document for good: break the reference cycles of its texts' and
        lists' structures, so that it is freed as soon as nothing refers to it instead of at
        the collector's next full pass. Using it afterwards is an error."""
        for sst in self._seqs.values():
            sst.seq.release()

    def __repr__(self) -> str:
        return f"Document({self.render()!r}, ctx={self.ctx!r})"

    def copy(self) -> Document:
        d = Document()
        d.root = self.root.copy()
        d.ctx = self.ctx.copy()
        d._where = dict(self._where)
        d._reindex_seqs()
        return d

    # -- store plumbing --------------------------------------------------------------------

    def _store_at(self, path: FieldPath) -> Any:
        """The store at ``path`` (the root map for ``()``), or None."""
        store: Any = self.root
        for name, tag in path:
            variants = store.fields.get(name)
            if variants is None:
                return None
            store = variants.get(tag)
            if store is None:
                return None
        return store

    def _ensure(self, path: FieldPath) -> Any:
        """The store at ``path``, creating empty stores (maps on the way) where missing."""
        store: Any = self.root
        for depth, (name, tag) in enumerate(path, 1):
            fields: dict[str, dict[str, Any]] = store.fields
            variants = fields.get(name)
            if variants is None:
                variants = fields[name] = {}
            child = variants.get(tag)
            if child is None:
                child = variants[tag] = stores.new_store(tag)
                if tag in _SEQ_TAGS:
                    self._seqs[path[:depth]] = child
            store = child
        return store

    def _put_seq(self, path: FieldPath, seq: Sequence) -> SeqStore:
        """Place ``seq`` at ``path`` (which holds no sequence yet), creating maps on the way."""
        name, tag = path[-1]
        parent = self.root if len(path) == 1 else self._ensure(path[:-1])
        sst = SeqStore(seq.is_text, seq)
        variants = parent.fields.get(name)
        if variants is None:
            variants = parent.fields[name] = {}
        variants[tag] = sst
        self._seqs[path] = sst
        return sst

    def _prune(self, path: FieldPath) -> None:
        """Remove empty stores from ``path`` upwards."""
        while path:
            parent = self._store_at(path[:-1])
            name, tag = path[-1]
            variants = parent.fields[name]
            st = variants[tag]
            if not stores.is_empty(tag, st):
                return
            del variants[tag]
            if isinstance(st, SeqStore):
                self._seqs.pop(path, None)
            if not variants:
                del parent.fields[name]
            path = path[:-1]

    def _reindex_seqs(self) -> None:
        self._seqs = {}
        stack: list[tuple[FieldPath, MapStore]] = [((), self.root)]
        while stack:
            path, m = stack.pop()
            for name, variants in m.fields.items():
                for tag, st in variants.items():
                    p = (*path, (name, tag))
                    if isinstance(st, SeqStore):
                        self._seqs[p] = st
                    elif isinstance(st, MapStore):
                        stack.append((p, st))

    def _add_atom(self, dot: Dot, loc: Loc, value: Any = None) -> None:
        path, sub = loc
        store = self._ensure(path)
        if sub is None:
            store[dot] = value
        elif sub == PRESENT:
            store.present.add(dot)
        else:
            dots = store.elems.get(sub)
            if dots is None:
                dots = store.elems[sub] = set()
            dots.add(dot)
        self._where[dot] = loc

    def _atom_value(self, dot: Dot, loc: Loc) -> Any:
        path, sub = loc
        return self._store_at(path)[dot] if sub is None else None

    def _remove_atom(self, dot: Dot) -> None:
        path, sub = self._where.pop(dot)
        store = self._store_at(path)
        if sub is None:
            del store[dot]
            if store:
                return
        elif sub == PRESENT:
            store.present.discard(dot)
        else:
            dots = store.elems[sub]
            dots.discard(dot)
            if dots:
                return
            del store.elems[sub]
        self._prune(path)

    # -- join ------------------------------------------------------------------------------

    def join(self, other: Document) -> bool:
        """Join ``other`` (a delta or a whole state) into this document; True if it changed."""
        octx = other.ctx
        changed = False
        # Removals: dots we hold that the other side has seen but no longer holds.
        if octx.size() <= len(self._where):
            gone = [d for d in octx.dots() if d in self._where and d not in other._where]
        else:
            gone = [d for d in self._where if d in octx and d not in other._where]
        for d in gone:
            self._remove_atom(d)
        changed = bool(gone)
        done = set(self._seqs)
        for path, sst in list(self._seqs.items()):
            osst = other._seqs.get(path)
            if osst is None:
                if sst.seq.kill(octx):
                    changed = True
            elif sst.seq.join(osst.seq, self.ctx, octx):
                changed = True
        # Additions: dots the other side holds that we have not seen.
        sctx = self.ctx
        for d, loc in other._where.items():
            if d not in self._where and d not in sctx:
                self._add_atom(d, loc, other._atom_value(d, loc))
                changed = True
        for path, osst in other._seqs.items():
            if path not in done and not osst.seq.is_bottom():
                sst = self._ensure(path)
                if sst.seq.join(osst.seq, sctx, octx):
                    changed = True
                self._prune(path)
        if not changed and not sctx.includes(octx):
            changed = True
        sctx.update(octx)
        return changed

    def delta_since(self, seen: CausalContext) -> Document | None:
        """What a replica whose context is ``seen`` lacks of this document, or None.

        The store part holds every dot ``seen`` lacks; the context part is this document's
        context minus the live dots ``seen`` already has, so it also carries every removal
        (a removed dot the peer still holds is in it, and is not in the store part).
        """
        if seen.includes(self.ctx):
            return None
        out = Document()
        out.ctx = self.ctx.copy()
        # Sequences first, as the decoder places them: _put_seq makes a fresh store, which
        # would drop a text's or list's present marker added before it.
        for path, sst in self._seqs.items():
            part = sst.seq.restricted(seen)
            if not part.is_bottom():
                out._put_seq(path, part)
            for r, s, e in sst.seq.live_ranges():
                ranges = seen.for_replica(r)
                if ranges is not None:
                    for os_, oe in ranges.overlapping(s, e):
                        out.ctx.remove_range(r, os_, oe)
        for d, loc in self._where.items():
            if d in seen:
                out.ctx.remove_range(d[0], d[1], d[1])
            else:
                out._add_atom(d, loc, self._atom_value(d, loc))
        return out

    # -- local changes -----------------------------------------------------------------------

    def put(self, value: dict[str, Any], counter: DotCounter) -> Document:
        """Make the document equal to ``value`` with the finest-grained changes; the delta."""
        return Change(self, counter).put_document(value)  # (refusals come before changes)

    def patch(self, ops: list[Any], counter: DotCounter) -> Document:
        """Apply parsed operations (:func:`syncd.crdt.ops.parse_ops`) atomically; the delta.

        Raises :class:`~syncd.errors.PatchError` and leaves the document unchanged if any
        operation does not apply.
        """
        change = Change(self, counter)
        try:
            return change.patch(ops)
        except PatchError as exc:
            # Whether the document changed before it was refused (a refusal that was not
            # atomic: a bug, which the holder of the document then repairs by reloading it).
            exc.document_changed = not change.delta.is_bottom()
            raise

    def delete(self, counter: DotCounter) -> Document:
        """Delete the document (an empty delta if it does not exist)."""
        return Change(self, counter).delete_document()

    def _restore(self, snapshot: Document) -> None:
        self.root = snapshot.root
        self.ctx = snapshot.ctx
        self._where = snapshot._where
        self._seqs = snapshot._seqs


def atoms_under(doc: Document, path: FieldPath) -> list[Dot]:
    """The atomic dots stored at or below ``path`` (used when a field is replaced)."""
    out: list[Dot] = []
    stack: list[tuple[str, Any]] = [(path[-1][1], doc._store_at(path))]
    while stack:
        tag, st = stack.pop()
        if tag in (REGISTER, COUNTER):
            out.extend(st)
        elif tag == SET:
            assert isinstance(st, SetStore)
            out.extend(st.present)
            for dots in st.elems.values():
                out.extend(dots)
        elif tag == MAP:
            assert isinstance(st, MapStore)
            out.extend(st.present)
            for variants in st.fields.values():
                stack.extend(variants.items())
        else:
            out.extend(st.present)
    return out


__all__ = ["AtomStore", "Document", "FieldPath", "Loc", "atoms_under"]

from syncd.crdt.mutate import Change  # noqa: E402 - mutate builds on this module
