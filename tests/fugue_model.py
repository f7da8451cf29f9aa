"""A plain, slow Fugue tree: the executable model the fast sequence is tested against.

Every node is ``(dot, parent, side, value)``; the order is an in-order walk (left children,
the node, right children), same-side siblings sorted by dot ``(replica, counter)``. Inserting
between visible neighbours ``a`` and ``b``: the new node becomes the right child of ``a`` if
``a`` has no right children, else the left child of the node after ``a`` in the walk. This is
Fugue (Weidner & Kleppmann 2023) without FugueMax's right-sibling refinement; it is O(n) per
operation and meant for tests only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from syncd.crdt.context import CausalContext
from syncd.crdt.dots import Dot

LEFT, RIGHT = 0, 1


class FugueModel:
    """Reference Fugue sequence (see module docstring)."""

    def __init__(self, is_text: bool) -> None:
        self.is_text = is_text
        self.nodes: dict[Dot, tuple[Dot | None, int]] = {}
        self.values: dict[Dot, Any] = {}  # live nodes only
        self.children: dict[Dot | None, list[Dot]] = {}

    def _attach(self, dot: Dot, parent: Dot | None, side: int) -> None:
        self.nodes[dot] = (parent, side)
        kids = self.children.setdefault(parent, [])
        kids.append(dot)
        kids.sort(key=lambda d: (self.nodes[d][1], d))

    def walk(self) -> Iterator[Dot]:
        """All reachable nodes (live and dead) in order."""

        def visit(node: Dot | None) -> Iterator[Dot]:
            kids = self.children.get(node, [])
            for k in kids:
                if self.nodes[k][1] == LEFT:
                    yield from visit(k)
            if node is not None:
                yield node
            for k in kids:
                if self.nodes[k][1] == RIGHT:
                    yield from visit(k)

        yield from visit(None)

    def visible(self) -> list[Dot]:
        return [d for d in self.walk() if d in self.values]

    def __len__(self) -> int:
        return len(self.values)

    def value(self) -> str | list[Any]:
        items = [self.values[d] for d in self.visible()]
        return "".join(items) if self.is_text else items

    def insert(self, index: int, items: str | list[Any], replica: str, first: int) -> None:
        vis = self.visible()
        if not 0 <= index <= len(vis):
            raise IndexError(index)
        left = vis[index - 1] if index > 0 else None
        for i, item in enumerate(items):
            dot = (replica, first + i)
            has_right = any(self.nodes[k][1] == RIGHT for k in self.children.get(left, []))
            if not has_right:
                self._attach(dot, left, RIGHT)
            else:
                order = list(self.walk())
                pos = order.index(left) + 1 if left is not None else 0
                self._attach(dot, order[pos], LEFT)
            self.values[dot] = item
            left = dot

    def delete(self, index: int, count: int) -> list[Dot]:
        vis = self.visible()
        if index < 0 or index + count > len(vis):
            raise IndexError(index)
        gone = vis[index : index + count]
        for d in gone:
            del self.values[d]
        return gone

    def add_node(self, dot: Dot, parent: Dot | None, side: int, value: Any, live: bool) -> None:
        """Join one node from elsewhere (idempotent)."""
        if dot not in self.nodes:
            self._attach(dot, parent, side)
        if live:
            self.values[dot] = value

    def kill(self, ctx: CausalContext) -> None:
        for d in [d for d in self.values if d in ctx]:
            del self.values[d]
