"""Client IP and Origin rules: forged headers never move a client's address."""

from __future__ import annotations

import pytest

from omiro_trio.addresses import client_ip, origin_allowed, parse_networks

PROXY = parse_networks(["10.0.0.0/8", "::1/128"])


def test_client_ip_untrusted_peer_ignores_headers() -> None:
    assert client_ip("203.0.113.9", "1.1.1.1", ["2.2.2.2"], PROXY) == "203.0.113.9"
    assert client_ip("203.0.113.9", None, ["2.2.2.2"], ()) == "203.0.113.9"


def test_client_ip_trusted_proxy_prefers_cf_connecting_ip() -> None:
    assert client_ip("10.1.2.3", "198.51.100.7", ["2.2.2.2"], PROXY) == "198.51.100.7"


def test_client_ip_trusted_proxy_takes_rightmost_untrusted_hop() -> None:
    # The client wrote "6.6.6.6" itself; the proxy appended the real peer.
    forwarded = ["6.6.6.6, 198.51.100.7", "10.9.9.9"]
    assert client_ip("10.1.2.3", None, forwarded, PROXY) == "198.51.100.7"


def test_client_ip_bad_cf_header_falls_back_to_forwarded_for() -> None:
    assert client_ip("10.1.2.3", "not-an-ip", ["198.51.100.7"], PROXY) == "198.51.100.7"


def test_client_ip_garbage_hop_stops_the_walk() -> None:
    assert client_ip("10.1.2.3", None, ["198.51.100.7, junk"], PROXY) == "10.1.2.3"


def test_client_ip_all_hops_trusted_gives_the_peer() -> None:
    assert client_ip("10.1.2.3", None, ["10.0.0.1, 10.0.0.2"], PROXY) == "10.1.2.3"


def test_client_ip_ipv4_mapped_peer_is_canonical() -> None:
    assert client_ip("::ffff:203.0.113.9", None, [], ()) == "203.0.113.9"
    assert client_ip("::ffff:10.1.2.3", None, ["198.51.100.7"], PROXY) == "198.51.100.7"


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "ok"),
    [
        (None, "omiro.example", (), True),  # not a browser
        ("https://omiro.example", "omiro.example", (), True),
        ("http://127.0.0.1:8080", "127.0.0.1:8080", (), True),
        ("https://OMIRO.example/", "omiro.example", (), True),
        ("https://evil.example", "omiro.example", (), False),
        ("https://omiro.example:444", "omiro.example", (), False),
        ("null", "omiro.example", (), False),
        ("file://", "omiro.example", (), False),
        ("https://omiro.example", None, (), False),
        ("https://app.example", "api.example", ("https://app.example",), True),
        ("https://api.example", "api.example", ("https://app.example",), False),
    ],
)
def test_origin_allowed(
    origin: str | None, host: str | None, allowed: tuple[str, ...], ok: bool
) -> None:
    assert origin_allowed(origin, host, allowed) is ok
