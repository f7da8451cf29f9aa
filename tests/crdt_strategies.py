"""Hypothesis strategies and helpers shared by the CRDT tests."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import strategies as st

from syncd.crdt import Document, DotCounter, parse_ops
from syncd.errors import PatchError

FIELDS = ["a", "b", "c"]
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.text(max_size=5),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(FIELDS), children, max_size=3)
    ),
    max_leaves=6,
)
json_objects = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=3)


def random_op(rng: random.Random, doc: Document) -> dict[str, Any]:
    """One random patch operation that usually applies to ``doc``."""
    value = doc.render() or {}
    name = rng.choice(FIELDS)
    path: list[Any] = [name]
    current = value.get(name)
    if isinstance(current, dict) and rng.random() < 0.5:
        sub = rng.choice(FIELDS)
        path.append(sub)
        current = current.get(sub)
    kind = rng.randrange(12)
    if kind == 0:
        t = rng.choice(["text", "counter", "set", "list", "map", "register"])
        return {"op": "make", "path": path, "type": t}
    if kind == 1:
        return {"op": "set", "path": path, "value": rng.choice([1, "x", None, [1, 2], {"a": 1}])}
    if kind == 2:
        return {"op": "del", "path": path}
    if kind == 3:
        return {"op": "inc", "path": path, "by": rng.randint(-3, 5)}
    if kind in (4, 5):
        return {"op": rng.choice(["add", "remove"]), "path": path, "value": rng.randint(0, 4)}
    if kind in (6, 7, 8) and isinstance(current, str | list):
        n = len(current)
        if rng.random() < 0.6 or n == 0:
            i = rng.randint(0, n)
            if isinstance(current, str):
                return {
                    "op": "insert",
                    "path": path,
                    "index": i,
                    "text": rng.choice(["a", "bc", "xyz"]),
                }
            return {"op": "insert", "path": path, "index": i, "values": [rng.randint(0, 9)]}
        i = rng.randrange(n)
        return {"op": "delete", "path": path, "index": i, "count": rng.randint(1, n - i)}
    if kind == 9:
        return {"op": "set", "path": path, "value": rng.choice(["hello", "help", "yellow"])}
    if kind == 10:
        return {"op": "make", "path": path, "type": "text", "value": rng.choice(["abc", "xy"])}
    return {"op": "set", "path": [], "value": {"a": rng.choice([1, 2]), "b": {"c": "x"}}}


def random_change(rng: random.Random, doc: Document, counter: DotCounter) -> Document:
    """Apply a random put, patch or delete to ``doc``; return the delta (maybe empty)."""
    roll = rng.random()
    if roll < 0.05:
        return doc.delete(counter)
    if roll < 0.15:
        return doc.put({"a": rng.choice(["hi", 3, [1]]), "c": {"b": rng.randint(0, 2)}}, counter)
    ops = [random_op(rng, doc) for _ in range(rng.choice([1, 1, 2]))]
    try:
        return doc.patch(parse_ops(ops), counter)
    except PatchError:
        return Document()
