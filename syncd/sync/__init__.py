"""The peer sync protocol: wire format, connection state machine, anti-entropy engine.

Sans-IO (no trio, sockets, clock or randomness): drivers feed bytes and time in. The wire
format is specified in protocol/SPEC.md.
"""

from syncd.sync.connection import (
    NEED_DATA,
    SUPPORTED_VERSIONS,
    Connection,
    ConnectionClosed,
    State,
)
from syncd.sync.engine import SyncConfig, SyncEngine
from syncd.sync.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from syncd.sync.messages import Ack, Close, Deltas, Hello, Message, Offer, Ping, Pong, Summary
from syncd.sync.replica import SyncReplica

__all__ = [
    "NEED_DATA",
    "SUPPORTED_VERSIONS",
    "Ack",
    "Close",
    "Connection",
    "ConnectionClosed",
    "Deltas",
    "Hello",
    "LocalProtocolError",
    "Message",
    "Offer",
    "Ping",
    "Pong",
    "ProtocolError",
    "RemoteProtocolError",
    "State",
    "Summary",
    "SyncConfig",
    "SyncEngine",
    "SyncReplica",
]
