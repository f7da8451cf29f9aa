"""The daemon: ``syncd run``, its JSON-RPC API on a Unix socket, watch, sd_notify, logging."""

from syncd.daemon.store import (
    Change,
    DeviceRecord,
    DocumentView,
    NamespaceInfo,
    Network,
    NoNetwork,
    Store,
)

__all__ = [
    "Change",
    "DeviceRecord",
    "DocumentView",
    "NamespaceInfo",
    "Network",
    "NoNetwork",
    "Store",
]
