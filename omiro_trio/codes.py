"""The protocol's constants as types: close codes, error codes, partner reasons.

PROTOCOL.md names them; the page's ``frontend/js/constants.js`` carries the
same close and error codes (a test holds the lists equal). Everything that
sends a close code, an ``error`` op or a ``partner_disconnected`` reason takes
it from here, never as a bare literal: the signatures that carry them ask for
these types, so a type checker refuses ``close(4008)`` or ``"left"``.
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
    BAD_TICKET = "bad_ticket"  # a match ticket that is malformed or not signed by the service
    TICKET_EXPIRED = "ticket_expired"  # a match ticket past its expiry
    TICKET_USED = "ticket_used"  # the ticket's seat was resumed already
    MATCH_OVER = "match_over"  # the match ended: the partner moved on or never came back


class PartnerReason(StrEnum):
    """Why a match ended, as ``partner_disconnected`` tells the partner."""

    NEXT = "next"  # the other side pressed next (or joined the queue again)
    LEFT = "left"  # the other side left, closed or broke its socket, or is gone
    REPORTED = "reported"  # the other side reported this one
    TIMEOUT = "timeout"  # the other side's socket stopped answering pings
    LOST = "lost"  # the connection between the two went silent (either side, liveness)
