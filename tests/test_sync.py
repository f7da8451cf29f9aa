"""The anti-entropy engine over the simulator: pushes, catch-up, removals, relays, limits."""

from __future__ import annotations

import random
from typing import Any

import pytest

from syncd.crdt import encode_document, parse_ops
from syncd.crdt.context import CausalContext
from syncd.sync.engine import SyncConfig, SyncEngine
from syncd.sync.errors import LocalProtocolError, RemoteProtocolError
from syncd.sync.memory import MemoryReplica
from syncd.sync.messages import Deltas, Message, Offer, Summary
from syncd.sync.simulator import NetConfig, Network
from syncd.sync.state import decode_peer_state

NS = "notes"


def world(*names: str, **sync: Any) -> Network:
    net = Network(random.Random(0), sync=SyncConfig(**sync) if sync else None)
    for n in names:
        net.add_node(n)
    return net


def settle(net: Network) -> None:
    """Let offers and summaries go through (namespaces become active)."""
    for _ in range(3):
        net.step()


def patch(net: Network, node: str, key: str, ops: list[dict[str, Any]]) -> None:
    n = net.nodes[node]
    delta = n.replica.patch(NS, key, parse_ops(ops))
    n.engine.local_change(NS, key, delta, net.now)
    net.flush_node(node)


def delete(net: Network, node: str, key: str) -> None:
    n = net.nodes[node]
    n.engine.local_change(NS, key, n.replica.delete(NS, key), net.now)
    net.flush_node(node)


def drop_first_group(net: Network, sender: str, receiver: str) -> list[Message]:
    """Lose the next ``deltas`` group from ``sender`` to ``receiver`` (returned once lost)."""
    send = net._send
    dropped: list[Message] = []

    def lossy(src: str, dst: str, msg: Message) -> None:
        if (src, dst) == (sender, receiver) and isinstance(msg, Deltas) and not dropped:
            dropped.append(msg)
            return
        send(src, dst, msg)

    net._send = lossy  # type: ignore[method-assign]
    return dropped


def test_two_peers_converge_both_ways_and_pushes_take_one_hop() -> None:
    net = world("a", "b")
    net.link("a", "b", [NS])
    settle(net)
    net.local_write("a", NS, "x", {"v": 1})
    net.local_write("b", NS, "y", {"v": 2})
    net.step()  # one latency: the live push has arrived
    assert net.nodes["b"].replica.render(NS) == {"x": {"v": 1}, "y": {"v": 2}}
    assert net.nodes["a"].replica.render(NS) == {"x": {"v": 1}, "y": {"v": 2}}


def test_removals_reach_a_peer_after_trimming_and_restarts() -> None:
    net = world("a", "b")
    net.local_write("a", NS, "gone", {"title": "bye"})
    net.local_write("a", NS, "fields", {"keep": 1, "drop": 2})
    patch(net, "a", "set", [{"op": "make", "path": ["tags"], "type": "set"}])
    patch(net, "a", "set", [{"op": "add", "path": ["tags"], "value": v} for v in "xyz"])
    patch(net, "a", "text", [{"op": "make", "path": ["t"], "type": "text", "value": "hello"}])
    net.link("a", "b", [NS])
    net.run_until_converged(NS, 20)
    net.partition("a", "b")
    # Removals only: none of them adds a dot to any store.
    delete(net, "a", "gone")
    patch(net, "a", "fields", [{"op": "del", "path": ["drop"]}])
    patch(net, "a", "set", [{"op": "remove", "path": ["tags"], "value": "y"}])
    patch(net, "a", "text", [{"op": "delete", "path": ["t"], "index": 0, "count": 4}])
    # Both sides restart: whatever the delta buffers held is gone.
    net.restart("a")
    net.restart("b")
    assert all(not buf for n in net.nodes.values() for buf in n.engine.buffers.values())
    net.heal()
    net.run_until_converged(NS, 20)
    assert net.nodes["b"].replica.render(NS) == {
        "fields": {"keep": 1},
        "set": {"tags": ["x", "z"]},
        "text": {"t": "o"},
    }


def test_changes_are_relayed_along_a_chain() -> None:
    net = world("a", "b", "c")
    net.link("a", "b", [NS])
    net.link("b", "c", [NS])
    net.local_write("a", NS, "from-a", {"v": 1})
    net.local_write("c", NS, "from-c", {"v": 2})
    net.run_until_converged(NS, 10)
    assert net.nodes["a"].replica.render(NS) == {"from-a": {"v": 1}, "from-c": {"v": 2}}
    # Live changes too, once everything is connected.
    net.local_write("c", NS, "later", {"v": 3})
    steps = net.run_until_converged(NS, 10)
    assert steps <= 3  # c→b (1), relay delay (1), b→a (1)


def test_catch_up_sends_only_what_the_peer_misses() -> None:
    net = world("a", "b")
    for i in range(2000):
        net.local_write("a", NS, f"doc{i:04}", {"n": i, "body": "x" * 50})
    net.link("a", "b", [NS])
    net.run_until_converged(NS, 50)
    net.partition("a", "b")
    edits = 0
    a = net.nodes["a"]
    for i in range(100):
        key = f"doc{(i * 97) % 2000:04}"
        edits += len(encode_document(a.replica.put(NS, key, {"n": -i - 1, "body": "x" * 50})))
    before = net.stats.by_type.get("Deltas", 0)
    entries_before = net.stats.delta_entries
    net.heal()
    net.run_until_converged(NS, 20)
    sent = net.stats.by_type["Deltas"] - before
    assert net.stats.delta_entries - entries_before == 100
    assert sent <= 1.5 * edits


def drive(a: SyncEngine, b: SyncEngine, now: float, check: Any = None, limit: int = 1000) -> int:
    """Exchange messages between two engines until quiet; returns the number of exchanges."""
    rounds = 0
    for rounds in range(limit):
        ma, mb = a.next_messages("b", now), b.next_messages("a", now)
        if not ma and not mb:
            return rounds
        for m in ma:
            b.receive("a", m, now)
            if check:
                check(m)
        for m in mb:
            a.receive("b", m, now)
        now += 0.001
    raise AssertionError("no quiescence")


def test_large_catch_up_streams_in_bounded_groups_that_claim_no_gaps() -> None:
    ra, rb = MemoryReplica("ra"), MemoryReplica("rb")
    for i in range(300):
        ra.put(NS, f"k{i:03}", {"i": i, "pad": "p" * 100})
        ra.put(NS, f"k{(i * 7) % 300:03}", {"i": -i, "pad": "q" * 100})  # interleave dots
    cfg = SyncConfig(max_group_bytes=4096, window=2)
    a, b = SyncEngine(ra, cfg), SyncEngine(rb, cfg)
    a.connect("b", {NS}, 0.0)
    b.connect("a", {NS}, 0.0)
    groups: list[Deltas] = []

    def check(m: Message) -> None:
        if isinstance(m, Deltas):
            groups.append(m)
            assert sum(len(d) for _, d in m.entries) <= 4096 + 1024
            # SPEC §5.4: after each group, everything claimed is really there.
            assert rb.context(NS).includes(m.covered)

    # Interrupt midway: a few exchanges, then the connection drops.
    for _ in range(6):
        for m in a.next_messages("b", 0.0):
            b.receive("a", m, 0.0)
            check(m)
        for m in b.next_messages("a", 0.0):
            a.receive("b", m, 0.0)
    got = {k for g in groups for k, _ in g.entries}
    assert 0 < len(got) < 300
    a.disconnect("b", 1.0)
    b.disconnect("a", 1.0)
    a.connect("b", {NS}, 2.0)
    b.connect("a", {NS}, 2.0)
    had = rb.context(NS).copy()
    first_run = len(groups)
    drive(a, b, 2.0, check)
    assert rb.render(NS) == ra.render(NS)
    assert rb.context(NS) == ra.context(NS)
    resent = [k for g in groups[first_run:] for k, _ in g.entries if k in got]
    assert resent == []  # nothing received before the interruption is sent again
    assert groups[-1].covered == ra.context(NS).difference(had)  # the rest, and only that


def test_full_mesh_receives_each_change_about_once() -> None:
    names = "abcde"
    net = world(*names, relay_delay=1.0, rto=10.0, summary_interval=0.0)
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            net.link(x, y, [NS])
    settle(net)
    rng = random.Random(1)
    for i in range(60):
        net.local_write(rng.choice(names), NS, f"k{rng.randrange(10)}", {"v": i})
        net.step()
    net.run_until_converged(NS, 20)
    received = sum(n.engine.deltas_received for n in net.nodes.values())
    assert received / 60 / 4 <= 1.2


def test_namespaces_not_shared_both_ways_never_flow() -> None:
    net = world("a", "b")
    net.nodes["a"].shares["b"] = {NS, "secret"}
    net.nodes["b"].shares["a"] = {NS}
    net.links.add(frozenset("ab"))
    net._up("a", "b")
    net.local_write("a", NS, "k", {"v": 1})
    net.local_write("a", "secret", "k", {"v": 2})
    net.run_until_converged(NS, 10)
    assert net.nodes["b"].replica.render("secret") == {}
    # A forged group for the unshared namespace is ignored, not applied.
    delta = net.nodes["a"].replica.load("secret", "k")
    assert delta is not None
    b = net.nodes["b"].engine
    b.receive("a", Deltas("secret", 1, (("k", encode_document(delta)),)), net.now)
    assert net.nodes["b"].replica.render("secret") == {}
    assert b.active("a") == frozenset({NS})


def test_an_undecodable_delta_is_a_remote_protocol_error() -> None:
    net = world("a", "b")
    net.link("a", "b", [NS])
    settle(net)
    with pytest.raises(RemoteProtocolError) as info:
        net.nodes["b"].engine.receive("a", Deltas(NS, 9, (("k", b"\x00"),)), net.now)
    assert info.value.reason == "bad_delta"


def test_connection_messages_are_not_for_the_engine() -> None:
    from syncd.sync.messages import Hello

    e = SyncEngine(MemoryReplica("r"))
    e.connect("p", {NS}, 0.0)
    with pytest.raises(LocalProtocolError):
        e.receive("p", Hello((1,)), 0.0)
    with pytest.raises(LocalProtocolError):
        e.connect("p", {NS}, 0.0)


def test_buffer_is_collected_once_acknowledged_and_sync_reports_acks() -> None:
    net = world("a", "b", "c")
    net.link("a", "b", [NS])
    net.link("a", "c", [NS])
    settle(net)
    net.local_write("a", NS, "k", {"v": 1})
    a = net.nodes["a"].engine
    assert len(a.buffers[NS]) == 1
    assert a.acked_by(NS) == ([], ["b", "c"])
    net.step()
    net.step()
    assert len(a.buffers[NS]) == 0
    assert a.acked_by(NS) == (["b", "c"], [])


def test_acknowledged_context_is_persisted_through_the_replica() -> None:
    net = world("a", "b")
    net.link("a", "b", [NS])
    net.local_write("a", NS, "k", {"v": 1})
    net.run_until_converged(NS, 10)
    net.step()
    net.partition("a", "b")  # disconnect saves
    data = net.nodes["a"].replica.load_peer_state("b", NS)
    assert data is not None
    assert decode_peer_state(data) == net.nodes["a"].replica.context(NS)
    assert decode_peer_state(b"junk") is None


def test_offer_is_retried_until_answered_and_summary_modes_are_honoured() -> None:
    e = SyncEngine(MemoryReplica("r"), SyncConfig(rto=1.0))
    e.connect("p", {NS}, 0.0)
    assert e.next_messages("p", 0.0) == [Offer((NS,), True)]
    assert e.next_messages("p", 0.5) == []
    assert e.next_messages("p", 1.0) == [Offer((NS,), True)]
    e.receive("p", Offer((NS,), False), 1.1)
    msgs = e.next_messages("p", 1.1)
    assert [type(m) for m in msgs] == [Summary]
    assert isinstance(msgs[0], Summary)
    assert msgs[0].mode == 2  # exchange: asks for the peer's summary
    e.receive("p", Summary(NS, CausalContext(), 2), 1.2)
    reply = e.next_messages("p", 1.2)
    assert [m.mode for m in reply if isinstance(m, Summary)] == [1]


def test_a_removal_relayed_ahead_of_the_change_it_removes_is_not_trusted_blindly() -> None:
    """Regression (found by the stateful test): b's second put to c is lost; a deletes the
    document after seeing that put; b relays the delete to c. The bare delete claims the put's
    dots, so c would keep the first put's values forever: b must send what c lacks of the
    whole document instead (SPEC §5.2)."""
    net = world("a", "b", "c")
    net.link("a", "b", [NS])
    net.link("b", "c", [NS])
    settle(net)
    net.local_write("b", NS, "k", {"v": 0})
    net.run_until_converged(NS, 10)
    dropped = drop_first_group(net, "b", "c")
    net.local_write("b", NS, "k", {"v": 1})
    net.step()
    assert dropped
    delete(net, "a", "k")
    net.run_until_converged(NS, 40)
    assert net.nodes["c"].replica.render(NS) == {}


# --- found by a fuzzing review: replicas with equal contexts that rendered differently -----


def test_a_whole_document_delta_keeps_the_present_marker_of_a_list() -> None:
    # delta_since placed a text's or list's nodes after its present marker, in a fresh store
    # that dropped it: the context claimed the marker, no store held it. Emptied, the list
    # then showed as [] on the writer and vanished on the peer that caught up.
    from syncd.crdt.codec import decode_document

    r = MemoryReplica("r")
    r.patch(NS, "k", parse_ops([{"op": "make", "path": ["t"], "type": "text", "value": "xyz"}]))
    doc = r.load(NS, "k")
    assert doc is not None
    part = doc.delta_since(CausalContext())
    assert part is not None
    assert set(decode_document(encode_document(part)).live_dots()) == set(doc.live_dots())
    net = world("a", "b")
    a = net.nodes["a"].replica
    a.patch(NS, "k", parse_ops([{"op": "make", "path": ["l"], "type": "list", "value": [1, 2]}]))
    net.link("a", "b", [NS])
    settle(net)
    patch(net, "a", "k", [{"op": "delete", "path": ["l"], "index": 0, "count": 2}])
    settle(net)
    assert net.nodes["b"].replica.render(NS) == a.render(NS) == {"k": {"l": []}}


def test_a_lost_group_is_not_counted_when_computing_what_a_peer_lacks() -> None:
    # a's group carrying a new list to b is lost; a deletes the document, c edits the list
    # concurrently. A delta computed against the lost group's dots omitted the list's nodes
    # while its context claimed them: b could never place c's item (equal contexts, {}).
    net = world("a", "b", "c")
    net.link("a", "b", [NS])
    net.link("a", "c", [NS])
    settle(net)
    dropped = drop_first_group(net, "a", "b")
    patch(net, "a", "k", [{"op": "make", "path": ["l"], "type": "list", "value": [1, 2]}])
    net.step()
    assert dropped
    delete(net, "a", "k")
    patch(net, "c", "k", [{"op": "set", "path": ["l", 0], "value": 9}])
    for _ in range(60):  # several repair timeouts
        net.step()
    a, b, c = (net.nodes[x].replica for x in "abc")
    assert a.context(NS) == b.context(NS) == c.context(NS)
    assert a.render(NS) == b.render(NS) == c.render(NS) == {"k": {"l": [9]}}


def test_relayed_entries_are_collected_once_everyone_has_them() -> None:
    # Entries every peer skipped (it held them already) waited for some later ack.
    net = world("a", "b", "c")
    for x, y in ("ab", "bc", "ac"):
        net.link(x, y, [NS])
    settle(net)
    net.local_write("a", NS, "k", {"v": 1})
    for _ in range(100):
        net.step()
    assert net.converged(NS)
    for name in "abc":
        assert net.nodes[name].engine.acked_by(NS)[1] == []
        assert len(net.nodes[name].engine.buffers.get(NS, [])) == 0, name


def test_group_numbers_go_on_when_a_namespace_is_shared_again() -> None:
    # SPEC §5.6 numbers groups per namespace and connection: after the peer unshares and
    # shares again, a late ack of the old group 1 must not acknowledge a new group 1.
    from syncd.sync.messages import Ack

    rep = MemoryReplica("me")
    e = SyncEngine(rep)
    e.connect("p", {NS}, 0.0)
    e.receive("p", Offer((NS,), True), 0.0)
    e.next_messages("p", 0.0)
    e.receive("p", Summary(NS, CausalContext(), 1), 0.1)
    e.next_messages("p", 0.1)
    e.local_change(NS, "x", rep.put(NS, "x", {"v": 1}), 0.2)
    old = [m.n for m in e.next_messages("p", 0.2) if isinstance(m, Deltas)]
    assert old == [1]
    x_ctx = rep.context(NS).copy()
    e.receive("p", Offer((), False), 0.3)  # the peer unshares ...
    e.receive("p", Offer((NS,), False), 0.4)  # ... and shares again
    e.receive("p", Summary(NS, x_ctx, 1), 0.5)  # it holds x
    e.next_messages("p", 0.5)
    e.local_change(NS, "y", rep.put(NS, "y", {"v": 2}), 0.6)
    new = [
        (m.n, [k for k, _ in m.entries]) for m in e.next_messages("p", 0.6) if isinstance(m, Deltas)
    ]
    assert new == [(2, ["y"])]
    e.receive("p", Ack(NS, 1), 0.7)  # the late ack of the old group
    assert e.acked_by(NS) == ([], ["p"])
    e.receive("p", Ack(NS, 2), 0.8)
    assert e.acked_by(NS) == (["p"], [])


def test_the_simulated_replica_refuses_what_the_store_refuses() -> None:
    # MemoryReplica runs the store's checks (syncd.crdt.remote): a delta claiming the
    # receiver's own dots closes the connection instead of making it reuse a dot.
    from syncd.crdt import Document, DotCounter

    net = world("a", "b")
    net.link("a", "b", [NS])
    settle(net)
    b = net.nodes["b"]
    forged = Document()
    forged.put({"evil": 1}, DotCounter(b.replica.replica_id, 1))
    with pytest.raises(RemoteProtocolError) as info:
        b.engine.receive("a", Deltas(NS, 9, (("x", encode_document(forged)),)), net.now)
    assert info.value.reason == "bad_delta"
    assert b.replica.render(NS) == {}


def test_a_restored_peer_gets_no_push_judged_against_what_it_held_before() -> None:
    # b is restored from a backup (it no longer holds the "b" edit it once acknowledged);
    # a writes again after the link comes back but before b's first summary. A delta judged
    # against the context saved from the last connection claimed the "b" edit's removal of
    # "a" without carrying it: b showed "ca", a "c", with equal contexts.
    def run(steps_before_write: int) -> tuple[Any, Any]:
        net = Network(random.Random(1), NetConfig(latency=1.0))
        for name in "ab":
            net.add_node(name)
        net.link("a", "b", [NS])
        for _ in range(5):
            net.step()

        patch(net, "a", "k", [{"op": "make", "path": ["t"], "type": "text", "value": "a"}])
        for _ in range(10):
            net.step()
        backup = net.nodes["b"].replica.clone("r-b-restored")
        patch(net, "a", "k", [{"op": "set", "path": ["t"], "value": "b"}])
        for _ in range(10):
            net.step()
        assert net.nodes["b"].replica.render(NS) == {"k": {"t": "b"}}
        net.partition("a", "b")
        b = net.nodes["b"]
        b.replica = backup
        b.engine = SyncEngine(backup, net.sync)
        net.heal("a", "b")
        for _ in range(steps_before_write):
            net.step(1.0)
        patch(net, "a", "k", [{"op": "set", "path": ["t"], "value": "c"}])
        for _ in range(300):
            net.step()
        return net.nodes["a"].replica.render(NS), net.nodes["b"].replica.render(NS)

    for steps in (2, 3):  # before and after b's first summary arrives
        assert run(steps) == ({"k": {"t": "c"}}, {"k": {"t": "c"}})
