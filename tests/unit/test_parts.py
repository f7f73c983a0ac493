"""``server.parts``: the one place the configuration becomes each part's parameters.

The defaults the parts carry on their own (``SessionRules()``,
``ReportPolicy()``, the hub's skips) are the configuration's defaults, and
every key reaches the part it is for.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from omiro_trio import server
from omiro_trio.backends.memory import MemoryBackend
from omiro_trio.backends.redis import open_redis_backend
from omiro_trio.config import Config, load_config
from omiro_trio.hub import Hub
from omiro_trio.protocol import Limits
from omiro_trio.reports import ReportPolicy
from omiro_trio.server import BackendTimings, open_backend, parts
from omiro_trio.session_core import Rates, SessionRules


def test_parts_defaults_are_the_config_defaults() -> None:
    wired = parts(Config())
    assert wired.session == SessionRules()
    assert wired.session.rates == Rates(20, 40)
    assert wired.reports == ReportPolicy()
    assert wired.nexts_per_minute == Hub.__init__.__kwdefaults__["nexts_per_minute"]
    assert wired.backend.block_ttl_s == 86400  # a day, or twice a token's life if that is longer
    # The backends' own defaults, where they have them, are the configuration's.
    for backend in (MemoryBackend.__init__, open_redis_backend):
        defaults = {
            name: p.default
            for name, p in inspect.signature(backend).parameters.items()
            if name in BackendTimings.__slots__ and p.default is not p.empty
        }
        assert defaults
        assert defaults == {name: getattr(wired.backend, name) for name in defaults}


def test_parts_take_every_key_from_the_config() -> None:
    config = load_config(
        environ={
            "OMIRO_LIMITS_MAX_CHAT_LENGTH": "50",
            "OMIRO_SERVER_MAX_FRAME_BYTES": "4096",
            "OMIRO_LIMITS_MESSAGES_PER_SECOND": "3",
            "OMIRO_LIMITS_MESSAGE_BURST": "7",
            "OMIRO_SERVER_RECONNECT_AFTER_MS": "2500",
            "OMIRO_LIMITS_REPORTS_PER_HOUR": "4",
            "OMIRO_REPORTS_AUTOBAN_REPORTERS": "5",
            "OMIRO_REPORTS_AUTOBAN_WINDOW_S": "600",
            "OMIRO_REPORTS_AUTOBAN_S": "1200",
            "OMIRO_LIMITS_NEXTS_PER_MINUTE": "9",
            "OMIRO_SESSION_TOKEN_TTL_S": str(86400),
            "OMIRO_MATCHMAKING_INTEREST_TIMEOUT_S": "8",
            "OMIRO_MATCHMAKING_REMATCH_COOLDOWN_S": "90",
            "OMIRO_SERVER_IPV6_PREFIX": "56",
            "OMIRO_REPORTS_RETENTION_DAYS": "7",
            "OMIRO_MODERATION_AUDIT_RETENTION_DAYS": "90",
        }
    )
    wired = parts(config)
    assert wired.session == SessionRules(Limits(50, 4096), Rates(3, 7), 2500)
    assert wired.reports == ReportPolicy(4, 5, 600, 1200)
    assert wired.nexts_per_minute == 9
    assert wired.backend == BackendTimings(
        interest_timeout_s=8,
        rematch_cooldown_s=90,
        block_ttl_s=2 * 86400,
        ipv6_prefix=56,
        report_retention_s=7 * 86400,
        audit_retention_s=90 * 86400,
    )


async def test_open_backend_gives_the_backend_every_timing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    given: dict[str, Any] = {}

    @asynccontextmanager
    async def recording(**kwargs: Any) -> AsyncIterator[str]:
        given.update(kwargs)
        yield "backend"

    monkeypatch.setattr(server, "open_memory_backend", recording)
    config = load_config(environ={"OMIRO_REPORTS_RETENTION_DAYS": "3"})
    async with open_backend(config) as backend:
        assert backend == "backend"
    timings = parts(config).backend
    assert given == {name: getattr(timings, name) for name in BackendTimings.__slots__}
    assert given["report_retention_s"] == 3 * 86400
