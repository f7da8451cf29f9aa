"""The JSON form of messages used by protocol/vectors.json (SPEC §8), and for debugging.

``{"type": "summary", "ns": "notes", "ctx": {"r1": [[1, 5]]}, "mode": 2}``: byte strings as
lowercase hex, contexts as ``{replica: [[start, end], ...]}``.
"""

from __future__ import annotations

from typing import Any

from syncd.crdt.context import CausalContext
from syncd.sync.messages import Ack, Close, Deltas, Hello, Message, Offer, Ping, Pong, Summary


def ctx_to_json(ctx: CausalContext) -> dict[str, list[list[int]]]:
    """``{replica: [[start, end], ...]}``."""
    out: dict[str, list[list[int]]] = {}
    for r, s, e in ctx.ranges():
        out.setdefault(r, []).append([s, e])
    return out


def ctx_from_json(obj: dict[str, list[list[int]]]) -> CausalContext:
    """Inverse of :func:`ctx_to_json`."""
    return CausalContext.from_ranges((r, s, e) for r, rs in obj.items() for s, e in rs)


def message_to_json(msg: Message) -> dict[str, Any]:
    """The JSON form of ``msg``."""
    if isinstance(msg, Hello):
        return {"type": "hello", "versions": list(msg.versions)}
    if isinstance(msg, Close):
        return {"type": "close", "reason": msg.reason, "detail": msg.detail}
    if isinstance(msg, Ping | Pong):
        return {"type": type(msg).__name__.lower(), "nonce": msg.nonce}
    if isinstance(msg, Offer):
        return {"type": "offer", "namespaces": list(msg.namespaces), "reply": msg.reply}
    if isinstance(msg, Summary):
        return {"type": "summary", "ns": msg.ns, "ctx": ctx_to_json(msg.ctx), "mode": msg.mode}
    if isinstance(msg, Deltas):
        return {
            "type": "deltas",
            "ns": msg.ns,
            "n": msg.n,
            "entries": [[k, d.hex()] for k, d in msg.entries],
            "covered": ctx_to_json(msg.covered),
        }
    return {"type": "ack", "ns": msg.ns, "n": msg.n}


def message_from_json(obj: dict[str, Any]) -> Message:
    """Inverse of :func:`message_to_json`."""
    t = obj["type"]
    if t == "hello":
        return Hello(tuple(obj["versions"]))
    if t == "close":
        return Close(obj["reason"], obj["detail"])
    if t == "ping":
        return Ping(obj["nonce"])
    if t == "pong":
        return Pong(obj["nonce"])
    if t == "offer":
        return Offer(tuple(obj["namespaces"]), obj["reply"])
    if t == "summary":
        return Summary(obj["ns"], ctx_from_json(obj["ctx"]), obj["mode"])
    if t == "deltas":
        entries = tuple((k, bytes.fromhex(d)) for k, d in obj["entries"])
        return Deltas(obj["ns"], obj["n"], entries, ctx_from_json(obj["covered"]))
    if t == "ack":
        return Ack(obj["ns"], obj["n"])
    raise ValueError(f"unknown message type {t!r}")


__all__ = ["ctx_from_json", "ctx_to_json", "message_from_json", "message_to_json"]
