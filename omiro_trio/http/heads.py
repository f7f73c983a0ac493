"""Request heads: their end, their budget, and the three readers of them.

``parse_head`` and ``HttpStream`` (``streams.py``) read heads with h11;
``simple_get`` reads, without h11, only a plain ``GET`` head that h11 would
read the same way (a property test holds it), so that the usual first
request needs no h11; ``simple_upgrade`` reads a plain upgrade head as
``websockets`` would (a property test holds that too), so that the usual
upgrade is parsed once. Every head is held to ``budgets.MAX_HEAD_BYTES``
before anything parses it (``head_too_large``), and every reader here
costs time linear in the head's size: ``simple_get``, ``simple_upgrade``
and ``head_end`` scan with ``bytes`` and ``str`` methods only (no regular
expression on client bytes), and h11's own reader is linear (a property
test holds them all).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import h11

from omiro_trio.budgets import MAX_HEAD_BYTES

__all__ = [
    "RequestHead",
    "ends_connection",
    "head_end",
    "head_from_h11",
    "head_too_large",
    "header_tokens",
    "parse_head",
    "simple_get",
    "simple_upgrade",
]


@dataclass(slots=True)  # (not frozen: a frozen dataclass costs more to build, per request)
class RequestHead:
    """A request line and its headers; nothing changes them once read."""

    target: str
    headers: dict[str, list[str]]  # lower-case name -> values in order
    method: str = "GET"
    version: str = "1.1"  # the request line's HTTP version

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower-case), if it was sent."""
        values = self.headers.get(name)
        return values[0] if values else None

    @property
    def path(self) -> str:
        """The target without its query."""
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        """The target's query, as ``urllib.parse.urlsplit`` finds it."""
        target = self.target
        if target.isascii() and target.isprintable() and " " not in target:
            return target.partition("#")[0].partition("?")[2]  # what urlsplit does with it
        return urlsplit(target).query  # (it drops some characters first)


def head_end(data: bytes | bytearray, start: int = 0) -> int:
    """Where the head at the start of ``data`` ends (just past its blank line), or -1.

    The blank line is found as h11 finds it (``\\n\\n`` or ``\\n\\r\\n``),
    searching from ``start`` (a search resumed after more bytes came should
    start two bytes before the old end, where a blank line may straddle them).
    Two scans of the bytes, whatever they hold.
    """
    bare = data.find(b"\n\n", start)
    crlf = data.find(b"\n\r\n", start, bare + 1 if bare >= 0 else len(data))
    if crlf >= 0:
        return crlf + 3
    return bare + 2 if bare >= 0 else -1


def head_too_large(data: bytes | bytearray, end: int) -> bool:
    """Whether the head starting ``data`` and ending at ``end`` (-1: not yet) is over budget."""
    return end > MAX_HEAD_BYTES or (end < 0 and len(data) > MAX_HEAD_BYTES)


def head_complete(data: bytes | bytearray) -> bool:
    """Whether ``data`` holds a whole head (or more than any head may be)."""
    return len(data) > MAX_HEAD_BYTES or head_end(data) >= 0


def head_from_h11(event: h11.Request) -> RequestHead:
    """The head of a request h11 read."""
    headers: dict[str, list[str]] = {}
    for name, value in event.headers:
        headers.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
    return RequestHead(
        event.target.decode("latin-1"),
        headers,
        method=event.method.decode(),
        version=event.http_version.decode(),
    )


def parse_head(data: bytes) -> RequestHead | None:
    """The request line and headers, or None when h11 cannot read them."""
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    try:
        connection.receive_data(data)
        event = connection.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return None
    return head_from_h11(event)


_VALUE_CHARS = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
_HEAD_CHARS = _VALUE_CHARS + b"\r\n"  # a value's characters, and line ends
_SIMPLE_START = b"GET /"
_SIMPLE_VERSION = " HTTP/1.1"
_BODY = frozenset({"content-length", "transfer-encoding"})
_NOT_SIMPLE = _BODY | {"upgrade"}
# What the plain readers take at most: websockets' own limits (so that a plain
# upgrade is one websockets would read too), well within any plain GET.
MAX_PLAIN_LINES: Final = 128  # websockets' MAX_NUM_HEADERS (the request line aside)
MAX_PLAIN_LINE_BYTES: Final = 8192  # websockets' MAX_LINE_LENGTH, its CRLF included
_MAX_LINE = MAX_PLAIN_LINE_BYTES - 2


def simple_get(data: bytes) -> RequestHead | None:
    """A plain ``GET`` head at the start of ``data``, read without h11; else None.

    Reads only a strict subset of what h11 reads the same way: HTTP/1.1,
    CRLF line ends, a target of visible ASCII, header names of letters,
    digits and dashes, values of visible characters, exactly one ``Host``,
    no more lines than ``MAX_PLAIN_LINES`` and none longer than
    ``MAX_PLAIN_LINE_BYTES``, and nothing that announces a body or a
    protocol switch.
    Anything else (None) is for h11, which accepts or refuses it as ever.

    Linear in the head's size: ``bytes`` and ``str`` scans (``find``,
    ``count``, ``translate``, ``decode``, ``split``, ``partition``,
    ``strip``) and one pass over its lines; nothing backtracks. A head over
    ``MAX_HEAD_BYTES`` is None.
    """
    read = _simple(data)
    if read is None or not _NOT_SIMPLE.isdisjoint(read[0].headers):
        return None
    return read[0]


def simple_upgrade(data: bytes) -> tuple[RequestHead, int] | None:
    """A plain WebSocket upgrade head at the start of ``data`` and where it ends; else None.

    The same strict subset as ``simple_get``, an ``Upgrade`` header
    allowed, read the same way ``websockets`` reads it (a property test
    holds it; the line limits are ``websockets``' own). Anything else
    (None) is for ``websockets``, which accepts or refuses it as ever.
    """
    read = _simple(data)
    if read is None or not _BODY.isdisjoint(read[0].headers):
        return None
    return read


def _simple(data: bytes) -> tuple[RequestHead, int] | None:
    if not data.startswith(_SIMPLE_START):
        return None
    end = data.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES)
    if end < 0:
        return None
    head = data[:end]
    crlf = head.count(b"\r\n")
    if head.count(b"\n") != crlf or head.count(b"\r") != crlf:
        return None  # a bare CR or LF: h11's to read (or refuse)
    if crlf > MAX_PLAIN_LINES:
        return None
    if head.translate(None, _HEAD_CHARS):
        return None  # a control character (a value's are refused; a target's too)
    request_line, *lines = head.decode("latin-1").split("\r\n")
    if not request_line.endswith(_SIMPLE_VERSION) or len(request_line) > _MAX_LINE:
        return None
    target = request_line[4 : -len(_SIMPLE_VERSION)]
    if not target.isascii() or " " in target or "\t" in target:
        return None
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        # A name of letters, digits and dashes (any other token character: h11's to read).
        if not colon or len(line) > _MAX_LINE or not _is_plain_name(name):
            return None
        headers.setdefault(name.lower(), []).append(value.strip(" \t"))
    if len(headers.get("host", ())) != 1:
        return None
    return RequestHead(target, headers, method="GET"), end + 4


def _is_plain_name(name: str) -> bool:
    return name.isascii() and name.replace("-", "").isalnum()


_TCHAR: Final = frozenset(  # RFC 9110's tchar: what a token is made of
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def header_tokens(values: Iterable[str]) -> list[str] | None:
    """The comma-separated tokens of a header's values, in order; None if an entry is empty
    or not a token (RFC 9110's ``#token``, blanks around entries allowed). Linear."""
    items = [item.strip(" \t") for value in values for item in value.split(",")]
    return items if all(item and _TCHAR.issuperset(item) for item in items) else None


def ends_connection(head: RequestHead) -> bool:
    """Whether the answer to ``head`` ends the connection (h11's rule: HTTP/1.0, or
    ``close`` among the ``Connection`` tokens)."""
    if head.version == "1.0":
        return True
    tokens = ",".join(head.headers.get("connection", ())).lower().split(",")
    return any(token.strip() == "close" for token in tokens)
