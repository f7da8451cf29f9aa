"""Trusted devices, shares and per-peer sync metadata: plain tables beside the documents.

Functions over a connection; :class:`syncd.replica.store.Store` calls them inside its
transactions and maps namespace names to ids.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

from syncd.replica.model import Device


def trust(
    conn: sqlite3.Connection,
    device_id: str,
    name: str | None,
    addresses: Iterable[str] | None,
) -> None:
    """Add a trusted device, or update it: a ``name`` or ``addresses`` of None keeps what the
    device has (none for a new one); ``last_seen`` is kept. One statement, so a trust never
    races another write to the same device."""
    addrs = None if addresses is None else json.dumps(list(addresses))
    conn.execute(
        "INSERT INTO devices (device_id, name, addresses, last_seen) "
        "VALUES (?1, ?2, coalesce(?3, '[]'), NULL) "
        "ON CONFLICT (device_id) DO UPDATE SET name = coalesce(?2, devices.name), "
        "addresses = coalesce(?3, devices.addresses)",
        (device_id, name, addrs),
    )


def untrust(conn: sqlite3.Connection, device_id: str) -> bool:
    """Forget a device and every share with it; True if it was trusted."""
    conn.execute("DELETE FROM shares WHERE device_id = ?", (device_id,))
    return conn.execute("DELETE FROM devices WHERE device_id = ?", (device_id,)).rowcount > 0


def seen(conn: sqlite3.Connection, device_id: str, when: float) -> None:
    """Record when a trusted device was last seen."""
    conn.execute("UPDATE devices SET last_seen = ? WHERE device_id = ?", (when, device_id))


def devices(conn: sqlite3.Connection) -> list[Device]:
    """The trusted devices, sorted by ID."""
    rows = conn.execute(
        "SELECT device_id, name, addresses, last_seen FROM devices ORDER BY device_id"
    )
    return [Device(d, n, tuple(json.loads(a)), s) for d, n, a, s in rows]


def untrusted(conn: sqlite3.Connection, device_ids: Iterable[str]) -> list[str]:
    """Those of ``device_ids`` that are not trusted."""
    return [
        d
        for d in device_ids
        if conn.execute("SELECT 1 FROM devices WHERE device_id = ?", (d,)).fetchone() is None
    ]


def share(conn: sqlite3.Connection, ns_id: int, device_ids: Iterable[str]) -> None:
    """Share a namespace with devices (idempotent)."""
    conn.executemany(
        "INSERT OR IGNORE INTO shares (ns_id, device_id) VALUES (?, ?)",
        [(ns_id, d) for d in device_ids],
    )


def unshare(conn: sqlite3.Connection, ns_id: int, device_ids: Iterable[str]) -> None:
    """Stop sharing a namespace with devices (no error if it was not shared)."""
    conn.executemany(
        "DELETE FROM shares WHERE ns_id = ? AND device_id = ?", [(ns_id, d) for d in device_ids]
    )


def shared_with(conn: sqlite3.Connection, ns_id: int) -> list[str]:
    """The devices a namespace is shared with, sorted."""
    rows = conn.execute("SELECT device_id FROM shares WHERE ns_id = ? ORDER BY device_id", (ns_id,))
    return [r[0] for r in rows]


def shares_by_namespace(conn: sqlite3.Connection) -> dict[int, list[str]]:
    """Every namespace id with the devices it is shared with."""
    out: dict[int, list[str]] = {}
    for ns_id, device_id in conn.execute(
        "SELECT ns_id, device_id FROM shares ORDER BY ns_id, device_id"
    ):
        out.setdefault(ns_id, []).append(device_id)
    return out


def peer_state(conn: sqlite3.Connection, peer: str, ns_id: int) -> bytes | None:
    """The opaque sync metadata stored for (peer, namespace), or None."""
    row = conn.execute(
        "SELECT data FROM peer_state WHERE peer = ? AND ns_id = ?", (peer, ns_id)
    ).fetchone()
    return None if row is None else bytes(row[0])


def set_peer_state(conn: sqlite3.Connection, peer: str, ns_id: int, data: bytes) -> None:
    """Store the opaque sync metadata for (peer, namespace)."""
    conn.execute(
        "INSERT INTO peer_state (peer, ns_id, data) VALUES (?, ?, ?) "
        "ON CONFLICT (peer, ns_id) DO UPDATE SET data = excluded.data",
        (peer, ns_id, data),
    )
