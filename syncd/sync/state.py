"""Per-peer sync state: one :class:`PeerState` per connected peer, one :class:`NsState` per
namespace both sides share (SPEC §5). Plain data; :mod:`syncd.sync.engine` owns the logic."""

from __future__ import annotations

from dataclasses import dataclass, field

from syncd.crdt.context import CausalContext
from syncd.sync import cbor
from syncd.sync.catchup import CatchUp
from syncd.sync.errors import RemoteProtocolError
from syncd.sync.messages import context_from_item, context_to_item

PUSH = "push"
CATCH_UP = "catch_up"


@dataclass(slots=True)
class InFlight:
    """A delta group sent and not yet acknowledged."""

    kind: str
    ctx: CausalContext
    sent_at: float
    buf_lo: int = 0
    """For a push: the first buffer sequence number it carries."""


@dataclass(slots=True)
class NsState:
    """What this side knows about one peer in one shared namespace."""

    known: CausalContext
    """Dots the peer is known to hold: its summaries, the groups it acknowledged, the deltas
    it sent us. Pushes and catch-ups skip what is in here."""
    told: CausalContext = field(default_factory=CausalContext)
    """Dots the peer knows we hold; when our context grows past it we send a summary, which
    lets the peer skip relaying those dots to us (SPEC §5.5)."""
    push_next: int = 1
    """The first buffer sequence number not yet pushed or skipped."""
    ahead: set[int] = field(default_factory=set)
    """Entries past ``push_next`` already handled (local changes pushed while an earlier
    relayed change still waits out its delay)."""
    out_n: int = 1
    """The number of the next delta group we send."""
    inflight: dict[int, InFlight] = field(default_factory=dict)
    catch_up: CatchUp | None = None
    had_summary: bool = False
    """True once the peer's summary arrived on this connection."""
    summary_requested_at: float | None = None
    """When we last asked for the peer's summary and have had no answer since."""
    catch_up_due: bool = False
    """Send our summary asking to be caught up (the peer asked for it, or we saw a gap)."""
    request_due: bool = False
    """We want the peer's summary too: send ours in EXCHANGE mode."""
    acks_due: list[int] = field(default_factory=list)
    last_summary_sent: float = float("-inf")
    last_summary_received: float = float("-inf")
    dirty: bool = False
    """``known`` grew since it was last saved."""
    saved_at: float = float("-inf")

    def promised(self) -> CausalContext:
        """``known`` plus the dots of groups in flight."""
        out = self.known.copy()
        for f in self.inflight.values():
            out.update(f.ctx)
        return out

    def acked_upto(self) -> int:
        """The ack map entry (Algorithm 2): every buffer entry up to here was pushed and
        acknowledged, skipped, or handed to catch-up."""
        los = [f.buf_lo for f in self.inflight.values() if f.kind == PUSH]
        return min([*los, self.push_next]) - 1


@dataclass(slots=True)
class PeerState:
    """One connected peer."""

    peer: str
    ours: frozenset[str]
    """The namespaces we share with this peer."""
    theirs: frozenset[str] | None = None
    """The namespaces it offered (None until its offer arrives)."""
    ns: dict[str, NsState] = field(default_factory=dict)
    next_group: dict[str, int] = field(default_factory=dict)
    """The number of the next ``deltas`` group of each namespace no longer active on this
    connection (SPEC §5.6: numbers are per namespace and connection, so they go on where
    they stopped if it is shared again: a late ack of an old group acknowledges no new one)."""
    offer_sent_at: float = float("-inf")
    offer_due: bool = True
    offer_reply: bool = True
    last_received: float = 0.0
    last_sent: float = 0.0
    ping_nonce: int = 0
    pongs_due: list[int] = field(default_factory=list)

    def active(self) -> frozenset[str]:
        """The namespaces data flows in: shared by both sides."""
        return self.ours & self.theirs if self.theirs is not None else frozenset()


PEER_STATE_VERSION = 1


def encode_peer_state(known: CausalContext) -> bytes:
    """The persisted sync metadata of one (peer, namespace): ``[1, acknowledged context]``."""
    return cbor.encode([PEER_STATE_VERSION, context_to_item(known)])


def decode_peer_state(data: bytes) -> CausalContext | None:
    """Inverse of :func:`encode_peer_state`; None for anything unreadable (it is a cache)."""
    try:
        item = cbor.decode(data)
        if isinstance(item, list) and len(item) == 2 and item[0] == PEER_STATE_VERSION:
            return context_from_item(item[1], "peer state")
    except RemoteProtocolError:
        pass
    return None


__all__ = [
    "CATCH_UP",
    "PUSH",
    "InFlight",
    "NsState",
    "PeerState",
    "decode_peer_state",
    "encode_peer_state",
]
