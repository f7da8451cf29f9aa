"""The durable replica: CRDT documents in SQLite with group commit and a change feed.

- :class:`Store`: the synchronous, single-threaded store (tests, tools).
- :class:`Writer`: the thread that owns a store and group-commits what callers submit.
- :func:`open_replica` / :class:`AsyncReplica`: the store from trio (what the daemon uses).

See docs/architecture.md ("The replica API") and docs/durability.md.
"""

from syncd.replica.aio import AsyncReplica, Subscription, open_replica
from syncd.replica.errors import (
    CorruptDatabaseError,
    DatabaseLockedError,
    DatabaseReplacedError,
    DiskFullError,
    DiskIOError,
    InvalidDeltaError,
    InvalidKeyError,
    ReplicaClosedError,
    SchemaTooNewError,
    StoreError,
)
from syncd.replica.model import (
    LOCAL,
    Change,
    Delete,
    Device,
    NamespaceInfo,
    Patch,
    Put,
    Snapshot,
    Write,
)
from syncd.replica.store import Store
from syncd.replica.writer import Writer

__all__ = [
    "LOCAL",
    "AsyncReplica",
    "Change",
    "CorruptDatabaseError",
    "DatabaseLockedError",
    "DatabaseReplacedError",
    "Delete",
    "Device",
    "DiskFullError",
    "DiskIOError",
    "InvalidDeltaError",
    "InvalidKeyError",
    "NamespaceInfo",
    "Patch",
    "Put",
    "ReplicaClosedError",
    "SchemaTooNewError",
    "Snapshot",
    "Store",
    "StoreError",
    "Subscription",
    "Write",
    "Writer",
    "open_replica",
]
