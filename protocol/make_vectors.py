"""Regenerate vectors.json and bad-frames.json (run once; the files are then pinned).

    python protocol/make_vectors.py

Tests never run this: they check the stored files, so a change of encoding shows up as a
failing test rather than as silently regenerated vectors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from syncd.crdt import Document, DotCounter, encode_document
from syncd.crdt.context import CausalContext
from syncd.sync.framing import frame
from syncd.sync.jsonform import message_to_json
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
    encode_message,
)

HERE = Path(__file__).parent


def vectors() -> list[dict[str, Any]]:
    doc = Document()
    delta = doc.put({"title": "x"}, DotCounter("r1", 1))
    ctx = CausalContext.from_ranges([("r1", 1, 5), ("r1", 7, 7), ("r2", 1, 300)])
    cases: list[tuple[str, str, Message]] = [
        ("hello", "speaks version 1", Hello((1,))),
        ("hello-multi", "speaks versions 1, 2 and 300", Hello((1, 2, 300))),
        ("close-normal", "orderly close", Close("normal", "")),
        (
            "close-incompatible",
            "no common version",
            Close("incompatible_version", "peer speaks 2; this side speaks 1"),
        ),
        ("ping", "ping, nonce 7", Ping(7)),
        ("pong-large", "pong, nonce 2^32", Pong(2**32)),
        (
            "offer",
            "shares notes and todo, asks for the peer's offer",
            Offer(("notes", "todo"), True),
        ),
        ("offer-empty", "shares nothing (any more)", Offer((), False)),
        ("summary-empty", "empty context, exchange", Summary("notes", CausalContext(), EXCHANGE)),
        ("summary-notice", "notice: holds r1 1-5, 7 and r2 1-300", Summary("notes", ctx, NOTICE)),
        (
            "summary-catch-me-up",
            "version vector r1: 24, asks to be caught up",
            Summary("n", CausalContext.from_ranges([("r1", 1, 24)]), CATCH_ME_UP),
        ),
        (
            "deltas-push",
            "live push: group 1, one delta (document codec bytes) of key 'k'",
            Deltas("notes", 1, (("k", encode_document(delta)),)),
        ),
        (
            "deltas-catch-up",
            "catch-up group 3: two opaque deltas, covering r1 1-5",
            Deltas(
                "notes",
                3,
                (("a", b"\x01\x02"), ("b", b"\xff")),
                CausalContext.from_ranges([("r1", 1, 5)]),
            ),
        ),
        ("ack", "group 3 applied", Ack("notes", 3)),
        ("ack-large", "group 65536 applied", Ack("notes", 65536)),
    ]
    return [
        {
            "name": name,
            "meaning": meaning,
            "hex": frame(encode_message(m)).hex(),
            "message": message_to_json(m),
        }
        for name, meaning, m in cases
    ]


def _f(body_hex: str) -> str:
    body = bytes.fromhex(body_hex)
    return (len(body).to_bytes(4, "big") + body).hex()


def bad_frames() -> list[dict[str, str]]:
    rows = [
        # framing
        ("zero-length", "00000000", "open", "bad_frame"),
        ("too-large", "04100001", "open", "frame_too_large"),
        ("max-length-lie", "ffffffff", "open", "frame_too_large"),
        ("truncated-then-eof", "0000000582", "open", "truncated"),
        # CBOR subset
        ("trailing-bytes", _f("820207" + "00"), "open", "bad_frame"),
        ("non-shortest-int", _f("82021807"), "open", "bad_frame"),
        ("non-shortest-length", _f("98020207"), "open", "bad_frame"),
        ("indefinite-array", _f("9f0207ff"), "open", "bad_frame"),
        ("negative-int", _f("822020"), "open", "bad_frame"),
        ("map", _f("a10102"), "open", "bad_frame"),
        ("tag", _f("c1820207"), "open", "bad_frame"),
        ("float", _f("8202f93c00"), "open", "bad_frame"),
        ("null", _f("8202f6"), "open", "bad_frame"),
        ("reserved-info", _f("1c"), "open", "bad_frame"),
        ("bad-utf8", _f("83016" + "2c328" + "60"), "open", "bad_frame"),
        ("deep-nesting", _f("81" * 9 + "00"), "open", "bad_frame"),
        ("array-longer-than-frame", _f("9a0fffffff"), "open", "bad_frame"),
        ("string-past-end", _f("83015a0000ffff60"), "open", "bad_frame"),
        # schema
        ("not-an-array", _f("02"), "open", "bad_message"),
        ("empty-array", _f("80"), "open", "bad_message"),
        ("unknown-type", _f("8163"[:2] + "18" + "63"), "open", "unknown_message"),
        ("ping-missing-nonce", _f("8102"), "open", "bad_message"),
        ("ping-extra-field", _f("83020700"), "open", "bad_message"),
        ("ping-nonce-text", _f("820261" + "61"), "open", "bad_message"),
        ("close-bad-reason", _f("8301" + "62" + "4f4b" + "60"), "open", "bad_message"),
        ("offer-unsorted", _f("8304" + "82" + "6162" + "6161" + "f4"), "open", "bad_message"),
        ("offer-duplicate", _f("8304" + "82" + "6161" + "6161" + "f4"), "open", "bad_message"),
        ("offer-empty-name", _f("8304" + "81" + "60" + "f4"), "open", "bad_message"),
        ("offer-nul-in-name", _f("8304" + "81" + "6100" + "f4"), "open", "bad_message"),
        ("summary-bad-mode", _f("8405" + "616e" + "80" + "03"), "open", "bad_message"),
        (
            "ctx-zero-counter",
            _f("8405616e" + "81" + "82" + "6172" + "820001" + "00"),
            "open",
            "bad_message",
        ),
        (
            "ctx-end-before-start",
            _f("8405616e" + "81" + "82" + "6172" + "820503" + "00"),
            "open",
            "bad_message",
        ),
        (
            "ctx-adjacent-ranges",
            _f("8405616e" + "81" + "82" + "6172" + "8401020304" + "00"),
            "open",
            "bad_message",
        ),
        (
            "ctx-odd-ranges",
            _f("8405616e" + "81" + "82" + "6172" + "83010203" + "00"),
            "open",
            "bad_message",
        ),
        (
            "ctx-replicas-unsorted",
            _f("8405616e" + "82" + "82" + "6173" + "820101" + "82" + "6172" + "820101" + "00"),
            "open",
            "bad_message",
        ),
        (
            "ctx-empty-ranges",
            _f("8405616e" + "81" + "82" + "6172" + "80" + "00"),
            "open",
            "bad_message",
        ),
        ("deltas-n-zero", _f("8506616e" + "00" + "80" + "80"), "open", "bad_message"),
        (
            "deltas-empty-delta",
            _f("8506616e" + "01" + "81" + "82" + "616b" + "40" + "80"),
            "open",
            "bad_message",
        ),
        (
            "deltas-duplicate-key",
            _f("8506616e" + "01" + "82" + "82616b4101" + "82616b4102" + "80"),
            "open",
            "bad_message",
        ),
        (
            "deltas-delta-text",
            _f("8506616e" + "01" + "81" + "82" + "616b" + "6101" + "80"),
            "open",
            "bad_message",
        ),
        ("hello-empty-versions", _f("820080"), "start", "bad_message"),
        ("hello-version-zero", _f("82008100"), "start", "bad_message"),
        ("hello-unsorted", _f("8200820201"), "start", "bad_message"),
        # state
        ("ping-before-hello", _f("820207"), "start", "protocol_error"),
        ("second-hello", _f("82008101"), "open", "protocol_error"),
        ("hello-incompatible", _f("82008102"), "start", "incompatible_version"),
    ]
    return [{"name": n, "hex": h, "state": s, "reason": r} for n, h, s, r in rows]


def main() -> None:
    for name, data in (("vectors.json", vectors()), ("bad-frames.json", bad_frames())):
        (HERE / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
