"""Typed patch operations, parsed and validated from their JSON form (the contract's ``patch``).

``parse_ops`` checks the *shape* of each operation and raises :class:`InvalidOperation` (bad
params); whether an operation fits the document (types, paths, indexes) is checked when it is
applied, and reported as :class:`PatchError` with a reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from syncd.errors import InvalidOperation, PatchError

MAX_DEPTH = 32
"""The deepest nesting of maps (and of JSON values inside fields) a document may have."""

PathElem = str | int
Path = tuple[PathElem, ...]
TYPE_NAMES = ("text", "counter", "set", "list", "map", "register")


@dataclass(slots=True)
class Make:
    path: Path
    type: str
    value: Any
    has_value: bool


@dataclass(slots=True)
class Set:
    path: Path
    value: Any


@dataclass(slots=True)
class Del:
    path: Path


@dataclass(slots=True)
class Inc:
    path: Path
    by: int


@dataclass(slots=True)
class Add:
    path: Path
    value: Any


@dataclass(slots=True)
class Remove:
    path: Path
    value: Any


@dataclass(slots=True)
class Insert:
    path: Path
    index: int
    items: str | list[Any]
    """A str inserts text, a list inserts list values."""


@dataclass(slots=True)
class Delete:
    path: Path
    index: int
    count: int


Op = Make | Set | Del | Inc | Add | Remove | Insert | Delete


def is_int(v: object) -> bool:
    """A JSON integer (``True`` is not one)."""
    return isinstance(v, int) and not isinstance(v, bool)


INT_LIMIT = 2**64
"""Integers in values must lie strictly between ``-INT_LIMIT`` and ``INT_LIMIT`` (what the
encoding stores without big-number tags)."""
COUNTER_MIN, COUNTER_MAX = -(2**63), 2**63 - 1
"""The range of one device's share of a counter (a signed 64-bit integer)."""

_SCALARS = (str, bool, type(None))


def check_value(value: Any, what: str = "value", depth: int = 0) -> None:
    """Check that ``value`` is a JSON value a document can hold, before anything changes.

    Raises ``PatchError(too_large)`` if it nests deeper than :data:`MAX_DEPTH`, and
    :class:`InvalidOperation` for what no encoding of a document can carry: integers outside
    ±2**64, floats that are not finite (``1e400`` parses as infinity), object keys that are not
    strings, and anything that is not JSON at all.
    """
    t = type(value)
    if (t is dict or t is list) and depth > MAX_DEPTH:
        raise PatchError(f"{what} nests deeper than {MAX_DEPTH} levels", reason="too_large")
    if t is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise InvalidOperation(f"{what} has an object key that is not a string: {k!r}")
            if type(v) not in _SCALARS:
                check_value(v, what, depth + 1)
    elif t is list:
        for v in value:
            if type(v) not in _SCALARS:
                check_value(v, what, depth + 1)
    elif t is int:
        if not -INT_LIMIT < value < INT_LIMIT:
            raise InvalidOperation(
                f"{what} holds the integer {_short(value)}, outside the range a document can "
                "store (-2**64 < n < 2**64)"
            )
    elif t is float:
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidOperation(f"{what} holds a number that is not finite ({value})")
    elif t not in _SCALARS:
        raise InvalidOperation(f"{what} holds a {t.__name__}, which is not a JSON value")


def _check_at(value: Any, what: str, path: Path, *, element: bool = False) -> None:
    """:func:`check_value` for a value written at ``path``: the document's depth limit counts
    the path's levels too (a stored document nests at most :data:`MAX_DEPTH` levels). An
    ``element`` of the set at ``path`` sits one level below the set (which shows as an
    array), as the elements of ``make``'s value do."""
    try:
        check_value(value, what, len(path) + element)
    except PatchError as exc:
        if exc.reason == "too_large" and (path or element):
            where = " as an element of the set" if element else ""
            levels = "1 level" if len(path) == 1 else f"{len(path)} levels"
            raise PatchError(
                f"{what}{where} at a path of {levels} would nest the document deeper "
                f"than {MAX_DEPTH} levels",
                reason="too_large",
            ) from None
        raise


def _short(n: int) -> str:
    digits = str(n)
    return digits if len(digits) <= 40 else f"{digits[:12]}... ({len(digits)} characters)"


def _path(i: int, raw: dict[str, Any]) -> Path:
    p = raw.get("path")
    if type(p) is not list:
        raise InvalidOperation(f"ops[{i}].path must be an array of field names and indexes")
    for e in p:
        t = type(e)
        if t is not str and (t is not int or e < 0):
            raise InvalidOperation(
                f"ops[{i}].path elements must be strings or non-negative integers"
            )
    if len(p) > MAX_DEPTH:
        raise PatchError(f"ops[{i}].path is deeper than {MAX_DEPTH}", reason="too_large")
    return tuple(p)


def _need(i: int, raw: dict[str, Any], name: str) -> Any:
    if name not in raw:
        raise InvalidOperation(f"ops[{i}] ({raw.get('op')}) needs {name!r}")
    return raw[name]


def _nonneg_int(i: int, raw: dict[str, Any], name: str) -> int:
    v = raw.get(name)
    if type(v) is not int or v < 0:
        _need(i, raw, name)
        raise InvalidOperation(f"ops[{i}].{name} must be a non-negative integer")
    return v


_MAKE_VALUE_FITS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "text": ("a string", lambda v: type(v) is str),
    "counter": ("an integer", is_int),
    "set": ("an array", lambda v: type(v) is list),
    "list": ("an array", lambda v: type(v) is list),
    "map": ("an object", lambda v: type(v) is dict),
    "register": ("any value", lambda v: True),
}


def _parse_make(i: int, raw: dict[str, Any], path: Path) -> Op:
    t = _need(i, raw, "type")
    if t not in TYPE_NAMES:
        raise InvalidOperation(f"ops[{i}].type must be one of {', '.join(TYPE_NAMES)}")
    value = raw.get("value")
    if value is None:  # absent or null: the type's initial value
        return Make(path, t, None, False)
    expected, fits = _MAKE_VALUE_FITS[t]
    if not fits(value):
        raise InvalidOperation(f"ops[{i}].value must be {expected} to make a {t}")
    _check_at(value, f"ops[{i}].value", path)
    return Make(path, t, value, True)


def _parse_set(i: int, raw: dict[str, Any], path: Path) -> Op:
    value = _need(i, raw, "value")
    _check_at(value, f"ops[{i}].value", path)
    return Set(path, value)


def _parse_del(i: int, raw: dict[str, Any], path: Path) -> Op:
    return Del(path)


def _parse_inc(i: int, raw: dict[str, Any], path: Path) -> Op:
    by = raw.get("by", 1)
    if not is_int(by):
        raise InvalidOperation(f"ops[{i}].by must be an integer")
    if not -INT_LIMIT < by < INT_LIMIT:
        raise InvalidOperation(f"ops[{i}].by must lie between -2**64 and 2**64")
    # Whether the counter can take it depends on its value (this device's share must stay a
    # signed 64-bit integer): checked when the operation is applied.
    return Inc(path, by)


def _parse_add(i: int, raw: dict[str, Any], path: Path) -> Op:
    value = _need(i, raw, "value")
    _check_at(value, f"ops[{i}].value", path, element=True)
    return Add(path, value)


def _parse_remove(i: int, raw: dict[str, Any], path: Path) -> Op:
    value = _need(i, raw, "value")
    _check_at(value, f"ops[{i}].value", path, element=True)
    return Remove(path, value)


def _parse_insert(i: int, raw: dict[str, Any], path: Path) -> Op:
    index = _nonneg_int(i, raw, "index")
    text = raw.get("text")
    if type(text) is str and "values" not in raw:
        return Insert(path, index, text)
    has_text, has_values = "text" in raw, "values" in raw
    if has_text == has_values:
        raise InvalidOperation(f"ops[{i}] (insert) needs exactly one of 'text' or 'values'")
    if has_text:
        raise InvalidOperation(f"ops[{i}].text must be a string")
    if not isinstance(raw["values"], list):
        raise InvalidOperation(f"ops[{i}].values must be an array")
    _check_at(raw["values"], f"ops[{i}].values", path)
    return Insert(path, index, list(raw["values"]))


def _parse_delete(i: int, raw: dict[str, Any], path: Path) -> Op:
    return Delete(path, _nonneg_int(i, raw, "index"), _nonneg_int(i, raw, "count"))


_PARSERS = {
    "make": _parse_make,
    "set": _parse_set,
    "del": _parse_del,
    "inc": _parse_inc,
    "add": _parse_add,
    "remove": _parse_remove,
    "insert": _parse_insert,
    "delete": _parse_delete,
}


_MEMBERS = {
    "make": frozenset(("op", "path", "type", "value")),
    "set": frozenset(("op", "path", "value")),
    "del": frozenset(("op", "path")),
    "inc": frozenset(("op", "path", "by")),
    "add": frozenset(("op", "path", "value")),
    "remove": frozenset(("op", "path", "value")),
    "insert": frozenset(("op", "path", "index", "text", "values")),
    "delete": frozenset(("op", "path", "index", "count")),
}
"""The members each operation may have: any other is refused, so a typo (``"valeu"``) is an
error rather than an operation silently done without it."""


def parse_op(i: int, raw: Any) -> Op:
    """Parse one operation (``i`` is its position, for messages)."""
    if type(raw) is not dict:
        raise InvalidOperation(f"ops[{i}] must be an object")
    kind = raw.get("op")
    parser = _PARSERS.get(kind) if type(kind) is str else None
    if parser is None:
        raise InvalidOperation(f"ops[{i}].op must be one of {', '.join(_PARSERS)}")
    members = _MEMBERS[str(kind)]  # a str: it named a parser
    if not raw.keys() <= members:
        extra = ", ".join(sorted(repr(k) for k in raw.keys() - members))
        raise InvalidOperation(
            f"ops[{i}] ({kind}) has unknown member(s) {extra}; it takes "
            f"{', '.join(sorted(members - {'op'}))}"
        )
    return parser(i, raw, _path(i, raw))


def parse_ops(raw: Any) -> list[Op]:
    """Parse the ``ops`` array of a patch."""
    if not isinstance(raw, list):
        raise InvalidOperation("ops must be an array of operations")
    return [parse_op(i, r) for i, r in enumerate(raw)]
