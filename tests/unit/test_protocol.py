"""Unit tests for omiro_trio.protocol: frames in, typed messages or errors out.

Plain synchronous pytest; no sockets, no clock.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from omiro_trio.errors import ProtocolViolation
from omiro_trio.protocol import (
    CAMERA_KINDS,
    MAX_CONNECT_MS,
    MAX_INTEREST_LENGTH,
    MAX_INTERESTS,
    MAX_LANGUAGE_LENGTH,
    MAX_LANGUAGES,
    MAX_MATCH_ID_LENGTH,
    MAX_REPORT_REASON_LENGTH,
    MIN_LANGUAGE_LENGTH,
    MODES,
    OP_NAMES,
    RELAYED,
    Alive,
    CallOutcome,
    CameraKind,
    Chat,
    ClientMessage,
    Disconnect,
    IceCandidate,
    JoinQueue,
    LeaveQueue,
    Limits,
    Next,
    PeerLost,
    RenewTicket,
    Report,
    Resume,
    Typing,
    WebrtcAnswer,
    WebrtcOffer,
    encode,
    error_frame,
    parse_client_frame,
    relay_data,
)

LIMITS = Limits()

ICE: dict[str, Any] = {
    "candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host",
    "sdpMid": "0",
    "sdpMLineIndex": 0,
}


def frame(op: Any, data: Any = None, *, with_data: bool = True) -> str:
    envelope: dict[str, Any] = {"op": op}
    if with_data:
        envelope["data"] = data
    return json.dumps(envelope)


def parse(text: str | bytes, limits: Limits = LIMITS) -> ClientMessage:
    return parse_client_frame(text, limits)


def violation(text: str | bytes, limits: Limits = LIMITS) -> ProtocolViolation:
    with pytest.raises(ProtocolViolation) as info:
        parse_client_frame(text, limits)
    return info.value


# -- every op parses -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "data", "expected"),
    [
        ("join_queue", {}, JoinQueue(mode="video", interests=())),
        ("join_queue", {"mode": "text"}, JoinQueue(mode="text")),
        ("join_queue", {"mode": "video", "interests": ["music"]}, JoinQueue("video", ("music",))),
        ("leave_queue", {}, LeaveQueue()),
        ("next", {}, Next()),
        ("disconnect", {}, Disconnect()),
        ("chat", {"message": "hi"}, Chat("hi")),
        ("typing", {"typing": True}, Typing(True)),
        ("typing", {"typing": False}, Typing(False)),
        ("webrtc_offer", {"sdp": "v=0 offer"}, WebrtcOffer("v=0 offer")),
        ("webrtc_answer", {"sdp": "v=0 answer"}, WebrtcAnswer("v=0 answer")),
        ("ice_candidate", {"candidate": ICE}, IceCandidate(ICE)),
        ("ice_candidate", {"candidate": None}, IceCandidate(None)),
        ("report", {}, Report("")),
        ("report", {"reason": "spam"}, Report("spam")),
        ("report", {"reason": "nudity"}, Report("nudity")),
        ("camera_kind", {"kind": "camera"}, CameraKind("camera")),
        ("camera_kind", {"kind": "virtual"}, CameraKind("virtual")),
        ("camera_kind", {"kind": "none"}, CameraKind("none")),
    ],
)
def test_parse_client_frame_accepts_every_op(op: str, data: Any, expected: ClientMessage) -> None:
    assert parse(frame(op, data)) == expected


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        ("join_queue", JoinQueue()),
        ("leave_queue", LeaveQueue()),
        ("next", Next()),
        ("disconnect", Disconnect()),
        ("report", Report()),
    ],
)
def test_parse_client_frame_data_absent_or_null_means_empty(
    op: str, expected: ClientMessage
) -> None:
    assert parse(frame(op, with_data=False)) == expected
    assert parse(frame(op, None)) == expected
    assert parse(frame(op, {})) == expected


def test_parse_client_frame_defaults() -> None:
    message = parse(frame("join_queue"))
    assert isinstance(message, JoinQueue)
    assert message.mode == "video"
    assert message.interests == ()
    assert parse(frame("report")) == Report(reason="")


def test_parse_client_frame_ignores_unknown_fields() -> None:
    text = '{"op":"chat","data":{"message":"hi","extra":[1,{"x":null}]},"id":7,"v":1}'
    assert parse(text) == Chat("hi")
    assert parse('{"data":{"typing":true},"op":"typing"}') == Typing(True)


def test_parse_client_frame_returns_frozen_messages() -> None:
    message = parse(frame("chat", {"message": "hi"}))
    assert isinstance(message, Chat)
    with pytest.raises(AttributeError):
        message.message = "changed"  # type: ignore[misc]


def test_op_names_cover_every_message_class() -> None:
    assert set(OP_NAMES) == {
        JoinQueue,
        LeaveQueue,
        Next,
        Disconnect,
        Chat,
        Typing,
        WebrtcOffer,
        WebrtcAnswer,
        IceCandidate,
        CameraKind,
        Report,
        CallOutcome,
        Alive,
        PeerLost,
        Resume,
        RenewTicket,
    }
    assert OP_NAMES[WebrtcOffer] == "webrtc_offer"
    assert OP_NAMES[IceCandidate] == "ice_candidate"
    assert OP_NAMES[CameraKind] == "camera_kind"
    assert (Chat, Typing, WebrtcOffer, WebrtcAnswer, IceCandidate, CameraKind) == RELAYED


@pytest.mark.parametrize("cls", list(OP_NAMES))
def test_op_names_round_trip_through_parse(cls: type) -> None:
    samples: dict[type, dict[str, Any]] = {
        Chat: {"message": "x"},
        Typing: {"typing": True},
        WebrtcOffer: {"sdp": "x"},
        WebrtcAnswer: {"sdp": "x"},
        IceCandidate: {"candidate": None},
        CameraKind: {"kind": "none"},
        CallOutcome: {"match_id": "m", "outcome": "failed"},
        PeerLost: {"match_id": "m"},
        Resume: {"ticket": "t"},
    }
    assert type(parse(frame(OP_NAMES[cls], samples.get(cls, {})))) is cls


# -- envelope errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", "not json", "{", '{"op":"chat"', '{"op":"chat"} trailing', "{'op':'chat'}", "nul"],
)
def test_parse_client_frame_rejects_invalid_json(text: str) -> None:
    error = violation(text)
    assert error.code == "bad_json"
    assert error.op is None
    assert "JSON" in error.message


def test_parse_client_frame_rejects_lone_surrogate_as_bad_json() -> None:
    assert violation('{"op":"chat","data":{"message":"\ud800"}}').code == "bad_json"
    # The same as a JSON escape: it could never be re-encoded for the partner.
    assert violation('{"op":"chat","data":{"message":"\\ud800"}}').code == "bad_json"


def test_parse_client_frame_accepts_escaped_surrogate_pair() -> None:
    assert parse('{"op":"chat","data":{"message":"\\ud83d\\ude00"}}') == Chat("\U0001f600")


@pytest.mark.parametrize(
    "payload",
    [
        b'{"op":"chat","data":{"message":"hi"}}',
        b"\xff\xfe\x00garbage",
        b"",
        bytearray(b'{"op":"next"}'),
    ],
)
def test_parse_client_frame_rejects_binary_frames(payload: bytes) -> None:
    error = violation(payload)
    assert error.code == "bad_request"
    assert error.op is None
    assert "text frames" in error.message


@pytest.mark.parametrize("text", ["[]", '[{"op":"chat"}]', '"chat"', "42", "1.5", "true", "null"])
def test_parse_client_frame_rejects_non_object_top_level(text: str) -> None:
    error = violation(text)
    assert error.code == "bad_request"
    assert error.op is None
    assert error.message == "the frame must be an object"


def test_parse_client_frame_rejects_missing_op() -> None:
    error = violation('{"data":{}}')
    assert (error.code, error.op, error.message) == ("bad_request", None, "op is required")


@pytest.mark.parametrize("op", [1, 1.5, True, None, [], {}, ["chat"]])
def test_parse_client_frame_rejects_non_string_op(op: Any) -> None:
    error = violation(frame(op, {}))
    assert (error.code, error.op, error.message) == ("bad_request", None, "op must be a string")


@pytest.mark.parametrize("op", ["", "CHAT", "hello", "error", "chat ", "queued", "x" * 1000])
def test_parse_client_frame_rejects_unknown_op(op: str) -> None:
    error = violation(frame(op, {}))
    assert error.code == "unknown_op"
    assert error.op == op
    assert len(error.message) < 200


@pytest.mark.parametrize("op", sorted(OP_NAMES.values()))
@pytest.mark.parametrize("data", [[], [1], "x", "", 0, 1.5, True, False])
def test_parse_client_frame_rejects_non_object_data(op: str, data: Any) -> None:
    error = violation(frame(op, data))
    assert error.code == "bad_request"
    assert error.op == op
    assert error.message == "data must be an object or null"


def test_parse_client_frame_rejects_too_deep_nesting() -> None:
    deep = "[" * 5000 + "]" * 5000
    error = violation('{"op":"chat","data":{"message":"hi","x":' + deep + "}}")
    assert error.code == "bad_request"
    error = violation('{"op":"ice_candidate","data":{"candidate":{"candidate":"c","x":' + deep)
    assert error.code in {"bad_request", "bad_json"}


# -- field types -----------------------------------------------------------------------

NOT_STRING: list[Any] = [1, 0, 1.5, True, False, None, [], ["x"], {}, {"x": "y"}]
NOT_BOOL: list[Any] = [1, 0, 1.5, "true", "false", "", None, [], [True], {}]
NOT_ARRAY: list[Any] = ["music", "", 1, 1.5, True, None, {}, {"a": 1}]
NOT_OBJECT_OR_NULL: list[Any] = ["candidate:1 1 udp", "", 1, 1.5, True, False, [], [ICE]]


def wrong(op: str, field: str, values: list[Any], message: str) -> list[tuple[str, str, Any, str]]:
    return [(op, field, value, message) for value in values]


# (op, field, wrong value, expected message)
WRONG_TYPES: list[tuple[str, str, Any, str]] = [
    *wrong("join_queue", "mode", NOT_STRING, "data.mode must be a string"),
    *wrong("join_queue", "interests", NOT_ARRAY, "data.interests must be an array"),
    *wrong(
        "join_queue",
        "interests",
        [[v] for v in NOT_STRING],
        "data.interests[0] must be a string",
    ),
    *wrong("join_queue", "interests", [["ok", 1]], "data.interests[1] must be a string"),
    *wrong("chat", "message", NOT_STRING, "data.message must be a string"),
    *wrong("typing", "typing", NOT_BOOL, "data.typing must be a boolean"),
    *wrong("webrtc_offer", "sdp", NOT_STRING, "data.sdp must be a string"),
    *wrong("webrtc_answer", "sdp", NOT_STRING, "data.sdp must be a string"),
    *wrong(
        "ice_candidate", "candidate", NOT_OBJECT_OR_NULL, "data.candidate must be an object or null"
    ),
    *wrong("report", "reason", NOT_STRING, "data.reason must be a string"),
    *wrong("camera_kind", "kind", NOT_STRING, "data.kind must be a string"),
]


@pytest.mark.parametrize(("op", "field", "value", "message"), WRONG_TYPES)
def test_parse_client_frame_rejects_wrong_field_type(
    op: str, field: str, value: Any, message: str
) -> None:
    valid: dict[str, dict[str, Any]] = {
        "join_queue": {"mode": "video", "interests": ["a"]},
        "chat": {"message": "hi"},
        "typing": {"typing": True},
        "webrtc_offer": {"sdp": "v=0"},
        "webrtc_answer": {"sdp": "v=0"},
        "ice_candidate": {"candidate": ICE},
        "report": {"reason": "spam"},
        "camera_kind": {"kind": "camera"},
    }
    data = {**valid[op], field: value}
    error = violation(frame(op, data))
    assert (error.code, error.op, error.message) == ("bad_request", op, message)


@pytest.mark.parametrize(
    ("op", "field"),
    [
        ("chat", "message"),
        ("typing", "typing"),
        ("webrtc_offer", "sdp"),
        ("webrtc_answer", "sdp"),
        ("ice_candidate", "candidate"),
        ("camera_kind", "kind"),
    ],
)
def test_parse_client_frame_rejects_missing_required_field(op: str, field: str) -> None:
    for text in [
        frame(op, {}),
        frame(op, {"other": 1}),
        frame(op, None),
        frame(op, with_data=False),
    ]:
        error = violation(text)
        assert (error.code, error.op) == ("bad_request", op)
        assert error.message == f"data.{field} is required"


# -- chat ------------------------------------------------------------------------------


def test_parse_client_frame_trims_chat() -> None:
    assert parse(frame("chat", {"message": "  hello \n"})) == Chat("hello")
    assert parse(frame("chat", {"message": "a  b"})) == Chat("a  b")


@pytest.mark.parametrize("text", ["", " ", "\n\t ", "\u3000"])
def test_parse_client_frame_rejects_empty_chat(text: str) -> None:
    error = violation(frame("chat", {"message": text}))
    assert (error.code, error.op) == ("bad_request", "chat")
    assert error.message == "data.message must not be empty"


def test_parse_client_frame_chat_length_limit_counts_characters_after_trimming() -> None:
    limits = Limits(max_chat_length=5)
    assert parse(frame("chat", {"message": "12345"}), limits) == Chat("12345")
    assert parse(frame("chat", {"message": "   12345   "}), limits) == Chat("12345")
    assert parse(frame("chat", {"message": "\U0001f600" * 5}), limits) == Chat("\U0001f600" * 5)
    error = violation(frame("chat", {"message": "123456"}), limits)
    assert (error.code, error.op) == ("message_too_long", "chat")
    assert "5 characters" in error.message


def test_parse_client_frame_default_chat_limit() -> None:
    assert parse(frame("chat", {"message": "x" * 1000})) == Chat("x" * 1000)
    assert violation(frame("chat", {"message": "x" * 1001})).code == "message_too_long"


# -- frame size ------------------------------------------------------------------------


def test_parse_client_frame_rejects_oversize_frame() -> None:
    limits = Limits(max_frame_bytes=100)
    base = frame("chat", {"message": ""})
    fits = frame("chat", {"message": "x" * (100 - len(base))})
    assert len(fits.encode()) == 100
    assert parse(fits, limits) == Chat("x" * (100 - len(base)))
    too_big = frame("chat", {"message": "x" * (101 - len(base))})
    error = violation(too_big, limits)
    assert (error.code, error.op) == ("message_too_long", None)
    assert "100 bytes" in error.message


def test_parse_client_frame_frame_size_counts_utf8_bytes() -> None:
    limits = Limits(max_frame_bytes=100)
    base = '{"op":"chat","data":{"message":""}}'
    # 20 characters, but 80 bytes of UTF-8: over the limit with the envelope.
    text = base.replace('""', '"' + "\U0001f600" * 20 + '"')
    assert len(text) < 100
    assert violation(text, limits).code == "message_too_long"
    text = base.replace('""', '"' + "\U0001f600" * 16 + '"')
    assert len(text.encode()) <= 100
    assert parse(text, limits) == Chat("\U0001f600" * 16)


def test_parse_client_frame_rejects_oversize_before_parsing() -> None:
    limits = Limits(max_frame_bytes=10)
    assert violation("not json at all", limits).code == "message_too_long"


def test_limits_reject_non_positive_values() -> None:
    with pytest.raises(ValueError, match="max_chat_length"):
        Limits(max_chat_length=0)
    with pytest.raises(ValueError, match="max_frame_bytes"):
        Limits(max_frame_bytes=0)


# -- join_queue ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["", "VIDEO", "audio", " video", "text "])
def test_parse_client_frame_rejects_unknown_mode(mode: str) -> None:
    error = violation(frame("join_queue", {"mode": mode}))
    assert (error.code, error.op) == ("bad_request", "join_queue")
    assert error.message == 'data.mode must be "video" or "voice" or "text"'


@pytest.mark.parametrize("mode", MODES)
def test_parse_client_frame_accepts_every_mode(mode: str) -> None:
    assert parse(frame("join_queue", {"mode": mode})) == JoinQueue(mode=mode)


def test_parse_client_frame_normalises_interests() -> None:
    interests = ["  Music ", "music", "", "   ", "GAMES", "art", "Games", "MUSIC"]
    message = parse(frame("join_queue", {"interests": interests}))
    assert message == JoinQueue(mode="video", interests=("music", "games", "art"))


def test_parse_client_frame_empty_interests() -> None:
    assert parse(frame("join_queue", {"interests": []})) == JoinQueue()
    assert parse(frame("join_queue", {"interests": ["", " "]})) == JoinQueue()


@pytest.mark.rule("protocol/interests")
def test_parse_client_frame_interest_count_limit_applies_after_normalising() -> None:
    ten = [f"topic{i}" for i in range(MAX_INTERESTS)]
    assert parse(frame("join_queue", {"interests": ten})) == JoinQueue(interests=tuple(ten))
    duplicated = ten + [t.upper() for t in ten] + ["", "  "]
    assert parse(frame("join_queue", {"interests": duplicated})) == JoinQueue(interests=tuple(ten))
    error = violation(frame("join_queue", {"interests": [*ten, "one more"]}))
    assert (error.code, error.op) == ("bad_request", "join_queue")
    assert error.message == f"data.interests must hold at most {MAX_INTERESTS} interests"


def test_parse_client_frame_interest_length_limit_applies_after_trimming() -> None:
    longest = "x" * MAX_INTEREST_LENGTH
    padded = f"   {longest}   "
    assert parse(frame("join_queue", {"interests": [padded]})) == JoinQueue(interests=(longest,))
    error = violation(frame("join_queue", {"interests": ["ok", longest + "x"]}))
    assert (error.code, error.op) == ("bad_request", "join_queue")
    assert f"{MAX_INTEREST_LENGTH} characters" in error.message


def test_parse_client_frame_languages_are_lower_cased_and_unique() -> None:
    joined = parse(frame("join_queue", {"languages": ["PT", "pt", "en", "Ar", "en"]}))
    assert joined == JoinQueue(languages=("pt", "en", "ar"))
    assert parse(frame("join_queue", {"languages": []})) == JoinQueue()
    assert parse(frame("join_queue", {})) == JoinQueue()  # none stated: none preferred


def test_parse_client_frame_language_count_limit_applies_after_normalising() -> None:
    five = ["pt", "es", "en", "fr", "de"][:MAX_LANGUAGES]
    assert parse(frame("join_queue", {"languages": [*five, "PT", "ES"]})).languages == tuple(five)
    error = violation(frame("join_queue", {"languages": [*five, "ar"]}))
    assert (error.code, error.op) == ("bad_request", "join_queue")
    assert error.message == f"data.languages must hold at most {MAX_LANGUAGES} languages"


@pytest.mark.parametrize(
    "code",
    ["p", "port", "pt-BR", "pt_br", " pt", "p1", "", "日本", "\u0131t", "x" * 10_000],
)
def test_parse_client_frame_language_codes_are_two_or_three_ascii_letters(code: str) -> None:
    assert MIN_LANGUAGE_LENGTH == 2
    assert MAX_LANGUAGE_LENGTH == 3
    error = violation(frame("join_queue", {"languages": ["en", code]}))
    assert (error.code, error.op) == ("bad_request", "join_queue")
    assert "2 or 3 letters" in error.message


@pytest.mark.parametrize("languages", ["pt", 7, [7], {"pt": True}, [None]])
def test_parse_client_frame_languages_of_the_wrong_type(languages: object) -> None:
    error = violation(frame("join_queue", {"languages": languages}))
    assert (error.code, error.op) == ("bad_request", "join_queue")
    assert "data.languages" in error.message


def test_parse_client_frame_voice_mode_keeps_interests_and_languages() -> None:
    joined = parse(
        frame("join_queue", {"mode": "voice", "interests": ["Jazz"], "languages": ["pt"]})
    )
    assert joined == JoinQueue(mode="voice", interests=("jazz",), languages=("pt",))


# -- webrtc ----------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["webrtc_offer", "webrtc_answer"])
def test_parse_client_frame_rejects_empty_sdp(op: str) -> None:
    error = violation(frame(op, {"sdp": ""}))
    assert (error.code, error.op, error.message) == (
        "bad_request",
        op,
        "data.sdp must not be empty",
    )


def test_parse_client_frame_keeps_sdp_verbatim() -> None:
    sdp = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n"
    assert parse(frame("webrtc_offer", {"sdp": sdp, "type": "offer"})) == WebrtcOffer(sdp)


# -- ice_candidate ---------------------------------------------------------------------


def test_parse_client_frame_keeps_ice_candidate_extra_keys() -> None:
    candidate = {**ICE, "usernameFragment": "abcd", "future": {"nested": [1, 2]}}
    message = parse(frame("ice_candidate", {"candidate": candidate}))
    assert message == IceCandidate(candidate)


@pytest.mark.parametrize(
    "candidate",
    [
        {"candidate": ""},
        {"candidate": "c", "sdpMid": None, "sdpMLineIndex": None},
        {"candidate": "c", "sdpMid": "audio", "sdpMLineIndex": 3},
        {"candidate": "c", "sdpMLineIndex": 123456789012345678901234567890},
    ],
)
def test_parse_client_frame_accepts_ice_candidate_shapes(candidate: dict[str, Any]) -> None:
    assert parse(frame("ice_candidate", {"candidate": candidate})) == IceCandidate(candidate)


@pytest.mark.parametrize(
    ("candidate", "message"),
    [
        ({}, "data.candidate.candidate must be a string"),
        ({"sdpMid": "0"}, "data.candidate.candidate must be a string"),
        ({"candidate": None}, "data.candidate.candidate must be a string"),
        ({"candidate": 1}, "data.candidate.candidate must be a string"),
        ({"candidate": ["c"]}, "data.candidate.candidate must be a string"),
        ({"candidate": "c", "sdpMid": 0}, "data.candidate.sdpMid must be a string or null"),
        ({"candidate": "c", "sdpMid": True}, "data.candidate.sdpMid must be a string or null"),
        ({"candidate": "c", "sdpMid": {}}, "data.candidate.sdpMid must be a string or null"),
        *[
            (
                {"candidate": "c", "sdpMLineIndex": v},
                "data.candidate.sdpMLineIndex must be an integer or null",
            )
            for v in ["0", 0.0, 1.5, True, False, [], {}]
        ],
    ],
)
def test_parse_client_frame_rejects_bad_ice_candidate(
    candidate: dict[str, Any], message: str
) -> None:
    error = violation(frame("ice_candidate", {"candidate": candidate}))
    assert (error.code, error.op, error.message) == ("bad_request", "ice_candidate", message)


def test_parse_client_frame_rejects_out_of_range_number_in_ice_candidate() -> None:
    error = violation('{"op":"ice_candidate","data":{"candidate":{"candidate":"c","x":1e400}}}')
    assert (error.code, error.op) == ("bad_request", "ice_candidate")
    assert error.message.startswith("data.candidate")


# -- report ----------------------------------------------------------------------------


@pytest.mark.rule("protocol/report-reasons")
def test_parse_client_frame_trims_report_reason() -> None:
    assert parse(frame("report", {"reason": "  spam\n"})) == Report("spam")
    assert parse(frame("report", {"reason": "   "})) == Report("")


@pytest.mark.rule("protocol/report-reasons")
def test_parse_client_frame_report_reason_length_limit() -> None:
    longest = "r" * MAX_REPORT_REASON_LENGTH
    assert parse(frame("report", {"reason": f" {longest} "})) == Report(longest)
    error = violation(frame("report", {"reason": longest + "r"}))
    assert (error.code, error.op) == ("bad_request", "report")
    assert f"{MAX_REPORT_REASON_LENGTH} characters" in error.message


@pytest.mark.parametrize("kind", ["", "Camera", "obs", "virtual ", "webcam", "x" * 1000])
def test_parse_client_frame_camera_kind_is_one_of_the_kinds(kind: str) -> None:
    error = violation(frame("camera_kind", {"kind": kind}))
    assert (error.code, error.op) == ("bad_request", "camera_kind")
    assert error.message == 'data.kind must be "camera" or "virtual" or "none"'
    assert CAMERA_KINDS == ("camera", "virtual", "none")


# -- relay_data ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (Chat("hi"), {"message": "hi", "from": "S"}),
        (Typing(True), {"typing": True, "from": "S"}),
        (Typing(False), {"typing": False, "from": "S"}),
        (WebrtcOffer("v=0 o"), {"sdp": "v=0 o", "from": "S"}),
        (WebrtcAnswer("v=0 a"), {"sdp": "v=0 a", "from": "S"}),
        (IceCandidate(None), {"candidate": None, "from": "S"}),
        (CameraKind("virtual"), {"kind": "virtual", "from": "S"}),
        (
            IceCandidate({**ICE, "usernameFragment": "u"}),
            {"candidate": {**ICE, "usernameFragment": "u"}, "from": "S"},
        ),
    ],
)
def test_relay_data_for_each_relayed_op(message: ClientMessage, expected: dict[str, Any]) -> None:
    assert isinstance(message, RELAYED)
    assert relay_data(message, "S") == expected


def test_relay_data_forwards_ice_candidate_as_the_client_sent_it() -> None:
    sent = {"candidate": "c", "sdpMid": None, "usernameFragment": "u", "x": [1, {"y": None}]}
    message = parse(frame("ice_candidate", {"candidate": sent}))
    assert relay_data(message, "S") == {"candidate": sent, "from": "S"}


@pytest.mark.parametrize(
    "message", [JoinQueue(), LeaveQueue(), Next(), Disconnect(), Report("spam")]
)
def test_relay_data_rejects_messages_that_are_not_relayed(message: ClientMessage) -> None:
    with pytest.raises(TypeError, match="not relayed"):
        relay_data(message, "S")


# -- encode / error_frame --------------------------------------------------------------


def test_encode_is_compact_json_envelope() -> None:
    assert encode("queued", {"mode": "video", "interests": []}) == (
        '{"op":"queued","data":{"mode":"video","interests":[]}}'
    )
    assert encode("next") == '{"op":"next","data":{}}'
    assert encode("hello", None) == '{"op":"hello","data":{}}'


def test_encode_accepts_any_mapping() -> None:
    from types import MappingProxyType

    assert json.loads(encode("x", MappingProxyType({"a": 1}))) == {"op": "x", "data": {"a": 1}}


def test_encode_round_trips_unicode() -> None:
    text = encode("chat", {"message": 'h\u00e9 \U0001f600 "q" \\', "from": "S"})
    assert isinstance(text, str)
    assert json.loads(text) == {
        "op": "chat",
        "data": {"message": 'h\u00e9 \U0001f600 "q" \\', "from": "S"},
    }


def test_error_frame_round_trip() -> None:
    text = error_frame("unknown_op", "unknown op 'x'", "x")
    assert json.loads(text) == {
        "op": "error",
        "data": {"code": "unknown_op", "message": "unknown op 'x'", "op": "x"},
    }
    assert json.loads(error_frame("bad_json", "nope", None))["data"]["op"] is None


def test_encode_relay_round_trip_through_parse() -> None:
    # What a client sends, relayed, is what the partner reads back.
    for text in [
        frame("chat", {"message": "hi"}),
        frame("typing", {"typing": True}),
        frame("webrtc_offer", {"sdp": "v=0"}),
        frame("ice_candidate", {"candidate": {**ICE, "usernameFragment": "u"}}),
        frame("camera_kind", {"kind": "virtual"}),
    ]:
        message = parse(text)
        relayed = json.loads(encode(OP_NAMES[type(message)], relay_data(message, "S")))
        sent = json.loads(text)
        assert relayed == {"op": sent["op"], "data": {**sent["data"], "from": "S"}}


def test_encode_of_parse_error_names_the_op() -> None:
    error = violation(frame("chat", {"message": 5}))
    data = json.loads(error_frame(error.code, error.message, error.op))["data"]
    assert data == {"code": "bad_request", "message": "data.message must be a string", "op": "chat"}


# -- property --------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIELD_NAMES = st.sampled_from(
    [
        "message",
        "typing",
        "sdp",
        "candidate",
        "sdpMid",
        "sdpMLineIndex",
        "mode",
        "interests",
        "kind",
    ]
)
ENVELOPES = st.builds(
    lambda op, data: json.dumps({"op": op, "data": data}),
    st.sampled_from(sorted(OP_NAMES.values())) | JSON_VALUES,
    st.dictionaries(
        FIELD_NAMES | st.text(max_size=8),
        JSON_VALUES | st.dictionaries(FIELD_NAMES, JSON_VALUES, max_size=4),
        max_size=4,
    )
    | JSON_VALUES,
)


@given(st.text() | st.binary() | ENVELOPES)
def test_parse_client_frame_only_returns_message_or_raises_violation(
    payload: str | bytes,
) -> None:
    limits = Limits(max_chat_length=50, max_frame_bytes=4096)
    try:
        outcome: ClientMessage | ProtocolViolation = parse_client_frame(payload, limits)
    except ProtocolViolation as error:
        outcome = error
    if isinstance(outcome, ProtocolViolation):
        assert outcome.code in {"bad_json", "bad_request", "unknown_op", "message_too_long"}
        assert outcome.op is None or isinstance(outcome.op, str)
        assert outcome.message
    else:
        assert type(outcome) in OP_NAMES
        # Anything accepted can be relayed without failing to encode.
        msgspec.json.encode(outcome)


# -- call_outcome ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"match_id": "m1", "outcome": "connected", "connect_ms": 840, "path": "direct"},
            CallOutcome("m1", "connected", 840, "direct"),
        ),
        (
            {"match_id": "m1", "outcome": "connected", "connect_ms": 0, "path": "relay"},
            CallOutcome("m1", "connected", 0, "relay"),
        ),
        (
            {
                "match_id": "m1",
                "outcome": "connected",
                "connect_ms": MAX_CONNECT_MS,
                "path": "relay",
            },
            CallOutcome("m1", "connected", MAX_CONNECT_MS, "relay"),
        ),
        ({"match_id": "m1", "outcome": "failed"}, CallOutcome("m1", "failed")),
        (
            {"match_id": "m1", "outcome": "failed", "path": None, "connect_ms": None, "x": 1},
            CallOutcome("m1", "failed"),
        ),
    ],
)
def test_parse_call_outcome_accepts(data: dict[str, Any], expected: CallOutcome) -> None:
    assert parse(frame("call_outcome", data)) == expected


CONNECTED: dict[str, Any] = {
    "match_id": "m1",
    "outcome": "connected",
    "connect_ms": 500,
    "path": "direct",
}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "data.match_id is required"),
        ({}, "data.match_id is required"),
        ({"match_id": "m1"}, "data.outcome is required"),
        ({**CONNECTED, "match_id": ""}, "data.match_id must be 1 to 64 characters long"),
        ({**CONNECTED, "match_id": "m" * 65}, "data.match_id must be 1 to 64 characters long"),
        ({**CONNECTED, "match_id": 7}, "data.match_id must be a string"),
        ({**CONNECTED, "outcome": "ok"}, 'data.outcome must be "connected" or "failed"'),
        ({**CONNECTED, "outcome": True}, "data.outcome must be a string"),
        (
            {**CONNECTED, "path": "turn"},
            'a "connected" outcome needs data.path "direct" or "relay"',
        ),
        ({**CONNECTED, "path": None}, 'a "connected" outcome needs data.path "direct" or "relay"'),
        ({**CONNECTED, "connect_ms": None}, "needs data.connect_ms from 0 to 600000"),
        ({**CONNECTED, "connect_ms": -1}, "needs data.connect_ms from 0 to 600000"),
        ({**CONNECTED, "connect_ms": MAX_CONNECT_MS + 1}, "needs data.connect_ms from 0 to 600000"),
        ({**CONNECTED, "connect_ms": 1.5}, "data.connect_ms must be an integer or null"),
        ({**CONNECTED, "connect_ms": "500"}, "data.connect_ms must be an integer or null"),
        ({**CONNECTED, "connect_ms": True}, "data.connect_ms must be an integer or null"),
        (
            {"match_id": "m1", "outcome": "failed", "path": "relay"},
            'a "failed" outcome has no data.path or data.connect_ms',
        ),
        (
            {"match_id": "m1", "outcome": "failed", "connect_ms": 3},
            'a "failed" outcome has no data.path or data.connect_ms',
        ),
    ],
)
def test_parse_call_outcome_rejects(data: Any, message: str) -> None:
    error = violation(frame("call_outcome", data))
    assert error.code == "bad_request"
    assert error.op == "call_outcome"
    assert message in error.message


def test_relay_frame_is_the_envelope_of_relay_data() -> None:
    """The hot path's Structs write exactly what ``relay_data`` says, in the same order."""
    from omiro_trio.protocol import OP_OF, encode_bytes, relay_frame

    for text in [
        frame("chat", {"message": 'h\u00e9 \U0001f600 "q"'}),
        frame("typing", {"typing": False}),
        frame("webrtc_offer", {"sdp": "v=0"}),
        frame("webrtc_answer", {"sdp": "v=0"}),
        frame("ice_candidate", {"candidate": ICE}),
        frame("ice_candidate", {"candidate": None}),
        frame("camera_kind", {"kind": "none"}),
    ]:
        message = parse(text)
        op = OP_OF[type(message)]
        assert op.relay is not None
        assert relay_frame(op.name, op.relay(message, "S")) == encode_bytes(
            op.name, relay_data(message, "S")
        )


# -- liveness: alive and peer_lost (issue 23) -------------------------------------------


@pytest.mark.rule("protocol/liveness-op")
def test_parse_alive_takes_no_data() -> None:
    assert parse(frame("alive")) == Alive()
    assert parse(frame("alive", with_data=False)) == Alive()
    assert parse(frame("alive", {"extra": 1})) == Alive()
    assert violation(frame("alive", [1])).code == "bad_request"


@pytest.mark.rule("protocol/liveness-op")
def test_parse_peer_lost_needs_a_match_id() -> None:
    assert parse(frame("peer_lost", {"match_id": "m1"})) == PeerLost("m1")
    for data, message in [
        ({}, "data.match_id is required"),
        ({"match_id": ""}, f"data.match_id must be 1 to {MAX_MATCH_ID_LENGTH} characters"),
        ({"match_id": "m" * (MAX_MATCH_ID_LENGTH + 1)}, "data.match_id must be 1 to"),
        ({"match_id": 7}, "data.match_id must be"),
    ]:
        error = violation(frame("peer_lost", data))
        assert error.code == "bad_request"
        assert error.op == "peer_lost"
        assert message in error.message


@pytest.mark.rule("protocol/op-resume")
def test_parse_resume_needs_a_bounded_ticket() -> None:
    assert parse(frame("resume", {"ticket": "abc"})) == Resume("abc")
    for data in [{}, {"ticket": ""}, {"ticket": "t" * 513}, {"ticket": 5}]:
        error = violation(frame("resume", data))
        assert (error.code, error.op) == ("bad_request", "resume")


@pytest.mark.rule("protocol/renew-ticket")
def test_parse_renew_ticket_takes_no_data() -> None:
    assert parse(frame("renew_ticket")) == RenewTicket()
    assert parse(frame("renew_ticket", with_data=False)) == RenewTicket()
    assert violation(frame("renew_ticket", [1])).code == "bad_request"
