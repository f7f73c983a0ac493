"""The ``websockets`` internals the WebSocket engine relies on are still there.

``wsengine.py`` reaches below ``websockets``' documented sans-I/O surface: it
overrides ``send_frame`` (to coalesce pongs), replaces the ``parser``
generator (to let the handshake request go), re-queues ``events``, reads
``reader`` and clears ``parser_exc``, ``handshake_exc``, ``events`` and
``writes`` (to free a closed connection by reference counting alone).
pyproject.toml pins ``websockets``' major version for that reason. If a
release changes any of them, these fail loudly: what the engine would
silently lose is named in each assertion.
"""

from __future__ import annotations

import inspect
import types

import websockets
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import Protocol, Side, State
from websockets.server import ServerProtocol

from omiro_trio import wsengine

REQUEST = (
    b"GET /ws HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _client_frames(*frames: Frame) -> bytes:
    client = Protocol(Side.CLIENT)
    for frame in frames:
        client.send_frame(frame)
    return b"".join(client.data_to_send())


def _open() -> wsengine.EngineProtocol:
    proto = wsengine.new_protocol(65536)
    proto.receive_data(REQUEST)
    request = wsengine.handshake_request(proto)
    assert request is not None
    proto.send_response(proto.accept(request))
    proto.data_to_send()
    assert proto.state is State.OPEN
    return proto


def test_websockets_is_the_major_version_the_engine_was_checked_on() -> None:
    assert websockets.__version__.split(".")[0] == "17"


def test_every_frame_the_protocol_sends_still_goes_through_send_frame() -> None:
    assert "send_frame" in vars(Protocol), "the engine's pong coalescing overrides it"
    assert wsengine.EngineProtocol.send_frame is not Protocol.send_frame
    proto = _open()
    proto.receive_data(_client_frames(Frame(Opcode.PING, b"1"), Frame(Opcode.PING, b"2")))
    assert proto.data_to_send() == [], (
        "the protocol answered pings without send_frame: a ping flood queues a pong each"
    )
    assert proto.pong is not None
    assert proto.pong.data == b"2"
    proto.take_pong()
    assert len(proto.data_to_send()) == 1


def test_the_frame_parser_is_still_a_generator_the_engine_can_replace() -> None:
    assert inspect.isgeneratorfunction(Protocol.parse), (
        "_forget_handshake starts a fresh Protocol.parse to let the handshake request go"
    )
    proto = _open()
    assert isinstance(proto.parser, types.GeneratorType)
    reader = proto.reader
    why = "the engine checks the reader is at a frame's start (empty buffer, no eof)"
    assert isinstance(reader.buffer, bytearray | bytes), why
    assert isinstance(reader.eof, bool), why
    proto.parser = Protocol.parse(proto)
    next(proto.parser)
    proto.receive_data(_client_frames(Frame(Opcode.TEXT, b"after")))
    assert [bytes(e.data) for e in proto.events_received() if isinstance(e, Frame)] == [b"after"]


def test_events_are_still_a_list_the_handshake_can_put_frames_back_in() -> None:
    proto = wsengine.new_protocol(65536)
    proto.receive_data(REQUEST + _client_frames(Frame(Opcode.TEXT, b"behind")))
    assert isinstance(proto.events, list)
    assert isinstance(proto.events[0], Request)
    request = wsengine.handshake_request(proto)
    assert request is not None
    assert [bytes(e.data) for e in proto.events if isinstance(e, Frame)] == [b"behind"], (
        "frames pipelined behind the upgrade would be lost"
    )


def test_what_release_clears_is_still_where_the_engine_clears_it() -> None:
    proto = _open()
    state = vars(proto)
    for name in ("parser", "parser_exc", "handshake_exc", "events", "writes"):
        assert name in state, (
            f"ServerProtocol no longer keeps {name}: a closed connection may be freed "
            "only by the cycle collector, or never"
        )
    assert isinstance(proto.writes, list)
    assert isinstance(proto, ServerProtocol)
    assert {"close_sent", "close_rcvd", "eof_sent", "state"} <= set(dir(proto))


def test_a_protocol_can_still_be_made_open_and_parses_frames_at_once() -> None:
    """The plain upgrade (``wsengine.open_protocol``) makes its protocol past the handshake
    through the constructor's ``state``; the subprotocol and origin are the attributes
    ``process_request`` sets."""
    assert "state" in inspect.signature(ServerProtocol.__init__).parameters
    proto = wsengine.open_protocol(65536, "omiro", "http://a")
    assert proto.state is State.OPEN
    assert (proto.subprotocol, proto.origin) == ("omiro", "http://a")
    proto.receive_data(_client_frames(Frame(Opcode.TEXT, b"first")))
    assert [bytes(e.data) for e in proto.events_received() if isinstance(e, Frame)] == [b"first"]
    proto.send_text(b"out")
    assert proto.data_to_send() == [b"\x81\x03out"]


def test_accept_is_still_process_request_and_a_101() -> None:
    """``EngineProtocol.accept`` is websockets' own but for the date's cache: it relies on
    ``process_request`` returning the three headers' values, and on ``accept`` building
    nothing else for a 101."""
    assert "process_request" in vars(ServerProtocol)
    ours, theirs = wsengine.new_protocol(65536), wsengine.new_protocol(65536)
    for proto in (ours, theirs):
        proto.receive_data(REQUEST)
    ours_request = wsengine.handshake_request(ours)
    theirs_request = wsengine.handshake_request(theirs)
    assert ours_request is not None
    assert theirs_request is not None
    mine = ours.accept(ours_request)
    own = ServerProtocol.accept(theirs, theirs_request)
    assert (
        (mine.status_code, mine.reason_phrase)
        == (own.status_code, own.reason_phrase)
        == (
            101,
            "Switching Protocols",
        )
    )
    assert [(k, v) for k, v in mine.headers.raw_items() if k != "Date"] == [
        (k, v) for k, v in own.headers.raw_items() if k != "Date"
    ]
    assert [k for k, _ in mine.headers.raw_items()] == [k for k, _ in own.headers.raw_items()]
