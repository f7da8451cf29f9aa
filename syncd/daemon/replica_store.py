"""The daemon's store: the SQLite replica (:mod:`syncd.replica`) as a daemon ``Store``.

A thin mapping: the replica's ``Snapshot``/``Change``/``Device``/``NamespaceInfo`` become the
daemon's ``DocumentView``/``Change``/``DeviceRecord``/``NamespaceInfo``. Writes are
acknowledged by the replica only after their group commit (``synchronous=FULL``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from syncd.config import MiB, StoreConfig
from syncd.daemon.store import (
    Change,
    ChangeListener,
    DeviceRecord,
    DocumentView,
    JSONObject,
    NamespaceInfo,
    Store,
)
from syncd.identity import Identity
from syncd.paths import Paths
from syncd.replica import AsyncReplica, open_replica
from syncd.replica import Change as ReplicaChange


class ReplicaStore:
    """Adapts :class:`syncd.replica.AsyncReplica` to :class:`syncd.daemon.store.Store`."""

    def __init__(self, replica: AsyncReplica) -> None:
        self.replica = replica

    async def get(self, ns: str, key: str, *, conflicts: bool = False) -> DocumentView:
        """The document."""
        snap = await self.replica.get(ns, key, conflicts=conflicts)
        return DocumentView(snap.exists, snap.value, list(snap.conflicts or []))

    async def put(self, ns: str, key: str, value: JSONObject) -> None:
        """Put; durable on return."""
        await self.replica.put(ns, key, value)

    async def patch(self, ns: str, key: str, ops: list[Any]) -> None:
        """Patch; durable on return."""
        await self.replica.patch(ns, key, ops)

    async def delete(self, ns: str, key: str) -> bool:
        """Delete; durable on return; whether it existed."""
        return (await self.replica.delete(ns, key)).existed

    async def list_keys(self, ns: str, prefix: str = "") -> list[str]:
        """Sorted keys."""
        return await self.replica.list_keys(ns, prefix)

    async def namespaces(self) -> list[NamespaceInfo]:
        """Namespaces with devices and document counts."""
        return [
            NamespaceInfo(n.name, tuple(n.devices), n.documents)
            for n in await self.replica.namespaces()
        ]

    async def devices(self) -> list[DeviceRecord]:
        """Trusted devices."""
        return [
            DeviceRecord(d.device_id, d.name, tuple(d.addresses), d.last_seen)
            for d in await self.replica.devices()
        ]

    async def trust(
        self, device_id: str, name: str | None, addresses: Sequence[str] | None
    ) -> None:
        """Trust a device, or update it (None keeps its name or addresses)."""
        await self.replica.trust(device_id, name, addresses)

    async def untrust(self, device_id: str) -> bool:
        """Forget a device."""
        return await self.replica.untrust(device_id)

    async def share(self, ns: str, devices: Sequence[str]) -> None:
        """Share a namespace."""
        await self.replica.share(ns, devices)

    async def unshare(self, ns: str, devices: Sequence[str]) -> None:
        """Unshare a namespace."""
        await self.replica.unshare(ns, devices)

    @property
    def commits_fast(self) -> bool:
        """Whether the replica runs its groups on the event loop (fast commits)."""
        return self.replica.commits_fast

    @property
    def problem(self) -> str | None:
        """The replica's current problem (commits failing), if any."""
        return self.replica.problem

    def on_problem(self, listener: Callable[[str | None], None] | None) -> None:
        """Forward the replica's problem changes."""
        self.replica.on_problem(listener)

    def set_value_filter(self, wants: Callable[[str, str], bool] | None) -> None:
        """Render values only for the changes ``wants``."""
        self.replica.set_value_filter(wants)

    def add_change_listener(self, listener: ChangeListener) -> Callable[[], None]:
        """Forward the replica's committed changes."""

        def forward(change: ReplicaChange) -> None:
            listener(Change(change.ns, change.key, change.value, change.deleted, change.origin))

        return self.replica.add_change_listener(forward)


log = logging.getLogger("syncd.store")


@asynccontextmanager
async def open_store(paths: Paths, identity: Identity, config: StoreConfig) -> AsyncIterator[Store]:
    """Open the instance's SQLite replica for the daemon's lifetime, with the cache that
    ``config`` (``[store]`` in config.toml) sets."""
    async with open_replica(
        paths.database,
        cache_items=config.cache_documents,
        cache_bytes=config.cache_stored_mb * MiB,
    ) as replica:
        items, stored = replica.writer.store.cache_budget
        log.debug(
            "opened %s; this run writes as replica %s; it keeps up to %d documents decoded, "
            "%.3g MiB of them stored",
            paths.database,
            replica.replica_id,
            items,
            stored / MiB,
        )
        yield ReplicaStore(replica)
