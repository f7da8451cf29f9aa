"""Causal contexts: range sets behave like Python sets of dots."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from syncd.crdt import CausalContext, Ranges

dots = st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 40)), max_size=40)
spans = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 40), st.integers(0, 6)), max_size=12
)


def as_set(ctx: CausalContext) -> set[tuple[str, int]]:
    return set(ctx.dots())


@given(spans, spans)
def test_ranges_match_a_set_model(
    adds: list[tuple[str, int, int]], removes: list[tuple[str, int, int]]
) -> None:
    ctx = CausalContext()
    model: set[tuple[str, int]] = set()
    for r, s, n in adds:
        ctx.add_range(r, s, s + n)
        model |= {(r, i) for i in range(s, s + n + 1)}
    for r, s, n in removes:
        ctx.remove_range(r, s, s + n)
        model -= {(r, i) for i in range(s, s + n + 1)}
    assert as_set(ctx) == model
    assert ctx.size() == len(model)
    for r in ("a", "b"):
        for i in range(0, 50):
            assert ((r, i) in ctx) == ((r, i) in model)
    # canonical: disjoint, sorted, non-adjacent
    for r in ctx.replicas():
        rs = ctx.for_replica(r)
        assert rs is not None
        pairs = list(rs.pairs())
        assert all(s <= e for s, e in pairs)
        assert all(pairs[i][1] + 1 < pairs[i + 1][0] for i in range(len(pairs) - 1))


@given(dots, dots)
def test_union_difference_includes(xs: list[tuple[str, int]], ys: list[tuple[str, int]]) -> None:
    a, b = CausalContext.from_dots(xs), CausalContext.from_dots(ys)
    u = a.copy()
    u.update(b)
    assert as_set(u) == set(xs) | set(ys)
    assert as_set(a.difference(b)) == set(xs) - set(ys)
    assert a.includes(b) == (set(ys) <= set(xs))
    assert u.includes(a) and u.includes(b)


def test_version_vector_is_the_contiguous_prefix() -> None:
    ctx = CausalContext.from_ranges([("a", 1, 5), ("a", 7, 9), ("b", 2, 3)])
    assert ctx.version_vector() == {"a": 5}
    assert ctx.max("a") == 9 and ctx.max("zz") == 0


def test_ranges_overlapping_and_missing() -> None:
    r = Ranges()
    r.add_range(3, 5)
    r.add_range(9, 12)
    assert list(r.overlapping(1, 10)) == [(3, 5), (9, 10)]
    assert list(r.missing(1, 13)) == [(1, 2), (6, 8), (13, 13)]
