"""The wire format: pinned vectors both ways, the bad-frame corpus, and fuzzing of the decoder."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.crdt.context import CausalContext
from syncd.errors import SyncdError
from syncd.sync import cbor
from syncd.sync.connection import NEED_DATA, Connection
from syncd.sync.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from syncd.sync.framing import MAX_FRAME, FrameReader, frame
from syncd.sync.jsonform import message_from_json, message_to_json
from syncd.sync.messages import (
    Ack,
    Close,
    Deltas,
    Hello,
    Message,
    Offer,
    Ping,
    Pong,
    Summary,
    decode_message,
    encode_message,
)

PROTOCOL = Path(__file__).resolve().parent.parent / "protocol"
VECTORS: list[dict[str, Any]] = json.loads((PROTOCOL / "vectors.json").read_text())
BAD: list[dict[str, str]] = json.loads((PROTOCOL / "bad-frames.json").read_text())


def test_error_hierarchy() -> None:
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert issubclass(ProtocolError, SyncdError)


def test_vectors_cover_every_message_type() -> None:
    kinds = {v["message"]["type"] for v in VECTORS}
    assert kinds == {"hello", "close", "ping", "pong", "offer", "summary", "deltas", "ack"}


@pytest.mark.parametrize("vec", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_decodes_to_its_meaning(vec: dict[str, Any]) -> None:
    reader = FrameReader()
    reader.feed(bytes.fromhex(vec["hex"]))
    body = reader.next_frame()
    assert body is not None
    assert reader.next_frame() is None
    assert message_to_json(decode_message(body)) == vec["message"]


@pytest.mark.parametrize("vec", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_encodes_to_its_bytes(vec: dict[str, Any]) -> None:
    msg = message_from_json(vec["message"])
    assert frame(encode_message(msg)).hex() == vec["hex"]


def _connection(state: str) -> Connection:
    conn = Connection()
    conn.send(Hello((1,)))
    if state == "open":
        conn.receive_data(frame(encode_message(Hello((1,)))))
        assert isinstance(conn.next_event(), Hello)
    return conn


@pytest.mark.parametrize("bad", BAD, ids=[b["name"] for b in BAD])
def test_bad_frame_is_rejected(bad: dict[str, str]) -> None:
    conn = _connection(bad["state"])
    conn.receive_data(bytes.fromhex(bad["hex"]))
    if bad["name"].endswith("-then-eof"):
        conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.reason == bad["reason"]
    # The connection is dead: the error repeats, and only a close may be sent.
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send(Ping(1))
    assert conn.send(Close(bad["reason"], str(info.value)))


@given(st.binary(max_size=64))
def test_cbor_decoder_raises_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_message(data)


items: st.SearchStrategy[cbor.Item] = st.recursive(
    st.integers(0, 2**64 - 1) | st.booleans() | st.binary(max_size=8) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=6,
)


@given(items)
def test_cbor_subset_round_trips(item: cbor.Item) -> None:
    assert cbor.decode(cbor.encode(item)) == item


@given(items, st.integers(0, 40), st.integers(0, 255))
def test_cbor_decoder_survives_corruption(item: cbor.Item, pos: int, byte: int) -> None:
    data = bytearray(cbor.encode(item))
    data[pos % len(data)] = byte
    with contextlib.suppress(RemoteProtocolError):
        cbor.decode(bytes(data))


names = st.text(st.characters(blacklist_characters="\x00", codec="utf-8"), min_size=1, max_size=6)
contexts = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(1, 50), st.integers(0, 5)), max_size=6
).map(lambda rs: CausalContext.from_ranges((r, s, s + n) for r, s, n in rs))
messages: st.SearchStrategy[Message] = st.one_of(
    st.lists(st.integers(1, 0xFFFF), min_size=1, max_size=16, unique=True).map(
        lambda vs: Hello(tuple(sorted(vs)))
    ),
    st.builds(Close, st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True), st.text(max_size=9)),
    st.builds(Ping, st.integers(0, 2**64 - 1)),
    st.builds(Pong, st.integers(0, 2**64 - 1)),
    st.builds(
        Offer,
        st.lists(names, unique_by=lambda s: s.encode(), max_size=4).map(
            lambda ns: tuple(sorted(ns, key=str.encode))
        ),
        st.booleans(),
    ),
    st.builds(Summary, names, contexts, st.integers(0, 2)),
    st.builds(
        Deltas,
        names,
        st.integers(1, 2**64 - 1),
        st.dictionaries(names, st.binary(min_size=1, max_size=8), max_size=3).map(
            lambda d: tuple(d.items())
        ),
        contexts,
    ),
    st.builds(Ack, names, st.integers(1, 2**64 - 1)),
)


@given(messages)
def test_messages_round_trip(msg: Message) -> None:
    assert decode_message(encode_message(msg)) == msg


def test_invalid_messages_are_refused_on_the_way_out() -> None:
    with pytest.raises(LocalProtocolError):
        encode_message(Offer(("b", "a")))
    with pytest.raises(LocalProtocolError):
        encode_message(Ack("ns", 0))
    with pytest.raises(LocalProtocolError):
        encode_message(Deltas("ns", 1, (("k", b"x"), ("k", b"y"))))
    with pytest.raises(LocalProtocolError):
        frame(b"x" * 10, max_frame=5)


def test_frame_reader_reassembles_byte_by_byte() -> None:
    data = b"".join(frame(encode_message(Ping(i))) for i in range(3))
    reader = FrameReader()
    got: list[bytes] = []
    for b in data:
        reader.feed(bytes([b]))
        while (body := reader.next_frame()) is not None:
            got.append(body)
    assert [decode_message(b) for b in got] == [Ping(0), Ping(1), Ping(2)]
    reader.feed(b"")
    assert reader.at_eof


def test_declared_length_over_maximum_is_rejected_before_the_body() -> None:
    reader = FrameReader()
    reader.feed((MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError) as info:
        reader.next_frame()
    assert info.value.reason == "frame_too_large"


def test_connection_state_machine_rejects_local_misuse() -> None:
    conn = Connection()
    with pytest.raises(LocalProtocolError):
        conn.send(Ping(1))  # before the hello
    conn.send(Hello((1,)))
    with pytest.raises(LocalProtocolError):
        conn.send(Hello((1,)))
    assert conn.next_event() is NEED_DATA
