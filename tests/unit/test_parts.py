"""``server.parts``: the one place the configuration becomes each part's parameters.

The defaults the parts carry on their own (``SessionRules()``,
``ReportPolicy()``, the hub's skips) are the configuration's defaults, and
every key reaches the part it is for.
"""

from __future__ import annotations

from omiro_trio.config import Config, load_config
from omiro_trio.hub import Hub
from omiro_trio.protocol import Limits
from omiro_trio.reports import ReportPolicy
from omiro_trio.server import parts
from omiro_trio.session_core import Rates, SessionRules


def test_parts_defaults_are_the_config_defaults() -> None:
    wired = parts(Config())
    assert wired.session == SessionRules()
    assert wired.session.rates == Rates(20, 40)
    assert wired.reports == ReportPolicy()
    assert wired.nexts_per_minute == Hub.__init__.__kwdefaults__["nexts_per_minute"]
    assert wired.block_ttl_s == 86400  # a day, or twice a token's life if that is longer


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
        }
    )
    wired = parts(config)
    assert wired.session == SessionRules(Limits(50, 4096), Rates(3, 7), 2500)
    assert wired.reports == ReportPolicy(4, 5, 600, 1200)
    assert wired.nexts_per_minute == 9
    assert wired.block_ttl_s == 2 * 86400
