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
from omiro_trio.hub import Hub
from omiro_trio.metrics import Metrics
from omiro_trio.tokens import TokenSigner, turn_credentials


@dataclass
class ServerContext:
    """One server's configuration, state and services, built by ``server.serve``."""

    config: Config
    backend: Backend
    hub: Hub
    signer: TokenSigner
    metrics: Metrics
    wall: Callable[[], float] = time.time
    trusted_proxies: tuple[Network, ...] = field(init=False)
    limits: protocol.Limits = field(init=False)

    def __post_init__(self) -> None:
        self.trusted_proxies = parse_networks(self.config.server.trusted_proxies)
        self.limits = protocol.Limits(
            max_chat_length=self.config.limits.max_chat_length,
            max_frame_bytes=self.config.server.max_frame_bytes,
        )

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

    def hello_data(self, session_id: str) -> dict[str, Any]:
        return {
            "session_id": session_id,
            "ice_servers": self.ice_servers(session_id),
            "ice_transport_policy": "relay" if self.config.ice.relayed else "all",
            "limits": {
                "max_chat_length": self.limits.max_chat_length,
                "max_frame_bytes": self.limits.max_frame_bytes,
            },
        }
