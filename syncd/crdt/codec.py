"""Canonical, versioned CBOR for documents (states and deltas), and a hardened decoder.

Layout (CDDL-ish; protocol/ has the normative schema)::

    document = [version: 1, replicas: [* tstr], context, map]
    context  = [* [replica: uint, * (gap: uint, length: uint)]]   ; ranges, gap from previous end
    dots     = [* (replica: uint, counter: uint)]                  ; sorted
    map      = [present: dots, {* name => {* tag => store}}]
    store    = register / counter / set / map / sequence
    register = [* (replica, counter, value)]   counter = [* (replica, counter, int)]
    set      = [present: dots, [* (element, dots)]]
    sequence = [present: dots, sequence-body]   ; see syncd/crdt/sequence.py

Replica ids are written once in a table and referred to by index. Encoding is deterministic
(map keys in RFC 7049 canonical order, sorted dots, definite lengths, floats always 64-bit),
so equal states encode to equal bytes.

The decoder accepts only what the encoder can produce: no tags, no indefinite lengths, no
duplicate keys, no trailing bytes, bounded depth and size, every dot inside the context, no
empty stores; anything else raises :class:`~syncd.errors.CodecError` and nothing else.
"""

from __future__ import annotations

import bisect
import io
import itertools
import json
import math
from typing import Any

import cbor2

from syncd.crdt.context import CausalContext
from syncd.crdt.document import Document, FieldPath
from syncd.crdt.dots import Dot
from syncd.crdt.ops import MAX_DEPTH
from syncd.crdt.sequence import Sequence
from syncd.crdt.stores import (
    COUNTER,
    LIST,
    MAP,
    PRESENT,
    REGISTER,
    SET,
    TEXT,
    MapStore,
    canonical,
)
from syncd.errors import CodecError

FORMAT_VERSION = 1
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
MAX_REPLICA_ID = 64


def _cbor_depth(max_depth: int) -> int:
    """The CBOR nesting that a document of ``max_depth`` levels can need."""
    return 5 * max_depth + 16


_INT64 = 2**63
_TAGS = {REGISTER: "r", COUNTER: "c", SET: "s", TEXT: "t", LIST: "l", MAP: "m"}
_TAG_NAMES = {v: k for k, v in _TAGS.items()}

# Built-in cbor2 semantic decoders (dates, bignums, regex, MIME, value sharing, ...) are all
# turned off; any tag then reaches ``_refuse_tag``.
_NO_SEMANTICS: dict[int, Any] = {
    t: None
    for t in (*range(0, 64), 100, 256, 257, 258, 259, 260, 261, 262, 263, 266, 270, 1004, 55799)
}


def _refuse_tag(*_args: Any) -> Any:
    raise ValueError("CBOR tags are not allowed")


def cbor_loads(data: bytes, *, max_bytes: int, max_depth: int) -> Any:
    """Decode one CBOR item strictly (see module docstring); raises CodecError only."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError("expected bytes")
    if len(data) > max_bytes:
        raise CodecError(f"encoded item is {len(data)} bytes, more than the limit {max_bytes}")
    fp = io.BytesIO(data)
    try:
        dec = cbor2.CBORDecoder(
            fp,
            tag_hook=_refuse_tag,
            semantic_decoders=_NO_SEMANTICS,
            max_depth=max_depth,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
        )
        obj = dec.decode()
    except Exception as e:  # cbor2 raises many types on hostile input; all mean "bad bytes"
        raise CodecError(f"not valid CBOR: {e}") from None
    if fp.tell() != len(data):
        raise CodecError(f"{len(data) - fp.tell()} trailing bytes after the CBOR item")
    return obj


class _Index(dict[str, int]):
    def __missing__(self, key: str) -> int:
        i = self[key] = len(self)
        return i


def _dots_out(dots: Any, idx: _Index) -> list[int]:
    out: list[int] = []
    for r, n in sorted(dots):  # (dots are (replica, counter) tuples: that order)
        out += (idx[r], n)
    return out


def _key_order(key: str) -> tuple[int, bytes]:
    """RFC 7049 canonical map-key order for text keys: shorter encoding first, then bytewise."""
    b = key.encode()
    return (len(b), b)


def _canonical_value(v: Any) -> Any:
    """A JSON value with every object's keys in canonical order (scalars returned as is)."""
    t = type(v)
    if t is dict:
        return {k: _canonical_value(v[k]) for k in sorted(v, key=_key_order)}
    if t is list:
        return [_canonical_value(x) for x in v]
    return v


def _map_out(m: MapStore, idx: _Index) -> list[Any]:
    fields: dict[str, dict[str, Any]] = {}
    names = m.fields
    # (Every write re-encodes its document: the common cases, one field or one type, skip
    # their sorts.)
    for name in sorted(names, key=_key_order) if len(names) > 1 else names:
        variants = names[name]
        if len(variants) == 1:
            for tag, st in variants.items():
                fields[name] = {_TAGS[tag]: _store_out(tag, st, idx)}
        else:
            fields[name] = {
                _TAGS[tag]: _store_out(tag, variants[tag], idx)
                for tag in sorted(variants, key=_TAGS.__getitem__)
            }
    return [_dots_out(m.present, idx), fields]


def _store_out(tag: str, st: Any, idx: _Index) -> Any:
    if tag in (REGISTER, COUNTER):
        if len(st) == 1:  # no concurrent values: no sort
            for d, v in st.items():
                return [idx[d[0]], d[1], _canonical_value(v)]
        out: list[Any] = []
        for d in sorted(st):
            out += (idx[d[0]], d[1], _canonical_value(st[d]))
        return out
    if tag == SET:
        elems: list[Any] = []
        for key in sorted(st.elems):
            elems += (_canonical_value(json.loads(key)), _dots_out(st.elems[key], idx))
        return [_dots_out(st.present, idx), elems]
    if tag == MAP:
        return _map_out(st, idx)
    return [_dots_out(st.present, idx), st.seq.to_cbor(idx)]


def _ctx_out(ctx: CausalContext, idx: _Index) -> list[list[int]]:
    out: list[list[int]] = []
    for r in ctx.replicas():
        ranges = ctx.for_replica(r)
        assert ranges is not None
        row = [idx[r]]
        prev = 0
        for s, e in ranges.pairs():
            row += (s - prev, e - s)
            prev = e
        out.append(row)
    return out


def document_to_cbor(doc: Document) -> list[Any]:
    """The CBOR data model of a document (before serialisation)."""
    idx = _Index()
    for r in doc.ctx.replicas():
        idx[r]
    root = _map_out(doc.root, idx)
    ctx = _ctx_out(doc.ctx, idx)
    return [FORMAT_VERSION, list(idx), ctx, root]


def encode_document(doc: Document) -> bytes:
    """Canonical CBOR bytes of a document or delta.

    :func:`document_to_cbor` already puts every map key, dot and element in canonical order,
    so plain serialisation is deterministic (and twice as fast as cbor2's canonical mode);
    floats are always written as 64-bit.
    """
    return cbor2.dumps(document_to_cbor(doc))


# -- decoding --------------------------------------------------------------------------------


def _fail(msg: str) -> CodecError:
    return CodecError(f"invalid document encoding: {msg}")


def _uint(v: Any, what: str, minimum: int = 0) -> int:
    if type(v) is not int or v < minimum or v >= _INT64:
        raise _fail(f"{what} must be an integer >= {minimum}")
    return v


def _check_json(v: Any, limit: int, depth: int = 0) -> None:
    if depth > limit:
        raise _fail("value nests too deeply")
    t = type(v)
    if t is str or t is bool or v is None:
        return
    if t is int:
        if not -(2**64) < v < 2**64:
            raise _fail("integer out of range")
        return
    if t is float:
        if not math.isfinite(v):
            raise _fail("NaN and infinities are not JSON")
        return
    if t is list:
        for x in v:
            _check_json(x, limit, depth + 1)
        return
    if t is dict:
        for k, x in v.items():
            if type(k) is not str:
                raise _fail("object keys must be strings")
            _check_json(x, limit, depth + 1)
        return
    raise _fail(f"{t.__name__} is not a JSON value")


class _Reader:
    def __init__(self, replicas: list[str], ctx: CausalContext, max_depth: int) -> None:
        self.max_depth = max_depth
        self.replicas = replicas
        self.ctx = ctx
        self.doc = Document()
        self.doc.ctx = ctx
        self.seq_ranges: dict[str, list[tuple[int, int]]] = {}
        """The node dots of every sequence read, per replica (checked once at the end)."""

    def dot(self, r: Any, n: Any) -> Dot:
        ri = _uint(r, "replica index")
        if ri >= len(self.replicas):
            raise _fail("replica index out of range")
        d = (self.replicas[ri], _uint(n, "counter", 1))
        if d not in self.ctx:
            raise _fail(f"dot {d} is not in the context")
        if d in self.doc._where:
            raise _fail(f"dot {d} appears twice")
        return d

    def dots(self, flat: Any) -> list[Dot]:
        if type(flat) is not list or len(flat) % 2:
            raise _fail("dots must be a flat array of (replica, counter) pairs")
        return [self.dot(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]

    def add(self, dot: Dot, path: FieldPath, sub: str | None, value: Any = None) -> None:
        self.doc._add_atom(dot, (path, sub), value)

    def map(self, obj: Any, path: FieldPath) -> None:
        if len(path) > self.max_depth:
            raise _fail("maps nest too deeply")
        if type(obj) is not list or len(obj) != 2 or type(obj[1]) is not dict:
            raise _fail("a map must be [present, fields]")
        for d in self.dots(obj[0]):
            self.add(d, path, PRESENT)
        for name, variants in obj[1].items():
            if type(name) is not str or type(variants) is not dict or not variants:
                raise _fail("fields must map names to non-empty {tag: store}")
            for code, st in variants.items():
                tag = _TAG_NAMES.get(code) if type(code) is str else None
                if tag is None:
                    raise _fail(f"unknown type tag {code!r}")
                self.store(tag, st, (*path, (name, tag)))

    def store(self, tag: str, obj: Any, path: FieldPath) -> None:
        if tag in (REGISTER, COUNTER):
            if type(obj) is not list or len(obj) % 3 or not obj:
                raise _fail(f"a {tag} must be a non-empty flat array of triples")
            for i in range(0, len(obj), 3):
                d = self.dot(obj[i], obj[i + 1])
                v = obj[i + 2]
                if tag == COUNTER:
                    if type(v) is not int or not -_INT64 <= v < _INT64:
                        raise _fail("counter entries must be 64-bit integers")
                else:
                    _check_json(v, self.max_depth)
                self.add(d, path, None, v)
        elif tag == MAP:
            self.map(obj, path)
            if self.doc._store_at(path) is None:
                raise _fail("empty map store")
        elif tag == SET:
            if (
                type(obj) is not list
                or len(obj) != 2
                or type(obj[1]) is not list
                or len(obj[1]) % 2
            ):
                raise _fail("a set must be [present, [element, dots, ...]]")
            for d in self.dots(obj[0]):
                self.add(d, path, PRESENT)
            seen: set[str] = set()
            for i in range(0, len(obj[1]), 2):
                _check_json(obj[1][i], self.max_depth)
                key = canonical(obj[1][i])
                dots = self.dots(obj[1][i + 1])
                if key in seen or not dots:
                    raise _fail("set elements must be distinct and have dots")
                seen.add(key)
                for d in dots:
                    self.add(d, path, key)
            if self.doc._store_at(path) is None:
                raise _fail("empty set store")
        else:
            if type(obj) is not list or len(obj) != 2:
                raise _fail("a sequence must be [present, body]")
            seq = Sequence.from_cbor(obj[1], self.replicas, tag == TEXT)
            if tag == LIST:  # (each item is stored whole: checked as a register's value)
                for item in obj[1][6]:
                    _check_json(item, self.max_depth)
            for r, s, e in seq.node_ranges():
                rs = self.ctx.for_replica(r)
                if rs is None or next(rs.missing(s, e), None) is not None:
                    raise _fail("sequence dots outside the context")
                self.seq_ranges.setdefault(r, []).append((s, e))
            sst = self.doc._put_seq(path, seq)
            for d in self.dots(obj[0]):
                self.add(d, path, PRESENT)
            if sst.is_empty():
                raise _fail("empty sequence store")

    def check_sequence_dots(self) -> None:
        """Every dot names one thing: no sequence node shares its dot with another sequence's
        node or with any other store's entry (one removal would drop both on one replica and
        not on another, whose contexts are equal: they would never converge)."""
        if not self.seq_ranges:
            return
        spans: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}
        for r, ranges in self.seq_ranges.items():
            ranges.sort()
            for (_, e1), (s2, _) in itertools.pairwise(ranges):
                if s2 <= e1:
                    raise _fail(f"dot {(r, s2)} appears twice")
            spans[r] = ([s for s, _ in ranges], ranges)
        for r, n in self.doc._where:
            found = spans.get(r)
            if found is not None:
                i = bisect.bisect_right(found[0], n) - 1
                if i >= 0 and found[1][i][1] >= n:
                    raise _fail(f"dot {(r, n)} appears twice")


def _ctx_in(obj: Any, replicas: list[str]) -> CausalContext:
    if type(obj) is not list:
        raise _fail("context must be an array")
    ctx = CausalContext()
    seen: set[int] = set()
    for row in obj:
        if type(row) is not list or len(row) < 3 or len(row) % 2 == 0:
            raise _fail("context rows must be [replica, gap, length, ...]")
        ri = _uint(row[0], "replica index")
        if ri >= len(replicas) or ri in seen:
            raise _fail("bad or repeated replica index in context")
        seen.add(ri)
        prev = 0
        for i in range(1, len(row), 2):
            gap = _uint(row[i], "range gap", 1 if prev == 0 else 2)
            start = prev + gap
            end = start + _uint(row[i + 1], "range length")
            if end >= _INT64:
                raise _fail("counter out of range")
            ctx.add_range(replicas[ri], start, end)
            prev = end
    return ctx


def decode_document(
    data: bytes, *, max_bytes: int = MAX_DOCUMENT_BYTES, max_depth: int = MAX_DEPTH
) -> Document:
    """Decode bytes made by :func:`encode_document`; raises only :class:`CodecError`.

    ``max_depth``: how deep maps and values may nest (the replica reads its own database
    with more room than it writes, so that nothing it once stored becomes unreadable).
    """
    obj = cbor_loads(data, max_bytes=max_bytes, max_depth=_cbor_depth(max_depth))
    try:
        return document_from_cbor(obj, max_depth)
    except CodecError:
        raise
    except (RecursionError, MemoryError):
        raise _fail("too deep or too large") from None


STORED_READ_BYTES = 4 * MAX_DOCUMENT_BYTES
STORED_READ_DEPTH = 2 * MAX_DEPTH


def decode_stored(data: bytes) -> Document:
    """:func:`decode_document` for what this device stored itself (its database): writes keep
    documents within :data:`MAX_DOCUMENT_BYTES` and :data:`MAX_DEPTH` (what a peer accepts),
    reads allow :data:`STORED_READ_BYTES` and :data:`STORED_READ_DEPTH`, so that a document
    whose size was estimated low, or that an older version let nest deeper, is still read
    (and can be repaired or deleted), never lost."""
    return decode_document(data, max_bytes=STORED_READ_BYTES, max_depth=STORED_READ_DEPTH)


def document_from_cbor(obj: Any, max_depth: int = MAX_DEPTH) -> Document:
    """Validate and build a document from its CBOR data model."""
    if type(obj) is not list or len(obj) != 4:
        raise _fail("expected [version, replicas, context, root]")
    if obj[0] != FORMAT_VERSION or type(obj[0]) is not int:
        raise CodecError(
            f"unsupported document format {obj[0]!r} (this syncd reads {FORMAT_VERSION})"
        )
    replicas = obj[1]
    if type(replicas) is not list or any(
        type(r) is not str or not 0 < len(r) <= MAX_REPLICA_ID for r in replicas
    ):
        raise _fail("replica table must be non-empty strings")
    if len(set(replicas)) != len(replicas):
        raise _fail("replica table has duplicates")
    reader = _Reader(replicas, _ctx_in(obj[2], replicas), max_depth)
    reader.map(obj[3], ())
    reader.check_sequence_dots()
    doc = reader.doc
    doc._reindex_seqs()
    return doc


__all__ = [
    "FORMAT_VERSION",
    "cbor_loads",
    "decode_document",
    "decode_stored",
    "document_from_cbor",
    "document_to_cbor",
    "encode_document",
]
