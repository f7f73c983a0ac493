"""Who is the client, and may its page talk to us: client IP and Origin rules.

Pure functions; the web layer and the WebSocket handler both use them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """Networks from config strings (already validated by the config loader)."""
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def in_networks(ip: str, networks: tuple[Network, ...]) -> bool:
    """Whether ``ip`` is in any of ``networks`` (False for a malformed address)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in net for net in networks)


def _valid_ip(text: str) -> str | None:
    """The canonical form of an address (IPv4-mapped IPv6 as IPv4), or None."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def base_url(host: str, port: int) -> str:
    """``http://host:port``, with an IPv6 host in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def client_ip(
    peer: str,
    cf_connecting_ip: str | None,
    forwarded_for: Iterable[str],
    trusted: tuple[Network, ...],
) -> str:
    """The client's IP address.

    The socket peer, unless the peer is a trusted proxy: only then are
    ``CF-Connecting-IP`` and then ``X-Forwarded-For`` believed, the latter
    read from the right, skipping trusted hops, so a client cannot forge
    its address by sending the header itself.

    Args:
        peer: the socket's remote address.
        cf_connecting_ip: the ``CF-Connecting-IP`` header, if sent.
        forwarded_for: every ``X-Forwarded-For`` header value, in order.
        trusted: the ``trusted_proxies`` networks.
    """
    peer = _valid_ip(peer) or peer
    if not trusted or not in_networks(peer, trusted):
        return peer
    if cf_connecting_ip is not None:
        ip = _valid_ip(cf_connecting_ip)
        if ip is not None:
            return ip
    hops = [hop for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        ip = _valid_ip(hop)
        if ip is None:
            break  # garbage from here leftwards cannot be trusted
        if not in_networks(ip, trusted):
            return ip
    return peer


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a browser page from ``origin`` may open a socket.

    No ``Origin`` header (a non-browser client) is allowed: the header only
    protects browsers' users from other sites. With an empty allow-list the
    origin's host must be the host the request was sent to.
    """
    if origin is None:
        return True
    origin = origin.strip().lower().rstrip("/")
    if allowed:
        return origin in {a.lower().rstrip("/") for a in allowed}
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc or host is None:
        return False
    return parts.netloc == host.strip().lower()
