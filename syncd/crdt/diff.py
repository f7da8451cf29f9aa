"""Sequence diff for ``put``: the edits that turn one text or list into another.

Common prefix and suffix are trimmed first (a small edit in a 100 KB note costs one pass over
the note), then Myers' O((N+M)·D) algorithm runs on the middle. When the middle differs in more
than :data:`MAX_EDIT_DISTANCE` places, the whole middle is replaced instead: still a correct
edit, never quadratic.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_EDIT_DISTANCE = 2000

Edit = tuple[int, int, int, int]
"""``(index, delete_count, new_start, new_end)``: at ``index`` of the sequence *as edited so
far*, delete ``delete_count`` items, then insert ``new[new_start:new_end]``."""


def _common_prefix(a: Sequence[object], b: Sequence[object]) -> int:
    n = min(len(a), len(b))
    if isinstance(a, str) and isinstance(b, str):
        # Compare in growing chunks: C-speed string comparison instead of a Python loop.
        lo, step = 0, 64
        while lo < n:
            hi = min(n, lo + step)
            if a[lo:hi] != b[lo:hi]:
                break
            lo, step = hi, step * 2
        else:
            return n
        while lo < n and a[lo] == b[lo]:
            lo += 1
        return lo
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _common_suffix(a: Sequence[object], b: Sequence[object], limit: int) -> int:
    la, lb = len(a), len(b)
    i = 0
    while i < limit and a[la - 1 - i] == b[lb - 1 - i]:
        i += 1
    return i


def _myers(a: Sequence[object], b: Sequence[object]) -> list[tuple[str, int, int]] | None:
    """Edit script as runs ``("=", i, j)`` / ``("-", i, j)`` / ``("+", i, j)``, or None if the
    distance exceeds :data:`MAX_EDIT_DISTANCE`."""
    n, m = len(a), len(b)
    maxd = min(n + m, MAX_EDIT_DISTANCE)
    offset = maxd + 1
    v = [0] * (2 * maxd + 3)
    trace: list[list[int]] = []
    for d in range(maxd + 1):
        trace.append(v.copy())
        for k in range(-d, d + 1, 2):
            if k == -d or (k != d and v[offset + k - 1] < v[offset + k + 1]):
                x = v[offset + k + 1]
            else:
                x = v[offset + k - 1] + 1
            y = x - k
            while x < n and y < m and a[x] == b[y]:
                x += 1
                y += 1
            v[offset + k] = x
            if x >= n and y >= m:
                return _backtrack(trace, offset, n, m, d)
    return None


def _backtrack(
    trace: list[list[int]], offset: int, n: int, m: int, dmax: int
) -> list[tuple[str, int, int]]:
    script: list[tuple[str, int, int]] = []
    x, y = n, m
    for d in range(dmax, 0, -1):
        v = trace[d]
        k = x - y
        prev_k = k + 1 if k == -d or (k != d and v[offset + k - 1] < v[offset + k + 1]) else k - 1
        prev_x = v[offset + prev_k]
        prev_y = prev_x - prev_k
        while x > prev_x and y > prev_y:
            x, y = x - 1, y - 1
            script.append(("=", x, y))
        if x == prev_x:
            script.append(("+", x, prev_y))
        else:
            script.append(("-", prev_x, y))
        x, y = prev_x, prev_y
    while x > 0 and y > 0:
        x, y = x - 1, y - 1
        script.append(("=", x, y))
    script.reverse()
    return script


def diff(a: Sequence[object], b: Sequence[object]) -> list[Edit]:
    """Edits turning ``a`` into ``b`` (see :data:`Edit`), in application order."""
    p = _common_prefix(a, b)
    s = _common_suffix(a, b, min(len(a), len(b)) - p)
    a_mid = a[p : len(a) - s]
    b_mid = b[p : len(b) - s]
    if not a_mid and not b_mid:
        return []
    if not a_mid or not b_mid:
        return [(p, len(a_mid), p, p + len(b_mid))]
    script = _myers(a_mid, b_mid)
    if script is None:
        return [(p, len(a_mid), p, p + len(b_mid))]
    edits: list[Edit] = []
    shift = 0  # (inserted - deleted) so far: position in the edited sequence = x + shift
    for op, x, y in script:
        if op == "=":
            continue
        pos = p + x + shift
        last = edits[-1] if edits else None
        if op == "-":
            if (
                last is not None
                and last[0] + (last[3] - last[2]) == pos
                and last[1] >= 0
                and (last[3] - last[2] == 0)
            ):
                edits[-1] = (last[0], last[1] + 1, last[2], last[3])
            else:
                edits.append((pos, 1, p + y, p + y))
            shift -= 1
        else:
            if last is not None and last[0] + (last[3] - last[2]) == pos and last[3] == p + y:
                edits[-1] = (last[0], last[1], last[2], last[3] + 1)
            else:
                edits.append((pos, 0, p + y, p + y + 1))
            shift += 1
    return edits


def apply_edits(a: Sequence[object], b: Sequence[object], edits: list[Edit]) -> list[object]:
    """Apply edits to a copy of ``a`` (a reference model, used by tests)."""
    out = list(a)
    for index, delete, ns, ne in edits:
        out[index : index + delete] = list(b[ns:ne])
    return out
