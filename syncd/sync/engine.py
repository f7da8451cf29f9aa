"""The anti-entropy engine: sans-IO, one instance per replica, serving every connected peer.

In the manner of automerge's ``sync.rs``: the driver hands each decoded message to
:meth:`SyncEngine.receive` and sends whatever :meth:`SyncEngine.next_messages` returns; local
changes come in through :meth:`SyncEngine.local_change`. Time is a parameter (``now``, seconds
on any monotonic clock); the engine reads no clock, does no I/O and draws no random numbers.

The protocol it runs is specified in protocol/SPEC.md §5; the clauses are quoted where they are
enforced. In short: the two sides exchange offers, then per shared namespace their causal
contexts (summaries); each side streams what the other's context lacks (catch-up), and from
then on pushes every change as soon as it is applied (live push), relaying changes that came
from other peers after a short delay unless the peer's summaries show it has them already.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from syncd.crdt.codec import decode_document, encode_document
from syncd.crdt.context import CausalContext
from syncd.crdt.document import Document
from syncd.errors import CodecError, InvalidDeltaError
from syncd.sync.buffer import BufferedDelta, DeltaBuffer
from syncd.sync.catchup import CatchUp
from syncd.sync.errors import LocalProtocolError, RemoteProtocolError
from syncd.sync.messages import (
    CATCH_ME_UP,
    EXCHANGE,
    NOTICE,
    Ack,
    Close,
    Deltas,
    Hello,
    Message,
    Offer,
    Ping,
    Pong,
    Summary,
)
from syncd.sync.state import (
    CATCH_UP,
    PUSH,
    InFlight,
    NsState,
    PeerState,
    decode_peer_state,
    encode_peer_state,
)

if TYPE_CHECKING:
    from syncd.sync.replica import SyncReplica


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """Tunables of the engine (seconds and bytes)."""

    max_group_bytes: int = 256 * 1024
    """Soft bound of one delta group's deltas: catch-ups stream in groups of about this size
    (one delta larger than this travels alone; SPEC §2 caps the frame)."""
    window: int = 8
    """Delta groups in flight (unacknowledged) per peer and namespace."""
    rto: float = 5.0
    """An unacknowledged group, offer or summary request is repaired after this long."""
    relay_delay: float = 0.1
    """How long a change received from one peer waits before it is relayed to others, so that
    their summaries can show they got it directly (no echo storms in a mesh)."""
    summary_interval: float = 0.05
    """Least time between two unrequested summaries to one peer in one namespace."""
    anti_entropy_interval: float = 60.0
    """Ask for the peer's summary at least this often (repairs anything lost)."""
    buffer_max_bytes: int = 32 * 1024 * 1024
    """Trim the delta buffer of a namespace beyond this; lagging peers then catch up."""
    persist_interval: float = 5.0
    """Least time between two saves of one peer's acknowledged context."""
    ping_interval: float = 15.0
    """Send a ping after this long without sending anything."""


class SyncEngine:
    """Anti-entropy for one replica and all its peers."""

    def __init__(self, replica: SyncReplica, config: SyncConfig | None = None) -> None:
        self.replica = replica
        self.config = config or SyncConfig()
        self.peers: dict[str, PeerState] = {}
        self.buffers: dict[str, DeltaBuffer] = {}
        self.deltas_received = 0
        """Delta entries received from peers (duplicates included)."""

    # -- peers ------------------------------------------------------------------------------

    def connect(self, peer: str, shared: frozenset[str] | set[str], now: float) -> None:
        """A connection to ``peer`` is open (hellos exchanged); ``shared`` are the namespaces
        this side shares with it. SPEC §5.1: each side starts with an offer."""
        if peer in self.peers:
            raise LocalProtocolError(f"peer {peer!r} is already connected")
        self.peers[peer] = PeerState(peer, frozenset(shared), last_received=now, last_sent=now)

    def disconnect(self, peer: str, now: float) -> None:
        """The connection to ``peer`` ended; what it had acknowledged is saved."""
        st = self.peers.pop(peer, None)
        if st is None:
            return
        for ns, nst in st.ns.items():
            self._save(st, ns, nst, now)
        for ns in st.ns:
            self._gc(ns)

    def set_shared(self, peer: str, shared: frozenset[str] | set[str], now: float) -> None:
        """The namespaces shared with a connected ``peer`` changed: send a new offer."""
        st = self.peers[peer]
        st.ours = frozenset(shared)
        st.offer_due = True
        st.offer_reply = False
        self._update_active(st, now)

    def active(self, peer: str) -> frozenset[str]:
        """The namespaces in which data flows with ``peer``."""
        st = self.peers.get(peer)
        return st.active() if st is not None else frozenset()

    def idle_for(self, peer: str, now: float) -> float:
        """Seconds since anything arrived from ``peer`` (the driver closes dead connections)."""
        return now - self.peers[peer].last_received

    def acked_by(self, ns: str) -> tuple[list[str], list[str]]:
        """``(acked, pending)``: connected peers sharing ``ns`` that hold all we hold, and the
        rest (for ``syncd sync``)."""
        mine = self.replica.context(ns)
        acked: list[str] = []
        pending: list[str] = []
        for peer, st in sorted(self.peers.items()):
            if ns in st.ours:
                nst = st.ns.get(ns)
                ok = nst is not None and nst.known.includes(mine)
                (acked if ok else pending).append(peer)
        return acked, pending

    def _buffer(self, ns: str) -> DeltaBuffer:
        buf = self.buffers.get(ns)
        if buf is None:
            buf = self.buffers[ns] = DeltaBuffer()
        return buf

    def _update_active(self, st: PeerState, now: float) -> None:
        active = st.active()
        for ns in sorted(active - st.ns.keys()):
            data = self.replica.load_peer_state(st.peer, ns)
            known = decode_peer_state(data) if data is not None else None
            st.ns[ns] = NsState(
                known=known or CausalContext(),
                push_next=self._buffer(ns).next_seq,
                request_due=True,
                out_n=st.next_group.pop(ns, 1),
            )
        for ns in sorted(st.ns.keys() - active):
            nst = st.ns.pop(ns)
            st.next_group[ns] = nst.out_n
            self._save(st, ns, nst, now)
            self._gc(ns)

    # -- local changes ------------------------------------------------------------------------

    def local_change(self, ns: str, key: str, delta: Document, now: float) -> None:
        """A change made on this replica is durable: push it to every peer sharing ``ns``
        (SPEC §5.2: "as soon as it is durable")."""
        if delta.is_bottom() or not any(ns in st.ns for st in self.peers.values()):
            return  # nobody to push to: peers that connect later catch up from contexts
        self._buffer(ns).append(key, delta, None, now)

    # -- receiving ------------------------------------------------------------------------------

    def receive(self, peer: str, msg: Message, now: float) -> None:
        """Handle one message from ``peer``. Raises RemoteProtocolError if the peer broke the
        protocol (the driver then closes the connection with ``reason``)."""
        st = self.peers[peer]
        st.last_received = now
        if isinstance(msg, Ping):
            st.pongs_due.append(msg.nonce)
        elif isinstance(msg, Pong):
            pass
        elif isinstance(msg, Offer):
            st.theirs = frozenset(msg.namespaces)
            if msg.reply:
                st.offer_due = True
                st.offer_reply = False
            self._update_active(st, now)
        elif isinstance(msg, Summary):
            self._on_summary(st, msg, now)
        elif isinstance(msg, Deltas):
            self._on_deltas(st, msg, now)
        elif isinstance(msg, Ack):
            self._on_ack(st, msg)
        elif isinstance(msg, Hello | Close):
            raise LocalProtocolError(f"{type(msg).__name__} belongs to the connection layer")

    def _on_summary(self, st: PeerState, msg: Summary, now: float) -> None:
        # SPEC §5.1: messages for a namespace that is not shared both ways are ignored.
        nst = st.ns.get(msg.ns)
        if nst is None:
            return
        if nst.had_summary:
            nst.known.update(msg.ctx)
        else:
            # The first summary of a connection replaces what was saved: a peer restored from
            # a backup holds less than it once acknowledged (SPEC §5.3).
            nst.known = msg.ctx.copy()
            nst.had_summary = True
        if msg.mode == NOTICE:
            # SPEC §5.5: a notice only tells what the peer holds (it stops relays to it).
            return
        nst.summary_requested_at = None
        nst.last_summary_received = now
        if msg.mode == EXCHANGE:
            nst.catch_up_due = True
        # SPEC §5.3: send every document that holds a dot the summary lacks (and is not on its
        # way), as what the peer lacks of it against what it is known to hold: a group in
        # flight may be lost, and a delta computed against its dots would omit them while
        # its context claims them.
        missing = self.replica.context(msg.ns).difference(nst.promised())
        nst.catch_up = CatchUp(missing, nst.known.copy()) if missing else None

    def _on_deltas(self, st: PeerState, msg: Deltas, now: float) -> None:
        nst = st.ns.get(msg.ns)
        if nst is None:
            return  # SPEC §5.1: never apply data of a namespace not shared with the sender.
        batch: list[tuple[str, Document]] = []
        for key, data in msg.entries:
            try:
                batch.append((key, decode_document(data)))
            except CodecError as e:
                raise RemoteProtocolError(
                    f"undecodable delta for {key!r}: {e}", reason="bad_delta"
                ) from e
        self.deltas_received += len(batch)
        try:
            new_parts = self.replica.apply_remote(msg.ns, batch, st.peer)
        except InvalidDeltaError as e:
            raise RemoteProtocolError(f"refused delta: {e}", reason="bad_delta") from e
        for _key, delta in batch:
            nst.known.update(delta.ctx)
            nst.told.update(delta.ctx)
        buf = self._buffer(msg.ns)
        for key, part in new_parts:
            buf.append(key, part, st.peer, now)
        nst.acks_due.append(msg.n)
        # SPEC §5.4: a claim of completeness we cannot match means a group was lost on the
        # way: tell the sender our context at once instead of waiting for its timeout.
        if msg.covered and not self.replica.context(msg.ns).includes(msg.covered):
            nst.catch_up_due = True

    def _on_ack(self, st: PeerState, msg: Ack) -> None:
        nst = st.ns.get(msg.ns)
        if nst is None:
            return
        rec = nst.inflight.pop(msg.n, None)
        if rec is not None:  # duplicates and acks of timed-out groups are ignored
            nst.known.update(rec.ctx)
            nst.dirty = True
            self._gc(msg.ns)

    # -- sending ----------------------------------------------------------------------------------

    def next_messages(self, peer: str, now: float) -> list[Message]:
        """Everything to send to ``peer`` now (call after every receive, every local change,
        and periodically: timers are checked here)."""
        st = self.peers[peer]
        cfg = self.config
        out: list[Message] = [Pong(n) for n in st.pongs_due]
        st.pongs_due.clear()
        if st.offer_due or (st.theirs is None and now - st.offer_sent_at >= cfg.rto):
            out.append(Offer(tuple(sorted(st.ours)), st.offer_reply or st.theirs is None))
            st.offer_due = False
            st.offer_sent_at = now
        for ns in sorted(st.ns):
            self._ns_messages(st, ns, st.ns[ns], now, out)
        if not out and now - st.last_sent >= cfg.ping_interval:
            st.ping_nonce += 1
            out.append(Ping(st.ping_nonce))
        if out:
            st.last_sent = now
        return out

    def _ns_messages(
        self, st: PeerState, ns: str, nst: NsState, now: float, out: list[Message]
    ) -> None:
        cfg = self.config
        out.extend(Ack(ns, n) for n in nst.acks_due)
        nst.acks_due.clear()
        # SPEC §5.6: a group unacknowledged after the timeout is presumed lost; ask for the
        # peer's summary and resend from it what is still missing.
        expired = [n for n, f in nst.inflight.items() if now - f.sent_at >= cfg.rto]
        for n in expired:
            del nst.inflight[n]
        if expired:
            nst.request_due = True
            self._gc(ns)
        if nst.summary_requested_at is not None:
            if now - nst.summary_requested_at >= cfg.rto:
                nst.request_due = True
        elif now - nst.last_summary_received >= cfg.anti_entropy_interval:
            nst.request_due = True
        # Live pushes first (latency), then catch-up, within the window.
        while len(nst.inflight) < cfg.window and (msg := self._push_group(st, ns, nst, now)):
            out.append(msg)
        # SPEC §5.5: tell the peer when our context grew by dots it does not know we hold.
        mine = self.replica.context(ns)
        changed = not nst.told.includes(mine)
        if (
            nst.request_due
            or nst.catch_up_due
            or (changed and now - nst.last_summary_sent >= cfg.summary_interval)
        ):
            mode = EXCHANGE if nst.request_due else CATCH_ME_UP if nst.catch_up_due else NOTICE
            out.append(Summary(ns, mine.copy(), mode))
            nst.told.update(mine)
            nst.last_summary_sent = now
            if nst.request_due:
                nst.summary_requested_at = now
            nst.request_due = nst.catch_up_due = False
        while len(nst.inflight) < cfg.window and nst.catch_up is not None:
            group = nst.catch_up.next_group(self.replica, ns, cfg.max_group_bytes)
            if group is None or nst.catch_up.done:
                nst.catch_up = None
            if group is None or not group.entries:
                continue
            n = nst.out_n
            nst.out_n += 1
            nst.inflight[n] = InFlight(CATCH_UP, group.ctx, now)
            nst.told.update(group.ctx)
            out.append(Deltas(ns, n, tuple(group.entries), group.covered))
        if nst.dirty and now - nst.saved_at >= cfg.persist_interval:
            self._save(st, ns, nst, now)

    def _push_group(self, st: PeerState, ns: str, nst: NsState, now: float) -> Deltas | None:
        """The next live-push group from the delta buffer, or None."""
        buf = self._buffer(ns)
        if nst.push_next >= buf.next_seq:
            return None
        if not nst.had_summary:
            # SPEC §5.2/§5.7: what the peer holds is known from its summary, which comes
            # right after activation; the context saved from an earlier connection may be
            # more than it holds (a peer restored from a backup), and a delta judged against
            # it could claim removals without carrying what they removed.
            return None
        if nst.push_next < buf.first_seq:
            # Entries this peer never got were trimmed: it catches up from its summary.
            nst.push_next = buf.first_seq
            nst.ahead = {s for s in nst.ahead if s >= buf.first_seq}
            nst.request_due = True
        promised = nst.promised()
        pushed_from = nst.push_next
        deltas: dict[str, tuple[Document, bytes | None]] = {}
        ctx = CausalContext()
        size = 0
        lo = 0
        stalled = False
        ahead = nst.ahead
        whole: set[str] = set()
        for e in buf.since(nst.push_next):
            if e.seq in ahead:
                if not stalled:
                    ahead.discard(e.seq)
                    nst.push_next = e.seq + 1
                continue
            if e.origin != st.peer and not promised.includes(e.ctx):
                # SPEC §5.5: never send a change back where it came from, nor what the peer
                # holds; a relayed change waits out the relay delay (local ones do not).
                if e.origin is not None and now < e.time + self.config.relay_delay:
                    stalled = True
                    continue
                if deltas and size + len(e.data) > self.config.max_group_bytes:
                    break
                lo = min(lo, e.seq) if lo else e.seq
                prev = deltas.get(e.key)
                if prev is not None and prev[1] is None and e.key in whole:
                    pass  # already sending what the peer lacks of the whole document
                elif self._causally_ready(ns, e, nst):
                    if prev is None:
                        deltas[e.key] = (e.delta, e.data)
                    else:
                        joined = prev[0].copy()
                        joined.join(e.delta)
                        deltas[e.key] = (joined, None)
                    ctx.update(e.ctx)
                else:
                    doc = self.replica.load(ns, e.key)
                    # (Against what it is known to hold: see _on_summary.)
                    part = doc.delta_since(nst.known) if doc is not None else None
                    if part is not None:
                        deltas[e.key] = (part, None)
                        whole.add(e.key)
                        ctx.update(part.ctx)
                size += len(e.data)
            if stalled:
                ahead.add(e.seq)
            else:
                nst.push_next = e.seq + 1
        if not deltas:
            if nst.push_next != pushed_from:
                self._gc(ns)  # (entries it skipped: no ack will come to release them)
            return None
        entries = tuple(
            (key, data if data is not None else encode_document(doc))
            for key, (doc, data) in deltas.items()
        )
        n = nst.out_n
        nst.out_n += 1
        nst.inflight[n] = InFlight(PUSH, ctx, now, lo)
        nst.told.update(ctx)
        return Deltas(ns, n, entries)

    def _causally_ready(self, ns: str, e: BufferedDelta, nst: NsState) -> bool:
        """SPEC §5.2: may the buffered delta itself be pushed, or must the peer get what it
        lacks of the whole document instead?

        A delta's context names the dots its change removed, but not what the changes that
        made those dots removed in turn. A peer that joined it without having seen those
        changes would claim their dots while still holding what they removed, and no summary
        would ever show the gap. So the bare delta goes only to a peer known (from its
        summaries and acknowledgements) to hold every other dot of the document; otherwise
        the push is ``doc.delta_since(peer)``, whose context carries every removal.
        """
        doc = self.replica.load(ns, e.key)
        if doc is None:
            return True
        rest = doc.ctx.difference(nst.known)
        for r, n in e.delta.live_dots():
            if rest.has(r, n):
                rest.remove_range(r, n, n)
        return not rest

    # -- buffer and persistence -------------------------------------------------------------------

    def _gc(self, ns: str) -> None:
        """Drop buffered entries every connected peer sharing ``ns`` acknowledged."""
        buf = self.buffers.get(ns)
        if buf is None:
            return
        marks = [st.ns[ns].acked_upto() for st in self.peers.values() if ns in st.ns]
        buf.gc(min(marks) if marks else buf.next_seq - 1)
        if buf.size > self.config.buffer_max_bytes:
            buf.trim(self.config.buffer_max_bytes)

    def _save(self, st: PeerState, ns: str, nst: NsState, now: float) -> None:
        if nst.dirty:
            self.replica.save_peer_state(st.peer, ns, encode_peer_state(nst.known))
            nst.dirty = False
            nst.saved_at = now


__all__ = ["SyncConfig", "SyncEngine"]
