"""Sync benchmark, simulated: bytes per edit, catch-up cost, echo suppression, gossip rounds.

Every figure comes from the deterministic network simulator (``syncd/sync/simulator.py``):
real engines, real frames (length prefix included), virtual time, seeded.

    python bench/sync.py [--docs N] [--edits N] [--json]

- ``edit_bytes``: bytes on the wire, both ways, to sync a 1-character edit of a 100 KB text
  document to one peer (target <= 200).
- ``catchup_ratio``: bytes to catch up a peer that missed ``edits`` edits over 1,000 documents
  of a ``docs``-document namespace, over the encoded size of those edits (target <= 1.5), with
  ``catchup_full_state`` false (no more documents sent than changed); ``catchup_s`` the CPU
  time of that catch-up in the simulator.
- ``mesh5_copies_per_edit``: full mesh of 5 peers, deltas received per edit per peer
  (target <= 1.5).
- ``rounds_64``: rounds (network latencies) for 64 peers in a random 4-regular topology to
  converge after a burst of writes, next to ``log2_64``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from typing import Any

import syncd
from syncd.crdt import encode_document, parse_ops
from syncd.sync.memory import MemoryReplica
from syncd.sync.simulator import Network

NS = "bench"


def quiesce(net: Network, limit: int = 100) -> None:
    for _ in range(limit):
        net.step()
        if not net.in_flight():
            return
    raise AssertionError("network did not go quiet")


def edit_bytes() -> int:
    net = Network(random.Random(1))
    a, _ = net.add_node("a"), net.add_node("b")
    text = "".join(random.Random(2).choice("abcdefghij klmnop\n") for _ in range(100_000))
    delta = a.replica.patch(
        NS, "doc", parse_ops([{"op": "make", "path": ["body"], "type": "text", "value": text}])
    )
    net.link("a", "b", [NS])
    net.run_until_converged(NS, 20)
    quiesce(net)
    before = net.stats.bytes
    delta = a.replica.patch(
        NS, "doc", parse_ops([{"op": "insert", "path": ["body"], "index": 50_000, "text": "x"}])
    )
    a.engine.local_change(NS, "doc", delta, net.now)
    net.flush_node("a")
    quiesce(net)
    assert net.converged(NS)
    return net.stats.bytes - before


def catch_up(docs: int, edits: int, touched: int = 1000) -> dict[str, Any]:
    ra = MemoryReplica("replica-a")
    for i in range(docs):
        ra.put(NS, f"doc{i:06}", {"n": i, "title": f"document {i}"})
    rb = ra.clone("replica-b")
    rng = random.Random(3)
    keys = rng.sample(range(docs), touched)
    edit_size = 0
    for j in range(edits):
        key = f"doc{keys[j % touched]:06}"
        edit_size += len(encode_document(ra.put(NS, key, {"n": -j, "title": f"edit {j}"})))
    net = Network(random.Random(4))
    net.add_node("a", ra)
    net.add_node("b", rb)
    t0 = time.process_time()
    net.link("a", "b", [NS])
    for _ in range(200):
        if ra.context(NS) == rb.context(NS) and not net.in_flight():
            break
        net.step()
    elapsed = time.process_time() - t0
    assert ra.render(NS) == rb.render(NS)
    return {
        "catchup_ratio": round(net.stats.bytes / edit_size, 3),
        "catchup_full_state": net.stats.delta_entries > touched,
        "catchup_s": round(elapsed, 3),
        "catchup_bytes": net.stats.bytes,
        "catchup_edit_bytes": edit_size,
    }


def mesh5(edits: int = 200) -> float:
    names = "abcde"
    net = Network(random.Random(5))
    for n in names:
        net.add_node(n)
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            net.link(x, y, [NS])
    for _ in range(3):
        net.step()
    rng = random.Random(6)
    for i in range(edits):
        net.local_write(rng.choice(names), NS, f"k{rng.randrange(50)}", {"v": i})
        net.step()
    net.run_until_converged(NS, 50)
    received = sum(n.engine.deltas_received for n in net.nodes.values())
    return round(received / edits / (len(names) - 1), 3)


def regular_graph(n: int, degree: int, rng: random.Random) -> set[frozenset[int]]:
    """A random connected ``degree``-regular graph (configuration model with retries)."""
    while True:
        stubs = [v for v in range(n) for _ in range(degree)]
        rng.shuffle(stubs)
        edges = {frozenset(stubs[i : i + 2]) for i in range(0, len(stubs), 2)}
        if len(edges) != len(stubs) // 2 or any(len(e) == 1 for e in edges):
            continue
        seen, todo = {0}, [0]
        while todo:
            v = todo.pop()
            for e in edges:
                if v in e:
                    (w,) = e - {v}
                    if w not in seen:
                        seen.add(w)
                        todo.append(w)
        if len(seen) == n:
            return edges


def rounds_64(writes: int = 64) -> int:
    rng = random.Random(7)
    net = Network(random.Random(8))
    for v in range(64):
        net.add_node(f"n{v}")
    for e in sorted(tuple(sorted(e)) for e in regular_graph(64, 4, rng)):
        net.link(f"n{e[0]}", f"n{e[1]}", [NS])
    for _ in range(3):
        net.step()
    for i in range(writes):
        net.local_write(f"n{rng.randrange(64)}", NS, f"k{i}", {"v": i})
    return net.run_until_converged(NS, 200)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--docs", type=int, default=100_000)
    p.add_argument("--edits", type=int, default=10_000)
    p.add_argument("--touched", type=int, default=1000, help="documents the edits go to")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not 1 <= args.touched <= args.docs:
        p.error(f"--touched must be from 1 to --docs ({args.docs})")
    result: dict[str, Any] = {"edit_bytes": edit_bytes()}
    result.update(catch_up(args.docs, args.edits, args.touched))
    result["mesh5_copies_per_edit"] = mesh5()
    result["rounds_64"] = rounds_64()
    result["log2_64"] = math.log2(64)
    if not args.json:
        for k, v in result.items():
            print(f"{k:28} {v}")
    print(json.dumps({**result, "compiled": syncd.compiled()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
