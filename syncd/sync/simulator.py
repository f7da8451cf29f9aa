"""A deterministic network simulator: N replicas in one process, virtual time, and a seeded
network that drops, duplicates, reorders, delays and partitions (tests and benchmarks only).

Each link that is up carries one :class:`~syncd.sync.connection.Connection` per side; the hello
exchange runs reliably when the link comes up, and every later frame is subject to the
network's faults. A partition cuts links (both engines see a disconnect) and healing reconnects
them, so the simulator exercises connection loss as well as loss inside a connection. Nothing
here reads a clock or global randomness: the caller passes a seeded :class:`random.Random`.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from syncd.sync.connection import NEED_DATA, SUPPORTED_VERSIONS, Connection
from syncd.sync.engine import SyncConfig, SyncEngine
from syncd.sync.memory import MemoryReplica
from syncd.sync.messages import Deltas, Hello, Message


@dataclass(frozen=True, slots=True)
class NetConfig:
    """The network's behaviour; all probabilities per frame."""

    latency: float = 1.0
    jitter: float = 0.0
    """Extra delay, uniform in ``0..jitter``: frames overtake each other."""
    drop: float = 0.0
    duplicate: float = 0.0


@dataclass
class SimNode:
    """One replica with its engine. ``shares[peer]`` are the namespaces shared with ``peer``."""

    name: str
    replica: MemoryReplica
    engine: SyncEngine
    shares: dict[str, set[str]] = field(default_factory=dict)


@dataclass(order=True, slots=True)
class _Frame:
    at: float
    seq: int
    session: int = field(compare=False)
    src: str = field(compare=False)
    dst: str = field(compare=False)
    data: bytes = field(compare=False)


@dataclass
class Stats:
    """What crossed the network."""

    frames: int = 0
    bytes: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    delta_entries: int = 0


class Network:
    """The simulated world: nodes, links, virtual time, frames in flight."""

    def __init__(
        self,
        rng: random.Random,
        net: NetConfig | None = None,
        sync: SyncConfig | None = None,
    ) -> None:
        self.rng = rng
        self.net = net or NetConfig()
        self.sync = sync or SyncConfig(
            relay_delay=self_default_latency(net),
            summary_interval=0.0,
            rto=10 * self_default_latency(net),
            anti_entropy_interval=50 * self_default_latency(net),
            ping_interval=1e9,
        )
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        self.links: set[frozenset[str]] = set()
        self.cut: set[frozenset[str]] = set()
        self._conns: dict[tuple[str, str], tuple[int, Connection]] = {}
        self._sessions = 0
        self._seq = 0
        self._flight: list[_Frame] = []
        self.stats = Stats()

    # -- building the world ---------------------------------------------------------------------

    def add_node(self, name: str, replica: MemoryReplica | None = None) -> SimNode:
        """A node with an empty (or the given) replica."""
        rep = replica or MemoryReplica(f"r-{name}")
        node = SimNode(name, rep, SyncEngine(rep, self.sync))
        self.nodes[name] = node
        return node

    def link(self, a: str, b: str, namespaces: Iterable[str]) -> None:
        """Connect ``a`` and ``b``, each sharing ``namespaces`` with the other."""
        nss = set(namespaces)
        self.nodes[a].shares[b] = set(nss)
        self.nodes[b].shares[a] = set(nss)
        self.links.add(frozenset((a, b)))
        self._up(a, b)

    def _up(self, a: str, b: str) -> None:
        if (a, b) in self._conns or frozenset((a, b)) in self.cut:
            return
        self._sessions += 1
        ca, cb = Connection(), Connection()
        # The handshake is reliable (SPEC §3): exchange hellos in full.
        cb.receive_data(ca.send(Hello(SUPPORTED_VERSIONS)))
        ca.receive_data(cb.send(Hello(SUPPORTED_VERSIONS)))
        for c in (ca, cb):
            ev = c.next_event()
            assert isinstance(ev, Hello)
            assert c.version is not None
        self._conns[(a, b)] = (self._sessions, ca)
        self._conns[(b, a)] = (self._sessions, cb)
        self.nodes[a].engine.connect(b, self.nodes[a].shares[b], self.now)
        self.nodes[b].engine.connect(a, self.nodes[b].shares[a], self.now)

    def _down(self, a: str, b: str) -> None:
        if self._conns.pop((a, b), None) is not None:
            self._conns.pop((b, a), None)
            self.nodes[a].engine.disconnect(b, self.now)
            self.nodes[b].engine.disconnect(a, self.now)

    def partition(self, a: str, b: str) -> None:
        """Cut the link between ``a`` and ``b`` (frames in flight are lost)."""
        self.cut.add(frozenset((a, b)))
        self._down(a, b)

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        """Restore one link, or every link."""
        if a is None or b is None:
            healed = list(self.cut)
            self.cut.clear()
        else:
            healed = [frozenset((a, b))]
            self.cut.discard(healed[0])
        for pair in healed:
            x, y = sorted(pair)
            if pair in self.links:
                self._up(x, y)

    def restart(self, name: str) -> None:
        """Restart a node: its connections drop and its engine starts afresh over the same
        (durable) replica; links that are not cut come back up."""
        node = self.nodes[name]
        peers = [p for (x, p) in self._conns if x == name]
        for p in peers:
            self._down(name, p)
        node.engine = SyncEngine(node.replica, self.sync)
        for p in peers:
            self._up(name, p)

    # -- running ------------------------------------------------------------------------------

    def local_write(self, name: str, ns: str, key: str, value: dict[str, object]) -> None:
        """A put at ``name``, handed to its engine and pushed at once."""
        node = self.nodes[name]
        delta = node.replica.put(ns, key, value)
        node.engine.local_change(ns, key, delta, self.now)
        self.flush_node(name)

    def _send(self, src: str, dst: str, msg: Message) -> None:
        session, conn = self._conns[(src, dst)]
        data = conn.send(msg)
        name = type(msg).__name__
        self.stats.frames += 1
        self.stats.bytes += len(data)
        self.stats.by_type[name] = self.stats.by_type.get(name, 0) + len(data)
        if isinstance(msg, Deltas):
            self.stats.delta_entries += len(msg.entries)
        net = self.net
        if net.drop and self.rng.random() < net.drop:
            return
        copies = 2 if net.duplicate and self.rng.random() < net.duplicate else 1
        for _ in range(copies):
            delay = net.latency + (self.rng.uniform(0, net.jitter) if net.jitter else 0.0)
            self._seq += 1
            frame = _Frame(self.now + delay, self._seq, session, src, dst, data)
            heapq.heappush(self._flight, frame)

    def flush_node(self, name: str) -> None:
        """Let one node send what it has to send now."""
        engine = self.nodes[name].engine
        for peer in sorted(engine.peers):
            for msg in engine.next_messages(peer, self.now):
                self._send(name, peer, msg)

    def flush(self) -> None:
        """Let every node send what it has to send now."""
        for name in sorted(self.nodes):
            self.flush_node(name)

    def step(self, dt: float | None = None) -> None:
        """Advance virtual time by ``dt`` (default: one latency), delivering frames as they
        fall due, then let every node send."""
        end = self.now + (self.net.latency if dt is None else dt)
        while self._flight and self._flight[0].at <= end:
            f = heapq.heappop(self._flight)
            self.now = max(self.now, f.at)
            cur = self._conns.get((f.dst, f.src))
            if cur is None or cur[0] != f.session:
                continue  # the connection it belonged to is gone
            conn = cur[1]
            conn.receive_data(f.data)
            while (ev := conn.next_event()) is not NEED_DATA:
                assert not isinstance(ev, Hello)
                self.nodes[f.dst].engine.receive(f.src, ev, self.now)  # type: ignore[arg-type]
        self.now = end
        self.flush()

    def in_flight(self) -> int:
        """Frames still travelling."""
        return len(self._flight)

    def converged(self, ns: str) -> bool:
        """Every node holds the same context and the same documents in ``ns``."""
        reps = [n.replica for n in self.nodes.values()]
        first = reps[0]
        ctx = first.context(ns)
        if not all(r.context(ns) == ctx for r in reps[1:]):
            return False
        rendered = first.render(ns)
        return all(r.render(ns) == rendered for r in reps[1:])

    def run_until_converged(self, ns: str, max_steps: int) -> int:
        """Step until :meth:`converged`; the number of steps taken (raises if not reached)."""
        self.flush()
        for i in range(max_steps + 1):
            if self.converged(ns):
                return i
            self.step()
        raise AssertionError(f"not converged after {max_steps} steps")


def self_default_latency(net: NetConfig | None) -> float:
    """The latency used to scale the engine's timers in the simulator."""
    return (net or NetConfig()).latency


__all__ = ["NetConfig", "Network", "SimNode", "Stats"]
