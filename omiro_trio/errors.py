"""Omiro's exceptions, split by whose fault they are.

* ``ProtocolViolation``: a client sent something wrong. It carries the
  PROTOCOL.md error code and becomes an ``error`` op or a close code; it never
  reaches the log as a traceback.
* ``ConfigError``: the operator's configuration is wrong; names key and file.
* ``BackendUnavailable``: the environment failed (Redis gone); raised ``from``
  its cause. ``SessionElsewhere`` is the one kind that is news, not a
  failure: the session is held by another of its sockets now.

Anything else is a bug and should be loud.
"""

from __future__ import annotations

from omiro_trio.codes import ErrorCode


class OmiroError(Exception):
    """Root of every error Omiro raises on purpose."""


class ProtocolViolation(OmiroError):
    """A client frame broke the wire contract.

    Args:
        code: the PROTOCOL.md error code (``bad_json``, ``bad_request``,
            ``unknown_op``, ``message_too_long``, ...).
        message: human-readable text for the client.
        op: the offending op, when it could be read.
    """

    def __init__(self, code: ErrorCode, message: str, op: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.op = op


class ConfigError(OmiroError):
    """The configuration is invalid; the message names the key and the file."""


class BackendUnavailable(OmiroError):
    """The shared backend did not answer."""


class SessionElsewhere(BackendUnavailable):
    """The session has a socket elsewhere now (on another server): this one may not act for it."""


class InvalidToken(OmiroError):
    """A session token is missing, malformed, forged or expired."""


class InvalidTicket(OmiroError):
    """A match ticket is malformed, forged or expired; ``code`` says which for the client."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
