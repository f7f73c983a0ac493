"""``Router.route`` (``http/routes.py``): one rule for every request of a connection, and
the answers the HTTP layer renders itself (``http/answers.py``)."""

from __future__ import annotations

from http import HTTPStatus

import msgspec
import pytest

from omiro_trio.http.answers import SECURITY_HEADERS, HttpError, JsonAnswer, error, render
from omiro_trio.http.heads import RequestHead, parse_head
from omiro_trio.http.routes import Answer, Refusal, Router, Upstream


async def _endpoint(head: RequestHead, client: str) -> JsonAnswer:
    return JsonAnswer(HTTPStatus.OK, {"client": client})  # pragma: no cover - never awaited


ROUTER = Router({("GET", "/session/new"): _endpoint})


def _route(head: bytes) -> object:
    parsed = parse_head(head)
    assert parsed is not None
    return ROUTER.route(parsed)


@pytest.mark.parametrize(
    ("version", "status"),
    [("1.1", None), ("1.0", None), ("1.2", None), ("2.0", 505), ("0.9", 505), ("9.9", 505)],
)
def test_only_http_1_passes_the_door(version: str, status: int | None) -> None:
    head = parse_head(f"GET / HTTP/{version}\r\nHost: a\r\n\r\n".encode())
    assert head is not None
    assert head.version == version
    route = ROUTER.route(head)
    refusal = render(route.answer) if isinstance(route, Refusal) else None
    assert (None if refusal is None else int(refusal.split(b" ", 2)[1])) == status


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"GET /ws?token=t HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", Upstream.WEBSOCKET),
        (b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket, h2c\r\n\r\n", Upstream.WEBSOCKET),
        (b"GET /ws HTTP/1.1\r\nHost: a\r\n\r\n", Upstream.APP),  # no upgrade: the app's 404
        (b"GET /session/new HTTP/1.1\r\nHost: a\r\n\r\n", Answer(_endpoint)),
        (b"GET /session/new?x=1 HTTP/1.0\r\n\r\n", Answer(_endpoint)),
        (b"POST /session/new HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", Upstream.APP),
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n", Upstream.APP),
    ],
)
def test_route_sends_each_request_to_one_place(head: bytes, expected: object) -> None:
    assert _route(head) == expected


@pytest.mark.parametrize(
    ("head", "status", "code"),
    [
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 405, "method_not_allowed"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n", 400, "bad_request"),
        (b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n", 400, "bad_request"),
        (b"POST /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", 400, "bad_request"),
        (b"GET /session/new HTTP/2.0\r\nHost: a\r\n\r\n", 505, "http_version_not_supported"),
    ],
)
@pytest.mark.rule("protocol/front-door")
def test_route_refuses_what_the_app_must_not_see(head: bytes, status: int, code: str) -> None:
    route = _route(head)
    assert isinstance(route, Refusal)
    assert route.answer.status == status
    assert route.answer.body["error"] == code


def test_a_first_get_ws_request_line_is_read_by_the_handshake() -> None:
    assert Router.reads_itself(b"GET /ws HTTP/1.1\r\n")
    assert Router.reads_itself(b"GET /ws?token=t HTTP/1.1\r\n")
    assert not Router.reads_itself(b"GET /wss HTTP/1.1\r\n")
    assert not Router.reads_itself(b"POST /ws HTTP/1.1\r\n")


def test_render_writes_one_json_answer_with_the_security_headers() -> None:
    answer = error(
        HTTPStatus.TOO_MANY_REQUESTS,
        HttpError.RATE_LIMITED,
        "slow down",
        headers=(("Retry-After", "5"),),
        retry_after=5,
    )
    closing = render(answer)
    head, _, body = closing.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 429 Too Many Requests"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    assert headers["connection"] == "close"
    assert headers["Retry-After"] == "5"
    for name, value in SECURITY_HEADERS.items():
        assert headers[name] == value
    assert body == b'{"error":"rate_limited","message":"slow down","retry_after":5}\n'
    assert msgspec.json.decode(body) == answer.body
    assert b"connection:" not in render(answer, keep_alive=True)
