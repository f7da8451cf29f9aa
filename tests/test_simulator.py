"""Convergence under any schedule: a hypothesis stateful test over the network simulator.

Three replicas on a line a–b–c plus an optional a–c link, a network that drops, duplicates,
reorders and delays frames, partitions, and restarts. After any schedule: heal everything, stop
the faults, and every replica must reach the same state within a bounded number of rounds,
equal to the join of every change ever made (so nothing acknowledged, or made, is lost).
"""

from __future__ import annotations

import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from syncd.crdt import parse_ops
from syncd.crdt.document import Document
from syncd.sync.memory import MemoryReplica
from syncd.sync.simulator import NetConfig, Network

NS = "ns"
NODES = ("a", "b", "c")
KEYS = ("k1", "k2", "k3")
HEAL_BOUND = 60
"""Rounds (network latencies) to converge after healing: a few repair timeouts (10 each)."""


class SyncMachine(RuleBasedStateMachine):
    """Random writes, steps, partitions and restarts; converge at the end."""

    net: Network
    oracle: MemoryReplica

    @initialize(
        seed=st.integers(0, 2**32 - 1),
        drop=st.sampled_from([0.0, 0.1, 0.3]),
        dup=st.sampled_from([0.0, 0.1]),
        jitter=st.sampled_from([0.0, 2.5]),
        triangle=st.booleans(),
    )
    def setup(self, seed: int, drop: float, dup: float, jitter: float, triangle: bool) -> None:
        self.net = Network(
            random.Random(seed), NetConfig(latency=1.0, jitter=jitter, drop=drop, duplicate=dup)
        )
        for n in NODES:
            self.net.add_node(n)
        self.net.link("a", "b", [NS])
        self.net.link("b", "c", [NS])
        if triangle:
            self.net.link("a", "c", [NS])
        self.oracle = MemoryReplica("oracle")
        self.changes = 0

    def _record(self, node: str, key: str, delta: Document) -> None:
        self.oracle.apply_remote(NS, [(key, delta)], "model")
        self.net.nodes[node].engine.local_change(NS, key, delta, self.net.now)
        self.net.flush_node(node)
        self.changes += 1

    @rule(node=st.sampled_from(NODES), key=st.sampled_from(KEYS), v=st.integers(0, 3))
    def put(self, node: str, key: str, v: int) -> None:
        self._record(node, key, self.net.nodes[node].replica.put(NS, key, {"v": v, node: v}))

    @rule(node=st.sampled_from(NODES), key=st.sampled_from(KEYS))
    def delete(self, node: str, key: str) -> None:
        self._record(node, key, self.net.nodes[node].replica.delete(NS, key))

    @rule(node=st.sampled_from(NODES), key=st.sampled_from(KEYS), elem=st.integers(0, 2))
    def set_ops(self, node: str, key: str, elem: int) -> None:
        rep = self.net.nodes[node].replica
        doc = rep.load(NS, key)
        value = doc.render() if doc is not None else None
        ops: list[dict[str, object]]
        if value is None or not isinstance(value.get("s"), list):
            ops = [{"op": "make", "path": ["s"], "type": "set"}]
        elif elem in value["s"]:
            ops = [{"op": "remove", "path": ["s"], "value": elem}]
        else:
            ops = [{"op": "add", "path": ["s"], "value": elem}]
        self._record(node, key, rep.patch(NS, key, parse_ops(ops)))

    @rule(n=st.integers(1, 4))
    def step(self, n: int) -> None:
        for _ in range(n):
            self.net.step()

    @rule(pair=st.sampled_from([("a", "b"), ("b", "c"), ("a", "c")]))
    def partition(self, pair: tuple[str, str]) -> None:
        self.net.partition(*pair)

    @rule(pair=st.sampled_from([("a", "b"), ("b", "c"), ("a", "c")]))
    def heal_one(self, pair: tuple[str, str]) -> None:
        self.net.heal(*pair)

    @precondition(lambda self: self.changes > 0)
    @rule(node=st.sampled_from(NODES))
    def restart(self, node: str) -> None:
        self.net.restart(node)

    def teardown(self) -> None:
        if not hasattr(self, "net"):
            return
        self.net.heal()
        self.net.net = NetConfig(latency=1.0)
        self.net.run_until_converged(NS, HEAL_BOUND)
        want_ctx = self.oracle.context(NS)
        want = self.oracle.render(NS)
        for node in self.net.nodes.values():
            assert node.replica.context(NS) == want_ctx, node.name
            assert node.replica.render(NS) == want, node.name


SyncMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestSync = SyncMachine.TestCase
