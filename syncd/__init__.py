"""syncd: a peer-to-peer sync daemon for delta-state CRDT documents."""

from syncd.errors import CodecError, InvalidOperation, PatchError, SyncdError

__version__ = "0.1.0"

__all__ = ["CodecError", "InvalidOperation", "PatchError", "SyncdError", "__version__"]
