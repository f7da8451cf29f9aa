"""Random schedules over the sync simulator, checked against an oracle.

Each run writes every kind of field (text, list, set, counter, map, register, puts and
deletes) on random nodes of a random connected topology while the network drops, duplicates
and reorders messages, links are cut and healed, and nodes restart (mostly as a new
incarnation). Then the network heals and every node must converge to the oracle, a replica
that joined every delta as it was made, with nothing left pending or buffered.
(Written from a fuzzing review that found three ways for replicas to end with equal
contexts and different documents.)
"""

from __future__ import annotations

import random
from typing import Any

from syncd.crdt import parse_ops
from syncd.errors import SyncdError
from syncd.sync.engine import SyncEngine
from syncd.sync.memory import MemoryReplica
from syncd.sync.simulator import NetConfig, Network

KEYS = ("k1", "k2", "k3", "k4")
FIELDS = ("t", "l", "s", "c", "m", "r")


def random_ops(rng: random.Random, value: dict[str, Any] | None) -> list[dict[str, Any]]:
    f = rng.choice(FIELDS)
    cur = (value or {}).get(f)
    choice = rng.random()
    if f == "t":
        if not isinstance(cur, str) or choice < 0.1:
            return [
                {"op": "make", "path": [f], "type": "text", "value": rng.choice(["", "ab", "xyz"])}
            ]
        if cur and choice < 0.5:
            i = rng.randrange(len(cur))
            return [
                {"op": "delete", "path": [f], "index": i, "count": rng.randint(1, len(cur) - i)}
            ]
        return [
            {
                "op": "insert",
                "path": [f],
                "index": rng.randint(0, len(cur)),
                "text": rng.choice("pqrs") * rng.randint(1, 3),
            }
        ]
    if f == "l":
        if not isinstance(cur, list) or choice < 0.1:
            return [{"op": "make", "path": [f], "type": "list", "value": [1, 2]}]
        if cur and choice < 0.4:
            return [{"op": "delete", "path": [f], "index": rng.randrange(len(cur)), "count": 1}]
        if cur and choice < 0.55:
            return [{"op": "set", "path": [f, rng.randrange(len(cur))], "value": rng.randint(0, 9)}]
        return [
            {
                "op": "insert",
                "path": [f],
                "index": rng.randint(0, len(cur)),
                "values": [rng.randint(0, 9)],
            }
        ]
    if f == "s":
        if choice < 0.1:
            return [{"op": "make", "path": [f], "type": "set", "value": [1]}]
        return [{"op": rng.choice(["add", "remove"]), "path": [f], "value": rng.randint(0, 3)}]
    if f == "c":
        if choice < 0.1:
            return [{"op": "make", "path": [f], "type": "counter", "value": 5}]
        return [{"op": "inc", "path": [f], "by": rng.randint(-3, 3)}]
    if f == "m":
        if choice < 0.15:
            return [{"op": "del", "path": [f]}]
        return [{"op": "set", "path": [f, rng.choice("xyz")], "value": rng.randint(0, 9)}]
    # register
    if choice < 0.2:
        return [{"op": "del", "path": [f]}]
    return [{"op": "set", "path": [f], "value": rng.choice([1, "a", None, [1], {"q": 1}])}]


class Fuzz:
    def __init__(
        self,
        seed: int,
        nodes: int = 4,
        drop: float = 0.2,
        dup: float = 0.1,
        jitter: float = 2.0,
        nss: tuple[str, ...] = ("ns",),
    ) -> None:
        self.rng = rng = random.Random(seed)
        self.seed = seed
        self.net = Network(
            random.Random(seed + 1), NetConfig(latency=1.0, jitter=jitter, drop=drop, duplicate=dup)
        )
        self.names = [f"n{i}" for i in range(nodes)]
        for n in self.names:
            self.net.add_node(n)
        self.nss = nss
        self.oracle = {ns: MemoryReplica("oracle") for ns in nss}
        self.inc = 0
        # random connected topology
        edges = set()
        for i in range(1, nodes):
            edges.add((self.names[rng.randrange(i)], self.names[i]))
        for _ in range(rng.randint(0, nodes)):
            a, b = rng.sample(self.names, 2)
            if (a, b) not in edges and (b, a) not in edges:
                edges.add((a, b))
        self.edges = sorted(edges)
        for a, b in self.edges:
            self.net.link(a, b, nss)
        self.log: list[str] = []

    def write(self, node: str | None = None) -> None:
        rng = self.rng
        node = node or rng.choice(self.names)
        ns = rng.choice(self.nss)
        key = rng.choice(KEYS)
        n = self.net.nodes[node]
        rep = n.replica
        r = rng.random()
        try:
            if r < 0.12:
                delta = rep.delete(ns, key)
                what = "delete"
            elif r < 0.25:
                delta = rep.put(ns, key, {"r": rng.randint(0, 3), node: 1})
                what = "put"
            else:
                doc = rep.load(ns, key)
                ops = random_ops(rng, doc.render() if doc is not None else None)
                delta = rep.patch(ns, key, parse_ops(ops))
                what = f"patch {ops}"
        except SyncdError:
            return
        self.log.append(f"t={self.net.now:.2f} {node} {ns}/{key} {what}")
        self.oracle[ns].apply_remote(ns, [(key, delta.copy())], "model")
        n.engine.local_change(ns, key, delta, self.net.now)
        self.net.flush_node(node)

    def restart(self, node: str, new_incarnation: bool = True) -> None:
        net = self.net
        n = net.nodes[node]
        peers = [p for (x, p) in list(net._conns) if x == node]
        for p in peers:
            net._down(node, p)
        if new_incarnation:
            self.inc += 1
            old = n.replica
            n.replica = old.clone(f"r-{node}-{self.inc}")
            n.replica.peer_states = dict(old.peer_states)
        n.engine = SyncEngine(n.replica, net.sync)
        for p in peers:
            net._up(node, p)
        self.log.append(f"t={net.now:.2f} restart {node}")

    def chaos(self, steps: int) -> None:
        rng = self.rng
        for _ in range(steps):
            r = rng.random()
            if r < 0.45:
                self.write()
            elif r < 0.75:
                self.net.step(rng.choice([0.3, 1.0, 2.0]))
            elif r < 0.83:
                a, b = rng.choice(self.edges)
                self.net.partition(a, b)
                self.log.append(f"t={self.net.now:.2f} cut {a}-{b}")
            elif r < 0.91:
                a, b = rng.choice(self.edges)
                self.net.heal(a, b)
                self.log.append(f"t={self.net.now:.2f} heal {a}-{b}")
            else:
                self.restart(rng.choice(self.names), new_incarnation=rng.random() < 0.7)

    def settle(self, max_steps: int = 200) -> int:
        net = self.net
        net.heal()
        net.net = NetConfig(latency=1.0)
        net.flush()
        for i in range(max_steps):
            if all(net.converged(ns) for ns in self.nss) and self.matches_oracle():
                return i
            net.step()
        raise AssertionError(
            f"seed {self.seed}: not converged after {max_steps} steps\n" + self.describe()
        )

    def matches_oracle(self) -> bool:
        for ns in self.nss:
            want = self.oracle[ns].render(ns)
            wctx = self.oracle[ns].context(ns)
            for n in self.net.nodes.values():
                if n.replica.render(ns) != want or n.replica.context(ns) != wctx:
                    return False
        return True

    def describe(self) -> str:
        out = []
        for ns in self.nss:
            out.append(
                f"oracle {ns}: {self.oracle[ns].render(ns)} ctx={self.oracle[ns].context(ns)}"
            )
            for name, n in self.net.nodes.items():
                out.append(f"  {name}: {n.replica.render(ns)} ctx={n.replica.context(ns)}")
        return "\n".join(out[:60])

    def check_acks(self, extra_steps: int = 80) -> list[str]:
        """After convergence and quiescence, every node should report every peer acked."""
        net = self.net
        for _ in range(extra_steps):
            net.step()
        bad = []
        for name, n in net.nodes.items():
            for ns in self.nss:
                acked, pending = n.engine.acked_by(ns)
                if pending:
                    bad.append(f"{name} {ns}: pending={pending} acked={acked}")
            for ns, buf in n.engine.buffers.items():
                if len(buf):
                    bad.append(f"{name} {ns}: buffer holds {len(buf)} entries after quiescence")
        return bad
