"""Who is the client, and may its page talk to us: client IP and Origin rules.

Pure functions; the web layer and the WebSocket handler both use them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
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
    forwarded_for: Iterable[str],
    trusted: tuple[Network, ...],
    named_header: str | None = None,
) -> str:
    """The client's IP address.

    The socket peer, unless the peer is a trusted proxy. Only then is a
    forwarding header believed: the header the operator named in
    ``server.client_ip_header`` (such as ``CF-Connecting-IP``) if it holds an
    address, else ``X-Forwarded-For`` read from the right, skipping trusted
    hops, so that a client cannot forge its address by sending the header
    itself. No other header is ever read.

    Args:
        peer: the socket's remote address.
        forwarded_for: every ``X-Forwarded-For`` header value, in order.
        trusted: the ``trusted_proxies`` networks.
        named_header: the value of the ``server.client_ip_header`` header,
            when one is configured and was sent; None otherwise.
    """
    peer = _valid_ip(peer) or peer
    if not trusted or not in_networks(peer, trusted):
        return peer
    if named_header is not None:
        ip = _valid_ip(named_header)
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


def address_group(ip: str, ipv6_prefix: int) -> str:
    """The *client* an address belongs to, for every per-address rule.

    An IPv4 address is its own group; an IPv6 address belongs to the network
    of ``ipv6_prefix`` bits around it (one home or phone usually holds a
    whole ``/64``), written as a CIDR network, e.g. ``2001:db8:1:2::/64``.
    Limits, ban lookups, blocks and reporter counts all use this one form.
    Anything that is not an address (``"unknown"``) is returned unchanged.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    if ipv6_prefix >= 128:
        return str(address)
    return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))


ACCOUNT_PREFIX = "account:"
"""How a ban target names an account: ``account:`` and the account key a session
token carries (its subject: docs/gate.md), e.g. ``account:3f9a...``."""
MAX_ACCOUNT_CHARS = 64
_ACCOUNT_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def account_target(account: str) -> str:
    """The ban target naming ``account`` (an account key)."""
    return ACCOUNT_PREFIX + account


def banned_account(target: str) -> str | None:
    """The account key a ban target names, or None when it names an address or network.

    Raises:
        ValueError: ``account:`` followed by something no token carries.
    """
    if not target.startswith(ACCOUNT_PREFIX):
        return None
    account = target[len(ACCOUNT_PREFIX) :]
    if not 0 < len(account) <= MAX_ACCOUNT_CHARS or not _ACCOUNT_CHARS.issuperset(account):
        raise ValueError(f"an account is 1-{MAX_ACCOUNT_CHARS} of A-Z, a-z, 0-9, '_', '-'")
    return account


def ban_key(target: str, ipv6_prefix: int) -> str | None:
    """The client a ban covers whole, as ``address_group`` writes it; None for a wider network.

    A ban of an account (``account:KEY``) is found under its target as written.

    A ban of one IPv4 address is found under that address; a ban of an IPv6
    address or network within one group (``ipv6_prefix`` bits) under that
    group. Those are looked up exactly (O(1) per check); only the bans of
    wider networks (``None``) are compared one by one. Raises ``ValueError``
    for a target that is not an address, a network or an account.
    """
    if banned_account(target) is not None:
        return target
    network = ipaddress.ip_network(target.strip(), strict=False)
    address = str(network.network_address)
    if isinstance(network, ipaddress.IPv4Network):
        return address if network.prefixlen == 32 else None
    if network.network_address.ipv4_mapped is not None:
        return str(network.network_address.ipv4_mapped) if network.prefixlen == 128 else None
    if network.prefixlen >= min(ipv6_prefix, 128):
        return address_group(address, ipv6_prefix)
    return None


def group_in_networks(group: str, networks: tuple[Network, ...]) -> bool:
    """Whether a client (address or address group) overlaps any of ``networks``."""
    try:
        asked = ipaddress.ip_network(group, strict=False)
    except ValueError:
        return False
    return any(asked.version == n.version and asked.overlaps(n) for n in networks)


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
    try:
        parts = urlsplit(origin)
    except ValueError:  # e.g. "http://[": not a URL, so not an allowed origin
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc or host is None:
        return False
    return parts.netloc == host.strip().lower()


@dataclass(frozen=True, slots=True)
class Clients:
    """How the client (address group) of a request is found: ``client_ip``, then
    ``address_group``, with a server's settings.

    Attributes:
        trusted_proxies: ``server.trusted_proxies``.
        ip_header: ``server.client_ip_header``, or "" for none.
        ipv6_prefix: ``server.ipv6_prefix``.
    """

    trusted_proxies: tuple[Network, ...] = ()
    ip_header: str = ""
    ipv6_prefix: int = 64

    def client(self, peer: str, forwarded_for: Iterable[str], named: str | None) -> str:
        """The client of a request from ``peer`` (``client_ip`` says what the rest are)."""
        ip = client_ip(peer, forwarded_for, self.trusted_proxies, named)
        return address_group(ip, self.ipv6_prefix)

    def of(self, peer: str, headers: Mapping[str, Sequence[str]]) -> str:
        """The client of a request from ``peer`` with ``headers`` (lower-case names)."""
        named = headers.get(self.ip_header.lower()) if self.ip_header else None
        return self.client(peer, headers.get("x-forwarded-for", ()), named[0] if named else None)
