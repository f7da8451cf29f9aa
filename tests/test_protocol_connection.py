"""The connection state machine: hello, version negotiation, ping, close, end of stream."""

from __future__ import annotations

import pytest

from syncd.sync.connection import NEED_DATA, Connection, ConnectionClosed, Event, State
from syncd.sync.errors import RemoteProtocolError
from syncd.sync.framing import frame
from syncd.sync.messages import Ack, Close, Hello, Message, Ping, Pong, encode_message


def events(conn: Connection) -> list[Event]:
    out: list[Event] = []
    while True:
        ev = conn.next_event()
        if ev is NEED_DATA or not isinstance(ev, ConnectionClosed | Message):
            break
        out.append(ev)
        if isinstance(ev, ConnectionClosed):
            break
    return out


def pair(a_versions: tuple[int, ...], b_versions: tuple[int, ...]) -> tuple[Connection, Connection]:
    a, b = Connection(), Connection()
    b.receive_data(a.send(Hello(a_versions)))
    a.receive_data(b.send(Hello(b_versions)))
    return a, b


def test_highest_common_version_is_chosen() -> None:
    a, b = pair((1, 2, 3), (2, 3, 4))
    assert events(a) == [Hello((2, 3, 4))]
    assert events(b) == [Hello((1, 2, 3))]
    assert a.version == b.version == 3
    assert a.state is b.state is State.OPEN


def test_incompatible_versions_are_reported_clearly_on_both_sides() -> None:
    a, b = pair((1,), (2, 3))
    with pytest.raises(RemoteProtocolError) as info:
        a.next_event()
    assert info.value.reason == "incompatible_version"
    assert "peer speaks 2, 3; this side speaks 1" in str(info.value)
    assert a.state is State.ERROR
    # SPEC §3.1: the side that notices says so in a close.
    b.receive_data(a.send(Close(info.value.reason, str(info.value))))
    with pytest.raises(RemoteProtocolError):
        b.next_event()  # b notices too, from the hello ...
    assert b.state is State.ERROR


def test_incompatibility_found_when_our_hello_goes_out_last() -> None:
    a, b = Connection(), Connection()
    a.receive_data(b.send(Hello((5,))))
    assert events(a) == [Hello((5,))]
    a.send(Hello((1,)))
    with pytest.raises(RemoteProtocolError) as info:
        a.next_event()
    assert info.value.reason == "incompatible_version"


def test_hello_may_carry_extra_elements_for_future_versions() -> None:
    conn = Connection()
    conn.send(Hello((1,)))
    body = bytes.fromhex("8300810163657874")  # [0, [1], "ext"]
    conn.receive_data(len(body).to_bytes(4, "big") + body)
    assert events(conn) == [Hello((1,))]
    assert conn.version == 1


def test_ping_pong_and_orderly_close() -> None:
    a, b = pair((1,), (1,))
    events(a), events(b)
    b.receive_data(a.send(Ping(42)))
    assert events(b) == [Ping(42)]
    a.receive_data(b.send(Pong(42)))
    assert events(a) == [Pong(42)]
    b.receive_data(a.send(Close("normal", "bye")))
    assert a.state is State.CLOSED
    assert events(b) == [Close("normal", "bye")]
    assert b.state is State.CLOSED
    b.receive_data(b"")
    assert events(b) == [ConnectionClosed(clean=True)]


def test_data_after_close_is_a_protocol_error() -> None:
    a, b = pair((1,), (1,))
    events(a), events(b)
    data = a.send(Close("normal", ""))
    # Forge a frame after the close: the receiver must refuse it.
    b.receive_data(data + frame(encode_message(Ack("ns", 1))))
    assert b.next_event() == Close("normal", "")
    with pytest.raises(RemoteProtocolError) as info:
        b.next_event()
    assert info.value.reason == "protocol_error"


def test_unclean_end_of_stream() -> None:
    a, _b = pair((1,), (1,))
    events(a)
    a.receive_data(b"")
    assert events(a) == [ConnectionClosed(clean=False)]
    assert a.state is State.CLOSED
