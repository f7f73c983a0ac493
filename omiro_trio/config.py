"""Typed, frozen configuration from ``omiro.toml`` and ``OMIRO_*`` variables.

Rules (``docs/configuration.md`` is the user-facing version):

* Precedence: built-in defaults < the TOML file < the environment.
* One frozen struct per TOML table; attribute names are the TOML keys of the
  public contract in DESIGN.md. Lists are ``tuple[str, ...]``; durations that
  may be fractional are ``float`` (TOML integers are accepted).
* Strict: an unknown table or key, a wrong type or an invalid value raises
  :class:`~omiro_trio.errors.ConfigError` whose message starts with where the
  value came from (the file path, or the environment variable) and names the
  key as ``table.key``. A missing file or invalid TOML (with its line) is a
  ``ConfigError`` too. Nothing is silently ignored.
* Environment: every key has an override ``OMIRO_<TABLE>_<KEY>`` (upper
  case), parsed to the key's type: integers, floats, booleans
  (``true/false/1/0/yes/no``), lists as a JSON array of strings or a
  comma-separated string (empty string: empty list). Any other ``OMIRO_*``
  variable is an error, except the reserved ``OMIRO_CONFIG`` (the config
  file's path, read by the CLI), ``OMIRO_DEBUG_STALLS_MS`` and
  ``OMIRO_DEBUG_TRACEMALLOC`` (diagnostic switches, read by
  ``diagnostics.py``).
* Secrets (``session.secret``, ``admin.token``, ``ice.turn_secret``,
  ``alerts.secret``, ``gate.passphrase_hash``, ``gate.oidc_client_secret``) can also
  come from a file named by ``OMIRO_<TABLE>_<KEY>_FILE`` (one trailing newline
  stripped, must not be empty). Setting both the variable and ``_FILE`` is an
  error. Secrets never appear in error messages, and :func:`config_as_dict`
  masks them.

This module is pure: it reads the one file it is given and the mapping it is
passed (``os.environ`` by default), and imports nothing from the rest of Omiro
except the error type.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from omiro_trio.errors import ConfigError

__all__ = [
    "SECRET_KEYS",
    "AdminConfig",
    "AlertsConfig",
    "BackendConfig",
    "Config",
    "ConfigError",
    "GateConfig",
    "IceConfig",
    "LimitsConfig",
    "LogConfig",
    "MatchmakingConfig",
    "ModerationConfig",
    "PageConfig",
    "RedisConfig",
    "ReportsConfig",
    "ServerConfig",
    "SessionConfig",
    "config_as_dict",
    "env_var_name",
    "load_config",
]

DAY_S = 86400


# Every number has a range (docs/configuration.md lists them): a value outside
# is an error naming the key, at start and in ``omiro check-config``.
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]  # 0: any free port (tests)
PositiveDuration = Annotated[int, msgspec.Meta(ge=1, le=365 * DAY_S)]
_HEADER_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
MIN_SECRET_BYTES = 32


class _Table(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every table: immutable, hashable, no unknown keys."""


class ServerConfig(_Table, frozen=True):
    host: str = "127.0.0.1"
    port: Port = 8080
    allowed_origins: tuple[str, ...] = ()  # empty: same host as the request
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose forwarding headers are believed
    client_ip_header: str = ""  # e.g. "CF-Connecting-IP": believed only from trusted_proxies
    ipv6_prefix: Annotated[int, msgspec.Meta(ge=32, le=128)] = (
        64  # IPv6 addresses of one such network count as one client
    )
    connections_per_ip: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = (
        64  # open TCP connections per client
    )
    max_frame_bytes: Annotated[int, msgspec.Meta(ge=256, le=16 * 1024 * 1024)] = 65536
    send_queue: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 256
    send_queue_bytes: Annotated[int, msgspec.Meta(ge=4096, le=1 << 30)] = 1 << 20
    idle_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0
    drain_grace_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 10.0
    # What server_draining tells clients to wait before they reconnect.
    reconnect_after_ms: Annotated[int, msgspec.Meta(ge=0, le=600_000)] = 1000
    # A matched client that beats (``alive``) and is silent this long has lost its partner.
    lost_after_s: Annotated[float, msgspec.Meta(ge=3, le=300)] = 15.0
    # How long a seat taken back with a match ticket waits for the partner's.
    resume_grace_s: Annotated[float, msgspec.Meta(ge=1, le=600)] = 30.0


class SessionConfig(_Table, frozen=True):
    secret: str = ""  # empty: random per process; else at least 32 bytes
    token_ttl_s: Annotated[int, msgspec.Meta(ge=10, le=30 * DAY_S)] = 600
    ticket_ttl_s: Annotated[int, msgspec.Meta(ge=60, le=DAY_S)] = 7200  # a match ticket's life


class BackendConfig(_Table, frozen=True):
    kind: Literal["memory", "redis"] = "memory"


class RedisConfig(_Table, frozen=True):
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "omiro:"
    pool_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 50  # connections per process
    heartbeat_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 2.0  # each server says it lives
    dead_after_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 6.0  # silent this long: swept
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0  # connect, reply, pooled conn


class MatchmakingConfig(_Table, frozen=True):
    interest_timeout_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 5.0
    rematch_cooldown_s: Annotated[float, msgspec.Meta(ge=0, le=30 * DAY_S)] = 300.0


class LimitsConfig(_Table, frozen=True):
    sessions_per_ip_per_minute: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 60
    sockets_per_ip: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10
    messages_per_second: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 20
    message_burst: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 40
    nexts_per_minute: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 30
    reports_per_hour: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10
    max_chat_length: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1000


class ReportsConfig(_Table, frozen=True):
    autoban_reporters: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    autoban_window_s: PositiveDuration = 3600
    autoban_s: PositiveDuration = 86400
    # Reports with their transcripts, and each client's report and ban history.
    retention_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = 30


class ModerationConfig(_Table, frozen=True):
    """The moderator console and accounts (docs/moderation.md)."""

    audit_retention_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = 365
    session_idle_s: Annotated[int, msgspec.Meta(ge=60, le=7 * DAY_S)] = 1800
    moderator_max_ban_s: PositiveDuration = 7 * DAY_S  # the longest ban a moderator may set
    claim_s: Annotated[int, msgspec.Meta(ge=10, le=DAY_S)] = 900  # a claim lapses after this


class IceConfig(_Table, frozen=True):
    urls: tuple[str, ...] = ("stun:stun.l.google.com:19302",)
    turn_urls: tuple[str, ...] = ()
    turn_secret: str = ""  # coturn static-auth-secret
    turn_ttl_s: Annotated[int, msgspec.Meta(ge=60, le=30 * DAY_S)] = 3600
    # "auto": relay-only exactly when turn_urls is set (strangers never see
    # each other's address); true needs turn_urls; false: direct calls allowed.
    relay_only: bool | Literal["auto"] = "auto"

    @property
    def relayed(self) -> bool:
        """Whether browsers are told to use TURN relays only."""
        if self.relay_only == "auto":
            return bool(self.turn_urls)
        return self.relay_only


class AdminConfig(_Table, frozen=True):
    token: str = ""  # empty: /admin answers 404; else at least 32 bytes


class AlertsConfig(_Table, frozen=True):
    """A webhook told of what needs a person at once (docs/moderation.md, "Alerts")."""

    webhook_url: str = ""  # empty: no alerts; else http(s)://...
    secret: str = ""  # signs each alert (HMAC-SHA256); at least 32 bytes, needed with a URL
    reports_per_hour: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 20  # a spike past this
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 5.0  # one attempt's deadline
    retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 3  # attempts after the first


class LogConfig(_Table, frozen=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class PageConfig(_Table, frozen=True):
    notice: str = ""  # the first-visit notice, plain text; empty: the built-in one
    terms_url: str = ""  # linked under the notice when set
    privacy_url: str = ""
    blur_remote: bool = True  # the stranger's video starts blurred until the user shows it
    nudity_filter: bool = False  # the on-device nudity filter is on unless the user turns it off


class GateConfig(_Table, frozen=True):
    """Who may have a session token (docs/gate.md)."""

    kind: Literal["open", "passphrase", "invite", "oidc"] = "open"
    # The shared phrase's argon2id hash (``omiro gate hash-passphrase``); kind "passphrase".
    passphrase_hash: str = ""
    # How long a person who passed the gate is remembered (the gate pass cookie).
    remember_s: Annotated[int, msgspec.Meta(ge=60, le=365 * DAY_S)] = 30 * DAY_S
    # Phrase or invite code tries per client per minute (each try of a phrase costs a hash).
    tries_per_minute: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    # kind "oidc": the provider (its issuer URL, exactly as its discovery document says it),
    # this service's client there, and the callback registered with it ("" : the
    # request's origin + /gate/oidc/callback).
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = ""
    oidc_redirect_url: str = ""
    oidc_scopes: tuple[str, ...] = ("openid", "email")
    # Allow-lists (empty: everyone the provider signs in): verified email domains;
    # a claim (e.g. "groups") that must hold one of oidc_claim_values.
    oidc_email_domains: tuple[str, ...] = ()
    oidc_claim: str = ""
    oidc_claim_values: tuple[str, ...] = ()
    # Age bands: the claim holding the age ("" : bands unknown, not used), read as a
    # "birthdate" (YYYY-MM-DD) or an "adult_flag" (a boolean, true: an adult).
    age_claim: str = ""
    age_claim_kind: Literal["birthdate", "adult_flag"] = "birthdate"
    adult_age: Annotated[int, msgspec.Meta(ge=1, le=150)] = 18
    min_age: Annotated[int, msgspec.Meta(ge=0, le=150)] = 0  # younger: refused
    require_age: bool = False  # refuse an account whose age is unknown
    # Proof of work (ALTCHA) before a session token: "off", "always", or "adaptive"
    # (on while new sessions per minute exceed pow_adaptive_per_minute, service-wide).
    pow_mode: Literal["off", "always", "adaptive"] = "off"
    # Difficulty: the solver tries up to this many numbers (half on average).
    pow_max_number: Annotated[int, msgspec.Meta(ge=1000, le=100_000_000)] = 20_000
    # The difficulty while raid mode is on and lets people in with proof of work.
    pow_raid_max_number: Annotated[int, msgspec.Meta(ge=1000, le=100_000_000)] = 100_000
    # How long a challenge may be solved and used (each is good once).
    pow_expiry_s: Annotated[int, msgspec.Meta(ge=10, le=3600)] = 300
    # pow_mode = "adaptive": new sessions per minute, service-wide, that switch it on ...
    pow_adaptive_per_minute: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 600
    # ... and how long the rate must stay at or under that before it switches off.
    pow_quiet_s: Annotated[int, msgspec.Meta(ge=60, le=DAY_S)] = 600


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole configuration; one attribute per TOML table."""

    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    session: SessionConfig = msgspec.field(default_factory=SessionConfig)
    backend: BackendConfig = msgspec.field(default_factory=BackendConfig)
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    matchmaking: MatchmakingConfig = msgspec.field(default_factory=MatchmakingConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    reports: ReportsConfig = msgspec.field(default_factory=ReportsConfig)
    moderation: ModerationConfig = msgspec.field(default_factory=ModerationConfig)
    ice: IceConfig = msgspec.field(default_factory=IceConfig)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    alerts: AlertsConfig = msgspec.field(default_factory=AlertsConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    page: PageConfig = msgspec.field(default_factory=PageConfig)
    gate: GateConfig = msgspec.field(default_factory=GateConfig)


SECRET_KEYS: frozenset[tuple[str, str]] = frozenset(
    {
        ("session", "secret"),
        ("admin", "token"),
        ("ice", "turn_secret"),
        ("alerts", "secret"),
        ("gate", "passphrase_hash"),
        ("gate", "oidc_client_secret"),
    }
)
ENV_PREFIX = "OMIRO_"
RESERVED_ENV: frozenset[str] = frozenset(
    {"OMIRO_CONFIG", "OMIRO_DEBUG_STALLS_MS", "OMIRO_DEBUG_TRACEMALLOC"}
)

# table -> key -> the key's type with Annotated constraints stripped.
_TABLES: dict[str, type[_Table]] = typing.get_type_hints(Config)
_KEY_TYPES: dict[str, dict[str, Any]] = {
    table: typing.get_type_hints(cls) for table, cls in _TABLES.items()
}
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_ICE_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")
_TURN_SCHEMES = ("turn:", "turns:")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_ORIGIN_RE = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#@\sA-Z]+")


def env_var_name(table: str, key: str) -> str:
    """Return the environment variable that overrides ``table.key``."""
    return f"{ENV_PREFIX}{table}_{key}".upper()


_ENV_KEYS: dict[str, tuple[str, str]] = {
    env_var_name(table, key): (table, key) for table, keys in _KEY_TYPES.items() for key in keys
}

# Where each (table, key) that is not a default came from, for error messages.
_Sources = dict[tuple[str, str], str]


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Build the configuration: defaults, then the TOML file, then the environment.

    Args:
        path: the TOML file; ``None`` means defaults (plus environment) only.
        environ: the environment to read ``OMIRO_*`` variables from;
            ``None`` means ``os.environ``.

    Raises:
        ConfigError: the file is missing or not TOML, or a table, key, type,
            value or variable is invalid. The message names the source and key.
    """
    raw: dict[str, dict[str, Any]] = {}
    sources: _Sources = {}
    if path is not None:
        _merge_file(Path(path), raw, sources)
    _merge_environ(os.environ if environ is None else environ, raw, sources)
    try:
        config = msgspec.convert(raw, Config, strict=True)
    except msgspec.ValidationError as exc:
        raise _translate(exc, sources) from None
    _check_values(config, sources)
    return config


def config_as_dict(config: Config, *, mask_secrets: bool = True) -> dict[str, dict[str, Any]]:
    """Return the configuration as plain ``{table: {key: value}}`` (lists, not tuples).

    Secrets are ``"***"`` when set and ``""`` when empty, and a password in
    ``redis.url`` is replaced by ``***``, unless ``mask_secrets`` is false.
    """
    result: dict[str, dict[str, Any]] = {}
    for table in _TABLES:
        values = msgspec.structs.asdict(getattr(config, table))
        for key, value in values.items():
            if isinstance(value, tuple):
                values[key] = list(value)
            elif mask_secrets and (table, key) in SECRET_KEYS:
                values[key] = "***" if value else ""
            elif mask_secrets and (table, key) == ("redis", "url"):
                values[key] = _mask_password(value)
        result[table] = values
    return result


def _merge_file(path: Path, raw: dict[str, dict[str, Any]], sources: _Sources) -> None:
    try:
        with path.open("rb") as f:
            document = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 ({exc.reason})") from None
    for table, values in document.items():
        if table not in _TABLES:
            raise ConfigError(f"{path}: {table}: unknown table{_suggest(table, _TABLES)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: {table}: must be a table ([{table}]), not a value")
        for key, value in values.items():
            if key not in _KEY_TYPES[table]:
                hint = _suggest(key, _KEY_TYPES[table], f"{table}.")
                raise ConfigError(f"{path}: {table}.{key}: unknown key{hint}")
            raw.setdefault(table, {})[key] = value
            sources[(table, key)] = str(path)


def _merge_environ(
    environ: Mapping[str, str], raw: dict[str, dict[str, Any]], sources: _Sources
) -> None:
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in RESERVED_ENV:
            continue
        if name in _ENV_KEYS:
            table, key = _ENV_KEYS[name]
            if name + "_FILE" in environ and (table, key) in SECRET_KEYS:
                raise ConfigError(
                    f"{name}: {table}.{key}: set either {name} or {name}_FILE, not both"
                )
            value = _parse_env(name, environ[name], table, key)
            where = name
        elif name.endswith("_FILE") and _ENV_KEYS.get(name[:-5]) in SECRET_KEYS:
            table, key = _ENV_KEYS[name[:-5]]
            value = _read_secret_file(name, environ[name], table, key)
            where = f"{name} ({environ[name]})"
        else:
            hint = _suggest(
                name, [*_ENV_KEYS, *(f"{n}_FILE" for n, k in _ENV_KEYS.items() if k in SECRET_KEYS)]
            )
            raise ConfigError(f"{name}: unknown Omiro environment variable{hint}")
        raw.setdefault(table, {})[key] = value
        sources[(table, key)] = where


def _parse_env(name: str, text: str, table: str, key: str) -> Any:
    """Parse one variable's text to the type of ``table.key``."""
    tp = _KEY_TYPES[table][key]
    stripped = text.strip()
    problem = ""
    if tp is bool or _is_bool_or_choice(tp):
        if stripped.lower() in _TRUE:
            return True
        if stripped.lower() in _FALSE:
            return False
        words = _words(tp)
        if stripped.lower() in words:
            return stripped.lower()
        problem = "expected a boolean (true/false/1/0/yes/no)" + "".join(
            f" or {w!r}" for w in words
        )
    elif tp is int:
        try:
            return int(stripped)
        except ValueError:
            problem = "expected an integer"
    elif tp is float:
        try:
            return float(stripped)
        except ValueError:
            problem = "expected a number"
    elif typing.get_origin(tp) is tuple:
        if not stripped.startswith("["):
            return [item.strip() for item in stripped.split(",") if item.strip()]
        try:
            items = json.loads(stripped)
        except ValueError as exc:
            problem = f"invalid JSON array ({exc})"
        else:
            if isinstance(items, list) and all(isinstance(i, str) for i in items):
                return items
            problem = "expected a JSON array of strings"
    else:  # str and Literal: checked by msgspec like a TOML value
        return text
    raise ConfigError(f"{name}: {table}.{key}: {problem}, got {text!r}")


def _is_bool_or_choice(tp: Any) -> bool:
    """``bool | Literal[...]``: a switch with named settings besides on and off."""
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and bool in typing.get_args(tp)


def _words(tp: Any) -> list[str]:
    """The named settings of a ``bool | Literal[...]`` key (``[]`` for a plain bool)."""
    return [w for arg in typing.get_args(tp) for w in typing.get_args(arg) if isinstance(w, str)]


def _read_secret_file(name: str, file: str, table: str, key: str) -> str:
    try:
        secret = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise ConfigError(f"{name}: {table}.{key}: cannot read {file}: {reason}") from None
    secret = secret.removesuffix("\n").removesuffix("\r")
    if not secret:
        raise ConfigError(f"{name}: {table}.{key}: secret file {file} is empty")
    return secret


def _translate(exc: msgspec.ValidationError, sources: _Sources) -> ConfigError:
    """Turn msgspec's ``... - at `$.table.key[i]``` into ``source: table.key[i]: ...``."""
    message, _, where = str(exc).rpartition(" - at `$.")
    match = re.fullmatch(r"(\w+)\.(\w+)(.*)`", where)
    if not message or match is None:  # unknown fields are caught earlier; be safe anyway
        return ConfigError(f"invalid configuration: {exc}")
    table, key, index = match.groups()
    allowed = typing.get_args(_KEY_TYPES[table][key])
    if typing.get_origin(_KEY_TYPES[table][key]) is Literal:
        message += f" (expected one of {', '.join(map(repr, allowed))})"
    elif _is_bool_or_choice(_KEY_TYPES[table][key]):
        words = _words(_KEY_TYPES[table][key])
        message += f" (expected true, false{''.join(f' or {w!r}' for w in words)})"
    return _error(sources, table, key, message[0].lower() + message[1:], index)


def _error(sources: _Sources, table: str, key: str, problem: str, index: str = "") -> ConfigError:
    source = sources.get((table, key), "default")
    return ConfigError(f"{source}: {table}.{key}{index}: {problem}")


def _check_values(config: Config, sources: _Sources) -> None:
    """Checks that types and numeric bounds cannot express."""
    for table in _TABLES:
        for key, value in msgspec.structs.asdict(getattr(config, table)).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise _error(sources, table, key, f"must be a finite number, got {value}")
    server, ice = config.server, config.ice
    if not server.host.strip():
        raise _error(sources, "server", "host", "must not be empty")
    if server.client_ip_header and _HEADER_RE.fullmatch(server.client_ip_header) is None:
        problem = f"expected an HTTP header name, got {server.client_ip_header!r}"
        raise _error(sources, "server", "client_ip_header", problem)
    if server.client_ip_header and not server.trusted_proxies:
        problem = "is read only from server.trusted_proxies, and that list is empty"
        raise _error(sources, "server", "client_ip_header", problem)
    for table, key, secret in (
        ("session", "secret", config.session.secret),
        ("admin", "token", config.admin.token),
        ("alerts", "secret", config.alerts.secret),
    ):
        # Not echoed: only the length is named.
        if secret and len(secret.encode()) < MIN_SECRET_BYTES:
            problem = (
                f"must be at least {MIN_SECRET_BYTES} bytes (got {len(secret.encode())}); "
                "generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
            raise _error(sources, table, key, problem)
    for i, cidr in enumerate(server.trusted_proxies):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            problem = f"not an IP address or CIDR network: {cidr!r}"
            raise _error(sources, "server", "trusted_proxies", problem, f"[{i}]") from None
    for i, origin in enumerate(server.allowed_origins):
        if not _valid_origin(origin):
            problem = f"expected scheme://host[:port] in lower case, no path, got {origin!r}"
            raise _error(sources, "server", "allowed_origins", problem, f"[{i}]")
    for key, urls, schemes in (
        ("urls", ice.urls, _ICE_SCHEMES),
        ("turn_urls", ice.turn_urls, _TURN_SCHEMES),
    ):
        for i, url in enumerate(urls):
            if not url.startswith(schemes) or url.endswith(":") or any(c.isspace() for c in url):
                problem = f"expected a URL starting with {' or '.join(schemes)}, got {url!r}"
                raise _error(sources, "ice", key, problem, f"[{i}]")
    alerts = config.alerts
    if alerts.webhook_url:
        if not re.fullmatch(r"https?://[^\s/?#]+(/\S*)?", alerts.webhook_url):
            problem = f"expected an http:// or https:// URL, got {alerts.webhook_url!r}"
            raise _error(sources, "alerts", "webhook_url", problem)
        if not alerts.secret:
            problem = "needs alerts.secret to sign the alerts"
            raise _error(sources, "alerts", "webhook_url", problem)
    if ice.relay_only is True and not ice.turn_urls:
        problem = 'needs at least one ice.turn_urls entry (or "auto": relay-only when there is one)'
        raise _error(sources, "ice", "relay_only", problem)
    if ice.turn_urls and not ice.turn_secret:
        problem = "needs ice.turn_secret to issue TURN credentials"
        raise _error(sources, "ice", "turn_urls", problem)
    for key in ("terms_url", "privacy_url"):
        link = getattr(config.page, key)
        if link and not _valid_link(link):
            problem = f"expected an http(s) URL or a relative link, got {link!r}"
            raise _error(sources, "page", key, problem)
    url = config.redis.url
    if not url.startswith(_REDIS_SCHEMES) or url in _REDIS_SCHEMES:
        # Not echoed: a Redis URL may carry a password.
        problem = f"expected a URL starting with {', '.join(_REDIS_SCHEMES)}"
        raise _error(sources, "redis", "url", problem)
    if server.send_queue_bytes < 2 * server.max_frame_bytes:
        problem = (
            f"must be at least twice server.max_frame_bytes ({2 * server.max_frame_bytes}): "
            "room for the largest message and the rest of one being written"
        )
        raise _error(sources, "server", "send_queue_bytes", problem)
    if config.redis.dead_after_s <= config.redis.heartbeat_s:
        problem = "must be longer than redis.heartbeat_s (a live server would be swept)"
        raise _error(sources, "redis", "dead_after_s", problem)
    gate = config.gate
    if gate.kind == "passphrase" and not gate.passphrase_hash:
        problem = (
            'kind = "passphrase" needs gate.passphrase_hash '
            "(make one with: omiro gate hash-passphrase)"
        )
        raise _error(sources, "gate", "kind", problem)
    if gate.passphrase_hash and not gate.passphrase_hash.startswith("$argon2"):
        # Not echoed: the hash is kept like a secret.
        problem = "expected an argon2 hash (make one with: omiro gate hash-passphrase)"
        raise _error(sources, "gate", "passphrase_hash", problem)
    if gate.kind == "oidc":
        for key in ("oidc_issuer", "oidc_client_id", "oidc_client_secret"):
            if not getattr(gate, key):
                raise _error(sources, "gate", key, 'must be set with kind = "oidc"')
        issuer = urlsplit(gate.oidc_issuer)
        local = issuer.hostname in ("127.0.0.1", "localhost", "::1")
        if issuer.scheme != "https" and not (issuer.scheme == "http" and local):
            problem = "must be an https:// URL (http:// only for a provider on this host)"
            raise _error(sources, "gate", "oidc_issuer", problem)
        if bool(gate.oidc_claim) != bool(gate.oidc_claim_values):
            problem = "gate.oidc_claim and gate.oidc_claim_values go together"
            raise _error(sources, "gate", "oidc_claim_values", problem)
    if config.backend.kind != "memory" and not config.session.secret:
        # Every server must verify the tokens the others signed.
        problem = f"must be set with backend.kind = {config.backend.kind!r}: servers share tokens"
        raise _error(sources, "session", "secret", problem)


def _valid_origin(origin: str) -> bool:
    if _ORIGIN_RE.fullmatch(origin) is None or origin.endswith(":"):
        return False
    try:
        parts = urlsplit(origin)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError:
        return False
    return bool(parts.hostname)


def _valid_link(link: str) -> bool:
    """An http(s) URL or a link relative to the page: nothing a page could run."""
    if any(c.isspace() or ord(c) < 32 for c in link):
        return False
    parts = urlsplit(link)
    if parts.scheme:
        return parts.scheme in ("http", "https") and bool(parts.netloc)
    return True


def _mask_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    user, colon, password = userinfo.partition(":")
    return f"{scheme}{sep}{user}{colon}***{at}{host}" if password else url


def _suggest(name: str, candidates: typing.Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""
