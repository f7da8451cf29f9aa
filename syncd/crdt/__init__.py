"""The CRDT engine: pure delta-state CRDT documents (no I/O, no clock, no randomness)."""

from syncd.crdt.codec import decode_document, decode_stored, encode_document
from syncd.crdt.context import CausalContext, Ranges
from syncd.crdt.document import Document
from syncd.crdt.dots import Dot, DotCounter, ReplicaId
from syncd.crdt.ops import Op, parse_ops
from syncd.crdt.sequence import Sequence

__all__ = [
    "CausalContext",
    "Document",
    "Dot",
    "DotCounter",
    "Op",
    "Ranges",
    "ReplicaId",
    "Sequence",
    "decode_document",
    "decode_stored",
    "encode_document",
    "parse_ops",
]
