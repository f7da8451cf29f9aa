"""syncd: a peer-to-peer sync daemon for delta-state CRDT documents."""

from syncd.errors import CodecError, InvalidOperation, PatchError, SyncdError

__version__ = "0.1.0"


def compiled() -> bool:
    """Whether the CRDT engine and the replica run compiled (the build ``pip install .`` makes
    where a C compiler is found: setup.py), rather than as Python source."""
    from syncd.crdt import codec

    return not codec.__file__.endswith(".py")


__all__ = ["CodecError", "InvalidOperation", "PatchError", "SyncdError", "__version__", "compiled"]
