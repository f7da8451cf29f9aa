"""Concurrent merges against an event-history oracle written from docs/data-model.md.

tests/test_document_model.py checks one replica against a plain JSON model; CRDT machinery
only shows once several devices write concurrently. This test runs 2-3 replicas (distinct
:class:`DotCounter` replica ids) that apply random ``put``, ``patch`` and ``delete`` steps and
exchange what they wrote in random ways: single deltas (also again, as duplicates), whole
states, and catch-up deltas (``delta_since``). In parallel an *oracle* records every change
as an event together with the set of events its replica had seen when it made it (its causal
past), and computes from that history alone what a replica that has seen a given set of
events must show.

The oracle is the data model's merge rules stated over events ("what the other device wrote,
not what it saw"):

- every change *writes* things: a register value, a device's running counter total, a set
  element, a text or list run, and the marker that a container (map, set, text, list, or the
  document itself) was created; and it *removes* things it saw (what it overwrote, deleted or
  replaced, computed from the replica's view when the change was made);
- something written is shown by a replica that has seen its event unless that replica has seen
  an event that removed it, and such an event saw it: a removal never touches a concurrent
  write. That is add-wins for sets, update-wins for map fields and whole documents, and
  registers that keep every concurrent value (the winner is the value with the greatest dot,
  read from the change's delta);
- a counter is the sum of each device's running total (docs: a counter deleted while a device
  increments it survives with that device's whole total, earlier increments too); a ``put`` of
  a number onto a counter is an increment by the difference;
- a field with variants of several types (concurrent creation) shows the first visible one in
  the order map, list, text, set, counter, register, and the next write to it replaces the
  others; concurrent creations of one type make one field holding both;
- a container, and the document, exists while anything written in it (or its marker) is shown.

What each operation writes and removes follows the documented ``put``/``patch`` semantics,
applied to the oracle's own view of the writing replica. Where the docs leave a choice open,
the oracle follows the implementation ("ambiguous"): a change that only removes (a ``del`` or
``remove`` inside a container, a ``put`` of ``{}`` onto a non-empty document) writes nothing,
so it does not keep alive a container deleted concurrently; ``conflicts()`` lists only shown
registers. Texts and lists are only checked for
which runs of characters or items they hold (the order is Fugue's, covered elsewhere).

Checks, after every step: each replica's ``render()`` and ``conflicts()`` equal the oracle's
prediction for exactly the events it has seen; a patch is refused by both or by neither; a
change the oracle finds empty has an empty delta. Single deltas are delivered in causal order
during the run (protocol/SPEC.md 5.2 pushes a raw delta only to a peer that holds the rest of
the document); at the end, fresh observers and every replica receive all deltas in any order,
duplicated, and must equal the oracle whenever what they received is causally closed, and all
equal each other and the oracle for the full history at the end (strong eventual consistency).

The tests at the end hold the smallest cases of the bug the oracle found: a container that
survived a concurrent delete (update-wins) vanished when a later change emptied it, although
that change deleted only something inside it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.crdt import Document, Dot, DotCounter, parse_ops
from syncd.errors import PatchError

Json = Any
Op = dict[str, Any]

MAP, LIST, TEXT, SET, COUNTER, REGISTER = "map", "list", "text", "set", "counter", "register"
PRECEDENCE = (MAP, LIST, TEXT, SET, COUNTER, REGISTER)
"""data-model.md, "Concurrent creation with different types"."""
CONTAINERS = (MAP, LIST, TEXT, SET)

Step = tuple[str, str]
"""One step down the document: (field name, type of the variant)."""
Loc = tuple[Step, ...]
"""Where something written lives: the field variant (``()`` for the document itself)."""
AtomId = tuple[int, int]
"""(event, n): the n-th thing its event wrote."""

MARKER, VALUE, ELEMENT, RUN = "marker", "value", "element", "run"
"""Kinds of things written: a container's creation marker, a register value or a device's
counter total, a set element, a run of text characters or list items."""


def canonical(value: Json) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def element_key(text: str) -> tuple[int, Any, str]:
    """Set order for the elements used here (numbers, then strings)."""
    value = json.loads(text)
    return (3, value, text) if isinstance(value, str) else (2, value, text)


# -- the event history -----------------------------------------------------------------------


@dataclass(frozen=True)
class Atom:
    """One thing an event wrote."""

    ident: AtomId
    loc: Loc
    kind: str
    value: Json
    replica: str


@dataclass
class Event:
    replica: str
    past: frozenset[int]
    created: dict[AtomId, Atom]
    removed: frozenset[AtomId]


class Refused(Exception):
    """The oracle's verdict that a patch fails (the engine must refuse it too)."""


class SteppedAround(Exception):
    """A change the random test does not make: it would diff a text or list (order is not
    modelled)."""


@dataclass
class Oracle:
    events: list[Event] = field(default_factory=list)
    dots: dict[AtomId, Dot] = field(default_factory=dict)
    """The dot of every register value, read from the change's delta (the winner rule)."""
    deltas: list[Document] = field(default_factory=list)
    """The delta of each event."""

    def live(self, seen: Iterable[int]) -> dict[AtomId, Atom]:
        """What a replica that has seen ``seen`` shows: written, and not removed by an event
        that saw it (a removal only ever lists what its replica saw)."""
        seen = list(seen)
        removed: set[AtomId] = set()
        for e in seen:
            removed |= self.events[e].removed
        return {i: a for e in seen for i, a in self.events[e].created.items() if i not in removed}

    def closed(self, seen: set[int]) -> bool:
        return all(self.events[e].past <= seen for e in seen)

    def expected(self, seen: Iterable[int]) -> tuple[Json, list[dict[str, Json]]]:
        live = list(self.live(seen).values())
        if not live:
            return None, []
        conflicts: list[dict[str, Json]] = []
        return render_map(live, 0, [], self.dots, conflicts), conflicts


@dataclass(frozen=True)
class Unordered:
    """A text or list: only which characters or items it holds is predicted."""

    items: tuple[str, ...]


def render_map(
    atoms: list[Atom],
    depth: int,
    path: list[str],
    dots: dict[AtomId, Dot],
    conflicts: list[dict[str, Json]],
) -> dict[str, Json]:
    fields: dict[str, dict[str, list[Atom]]] = {}
    for a in atoms:
        if len(a.loc) > depth:
            name, tag = a.loc[depth]
            fields.setdefault(name, {}).setdefault(tag, []).append(a)
    out: dict[str, Json] = {}
    for name in sorted(fields):
        variants = fields[name]
        tag = next(t for t in PRECEDENCE if t in variants)
        below = variants[tag]
        own = [a for a in below if len(a.loc) == depth + 1]
        if tag == REGISTER:
            own.sort(key=lambda a: (dots[a.ident][1], dots[a.ident][0]), reverse=True)
            out[name] = own[0].value
            if len(own) > 1:
                conflicts.append({"path": [*path, name], "values": [a.value for a in own]})
        elif tag == COUNTER:
            out[name] = sum(a.value for a in own)
        elif tag == SET:
            keys = {a.value for a in own if a.kind == ELEMENT}
            out[name] = [json.loads(k) for k in sorted(keys, key=element_key)]
        elif tag in (TEXT, LIST):
            items: list[str] = []
            for a in own:
                if a.kind == RUN:
                    items.extend(a.value if tag == TEXT else (canonical(x) for x in a.value))
            out[name] = Unordered(tuple(sorted(items)))
        else:
            out[name] = render_map(below, depth + 1, [*path, name], dots, conflicts)
    return out


# -- one change, as the docs define it, applied to the oracle's view ---------------------------


def is_int(value: Json) -> bool:
    return type(value) is int


class Change:
    """One atomic change made by ``replica`` on the view ``live``: what it writes and removes.

    The structure follows docs/data-model.md (put, patch, delete); paths through maps are
    walked on the shown variant of each field."""

    def __init__(self, event: int, replica: str, live: dict[AtomId, Atom]) -> None:
        self.event = event
        self.replica = replica
        self.live = dict(live)
        self.created: dict[AtomId, Atom] = {}
        self.removed: set[AtomId] = set()
        self.n = 0
        self.added = False
        self.creates = False

    # -- the view ------------------------------------------------------------------------

    def under(self, loc: Loc) -> list[Atom]:
        n = len(loc)
        return [a for a in self.live.values() if a.loc[:n] == loc]

    def tags(self, mp: Loc, name: str) -> set[str]:
        """The visible variants of field ``name`` of the map at ``mp``."""
        n = len(mp)
        return {
            a.loc[n][1]
            for a in self.live.values()
            if len(a.loc) > n and a.loc[:n] == mp and a.loc[n][0] == name
        }

    def winner(self, mp: Loc, name: str) -> str | None:
        tags = self.tags(mp, name)
        return next((t for t in PRECEDENCE if t in tags), None)

    def own(self, loc: Loc, kind: str) -> list[Atom]:
        return [a for a in self.live.values() if a.loc == loc and a.kind == kind]

    def exists(self) -> bool:
        return bool(self.live)

    # -- writing and removing ------------------------------------------------------------

    def add(self, loc: Loc, kind: str, value: Json = None) -> None:
        self.n += 1
        ident = (self.event, self.n)
        atom = Atom(ident, loc, kind, value, self.replica)
        self.live[ident] = atom
        self.created[ident] = atom
        self.added = True

    def remove(self, atoms: Iterable[Atom]) -> None:
        for a in list(atoms):
            del self.live[a.ident]
            if a.ident in self.created:
                del self.created[a.ident]
            else:
                self.removed.add(a.ident)

    def remove_field(self, mp: Loc, name: str, keep: str | None = None) -> None:
        for tag in self.tags(mp, name) - {keep}:
            loc = (*mp, (name, tag))
            self.remove(self.under(loc))

    def keep(self, loc: Loc) -> None:
        """Before a change takes content out of a container (the document, a map, a set):
        one that shows through its content alone (a merge left it without its own marker,
        see data-model.md on update-wins) gets a marker, so that it stays when emptied."""
        if not self.own(loc, MARKER):
            self.add(loc, MARKER)

    def delete_field(self, mp: Loc, name: str) -> None:
        """``del`` of a field: the map it is in stays (:meth:`keep`)."""
        if self.tags(mp, name):
            self.keep(mp)
            self.remove_field(mp, name)

    def replace_variants(self, path: Loc) -> None:
        """A write replaces the other variants of its field and of each map on its way."""
        for i, (name, tag) in enumerate(path):
            self.remove_field(path[:i], name, keep=tag)

    # -- fields ----------------------------------------------------------------------------

    def make(self, mp: Loc, name: str, tag: str, value: Json) -> None:
        self.remove_field(mp, name)
        loc = (*mp, (name, tag))
        if tag in (REGISTER, COUNTER):
            self.add(loc, VALUE, value)
            return
        self.add(loc, MARKER)
        if tag == SET:
            for key in dict.fromkeys(canonical(v) for v in value):
                self.add(loc, ELEMENT, key)
        elif tag == MAP:
            for k, v in value.items():
                self.put_field(loc, k, v)
        elif value:
            self.add(loc, RUN, value if tag == TEXT else tuple(value))

    def write_register(self, mp: Loc, name: str, value: Json) -> None:
        loc = (*mp, (name, REGISTER))
        values = self.own(loc, VALUE)
        if len(values) == 1 and canonical(values[0].value) == canonical(value):
            return  # the register's single value: no change
        self.remove(values)
        self.add(loc, VALUE, value)

    def put_field(self, mp: Loc, name: str, value: Json) -> None:
        """``put`` semantics for one field (data-model.md, "put")."""
        tag = self.winner(mp, name)
        default = MAP if isinstance(value, dict) else REGISTER
        loc = (*mp, (name, tag or default))
        if tag is None:
            self.make(mp, name, default, value)
        elif tag == MAP and isinstance(value, dict):
            self.remove_field(mp, name, keep=tag)
            self.put_map(loc, value)
        elif tag in (TEXT, LIST) and isinstance(value, str if tag == TEXT else list):
            raise SteppedAround("a put that diffs a text or list")
        elif tag == SET and isinstance(value, list):
            self.remove_field(mp, name, keep=tag)
            target = dict.fromkeys(canonical(v) for v in value)
            elements = self.own(loc, ELEMENT)
            gone = [a for a in elements if a.value not in target]
            if gone:
                self.keep(loc)
                self.remove(gone)
            have = {a.value for a in elements}
            for key in target:
                if key not in have:
                    self.add(loc, ELEMENT, key)
        elif tag == COUNTER and is_int(value):
            self.remove_field(mp, name, keep=tag)
            by = value - sum(a.value for a in self.own(loc, VALUE))
            if by:
                self.inc(loc, by)
        elif tag == REGISTER and not isinstance(value, dict):
            self.remove_field(mp, name, keep=tag)
            self.write_register(mp, name, value)
        else:  # the type does not fit: replaced
            self.make(mp, name, default, value)

    def put_map(self, loc: Loc, value: dict[str, Json]) -> None:
        names = {a.loc[len(loc)][0] for a in self.under(loc) if len(a.loc) > len(loc)}
        for name in sorted(names - value.keys()):
            self.delete_field(loc, name)
        for k, v in value.items():
            self.put_field(loc, k, v)

    def inc(self, loc: Loc, by: int) -> None:
        """This device's running total of the counter grows by ``by``."""
        mine = [a for a in self.own(loc, VALUE) if a.replica == self.replica]
        total = sum(a.value for a in mine) + by
        self.remove(mine)
        self.add(loc, VALUE, total)

    # -- paths -----------------------------------------------------------------------------

    def walk(self, names: list[str], create: bool) -> Loc | None:
        """The map that ``names`` lead to (maps made where missing, if ``create``)."""
        mp: Loc = ()
        for i, name in enumerate(names):
            tag = self.winner(mp, name)
            if tag is None:
                if not create:
                    return None
                for rest in names[i:]:
                    self.make(mp, rest, MAP, {})
                    mp = (*mp, (rest, MAP))
                return mp
            if tag != MAP:
                raise Refused("type_mismatch: the path goes through a " + tag)
            mp = (*mp, (name, MAP))
        return mp

    def field(self, path: list[str], create: bool) -> tuple[Loc, str] | None:
        mp = self.walk(path[:-1], create)
        if mp is None:
            return None
        if create:
            self.replace_variants(mp)
        return mp, path[-1]

    def existing(self, path: list[str], *tags: str) -> Loc | None:
        found = self.field(path, create=False)
        if found is None:
            return None
        mp, name = found
        tag = self.winner(mp, name)
        if tag is None:
            return None
        if tag not in tags:
            raise Refused(f"type_mismatch: {tag}, not {tags}")
        return (*mp, (name, tag))

    def created_field(self, path: list[str]) -> tuple[Loc, str]:
        found = self.field(path, create=True)
        assert found is not None
        return found

    # -- operations ------------------------------------------------------------------------

    def apply(self, op: Op) -> None:
        kind, path = op["op"], op["path"]
        if kind == "set" and not path:
            self.put_whole(op["value"])
        elif kind == "set":
            self.put_field(*self.created_field(path), op["value"])
        elif kind == "make":
            default = {TEXT: "", COUNTER: 0, SET: [], LIST: [], MAP: {}, REGISTER: None}
            self.make(*self.created_field(path), op["type"], op.get("value", default[op["type"]]))
        elif kind == "del":
            found = self.field(path, create=False)
            if found is not None:
                self.replace_variants(found[0])
                self.delete_field(*found)
        elif kind == "inc":
            loc = self.existing(path, COUNTER)
            if loc is None:
                self.make(*self.created_field(path), COUNTER, op["by"])
            else:
                self.replace_variants(loc)
                self.inc(loc, op["by"])
        elif kind in ("add", "remove"):
            loc = self.existing(path, SET)
            if loc is not None:
                self.replace_variants(loc)
                key = canonical(op["value"])
                gone = [a for a in self.own(loc, ELEMENT) if a.value == key]
                if gone:
                    self.keep(loc)
                    self.remove(gone)
                if kind == "add":
                    self.add(loc, ELEMENT, key)
            elif kind == "add":
                self.make(*self.created_field(path), SET, [op["value"]])
        else:  # insert, at the start or the end only
            tag = TEXT if "text" in op else LIST
            items = op.get("text", op.get("values"))
            loc = self.existing(path, tag)
            if loc is None:
                if op["index"] != 0:
                    raise Refused("invalid_path: no such text or list")
                self.make(*self.created_field(path), tag, items)
            else:
                if op["index"] > seq_length(self.own(loc, RUN)):
                    raise Refused("invalid_path: index out of range")
                self.replace_variants(loc)
                if items:
                    self.add(loc, RUN, items if tag == TEXT else tuple(items))

    def put_whole(self, value: dict[str, Json]) -> None:
        self.put_map((), value)
        self.creates = True

    def patch(self, ops: list[Op]) -> None:
        existed = self.exists()
        for op in ops:
            self.apply(op)
        self.finish(existed)

    def put(self, value: dict[str, Json]) -> None:
        existed = self.exists()
        self.put_whole(value)
        self.finish(existed)

    def delete(self) -> None:
        if self.exists():
            self.remove(list(self.live.values()))

    def finish(self, existed: bool) -> None:
        """A change that makes the document exist writes the document's marker."""
        if not existed and (self.added or self.creates):
            self.add((), MARKER)

    def finished(self, past: frozenset[int]) -> Event:
        return Event(self.replica, past, self.created, frozenset(self.removed))


def seq_length(runs: list[Atom]) -> int:
    return sum(len(a.value) for a in runs)


# -- comparing the engine with the oracle ----------------------------------------------------


def normalized(actual: Json, expected: Json) -> Json:
    """``actual`` with its texts and lists (where the oracle has them) reduced to their
    sorted characters or items."""
    if isinstance(expected, Unordered):
        if isinstance(actual, str):
            return Unordered(tuple(sorted(actual)))
        if isinstance(actual, list):
            return Unordered(tuple(sorted(canonical(x) for x in actual)))
        return actual
    if isinstance(expected, dict) and isinstance(actual, dict):
        return {k: normalized(v, expected.get(k)) for k, v in actual.items()}
    return actual


def shown(value: Json) -> str:
    """JSON text (so that ``1`` and ``true`` differ, and key order counts)."""
    return json.dumps(value, default=lambda u: {"unordered": list(u.items)})


def conflict_key(conflicts: list[dict[str, Json]]) -> list[tuple[str, str, list[str]]]:
    """Per register: its path, its winner, and its other values (their order is not
    documented)."""
    out = []
    for c in conflicts:
        values = [canonical(v) for v in c["values"]]
        out.append((canonical(c["path"]), values[0], sorted(values[1:])))
    return sorted(out)


def check(doc: Document, oracle: Oracle, seen: set[int], who: str) -> None:
    value, conflicts = oracle.expected(seen)
    actual = doc.render()
    assert shown(normalized(actual, value)) == shown(value), (
        f"{who} saw events {sorted(seen)}: shows {actual!r}, the docs say {value!r}"
    )
    assert conflict_key(doc.conflicts()) == conflict_key(conflicts), (
        f"{who} saw events {sorted(seen)}: conflicts {doc.conflicts()!r}, expected {conflicts!r}"
    )


# -- replicas ----------------------------------------------------------------------------------


@dataclass
class Replica:
    doc: Document
    counter: DotCounter
    seen: set[int]


Write = tuple[str, Any]
"""("put", object) | ("patch", ops) | ("delete", None)."""


def register_dot(delta: Document, loc: Loc) -> tuple[Dot, Json]:
    """The one register value the change wrote at ``loc``, from its delta."""
    store: Any = delta.root
    for name, tag in loc:
        store = store.fields[name][tag]
    assert len(store) == 1, store
    ((dot, value),) = store.items()
    return dot, value


def engine_change(rep: Replica, change: Write) -> Document | str:
    """The delta of ``change`` made on the replica, or the reason it was refused."""
    kind, arg = change
    try:
        if kind == "put":
            return rep.doc.put(arg, rep.counter)
        if kind == "patch":
            return rep.doc.patch(parse_ops(arg), rep.counter)
        return rep.doc.delete(rep.counter)
    except PatchError as exc:
        return exc.reason


def make_change(oracle: Oracle, rep: Replica, change: Write) -> bool:
    """Apply ``change`` to the replica and to the oracle; False if it was stepped around."""
    before = oracle.live(rep.seen)
    ch = Change(len(oracle.events), rep.counter.replica, before)
    kind, arg = change
    refused = False
    try:
        if kind == "put":
            ch.put(arg)
        elif kind == "patch":
            ch.patch(arg)
        else:
            ch.delete()
        event = ch.finished(frozenset(rep.seen))
    except Refused:
        refused = True
    except SteppedAround:
        return False
    delta = engine_change(rep, change)
    if isinstance(delta, str):
        assert refused, f"the engine refused {arg!r} ({delta}), the oracle applies it"
        return True
    assert not refused, f"the engine applied {arg!r}, which the oracle refuses"
    writes = next(iter(delta.live_dots()), None) is not None
    assert bool(event.created) == writes, f"{change!r}: the oracle writes {event.created!r}"
    assert not event.removed or delta.ctx, f"{change!r}: a removal without a delta"
    for ident, atom in event.created.items():
        if atom.kind == VALUE and atom.loc[-1][1] == REGISTER:
            dot, value = register_dot(delta, atom.loc)
            assert canonical(value) == canonical(atom.value)
            oracle.dots[ident] = dot
    oracle.events.append(event)
    rep.seen.add(len(oracle.events) - 1)
    oracle.deltas.append(delta.copy())
    return True


# -- random changes --------------------------------------------------------------------------

TOP = ["a", "b", "c"]
INNER = ["x", "y"]
SCALARS: list[Json] = [0, 1, 2, "p", "q", True, None]
ELEMENTS: list[Json] = [0, 1, 2, "p"]


def view_fields(live: dict[AtomId, Atom]) -> dict[tuple[str, ...], str]:
    """The shown fields of a view: path -> type (through maps)."""
    out: dict[tuple[str, ...], str] = {}
    ch = Change(-1, "", live)

    def visit(mp: Loc, names: tuple[str, ...]) -> None:
        for name in sorted({a.loc[len(mp)][0] for a in ch.under(mp) if len(a.loc) > len(mp)}):
            tag = ch.winner(mp, name)
            if tag is not None:
                out[(*names, name)] = tag
                if tag == MAP:
                    visit((*mp, (name, MAP)), (*names, name))

    visit((), ())
    return out


def fit(value: Json, path: tuple[str, ...], fields: dict[tuple[str, ...], str]) -> Json:
    """``value`` for a put at ``path``, made not to diff a text or list (a string or array
    given to one becomes a number)."""
    tag = fields.get(path)
    if (tag == TEXT and isinstance(value, str)) or (tag == LIST and isinstance(value, list)):
        return 0
    if isinstance(value, dict) and tag == MAP:
        return {k: fit(v, (*path, k), fields) for k, v in value.items()}
    return value


@st.composite
def paths(draw: st.DrawFn, fields: dict[tuple[str, ...], str]) -> list[str]:
    known = sorted(fields)
    pick = draw(st.booleans())
    if known and pick:
        return list(draw(st.sampled_from(known)))
    top = draw(st.sampled_from(TOP))
    return [top, draw(st.sampled_from(INNER))] if draw(st.integers(0, 2)) == 0 else [top]


values = st.one_of(
    st.sampled_from(SCALARS),
    st.lists(st.sampled_from(ELEMENTS), max_size=3, unique=True),
)
inner_objects = st.dictionaries(st.sampled_from(INNER), values, max_size=2)


@st.composite
def operations(draw: st.DrawFn, fields: dict[tuple[str, ...], str]) -> Op:
    path = draw(paths(fields))
    tag = fields.get(tuple(path))
    kind = draw(st.sampled_from(["set", "set", "del", "inc", "add", "remove", "make", "insert"]))
    if tag == COUNTER and draw(st.booleans()):
        kind = "inc"
    elif tag == SET and draw(st.booleans()):
        kind = draw(st.sampled_from(["add", "remove"]))
    op: Op = {"op": kind, "path": path}
    if kind == "set":
        value = draw(inner_objects if len(path) == 1 and draw(st.booleans()) else values)
        if tag == COUNTER and draw(st.booleans()):
            value = draw(st.integers(-3, 6))  # a put of a number onto a counter
        op["value"] = fit(value, tuple(path), fields)
    elif kind == "inc":
        op["by"] = draw(st.sampled_from([-2, -1, 1, 3]))
    elif kind in ("add", "remove"):
        op["value"] = draw(st.sampled_from(ELEMENTS))
    elif kind == "make":
        t = op["type"] = draw(st.sampled_from([COUNTER, SET, MAP, REGISTER, TEXT, LIST]))
        op["value"] = draw(
            {
                COUNTER: st.integers(0, 10),
                SET: st.lists(st.sampled_from(ELEMENTS), max_size=2),
                MAP: inner_objects if len(path) == 1 else st.just({}),
                REGISTER: st.sampled_from(SCALARS),
                TEXT: st.sampled_from(["", "ab", "cd"]),
                LIST: st.lists(st.integers(0, 9), max_size=2),
            }[t]
        )
    elif kind == "insert":
        key = "values" if tag == LIST else "text"
        op[key] = [7] if key == "values" else draw(st.sampled_from(["uv", "w"]))
        op["index"] = 0
    return op


@st.composite
def changes(draw: st.DrawFn, live: dict[AtomId, Atom]) -> Write:
    fields = view_fields(live)
    roll = draw(st.integers(0, 19))
    if roll == 0:
        return ("delete", None)
    if roll <= 2:
        value = draw(st.dictionaries(st.sampled_from(TOP), values | inner_objects, max_size=3))
        return ("put", fit(value, (), {(): MAP, **fields}))
    ops = [draw(operations(fields)) for _ in range(draw(st.sampled_from([1, 1, 1, 2])))]
    for op in ops:
        if op["op"] == "insert" and fields.get(tuple(op["path"])) in (TEXT, LIST):
            # the start or the end of what this replica sees
            ch = Change(-1, "", live)
            loc = ch.existing(op["path"], TEXT, LIST)
            assert loc is not None
            end = seq_length(ch.own(loc, RUN))
            op["index"] = draw(st.integers(0, end))
    return ("patch", ops)


def causal_delivery(oracle: Oracle, rep: Replica) -> list[int]:
    """Events the replica may receive next, as single deltas, in causal order."""
    return [e for e, ev in enumerate(oracle.events) if e not in rep.seen and ev.past <= rep.seen]


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_replicas_show_what_the_merge_rules_say(data: st.DataObject) -> None:
    oracle = Oracle()
    n = data.draw(st.integers(2, 3), label="replicas")
    reps = [
        Replica(Document(), DotCounter(f"r{i}", data.draw(st.integers(1, 4))), set())
        for i in range(n)
    ]
    for _ in range(data.draw(st.integers(1, 30), label="steps")):
        i = data.draw(st.integers(0, n - 1), label="replica")
        rep = reps[i]
        action = data.draw(
            st.sampled_from(["change"] * 5 + ["delta"] * 3 + ["again", "state", "catch-up"])
        )
        if action == "change":
            change = data.draw(changes(oracle.live(rep.seen)), label="change")
            make_change(oracle, rep, change)
        elif action == "delta":
            ready = causal_delivery(oracle, rep)
            if ready:
                e = data.draw(st.sampled_from(ready), label="deliver")
                rep.doc.join(oracle.deltas[e].copy())
                rep.seen.add(e)
        elif action == "again" and rep.seen:
            rep.doc.join(oracle.deltas[data.draw(st.sampled_from(sorted(rep.seen)))].copy())
        elif action in ("state", "catch-up"):
            other = reps[data.draw(st.integers(0, n - 1), label="from")]
            if action == "state":
                rep.doc.join(other.doc.copy())
            else:
                part = other.doc.delta_since(rep.doc.ctx)
                if part is not None:
                    rep.doc.join(part)
            rep.seen |= other.seen
        check(rep.doc, oracle, rep.seen, f"replica {i}")

    # Everything, everywhere, in any order and duplicated.
    everything = set(range(len(oracle.events)))
    observers = [Replica(Document(), DotCounter("observer"), set()) for _ in range(2)]
    for who, rep in enumerate([*reps, *observers]):
        missing = sorted(everything - rep.seen)
        order = data.draw(st.permutations(missing), label="order")
        extra = (
            data.draw(st.lists(st.sampled_from(sorted(everything)), max_size=3))
            if everything
            else []
        )
        for e in [*order, *extra]:
            rep.doc.join(oracle.deltas[e].copy())
            rep.seen.add(e)
            if oracle.closed(rep.seen):
                check(rep.doc, oracle, rep.seen, f"replica {who} (any order)")
        check(rep.doc, oracle, everything, f"replica {who} (everything)")
    for rep in [*reps, *observers]:
        assert rep.doc == reps[0].doc


# -- the oracle itself, on documented examples -------------------------------------------------


def history(n: int = 2) -> tuple[Oracle, list[Replica]]:
    return Oracle(), [Replica(Document(), DotCounter(f"r{i}"), set()) for i in range(n)]


def write(oracle: Oracle, rep: Replica, kind: str, arg: Any = None) -> int:
    """Make a change on ``rep`` (checked against the oracle); its event."""
    assert make_change(oracle, rep, (kind, arg))
    check(rep.doc, oracle, rep.seen, "writer")
    return len(oracle.events) - 1


def deliver(oracle: Oracle, rep: Replica, *events: int) -> Json:
    """Deliver single deltas; what the replica shows then (checked against the oracle)."""
    for e in events:
        rep.doc.join(oracle.deltas[e].copy())
        rep.seen.add(e)
    check(rep.doc, oracle, rep.seen, "receiver")
    return oracle.expected(rep.seen)[0]


def test_the_oracle_follows_the_documented_examples() -> None:
    # CONTRACT.md: sets are add-wins.
    o, (a, b) = history()
    deliver(o, b, write(o, a, "patch", [{"op": "add", "path": ["s"], "value": "x"}]))
    ea = write(o, a, "patch", [{"op": "remove", "path": ["s"], "value": "x"}])
    eb = write(o, b, "patch", [{"op": "add", "path": ["s"], "value": "x"}])
    assert deliver(o, a, eb) == deliver(o, b, ea) == {"s": ["x"]}

    # A map field deleted while another device updates it survives with the update (and
    # without what that device only saw).
    o, (a, b) = history()
    deliver(o, b, write(o, a, "put", {"m": {"x": 1, "y": 2}}))
    ea = write(o, a, "patch", [{"op": "del", "path": ["m"]}])
    eb = write(o, b, "patch", [{"op": "set", "path": ["m", "x"], "value": 5}])
    assert deliver(o, a, eb) == deliver(o, b, ea) == {"m": {"x": 5}}

    # The same holds for a whole document; a write that changes nothing is no update.
    o, (a, b) = history()
    deliver(o, b, write(o, a, "put", {"x": 1, "y": 2}))
    ea = write(o, a, "delete")
    eb = write(o, b, "patch", [{"op": "set", "path": ["x"], "value": 7}])
    assert deliver(o, a, eb) == deliver(o, b, ea) == {"x": 7}
    o, (a, b) = history()
    deliver(o, b, write(o, a, "put", {"x": 1}))
    ea = write(o, a, "delete")
    eb = write(o, b, "put", {"x": 1})
    assert deliver(o, a, eb) is deliver(o, b, ea) is None

    # Registers keep every concurrent value; the greatest dot (counter, then replica) wins.
    o, (a, b) = history()
    b.counter.next = 100
    deliver(o, b, write(o, a, "put", {"x": 0}))
    ea = write(o, a, "put", {"x": "from A"})
    eb = write(o, b, "put", {"x": "from B"})
    assert deliver(o, a, eb) == deliver(o, b, ea) == {"x": "from B"}
    assert o.expected(a.seen)[1] == [{"path": ["x"], "values": ["from B", "from A"]}]

    # A counter deleted while a device increments it survives with that device's whole
    # total, its earlier increments too.
    o, (a, b) = history()
    deliver(o, b, write(o, a, "patch", [{"op": "inc", "path": ["n"], "by": 1}]))
    eb = write(o, b, "patch", [{"op": "del", "path": ["n"]}])
    ea = write(o, a, "patch", [{"op": "inc", "path": ["n"], "by": 2}])
    assert deliver(o, a, eb) == deliver(o, b, ea) == {"n": 3}

    # Concurrent creation: with the same type one field holds both, with different types
    # the precedence order picks the variant shown, and the next write replaces the others.
    o, (a, b) = history()
    make: Op = {"op": "make", "path": ["n"], "type": "counter", "value": 10}
    ea, eb = write(o, a, "patch", [make]), write(o, b, "patch", [make])
    assert deliver(o, a, eb) == deliver(o, b, ea) == {"n": 20}
    o, (a, b) = history()
    make = {"op": "make", "path": ["t"], "type": "text", "value": "hello"}
    ea, eb = write(o, a, "patch", [make]), write(o, b, "patch", [make])
    assert deliver(o, a, eb) == deliver(o, b, ea) == {"t": Unordered(tuple(sorted("hellohello")))}
    assert a.doc.render() == b.doc.render() == {"t": "hellohello"}
    o, (a, b) = history()
    ea = write(o, a, "patch", [{"op": "make", "path": ["f"], "type": "text", "value": "hi"}])
    eb = write(o, b, "patch", [{"op": "make", "path": ["f"], "type": "counter", "value": 4}])
    assert deliver(o, b, ea) == {"f": Unordered(("h", "i"))}
    eb = write(o, b, "put", {"f": 5})
    assert deliver(o, a, *b.seen) == {"f": 5}


# -- what the oracle found ---------------------------------------------------------------------
# A container that survives a concurrent delete because of an update holds that update but not
# the container's own creation marker (the delete removed it). When a later change on any
# device removes the update, the container vanishes although nothing deleted it: the document
# no longer exists after a `del` of one of its fields (or a `put` of `{}`, which data-model.md
# says creates the document "even with {}"), a map field disappears after a `del` of its last
# field, a set after the `remove` of its last element. A replica that reached the same shown
# document without the concurrent delete shows `{}`, `{"m": {}}` or `{"s": []}`.


@dataclass(frozen=True)
class Vanishing:
    setup: list[Op]
    """What device a makes, and b receives."""
    update: list[Op]
    """What b then writes while a deletes (``delete``, or the whole document if None)."""
    delete: list[Op] | None
    then: Op | None
    """What b does next (None: a put of ``{}``), after both merged."""
    expected: Json
    shown_by: list[Op]
    """A patch that makes a fresh document show what b shows before ``then``."""

    def survivor(self) -> Document:
        a, ca, b, cb = Document(), DotCounter("a"), Document(), DotCounter("b")
        b.join(a.patch(parse_ops(self.setup), ca))
        db = b.patch(parse_ops(self.update), cb)
        da = a.patch(parse_ops(self.delete), ca) if self.delete is not None else a.delete(ca)
        a.join(db)
        b.join(da)
        assert a.render() == b.render()
        return b

    def then_apply(self, doc: Document) -> Json:
        counter = DotCounter("c")
        if self.then is None:
            doc.put({}, counter)
        else:
            doc.patch(parse_ops([self.then]), counter)
        return doc.render()


VANISHING = {
    "document, del of its last field": Vanishing(
        setup=[{"op": "set", "path": ["x"], "value": 1}],
        update=[{"op": "set", "path": ["x"], "value": 7}],
        delete=None,
        then={"op": "del", "path": ["x"]},
        expected={},
        shown_by=[{"op": "set", "path": ["x"], "value": 7}],
    ),
    "document, put of {}": Vanishing(  # data-model.md: put creates it "even with {}"
        setup=[{"op": "set", "path": ["x"], "value": 1}],
        update=[{"op": "set", "path": ["x"], "value": 7}],
        delete=None,
        then=None,
        expected={},
        shown_by=[{"op": "set", "path": ["x"], "value": 7}],
    ),
    "map field, del of its last field": Vanishing(
        setup=[{"op": "set", "path": ["m"], "value": {"x": 1, "y": 2}}],
        update=[{"op": "set", "path": ["m", "x"], "value": 5}],
        delete=[{"op": "del", "path": ["m"]}],
        then={"op": "del", "path": ["m", "x"]},
        expected={"m": {}},
        shown_by=[{"op": "set", "path": ["m"], "value": {"x": 5}}],
    ),
    "text, delete of its last characters": Vanishing(
        setup=[{"op": "make", "path": ["t"], "type": "text", "value": "ab"}],
        update=[{"op": "insert", "path": ["t"], "index": 0, "text": "x"}],
        delete=[{"op": "del", "path": ["t"]}],
        then={"op": "delete", "path": ["t"], "index": 0, "count": 1},
        expected={"t": ""},
        shown_by=[{"op": "make", "path": ["t"], "type": "text", "value": "x"}],
    ),
    "set, remove of its last element": Vanishing(
        setup=[{"op": "make", "path": ["s"], "type": "set", "value": [1]}],
        update=[{"op": "add", "path": ["s"], "value": 2}],
        delete=[{"op": "del", "path": ["s"]}],
        then={"op": "remove", "path": ["s"], "value": 2},
        expected={"s": []},
        shown_by=[{"op": "make", "path": ["s"], "type": "set", "value": [2]}],
    ),
}


@pytest.mark.parametrize("case", VANISHING.values(), ids=VANISHING.keys())
def test_a_container_that_survived_a_delete_does_not_vanish_when_emptied(
    case: Vanishing,
) -> None:
    assert case.then_apply(case.survivor()) == case.expected


@pytest.mark.parametrize("case", VANISHING.values(), ids=VANISHING.keys())
def test_the_same_change_on_the_same_document_made_directly_leaves_it_empty(
    case: Vanishing,
) -> None:
    doc = Document()
    doc.patch(parse_ops(case.shown_by), DotCounter("b"))
    assert doc.render() == case.survivor().render()
    assert case.then_apply(doc) == case.expected
