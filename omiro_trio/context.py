"""What the HTTP routes and the WebSocket handler share in one running server."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omiro_trio import protocol
from omiro_trio.addresses import Network, parse_networks
from omiro_trio.backends.base import Backend
from omiro_trio.config import Config
from omiro_trio.gate import EntryGate, OpenGate
from omiro_trio.gate.pow import ProofOfWork
from omiro_trio.gate.raid import RaidSwitch
from omiro_trio.hub import Hub
from omiro_trio.metrics import Metrics
from omiro_trio.moderation import ModerationDesk
from omiro_trio.session_core import SessionRules
from omiro_trio.tokens import TokenSigner, turn_credentials


@dataclass
class ServerContext:
    """One server's configuration, state and services, built by ``server.serve``."""

    config: Config
    backend: Backend
    hub: Hub
    signer: TokenSigner
    metrics: Metrics
    rules: SessionRules  # what every session's core is held to (server.parts)
    moderation: ModerationDesk
    wall: Callable[[], float] = time.time
    gate: EntryGate = field(default_factory=OpenGate)
    raid: RaidSwitch | None = None  # None: raid mode cannot be turned on (tests without it)
    pow: ProofOfWork | None = None  # None: proof of work is never asked for
    trusted_proxies: tuple[Network, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.trusted_proxies = parse_networks(self.config.server.trusted_proxies)

    @property
    def limits(self) -> protocol.Limits:
        """What a client frame may be (announced in ``hello``)."""
        return self.rules.limits

    def ice_servers(self, session_id: str) -> list[dict[str, Any]]:
        """RTCIceServer dictionaries for this session (TURN credentials are per session)."""
        ice = self.config.ice
        servers: list[dict[str, Any]] = []
        if ice.urls and not ice.relayed:
            servers.append({"urls": list(ice.urls)})
        if ice.turn_urls and ice.turn_secret:
            username, credential = turn_credentials(
                ice.turn_secret, ice.turn_ttl_s, session_id, self.wall()
            )
            servers.append(
                {"urls": list(ice.turn_urls), "username": username, "credential": credential}
            )
        return servers

    def hello(self, session_id: str) -> protocol.Hello:
        """The first message of ``session_id``'s socket."""
        limits = self.limits
        return protocol.Hello(
            session_id,
            self.ice_servers(session_id),
            "relay" if self.config.ice.relayed else "all",
            protocol.HelloLimits(limits.max_chat_length, limits.max_frame_bytes),
            self.rules.liveness(),
            self.rules.ticket_ttl_ms(),
        )
