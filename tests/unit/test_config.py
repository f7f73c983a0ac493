"""Unit tests for ``omiro_trio.config``.

Pure and synchronous: every test passes ``environ`` explicitly so the real
environment never leaks in, and writes TOML files under ``tmp_path``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from omiro_trio.config import (
    AdminConfig,
    AlertsConfig,
    BackendConfig,
    Config,
    GateConfig,
    IceConfig,
    LimitsConfig,
    LogConfig,
    MatchmakingConfig,
    ModerationConfig,
    PageConfig,
    RedisConfig,
    ReportsConfig,
    ServerConfig,
    SessionConfig,
    config_as_dict,
    load_config,
)
from omiro_trio.errors import ConfigError

SAMPLE = Path(__file__).parents[2] / "omiro.toml"

# The "Configuration names (public contract)" block of DESIGN.md, verbatim.
DESIGN_DEFAULTS: dict[str, dict[str, Any]] = {
    "server": {
        "host": "127.0.0.1",
        "port": 8080,
        "allowed_origins": [],
        "trusted_proxies": [],
        "client_ip_header": "",
        "ipv6_prefix": 64,
        "connections_per_ip": 64,
        "max_frame_bytes": 65536,
        "send_queue": 256,
        "send_queue_bytes": 1048576,
        "idle_timeout_s": 60,
        "drain_grace_s": 10,
        # Added after DESIGN.md: what server_draining tells clients.
        "reconnect_after_ms": 1000,
        # Issue 23: the liveness bound of a call.
        "lost_after_s": 15.0,
        "resume_grace_s": 30.0,
    },
    "session": {"secret": "", "token_ttl_s": 600, "ticket_ttl_s": 7200},
    "backend": {"kind": "memory"},
    "redis": {
        "url": "redis://127.0.0.1:6379/0",
        "key_prefix": "omiro:",
        "pool_size": 50,
        "heartbeat_s": 2.0,
        "dead_after_s": 6.0,
        "timeout_s": 1.0,
    },
    "matchmaking": {"interest_timeout_s": 5, "rematch_cooldown_s": 300},
    "limits": {
        "sessions_per_ip_per_minute": 60,
        "sockets_per_ip": 10,
        "messages_per_second": 20,
        "message_burst": 40,
        "nexts_per_minute": 30,
        "reports_per_hour": 10,
        "max_chat_length": 1000,
    },
    "reports": {
        "autoban_reporters": 3,
        "autoban_window_s": 3600,
        "autoban_s": 86400,
        "retention_days": 30,
    },
    "moderation": {
        "audit_retention_days": 365,
        "session_idle_s": 1800,
        "moderator_max_ban_s": 604800,
        "claim_s": 900,
    },
    "ice": {
        "urls": ["stun:stun.l.google.com:19302"],
        "turn_urls": [],
        "turn_secret": "",
        "turn_ttl_s": 3600,
        # Added after DESIGN.md: relay-only exactly when TURN is configured.
        "relay_only": "auto",
    },
    "admin": {"token": ""},
    "alerts": {
        "webhook_url": "",
        "secret": "",
        "reports_per_hour": 20,
        "timeout_s": 5.0,
        "retries": 3,
    },
    "log": {"level": "info", "format": "text"},
    # Added after DESIGN.md: what the page tells people before they start.
    "page": {
        "notice": "",
        "terms_url": "",
        "privacy_url": "",
        "blur_remote": True,
        "nudity_filter": False,
    },
    # Added after DESIGN.md: who may have a session token (docs/gate.md).
    "gate": {
        "kind": "open",
        "passphrase_hash": "",
        "remember_s": 2592000,
        "tries_per_minute": 5,
        "oidc_issuer": "",
        "oidc_client_id": "",
        "oidc_client_secret": "",
        "oidc_redirect_url": "",
        "oidc_scopes": ["openid", "email"],
        "oidc_email_domains": [],
        "oidc_claim": "",
        "oidc_claim_values": [],
        "age_claim": "",
        "age_claim_kind": "birthdate",
        "adult_age": 18,
        "min_age": 0,
        "require_age": False,
        "pow_mode": "off",
        "pow_max_number": 20000,
        "pow_raid_max_number": 100000,
        "pow_expiry_s": 300,
        "pow_adaptive_per_minute": 600,
        "pow_quiet_s": 600,
    },
}


LONG = "x" * 32  # makes a test secret long enough


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "omiro.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={} if environ is None else environ)
    return str(info.value)


def env_error(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(environ=environ)
    return str(info.value)


# --- defaults and the sample file -------------------------------------------


def test_config_defaults_equal_design() -> None:
    config = load_config(environ={})
    assert config_as_dict(config, mask_secrets=False) == DESIGN_DEFAULTS
    assert config == Config()


def test_config_table_types_and_attribute_names() -> None:
    config = load_config(environ={})
    tables = {
        "server": ServerConfig,
        "session": SessionConfig,
        "backend": BackendConfig,
        "redis": RedisConfig,
        "matchmaking": MatchmakingConfig,
        "limits": LimitsConfig,
        "reports": ReportsConfig,
        "moderation": ModerationConfig,
        "ice": IceConfig,
        "admin": AdminConfig,
        "alerts": AlertsConfig,
        "log": LogConfig,
        "page": PageConfig,
        "gate": GateConfig,
    }
    for table, cls in tables.items():
        assert type(getattr(config, table)) is cls
    assert config.server.port == 8080
    assert config.limits.messages_per_second == 20
    assert config.ice.urls == ("stun:stun.l.google.com:19302",)
    assert config.log.format == "text"
    assert isinstance(config.server.idle_timeout_s, float)
    assert isinstance(config.matchmaking.interest_timeout_s, float)
    assert isinstance(config.server.allowed_origins, tuple)


def test_config_is_frozen_and_hashable() -> None:
    config = load_config(environ={})
    with pytest.raises(AttributeError):
        config.server.port = 1  # type: ignore[misc]
    assert hash(config) == hash(load_config(environ={}))


def test_config_sample_file_loads_and_equals_defaults() -> None:
    assert load_config(SAMPLE, environ={}) == Config()


def test_config_sample_file_lists_every_key() -> None:
    with SAMPLE.open("rb") as f:
        document = tomllib.load(f)
    assert document == DESIGN_DEFAULTS


def test_config_file_values_are_used(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [server]
        port = 0
        idle_timeout_s = 0.5
        trusted_proxies = ["10.0.0.0/8", "::1", "192.168.1.7/24"]
        allowed_origins = ["https://chat.example.org", "http://localhost:8080"]
        [backend]
        kind = "redis"
        [session]
        secret = "a session secret that every server shares"
        [ice]
        urls = []
        turn_urls = ["turns:turn.example.org:5349"]
        turn_secret = "s3cret"
        relay_only = true
        [log]
        format = "json"
        """,
    )
    config = load_config(path, environ={})
    assert config.server.port == 0
    assert config.server.idle_timeout_s == 0.5
    assert config.server.trusted_proxies == ("10.0.0.0/8", "::1", "192.168.1.7/24")
    assert config.backend.kind == "redis"
    assert config.ice.urls == ()
    assert config.ice.relay_only is True
    assert config.log.format == "json"
    assert config.server.host == "127.0.0.1"  # untouched keys keep defaults


def test_config_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[limits]\nmessage_burst = 5\n"), environ={})
    assert config.limits.message_burst == 5
    assert config.limits.messages_per_second == 20
    assert config.server == ServerConfig()


# --- file errors --------------------------------------------------------------


def test_config_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_config(path, environ={})


def test_config_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[server]\nport = 8080\nhost = "unterminated\n')
    assert str(tmp_path / "omiro.toml") in message
    assert "line 3" in message


def test_config_unknown_table_names_it(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[sever]\nport = 1\n")
    assert "sever" in message
    assert str(tmp_path / "omiro.toml") in message
    assert "did you mean server" in message


def test_config_unknown_key_names_table_key_and_file(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[server]\nprot = 8080\n")
    assert "server.prot" in message
    assert str(tmp_path / "omiro.toml") in message
    assert "server.port" in message  # the suggestion


def test_config_subtable_is_unknown_key(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[server.tls]\ncert = 'x'\n")
    assert "server.tls" in message


def test_config_table_given_as_value(tmp_path: Path) -> None:
    assert "server" in load_error(tmp_path, "server = 1\n")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[server]\nport = "8080"\n', "server.port"),
        ("[server]\nport = 8080.0\n", "server.port"),
        ("[server]\nport = true\n", "server.port"),
        ('[server]\nidle_timeout_s = "60"\n', "server.idle_timeout_s"),
        ('[server]\nallowed_origins = "https://a.example"\n', "server.allowed_origins"),
        ("[ice]\nurls = [1]\n", "ice.urls[0]"),
        ('[ice]\nrelay_only = "yes"\n', "ice.relay_only"),
        ("[ice]\nrelay_only = 1\n", "ice.relay_only"),
        ('[page]\nblur_remote = "no"\n', "page.blur_remote"),
        ("[page]\nnudity_filter = 1\n", "page.nudity_filter"),
        ("[admin]\ntoken = 1234\n", "admin.token"),
        ('[backend]\nkind = "postgres"\n', "backend.kind"),
        ('[log]\nlevel = "INFO"\n', "log.level"),
        ('[log]\nformat = "xml"\n', "log.format"),
    ],
)
def test_config_wrong_type_names_table_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    message = load_error(tmp_path, text)
    assert key in message
    assert str(tmp_path / "omiro.toml") in message


def test_config_bad_literal_lists_choices(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[backend]\nkind = "postgres"\n')
    assert "'memory'" in message
    assert "'redis'" in message


def test_config_int_accepted_for_float_seconds(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[matchmaking]\ninterest_timeout_s = 2\n"), environ={})
    assert config.matchmaking.interest_timeout_s == 2.0
    assert isinstance(config.matchmaking.interest_timeout_s, float)


# --- value checks -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[server]\nport = 70000\n", "server.port"),
        ("[server]\nport = -1\n", "server.port"),
        ("[server]\nmax_frame_bytes = 0\n", "server.max_frame_bytes"),
        ("[server]\nsend_queue = -5\n", "server.send_queue"),
        ("[server]\nsend_queue_bytes = 100\n", "server.send_queue_bytes"),
        ("[server]\nidle_timeout_s = -1\n", "server.idle_timeout_s"),
        ("[server]\ndrain_grace_s = nan\n", "server.drain_grace_s"),
        ("[server]\ndrain_grace_s = inf\n", "server.drain_grace_s"),
        ('[server]\nhost = ""\n', "server.host"),
        ("[session]\ntoken_ttl_s = 0\n", "session.token_ttl_s"),
        ("[matchmaking]\nrematch_cooldown_s = -0.1\n", "matchmaking.rematch_cooldown_s"),
        ("[limits]\nmessages_per_second = 0\n", "limits.messages_per_second"),
        ("[reports]\nautoban_reporters = 0\n", "reports.autoban_reporters"),
        ("[ice]\nturn_ttl_s = 0\n", "ice.turn_ttl_s"),
        ("[server]\nidle_timeout_s = 0\n", "server.idle_timeout_s"),
        ("[server]\nidle_timeout_s = 3601\n", "server.idle_timeout_s"),
        ("[server]\nmax_frame_bytes = 100\n", "server.max_frame_bytes"),
        ("[server]\nipv6_prefix = 16\n", "server.ipv6_prefix"),
        ("[server]\nipv6_prefix = 129\n", "server.ipv6_prefix"),
        ("[server]\nconnections_per_ip = 0\n", "server.connections_per_ip"),
        ('[server]\nclient_ip_header = "CF Connecting IP"\n', "server.client_ip_header"),
        ('[server]\nclient_ip_header = "CF-Connecting-IP"\n', "server.client_ip_header"),
        ("[session]\ntoken_ttl_s = 9999999999\n", "session.token_ttl_s"),
        ("[limits]\nsockets_per_ip = 1000001\n", "limits.sockets_per_ip"),
        ("[reports]\nautoban_s = 0\n", "reports.autoban_s"),
        ("[reports]\nretention_days = 0\n", "reports.retention_days"),
        ("[moderation]\nsession_idle_s = 10\n", "moderation.session_idle_s"),
        ("[moderation]\nmoderator_max_ban_s = 0\n", "moderation.moderator_max_ban_s"),
        ('[alerts]\nwebhook_url = "https://hooks.example/x"\n', "alerts.webhook_url"),
        ('[alerts]\nwebhook_url = "ftp://x"\nsecret = "' + "s" * 32 + '"\n', "alerts.webhook_url"),
        ('[alerts]\nsecret = "short"\n', "alerts.secret"),
        ("[alerts]\nretries = 11\n", "alerts.retries"),
        ('[gate]\nkind = "passphrase"\n', "gate.passphrase_hash"),
        ('[gate]\nkind = "passphrase"\npassphrase_hash = "plain"\n', "gate.passphrase_hash"),
        ('[gate]\nkind = "closed"\n', "gate.kind"),
        ("[gate]\nremember_s = 10\n", "gate.remember_s"),
        ("[gate]\ntries_per_minute = 0\n", "gate.tries_per_minute"),
        ('[gate]\npow_mode = "sometimes"\n', "gate.pow_mode"),
        ("[gate]\npow_max_number = 10\n", "gate.pow_max_number"),
        ("[gate]\npow_quiet_s = 1\n", "gate.pow_quiet_s"),
        ("[matchmaking]\ninterest_timeout_s = 1e9\n", "matchmaking.interest_timeout_s"),
        ('[session]\nsecret = "short"\n', "session.secret"),
        ('[admin]\ntoken = "0123456789012345678901234567890"\n', "admin.token"),
        ('[server]\ntrusted_proxies = ["10.0.0.0/33"]\n', "server.trusted_proxies[0]"),
        ('[server]\ntrusted_proxies = ["::1", "proxy.local"]\n', "server.trusted_proxies[1]"),
        ('[server]\nallowed_origins = ["chat.example.org"]\n', "server.allowed_origins[0]"),
        ('[server]\nallowed_origins = ["https://a.example/"]\n', "server.allowed_origins[0]"),
        ('[server]\nallowed_origins = ["https://a.example:99999"]\n', "server.allowed_origins"),
        ('[server]\nallowed_origins = ["https://a.example:x"]\n', "server.allowed_origins"),
        ('[server]\nallowed_origins = ["https://A.example"]\n', "server.allowed_origins"),
        ('[server]\nallowed_origins = ["*"]\n', "server.allowed_origins"),
        ('[ice]\nurls = ["http://stun.example.org"]\n', "ice.urls[0]"),
        ('[ice]\nurls = ["stun.example.org:3478"]\n', "ice.urls[0]"),
        ('[ice]\nurls = ["stun:"]\n', "ice.urls[0]"),
        ('[ice]\nturn_urls = ["stun:a:1"]\nturn_secret = "x"\n', "ice.turn_urls[0]"),
        ('[ice]\nturn_urls = ["turn:a:3478"]\n', "ice.turn_urls"),
        ("[ice]\nrelay_only = true\n", "ice.relay_only"),
        ('[redis]\nurl = "http://127.0.0.1:6379"\n', "redis.url"),
        ('[redis]\nurl = "redis://"\n', "redis.url"),
        ('[page]\nterms_url = "javascript:alert(1)"\n', "page.terms_url"),
        ('[page]\nprivacy_url = "ftp://example.org/p"\n', "page.privacy_url"),
        ('[page]\nprivacy_url = "https://"\n', "page.privacy_url"),
        ('[page]\nterms_url = "/terms page"\n', "page.terms_url"),
    ],
)
def test_config_invalid_value_names_table_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    message = load_error(tmp_path, text)
    assert key in message
    assert str(tmp_path / "omiro.toml") in message


@pytest.mark.parametrize(
    "link", ["https://example.org/terms?x=1", "http://example.org", "/terms.html", "privacy.html"]
)
def test_config_valid_page_links_accepted(link: str) -> None:
    config = load_config(environ={"OMIRO_PAGE_TERMS_URL": link, "OMIRO_PAGE_PRIVACY_URL": link})
    assert config.page.terms_url == link
    assert config.page.privacy_url == link


@pytest.mark.parametrize(
    "origin",
    ["https://chat.example.org", "http://localhost:8080", "http://[::1]:8080", "http://10.0.0.1"],
)
def test_config_valid_origins_accepted(origin: str) -> None:
    config = load_config(environ={"OMIRO_SERVER_ALLOWED_ORIGINS": origin})
    assert config.server.allowed_origins == (origin,)


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://:pw@redis.example:6380", "unix:///run/r.sock"]
)
def test_config_valid_redis_urls_accepted(url: str) -> None:
    assert load_config(environ={"OMIRO_REDIS_URL": url}).redis.url == url


def test_config_redis_url_error_does_not_echo_password() -> None:
    message = env_error({"OMIRO_REDIS_URL": "http://:hunter2@example.org"})
    assert "redis.url" in message
    assert "hunter2" not in message


# --- environment --------------------------------------------------------------


def test_config_env_overrides_each_type() -> None:
    config = load_config(
        environ={
            "OMIRO_SERVER_PORT": "8081",
            "OMIRO_SERVER_HOST": "0.0.0.0",
            "OMIRO_MATCHMAKING_INTEREST_TIMEOUT_S": "0.5",
            "OMIRO_SERVER_DRAIN_GRACE_S": "3",
            "OMIRO_ICE_RELAY_ONLY": "yes",
            "OMIRO_ICE_TURN_URLS": '["turn:turn.example.org:3478"]',
            "OMIRO_ICE_TURN_SECRET": "t",
            "OMIRO_ICE_URLS": "[]",
            "OMIRO_SERVER_TRUSTED_PROXIES": "10.0.0.0/8, 172.16.0.0/12",
            "OMIRO_BACKEND_KIND": "redis",
            "OMIRO_SESSION_SECRET": LONG,
            "OMIRO_REDIS_URL": "redis://redis:6379/1",
            "OMIRO_LOG_FORMAT": "json",
            "OMIRO_CONFIG": "/does/not/matter.toml",  # reserved for the CLI
        }
    )
    assert config.server.port == 8081
    assert config.server.host == "0.0.0.0"
    assert config.matchmaking.interest_timeout_s == 0.5
    assert config.server.drain_grace_s == 3.0
    assert config.ice.relay_only is True
    assert config.ice.turn_urls == ("turn:turn.example.org:3478",)
    assert config.ice.urls == ()
    assert config.server.trusted_proxies == ("10.0.0.0/8", "172.16.0.0/12")
    assert config.backend.kind == "redis"
    assert config.redis.url == "redis://redis:6379/1"
    assert config.log.format == "json"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("1", True), ("YES", True), ("false", False), ("0", False), ("no", False)],
)
def test_config_env_booleans(text: str, expected: bool) -> None:
    environ = {"OMIRO_PAGE_BLUR_REMOTE": text, "OMIRO_PAGE_NUDITY_FILTER": text}
    page = load_config(environ=environ).page
    assert page.blur_remote is expected
    assert page.nudity_filter is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("1", True), ("YES", True), ("false", False), ("0", False), ("no", False)],
)
def test_config_env_relay_only_booleans(text: str, expected: bool) -> None:
    environ = {
        "OMIRO_ICE_RELAY_ONLY": text,
        "OMIRO_ICE_TURN_URLS": "turn:a",
        "OMIRO_ICE_TURN_SECRET": "s",
    }
    assert load_config(environ=environ).ice.relay_only is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("stun:a:1", ("stun:a:1",)),
        ("stun:a:1,stuns:b:2", ("stun:a:1", "stuns:b:2")),
        (" stun:a:1 , ", ("stun:a:1",)),
        ("[]", ()),
        ('["stun:a:1", "turn:b:2"]', ("stun:a:1", "turn:b:2")),
    ],
)
def test_config_env_lists(text: str, expected: tuple[str, ...]) -> None:
    assert load_config(environ={"OMIRO_ICE_URLS": text}).ice.urls == expected


def test_config_env_wins_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9000\nsend_queue = 8\n")
    config = load_config(path, environ={"OMIRO_SERVER_PORT": "9001"})
    assert config.server.port == 9001
    assert config.server.send_queue == 8


@pytest.mark.parametrize(
    "environ",
    [
        {"OMIRO_SERVER_PORT": "eighty"},
        {"OMIRO_SERVER_PORT": "80.5"},
        {"OMIRO_SERVER_PORT": ""},
        {"OMIRO_SERVER_IDLE_TIMEOUT_S": "soon"},
        {"OMIRO_ICE_RELAY_ONLY": "maybe"},
        {"OMIRO_ICE_URLS": "[1, 2]"},
        {"OMIRO_ICE_URLS": '["stun:a"'},
        {"OMIRO_BACKEND_KIND": "postgres"},
        {"OMIRO_SERVER_PORT": "70000"},
        {"OMIRO_SERVER_TRUSTED_PROXIES": "not-a-network"},
        {"OMIRO_SERVER_IDLE_TIMEOUT_S": "inf"},
    ],
)
def test_config_bad_env_value_names_variable(environ: dict[str, str]) -> None:
    (name,) = environ
    message = env_error(environ)
    assert name in message


def test_config_bad_env_value_beats_good_file(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[server]\nport = 1\n", {"OMIRO_SERVER_PORT": "x"})
    assert "OMIRO_SERVER_PORT" in message
    assert "server.port" in message


@pytest.mark.parametrize(
    "name", ["OMIRO_SERVER_PROT", "OMIRO_FOO", "OMIRO_SERVER_PORT_FILE", "OMIRO_"]
)
def test_config_unknown_omiro_variable_is_error(name: str) -> None:
    assert name in env_error({name: "1"})


def test_config_unknown_variable_suggests_name() -> None:
    assert "OMIRO_SERVER_PORT" in env_error({"OMIRO_SERVER_PROT": "1"}).split("did you mean")[1]


def test_config_other_variables_ignored() -> None:
    environ = {"PATH": "/bin", "OMIRO": "x", "omiro_server_port": "1", "OMIRO_CONFIG": "x"}
    assert load_config(environ=environ) == Config()


# --- secrets ------------------------------------------------------------------


def test_config_secret_from_file(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("abc def" * 5 + "\n", encoding="utf-8")
    config = load_config(environ={"OMIRO_ADMIN_TOKEN_FILE": str(secret)})
    assert config.admin.token == "abc def" * 5


@pytest.mark.parametrize(
    ("table", "key", "var"),
    [
        ("session", "secret", "OMIRO_SESSION_SECRET"),
        ("admin", "token", "OMIRO_ADMIN_TOKEN"),
        ("ice", "turn_secret", "OMIRO_ICE_TURN_SECRET"),
    ],
)
def test_config_every_secret_has_env_and_file(
    tmp_path: Path, table: str, key: str, var: str
) -> None:
    secret = tmp_path / "secret"
    secret.write_text(LONG + "from-file\r\n", encoding="utf-8")
    from_env = load_config(environ={var: LONG + "from-env"})
    from_file = load_config(environ={f"{var}_FILE": str(secret)})
    assert getattr(getattr(from_env, table), key) == LONG + "from-env"
    assert getattr(getattr(from_file, table), key) == LONG + "from-file"


def test_config_secret_file_wins_over_toml(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(LONG + "env-side", encoding="utf-8")
    path = write(tmp_path, f'[session]\nsecret = "{LONG}toml-side"\n')
    config = load_config(path, environ={"OMIRO_SESSION_SECRET_FILE": str(secret)})
    assert config.session.secret == LONG + "env-side"


def test_config_secret_and_secret_file_both_set_is_error(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x", encoding="utf-8")
    message = env_error({"OMIRO_SESSION_SECRET": "y", "OMIRO_SESSION_SECRET_FILE": str(secret)})
    assert "OMIRO_SESSION_SECRET" in message
    assert "session.secret" in message


def test_config_missing_secret_file_names_variable_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    message = env_error({"OMIRO_ADMIN_TOKEN_FILE": str(missing)})
    assert "OMIRO_ADMIN_TOKEN_FILE" in message
    assert str(missing) in message


def test_config_empty_secret_file_is_error(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("\n", encoding="utf-8")
    assert "OMIRO_ADMIN_TOKEN_FILE" in env_error({"OMIRO_ADMIN_TOKEN_FILE": str(secret)})


# --- config_as_dict -----------------------------------------------------------


def test_config_as_dict_masks_secrets() -> None:
    config = load_config(
        environ={
            "OMIRO_ADMIN_TOKEN": LONG + "admin-token",
            "OMIRO_ICE_TURN_SECRET": "turn-secret",
            "OMIRO_REDIS_URL": "redis://user:redis-pw@redis:6379/0",
        }
    )
    masked = config_as_dict(config)
    assert masked["admin"]["token"] == "***"
    assert masked["ice"]["turn_secret"] == "***"
    assert masked["session"]["secret"] == ""  # empty stays empty
    assert masked["redis"]["url"] == "redis://user:***@redis:6379/0"
    assert "admin-token" not in repr(masked)
    plain = config_as_dict(config, mask_secrets=False)
    assert plain["admin"]["token"] == LONG + "admin-token"
    assert plain["redis"]["url"] == "redis://user:redis-pw@redis:6379/0"


def test_config_as_dict_round_trips() -> None:
    config = load_config(environ={"OMIRO_SERVER_TRUSTED_PROXIES": "10.0.0.0/8"})
    as_dict = config_as_dict(config, mask_secrets=False)
    assert as_dict["server"]["trusted_proxies"] == ["10.0.0.0/8"]
    assert msgspec.convert(as_dict, Config) == config


def test_config_redis_backend_needs_a_shared_secret() -> None:
    message = env_error({"OMIRO_BACKEND_KIND": "redis"})
    assert "session.secret" in message
    assert "share" in message
    config = load_config(environ={"OMIRO_BACKEND_KIND": "redis", "OMIRO_SESSION_SECRET": LONG})
    assert config.backend.kind == "redis"


def test_config_redis_dead_after_must_exceed_the_heartbeat() -> None:
    message = env_error({"OMIRO_REDIS_HEARTBEAT_S": "2", "OMIRO_REDIS_DEAD_AFTER_S": "2"})
    assert "redis.dead_after_s" in message
    config = load_config(
        environ={"OMIRO_REDIS_HEARTBEAT_S": "0.5", "OMIRO_REDIS_DEAD_AFTER_S": "1.5"}
    )
    assert (config.redis.heartbeat_s, config.redis.dead_after_s) == (0.5, 1.5)


@pytest.mark.parametrize(
    "url", ["redis+sentinel://127.0.0.1:26379/mymaster", "redis-cluster://127.0.0.1:7000"]
)
def test_config_sentinel_and_cluster_urls_are_refused(url: str) -> None:
    # The docs say Sentinel and Cluster are not supported: such a URL never starts a server.
    assert "redis.url" in env_error({"OMIRO_REDIS_URL": url})


def test_config_short_secret_error_does_not_echo_it(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[admin]\ntoken = "hunter2hunter2"\n')
    assert "at least 32 bytes" in message
    assert "hunter2" not in message


def test_config_secrets_of_32_bytes_are_accepted() -> None:
    config = load_config(environ={"OMIRO_SESSION_SECRET": LONG, "OMIRO_ADMIN_TOKEN": LONG})
    assert config.session.secret == config.admin.token == LONG


def test_config_client_ip_header_with_trusted_proxies_is_accepted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[server]\ntrusted_proxies = ["10.0.0.0/8"]\nclient_ip_header = "CF-Connecting-IP"\n',
    )
    assert load_config(path, environ={}).server.client_ip_header == "CF-Connecting-IP"


def test_config_send_queue_bytes_holds_two_of_the_largest_messages() -> None:
    message = env_error(
        {"OMIRO_SERVER_MAX_FRAME_BYTES": "1048576", "OMIRO_SERVER_SEND_QUEUE_BYTES": "1048576"}
    )
    assert "server.send_queue_bytes" in message
    assert "2097152" in message
    config = load_config(
        environ={
            "OMIRO_SERVER_MAX_FRAME_BYTES": "1048576",
            "OMIRO_SERVER_SEND_QUEUE_BYTES": "2097152",
        }
    )
    assert config.server.send_queue_bytes == 2 * config.server.max_frame_bytes


# --- ice.relay_only "auto" ----------------------------------------------------

TURN = {"OMIRO_ICE_TURN_URLS": "turn:turn.example.org:3478", "OMIRO_ICE_TURN_SECRET": "s"}


@pytest.mark.parametrize(
    ("environ", "relay_only", "relayed"),
    [
        ({}, "auto", False),  # the default, without TURN: direct calls as before
        (TURN, "auto", True),  # the default, with TURN: relay-only
        ({**TURN, "OMIRO_ICE_RELAY_ONLY": "auto"}, "auto", True),
        ({**TURN, "OMIRO_ICE_RELAY_ONLY": "AUTO"}, "auto", True),
        ({"OMIRO_ICE_RELAY_ONLY": "auto"}, "auto", False),
        ({**TURN, "OMIRO_ICE_RELAY_ONLY": "false"}, False, False),  # turned off by hand
        ({**TURN, "OMIRO_ICE_RELAY_ONLY": "true"}, True, True),
        ({"OMIRO_ICE_RELAY_ONLY": "no"}, False, False),
    ],
)
def test_config_relay_only_auto_follows_turn(
    environ: dict[str, str], relay_only: object, relayed: bool
) -> None:
    ice = load_config(environ=environ).ice
    assert ice.relay_only == relay_only
    assert ice.relayed is relayed


def test_config_relay_only_auto_in_a_file(tmp_path: Path) -> None:
    text = '[ice]\nrelay_only = "auto"\nturn_urls = ["turn:a:3478"]\nturn_secret = "s"\n'
    assert load_config(write(tmp_path, text), environ={}).ice.relayed is True


@pytest.mark.parametrize("text", ['relay_only = "always"', "relay_only = 1", 'relay_only = ""'])
def test_config_relay_only_bad_value_lists_the_settings(tmp_path: Path, text: str) -> None:
    message = load_error(tmp_path, f"[ice]\n{text}\n")
    assert "ice.relay_only" in message
    assert "(expected true, false or 'auto')" in message


def test_config_relay_only_env_bad_value_lists_the_settings() -> None:
    message = env_error({"OMIRO_ICE_RELAY_ONLY": "sometimes"})
    assert message == (
        "OMIRO_ICE_RELAY_ONLY: ice.relay_only: expected a boolean "
        "(true/false/1/0/yes/no) or 'auto', got 'sometimes'"
    )


def test_config_relay_only_true_without_turn_says_auto_exists() -> None:
    message = env_error({"OMIRO_ICE_RELAY_ONLY": "true"})
    assert "ice.relay_only: needs at least one ice.turn_urls entry" in message
    assert '"auto"' in message
