"""The protocol's constants as types: close codes, error codes.

PROTOCOL.md names them; the page's ``frontend/js/constants.js`` carries the
same values (a test holds the two lists equal). Everything that sends a
close code or an ``error`` op takes it from here, never as a bare literal.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class CloseCode(IntEnum):
    """WebSocket close codes the server sends (RFC 6455 and Omiro's 4xxx)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    INVALID_DATA = 1007
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    RESTARTING = 1012
    PROTOCOL_ERRORS = 4000
    SLOW_CONSUMER = 4008
    RATE_LIMITED = 4029


class ErrorCode(StrEnum):
    """The ``code`` of an ``error`` op."""

    BAD_JSON = "bad_json"
    BAD_REQUEST = "bad_request"
    UNKNOWN_OP = "unknown_op"
    NOT_MATCHED = "not_matched"
    MESSAGE_TOO_LONG = "message_too_long"
    RATE_LIMITED = "rate_limited"
    BANNED = "banned"
    UNAVAILABLE = "unavailable"  # the shared backend (Redis) is not answering: try again


class PartnerReason(StrEnum):
    """The ``reason`` of ``partner_disconnected``: why the match ended, as the partner hears it."""

    NEXT = "next"
    LEFT = "left"
    REPORTED = "reported"
    TIMEOUT = "timeout"
