"""The sequence diff used by put: correct edits, and linear cost for small edits."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from syncd.crdt.diff import MAX_EDIT_DISTANCE, apply_edits, diff


@given(st.text(alphabet="abc", max_size=30), st.text(alphabet="abc", max_size=30))
def test_diff_turns_a_into_b(a: str, b: str) -> None:
    edits = diff(a, b)
    assert "".join(str(x) for x in apply_edits(a, b, edits)) == b


@given(st.lists(st.integers(0, 3), max_size=20), st.lists(st.integers(0, 3), max_size=20))
def test_list_diff_turns_a_into_b(a: list[int], b: list[int]) -> None:
    assert apply_edits(a, b, diff(a, b)) == b


@given(st.text(alphabet="ab", min_size=1, max_size=20), st.text(alphabet="ab", max_size=20))
def test_diff_is_minimal_for_single_insertions(a: str, ins: str) -> None:
    b = a[:3] + ins + a[3:]
    edits = diff(a, b)
    assert sum(e[1] for e in edits) == 0
    assert sum(e[3] - e[2] for e in edits) == len(ins)


def test_small_edit_in_a_large_text_is_one_small_edit() -> None:
    a = "lorem ipsum " * 10_000
    b = a[:60_000] + "X" + a[60_001:]
    assert diff(a, b) == [(60_000, 1, 60_000, 60_001)]


def test_unrelated_large_texts_fall_back_to_replacement() -> None:
    a = "ab" * (MAX_EDIT_DISTANCE * 2)
    b = "cd" * (MAX_EDIT_DISTANCE * 2)
    assert diff(a, b) == [(0, len(a), 0, len(b))]
