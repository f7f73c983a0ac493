"""The ``Date`` of a response (RFC 9110, 6.6.1), formatted once a second.

``email.utils.formatdate`` costs a few microseconds; every answer and
every WebSocket handshake carries a date, and a busy second has thousands.
"""

from __future__ import annotations

import email.utils
import time

_date = (0, "")  # (unix second, its HTTP date)


def http_date() -> str:
    """The current second as an HTTP date (``Sun, 06 Nov 1994 08:49:37 GMT``)."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, email.utils.formatdate(now, usegmt=True))
    return _date[1]
