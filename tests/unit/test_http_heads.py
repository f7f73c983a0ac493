"""Request heads (``http/heads.py``): ``simple_get`` (the h11-free read of a plain GET)
agrees with h11, every head parser costs time linear in the head's size (the plain
upgrade's included: tests/unit/test_plain_upgrade.py holds it to websockets), and the
head's budget."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from functools import partial
from urllib.parse import urlsplit

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from omiro_trio.budgets import MAX_HEAD_BYTES
from omiro_trio.http.heads import (
    RequestHead,
    head_end,
    head_too_large,
    parse_head,
    simple_get,
    simple_upgrade,
)
from omiro_trio.wsengine import plain_upgrade


def test_reads_a_plain_get_as_h11_does() -> None:
    data = (
        b"GET /session/new?x=1 HTTP/1.1\r\nHost: 127.0.0.1:5000\r\n"
        b"X-Forwarded-For:  1.2.3.4 , 5.6.7.8 \t\r\nAccept: */*\r\naccept: b\r\n\r\n"
    )
    head = simple_get(data)
    assert head is not None
    assert head.target == "/session/new?x=1"
    assert head.headers == {
        "host": ["127.0.0.1:5000"],
        "x-forwarded-for": ["1.2.3.4 , 5.6.7.8"],
        "accept": ["*/*", "b"],
    }
    assert head == parse_head(data)


@pytest.mark.parametrize(
    "data",
    [
        b"GET /session/new HTTP/1.1\r\n\r\n",  # no Host (h11 refuses it)
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # two (h11 refuses it)
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",  # a body
        b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n",  # a protocol switch
        b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",  # bare line feeds
        b"GET / HTTP/1.1\r\nHost: a\r\nBad name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: folded\r\n  on\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n",  # not whole
    ],
)
def test_leaves_everything_else_to_h11(data: bytes) -> None:
    assert simple_get(data) is None


_LINES = st.sampled_from(
    [
        b"Host: a\r\n",
        b"Host: 127.0.0.1:80\r\n",
        b"Content-Length: 0\r\n",
        b"Upgrade: websocket\r\n",
        b"X-Forwarded-For: 1.2.3.4, 5.6.7.8\r\n",
        b"x: \r\n",
        b"x:\t a \t\r\n",
        b"X : y\r\n",
        b" X: y\r\n",
        b"X: y\r\n z\r\n",
        b"X\r\n",
        b"X: \x7f\r\n",
        b"X: \xe9t\xe9\r\n",
        b"X: a\nY: b\r\n",
        b"\r\n",
    ]
)


@given(
    st.sampled_from([b"GET ", b"GET  ", b"get ", b"HEAD "]),
    st.sampled_from([b"/", b"/session/new", b"/a?b=c&d", b"/\xff", b"*", b"/ x"]),
    st.sampled_from([b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", b" HTTP/2.0\r\n", b"\r\n"]),
    st.lists(_LINES, max_size=6),
    st.binary(max_size=8),
)
def test_never_reads_a_head_other_than_h11(
    method: bytes, target: bytes, version: bytes, lines: list[bytes], tail: bytes
) -> None:
    data = method + target + version + b"".join(lines) + b"\r\n" + tail
    head = simple_get(data)
    if head is not None:
        assert head == parse_head(data)


# -- the head's size and the parsers' cost -------------------------------------------

_BLANK_LINE = re.compile(rb"\n\r?\n")  # h11's own rule, as the oracle (test code only)


@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b" ", b"\n\r"]), max_size=30))
def test_head_end_finds_the_blank_line_h11_finds(parts: list[bytes]) -> None:
    data = b"".join(parts)
    match = _BLANK_LINE.search(data)
    assert head_end(data) == (match.end() if match else -1)
    for start in range(len(data)):
        resumed = _BLANK_LINE.search(data, start)
        assert head_end(data, start) == (resumed.end() if resumed else -1)


def test_head_over_the_budget_is_too_large_complete_or_not() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n"
    assert head_too_large(head, head_end(head))
    assert head_too_large(head[:-4], head_end(head[:-4]))  # not complete yet
    fits = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    assert not head_too_large(fits, head_end(fits))
    assert not head_too_large(fits[:-2], head_end(fits[:-2]))
    assert (
        simple_get(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n")
        is None
    )


# Inputs that made regular expressions backtrack, or that a scan could trip on,
# each repeated to fill a head of a given size at a given place.
_UNITS = [b" ", b"\t", b" \t", b"a ", b"a:", b":", b" a", b"\x80", b"%", b"\r", b"\n", b"\x01"]
_PLACES = {
    "value": (b"GET /session/new HTTP/1.1\r\nHost: a\r\nX: a", b"a\r\n\r\n"),
    "value end": (b"GET /session/new HTTP/1.1\r\nHost: a\r\nX: a", b"\r\n\r\n"),
    "target": (b"GET /", b" HTTP/1.1\r\nHost: a\r\n\r\n"),
    "name": (b"GET / HTTP/1.1\r\nHost: a\r\n", b": x\r\n\r\n"),
    "lines": (b"GET / HTTP/1.1\r\nHost: a\r\n", b"\r\n\r\n"),
    "token list": (
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nSec-WebSocket-Protocol: a",
        b"a\r\nConnection: Upgrade\r\n\r\n",
    ),
}
SMALL_HEAD = 1024
FACTOR = 16  # a linear parser takes about FACTOR times as long on the larger head
REPEATS = 5


def _filled(place: str, unit: bytes, size: int) -> bytes:
    before, after = _PLACES[place]
    return before + unit * ((size - len(before) - len(after)) // len(unit)) + after


def _line_filled(unit: bytes, size: int) -> bytes:
    before, after = _PLACES["lines"]
    line = b"x: " + unit + b"\r\n"
    return before + line * ((size - len(before) - len(after)) // len(line)) + after


def _plain_upgrade(data: bytes) -> object:
    read = simple_upgrade(data)
    return read and plain_upgrade(read[0].headers, ("omiro",))


def _best_time(parse: Callable[[bytes], object], data: bytes) -> float:
    best = math.inf
    for _ in range(REPEATS):
        start = time.perf_counter()
        parse(data)
        best = min(best, time.perf_counter() - start)
    return best


@settings(max_examples=30, deadline=None)
@example("value", b" ")  # the one reported: a letter, spaces, a letter
@example("value", b"\t")
@example("value end", b" ")
@example("lines", b" ")
@given(
    st.sampled_from(sorted(_PLACES)),
    st.one_of(st.sampled_from(_UNITS), st.binary(min_size=1, max_size=4)),
)
def test_head_parsing_cost_grows_linearly_with_the_head(place: str, unit: bytes) -> None:
    """Every parser the front door runs on client bytes: a head FACTOR times larger costs at
    most 4 * FACTOR times as long (a quadratic one would take FACTOR**2 times), plus 2 ms
    of slack for a noisy machine. The best of a few runs is compared, so a run preempted by
    another process does not count."""
    fill = _line_filled if place == "lines" else partial(_filled, place)
    small, large = fill(unit, SMALL_HEAD), fill(unit, SMALL_HEAD * FACTOR)
    assert len(large) <= MAX_HEAD_BYTES
    for parse in (simple_get, simple_upgrade, _plain_upgrade, parse_head, head_end):
        small_s, large_s = _best_time(parse, small), _best_time(parse, large)
        assert large_s <= 4 * FACTOR * small_s + 0.002, (parse.__name__, small_s, large_s)


@given(st.text(alphabet="/?#&=:;@ \t\r\n\x00\x7f%aé", max_size=20))
@example("/ws#x?token=1")
@example("/ws?to\tken=1")
@example("//host?token=1#f")
def test_a_heads_query_is_urlsplits(target: str) -> None:
    assert RequestHead(target, {}).query == urlsplit(target).query
