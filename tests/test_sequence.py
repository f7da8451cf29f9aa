"""The Fugue sequence: a plain str/list model, join laws, convergence, non-interleaving, codec."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.crdt.context import CausalContext
from syncd.crdt.dots import DotCounter
from syncd.crdt.sequence import Sequence
from syncd.errors import CodecError
from tests.fugue_model import LEFT, RIGHT, FugueModel

State = tuple[Sequence, CausalContext]


# -- helpers ---------------------------------------------------------------------------------


class Replica:
    """A sequence, its causal context and dot counter; records the delta of every change."""

    def __init__(self, name: str, is_text: bool = True, ship_nodes: bool = True) -> None:
        self.ship_nodes = ship_nodes
        self.seq = Sequence(is_text)
        self.ctx = CausalContext()
        self.counter = DotCounter(name)
        self.deltas: list[State] = []

    def insert(self, index: int, items: str | list[Any]) -> State:
        first = self.counter.take(len(items))
        d = self.seq.insert(index, items, self.counter.replica, first)
        dctx = CausalContext.from_ranges([(self.counter.replica, first, first + len(items) - 1)])
        self.ctx.update(dctx)
        self.deltas.append((d, dctx))
        return d, dctx

    def delete(self, index: int, count: int) -> State:
        ranges = self.seq.delete(index, count)
        # The removal carries the (dead) nodes (see Sequence.subset), or only their dots.
        store = self.seq.subset(ranges) if self.ship_nodes else Sequence(self.seq.is_text)
        delta = (store, CausalContext.from_ranges(ranges))
        self.deltas.append(delta)
        return delta

    def receive(self, delta: State) -> bool:
        changed = self.seq.join(delta[0], self.ctx, delta[1])
        self.ctx.update(delta[1])
        return changed

    def random_edit(self, rng: random.Random) -> State:
        n = len(self.seq)
        if n and rng.random() < 0.35:
            i = rng.randrange(n)
            return self.delete(i, rng.randint(1, min(3, n - i)))
        i = rng.randint(0, n)
        if self.seq.is_text:
            return self.insert(i, "".join(rng.choice("abcxyz") for _ in range(rng.randint(1, 3))))
        return self.insert(i, [rng.randint(0, 9) for _ in range(rng.randint(1, 3))])


def join(a: State, b: State) -> State:
    s = a[0].copy()
    s.join(b[0], a[1], b[1])
    c = a[1].copy()
    c.update(b[1])
    return s, c


def same(a: State, b: State) -> bool:
    return a[0] == b[0] and a[1] == b[1] and a[0].value() == b[0].value()


def model_of(seq: Sequence) -> FugueModel:
    """The plain reference tree holding exactly ``seq``'s nodes and live set."""
    m = FugueModel(seq.is_text)
    live = CausalContext.from_ranges(seq.live_ranges())
    runs, _live, values = seq._canon()
    vals = iter(values)
    for rep, start, n, pdot, side in runs:
        for c in range(start, start + n):
            parent, sd = (pdot, side) if c == start else ((rep, c - 1), True)
            alive = (rep, c) in live
            m.add_node(
                (rep, c), parent, RIGHT if sd else LEFT, next(vals) if alive else None, alive
            )
    return m


def scenario(seed: int, nrep: int, steps: int, is_text: bool = True) -> list[Replica]:
    """Replicas editing concurrently, with random partial delta exchange. Odd seeds send
    removals as bare dots (no nodes): the other case the join must handle."""
    rng = random.Random(seed)
    reps = [Replica(f"r{i}", is_text, ship_nodes=seed % 2 == 0) for i in range(nrep)]
    for _ in range(steps):
        r = rng.choice(reps)
        delta = r.random_edit(rng)
        for other in reps:
            if other is not r and rng.random() < 0.3:
                other.receive(delta)
    return reps


class AutoIndex(dict[str, int]):
    """A replica table that grows on demand, as the document codec's does."""

    def __missing__(self, key: str) -> int:
        i = self[key] = len(self)
        return i


def dump(seq: Sequence) -> bytes:
    return cbor2.dumps(seq.to_cbor(AutoIndex()))


def roundtrip(seq: Sequence) -> Sequence:
    table = AutoIndex()
    data = cbor2.dumps(seq.to_cbor(table))
    return Sequence.from_cbor(cbor2.loads(data), list(table), seq.is_text)


# -- one replica -----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.booleans())
def test_single_replica_behaves_like_a_plain_str_or_list(seed: int, is_text: bool) -> None:
    rng = random.Random(seed)
    r = Replica("a", is_text)
    model: Any = "" if is_text else []
    for _ in range(120):
        n = len(model)
        if n and rng.random() < 0.4:
            i = rng.randrange(n)
            k = rng.randint(1, min(4, n - i))
            ranges = r.seq.delete(i, k)
            assert sum(e - s + 1 for _r, s, e in ranges) == k
            model = model[:i] + model[i + k :]
        else:
            # Mostly typing forwards after the last edit, sometimes a jump.
            i = rng.randint(0, n)
            items: Any = "".join(rng.choice("abc") for _ in range(rng.randint(1, 4)))
            if not is_text:
                items = [ord(ch) for ch in items]
            r.insert(i, items)
            model = model[:i] + items + model[i:]
            if rng.random() < 0.7:
                for _ in range(rng.randint(1, 8)):
                    i += len(items)
                    items = "z" if is_text else [0]
                    r.insert(i, items)
                    model = model[:i] + items + model[i:]
        assert r.seq.value() == model
        assert len(r.seq) == len(model)
    assert model_of(r.seq).value() == model


def test_large_document_with_many_blocks() -> None:
    rng = random.Random(7)
    r = Replica("a")
    model = "".join(rng.choice("abc") for _ in range(30000))
    r.insert(0, model)
    for step in range(6000):
        n = len(model)
        if n > 50 and rng.random() < 0.3:
            i = rng.randrange(n)
            k = rng.randint(1, min(30, n - i))
            r.delete(i, k)
            model = model[:i] + model[i + k :]
        else:
            i = rng.randint(0, n) if step % 5 == 0 else min(n, max(0, n - rng.randint(0, 20)))
            t = rng.choice(["a", "bc", "def"])
            r.insert(i, t)
            model = model[:i] + t + model[i:]
    assert r.seq.value() == model
    assert roundtrip(r.seq) == r.seq


def test_index_errors() -> None:
    s = Sequence(True)
    with pytest.raises(IndexError):
        s.insert(1, "a", "r", 1)
    s.insert(0, "abc", "r", 1)
    with pytest.raises(IndexError):
        s.insert(4, "a", "r", 4)
    with pytest.raises(IndexError):
        s.insert(-1, "a", "r", 4)
    with pytest.raises(IndexError):
        s.delete(2, 2)
    with pytest.raises(IndexError):
        s.delete(-1, 1)
    assert s.value() == "abc"
    assert s.delete(1, 0) == []


def test_insert_returns_a_delta_of_just_the_new_nodes() -> None:
    s = Sequence(True)
    s.insert(0, "ab", "r", 1)
    d = s.insert(2, "cd", "r", 3)
    assert list(d.node_ranges()) == [("r", 3, 4)]
    assert list(d.live_ranges()) == [("r", 3, 4)]
    assert d.value() == ""  # parent missing: kept, not rendered
    assert not d.is_bottom()
    assert Sequence(False).is_bottom()


def test_deleted_values_are_dropped() -> None:
    a, b = Replica("a"), Replica("b")
    a.insert(0, "hello")
    b.receive(a.deltas[0])
    a.delete(1, 3)
    b.receive(a.deltas[1])
    assert a.seq == b.seq
    assert a.seq.value() == "ho"
    assert "".join(a.seq._canon()[2]) == "ho"  # the dead values are gone


def test_copy_is_independent() -> None:
    r = Replica("a", is_text=False)
    r.insert(0, [1, 2, 3])
    c = r.seq.copy()
    assert c == r.seq
    c.insert(1, [9], "b", 1)
    c.delete(0, 1)
    assert r.seq.value() == [1, 2, 3]
    assert c.value() == [9, 2, 3]
    r.insert(3, [4])
    assert c.value() == [9, 2, 3]


# -- merging ---------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.integers(2, 4))
def test_join_laws(seed: int, nrep: int) -> None:
    reps = scenario(seed, nrep, 30)
    states = [(r.seq, r.ctx) for r in reps]
    a, b = states[0], states[1]
    c = states[2] if nrep > 2 else states[0]
    assert same(join(a, b), join(b, a))
    assert same(join(join(a, b), c), join(a, join(b, c)))
    assert same(join(a, a), a)
    ab = join(a, b)
    assert same(join(ab, b), ab)
    # And the result is what the plain tree gives for the same nodes.
    assert ab[0].value() == model_of(ab[0]).value()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.booleans())
def test_join_of_a_delta_equals_the_mutated_state(seed: int, is_text: bool) -> None:
    rng = random.Random(seed)
    reps = scenario(seed, 2, 20, is_text)
    a = reps[0]
    for _ in range(10):
        before = (a.seq.copy(), a.ctx.copy())
        delta = a.random_edit(rng)
        assert same(join(before, delta), (a.seq, a.ctx))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32), st.integers(2, 4))
def test_convergence_with_deltas_reordered_and_duplicated(seed: int, nrep: int) -> None:
    rng = random.Random(seed)
    reps = scenario(seed, nrep, 40)
    deltas = [d for r in reps for d in r.deltas]
    # Everyone gets everything: in causal order to one replica, in random order with
    # duplicates (children before parents, deletions before insertions) to another.
    ordered = Replica("x", ship_nodes=seed % 2 == 0)
    for r in reps:
        for d in r.deltas:
            ordered.receive(d)
    shuffled = Replica("y", ship_nodes=seed % 2 == 0)
    jumbled = deltas + rng.sample(deltas, len(deltas) // 2)
    rng.shuffle(jumbled)
    for d in jumbled:
        shuffled.receive(d)
    assert same((ordered.seq, ordered.ctx), (shuffled.seq, shuffled.ctx))
    for r in reps:
        for d in deltas:
            r.receive(d)
        assert same((r.seq, r.ctx), (ordered.seq, ordered.ctx))
    assert ordered.seq.value() == model_of(ordered.seq).value()
    # A duplicate delivery changes nothing.
    assert not ordered.receive(rng.choice(deltas))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32))
def test_local_edits_after_merges_match_the_plain_tree(seed: int) -> None:
    rng = random.Random(seed)
    reps = scenario(seed, 3, 30)
    for _ in range(15):
        r = rng.choice(reps)
        model = model_of(r.seq)
        n = len(r.seq)
        i = rng.randint(0, n)
        first = r.counter.next
        r.insert(i, "pq")
        model.insert(i, "pq", r.counter.replica, first)
        assert r.seq.value() == model.value()
        assert model_of(r.seq).value() == model.value()
        if n:
            j = rng.randrange(n)
            r.delete(j, 1)
            model.delete(j, 1)
            assert r.seq.value() == model.value()


def test_restricted_and_kill() -> None:
    reps = scenario(4, 3, 40)  # even seed: removals ship their nodes, which this needs
    a, b = reps[0], reps[1]
    missing = a.seq.restricted(b.ctx)
    got = b.seq.copy()
    got.join(missing, b.ctx, a.ctx.difference(b.ctx))
    full = join((b.seq, b.ctx), (a.seq, a.ctx))[0]
    assert set(got.node_ranges()) == set(full.node_ranges())
    assert a.seq.restricted(a.ctx).is_bottom()
    assert a.seq.restricted(CausalContext()) == a.seq
    # kill: everything in the context dies, and only that.
    s = a.seq.copy()
    killed = s.kill(CausalContext.from_ranges(a.seq.live_ranges()))
    assert len(s) == 0
    assert CausalContext.from_ranges(killed) == CausalContext.from_ranges(a.seq.live_ranges())
    assert s.kill(a.ctx) == []


# -- non-interleaving ------------------------------------------------------------------------


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("prefix", ["", "<>", "<-dead->"])
def test_concurrent_runs_do_not_interleave(backward: bool, prefix: str) -> None:
    base = Replica("base")
    if prefix:
        base.insert(0, prefix)
        if "dead" in prefix:
            base.delete(1, 6)
    a, b = Replica("a"), Replica("b")
    for d in base.deltas:
        a.receive(d)
        b.receive(d)
    at = 1 if prefix else 0
    for r, word in ((a, "abc"), (b, "xyz")):
        for k, ch in enumerate(word if not backward else reversed(word)):
            r.insert(at if backward else at + k, ch)
    for d in a.deltas:
        b.receive(d)
    for d in b.deltas[:3]:
        a.receive(d)
    assert a.seq == b.seq
    text = a.seq.value()
    assert isinstance(text, str)
    middle = text[at : at + 6]
    assert middle in ("abcxyz", "xyzabc"), text


# -- codec -----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 3), st.booleans())
def test_cbor_round_trip(seed: int, nrep: int, is_text: bool) -> None:
    for r in scenario(seed, nrep, 30, is_text):
        back = roundtrip(r.seq)
        assert back == r.seq
        assert back.value() == r.seq.value()
        assert dump(back) == dump(r.seq)
        # Deltas (whose parents are missing) round-trip too.
        for d, _ctx in r.deltas[-3:]:
            assert roundtrip(d) == d


def test_list_values_may_be_any_json() -> None:
    r = Replica("a", is_text=False)
    r.insert(0, [{"k": [1, None]}, "s", 2.5, True])
    assert roundtrip(r.seq).value() == [{"k": [1, None]}, "s", 2.5, True]


junk = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 300) | st.text(max_size=3) | st.floats(),
    lambda ch: st.lists(ch, max_size=8),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(junk, st.booleans())
def test_from_cbor_on_junk_raises_only_codec_error(obj: Any, is_text: bool) -> None:
    with contextlib.suppress(CodecError):
        Sequence.from_cbor(obj, ["a", "b"], is_text)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32), st.data())
def test_from_cbor_on_damaged_encodings_raises_only_codec_error(seed: int, data: Any) -> None:
    r = scenario(seed, 2, 15)[0]
    obj = r.seq.to_cbor({"r0": 0, "r1": 1})
    col = data.draw(st.integers(0, 6))
    if isinstance(obj[col], list) and obj[col]:
        i = data.draw(st.integers(0, len(obj[col]) - 1))
        obj[col][i] = data.draw(junk)
    else:
        obj[col] = data.draw(junk)
    try:
        s = Sequence.from_cbor(obj, ["r0", "r1"], True)
    except CodecError:
        return
    s.value()


@pytest.mark.parametrize(
    "obj",
    [
        [[0, 1], [0], [1], [0], [], [2], "ab"],  # live counts exceed the nodes
        [[0, 1], [0], [2], [0], [], [2], "a"],  # too few values
        [[0, 1], [0], [2], [1], [], [2], "ab"],  # left child of the root
        [[0, 1, 0, 1], [0, 0], [1, 1], [0, 0], [], [2], "ab"],  # replica twice
        [[0, 1], [0], [2], [6], [0], [2], "ab"],  # own node as parent (a cycle)
        [[2, 1], [0], [2], [0], [], [2], "ab"],  # replica index out of range
        [[0, 1], [0], [0], [0], [], [], ""],  # empty run
        [[0, 1], [0], [1], [0], [], [True], "a"],  # a bool is not a count
    ],
)
def test_from_cbor_rejects(obj: Any) -> None:
    with pytest.raises(CodecError):
        Sequence.from_cbor(obj, ["a", "b"], True)


def test_encoding_is_compact_for_typing() -> None:
    r = Replica("a")
    for i, ch in enumerate("hello world, this is typed forwards"):
        r.insert(i, ch)
    obj = r.seq.to_cbor({"a": 0})
    assert obj[:6] == [[0, 1], [0], [35], [0], [], [35]]
    assert len(cbor2.dumps(obj)) < 60


def test_a_removal_seen_first_still_lets_anti_entropy_converge() -> None:
    a, b = Replica("a"), Replica("b")
    i1 = a.insert(0, "ab")
    i2 = a.insert(2, "c")  # right child of the "b" node
    rm = a.delete(1, 1)
    b.receive(rm)  # the removal first: b's context now holds the "b" node's dot...
    b.receive(i2)
    assert b.seq.value() == ""  # ...and "c" waits for its ancestors
    # Anti-entropy sends what b's context lacks; that must be enough.
    b.receive((a.seq.restricted(b.ctx), a.ctx.difference(b.ctx)))
    assert same((a.seq, a.ctx), (b.seq, b.ctx))
    assert b.seq.value() == "ac"
    assert not b.receive(i1)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.booleans())
def test_deltas_combined_by_join_act_like_the_deltas_one_by_one(seed: int, is_text: bool) -> None:
    rng = random.Random(seed)
    reps = scenario(seed, 2, 15, is_text)
    a, b = reps
    base = (b.seq.copy(), b.ctx.copy())
    # One patch of several changes: its delta is the join of their deltas.
    combined: State = (Sequence(is_text), CausalContext())
    for _ in range(rng.randint(1, 6)):
        d = a.random_edit(rng)
        combined[0].join(d[0], combined[1], d[1])
        combined[1].update(d[1])
    for d in a.deltas:
        b.receive(d)
    assert same(join(base, (a.seq, a.ctx)), (b.seq, b.ctx))
    assert same(join(join(base, (a.seq, a.ctx)), combined), (b.seq, b.ctx))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32))
def test_join_laws_for_lists(seed: int) -> None:
    reps = scenario(seed, 3, 30, is_text=False)
    a, b, c = ((r.seq, r.ctx) for r in reps)
    assert same(join(a, b), join(b, a))
    assert same(join(join(a, b), c), join(a, join(b, c)))
    assert same(join(a, a), a)


@pytest.mark.parametrize(
    ("here", "there", "seen_here", "seen_there", "live_after"),
    [
        (True, True, True, True, True),
        (True, False, True, True, False),  # removed there
        (True, None, True, True, False),  # removed there, node not shipped
        (True, None, True, False, True),  # there never saw it
        (False, True, True, True, False),  # removed here
        (None, True, True, True, False),  # removed here before the node arrived
        (None, True, False, True, True),  # new
        (False, True, False, True, True),  # held dead here but never seen: the rule says live
    ],
)
def test_liveness_rule(
    here: bool | None, there: bool | None, seen_here: bool, seen_there: bool, live_after: bool
) -> None:
    """live after = (live here and (live there or not seen there)) or (live there and not seen
    here); None = the node is not held on that side."""

    def side(state: bool | None, seen: bool) -> State:
        s = Sequence(True)
        if state is not None:
            s.insert(0, "x", "a", 1)
            if not state:
                s.delete(0, 1)
        return s, CausalContext.from_dots([("a", 1)] if seen else [])

    a, b = side(here, seen_here), side(there, seen_there)
    for s, _c in (join(a, b), join(b, a)):
        assert s.value() == ("x" if live_after else "")
    # The lazy one-run form of the other side takes the same decisions.
    if there is not None:
        lazy = Sequence(True)._one_run("a", 1, 1, "x" if there else None, None, True)
        s = a[0].copy()
        s.join(lazy, a[1], b[1])
        assert s.value() == ("x" if live_after else "")
