"""Local changes to a document: each builds the delta beside the in-place change.

A :class:`Change` is one atomic change (one ``put``, one ``patch`` of several operations, one
``delete``). It takes fresh dots from the replica's :class:`DotCounter`, applies every step to
the document, and records the same step in a delta document: new dots go into both stores and
contexts, removed dots only into the delta's context.
"""

from __future__ import annotations

import math
from typing import Any

from syncd.crdt import ops as O
from syncd.crdt import stores
from syncd.crdt.context import CausalContext
from syncd.crdt.diff import diff
from syncd.crdt.document import Document, FieldPath, Loc, atoms_under
from syncd.crdt.dots import Dot, DotCounter
from syncd.crdt.ops import is_int
from syncd.crdt.stores import (
    COUNTER,
    LIST,
    MAP,
    PRESENT,
    REGISTER,
    SET,
    TEXT,
    MapStore,
    SeqStore,
    SetStore,
    canonical,
)
from syncd.errors import InvalidOperation, PatchError

_DEFAULTS: dict[str, Any] = {TEXT: "", COUNTER: 0, SET: [], LIST: [], MAP: {}, REGISTER: None}


def _check_counter(total: int) -> None:
    """One device's share of a counter must stay a signed 64-bit integer."""
    if not O.COUNTER_MIN <= total <= O.COUNTER_MAX:
        raise PatchError(
            "the counter would leave the 64-bit range (-2**63 to 2**63-1)", reason="too_large"
        )


_SCALARS = (str, int, bool, type(None))


def _same_value(a: Any, b: Any) -> bool:
    """JSON equality (``1`` is not ``1.0`` nor ``true``, ``0.0`` is not ``-0.0``), cheap for
    scalars."""
    t = type(a)
    if t is not type(b):
        return False
    if t in _SCALARS:
        return bool(a == b)
    if t is float:
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return canonical(a) == canonical(b)


def _shown(doc: Document, path: FieldPath) -> str:
    return "/".join(name for name, _ in path) or "(document)"


class Change:
    """One atomic local change to ``doc``, recording its delta."""

    def __init__(self, doc: Document, counter: DotCounter) -> None:
        self.doc = doc
        self.counter = counter
        self.delta = Document()
        self.added = False
        self.creates = False
        """Set by a write of the whole document (``put``, or ``set`` at the root): it makes
        the document exist even when the object is empty."""

    # -- primitives --------------------------------------------------------------------------

    def _fresh(self) -> Dot:
        counter = self.counter
        d = (counter.replica, counter.take())
        self.doc.ctx.add(*d)
        self.delta.ctx.add(*d)
        return d

    def _add(self, loc: Loc, value: Any = None) -> None:
        counter = self.counter
        r, n = counter.replica, counter.next
        counter.next = n + 1
        d = (r, n)
        doc, delta = self.doc, self.delta
        doc.ctx.add(r, n)
        delta.ctx.add(r, n)
        doc._add_atom(d, loc, value)
        delta._add_atom(d, loc, value)
        self.added = True

    def _remove(self, dots: list[Dot]) -> None:
        doc, delta = self.doc, self.delta
        for d in dots:
            doc._remove_atom(d)
            if d in delta._where:
                delta._remove_atom(d)
            else:
                delta.ctx.add(*d)

    def _kill_seq(self, path: FieldPath, ranges: list[tuple[str, int, int]]) -> None:
        if not ranges:
            return
        # The removed nodes travel with the removal (dead, without values): a replica whose
        # context gains these dots must hold their nodes too, or children of them that
        # anti-entropy sends later could never be placed.
        delta = self.delta
        removed = self.doc._seqs[path].seq.subset(ranges)
        dsst = delta._seqs.get(path)
        if dsst is None:
            delta._put_seq(path, removed)
        else:
            dsst.seq.join(removed, delta.ctx, CausalContext.from_ranges(ranges))
        for r, s, e in ranges:
            delta.ctx.add_range(r, s, e)

    def _finish(self, existed: bool) -> Document:
        """Apply the event-dot rule and return the delta.

        A document that did not exist gets a ``present`` dot when the change creates it. A
        change that added no dot to any store (only removals) takes a fresh dot that only the
        contexts record: a peer that missed the change lacks that dot, which is how
        anti-entropy finds the document to resend (``Document.delta_since``).
        """
        if not existed and (self.added or self.creates):
            self._add(((), PRESENT))
        elif not self.added and self.delta.ctx:
            self._fresh()
        return self.delta

    # -- sequences ---------------------------------------------------------------------------

    def _seq_insert(self, path: FieldPath, index: int, items: str | list[Any]) -> None:
        if not items:
            return
        sst: SeqStore = self.doc._seqs[path]
        n = len(items)
        counter = self.counter
        r, first = counter.replica, counter.next
        counter.next = first + n
        piece = sst.seq.insert(index, items, r, first)
        delta = self.delta
        dsst = delta._seqs.get(path)
        if dsst is None:
            delta._put_seq(path, piece)
        else:
            dsst.seq.join(piece, delta.ctx, CausalContext.from_ranges([(r, first, first + n - 1)]))
        self.doc.ctx.add_range(r, first, first + n - 1)
        delta.ctx.add_range(r, first, first + n - 1)
        self.added = True

    def _seq_delete(self, path: FieldPath, index: int, count: int) -> None:
        if count:
            sst = self.doc._seqs[path]
            self._keep(path, sst)
            self._kill_seq(path, sst.seq.delete(index, count))

    def _seq_assign(self, path: FieldPath, new: str | list[Any]) -> None:
        """Edit the sequence at ``path`` into ``new`` by a diff."""
        sst: SeqStore = self.doc._seqs[path]
        old = sst.seq.value()
        if isinstance(new, str):
            assert isinstance(old, str)
            edits = diff(old, new)
        else:
            edits = diff([canonical(x) for x in old], [canonical(x) for x in new])
        for index, delete, ns, ne in edits:
            self._seq_delete(path, index, delete)
            self._seq_insert(path, index, new[ns:ne])

    # -- fields ------------------------------------------------------------------------------

    def _remove_variant(self, path: FieldPath) -> None:
        doc = self.doc
        for p in [p for p in doc._seqs if p[: len(path)] == path]:
            sst = doc._seqs[p]
            self._kill_seq(p, sst.seq.delete(0, len(sst.seq)) if len(sst.seq) else [])
        self._remove(atoms_under(doc, path))

    def _keep(self, path: FieldPath, st: Any) -> None:
        """Before a change takes content out of the container ``st`` at ``path`` (the
        document, a map, set, text or list): give it a marker of its own if it shows through
        that content alone. That is a container a concurrent delete took the marker of,
        which a concurrent update kept (update-wins); emptied, it would vanish, where one
        never deleted stays, empty: ``del``, ``remove`` and deletes change what is inside, not
        whether it exists."""
        if not st.present:
            self._add((path, PRESENT))

    def _delete_field(self, mp: FieldPath, name: str) -> None:
        """Delete a field of the map at ``mp`` (which stays: :meth:`_keep`)."""
        m = self.doc._store_at(mp)
        variants = m.fields.get(name) if m is not None else None
        if variants and stores.winner(variants) is not None:  # (not only what a delete left)
            self._keep(mp, m)
        self._remove_field(mp, name)

    def _remove_field(self, mp: FieldPath, name: str, keep: str | None = None) -> None:
        m = self.doc._store_at(mp)
        variants = m.fields.get(name) if m is not None else None
        if not variants:
            return
        for tag in [t for t in variants if t != keep]:
            self._remove_variant((*mp, (name, tag)))

    def _make(self, mp: FieldPath, name: str, tag: str, value: Any) -> None:
        if tag == COUNTER:
            _check_counter(value)
        self._remove_field(mp, name)
        path = (*mp, (name, tag))
        if tag in (REGISTER, COUNTER):
            self._add((path, None), value)
            return
        if tag in (TEXT, LIST):
            self.doc._ensure(path)
        self._add((path, PRESENT))
        if tag == SET:
            for key in dict.fromkeys(canonical(v) for v in value):
                self._add((path, key))
        elif tag == MAP:
            for k, v in value.items():
                self._put_field(path, k, v)
        else:
            self._seq_insert(path, 0, value)

    def _put_field(self, mp: FieldPath, name: str, value: Any) -> None:
        """Put semantics for one field (see the contract's ``put``)."""
        m: MapStore = self.doc._store_at(mp)
        variants = m.fields.get(name) if m is not None else None
        if type(value) is not dict and (not variants or variants.keys() == {REGISTER}):
            # The common case, a plain value into a new field or a register: no type rules.
            self._write_register(mp, name, variants[REGISTER] if variants else None, value)
            return
        w = stores.winner(variants) if variants else None
        default = MAP if isinstance(value, dict) else REGISTER
        if w is None:
            self._make(mp, name, default, value)
            return
        tag, st = w
        path = (*mp, (name, tag))
        if tag == MAP and isinstance(value, dict):
            self._remove_field(mp, name, keep=tag)
            self._put_map(path, value)
        elif (tag == TEXT and isinstance(value, str)) or (tag == LIST and isinstance(value, list)):
            self._remove_field(mp, name, keep=tag)
            self._seq_assign(path, value)
        elif tag == SET and isinstance(value, list):
            self._remove_field(mp, name, keep=tag)
            target = dict.fromkeys(canonical(v) for v in value)
            gone = [d for k, ds in st.elems.items() if k not in target for d in ds]
            if gone:
                self._keep(path, st)
                self._remove(gone)
            for key in target:
                if key not in st.elems:
                    self._add((path, key))
        elif tag == COUNTER and is_int(value) and self._counter_can_show(st, value):
            self._remove_field(mp, name, keep=tag)
            by = value - sum(st.values())
            if by:  # (the share then shows value - others, which _counter_can_show checked)
                self._inc(path, self._own_total(path) + by)
        elif tag == REGISTER and (
            not isinstance(value, dict) or any(type(v) is dict for v in st.values())
        ):
            # An object fits a register only if it was made to hold one (`make register`):
            # a get-then-put round trip must leave such a register as it is.
            self._remove_field(mp, name, keep=tag)
            self._write_register(mp, name, st, value)
        else:
            self._make(mp, name, default, value)

    def _write_register(
        self, mp: FieldPath, name: str, st: dict[Dot, Any] | None, value: Any
    ) -> None:
        if st:
            if len(st) == 1 and _same_value(next(iter(st.values())), value):
                return
            self._remove(list(st))
        self._add(((*mp, (name, REGISTER)), None), value)

    def _put_map(self, path: FieldPath, value: dict[str, Any]) -> None:
        m: MapStore = self.doc._store_at(path)
        for name in [n for n, vs in m.fields.items() if n not in value]:
            if stores.winner(m.fields[name]) is not None:
                self._delete_field(path, name)
        for k, v in value.items():
            self._put_field(path, k, v)

    def _counter_can_show(self, st: dict[Dot, int], value: int) -> bool:
        """Whether this device's share of the counter ``st`` can make it show ``value``
        (a share is a signed 64-bit integer; a number beyond that does not fit a counter)."""
        r = self.counter.replica
        others = sum(v for d, v in st.items() if d[0] != r)
        return O.COUNTER_MIN <= value - others <= O.COUNTER_MAX

    def _own_total(self, path: FieldPath) -> int:
        """This device's share of the counter at ``path``."""
        st = self.doc._store_at(path)
        r = self.counter.replica
        return sum(v for d, v in st.items() if d[0] == r)

    def _inc(self, path: FieldPath, total: int) -> None:
        """Make this device's share of the counter at ``path`` ``total`` (checked)."""
        st = self.doc._store_at(path)
        r = self.counter.replica
        self._remove([d for d in st if d[0] == r])
        self._add((path, None), total)

    # -- resolving operation paths -----------------------------------------------------------

    def _walk(self, names: tuple[Any, ...], create: bool) -> FieldPath | None:
        """The path of the map that ``names`` lead to; None if missing and not ``create``."""
        doc = self.doc
        mp: FieldPath = ()
        m = doc.root
        for i, name in enumerate(names):
            if not isinstance(name, str):  # (after a field that is a map, or at the root)
                where = _shown(doc, mp) if mp else "the document"
                raise PatchError(
                    f"path element {name!r} indexes into {where}, which is a map, not a list",
                    reason="type_mismatch",
                )
            variants = m.fields.get(name)
            w = stores.winner(variants) if variants else None
            if w is None:
                if not create:
                    return None
                _check_field_names(names[i:])
                for rest in names[i:]:
                    self._make(mp, rest, MAP, {})
                    mp = (*mp, (rest, MAP))
                return mp
            if w[0] != MAP:
                shown = _shown(doc, (*mp, (name, w[0])))
                after = names[i + 1] if i + 1 < len(names) else None
                if w[0] == LIST and type(after) is int:
                    raise PatchError(
                        f"path element {after!r} indexes into the list {shown}, and a path "
                        "cannot go inside a list item (items hold values only)",
                        reason="invalid_path",
                    )
                raise PatchError(f"{shown} is a {w[0]}, not a map", reason="type_mismatch")
            mp = (*mp, (name, MAP))
            m = w[1]
        return mp

    def _field(self, path: O.Path, create: bool) -> tuple[FieldPath, str] | None:
        if len(path) == 1 and type(path[0]) is str:  # a top-level field: nothing to walk
            return ((), path[0])
        if not path:
            raise PatchError("this operation needs a field path", reason="invalid_path")
        name = path[-1]
        if not isinstance(name, str):
            # What the index points into says why: a map or a field of another type than a
            # list (type_mismatch), a list item (invalid_path: items hold values only).
            self._walk(path, create=False)
            raise PatchError(f"path element {name!r} is not a field name", reason="invalid_path")
        mp = self._walk(path[:-1], create)
        if mp is not None and create:  # (only writes create)
            self._replace_variants(mp)
        return None if mp is None else (mp, name)

    def _check_creatable(self, path: O.Path) -> None:
        """Raise what ``_field(path, create=True)`` would raise, changing nothing."""
        if self._field(path, create=False) is None:
            _check_field_names(path)

    def _existing(self, path: O.Path, tags: tuple[str, ...], what: str) -> FieldPath | None:
        """The shown variant of the field at ``path`` if it exists (checked against ``tags``)."""
        if len(path) == 1 and type(path[0]) is str:  # the common case, without the walk
            mp: FieldPath = ()
            name = path[0]
            m = self.doc.root
        else:
            loc = self._field(path, create=False)
            if loc is None:
                return None
            mp, name = loc
            m = self.doc._store_at(mp)
        variants = m.fields.get(name)
        w = stores.winner(variants) if variants else None
        if w is None:
            return None
        if w[0] not in tags:
            raise _type_mismatch(path, w[0], what, tags)
        return (*mp, (name, w[0]))

    def _written(self, path: O.Path, tags: tuple[str, ...], what: str) -> FieldPath | None:
        """:meth:`_existing`, for an operation that writes to that field."""
        found = self._existing(path, tags, what)
        if found is not None:
            self._replace_variants(found)
        return found

    def _replace_variants(self, path: FieldPath) -> None:
        """A write at ``path`` replaces, at the field and at each map on the way, the
        variants that concurrent creations of other types left there (docs/data-model.md:
        the next write to the field from any device replaces every variant)."""
        m = self.doc.root
        if len(path) == 1:  # a top-level field (an editor's text): the common case
            name, tag = path[0]
            if len(m.fields[name]) > 1:
                self._remove_field((), name, keep=tag)
            return
        last = len(path) - 1
        for i, (name, tag) in enumerate(path):
            variants = m.fields[name]
            if len(variants) > 1:
                self._remove_field(path[:i], name, keep=tag)
            if i < last:  # (the field itself may be any kind of store)
                m = variants[tag]

    # -- operations ----------------------------------------------------------------------

    def _apply(self, op: O.Op) -> None:
        path = op.path
        _check_root(path)
        if path and type(path[-1]) is int and type(op) not in _SEQUENCE_OPS:
            self._apply_element(op)
        else:
            _HANDLERS[type(op)](self, op)

    def _apply_make(self, op: O.Make) -> None:
        value = op.value if op.has_value else _DEFAULTS[op.type]
        if op.type == COUNTER:  # checked before the path's missing maps are made
            self._check_creatable(op.path)
            _check_counter(value)
        loc = self._field(op.path, create=True)
        assert loc is not None
        self._make(loc[0], loc[1], op.type, value)

    def _apply_set(self, op: O.Set) -> None:
        if not op.path:
            if not isinstance(op.value, dict):
                raise PatchError("the document itself must be an object", reason="type_mismatch")
            self._put_whole(op.value)
            return
        loc = self._field(op.path, create=True)
        assert loc is not None
        self._put_field(loc[0], loc[1], op.value)

    def _apply_del(self, op: O.Del) -> None:
        loc = self._field(op.path, create=False)
        if loc is not None:
            self._replace_variants(loc[0])
            self._delete_field(*loc)

    def _apply_inc(self, op: O.Inc) -> None:
        path = self._existing(op.path, (COUNTER,), "inc")
        if path is None:  # checked before the path's missing maps are made
            self._check_creatable(op.path)
            _check_counter(op.by)
            loc = self._field(op.path, create=True)
            assert loc is not None
            self._make(loc[0], loc[1], COUNTER, op.by)
        else:
            total = self._own_total(path) + op.by
            _check_counter(total)
            self._replace_variants(path)  # (by 0 too: a write, as before)
            if op.by:
                self._inc(path, total)

    def _apply_add(self, op: O.Add) -> None:
        path = self._written(op.path, (SET,), "add")
        if path is None:
            loc = self._field(op.path, create=True)
            assert loc is not None
            self._make(loc[0], loc[1], SET, [op.value])
        else:
            key = canonical(op.value)
            st: SetStore = self.doc._store_at(path)
            self._remove(list(st.elems.get(key, ())))
            self._add((path, key))

    def _apply_remove(self, op: O.Remove) -> None:
        path = self._written(op.path, (SET,), "remove")
        if path is not None:
            st: SetStore = self.doc._store_at(path)
            gone = list(st.elems.get(canonical(op.value), ()))
            if gone:
                self._keep(path, st)
                self._remove(gone)

    def _apply_insert(self, op: O.Insert) -> None:
        tags, what = _INSERT_TEXT if type(op.items) is str else _INSERT_VALUES
        path = self._existing(op.path, tags, what)
        _check_bounds(op, len(self.doc._seqs[path].seq) if path else None)
        if path is not None:
            self._replace_variants(path)
            self._seq_insert(path, op.index, op.items)
            return
        loc = self._field(op.path, create=True)  # an insert at 0 creates the field
        assert loc is not None
        self._make(loc[0], loc[1], tags[0], op.items)

    def _apply_delete(self, op: O.Delete) -> None:
        path = self._existing(op.path, *_DELETE)
        _check_bounds(op, len(self.doc._seqs[path].seq) if path else None)
        assert path is not None  # _check_bounds refuses a missing field
        self._replace_variants(path)
        self._seq_delete(path, op.index, op.count)

    def _apply_element(self, op: O.Op) -> None:
        index = op.path[-1]
        assert isinstance(index, int)
        path = self._existing(op.path[:-1], (LIST,), "an index")
        n = len(self.doc._seqs[path].seq) if path is not None else 0
        if path is None or index >= n:
            raise PatchError(
                f"no list item at {'/'.join(map(str, op.path))}", reason="invalid_path"
            )
        if not isinstance(op, O.Set | O.Del):
            raise PatchError(
                "only set and del apply to a list item; use insert/delete on the list",
                reason="invalid_path",
            )
        self._replace_variants(path)
        if isinstance(op, O.Set):
            if _same_value(self.doc._seqs[path].seq.item(index), op.value):
                return  # put semantics: the item already holds this value
            self._seq_delete(path, index, 1)
            self._seq_insert(path, index, [op.value])
        else:
            self._seq_delete(path, index, 1)

    # -- entry points ------------------------------------------------------------------------

    def put_document(self, value: Any) -> Document:
        if not isinstance(value, dict):
            raise InvalidOperation("a document must be a JSON object")
        O.check_value(value)
        existed = self.doc.exists()
        self._put_whole(value)
        return self._finish(existed)

    def _put_whole(self, value: dict[str, Any]) -> None:
        """Put semantics for the whole document, which then exists even if ``value`` is {}."""
        self._put_map((), value)
        self.creates = True

    def patch(self, ops: list[O.Op]) -> Document:
        existed = self.doc.exists()
        if len(ops) == 1:
            # Every operation checks what can fail before it changes anything.
            self._apply(ops[0])
            return self._finish(existed)
        if all(type(op) in _SEQUENCE_OPS for op in ops) and not _nested_paths(ops):
            # Text and list edits (an editor's "replace selection") are checked up front on
            # lengths alone, so they need no snapshot of a possibly large document. (Not when
            # one edit's field is on another's path: the first would make a field, a text or
            # the maps on the way, that the check of the second cannot see.)
            self._check_sequence_edits(ops)
            for op in ops:
                self._apply(op)
            return self._finish(existed)
        snapshot = self.doc.copy()
        next_before = self.counter.next
        try:
            for op in ops:
                self._apply(op)
        except BaseException:
            self.doc._restore(snapshot)
            self.counter.next = next_before
            self.delta = Document()  # (nothing changed after all)
            raise
        return self._finish(existed)

    def _check_sequence_edits(self, ops: list[O.Op]) -> None:
        """Raise what applying these inserts and deletes would raise, changing nothing."""
        lengths: dict[O.Path, tuple[str, int]] = {}  # fields as the edits so far leave them
        for op in ops:
            assert isinstance(op, O.Insert | O.Delete)
            _check_root(op.path)
            tags, what = _sequence_op_kind(op)
            known = lengths.get(op.path)
            if known is None:
                # (Raises what the edit alone would for a path through existing fields.)
                path = self._existing(op.path, tags, what)
                if path is None:
                    _check_field_names(op.path)  # (an edit that makes its field)
                known = (path[-1][1], len(self.doc._seqs[path].seq)) if path else None
            elif known[0] not in tags:
                raise _type_mismatch(op.path, known[0], what, tags)
            _check_bounds(op, known[1] if known else None)
            tag = known[0] if known else tags[0]
            n = known[1] if known else 0
            if isinstance(op, O.Insert):
                lengths[op.path] = (tag, n + len(op.items))
            else:
                lengths[op.path] = (tag, n - op.count)

    def delete_document(self) -> Document:
        doc = self.doc
        if not doc.exists():
            return self.delta
        for name in list(doc.root.fields):
            self._remove_field((), name)
        self._remove(list(doc.root.present))
        self._fresh()
        return self.delta


_SEQUENCE_OPS = (O.Insert, O.Delete)
_HANDLERS: dict[type, Any] = {
    O.Make: Change._apply_make,
    O.Set: Change._apply_set,
    O.Del: Change._apply_del,
    O.Inc: Change._apply_inc,
    O.Add: Change._apply_add,
    O.Remove: Change._apply_remove,
    O.Insert: Change._apply_insert,
    O.Delete: Change._apply_delete,
}


_INSERT_TEXT = ((TEXT,), "inserting text")
_INSERT_VALUES = ((LIST,), "inserting values")
_DELETE = ((TEXT, LIST), "delete")


def _sequence_op_kind(op: O.Insert | O.Delete) -> tuple[tuple[str, ...], str]:
    """The field types an insert or delete applies to, and how messages name it."""
    if isinstance(op, O.Delete):
        return _DELETE
    return _INSERT_TEXT if isinstance(op.items, str) else _INSERT_VALUES


def _check_field_names(path: O.Path) -> None:
    """Refuse a path to a field that is made (with the maps on its way) holding an index."""
    for elem in path:
        if type(elem) is not str:
            raise PatchError(f"path element {elem!r} is not a field name", reason="invalid_path")


def _nested_paths(ops: list[O.Op]) -> bool:
    """Whether one operation's path is a proper prefix of another's."""
    first = ops[0].path if ops else ()
    if all(op.path == first for op in ops):  # (an editor's edits of one text)
        return False
    paths = {tuple(op.path) for op in ops}
    return any(p[:i] in paths for p in paths for i in range(1, len(p)))


def _check_root(path: O.Path) -> None:
    """A path starting with an index is a type mismatch (as for ``["m", 0]``, ``m`` a map)."""
    if path and type(path[0]) is int:
        raise PatchError(
            f"the document is a map; an index needs a list (path element {path[0]!r})",
            reason="type_mismatch",
        )


def _type_mismatch(path: O.Path, tag: str, what: str, tags: tuple[str, ...]) -> PatchError:
    return PatchError(
        f"{'/'.join(map(str, path))} is a {tag}; {what} needs a {' or '.join(tags)}",
        reason="type_mismatch",
    )


def _check_bounds(op: O.Insert | O.Delete, length: int | None) -> None:
    """Raise unless ``op`` fits a sequence of ``length`` items (None: the field is absent)."""
    if isinstance(op, O.Insert):
        if length is None:
            if op.index != 0:
                kind = "text" if isinstance(op.items, str) else "list"
                raise PatchError(
                    f"index {op.index} is out of range (no such {kind})", reason="invalid_path"
                )
        elif op.index > length:
            raise PatchError(
                f"index {op.index} is out of range (length {length})", reason="invalid_path"
            )
    elif length is None:
        raise PatchError(f"no text or list at {'/'.join(map(str, op.path))}", reason="invalid_path")
    elif op.index + op.count > length:
        raise PatchError(
            f"range {op.index}..{op.index + op.count} is out of range (length {length})",
            reason="invalid_path",
        )
