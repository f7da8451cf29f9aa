"""The errors the replica raises.

Every one names the database file it concerns, so that a message that reaches a user says
which file to look at; none of them is ever answered by resetting the database.
"""

from __future__ import annotations

from syncd.errors import InvalidDeltaError as InvalidDeltaError  # (shared with the sync engine)
from syncd.errors import SyncdError


class StoreError(SyncdError):
    """The database could not be used (I/O error, disk full, permissions, ...)."""

    reason = "store_error"


class DiskFullError(StoreError):
    """The database's file system is full (a write failed; the database is unchanged)."""

    reason = "disk_full"


class DiskIOError(StoreError):
    """The operating system reported an I/O error on the database file."""

    reason = "io_error"


class DatabaseReplacedError(StoreError):
    """The database file was deleted or replaced while the store had it open: writes are
    refused, since they would go to a file nobody will open again."""

    reason = "database_replaced"


class CorruptDatabaseError(StoreError):
    """The database file is not a readable syncd database, or part of it is damaged."""

    reason = "corrupt_database"


class DatabaseLockedError(StoreError):
    """Another process holds the database open."""

    reason = "database_locked"


class SchemaTooNewError(StoreError):
    """The database was written by a newer syncd whose schema this build does not know."""

    reason = "schema_too_new"


class ReplicaClosedError(StoreError):
    """The replica was closed (or its writer stopped after a fatal error)."""

    reason = "closed"


class InvalidKeyError(SyncdError):
    """A namespace name or document key that the store does not accept."""

    reason = "invalid_params"
