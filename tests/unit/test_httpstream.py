"""``simple_get`` (the front door's h11-free read of a plain GET) agrees with h11."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omiro_trio.httpstream import parse_head, simple_get


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
