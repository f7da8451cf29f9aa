"""The JSON-RPC methods: check params, call the store, shape results, map errors.

:class:`Service` holds what the methods need; :meth:`Service.call` runs one request and turns
every error into an :class:`RpcError` (``InvalidOperation`` -> -32602, other ``SyncdError`` ->
-32000 with ``data.reason``; anything else is a bug -> -32603, logged with its traceback).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from syncd import __version__
from syncd.daemon.params import Params
from syncd.daemon.rpc import (
    APPLICATION_ERROR,
    INTERNAL_ERROR,
    METHOD_NOT_FOUND,
    RpcError,
    invalid_params,
)
from syncd.daemon.store import NamespaceInfo, Network, Store
from syncd.errors import InvalidOperation, SyncdError

log = logging.getLogger("syncd.api")

MAX_SYNC_TIMEOUT_S = 86400.0


class Session(Protocol):
    """The connection a request came on (watch subscriptions belong to it)."""

    async def watch(self, ns: str, prefix: str, initial: bool) -> int:
        """Start a subscription and return its id."""
        ...

    def unwatch(self, sub_id: int) -> bool:
        """End a subscription of this connection; whether it existed."""
        ...


Handler = Callable[["Service", Session, Params], Awaitable[Any]]
METHODS: dict[str, Handler] = {}


def method(name: str) -> Callable[[Handler], Handler]:
    """Register a handler under a JSON-RPC method name."""

    def register(fn: Handler) -> Handler:
        METHODS[name] = fn
        return fn

    return register


class Service:
    """What the API methods run against: the store, the network, this device's facts."""

    def __init__(
        self,
        store: Store,
        network: Network,
        device_id: str,
        name: Callable[[], str],
        listen: Callable[[], str],
    ) -> None:
        self.store = store
        self.network = network
        self.device_id = device_id
        self.name = name
        self.listen = listen

    async def call(self, session: Session, method_name: str, raw_params: dict[str, Any]) -> Any:
        """Run one method; raises only :class:`RpcError`."""
        handler = METHODS.get(method_name)
        if handler is None:
            raise RpcError(METHOD_NOT_FOUND, f"method not found: {method_name!r}")
        params = Params(raw_params)
        try:
            return await handler(self, session, params)
        except RpcError:
            raise
        except InvalidOperation as exc:
            # The store raises it only for what a write carries: put's value, patch's ops.
            param = {"patch": "ops", "put": "value"}.get(method_name)
            extra = {"param": param} if param else {}
            raise invalid_params(str(exc), reason=exc.reason, **extra) from None
        except SyncdError as exc:
            raise RpcError(APPLICATION_ERROR, str(exc), reason=exc.reason) from None
        except trio.Cancelled:
            raise
        except Exception as exc:
            log.exception("internal error in %s", method_name)
            raise RpcError(INTERNAL_ERROR, f"internal error: {type(exc).__name__}") from None


async def _write(fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run a store write so that it completes (and commits) even if the client goes away."""
    with trio.CancelScope(shield=True):
        return await fn()


async def _visible_namespaces(svc: Service) -> list[NamespaceInfo]:
    """Namespaces that have documents or are shared (not ones whose documents were all deleted,
    nor ones only touched by a no-op such as deleting a missing document)."""
    return [n for n in await svc.store.namespaces() if n.documents > 0 or n.devices]


@method("status")
async def _status(svc: Service, session: Session, p: Params) -> Any:
    p.done()
    namespaces = await _visible_namespaces(svc)
    result: dict[str, Any] = {
        "device_id": svc.device_id,
        "name": svc.name(),
        "version": __version__,
        "listen": svc.listen(),
        "peers_connected": len(svc.network.connected()),
        "namespaces": [n.ns for n in namespaces],
    }
    problem = svc.store.problem
    if problem is not None:  # (only then: a healthy daemon answers the contract's members)
        result["problems"] = [problem]
    return result


@method("get")
async def _get(svc: Service, session: Session, p: Params) -> Any:
    ns, key, conflicts = p.name("ns"), p.name("key"), p.opt_bool("conflicts")
    p.done()
    doc = await svc.store.get(ns, key, conflicts=conflicts)
    result: dict[str, Any] = {"exists": doc.exists, "value": doc.value}
    if conflicts:
        result["conflicts"] = doc.conflicts
    return result


@method("put")
async def _put(svc: Service, session: Session, p: Params) -> Any:
    ns, key, value = p.name("ns"), p.name("key"), p.object("value")
    p.done()
    await _write(lambda: svc.store.put(ns, key, value))
    return {"ok": True}


@method("patch")
async def _patch(svc: Service, session: Session, p: Params) -> Any:
    ns, key, ops = p.name("ns"), p.name("key"), p.array("ops")
    p.done()
    await _write(lambda: svc.store.patch(ns, key, ops))
    return {"ok": True}


@method("delete")
async def _delete(svc: Service, session: Session, p: Params) -> Any:
    ns, key = p.name("ns"), p.name("key")
    p.done()
    existed = await _write(lambda: svc.store.delete(ns, key))
    return {"ok": True, "existed": bool(existed)}


@method("list")
async def _list(svc: Service, session: Session, p: Params) -> Any:
    ns, prefix = p.name("ns"), p.opt_name("prefix")
    p.done()
    return {"keys": await svc.store.list_keys(ns, prefix)}


@method("watch")
async def _watch(svc: Service, session: Session, p: Params) -> Any:
    ns, prefix, initial = p.name("ns"), p.opt_name("prefix"), p.opt_bool("initial")
    p.done()
    return {"subscription": await session.watch(ns, prefix, initial)}


@method("unwatch")
async def _unwatch(svc: Service, session: Session, p: Params) -> Any:
    sub_id = p.opt_int("subscription")
    p.done()
    if sub_id is None:
        raise invalid_params("param 'subscription' is required", param="subscription")
    if not session.unwatch(sub_id):
        raise RpcError(
            APPLICATION_ERROR, f"no subscription {sub_id} on this connection", reason="not_found"
        )
    return {"ok": True}


@method("peers")
async def _peers(svc: Service, session: Session, p: Params) -> Any:
    p.done()
    connected = svc.network.connected()
    peers = [
        {
            "id": d.device_id,
            "name": d.name,
            "trusted": True,
            "connected": d.device_id in connected,
            "addresses": list(d.addresses),
            "last_seen": d.last_seen,
        }
        for d in await svc.store.devices()
    ]
    return {"peers": peers, "pending": svc.network.pending()}


@method("trust")
async def _trust(svc: Service, session: Session, p: Params) -> Any:
    device_id, name, addresses = (
        p.device_id("device_id"),
        p.opt_device_name("name"),
        p.addresses("addresses"),
    )
    p.done()
    if device_id == svc.device_id:
        raise invalid_params("cannot trust this device itself", param="device_id")
    # Trusting again updates what is given and keeps the rest (a new name keeps the
    # addresses), inside the store's write: no read first that a later request could overtake.
    kept = addresses if p.has("addresses") else None
    await _write(lambda: svc.store.trust(device_id, name, kept))
    return {"ok": True}


@method("untrust")
async def _untrust(svc: Service, session: Session, p: Params) -> Any:
    device_id = p.device_id("device_id")
    # The contract gives trust and untrust one row of params: untrust takes `name` and
    # `addresses` too, checked as trust checks them, and has no use for them.
    p.opt_device_name("name")
    p.addresses("addresses")
    p.done()
    existed = await _write(lambda: svc.store.untrust(device_id))
    if not existed:
        raise RpcError(APPLICATION_ERROR, f"device {device_id} is not trusted", reason="not_found")
    return {"ok": True}


@method("share")
async def _share(svc: Service, session: Session, p: Params) -> Any:
    ns, devices = p.name("ns"), p.device_ids("devices")
    p.done()
    if svc.device_id in devices:
        raise invalid_params(
            "cannot share with this device itself (it has every namespace)", param="devices"
        )
    await _write(lambda: svc.store.share(ns, devices))
    return {"ok": True}


@method("unshare")
async def _unshare(svc: Service, session: Session, p: Params) -> Any:
    ns, devices = p.name("ns"), p.device_ids("devices")
    p.done()
    await _write(lambda: svc.store.unshare(ns, devices))
    return {"ok": True}


@method("namespaces")
async def _namespaces(svc: Service, session: Session, p: Params) -> Any:
    p.done()
    return {
        "namespaces": [
            {"ns": n.ns, "devices": list(n.devices), "documents": n.documents}
            for n in await _visible_namespaces(svc)
        ]
    }


@method("sync")
async def _sync(svc: Service, session: Session, p: Params) -> Any:
    ns = p.name("ns")
    timeout_s = p.opt_number("timeout_s", 30.0, 0.0, MAX_SYNC_TIMEOUT_S)
    p.done()
    connected = svc.network.connected()
    shared = next((n.devices for n in await svc.store.namespaces() if n.ns == ns), ())
    waiting = [d for d in shared if d in connected]
    if not waiting:
        return {"acked_by": [], "pending": []}
    acked, pending = await svc.network.wait_synced(ns, waiting, timeout_s)
    return {"acked_by": sorted(acked), "pending": sorted(pending)}
