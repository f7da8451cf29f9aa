"""One replica against a plain-JSON model of the data model (docs/data-model.md).

A single :class:`Document`, written to by one device, must behave exactly like the JSON
document the contract describes: CRDT machinery only shows once other devices take part. This
test applies random ``put``, ``patch`` and whole-document ``delete`` steps to one document and,
in parallel, to a small reference model written here from the docs alone: a JSON tree in
which every field remembers its type (map, register, text, counter, set, list), so that the
model can predict what ``put`` does to an existing field, how each type renders, and which
operations must fail with which ``reason``.

After every step it checks that

1. ``render()`` equals the model's rendering, compared as JSON text (so ``1``, ``1.0`` and
   ``true`` differ, and every object's keys must come out sorted by code point);
2. an operation the model refuses raises :class:`PatchError` with the documented ``reason``
   and changes nothing: neither the rendering, nor the encoded state, nor the dot counter;
3. the state survives an encode/decode round trip (same rendering, same bytes re-encoded);
4. the delta a successful step returns, sent through the codec and joined into a copy of
   the document as it was before the step, gives the document after the step;
5. one device shows no conflicts, and a put of the shown value changes nothing.

Operations are drawn against the model's current fields (so that most of them hit an
existing field, and edits of texts and lists use indexes near their length), mixed with
paths that ignore the document.

Field names and values come from small alphabets so that operations often meet existing
fields (of the same or another type), and paths are often wrong (missing parents, an index
where a name belongs, an index out of range) so that the error paths run too.

Where the docs leave a choice open, the model follows the implementation and says so in a
comment ("ambiguous"). The tests at the end hold the smallest cases of the bugs this test
found first (refused patches that changed the document, and reasons that depended on the
operation or on the rest of the patch).
"""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.crdt import Document, DotCounter, decode_document, encode_document, parse_ops
from syncd.errors import PatchError

Json = Any
Op = dict[str, Any]

MAP, REGISTER, TEXT, COUNTER, SET, LIST = "map", "register", "text", "counter", "set", "list"
TYPES = (MAP, REGISTER, TEXT, COUNTER, SET, LIST)
SHARE_MIN, SHARE_MAX = -(2**63), 2**63 - 1
"""One device's share of a counter is a signed 64-bit integer (data-model.md, ``inc``)."""


# -- the model -------------------------------------------------------------------------------


class Node:
    """One field of the model: its type and its plain value.

    ``val`` is a ``dict[str, Node]`` for a map, the JSON value for a register, a ``str`` for
    a text, an ``int`` for a counter, ``dict[canonical JSON, value]`` for a set and a
    ``list`` for a list.
    """

    __slots__ = ("tag", "val")

    def __init__(self, tag: str, val: Any) -> None:
        self.tag = tag
        self.val = val

    def __repr__(self) -> str:
        return f"{self.tag}:{self.val!r}"


Fields = dict[str, Node]


class Refused(Exception):
    """The model's verdict that an operation fails, with the documented reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def canonical(value: Json) -> str:
    """Canonical JSON text (keys sorted, no spaces, non-ASCII kept): a set element's identity
    and the sort key of arrays and objects in a set (ambiguous: the docs do not spell out
    "canonical JSON text"; this is the plain reading, and what the code uses)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def is_int(value: Json) -> bool:
    return type(value) is int


def ordered(value: Json) -> Json:
    """``value`` with every object's keys sorted by code point."""
    if type(value) is dict:
        return {k: ordered(value[k]) for k in sorted(value)}
    if type(value) is list:
        return [ordered(x) for x in value]
    return value


def element_key(value: Json) -> tuple[int, Any, str]:
    """Set order: null, false/true, numbers (by value; equal numbers by their text, so ``1``
    before ``1.0``), strings (by code point), arrays, objects (by canonical JSON text)."""
    t = type(value)
    if value is None:
        return (0, 0, "")
    if t is bool:
        return (1, int(value), "")
    if t is int or t is float:
        return (2, value, canonical(value))
    if t is str:
        return (3, value, "")
    return (4 if t is list else 5, canonical(value), "")


def render_node(node: Node) -> Json:
    if node.tag == MAP:
        return render_fields(node.val)
    if node.tag == SET:
        return [ordered(v) for v in sorted(node.val.values(), key=element_key)]
    if node.tag in (REGISTER, LIST):
        return ordered(node.val)
    return node.val  # text, counter


def render_fields(fields: Fields) -> dict[str, Json]:
    return {name: render_node(fields[name]) for name in sorted(fields)}


def set_of(values: list[Json]) -> dict[str, Json]:
    return {canonical(v): v for v in values}


def check_share(total: int) -> None:
    if not SHARE_MIN <= total <= SHARE_MAX:
        raise Refused("too_large")


def new_node(value: Json) -> Node:
    """A field a put creates: a map for an object, a register for anything else."""
    if type(value) is dict:
        node = Node(MAP, {})
        put_map(node.val, value)
        return node
    return Node(REGISTER, value)


def put_field(fields: Fields, name: str, value: Json) -> None:
    """Put semantics for one field (data-model.md, "put")."""
    node = fields.get(name)
    if node is not None:
        tag = node.tag
        if tag == MAP and type(value) is dict:
            put_map(node.val, value)
            return
        if (tag == TEXT and type(value) is str) or (tag == LIST and type(value) is list):
            node.val = value
            return
        if tag == SET and type(value) is list:
            node.val = set_of(value)
            return
        if tag == COUNTER and is_int(value) and SHARE_MIN <= value <= SHARE_MAX:
            node.val = value
            return
        if tag == REGISTER and (type(value) is not dict or type(node.val) is dict):
            node.val = value
            return
    fields[name] = new_node(value)  # a new field, or one whose type does not fit


def put_map(fields: Fields, value: dict[str, Json]) -> None:
    for name in [n for n in fields if n not in value]:
        del fields[name]
    for name, v in value.items():
        put_field(fields, name, v)


def fresh(op: Op) -> Node:
    """The field ``make`` creates (an absent or null value: the type's initial value)."""
    tag, value = op["type"], op.get("value")
    if tag == TEXT:
        return Node(TEXT, "" if value is None else value)
    if tag == COUNTER:
        total = 0 if value is None else value
        check_share(total)
        return Node(COUNTER, total)
    if tag == SET:
        return Node(SET, set_of([] if value is None else value))
    if tag == LIST:
        return Node(LIST, [] if value is None else list(value))
    if tag == MAP:
        node = Node(MAP, {})
        put_map(node.val, {} if value is None else value)
        return node
    return Node(REGISTER, value)


def walk(fields: Fields, path: list[Any], k: int, create: bool) -> Fields | None:
    """The map holding the field ``path[k]``, reached through the maps ``path[:k]``.

    None if one of them is missing and ``create`` is false; with ``create``, missing maps
    are made. Errors (data-model.md): an index where the path is at a map (the document
    included) is ``type_mismatch``; so is a path through a field that is not a map, except
    that an index after a list is ``invalid_path`` ("a path that goes on inside a list
    item"). Ambiguous: an index after a *missing* field that a write would create (``["x",
    0, "y"]``, no ``x``): ``invalid_path`` (the path does not resolve), as the code does.
    """
    m = fields
    for i in range(k):
        name = path[i]
        if type(name) is int:
            raise Refused("type_mismatch")
        node = m.get(name)
        if node is None:
            if not create:
                return None
            if any(type(e) is int for e in path[i:]):
                raise Refused("invalid_path")
            for e in path[i:k]:
                made = m[e] = Node(MAP, {})
                m = made.val
            return m
        if node.tag == MAP:
            m = node.val
            continue
        if node.tag == LIST and type(path[i + 1]) is int:
            raise Refused("invalid_path")
        raise Refused("type_mismatch")
    if type(path[k]) is int:
        raise Refused("type_mismatch")
    return m


def apply_item_op(fields: Fields, op: Op) -> None:
    """An operation whose path ends with an index: ``set`` and ``del`` of a list item."""
    path: list[Any] = op["path"]
    index: int = path[-1]
    parent = walk(fields, path, len(path) - 2, create=False)
    node = parent.get(path[-2]) if parent is not None else None
    if node is not None and node.tag != LIST:
        raise Refused("type_mismatch")  # "an index into a field that is not a list"
    if op["op"] in ("insert", "delete"):
        # Ambiguous: insert/delete address a field, and an item is not one (items hold
        # values): invalid_path, like the code, when the index follows a list or nothing.
        raise Refused("invalid_path")
    if node is None or index >= len(node.val):
        raise Refused("invalid_path")  # "an index out of range"
    if op["op"] == "set":
        node.val[index] = op["value"]
    elif op["op"] == "del":
        del node.val[index]
    else:
        # Ambiguous: make/inc/add/remove on a list item. Items hold values, not fields:
        # invalid_path, as the code says.
        raise Refused("invalid_path")


def apply_op(fields: Fields, op: Op) -> bool:
    """Apply one operation to ``fields`` (a scratch copy); True if it wrote the whole
    document (``set`` at ``[]``, which creates the document even with ``{}``)."""
    kind = op["op"]
    path: list[Any] = op["path"]
    if not path:
        if kind == "set":
            if type(op["value"]) is not dict:
                raise Refused("type_mismatch")
            put_map(fields, op["value"])
            return True
        raise Refused("invalid_path")  # "an empty path where a field is needed"
    if type(path[0]) is int:
        raise Refused("type_mismatch")  # "a path cannot start with an index"
    if type(path[-1]) is int:
        apply_item_op(fields, op)
        return False
    name: str = path[-1]
    k = len(path) - 1

    def existing() -> tuple[Fields | None, Node | None]:
        parent = walk(fields, path, k, create=False)
        return parent, (parent.get(name) if parent is not None else None)

    def created(node: Node) -> None:
        parent = walk(fields, path, k, create=True)
        assert parent is not None
        parent[name] = node

    # Ambiguous: which error wins when both the path and the value are wrong. The model
    # resolves the path first (as the code does), then checks the value.
    if kind == "make":
        parent = walk(fields, path, k, create=True)
        assert parent is not None
        parent[name] = fresh(op)
    elif kind == "set":
        parent = walk(fields, path, k, create=True)
        assert parent is not None
        put_field(parent, name, op["value"])
    elif kind == "del":
        parent, _ = existing()
        if parent is not None:
            parent.pop(name, None)
    elif kind == "inc":
        by: int = op.get("by", 1)
        _, found = existing()
        if found is None:
            created(Node(COUNTER, by))
            check_share(by)
        elif found.tag != COUNTER:
            raise Refused("type_mismatch")
        else:
            check_share(found.val + by)
            found.val += by
    elif kind in ("add", "remove"):
        _, found = existing()
        key = canonical(op["value"])
        if found is None:
            if kind == "add":
                created(Node(SET, set_of([op["value"]])))
        elif found.tag != SET:
            raise Refused("type_mismatch")
        elif kind == "add":
            found.val[key] = op["value"]
        else:
            found.val.pop(key, None)
    elif kind == "insert":
        tag = TEXT if "text" in op else LIST
        items = op["text"] if tag == TEXT else list(op["values"])
        index: int = op["index"]
        _, found = existing()
        if found is None:
            if index != 0:
                raise Refused("invalid_path")
            created(Node(tag, items))
        elif found.tag != tag:
            raise Refused("type_mismatch")
        elif index > len(found.val):
            raise Refused("invalid_path")
        else:
            found.val = found.val[:index] + items + found.val[index:]
    else:
        assert kind == "delete"
        _, found = existing()
        if found is None:
            raise Refused("invalid_path")
        if found.tag not in (TEXT, LIST):
            raise Refused("type_mismatch")
        start, end = op["index"], op["index"] + op["count"]
        if end > len(found.val):
            raise Refused("invalid_path")
        found.val = found.val[:start] + found.val[end:]
    return False


class Model:
    """The document as the docs describe it: None when it does not exist."""

    def __init__(self) -> None:
        self.fields: Fields | None = None

    def render(self) -> dict[str, Json] | None:
        return None if self.fields is None else render_fields(self.fields)

    def put(self, value: dict[str, Json]) -> None:
        fields = self.fields if self.fields is not None else {}
        put_map(fields, copy.deepcopy(value))
        self.fields = fields

    def delete(self) -> None:
        self.fields = None

    def patch(self, ops: list[Op]) -> None:
        """Apply ``ops`` atomically; raises :class:`Refused` (and changes nothing)."""
        fields: Fields = copy.deepcopy(self.fields) if self.fields is not None else {}
        creates = self.fields is not None
        for op in copy.deepcopy(ops):
            before = shown(render_fields(fields))
            whole = apply_op(fields, op)
            # A patch that writes anything creates an absent document (one made only of
            # no-ops, such as a del of an absent field, does not).
            if whole or op["op"] == "make" or shown(render_fields(fields)) != before:
                creates = True
        if creates:
            self.fields = fields


def shown(value: Json) -> str:
    """JSON text that tells ``1`` from ``1.0`` and ``true``, and keeps the order of keys."""
    return json.dumps(value, ensure_ascii=False)


# -- strategies ------------------------------------------------------------------------------

NAMES = ["a", "b", "\uffe0", "\U0001f600"]
"""Field names. The last two sort one way by code point and the other way in UTF-16."""
names = st.sampled_from(NAMES)
BIG = [2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, -(2**64) + 1]
scalars = st.one_of(
    st.sampled_from([None, False, True, 0, 1, -1, 1.0, 0.0, -0.0, 2.5, -3.5]),
    st.sampled_from(["", "x", "xy", "é", "\uffe0", "\U0001f600"]),
    st.sampled_from(BIG),
)
long_texts = st.text(alphabet="ab\U0001f600\r\n", max_size=12)
"""Strings for puts over text fields: long enough for the diff to matter."""
values = (
    st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
        max_leaves=5,
    )
    | long_texts
    | st.lists(st.sampled_from([0, 1, 2]), max_size=8)
)
objects = st.dictionaries(names, values, max_size=4)
elements = st.one_of(
    st.sampled_from([None, False, True, 0, 1, 1.0, -1, 2.5, "", "x", "\uffe0", "\U0001f600"]),
    st.sampled_from([[], [1], ["x", None], ["\uffe0"], ["\U0001f600"], {}, {"b": 1, "a": 2}]),
)
"""Set elements: every rank of the set order, and numbers that are equal in value."""
texts = st.sampled_from(["", "x", "yz", "é\U0001f600", "\r\n", "abc"]) | long_texts
counts = st.sampled_from([0, 1, 5, -1, *BIG])
random_paths = st.one_of(
    st.lists(names, min_size=1, max_size=3),
    st.builds(lambda p, i: [*p, i], st.lists(names, min_size=1, max_size=2), st.integers(0, 2)),
    st.sampled_from([[], [0], [0, "a"], ["a", 0, "b"], ["a", 0, 1], ["a", "b", 0, "a"]]),
)
"""Paths that ignore the document: often missing, often wrong."""


def field_paths(fields: Fields, prefix: list[Any]) -> list[list[Any]]:
    """The path of every field (and of every list item) of the model."""
    out: list[list[Any]] = []
    for name, node in sorted(fields.items()):
        path = [*prefix, name]
        out.append(path)
        if node.tag == MAP:
            out.extend(field_paths(node.val, path))
        elif node.tag == LIST:
            out.extend([*path, i] for i in range(len(node.val) + 1))
    return out


def node_at(fields: Fields, path: list[Any]) -> Node | None:
    node: Node | None = None
    for name in path:
        if type(name) is not str or (node is not None and node.tag != MAP):
            return None
        node = (node.val if node is not None else fields).get(name)
        if node is None:
            return None
    return node


@st.composite
def operations(draw: st.DrawFn, fields: Fields) -> Op:
    """One patch operation, usually at a path of the document (``fields`` as it will be when
    the operation runs, if earlier operations of its patch succeed)."""
    known = field_paths(fields, [])
    edits = [p for p in known if getattr(node_at(fields, p), "tag", None) in (TEXT, LIST)]
    if edits and draw(st.integers(0, 2)) == 0:  # an edit of a text or list
        path: list[Any] = list(draw(st.sampled_from(edits)))
    elif known and draw(st.integers(0, 4)) > 0:
        path = list(draw(st.sampled_from(known)))
        if draw(st.integers(0, 5)) == 0:  # somewhere below it
            path.append(draw(st.one_of(names, st.integers(0, 2))))
    else:
        path = draw(random_paths)
    node = node_at(fields, path)
    kind = draw(
        st.sampled_from(
            ["make", "make", "set", "del", "inc", "add", "remove", "insert", "insert", "delete"]
        )
    )
    fit = st.integers(0, 3) if node is not None and node.tag in (TEXT, LIST) else st.booleans()
    if node is not None and draw(fit):  # an operation that fits the field
        kind = {
            MAP: "set",
            REGISTER: "set",
            TEXT: "insert",
            COUNTER: "inc",
            SET: draw(st.sampled_from(["add", "remove"])),
            LIST: draw(st.sampled_from(["insert", "delete"])),
        }[node.tag]
        if node.tag == TEXT and draw(st.booleans()):
            kind = "delete"
    op: Op = {"op": kind, "path": path}
    if kind == "make":
        t = op["type"] = draw(st.sampled_from([*TYPES, TEXT, LIST]))
        value = draw(
            st.one_of(
                st.just("absent"),
                st.none(),
                {
                    TEXT: texts,
                    COUNTER: counts,
                    SET: st.lists(elements, max_size=3),
                    LIST: st.lists(values, max_size=3),
                    MAP: objects,
                    REGISTER: values,
                }[t],
            )
        )
        if value != "absent":
            op["value"] = value
    elif kind == "set":
        op["value"] = draw(objects if not path or draw(st.booleans()) else values)
    elif kind == "inc":
        if draw(st.booleans()):
            op["by"] = draw(counts)
    elif kind in ("add", "remove"):
        if node is not None and node.tag == SET and node.val and draw(st.booleans()):
            op["value"] = draw(st.sampled_from(sorted(node.val.values(), key=element_key)))
        else:
            op["value"] = draw(elements)
    elif kind in ("insert", "delete"):
        n = len(node.val) if node is not None and node.tag in (TEXT, LIST) else 0
        op["index"] = index = draw(st.integers(0, n + 1)) if draw(st.integers(0, 3)) else 0
        if kind == "delete":
            op["count"] = draw(st.integers(0, max(n - index, 0) + 1))
        elif (node.tag == TEXT if node is not None else draw(st.booleans())) or draw(
            st.integers(0, 5)
        ) == 0:
            op["text"] = draw(texts)
        else:
            op["values"] = draw(st.lists(values, max_size=2))
    return op


@st.composite
def patches(draw: st.DrawFn, model: Model) -> list[Op]:
    """A patch of 0-3 operations; often several edits of one text or list."""
    fields = copy.deepcopy(model.fields or {})
    ops: list[Op] = []
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3, 0]))):
        if ops and ops[-1]["op"] in ("insert", "delete") and draw(st.booleans()):
            op = draw(operations(fields))  # another edit of the same field, maybe
            if op["op"] in ("insert", "delete"):
                op["path"] = ops[-1]["path"]
        else:
            op = draw(operations(fields))
        ops.append(op)
        with contextlib.suppress(Refused):
            apply_op(fields, copy.deepcopy(op))
    return ops


Step = tuple[str, Any]


@st.composite
def steps(draw: st.DrawFn, model: Model) -> Step:
    kind = draw(st.sampled_from(["patch"] * 8 + ["put", "delete"]))
    if kind == "patch":
        return (kind, draw(patches(model)))
    return (kind, draw(objects) if kind == "put" else None)


# -- the test --------------------------------------------------------------------------------


def check_round_trip(doc: Document) -> None:
    data = encode_document(doc)
    back = decode_document(data)
    assert shown(back.render()) == shown(doc.render())
    assert back == doc
    assert encode_document(back) == data  # the encoding is canonical


def check_delta(before: Document, delta: Document, after: Document) -> None:
    """The delta carries the whole change: joined into the old state it gives the new one."""
    joined = before.copy()
    joined.join(decode_document(encode_document(delta)))
    assert shown(joined.render()) == shown(after.render())
    assert joined == after


def run_step(doc: Document, counter: DotCounter, model: Model, step: Step) -> None:
    kind, arg = step
    before = doc.copy()
    if kind == "put":
        model.put(arg)
        delta = doc.put(copy.deepcopy(arg), counter)
    elif kind == "delete":
        model.delete()
        delta = doc.delete(counter)
    else:
        try:
            model.patch(arg)
            want: str | None = None
        except Refused as exc:
            want = exc.reason
        data, next_dot = encode_document(doc), counter.next
        try:
            delta = doc.patch(parse_ops(copy.deepcopy(arg)), counter)
            got: str | None = None
            changed = False
        except PatchError as exc:
            got, changed = exc.reason, exc.document_changed
        assert not changed, "a refused patch says it changed the document"
        assert got == want, f"patch {arg!r}: refused with {got!r}, the model says {want!r}"
        if want is not None:
            assert encode_document(doc) == data, "a refused patch changed the document"
            assert counter.next == next_dot, "a refused patch used up dots"
            assert shown(doc.render()) == shown(model.render())
            return
    assert shown(doc.render()) == shown(model.render()), f"after {kind} {arg!r}"
    assert doc.exists() == (model.fields is not None)
    assert doc.conflicts() == []  # one device never makes concurrent values
    check_delta(before, delta, doc)


def check_put_of_the_shown_value(doc: Document, counter: DotCounter) -> None:
    """ "A put of the document's current value changes nothing" (data-model.md)."""
    value = doc.render()
    if value is None:
        return
    again = doc.copy()
    delta = again.put(value, DotCounter(counter.replica, counter.next))
    assert delta.is_bottom() and not delta.ctx, f"a put of {value!r} is a change"
    assert again == doc


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_one_replica_behaves_like_the_json_model(data: st.DataObject) -> None:
    doc, counter, model = Document(), DotCounter("r1"), Model()
    for _ in range(data.draw(st.integers(1, 25), label="steps")):
        step = data.draw(steps(model), label="step")
        run_step(doc, counter, model, step)
        check_round_trip(doc)
        check_put_of_the_shown_value(doc, counter)


# -- the model itself, on documented examples ------------------------------------------------


def model_after(*script: Step) -> dict[str, Json] | None:
    model = Model()
    for kind, arg in script:
        if kind == "put":
            model.put(arg)
        elif kind == "patch":
            model.patch(arg)
        else:
            model.delete()
    return model.render()


def test_the_model_follows_the_documented_examples() -> None:
    # data-model.md, put: types are kept, a new string is a register, {} still exists.
    assert model_after(("put", {})) == {}
    ops: list[Op] = [
        {"op": "make", "path": ["t"], "type": "text", "value": "milk"},
        {"op": "insert", "path": ["t"], "index": 4, "text": ", eggs"},
        {"op": "inc", "path": ["n"], "by": 3},
        {"op": "add", "path": ["s"], "value": 1.0},
        {"op": "add", "path": ["s"], "value": 1},
        {"op": "add", "path": ["s"], "value": None},
    ]
    assert model_after(("patch", ops)) == {"n": 3, "s": [None, 1, 1.0], "t": "milk, eggs"}
    assert shown(model_after(("patch", ops), ("put", {"n": "x", "t": "y"}))) == shown(
        {"n": "x", "t": "y"}
    )
    with pytest.raises(Refused, match="type_mismatch"):
        model_after(("put", {"title": "hello"}), ("patch", [{"op": "inc", "path": ["title"]}]))
    assert model_after(("patch", [{"op": "del", "path": ["x"]}])) is None


# -- the bugs the model test found, smallest cases --------------------------------------------
# The first two were serious: the replica store rewinds the dot counter after a refused write
# (syncd/replica/store.py), so the next write reused the dots the refused change had left in
# the document, and the stored document no longer decoded ("dot ... appears twice").


def patch(doc: Document, counter: DotCounter, *ops: Op) -> Document:
    return doc.patch(parse_ops(list(ops)), counter)


def refused(doc: Document, counter: DotCounter, *ops: Op) -> str:
    """The reason ``ops`` are refused with (the test fails if they apply)."""
    with pytest.raises(PatchError) as info:
        patch(doc, counter, *ops)
    assert not info.value.document_changed
    return info.value.reason


def sample() -> tuple[Document, DotCounter]:
    doc, c = Document(), DotCounter("r1")
    doc.put({"k": 1, "m": {}}, c)
    patch(doc, c, {"op": "make", "path": ["t"], "type": "text", "value": "ab"})
    patch(doc, c, {"op": "make", "path": ["l"], "type": "list", "value": [1, 2]})
    return doc, c


@pytest.mark.parametrize(
    "op",
    [
        {"op": "inc", "path": ["x", "y"], "by": 2**63},
        {"op": "make", "path": ["x", "y"], "type": "counter", "value": -(2**63) - 1},
    ],
)
def test_a_refused_counter_op_leaves_no_map_of_its_path_behind(op: Op) -> None:
    doc, c = sample()
    data, next_dot = encode_document(doc), c.next
    assert refused(doc, c, op) == "too_large"
    assert doc.render() == {"k": 1, "l": [1, 2], "m": {}, "t": "ab"}  # (it also had "x": {})
    assert encode_document(doc) == data
    assert c.next == next_dot


@pytest.mark.parametrize(
    "ops",
    [
        [  # the first op makes the text "x", which the second one's path goes through
            {"op": "insert", "path": ["x"], "index": 0, "text": "new"},
            {"op": "insert", "path": ["x", "a"], "index": 0, "text": "y"},
        ],
        [  # the first op makes the map "x", which the second one takes for a text
            {"op": "insert", "path": ["x", "a"], "index": 0, "text": "new"},
            {"op": "insert", "path": ["x"], "index": 0, "text": "y"},
        ],
    ],
)
def test_a_refused_patch_of_inserts_on_nested_paths_changes_nothing(ops: list[Op]) -> None:
    doc, c = sample()
    data = encode_document(doc)
    assert refused(doc, c, *ops) == "type_mismatch"
    assert "x" not in render(doc)  # (the first insert stayed applied)
    assert encode_document(doc) == data


def render(doc: Document) -> dict[str, Json]:
    shown = doc.render()
    assert shown is not None
    return shown


INDEX_INTO_A_NON_LIST: list[Op] = [
    {"op": "delete", "path": ["t", 0], "index": 0, "count": 1},
    {"op": "insert", "path": ["m", 0], "index": 0, "text": "x"},
    {"op": "insert", "path": ["k", 0], "index": 0, "values": [1]},
    {"op": "set", "path": ["m", 0, 1], "value": 1},
    {"op": "del", "path": ["t", 0, 0]},
]


def test_an_index_into_a_non_list_is_a_type_mismatch() -> None:
    """docs/data-model.md: type_mismatch is "an index into a field that is not a list"."""
    doc, c = sample()
    assert refused(doc, c, {"op": "set", "path": ["t", 0], "value": "x"}) == "type_mismatch"
    assert refused(doc, c, {"op": "del", "path": ["m", 0]}) == "type_mismatch"
    assert refused(doc, c, {"op": "set", "path": ["m", 0, "a"], "value": 1}) == "type_mismatch"


@pytest.mark.parametrize("op", INDEX_INTO_A_NON_LIST)
def test_an_index_into_a_non_list_is_a_type_mismatch_for_every_op(op: Op) -> None:
    doc, c = sample()
    assert refused(doc, c, op) == "type_mismatch"  # (it was invalid_path)


def test_the_reason_does_not_depend_on_the_rest_of_the_patch() -> None:
    doc, c = sample()
    bad: Op = {"op": "insert", "path": ["m", 0, "x"], "index": 0, "text": "x"}
    assert refused(doc, c, bad) == "type_mismatch"  # alone: an index into a map
    other: Op = {"op": "insert", "path": ["t"], "index": 0, "text": "y"}
    assert refused(doc, c, other, bad) == "type_mismatch"  # (it was invalid_path)


def test_a_del_after_the_document_was_deleted_writes_nothing() -> None:
    """What a delete leaves of a text (its dead characters) is no field: deleting it again
    neither writes nor brings the document back (the marker that keeps an emptied container
    is given only to one that shows)."""
    doc, c = Document(), DotCounter("r1")
    patch(doc, c, {"op": "make", "path": ["b"], "type": "text", "value": ""})
    patch(doc, c, {"op": "insert", "path": ["b"], "index": 0, "text": "uv"})
    doc.delete(c)
    delta = patch(doc, c, {"op": "del", "path": ["b"]})
    assert doc.render() is None
    assert next(iter(delta.live_dots()), None) is None
