"""A strict, canonical subset of CBOR (RFC 8949): the only CBOR the peer protocol uses.

Messages use five kinds of items: unsigned integers (major type 0), byte strings (2), text
strings (3), arrays (4) and the simple values ``false``/``true`` (major type 7, 20 and 21).
This module encodes them in the *preferred serialization* (the shortest argument) and decodes
nothing else. Because every value has exactly one encoding the pinned test vectors hold in both
directions, and a decoder this small is easy to trust on hostile input: no tags, maps, floats,
negative integers or indefinite lengths to get wrong (see protocol/SPEC.md §2).

The decoder raises only :class:`~syncd.sync.errors.RemoteProtocolError`.
"""

from __future__ import annotations

from syncd.sync.errors import RemoteProtocolError

Item = int | bool | bytes | str | list["Item"]
"""A decoded item: ``int`` (>= 0), ``bool``, ``bytes``, ``str`` or a list of items."""

MAX_UINT = 2**64 - 1
MAX_DEPTH = 8
"""Deepest nesting of arrays the decoder accepts (the deepest message needs 4)."""


def _head(major: int, arg: int, out: bytearray) -> None:
    mt = major << 5
    if arg < 24:
        out.append(mt | arg)
    elif arg < 0x100:
        out.append(mt | 24)
        out.append(arg)
    elif arg < 0x10000:
        out.append(mt | 25)
        out += arg.to_bytes(2, "big")
    elif arg < 0x100000000:
        out.append(mt | 26)
        out += arg.to_bytes(4, "big")
    else:
        out.append(mt | 27)
        out += arg.to_bytes(8, "big")


def _encode(item: Item, out: bytearray) -> None:
    if item is True:
        out.append(0xF5)
    elif item is False:
        out.append(0xF4)
    elif isinstance(item, int):
        if not 0 <= item <= MAX_UINT:
            raise ValueError(f"integer out of range for the protocol: {item}")
        _head(0, item, out)
    elif isinstance(item, bytes):
        _head(2, len(item), out)
        out += item
    elif isinstance(item, str):
        raw = item.encode("utf-8")
        _head(3, len(raw), out)
        out += raw
    elif isinstance(item, list):
        _head(4, len(item), out)
        for x in item:
            _encode(x, out)
    else:
        raise TypeError(f"cannot encode {type(item).__name__} in the protocol's CBOR")


def encode(item: Item) -> bytes:
    """The canonical encoding of ``item``."""
    out = bytearray()
    _encode(item, out)
    return bytes(out)


class _Decoder:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def fail(self, what: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"bad CBOR at byte {self.pos}: {what}", reason="bad_frame")

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise self.fail("item runs past the end of the frame")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def head(self) -> tuple[int, int]:
        """(major type, argument); rejects reserved and non-shortest arguments."""
        if self.pos >= len(self.data):
            raise self.fail("item runs past the end of the frame")
        ib = self.data[self.pos]
        self.pos += 1
        major, info = ib >> 5, ib & 0x1F
        if major == 7:
            return major, info
        if info < 24:
            return major, info
        if info == 24:
            arg = self.take(1)[0]
            if arg < 24:
                raise self.fail("integer or length not in shortest form")
            return major, arg
        if 25 <= info <= 27:
            size = 1 << (info - 24)
            arg = int.from_bytes(self.take(size), "big")
            if arg < (1 << (4 * size)):
                raise self.fail("integer or length not in shortest form")
            return major, arg
        if info == 31:
            raise self.fail("indefinite lengths are not allowed")
        raise self.fail(f"reserved additional information {info}")

    def item(self, depth: int) -> Item:
        start = self.pos
        major, arg = self.head()
        if major == 0:
            return arg
        if major == 2:
            return self.take(arg)
        if major == 3:
            raw = self.take(arg)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                self.pos = start
                raise self.fail("text string is not valid UTF-8") from None
        if major == 4:
            if depth >= MAX_DEPTH:
                raise self.fail(f"arrays nest deeper than {MAX_DEPTH}")
            # Each element takes at least one byte: a length beyond what is left is a lie.
            if arg > len(self.data) - self.pos:
                raise self.fail("array longer than the frame")
            return [self.item(depth + 1) for _ in range(arg)]
        if major == 7:
            if arg == 20:
                return False
            if arg == 21:
                return True
            self.pos = start
            raise self.fail(f"simple value or float {arg} is not allowed")
        self.pos = start
        names = {1: "negative integers", 5: "maps", 6: "tags"}
        raise self.fail(f"{names[major]} are not allowed")


def decode(data: bytes) -> Item:
    """Decode exactly one item that fills ``data``; raises RemoteProtocolError otherwise."""
    d = _Decoder(data)
    item = d.item(0)
    if d.pos != len(data):
        raise d.fail(f"{len(data) - d.pos} trailing bytes after the item")
    return item


__all__ = ["MAX_DEPTH", "MAX_UINT", "Item", "decode", "encode"]
