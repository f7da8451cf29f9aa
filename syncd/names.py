"""What a namespace name or document key may be (the same rule everywhere: CLI, API, replica,
wire protocol): a non-empty string of valid Unicode, without NUL, of at most
:data:`MAX_NAME_BYTES` bytes of UTF-8."""

from __future__ import annotations

MAX_NAME_BYTES = 1024


def name_problem(name: object) -> str | None:
    """What is wrong with ``name`` as a namespace name or key ("must not be empty", ...), or
    None if it is fine; the caller prefixes what it is (``param 'ns' must not be empty``)."""
    if not isinstance(name, str):
        return "must be a string"
    if not name:
        return "must not be empty"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid Unicode"
    if size > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    if "\x00" in name:
        return "contains a NUL character"
    return None
