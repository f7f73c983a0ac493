"""The deadlines of an HTTP connection, as one value passed in."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_DEADLINES", "Deadlines"]


@dataclass(frozen=True, slots=True)
class Deadlines:
    """How long each wait of an HTTP connection may take, in seconds.

    The defaults are the ones ``docs/security.md`` states; ``server.serve``
    passes them to the HTTP layer (and the keep-alive one to hypercorn), and
    a test may pass others.

    Attributes:
        head_s: for a request head: the first one from the connection, a
            later one from its first byte.
        body_s: for a request body, from the end of its head.
        keepalive_s: for the next request, from the last response.
        send_s: for writing one response (or one chunk of it).
        stall_s: for any read or write at all, whatever hypercorn waits for.
    """

    head_s: float = 10.0
    body_s: float = 30.0
    keepalive_s: float = 30.0
    send_s: float = 30.0
    stall_s: float = 60.0


DEFAULT_DEADLINES = Deadlines()
"""The deadlines a server runs with unless told otherwise (docs/security.md)."""
