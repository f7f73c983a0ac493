"""Client frames to typed messages, and server messages to frames.

This module is pure: no I/O, no trio, no clock. It implements the WebSocket
part of PROTOCOL.md ("WebSocket messages") and nothing else: ``OPS`` is the
table of client ops (name, message type, parser, what the partner receives
when the op is relayed), and each message the server sends on its own
behalf is a ``ServerMessage`` Struct rendered by ``server_frame``.

Invariants:

* ``parse_client_frame`` returns exactly one of the fifteen ``ClientMessage``
  classes or raises ``ProtocolViolation``; no other exception escapes it, for
  any ``str`` or ``bytes`` input (a property test holds it to that).
* A returned message is already valid and normalised: ``Chat.message`` is
  trimmed and 1..``max_chat_length`` characters; ``JoinQueue.mode`` is in
  ``MODES`` and its interests are trimmed, lower-cased, non-empty, unique,
  at most ``MAX_INTERESTS`` of at most ``MAX_INTEREST_LENGTH`` characters;
  its languages are lower-cased, unique, at most ``MAX_LANGUAGES`` codes of
  ``MIN_LANGUAGE_LENGTH``..``MAX_LANGUAGE_LENGTH`` ASCII letters;
  ``sdp`` is non-empty; an ICE candidate is ``None`` or an object whose
  ``candidate`` is a string, ``sdpMid`` string/null/absent and
  ``sdpMLineIndex`` integer/null/absent, other keys kept as sent;
  ``Report.reason`` is trimmed and at most ``MAX_REPORT_REASON_LENGTH``.
  A ``CallOutcome`` names a match (1..``MAX_MATCH_ID_LENGTH`` characters)
  and an outcome in ``CALL_OUTCOMES``; ``connected`` carries a ``path`` in
  ``CALL_PATHS`` and ``connect_ms`` in 0..``MAX_CONNECT_MS``, ``failed``
  carries neither (both ``None``). ``CameraKind.kind`` is in ``CAMERA_KINDS``.
  Every string in a message encodes to UTF-8 (lone surrogates are rejected),
  so relaying it can never fail to encode.
* Validation is strict: a JSON string is not a number, a number is not a
  boolean, ``true`` is not a string. Unknown fields are ignored everywhere.
* Each frame is decoded once into an envelope whose ``data`` stays raw JSON,
  then ``data`` is decoded by one ``msgspec`` decoder chosen by ``op``. The
  op of a ``ProtocolViolation`` is set whenever the envelope decoded.
* Lengths are counted in Unicode code points (Python ``len``); the frame
  limit is counted in UTF-8 bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Generic, TypeVar, get_args

import msgspec

from omiro_trio.codes import ErrorCode, PartnerReason
from omiro_trio.errors import ProtocolViolation

__all__ = [
    "CALL_OUTCOMES",
    "CALL_PATHS",
    "CAMERA_KINDS",
    "MAX_CONNECT_MS",
    "MAX_INTERESTS",
    "MAX_INTEREST_LENGTH",
    "MAX_LANGUAGES",
    "MAX_LANGUAGE_LENGTH",
    "MAX_MATCH_ID_LENGTH",
    "MAX_REPORT_REASON_LENGTH",
    "MIN_LANGUAGE_LENGTH",
    "MODES",
    "OPS",
    "OP_NAMES",
    "OP_OF",
    "RELAYED",
    "Alive",
    "AliveAnswer",
    "CallOutcome",
    "CameraKind",
    "Chat",
    "ClientMessage",
    "Disconnect",
    "Error",
    "Hello",
    "HelloLimits",
    "HelloLiveness",
    "IceCandidate",
    "JoinQueue",
    "LeaveQueue",
    "Limits",
    "MatchFound",
    "Next",
    "Op",
    "PartnerAwayMessage",
    "PartnerDisconnected",
    "PeerLost",
    "Queued",
    "RenewTicket",
    "Report",
    "Resume",
    "Resumed",
    "Resuming",
    "ServerDraining",
    "ServerMessage",
    "TicketMessage",
    "Typing",
    "WebrtcAnswer",
    "WebrtcOffer",
    "encode",
    "encode_bytes",
    "error_frame",
    "parse_client_frame",
    "relay_data",
    "server_frame",
]

# Queues are per mode: a voice-only client meets only voice-only clients.
MODES: Final[tuple[str, ...]] = ("video", "voice", "text")
MAX_INTERESTS: Final = 10
MAX_INTEREST_LENGTH: Final = 32
# The languages a client speaks: ISO 639 codes (a language tag's first
# subtag: "pt" of "pt-BR"), 2 or 3 letters.
MAX_LANGUAGES: Final = 5
MIN_LANGUAGE_LENGTH: Final = 2
MAX_LANGUAGE_LENGTH: Final = 3
MAX_REPORT_REASON_LENGTH: Final = 500
CALL_OUTCOMES: Final[tuple[str, ...]] = ("connected", "failed")
CALL_PATHS: Final[tuple[str, ...]] = ("direct", "relay")
MAX_MATCH_ID_LENGTH: Final = 64
MAX_CONNECT_MS: Final = 600_000  # ten minutes: anything slower is a client bug
# What kind of camera a page sends from: a webcam, a known virtual camera
# (software that can show any video), or none at all.
CAMERA_KINDS: Final[tuple[str, ...]] = ("camera", "virtual", "none")

# Longest op name echoed inside an error *message*; the ``op`` field of the
# error carries the op as sent.
_MAX_ECHOED_OP_LENGTH: Final = 64


@dataclass(frozen=True)
class Limits:
    """Per-server limits on client frames, announced to clients in ``hello``."""

    max_chat_length: int = 1000
    max_frame_bytes: int = 65536

    def __post_init__(self) -> None:
        if self.max_chat_length < 1:
            raise ValueError("max_chat_length must be at least 1")
        if self.max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be at least 1")


class JoinQueue(msgspec.Struct, frozen=True, gc=False):
    """Enter the waiting pool (leaving any current match first)."""

    mode: str = "video"
    interests: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()


class LeaveQueue(msgspec.Struct, frozen=True, gc=False):
    """Stop searching."""


class Next(msgspec.Struct, frozen=True, gc=False):
    """End the current match and rejoin with the same preferences."""


class Disconnect(msgspec.Struct, frozen=True, gc=False):
    """Leave everything; the server then closes the socket with 1000."""


class Chat(msgspec.Struct, frozen=True, gc=False):
    """A chat line for the partner, trimmed, 1..max_chat_length characters."""

    message: str


class Typing(msgspec.Struct, frozen=True, gc=False):
    """Typing indicator for the partner."""

    typing: bool


class WebrtcOffer(msgspec.Struct, frozen=True, gc=False):
    """SDP offer for the partner (non-empty)."""

    sdp: str


class WebrtcAnswer(msgspec.Struct, frozen=True, gc=False):
    """SDP answer for the partner (non-empty)."""

    sdp: str


class IceCandidate(msgspec.Struct, frozen=True):
    """An ICE candidate object as the client sent it, or ``None`` (end of candidates)."""

    candidate: dict[str, Any] | None


class CameraKind(msgspec.Struct, frozen=True, gc=False):
    """The kind of camera this side sends from (in ``CAMERA_KINDS``), for the partner's page."""

    kind: str


class Report(msgspec.Struct, frozen=True, gc=False):
    """Report the current partner; the reason is trimmed, possibly empty."""

    reason: str = ""


class Alive(msgspec.Struct, frozen=True, gc=False):
    """A liveness beat: the server answers ``alive`` and, from now on, notices this
    socket going silent while matched (``hello.liveness``)."""


class PeerLost(msgspec.Struct, frozen=True, gc=False):
    """Nothing came from the partner for the liveness bound: end match ``match_id``."""

    match_id: str


class Resume(msgspec.Struct, frozen=True, gc=False):
    """Take back this client's seat in the match its ``ticket`` names (after a reconnect)."""

    ticket: str


class RenewTicket(msgspec.Struct, frozen=True, gc=False):
    """Ask for a fresh ticket of the current match: a call may outlive its ticket."""


class CallOutcome(msgspec.Struct, frozen=True, gc=False):
    """How this side's call of one match went, for the call-success metric.

    ``connect_ms`` is the time from ``match_found`` to the first media and
    ``path`` whether the media is relayed by TURN; both only when connected.
    """

    match_id: str
    outcome: str
    connect_ms: int | None = None
    path: str | None = None


ClientMessage = (
    JoinQueue
    | LeaveQueue
    | Next
    | Disconnect
    | Chat
    | Typing
    | WebrtcOffer
    | WebrtcAnswer
    | IceCandidate
    | CameraKind
    | Report
    | CallOutcome
    | Alive
    | PeerLost
    | Resume
    | RenewTicket
)

# -- parsing ---------------------------------------------------------------------------


class _Envelope(msgspec.Struct, gc=False):
    op: str
    # Kept raw so that the op is known before ``data`` is validated.
    data: msgspec.Raw = msgspec.Raw(b"null")


_ENVELOPE_DECODER: Final = msgspec.json.Decoder(_Envelope)
_T = TypeVar("_T")


def _decoder_or_none(message_type: type[_T]) -> msgspec.json.Decoder[_T | None]:
    """A decoder for ``data``, which may be an object or null (null reads as absent)."""
    return msgspec.json.Decoder(message_type | None)


def _bad(op: str, message: str) -> ProtocolViolation:
    return ProtocolViolation(ErrorCode.BAD_REQUEST, message, op)


def _require(value: _T | None, field: str, op: str) -> _T:
    # ``data`` null or absent means {}: a required field is then missing.
    if value is None:
        raise _bad(op, f"data.{field} is required")
    return value


_JOIN_QUEUE_DECODER: Final = _decoder_or_none(JoinQueue)


def _parse_join_queue(raw: msgspec.Raw, limits: Limits) -> JoinQueue:
    message = _JOIN_QUEUE_DECODER.decode(raw)
    if message is None:
        return JoinQueue()
    if message.mode not in MODES:
        raise _bad("join_queue", "data.mode must be " + " or ".join(f'"{m}"' for m in MODES))
    if message.languages:
        message = msgspec.structs.replace(message, languages=_languages(message.languages))
    if not message.interests:
        return message
    normalised = (interest.strip().lower() for interest in message.interests)
    interests = tuple(dict.fromkeys(interest for interest in normalised if interest))
    if len(interests) > MAX_INTERESTS:
        raise _bad("join_queue", f"data.interests must hold at most {MAX_INTERESTS} interests")
    for interest in interests:
        if len(interest) > MAX_INTEREST_LENGTH:
            raise _bad(
                "join_queue",
                f"each of data.interests must be at most {MAX_INTEREST_LENGTH} characters long",
            )
    return JoinQueue(mode=message.mode, interests=interests, languages=message.languages)


def _languages(codes: tuple[str, ...]) -> tuple[str, ...]:
    """``join_queue``'s languages, lower-cased and unique (see the module invariants)."""
    languages = tuple(dict.fromkeys(code.lower() for code in codes))
    if len(languages) > MAX_LANGUAGES:
        raise _bad("join_queue", f"data.languages must hold at most {MAX_LANGUAGES} languages")
    for code in languages:
        if not (
            MIN_LANGUAGE_LENGTH <= len(code) <= MAX_LANGUAGE_LENGTH
            and code.isascii()
            and code.isalpha()
        ):
            raise _bad(
                "join_queue",
                f"each of data.languages must be a language code of {MIN_LANGUAGE_LENGTH}"
                f' or {MAX_LANGUAGE_LENGTH} letters (ISO 639, such as "pt")',
            )
    return languages


_LEAVE_QUEUE_DECODER: Final = _decoder_or_none(LeaveQueue)
_NEXT_DECODER: Final = _decoder_or_none(Next)
_DISCONNECT_DECODER: Final = _decoder_or_none(Disconnect)

_LEAVE_QUEUE: Final = LeaveQueue()
_NEXT: Final = Next()
_DISCONNECT: Final = Disconnect()


def _parse_leave_queue(raw: msgspec.Raw, limits: Limits) -> LeaveQueue:
    _LEAVE_QUEUE_DECODER.decode(raw)  # only checks that data is an object or null
    return _LEAVE_QUEUE


def _parse_next(raw: msgspec.Raw, limits: Limits) -> Next:
    _NEXT_DECODER.decode(raw)
    return _NEXT


def _parse_disconnect(raw: msgspec.Raw, limits: Limits) -> Disconnect:
    _DISCONNECT_DECODER.decode(raw)
    return _DISCONNECT


_CHAT_DECODER: Final = _decoder_or_none(Chat)


def _parse_chat(raw: msgspec.Raw, limits: Limits) -> Chat:
    message = _require(_CHAT_DECODER.decode(raw), "message", "chat")
    text = message.message.strip()
    if not text:
        raise _bad("chat", "data.message must not be empty")
    if len(text) > limits.max_chat_length:
        raise ProtocolViolation(
            ErrorCode.MESSAGE_TOO_LONG,
            f"data.message must be at most {limits.max_chat_length} characters long",
            "chat",
        )
    return message if len(text) == len(message.message) else Chat(text)


_TYPING_DECODER: Final = _decoder_or_none(Typing)


def _parse_typing(raw: msgspec.Raw, limits: Limits) -> Typing:
    message = _require(_TYPING_DECODER.decode(raw), "typing", "typing")
    return message


_WEBRTC_OFFER_DECODER: Final = _decoder_or_none(WebrtcOffer)
_WEBRTC_ANSWER_DECODER: Final = _decoder_or_none(WebrtcAnswer)


def _parse_webrtc_offer(raw: msgspec.Raw, limits: Limits) -> WebrtcOffer:
    message = _require(_WEBRTC_OFFER_DECODER.decode(raw), "sdp", "webrtc_offer")
    if not message.sdp:
        raise _bad("webrtc_offer", "data.sdp must not be empty")
    return message


def _parse_webrtc_answer(raw: msgspec.Raw, limits: Limits) -> WebrtcAnswer:
    message = _require(_WEBRTC_ANSWER_DECODER.decode(raw), "sdp", "webrtc_answer")
    if not message.sdp:
        raise _bad("webrtc_answer", "data.sdp must not be empty")
    return message


_ICE_CANDIDATE_DECODER: Final = _decoder_or_none(IceCandidate)


def _parse_ice_candidate(raw: msgspec.Raw, limits: Limits) -> IceCandidate:
    message = _require(_ICE_CANDIDATE_DECODER.decode(raw), "candidate", "ice_candidate")
    candidate = message.candidate
    if candidate is None:
        return message
    if not isinstance(candidate.get("candidate"), str):
        raise _bad("ice_candidate", "data.candidate.candidate must be a string")
    sdp_mid = candidate.get("sdpMid")
    if sdp_mid is not None and not isinstance(sdp_mid, str):
        raise _bad("ice_candidate", "data.candidate.sdpMid must be a string or null")
    index = candidate.get("sdpMLineIndex")
    if index is not None and type(index) is not int:  # bool is not an index
        raise _bad("ice_candidate", "data.candidate.sdpMLineIndex must be an integer or null")
    return message


_CAMERA_KIND_DECODER: Final = _decoder_or_none(CameraKind)


def _parse_camera_kind(raw: msgspec.Raw, limits: Limits) -> CameraKind:
    message = _require(_CAMERA_KIND_DECODER.decode(raw), "kind", "camera_kind")
    if message.kind not in CAMERA_KINDS:
        raise _bad("camera_kind", f"data.kind must be {_one_of(CAMERA_KINDS)}")
    return message


_REPORT_DECODER: Final = _decoder_or_none(Report)
_EMPTY_REPORT: Final = Report()


def _parse_report(raw: msgspec.Raw, limits: Limits) -> Report:
    message = _REPORT_DECODER.decode(raw)
    if message is None:
        return _EMPTY_REPORT
    reason = message.reason.strip()
    if len(reason) > MAX_REPORT_REASON_LENGTH:
        raise _bad(
            "report", f"data.reason must be at most {MAX_REPORT_REASON_LENGTH} characters long"
        )
    return message if len(reason) == len(message.reason) else Report(reason)


_CALL_OUTCOME_DECODER: Final = _decoder_or_none(CallOutcome)


def _one_of(values: tuple[str, ...]) -> str:
    return " or ".join(f'"{v}"' for v in values)


def _parse_call_outcome(raw: msgspec.Raw, limits: Limits) -> CallOutcome:
    op = "call_outcome"
    message = _require(_CALL_OUTCOME_DECODER.decode(raw), "match_id", op)
    if not 1 <= len(message.match_id) <= MAX_MATCH_ID_LENGTH:
        raise _bad(op, f"data.match_id must be 1 to {MAX_MATCH_ID_LENGTH} characters long")
    if message.outcome not in CALL_OUTCOMES:
        raise _bad(op, f"data.outcome must be {_one_of(CALL_OUTCOMES)}")
    if message.outcome == "failed":
        if message.path is not None or message.connect_ms is not None:
            raise _bad(op, 'a "failed" outcome has no data.path or data.connect_ms')
        return message
    if message.path not in CALL_PATHS:
        raise _bad(op, f'a "connected" outcome needs data.path {_one_of(CALL_PATHS)}')
    if message.connect_ms is None or not 0 <= message.connect_ms <= MAX_CONNECT_MS:
        raise _bad(op, f'a "connected" outcome needs data.connect_ms from 0 to {MAX_CONNECT_MS}')
    return message


_ALIVE_DECODER: Final = _decoder_or_none(Alive)
_ALIVE: Final = Alive()
_PEER_LOST_DECODER: Final = _decoder_or_none(PeerLost)


def _parse_alive(raw: msgspec.Raw, limits: Limits) -> Alive:
    _ALIVE_DECODER.decode(raw)
    return _ALIVE


def _parse_peer_lost(raw: msgspec.Raw, limits: Limits) -> PeerLost:
    op = "peer_lost"
    message = _require(_PEER_LOST_DECODER.decode(raw), "match_id", op)
    if not 1 <= len(message.match_id) <= MAX_MATCH_ID_LENGTH:
        raise _bad(op, f"data.match_id must be 1 to {MAX_MATCH_ID_LENGTH} characters long")
    return message


_RENEW_TICKET_DECODER: Final = _decoder_or_none(RenewTicket)
_RENEW_TICKET: Final = RenewTicket()


def _parse_renew_ticket(raw: msgspec.Raw, limits: Limits) -> RenewTicket:
    _RENEW_TICKET_DECODER.decode(raw)
    return _RENEW_TICKET


MAX_TICKET_LENGTH: Final = 512
_RESUME_DECODER: Final = _decoder_or_none(Resume)


def _parse_resume(raw: msgspec.Raw, limits: Limits) -> Resume:
    message = _require(_RESUME_DECODER.decode(raw), "ticket", "resume")
    if not 1 <= len(message.ticket) <= MAX_TICKET_LENGTH:
        raise _bad("resume", f"data.ticket must be 1 to {MAX_TICKET_LENGTH} characters long")
    return message


# -- the ops --------------------------------------------------------------------------

_M = TypeVar("_M", bound=ClientMessage)


# What the partner receives for a relayed op: the client's fields, tagged with
# the sender. Structs, not dicts: encoded per relayed frame, they cost less.


class ChatFrom(msgspec.Struct, frozen=True, gc=False):
    message: str
    sender: str = msgspec.field(name="from")


class TypingFrom(msgspec.Struct, frozen=True, gc=False):
    typing: bool
    sender: str = msgspec.field(name="from")


class SdpFrom(msgspec.Struct, frozen=True, gc=False):
    sdp: str
    sender: str = msgspec.field(name="from")


class CandidateFrom(msgspec.Struct, frozen=True):
    candidate: dict[str, Any] | None
    sender: str = msgspec.field(name="from")


class CameraKindFrom(msgspec.Struct, frozen=True, gc=False):
    kind: str
    sender: str = msgspec.field(name="from")


RelayedData = ChatFrom | TypingFrom | SdpFrom | CandidateFrom | CameraKindFrom


def _chat_data(message: Chat, sender: str) -> ChatFrom:
    return ChatFrom(message.message, sender)


def _typing_data(message: Typing, sender: str) -> TypingFrom:
    return TypingFrom(message.typing, sender)


def _sdp_data(message: WebrtcOffer | WebrtcAnswer, sender: str) -> SdpFrom:
    return SdpFrom(message.sdp, sender)


def _candidate_data(message: IceCandidate, sender: str) -> CandidateFrom:
    return CandidateFrom(message.candidate, sender)


def _camera_kind_data(message: CameraKind, sender: str) -> CameraKindFrom:
    return CameraKindFrom(message.kind, sender)


@dataclass(frozen=True, slots=True)
class Op(Generic[_M]):
    """One client op: its name on the wire, its message type, its parser, and for an
    op relayed to the partner, the ``data`` the partner receives (tagged ``"from"``).

    A relayed op is handled whole by ``session_core`` (the partner gets the
    same op); any other op needs a rule there too (``SessionCore`` checks at
    import that every op has one).
    """

    name: str
    message: type[_M]
    parse: Callable[[msgspec.Raw, Limits], _M]
    relay: Callable[[_M, str], RelayedData] | None = None

    @property
    def relayed(self) -> bool:
        return self.relay is not None


OPS: Final[tuple[Op[Any], ...]] = (
    Op("join_queue", JoinQueue, _parse_join_queue),
    Op("leave_queue", LeaveQueue, _parse_leave_queue),
    Op("next", Next, _parse_next),
    Op("disconnect", Disconnect, _parse_disconnect),
    Op("chat", Chat, _parse_chat, _chat_data),
    Op("typing", Typing, _parse_typing, _typing_data),
    Op("webrtc_offer", WebrtcOffer, _parse_webrtc_offer, _sdp_data),
    Op("webrtc_answer", WebrtcAnswer, _parse_webrtc_answer, _sdp_data),
    Op("ice_candidate", IceCandidate, _parse_ice_candidate, _candidate_data),
    Op("camera_kind", CameraKind, _parse_camera_kind, _camera_kind_data),
    Op("report", Report, _parse_report),
    Op("call_outcome", CallOutcome, _parse_call_outcome),
    Op("alive", Alive, _parse_alive),
    Op("peer_lost", PeerLost, _parse_peer_lost),
    Op("resume", Resume, _parse_resume),
    Op("renew_ticket", RenewTicket, _parse_renew_ticket),
)
"""Every client op, once: adding an op is a row here (and, unless it is
relayed, a rule in ``session_core``)."""

OP_OF: Final[dict[type, Op[Any]]] = {op.message: op for op in OPS}
"""Each message type's op."""

OP_NAMES: Final[dict[type, str]] = {op.message: op.name for op in OPS}
"""Each message type's op name."""

RELAYED: Final[tuple[type, ...]] = tuple(op.message for op in OPS if op.relayed)
"""The message types relayed to the partner."""

_PARSERS: Final[dict[str, Callable[[msgspec.Raw, Limits], ClientMessage]]] = {
    op.name: op.parse for op in OPS
}
assert set(OP_OF) == set(get_args(ClientMessage))


def frame_too_big(frame: str | bytes, max_bytes: int) -> bool:
    """Whether a frame is over ``max_bytes`` (UTF-8 bytes for a text frame).

    A code point is at most 4 UTF-8 bytes: text is encoded only when the
    limit could be exceeded.
    """
    if isinstance(frame, bytes):
        return len(frame) > max_bytes
    return len(frame) * 4 > max_bytes and (
        len(frame) > max_bytes or len(frame.encode("utf-8", "surrogatepass")) > max_bytes
    )


def parse_client_frame(frame: str | bytes, limits: Limits) -> ClientMessage:
    """Decode and validate one client frame.

    Args:
        frame: the payload of one WebSocket message; ``bytes`` means a binary
            frame, which the protocol does not allow.
        limits: the server's limits.

    Returns:
        The typed, normalised message (see the module invariants).

    Raises:
        ProtocolViolation: with the PROTOCOL.md code (``bad_json``,
            ``bad_request``, ``unknown_op``, ``message_too_long``), a sentence
            naming the offending field, and the op when the envelope could be
            read (else ``None``).
    """
    if not isinstance(frame, str):
        raise ProtocolViolation(ErrorCode.BAD_REQUEST, "only text frames are accepted, not binary")
    if frame_too_big(frame, limits.max_frame_bytes):
        raise ProtocolViolation(
            ErrorCode.MESSAGE_TOO_LONG, f"the frame is larger than {limits.max_frame_bytes} bytes"
        )
    try:
        envelope = _ENVELOPE_DECODER.decode(frame)
    except msgspec.ValidationError as exc:
        raise ProtocolViolation(ErrorCode.BAD_REQUEST, _describe(exc, "")) from None
    except msgspec.DecodeError as exc:
        raise ProtocolViolation(
            ErrorCode.BAD_JSON, f"the frame is not valid JSON ({exc})"
        ) from None
    except UnicodeEncodeError:
        raise ProtocolViolation(ErrorCode.BAD_JSON, "the frame is not valid UTF-8") from None
    except RecursionError:
        raise ProtocolViolation(ErrorCode.BAD_REQUEST, "the frame is nested too deeply") from None

    op = envelope.op
    parser = _PARSERS.get(op)
    if parser is None:
        shown = repr(op) if len(op) <= _MAX_ECHOED_OP_LENGTH else "(name too long to show)"
        raise ProtocolViolation(ErrorCode.UNKNOWN_OP, f"unknown op {shown}", op)
    try:
        return parser(envelope.data, limits)
    except msgspec.ValidationError as exc:
        raise ProtocolViolation(ErrorCode.BAD_REQUEST, _describe(exc, "data"), op) from None
    except RecursionError:
        raise ProtocolViolation(ErrorCode.BAD_REQUEST, "data is nested too deeply", op) from None


# msgspec's ValidationError texts, e.g. "Expected `str`, got `int` - at `$.message`".
_EXPECTED_RE: Final = re.compile(r"Expected `([^`]+)`, got `([^`]+)`(?: - at `\$([^`]*)`)?")
_MISSING_RE: Final = re.compile(r"Object missing required field `([^`]+)`(?: - at `\$([^`]*)`)?")
_OTHER_RE: Final = re.compile(r"(.+?)(?: - at `\$([^`]*)`)?")
_TYPE_NAMES: Final = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "object": "an object",
    "array": "an array",
    "null": "null",
}


def _field(prefix: str, path: str | None) -> str:
    name = (prefix + (path or "")).lstrip(".")
    return name or "the frame"


def _describe(exc: msgspec.ValidationError, prefix: str) -> str:
    """Turn msgspec's validation error into a sentence naming the field.

    ``prefix`` is where the decoded value sits in the frame (``"data"`` or
    ``""`` for the envelope).
    """
    text = str(exc)
    if match := _EXPECTED_RE.fullmatch(text):
        expected, _got, path = match.groups()
        kinds = " or ".join(_TYPE_NAMES.get(k, k) for k in expected.split(" | "))
        return f"{_field(prefix, path)} must be {kinds}"
    if match := _MISSING_RE.fullmatch(text):
        name, path = match.groups()
        return f"{_field(prefix, path)}.{name} is required".removeprefix("the frame.")
    if match := _OTHER_RE.fullmatch(text):
        what, path = match.groups()
        return f"{_field(prefix, path)} is invalid: {what[:1].lower()}{what[1:]}"
    return f"{_field(prefix, None)} is invalid"  # pragma: no cover - _OTHER_RE matches any text


# -- encoding --------------------------------------------------------------------------

_ENCODER: Final = msgspec.json.Encoder()
_EMPTY: Final[Mapping[str, Any]] = {}


def encode(op: str, data: Mapping[str, Any] | None = None) -> str:
    """Render one server message as a compact JSON text frame.

    ``data`` may hold anything msgspec encodes (dicts, lists, str, int, float,
    bool, None, Structs); ``None`` means ``{}``.
    """
    if data is None:
        data = _EMPTY
    elif not isinstance(data, dict):
        data = dict(data)
    return _ENCODER.encode({"op": op, "data": data}).decode("utf-8")


def encode_bytes(op: str, data: Mapping[str, Any]) -> bytes:
    """``encode`` as UTF-8 bytes, ready for the socket (no round trip through ``str``)."""
    return _ENCODER.encode({"op": op, "data": data})


def error_frame(
    code: ErrorCode, message: str, op: str | None, *, retry_after: int | None = None
) -> str:
    """The ``error`` message for a PROTOCOL.md error code.

    ``retry_after``: whole seconds until ``op`` would be accepted (a refused
    ``next`` or ``join_queue``), sent only when given.
    """
    return server_frame(Error(code, message, op, retry_after))


# -- server messages -------------------------------------------------------------------
#
# Each message the server sends on its own behalf is a Struct here, named
# like its op, encoded by ``server_frame`` alone. (A relayed message is the
# client's own op, built by its row of ``OPS``.)


class ServerMessage(msgspec.Struct, frozen=True, gc=False):
    """Base of the server's own messages; ``op`` is the op name on the wire."""

    op: ClassVar[str]


class HelloLimits(msgspec.Struct, frozen=True, gc=False):
    max_chat_length: int
    max_frame_bytes: int


class HelloLiveness(msgspec.Struct, frozen=True, gc=False):
    """How often a client beats (``alive_ms``), when a silent link is unstable
    (``unstable_ms``) and when it is lost (``lost_ms``)."""

    alive_ms: int
    unstable_ms: int
    lost_ms: int


class Hello(ServerMessage, frozen=True):
    """The first message on every socket: who the client is and what it may send."""

    op: ClassVar[str] = "hello"
    session_id: str
    ice_servers: list[dict[str, Any]]
    ice_transport_policy: str
    limits: HelloLimits
    liveness: HelloLiveness = HelloLiveness(2500, 3750, 15000)
    ticket_ttl_ms: int = 0  # how long a match ticket lasts from its issue; 0: no tickets


class AliveAnswer(ServerMessage, frozen=True):
    """The answer to a client's ``alive``: the socket works both ways."""

    op: ClassVar[str] = "alive"


class Queued(ServerMessage, frozen=True, omit_defaults=True):
    """Waiting; ``languages`` is left out when the client stated none."""

    op: ClassVar[str] = "queued"
    mode: str
    interests: tuple[str, ...]
    languages: tuple[str, ...] = ()


class MatchFound(ServerMessage, frozen=True, omit_defaults=True):
    """A match formed; ``pair`` (PROTOCOL.md "Pair tag") is left out when unknown,
    ``common_languages`` when the two share none, ``ticket`` when the server
    signs none."""

    op: ClassVar[str] = "match_found"
    partner: str
    match_id: str
    should_call: bool
    mode: str
    common_interests: tuple[str, ...]
    pair: str | None = None
    common_languages: tuple[str, ...] = ()
    ticket: str | None = None  # this side's match ticket


class Resumed(ServerMessage, frozen=True, omit_defaults=True):
    """Both seats of a ticket's match came back: the match goes on (under a new id)."""

    op: ClassVar[str] = "resumed"
    partner: str
    match_id: str
    should_call: bool
    mode: str
    resumed_from: str  # the match id the tickets named
    ticket: str | None = None


class TicketMessage(ServerMessage, frozen=True):
    """A fresh ticket of the current match ``match_id`` (the answer to ``renew_ticket``)."""

    op: ClassVar[str] = "ticket"
    match_id: str
    ticket: str


class PartnerAwayMessage(ServerMessage, frozen=True):
    """The partner's socket is gone; it may take its seat back within ``grace_ms``."""

    op: ClassVar[str] = "partner_away"
    grace_ms: int


class Resuming(ServerMessage, frozen=True):
    """The seat is held: waiting up to ``grace_ms`` for the partner to come back."""

    op: ClassVar[str] = "resuming"
    grace_ms: int


class PartnerDisconnected(ServerMessage, frozen=True):
    op: ClassVar[str] = "partner_disconnected"
    reason: PartnerReason


class Error(ServerMessage, frozen=True, omit_defaults=True):
    """An error; ``retry_after`` only on a refused skip (left out otherwise)."""

    op: ClassVar[str] = "error"
    code: ErrorCode
    message: str
    op_: str | None = msgspec.field(name="op")
    retry_after: int | None = None


class ServerDraining(ServerMessage, frozen=True):
    op: ClassVar[str] = "server_draining"
    reconnect_after_ms: int


def server_frame(message: ServerMessage) -> str:
    """Render one of the server's own messages as a compact JSON text frame."""
    return _ENCODER.encode({"op": message.op, "data": message}).decode("utf-8")


def relay_data(message: ClientMessage, sender: str) -> dict[str, Any]:
    """The ``data`` the partner receives for a relayed message, tagged ``"from": sender``.

    Raises:
        TypeError: ``message`` is not one of ``RELAYED`` (a bug in the caller).
    """
    relay = OP_OF[type(message)].relay
    if relay is None:
        raise TypeError(f"{type(message).__name__} is not relayed to the partner")
    data: dict[str, Any] = msgspec.to_builtins(relay(message, sender))
    return data


class _Relayed(msgspec.Struct, frozen=True, gc=False):
    op: str
    data: RelayedData


def relay_frame(op: str, data: RelayedData) -> bytes:
    """The frame the partner receives for relayed op ``op`` (UTF-8 bytes, ready to send)."""
    return _ENCODER.encode(_Relayed(op, data))
