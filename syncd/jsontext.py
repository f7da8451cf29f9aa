"""Strict JSON text, as the socket API and the CLI accept it.

Python's ``json`` module is lenient where a JSON value must survive a round trip through
other programs: it reads ``NaN``/``Infinity`` literals, turns ``1e400`` into an infinity that
cannot be written back as JSON, and guesses UTF-16/32 from bytes. Here all of those are
errors.
"""

from __future__ import annotations

import json
import math
from typing import Any


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise ValueError(f"the number {shown} is too large for a 64-bit float")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def loads(text: str) -> Any:
    """Parse JSON text; raises ``ValueError`` (or ``RecursionError`` for absurd nesting)."""
    return _DECODER.decode(text)


def decode_utf8(data: bytes) -> str:
    """Bytes as strict UTF-8 text (a leading byte-order mark is skipped).

    Raises ``UnicodeDecodeError`` for anything else, including encoded surrogates and
    UTF-16/32 text.
    """
    if data[:3] == b"\xef\xbb\xbf":
        return data.decode("utf-8-sig")
    # The same result and errors without a byte-order mark, without the codec's Python layer.
    return data.decode("utf-8")


def has_lone_surrogate(value: Any) -> bool:
    """Whether a string in ``value`` (a str, or parsed JSON including object keys) holds a lone
    surrogate, which is not Unicode text: the JSON escape ``"\\udcff"`` parses to one, and so
    does an undecodable byte in a command-line argument.
    """
    stack = [value]
    while stack:  # a loop, not recursion: ``value`` may nest as deeply as the parser allowed
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
