"""The dot stores a document is made of, and how each renders to JSON.

Every field of a map holds one store per *type tag* (normally one; two when devices created
the same field concurrently with different types):

- ``register``: ``dict[Dot, value]`` (a DotFun): a multi-value register. Concurrent writes all
  stay; the value with the greatest dot (counter, then replica id) is shown.
- ``counter``: ``dict[Dot, int]`` (a DotFun): a causal counter. Each replica keeps one entry,
  its running total; an increment replaces it. The value is the sum.
- ``set``: :class:`SetStore`, an add-wins set (DotMap element -> DotSet).
- ``text`` / ``list``: :class:`SeqStore`, a Fugue sequence.
- ``map``: :class:`MapStore`, an OR-map of fields (recursive).

Containers (set, text, list, map) carry a ``present`` DotSet, so that an empty container still
exists, and a concurrent update beats a delete (the update's dots survive the delete's context).

A store that holds nothing is removed from its parent, so that two replicas that saw the same
changes hold structurally equal states. A sequence that holds only dead nodes is kept (its
nodes order later inserts) but is not *visible*.
"""

from __future__ import annotations

import json
from typing import Any

from syncd.crdt.dots import Dot
from syncd.crdt.sequence import Sequence

Json = Any
AtomStore = dict[Dot, Any]

REGISTER = "register"
COUNTER = "counter"
SET = "set"
TEXT = "text"
LIST = "list"
MAP = "map"
TYPES = (MAP, LIST, TEXT, SET, COUNTER, REGISTER)
"""Every type tag, in precedence order: when one field has concurrent variants of several
types, the first visible one in this order is shown (a deterministic rule)."""

PRESENT = "\x00present"
"""The ``sub`` of a location that names a container's ``present`` DotSet (never a JSON key)."""


def canonical(value: Json) -> str:
    """Canonical JSON text of a value: the identity of set elements and of register values."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dot_order(dot: Dot) -> tuple[int, str]:
    """The deterministic total order of dots used to pick winners: counter, then replica."""
    return (dot[1], dot[0])


_RANK = {type(None): 0, bool: 1, int: 2, float: 2, str: 3, list: 4, dict: 5}


def element_order(key: str) -> tuple[int, Any, str]:
    """Sort key of a set element given its canonical JSON text (equal numbers such as ``1``
    and ``1.0`` are distinct elements: their text orders them)."""
    value = json.loads(key)
    rank = _RANK.get(type(value), 6)
    if rank >= 4 or rank == 0:
        return (rank, key, key)
    return (rank, value, key)


class SetStore:
    """An add-wins set: element (canonical JSON) -> the dots that added it."""

    __slots__ = ("elems", "present")

    def __init__(self) -> None:
        self.present: set[Dot] = set()
        self.elems: dict[str, set[Dot]] = {}

    def copy(self) -> SetStore:
        s = SetStore()
        s.present = set(self.present)
        s.elems = {k: set(v) for k, v in self.elems.items()}
        return s

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SetStore):
            return NotImplemented
        return self.present == other.present and self.elems == other.elems

    def is_empty(self) -> bool:
        return not self.present and not self.elems

    def value(self) -> list[Json]:
        return [json.loads(k) for k in sorted(self.elems, key=element_order)]


class SeqStore:
    """A text or list: a Fugue :class:`Sequence` plus its ``present`` marker."""

    __slots__ = ("present", "seq")

    def __init__(self, is_text: bool, seq: Sequence | None = None) -> None:
        self.present: set[Dot] = set()
        self.seq = seq if seq is not None else Sequence(is_text)

    def copy(self) -> SeqStore:
        s = SeqStore(self.seq.is_text, self.seq.copy())
        s.present = set(self.present)
        return s

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SeqStore):
            return NotImplemented
        return self.present == other.present and self.seq == other.seq

    def is_empty(self) -> bool:
        return not self.present and self.seq.is_bottom()

    def visible(self) -> bool:
        return bool(self.present) or len(self.seq) > 0


class MapStore:
    """An OR-map: field name -> type tag -> store, plus its ``present`` marker."""

    __slots__ = ("fields", "present")

    def __init__(self) -> None:
        self.present: set[Dot] = set()
        self.fields: dict[str, dict[str, Any]] = {}

    def copy(self) -> MapStore:
        m = MapStore()
        m.present = set(self.present)
        m.fields = {
            name: {tag: copy_store(tag, st) for tag, st in variants.items()}
            for name, variants in self.fields.items()
        }
        return m

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MapStore):
            return NotImplemented
        return self.present == other.present and self.fields == other.fields

    def is_empty(self) -> bool:
        return not self.present and not self.fields

    def visible(self) -> bool:
        if self.present:
            return True
        return any(winner(variants) is not None for variants in self.fields.values())


_MAKERS: dict[str, Any] = {
    REGISTER: dict,
    COUNTER: dict,
    SET: SetStore,
    TEXT: lambda: SeqStore(True),
    LIST: lambda: SeqStore(False),
    MAP: MapStore,
}


def new_store(tag: str) -> Any:
    """An empty store of a type."""
    make = _MAKERS.get(tag)
    if make is None:
        raise ValueError(f"unknown type {tag!r}")
    return make()


def copy_store(tag: str, store: Any) -> Any:
    if tag in (REGISTER, COUNTER):
        return dict(store)
    return store.copy()


def is_empty(tag: str, store: Any) -> bool:
    if tag in (REGISTER, COUNTER):
        return not store
    return bool(store.is_empty())


def is_visible(tag: str, store: Any) -> bool:
    if tag in (REGISTER, COUNTER):
        return bool(store)
    if tag == SET:
        return not store.is_empty()
    return bool(store.visible())


def winner(variants: dict[str, Any]) -> tuple[str, Any] | None:
    """The variant of a field that is shown (see :data:`TYPES`), or None if none is visible."""
    if len(variants) == 1:
        for tag, store in variants.items():
            return (tag, store) if is_visible(tag, store) else None
    for tag in TYPES:
        store = variants.get(tag)
        if store is not None and is_visible(tag, store):
            return tag, store
    return None


def register_winner(store: AtomStore) -> Dot:
    return max(store, key=dot_order)


def ordered(value: Json) -> Json:
    """``value`` with every object's keys sorted (as maps and set elements show them): a
    register or list item holds an object as it was written, and a copy decoded from the
    canonical encoding has another order, so every replica shows it this way."""
    t = type(value)
    if t is dict:
        return {k: ordered(value[k]) for k in sorted(value)}
    if t is list:
        return [ordered(x) for x in value]
    return value


def _has_containers(items: list[Json]) -> bool:
    return any(type(x) is dict or type(x) is list for x in items)


def render(tag: str, store: Any) -> Json:
    """The JSON value of a visible store."""
    if tag == REGISTER:
        return ordered(store[register_winner(store)])
    if tag == COUNTER:
        return sum(store.values())
    if tag == SET:
        return store.value()
    if tag == LIST:
        items = store.seq.value()
        return [ordered(x) for x in items] if _has_containers(items) else items
    if tag == TEXT:
        return store.seq.value()
    return render_map(store)


def render_map(m: MapStore) -> dict[str, Json]:
    out: dict[str, Json] = {}
    for name in sorted(m.fields):
        w = winner(m.fields[name])
        if w is not None:
            out[name] = render(*w)
    return out


def collect_conflicts(m: MapStore, path: list[str], out: list[dict[str, Any]]) -> None:
    """Append ``{path, values}`` for every shown register with concurrent values."""
    for name in sorted(m.fields):
        w = winner(m.fields[name])
        if w is None:
            continue
        tag, store = w
        if tag == REGISTER and len(store) > 1:
            dots = sorted(store, key=dot_order, reverse=True)
            out.append({"path": [*path, name], "values": [ordered(store[d]) for d in dots]})
        elif tag == MAP:
            collect_conflicts(store, [*path, name], out)
