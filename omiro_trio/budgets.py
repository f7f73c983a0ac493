"""What one connection may make the server spend: every budget, stated once.

Each budget is enforced where its resource is spent, and its number lives
here (or, when an operator may change it, in ``config.py``, named below), so
that ``docs/security.md``'s budget table, the code and the tests read the
same constant:

* **A request head** (``http/serve.py``, ``http/streams.py``): at most
  ``MAX_HEAD_BYTES`` from its first byte to the end of its blank line. The
  size is checked before any parsing, on every request of a connection, and
  a head over it is answered 431 whether it is complete or not. Every head
  parser on client bytes (the plain readers ``simple_get`` and
  ``simple_upgrade``, h11, the WebSocket handshake's) costs time linear in
  the head's size. A head begun and not whole within ``Deadlines.head_s``
  (``http/deadlines.py``) is a pending handshake past its budget: the
  connection is closed.
* **A request body** (``web.py``): at most ``MAX_BODY_BYTES``, or 413.
  Nothing the HTTP app serves takes a body larger than a ban request.
* **A WebSocket message being assembled** (``wsengine.py``): at most
  ``server.max_frame_bytes`` of payload (``websockets`` checks the
  announced length before it buffers a byte) and ``MAX_MESSAGE_FRAGMENTS``
  frames, an empty continuation frame counting like any other; over
  either, close 1009. Fragments are joined into one buffer, so a fragment
  costs no memory beyond its payload.
* **Work per read** (``wsengine.py``): the protocol parses at most
  ``PARSE_SLICE_BYTES`` of what a socket sent before the session's rules
  (rates, errors, the limits above) get their say, so a read packed with
  tiny frames is cut off within one slice once a limit closes the socket.
  A ping's answer is coalesced: one pong per slice at most, answering the
  latest ping (RFC 6455, 5.5.3).
* **Bytes queued for a slow reader** (``wsengine.py``): whole frames and
  the unsent part of a write together, at most ``server.send_queue_bytes``,
  and at most ``server.send_queue`` frames; past either, close 4008.
* **Skips** (``session_core.py``): every entry into the queue spends one of
  ``limits.nexts_per_minute``, except the first after the partner ended
  the match; over it, ``error`` ``rate_limited`` and the match goes on.

Each refusal is counted in ``omiro_budget_exceeded_total{budget}`` with the
label of ``Budget``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

MAX_HEAD_BYTES: Final = 16384
MAX_BODY_BYTES: Final = 65536
MAX_MESSAGE_FRAGMENTS: Final = 64
PARSE_SLICE_BYTES: Final = 4096


class Budget(StrEnum):
    """The label of ``omiro_budget_exceeded_total`` for each budget."""

    HEAD = "head"  # 431
    HANDSHAKE = "handshake"  # a head begun and not whole by its deadline: closed
    BODY = "body"  # 413
    MESSAGE_SIZE = "message_size"  # 1009
    FRAGMENTS = "fragments"  # 1009
    SEND_QUEUE = "send_queue"  # 4008
    SKIPS = "skips"  # error rate_limited
