"""Client IP and Origin rules: forged headers never move a client's address."""

from __future__ import annotations

import pytest

from omiro_trio.addresses import (
    account_target,
    address_group,
    ban_key,
    banned_account,
    client_ip,
    group_in_networks,
    origin_allowed,
    parse_networks,
)

PROXY = parse_networks(["10.0.0.0/8", "::1/128"])


def test_client_ip_untrusted_peer_ignores_headers() -> None:
    assert client_ip("203.0.113.9", ["2.2.2.2"], PROXY, "1.1.1.1") == "203.0.113.9"
    assert client_ip("203.0.113.9", ["2.2.2.2"], ()) == "203.0.113.9"


def test_client_ip_trusted_proxy_prefers_the_named_header() -> None:
    assert client_ip("10.1.2.3", ["2.2.2.2"], PROXY, "198.51.100.7") == "198.51.100.7"


def test_client_ip_trusted_proxy_takes_rightmost_untrusted_hop() -> None:
    # The client wrote "6.6.6.6" itself; the proxy appended the real peer.
    forwarded = ["6.6.6.6, 198.51.100.7", "10.9.9.9"]
    assert client_ip("10.1.2.3", forwarded, PROXY) == "198.51.100.7"


def test_client_ip_bad_named_header_falls_back_to_forwarded_for() -> None:
    assert client_ip("10.1.2.3", ["198.51.100.7"], PROXY, "not-an-ip") == "198.51.100.7"


def test_client_ip_garbage_hop_stops_the_walk() -> None:
    assert client_ip("10.1.2.3", ["198.51.100.7, junk"], PROXY) == "10.1.2.3"


def test_client_ip_all_hops_trusted_gives_the_peer() -> None:
    assert client_ip("10.1.2.3", ["10.0.0.1, 10.0.0.2"], PROXY) == "10.1.2.3"


def test_client_ip_ipv4_mapped_peer_is_canonical() -> None:
    assert client_ip("::ffff:203.0.113.9", [], ()) == "203.0.113.9"
    assert client_ip("::ffff:10.1.2.3", ["198.51.100.7"], PROXY) == "198.51.100.7"


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


def test_address_group_keeps_ipv4_and_groups_ipv6_by_prefix() -> None:
    assert address_group("203.0.113.9", 64) == "203.0.113.9"
    assert address_group("::ffff:203.0.113.9", 64) == "203.0.113.9"
    assert address_group("2001:db8:1:2:aaaa::1", 64) == "2001:db8:1:2::/64"
    assert address_group("2001:db8:1:2:bbbb::9", 64) == "2001:db8:1:2::/64"
    assert address_group("2001:db8:1:2:bbbb::9", 48) == "2001:db8:1::/48"
    assert address_group("2001:db8::9", 128) == "2001:db8::9"
    assert address_group("unknown", 64) == "unknown"


def test_group_in_networks_matches_overlapping_networks() -> None:
    nets = parse_networks(["2001:db8:1:2::7", "192.0.2.0/24"])
    assert group_in_networks("2001:db8:1:2::/64", nets)
    assert not group_in_networks("2001:db8:1:3::/64", nets)
    assert group_in_networks("192.0.2.9", nets)
    assert not group_in_networks("198.51.100.1", nets)
    assert not group_in_networks("unknown", nets)


def test_client_ip_reads_no_header_from_an_untrusted_peer() -> None:
    """A client cannot forge its address with any header when it talks to us directly."""
    assert client_ip("203.0.113.9", ["198.51.100.7"], (), "198.51.100.8") == "203.0.113.9"


def test_an_account_ban_target_names_its_key_and_is_indexed_by_itself() -> None:
    target = account_target("3f9a_B-0")
    assert target == "account:3f9a_B-0"
    assert banned_account(target) == "3f9a_B-0"
    assert ban_key(target, 64) == target
    assert banned_account("203.0.113.7") is None
    assert ban_key("203.0.113.7", 64) == "203.0.113.7"


@pytest.mark.parametrize(
    "target", ["account:", "account:a b", "account:a/b", "account:" + "a" * 65, "account:é"]
)
def test_an_account_ban_target_no_token_carries_is_refused(target: str) -> None:
    with pytest.raises(ValueError, match="account"):
        banned_account(target)
    with pytest.raises(ValueError, match="account"):
        ban_key(target, 64)
