"""Documents: put/patch semantics, merge rules, join laws and convergence."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.crdt import (
    CausalContext,
    Document,
    DotCounter,
    decode_document,
    encode_document,
    parse_ops,
)
from syncd.errors import InvalidOperation, PatchError
from tests.crdt_strategies import json_objects, random_change


def patch(doc: Document, counter: DotCounter, *ops: dict[str, Any]) -> Document:
    return doc.patch(parse_ops(list(ops)), counter)


def synced(*docs: Document) -> None:
    """Make every document hold everything (full-state exchange)."""
    states = [d.copy() for d in docs]
    for d in docs:
        for s in states:
            d.join(s)


def fresh(replica: str) -> tuple[Document, DotCounter]:
    return Document(), DotCounter(replica)


# -- put and render --------------------------------------------------------------------------


@given(json_objects)
def test_put_then_render_gives_the_value(value: dict[str, Any]) -> None:
    doc, c = fresh("r1")
    doc.put(value, c)
    assert doc.render() == value


@given(json_objects, json_objects)
def test_put_over_put_gives_the_second_value(v1: dict[str, Any], v2: dict[str, Any]) -> None:
    doc, c = fresh("r1")
    doc.put(v1, c)
    doc.put(v2, c)
    assert doc.render() == v2


def test_absent_document_renders_none_and_empty_put_exists() -> None:
    doc, c = fresh("r1")
    assert doc.render() is None and not doc.exists()
    doc.put({}, c)
    assert doc.exists() and doc.render() == {}


def test_put_that_changes_nothing_has_an_empty_delta() -> None:
    doc, c = fresh("r1")
    doc.put({"a": 1, "b": {"c": [1, 2]}}, c)
    delta = doc.put({"a": 1, "b": {"c": [1, 2]}}, c)
    assert not delta.ctx and delta.is_bottom()


def test_a_register_made_to_hold_an_object_stays_a_register_through_put() -> None:
    doc, c = fresh("r1")
    patch(doc, c, {"op": "make", "path": ["x"], "type": "register", "value": {"a": 1}})
    same = doc.put(doc.render() or {}, c)  # a get-then-put round trip
    assert same.is_bottom() and not same.ctx
    doc.put({"x": {"a": 2}}, c)  # overwritten as a whole, still a register
    assert doc.render() == {"x": {"a": 2}}
    with pytest.raises(PatchError) as err:
        patch(doc, c, {"op": "set", "path": ["x", "a"], "value": 5})
    assert err.value.reason == "type_mismatch"
    # A register holding a scalar does not fit an object: it becomes a map.
    doc.put({"y": 1}, c)
    doc.put({"y": {"b": 1}}, c)
    patch(doc, c, {"op": "set", "path": ["y", "b"], "value": 2})
    assert doc.render() == {"y": {"b": 2}}


def test_set_of_the_whole_document_creates_it_as_put_does() -> None:
    doc, c = fresh("r1")
    patch(doc, c, {"op": "set", "path": [], "value": {}})
    assert doc.exists() and doc.render() == {}
    again = patch(doc, c, {"op": "set", "path": [], "value": {}})
    assert again.is_bottom() and not again.ctx  # the current value: no change
    synced(other := Document(), doc)
    assert other.exists()


def test_put_on_text_field_is_a_character_edit() -> None:
    doc, c = fresh("r1")
    patch(doc, c, {"op": "make", "path": ["t"], "type": "text", "value": "x" * 100_000})
    delta = doc.put({"t": "x" * 50_000 + "Y" + "x" * 50_000}, c)
    assert doc.render() == {"t": "x" * 50_000 + "Y" + "x" * 50_000}
    assert len(encode_document(delta)) < 120
    assert delta.ctx.size() == 1


def test_put_keeps_types_and_uses_finest_operations() -> None:
    doc, c = fresh("r1")
    patch(
        doc,
        c,
        {"op": "make", "path": ["n"], "type": "counter", "value": 5},
        {"op": "make", "path": ["s"], "type": "set", "value": [1, 2]},
        {"op": "make", "path": ["l"], "type": "list", "value": ["a", "b"]},
    )
    doc.put({"n": 9, "s": [2, 3], "l": ["a", "x", "b"]}, c)
    assert doc.render() == {"n": 9, "s": [2, 3], "l": ["a", "x", "b"]}
    # still a counter: a concurrent increment adds up
    other = doc.copy()
    oc = DotCounter("r2")
    patch(other, oc, {"op": "inc", "path": ["n"], "by": 1})
    doc.put({"n": 10, "s": [2, 3], "l": ["a", "x", "b"]}, c)
    synced(doc, other)
    assert doc.render() == other.render()
    assert doc.render()["n"] == 11  # type: ignore[index]


def test_concurrent_puts_to_different_fields_both_survive() -> None:
    a, ca = fresh("A")
    a.put({"title": "t", "body": "b"}, ca)
    b = a.copy()
    cb = DotCounter("B")
    a.put({"title": "T2", "body": "b"}, ca)
    b.put({"title": "t", "body": "B2"}, cb)
    synced(a, b)
    assert a.render() == b.render() == {"title": "T2", "body": "B2"}


# -- patch operations ------------------------------------------------------------------------


def test_every_patch_operation() -> None:
    doc, c = fresh("r1")
    patch(
        doc,
        c,
        {"op": "make", "path": ["t"], "type": "text", "value": "hello"},
        {"op": "insert", "path": ["t"], "index": 5, "text": " world"},
        {"op": "delete", "path": ["t"], "index": 0, "count": 1},
        {"op": "insert", "path": ["t"], "index": 0, "text": "H"},
        {"op": "inc", "path": ["n"], "by": 3},
        {"op": "inc", "path": ["n"], "by": -1},
        {"op": "add", "path": ["tags"], "value": "b"},
        {"op": "add", "path": ["tags"], "value": "a"},
        {"op": "remove", "path": ["tags"], "value": "b"},
        {"op": "make", "path": ["l"], "type": "list"},
        {"op": "insert", "path": ["l"], "index": 0, "values": [1, 2, 3]},
        {"op": "delete", "path": ["l"], "index": 1, "count": 1},
        {"op": "set", "path": ["l", 0], "value": "one"},
        {"op": "set", "path": ["m", "deep", "x"], "value": [1, {"y": 2}]},
        {"op": "set", "path": ["gone"], "value": 1},
        {"op": "del", "path": ["gone"]},
        {"op": "make", "path": ["r"], "type": "register", "value": "v"},
    )
    assert doc.render() == {
        "t": "Hello world",
        "n": 2,
        "tags": ["a"],
        "l": ["one", 3],
        "m": {"deep": {"x": [1, {"y": 2}]}},
        "r": "v",
    }


@pytest.mark.parametrize(
    ("ops", "reason"),
    [
        ([{"op": "inc", "path": ["t"], "by": 1}], "type_mismatch"),
        ([{"op": "insert", "path": ["t"], "index": 9, "text": "x"}], "invalid_path"),
        ([{"op": "delete", "path": ["t"], "index": 1, "count": 9}], "invalid_path"),
        ([{"op": "set", "path": ["t", "x"], "value": 1}], "type_mismatch"),
        ([{"op": "insert", "path": ["t"], "index": 0, "values": [1]}], "type_mismatch"),
        ([{"op": "set", "path": ["t", 0], "value": 1}], "type_mismatch"),
        ([{"op": "delete", "path": ["nope"], "index": 0, "count": 1}], "invalid_path"),
        ([{"op": "set", "path": ["m", 0, "x"], "value": 1}], "type_mismatch"),
        ([{"op": "set", "path": [0], "value": 1}], "type_mismatch"),  # the document is a map
        ([{"op": "del", "path": [0]}], "type_mismatch"),
        ([{"op": "insert", "path": [0], "index": 0, "text": "x"}], "type_mismatch"),
        ([{"op": "delete", "path": [0, "t"], "index": 0, "count": 1}], "type_mismatch"),
        ([{"op": "set", "path": ["l", 0, "x"], "value": 1}], "invalid_path"),
        ([{"op": "set", "path": [], "value": 3}], "type_mismatch"),
        ([{"op": "del", "path": []}], "invalid_path"),
    ],
)
def test_bad_operations_change_nothing(ops: list[dict[str, Any]], reason: str) -> None:
    doc, c = fresh("r1")
    patch(doc, c, {"op": "make", "path": ["t"], "type": "text", "value": "ab"})
    patch(doc, c, {"op": "make", "path": ["m"], "type": "map"})
    patch(doc, c, {"op": "insert", "path": ["l"], "index": 0, "values": [{"x": 1}]})
    before = doc.copy()
    next_dot = c.next
    with pytest.raises(PatchError) as info:
        doc.patch(parse_ops([{"op": "set", "path": ["ok"], "value": 1}, *ops]), c)
    assert info.value.reason == reason
    assert doc == before and c.next == next_dot
    with pytest.raises(PatchError):
        doc.patch(parse_ops(ops), c)
    assert doc == before


@pytest.mark.parametrize(
    "raw",
    [
        "nope",
        [1],
        [{"op": "fly", "path": []}],
        [{"op": "set", "path": "a", "value": 1}],
        [{"op": "set", "path": ["a"]}],
        [{"op": "inc", "path": ["a"], "by": 1.5}],
        [{"op": "insert", "path": ["a"], "index": -1, "text": "x"}],
        [{"op": "insert", "path": ["a"], "index": 0, "text": "x", "values": []}],
        [{"op": "make", "path": ["a"], "type": "blob"}],
        [{"op": "set", "path": [True], "value": 1}],
        [{"op": "make", "path": ["c"], "type": "counter", "value": "x"}],
        [{"op": "make", "path": ["c"], "type": "counter", "value": 1.5}],
        [{"op": "make", "path": ["t"], "type": "text", "value": 5}],
        [{"op": "make", "path": ["s"], "type": "set", "value": {}}],
        [{"op": "make", "path": ["l"], "type": "list", "value": "ab"}],
        [{"op": "make", "path": ["m"], "type": "map", "value": []}],
    ],
)
def test_malformed_operations_are_invalid_params(raw: Any) -> None:
    with pytest.raises(InvalidOperation):
        parse_ops(raw)


def test_too_deep_values_are_refused() -> None:
    deep: Any = 1
    for _ in range(40):
        deep = {"a": deep}
    doc, c = fresh("r1")
    with pytest.raises(PatchError) as info:
        doc.put({"x": deep}, c)
    assert info.value.reason == "too_large"


def nested_list(levels: int) -> Any:
    """``[[...[1]...]]``, ``levels`` arrays deep."""
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("op", ["set", "make", "add"])
def test_the_depth_limit_counts_the_path_too(op: str) -> None:
    # A value that fits alone may not fit where it is written: the stored document would
    # nest deeper than a peer (or this device, reading it back) accepts.
    deep_path = ["a"] * 32
    two_levels = {"b": {"c": 1}}
    raw = {"op": op, "path": deep_path, "value": two_levels}
    if op == "make":
        raw["type"] = "register"
    with pytest.raises(PatchError) as info:
        parse_ops([raw])
    assert info.value.reason == "too_large"
    assert "path of 32 levels" in str(info.value)
    raw["path"], raw["value"] = ["a"], nested_list(33)
    with pytest.raises(PatchError, match="at a path of 1 level would nest"):
        parse_ops([raw])
    doc, c = fresh("r1")
    patch(doc, c, {"op": "set", "path": ["a"] * 31, "value": two_levels})  # 31 + 2 fits
    patch(doc, c, {"op": "set", "path": deep_path, "value": {"b": 1}})  # 32 + 1 fits
    with pytest.raises(PatchError):
        patch(doc, c, {"op": "insert", "path": ["l", *deep_path[1:]], "index": 0, "values": [[1]]})
    assert decode_document(encode_document(doc)).render() == doc.render()  # readable


def test_make_with_a_null_value_starts_from_the_types_initial_value() -> None:
    doc, c = fresh("r1")
    for t in ("text", "counter", "set", "list", "map", "register"):
        patch(doc, c, {"op": "make", "path": [t], "type": t, "value": None})
    assert doc.render() == {
        "text": "",
        "counter": 0,
        "set": [],
        "list": [],
        "map": {},
        "register": None,
    }


def test_set_elements_sit_one_level_below_the_set() -> None:
    def nested(levels: int) -> Any:
        value: Any = 1
        for _ in range(levels):
            value = [value]
        return value

    doc, c = fresh("r1")
    patch(doc, c, {"op": "add", "path": ["s"], "value": nested(31)})  # the set + 31 = 32
    with pytest.raises(PatchError) as info:
        parse_ops([{"op": "add", "path": ["s"], "value": nested(32)}])
    assert info.value.reason == "too_large"
    assert "as an element of the set" in str(info.value)
    with pytest.raises(PatchError):  # make refuses the same element
        parse_ops([{"op": "make", "path": ["s"], "type": "set", "value": [nested(32)]}])
    again, c2 = fresh("r2")
    shown = doc.render()
    assert shown is not None
    again.put(shown, c2)  # what get shows can be put back
    assert again.render() == doc.render()


def render(doc: Document) -> dict[str, Any]:
    shown = doc.render()
    assert shown is not None
    return shown


def test_a_register_tells_zero_from_negative_zero() -> None:
    doc, c = fresh("r1")
    doc.put({"r": 0.0}, c)
    assert not doc.put({"r": -0.0}, c).is_bottom()
    assert math.copysign(1.0, render(doc)["r"]) == -1.0
    assert doc.put({"r": -0.0}, c).is_bottom()  # now it is the current value
    assert not doc.put({"r": 0.0}, c).is_bottom()
    assert math.copysign(1.0, render(doc)["r"]) == 1.0


def test_setting_a_list_item_to_the_value_it_holds_changes_nothing() -> None:
    doc, c = fresh("r1")
    patch(doc, c, {"op": "insert", "path": ["l"], "index": 0, "values": [{"a": 1}, 2, 0.0]})
    for index, same in ((0, {"a": 1}), (1, 2)):
        delta = doc.patch(parse_ops([{"op": "set", "path": ["l", index], "value": same}]), c)
        assert delta.is_bottom()
    for index, other in ((1, 2.0), (2, -0.0), (0, {"a": 2})):
        delta = doc.patch(parse_ops([{"op": "set", "path": ["l", index], "value": other}]), c)
        assert not delta.is_bottom()
    assert doc.render() == {"l": [{"a": 2}, 2.0, -0.0]}


def test_a_counter_takes_any_inc_its_share_can_hold() -> None:
    doc, c = fresh("r1")
    patch(doc, c, {"op": "inc", "path": ["c"], "by": -1})
    patch(doc, c, {"op": "inc", "path": ["c"], "by": 2**63})  # by alone is beyond 64 bits
    assert doc.render() == {"c": 2**63 - 1}
    with pytest.raises(PatchError) as info:
        patch(doc, c, {"op": "inc", "path": ["c"], "by": 1})
    assert info.value.reason == "too_large"
    patch(doc, c, {"op": "inc", "path": ["c"], "by": -(2**64) + 1})
    assert doc.render() == {"c": -(2**63)}


def test_a_put_of_a_number_no_counter_share_can_show_replaces_the_counter() -> None:
    doc, c = fresh("r1")
    patch(doc, c, {"op": "inc", "path": ["c"], "by": -5})
    doc.put({"c": 2**63 - 1}, c)  # the share moves by 2**63 + 4 and still fits
    patch(doc, c, {"op": "inc", "path": ["c"], "by": -1})  # still a counter
    assert doc.render() == {"c": 2**63 - 2}
    doc.put({"c": 2**63}, c)  # no share can show it: the field becomes a register
    assert doc.render() == {"c": 2**63}
    with pytest.raises(PatchError) as info:
        patch(doc, c, {"op": "inc", "path": ["c"], "by": 1})
    assert info.value.reason == "type_mismatch"


# -- merge rules -----------------------------------------------------------------------------


def test_add_wins_set() -> None:
    a, ca = fresh("A")
    patch(a, ca, {"op": "add", "path": ["s"], "value": "x"})
    b = a.copy()
    cb = DotCounter("B")
    patch(a, ca, {"op": "remove", "path": ["s"], "value": "x"})
    patch(b, cb, {"op": "add", "path": ["s"], "value": "x"})
    synced(a, b)
    assert a.render() == b.render() == {"s": ["x"]}


def test_field_update_wins_over_concurrent_delete() -> None:
    a, ca = fresh("A")
    a.put({"m": {"x": 1, "y": 2}}, ca)
    b = a.copy()
    cb = DotCounter("B")
    patch(a, ca, {"op": "del", "path": ["m"]})
    patch(b, cb, {"op": "set", "path": ["m", "x"], "value": 5})
    synced(a, b)
    assert a.render() == b.render() == {"m": {"x": 5}}


def test_document_update_wins_over_concurrent_delete() -> None:
    a, ca = fresh("A")
    a.put({"x": 1, "y": 2}, ca)
    b = a.copy()
    cb = DotCounter("B")
    a.delete(ca)
    assert not a.exists()
    patch(b, cb, {"op": "set", "path": ["x"], "value": 7})
    synced(a, b)
    assert a.render() == b.render() == {"x": 7}


def test_document_delete_sticks_without_concurrent_update() -> None:
    a, ca = fresh("A")
    a.put({"x": 1}, ca)
    b = a.copy()
    a.delete(ca)
    synced(a, b)
    assert a.render() is None and b.render() is None


def test_register_keeps_concurrent_values_and_one_winner() -> None:
    a, ca = fresh("A")
    a.put({"x": 0}, ca)
    b = a.copy()
    cb = DotCounter("B", next=100)
    a.put({"x": "from A"}, ca)
    b.put({"x": "from B"}, cb)
    synced(a, b)
    assert a.render() == b.render() == {"x": "from B"}  # greatest dot wins
    assert a.conflicts() == b.conflicts() == [{"path": ["x"], "values": ["from B", "from A"]}]
    a.put({"x": "from B"}, ca)  # writing the shown value resolves the conflict
    synced(a, b)
    assert a.conflicts() == [] and b.render() == {"x": "from B"}


def test_concurrent_creation_with_different_types_is_deterministic() -> None:
    a, ca = fresh("A")
    b, cb = fresh("B")
    patch(a, ca, {"op": "make", "path": ["f"], "type": "text", "value": "hi"})
    patch(b, cb, {"op": "make", "path": ["f"], "type": "counter", "value": 4})
    synced(a, b)
    assert a.render() == b.render() == {"f": "hi"}  # text ranks above counter
    b.put({"f": 5}, cb)  # a write replaces every variant of the field
    synced(a, b)
    assert a.render() == b.render() == {"f": 5}


def test_counter_increments_add_up() -> None:
    docs = [fresh(r) for r in "ABC"]
    for doc, c in docs:
        patch(doc, c, {"op": "inc", "path": ["n"], "by": 2})
        patch(doc, c, {"op": "inc", "path": ["n"], "by": 1})
    synced(*(d for d, _ in docs))
    assert all(d.render() == {"n": 9} for d, _ in docs)


def test_concurrent_text_edits_merge_at_character_level() -> None:
    a, ca = fresh("A")
    patch(a, ca, {"op": "make", "path": ["t"], "type": "text", "value": "hello world"})
    b = a.copy()
    cb = DotCounter("B")
    a.put({"t": "Hello world"}, ca)
    b.put({"t": "hello world!"}, cb)
    synced(a, b)
    assert a.render() == b.render() == {"t": "Hello world!"}


# -- deltas ----------------------------------------------------------------------------------


def test_one_field_delta_is_small_and_does_not_grow_with_history() -> None:
    doc, c = fresh("replica-one")
    doc.put({f"f{i}": i for i in range(1000)}, c)
    for i in range(2000):
        patch(doc, c, {"op": "set", "path": [f"f{i % 1000}"], "value": i})
    delta = patch(doc, c, {"op": "set", "path": ["f7"], "value": "x"})
    assert len(encode_document(delta)) <= 100


def test_delta_since_sends_removals_a_peer_missed() -> None:
    a, ca = fresh("A")
    a.put({"x": 1, "y": 2}, ca)
    patch(a, ca, {"op": "make", "path": ["s"], "type": "set", "value": [1]})
    b = a.copy()
    patch(a, ca, {"op": "del", "path": ["x"]}, {"op": "remove", "path": ["s"], "value": 1})
    catch_up = a.delta_since(b.ctx)
    assert catch_up is not None
    b.join(catch_up)
    assert b == a and b.render() == {"y": 2, "s": []}
    assert a.delta_since(b.ctx) is None


def test_delta_since_sends_a_whole_document_delete() -> None:
    a, ca = fresh("A")
    a.put({"x": 1}, ca)
    b = a.copy()
    a.delete(ca)
    catch_up = a.delta_since(b.ctx)
    assert catch_up is not None
    b.join(catch_up)
    assert b.render() is None and b == a


# -- laws and convergence (property tests) ---------------------------------------------------


def _replica_histories(
    seed: int, n_replicas: int, steps: int
) -> tuple[list[Document], list[Document]]:
    """Random concurrent changes on replicas that occasionally sync; all their deltas."""
    rng = random.Random(seed)
    docs = [Document() for _ in range(n_replicas)]
    counters = [DotCounter(f"r{i}") for i in range(n_replicas)]
    deltas: list[Document] = []
    for _ in range(steps):
        i = rng.randrange(n_replicas)
        if rng.random() < 0.15 and deltas:
            docs[i].join(rng.choice(deltas))
        else:
            deltas.append(random_change(rng, docs[i], counters[i]))
    return docs, deltas


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(2, 3))
def test_join_is_commutative_associative_idempotent(seed: int, n: int) -> None:
    docs, _ = _replica_histories(seed, n, 25)
    a, b = docs[0], docs[1]
    c = docs[2] if n > 2 else Document()
    ab, ba = a.copy(), b.copy()
    ab.join(b)
    ba.join(a)
    assert ab == ba and ab.render() == ba.render()
    ab_c = ab.copy()
    ab_c.join(c)
    bc = b.copy()
    bc.join(c)
    a_bc = a.copy()
    a_bc.join(bc)
    assert ab_c == a_bc
    aa = a.copy()
    assert not aa.join(a) or aa == a
    assert aa == a


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32))
def test_join_of_delta_equals_mutation(seed: int) -> None:
    rng = random.Random(seed)
    doc, c = fresh("A")
    mirror = Document()
    for _ in range(30):
        delta = random_change(rng, doc, c)
        mirror.join(delta)
        assert mirror == doc
        assert mirror.render() == doc.render()


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32), st.integers(2, 4))
def test_replicas_converge_under_reordering_duplication_and_loss(seed: int, n: int) -> None:
    rng = random.Random(seed)
    docs, deltas = _replica_histories(seed, n, 30)
    # Everyone receives every delta: shuffled, some twice; dropped ones arrive later joined
    # into one delta group.
    for doc in docs:
        order = deltas + rng.sample(deltas, k=len(deltas) // 3)
        rng.shuffle(order)
        dropped = [d for d in order if rng.random() < 0.2]
        for d in order:
            if d not in dropped:
                doc.join(d)
        group = Document()
        for d in dropped:
            group.join(d)
        doc.join(group)
    first = docs[0]
    for doc in docs[1:]:
        assert doc == first
        assert doc.render() == first.render()
        assert doc.conflicts() == first.conflicts()


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32))
def test_delta_since_catches_up_any_older_state(seed: int) -> None:
    rng = random.Random(seed)
    a, ca = fresh("A")
    b, cb = fresh("B")
    for _ in range(20):
        random_change(rng, a, ca)
        if rng.random() < 0.3:
            b.join(random_change(rng, b, cb) if rng.random() < 0.5 else a.copy())
    catch_up = a.delta_since(b.ctx)
    if catch_up is not None:
        b.join(catch_up)
    back = b.delta_since(a.ctx)
    if back is not None:
        a.join(back)
    assert a == b
    assert a.ctx.includes(CausalContext()) and a.render() == b.render()


def test_removal_seen_before_its_insert_still_converges_by_anti_entropy() -> None:
    a, ca = fresh("A")
    b = Document()
    b.join(patch(a, ca, {"op": "make", "path": ["t"], "type": "text", "value": "ab"}))
    patch(a, ca, {"op": "insert", "path": ["t"], "index": 2, "text": "cde"})  # lost on the way
    b.join(patch(a, ca, {"op": "delete", "path": ["t"], "index": 3, "count": 1}))
    patch(a, ca, {"op": "insert", "path": ["t"], "index": 3, "text": "X"})  # lost as well
    catch_up = a.delta_since(b.ctx)
    assert catch_up is not None
    b.join(catch_up)
    assert b.render() == a.render() == {"t": "abcXe"}
    assert b == a


@settings(max_examples=60)
@given(st.integers(0, 2**32), st.booleans())
def test_text_and_list_fields_behave_like_python_str_and_list(seed: int, is_text: bool) -> None:
    rng = random.Random(seed)
    doc, c = fresh("A")
    model: Any = "" if is_text else []
    patch(doc, c, {"op": "make", "path": ["s"], "type": "text" if is_text else "list"})
    for _ in range(40):
        n = len(model)
        if n and rng.random() < 0.4:
            i = rng.randrange(n)
            k = rng.randint(1, n - i)
            patch(doc, c, {"op": "delete", "path": ["s"], "index": i, "count": k})
            model = model[:i] + model[i + k :]
        else:
            i = rng.randint(0, n)
            if is_text:
                piece: Any = rng.choice(["a", "bc", "déf", "\n"])
                patch(doc, c, {"op": "insert", "path": ["s"], "index": i, "text": piece})
            else:
                piece = [rng.randint(0, 9) for _ in range(rng.randint(1, 3))]
                patch(doc, c, {"op": "insert", "path": ["s"], "index": i, "values": piece})
            model = model[:i] + piece + model[i:]
        assert doc.render() == {"s": model}


@settings(max_examples=200)
@given(st.integers(0, 2**32))
def test_multi_edit_patches_are_atomic_without_a_snapshot(seed: int) -> None:
    """Patches made only of inserts and deletes are checked up front: all or nothing."""
    rng = random.Random(seed)
    doc, c = fresh("A")
    doc.put({"n": 1}, c)
    patch(doc, c, {"op": "make", "path": ["t"], "type": "text", "value": "hello"})
    patch(doc, c, {"op": "make", "path": ["l"], "type": "list", "value": [1, 2]})
    for _ in range(6):
        ops: list[dict[str, Any]] = []
        for _ in range(rng.randint(2, 4)):
            path: list[Any] = [rng.choice(["t", "l", "n", "new", "m"])]
            if rng.random() < 0.1:
                path = ["t", 0]
            if rng.random() < 0.5:
                op: dict[str, Any] = {"op": "insert", "path": path, "index": rng.randint(0, 8)}
                op.update({"text": "xy"} if rng.random() < 0.5 else {"values": [7]})
            else:
                op = {"op": "delete", "path": path, "index": rng.randint(0, 5)}
                op["count"] = rng.randint(0, 3)
            ops.append(op)
        before, next_dot = doc.copy(), c.next
        one_by_one, oc = doc.copy(), DotCounter("A", next=c.next)
        try:
            for op in ops:
                patch(one_by_one, oc, op)
            expected: Any = one_by_one.render()
        except PatchError as e:
            expected = e.reason
        if isinstance(expected, str):
            with pytest.raises(PatchError) as failed:
                patch(doc, c, *ops)
            assert failed.value.reason == expected
            assert doc == before
            assert c.next == next_dot
        else:
            patch(doc, c, *ops)
            assert doc.render() == expected


def test_objects_in_registers_and_list_items_show_their_keys_sorted() -> None:
    # As maps and set elements do: a register holds an object as written, and a copy decoded
    # from the canonical encoding (another replica, or this one after a restart) had its keys
    # in another order, so the same document printed differently.
    doc, c = fresh("r1")
    value = {"bb": 1, "a": {"z": 1, "y": [{"d": 1, "c": 2}]}}
    patch(doc, c, {"op": "make", "path": ["r"], "type": "register", "value": value})
    patch(doc, c, {"op": "insert", "path": ["l"], "index": 0, "values": [{"b": 1, "a": 2}, 3]})
    shown = json.dumps(doc.render())
    assert shown == json.dumps(
        {"l": [{"a": 2, "b": 1}, 3], "r": {"a": {"y": [{"c": 2, "d": 1}], "z": 1}, "bb": 1}}
    )
    copy = decode_document(encode_document(doc))
    assert json.dumps(copy.render()) == shown
    other, c2 = fresh("r2")
    other.join(doc)
    patch(other, c2, {"op": "set", "path": ["r"], "value": {"y": 0, "x": 0}})
    doc.patch(parse_ops([{"op": "set", "path": ["r"], "value": {"q": 0, "p": 0}}]), c)
    doc.join(other)
    conflicts = doc.conflicts()
    assert [list(v) for v in conflicts[0]["values"]] in (
        [["p", "q"], ["x", "y"]],
        [["x", "y"], ["p", "q"]],
    )


def test_equal_numbers_in_a_set_render_in_one_order() -> None:
    # 1 and 1.0 are distinct elements; whichever arrived first, every replica shows [1, 1.0].
    one, other = Document(), Document()
    for doc, first, second in ((one, 1, 1.0), (other, 1.0, 1)):
        doc.patch(parse_ops([{"op": "make", "path": ["s"], "type": "set"}]), DotCounter("a", 1))
        doc.patch(parse_ops([{"op": "add", "path": ["s"], "value": first}]), DotCounter("b", 1))
        doc.patch(parse_ops([{"op": "add", "path": ["s"], "value": second}]), DotCounter("c", 1))
    assert json.dumps(one.render()) == json.dumps(other.render()) == '{"s": [1, 1.0]}'


@pytest.mark.parametrize(
    ("make", "write"),
    [
        ({"type": "text", "value": "hi"}, {"op": "insert", "path": ["f"], "index": 2, "text": "!"}),
        ({"type": "counter", "value": 1}, {"op": "inc", "path": ["f"], "by": 1}),
        ({"type": "set", "value": ["a"]}, {"op": "add", "path": ["f"], "value": "b"}),
        ({"type": "set", "value": ["a"]}, {"op": "remove", "path": ["f"], "value": "a"}),
        ({"type": "list", "value": [1]}, {"op": "delete", "path": ["f"], "index": 0, "count": 1}),
        ({"type": "map", "value": {"a": 1}}, {"op": "set", "path": ["f", "b"], "value": 2}),
        ({"type": "map", "value": {"a": 1}}, {"op": "del", "path": ["f", "a"]}),
    ],
)
def test_the_next_write_to_a_field_replaces_its_concurrent_variants(
    make: dict[str, Any], write: dict[str, Any]
) -> None:
    # One device makes f with a type, another concurrently sets f to a number: both variants
    # are kept, one shown. The next write to f, whatever the op, replaces the hidden one,
    # so that it cannot show again when the shown one is deleted.
    a, b = Document(), Document()
    ca, cb = DotCounter("a", 1), DotCounter("b", 1)
    da = a.patch(parse_ops([{"op": "make", "path": ["f"], **make}]), ca)
    db = b.patch(parse_ops([{"op": "set", "path": ["f"], "value": 5}]), cb)
    a.join(db)
    b.join(da)
    assert len(b.root.fields["f"]) == 2
    dw = b.patch(parse_ops([write]), cb)
    a.join(dw)
    assert list(b.root.fields["f"]) == list(a.root.fields["f"]) == [make["type"]]
    # A third device that saw only the make deletes f concurrently: f is gone everywhere
    # (or keeps what the write added, update-wins), and the 5 never comes back.
    c = Document()
    c.join(da)
    dc = c.patch(parse_ops([{"op": "del", "path": ["f"]}]), DotCounter("c", 1))
    for doc in (a, b):
        doc.join(dc)
    c.join(db)
    c.join(dw)
    shown = a.render()
    assert shown == b.render() == c.render()
    assert shown is not None and shown.get("f") != 5


def test_a_refused_patch_leaves_concurrent_variants_alone() -> None:
    # Text and list edits are checked up front, without a snapshot: the check must not
    # already replace the field's hidden variant when a later edit of the patch is refused.
    a, b = Document(), Document()
    da = a.patch(
        parse_ops([{"op": "make", "path": ["f"], "type": "text", "value": "hi"}]),
        DotCounter("a", 1),
    )
    b.patch(parse_ops([{"op": "set", "path": ["f"], "value": 5}]), DotCounter("b", 1))
    b.join(da)
    before = b.copy()
    ops = [
        {"op": "insert", "path": ["f"], "index": 0, "text": "x"},
        {"op": "insert", "path": ["f"], "index": 99, "text": "y"},
    ]
    with pytest.raises(PatchError):
        b.patch(parse_ops(ops), DotCounter("b", 2))
    assert sorted(b.root.fields["f"]) == ["register", "text"]
    assert b.ctx == before.ctx and b.render() == before.render()
