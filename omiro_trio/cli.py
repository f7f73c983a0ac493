"""The ``omiro`` command: ``serve``, ``check-config``, and the admin API's
``ban``, ``report``, ``moderator`` and ``audit`` (what the moderator console
does, for scripts and cron jobs).

Installed packages add commands through the ``omiro.commands`` entry-point
group, loaded only when named (``omiro bench``, from ``omiro_bench``): the
server never imports them.

Exit codes: 0 after a clean stop (Ctrl-C or SIGTERM included), 1 when the
server could not start (port in use, ...), 2 for a configuration error.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import msgspec
import trio

from omiro_trio import __version__
from omiro_trio.addresses import base_url
from omiro_trio.config import Config, config_as_dict, load_config
from omiro_trio.errors import ConfigError
from omiro_trio.logging import setup_logging

log = logging.getLogger("omiro")

ADMIN_TIMEOUT_S = 10.0
COMMANDS_ENTRY_POINTS = "omiro.commands"
"""The entry-point group of the commands other packages add to ``omiro``."""

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML configuration file (default: $OMIRO_CONFIG, else built-in defaults).",
)


def _load(config_path: Path | None) -> Config:
    if config_path is None and os.environ.get("OMIRO_CONFIG"):
        config_path = Path(os.environ["OMIRO_CONFIG"])
    try:
        return load_config(config_path)
    except ConfigError as exc:
        click.echo(f"omiro: configuration error: {exc}", err=True)
        sys.exit(2)


class _Omiro(click.Group):
    """``omiro``'s own commands, then those of the ``omiro.commands`` entry points.

    An added command is imported when it is run or when the help lists the
    commands, never for one of ``omiro``'s own (``omiro serve``).
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_added_commands()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        entry_point = _added_commands().get(cmd_name)
        if entry_point is None:
            return None
        added = entry_point.load()
        if not isinstance(added, click.Command):
            raise TypeError(f"{entry_point.value} ({COMMANDS_ENTRY_POINTS}) is not a click command")
        return added


def _added_commands() -> dict[str, importlib.metadata.EntryPoint]:
    return {e.name: e for e in importlib.metadata.entry_points(group=COMMANDS_ENTRY_POINTS)}


@click.group(cls=_Omiro, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="omiro")
def main() -> None:
    """Omiro: self-hostable random video chat."""


@main.command()
@config_option
@click.option("--host", default=None, help="Address to listen on (overrides server.host).")
@click.option("--port", type=int, default=None, help="Port to listen on; 0 picks a free one.")
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="Processes sharing the port (SO_REUSEPORT), supervised; more than 1 needs Redis.",
)
@click.option("--reuse-port", is_flag=True, hidden=True, help="Run as one of --workers.")
@click.option("--server-id", default=None, hidden=True, help="(--workers) this worker's id.")
@click.option("--replaces", default=None, hidden=True, help="(--workers) the id of a dead one.")
def serve(
    config_path: Path | None,
    host: str | None,
    port: int | None,
    workers: int,
    reuse_port: bool,
    server_id: str | None,
    replaces: str | None,
) -> None:
    """Run the server until Ctrl-C or SIGTERM, then drain and exit."""
    config = _with_address(_load(config_path), host, port)
    setup_logging(config.log.level, config.log.format)
    if workers != 1:
        _supervise_workers(config, workers, config_path)
        return
    exit_code = _serve_one(config, reuse_port, server_id, replaces)
    if exit_code:
        sys.exit(exit_code)


def _with_address(config: Config, host: str | None, port: int | None) -> Config:
    """``config`` with ``--host`` and ``--port`` applied, when given."""
    server = config.server
    if host is not None:
        server = msgspec.structs.replace(server, host=host)
    if port is not None:
        if not 0 <= port <= 65535:
            raise click.BadParameter("must be 0..65535", param_hint="--port")
        server = msgspec.structs.replace(server, port=port)
    return msgspec.structs.replace(config, server=server)


def _supervise_workers(config: Config, workers: int, config_path: Path | None) -> None:
    """Run ``workers`` server processes on one port (exits 2 if the config cannot)."""
    from omiro_trio.workers import check_workers, supervise

    try:
        check_workers(config, workers)
    except ConfigError as refused:
        log.error("configuration error: %s", refused)
        sys.exit(2)
    if config_path is None and os.environ.get("OMIRO_CONFIG"):
        config_path = Path(os.environ["OMIRO_CONFIG"])
    trio.run(supervise, config, workers, config_path)


def _serve_one(
    config: Config, reuse_port: bool, server_id: str | None = None, replaces: str | None = None
) -> int:
    """Run one server process until signalled; returns the exit code (0, 1 or 2)."""
    exit_code = 0
    try:
        trio.run(_serve_until_signalled, config, reuse_port, server_id, replaces)
    except* ConfigError as problems:  # found only when starting (e.g. an unavailable backend)
        for problem in problems.exceptions:
            log.error("configuration error: %s", problem)
        exit_code = 2
    except* OSError as failures:  # the port is taken, the address is not ours, ...
        for exc in failures.exceptions:
            log.error("could not start: %s", exc)
        exit_code = 1
    return exit_code


async def _serve_until_signalled(
    config: Config,
    reuse_port: bool = False,
    server_id: str | None = None,
    replaces: str | None = None,
) -> None:
    from omiro_trio.server import serve as run_server  # the CLI stays quick to import

    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                await run_server(
                    config, stop, reuse_port=reuse_port, server_id=server_id, replaces=replaces
                )
                nursery.cancel_scope.cancel()

            nursery.start_soon(run)
            async for signum in signals:
                name = signal.Signals(signum).name
                if stop.is_set():
                    log.warning("%s again: stopping now", name)
                    nursery.cancel_scope.cancel()
                    return
                log.info("%s: draining (press Ctrl-C again to stop at once)", name)
                stop.set()


@main.command("check-config")
@config_option
def check_config(config_path: Path | None) -> None:
    """Validate the configuration and print it, secrets masked."""
    config = _load(config_path)
    for table, values in config_as_dict(config, mask_secrets=True).items():
        click.echo(f"[{table}]")
        for key, value in values.items():
            click.echo(f"{key} = {msgspec.json.encode(value).decode()}")
        click.echo()


@main.group()
def ban() -> None:
    """Manage bans through a running server's /admin API."""


def _admin_options(command: Callable[..., None]) -> Callable[..., None]:
    command = click.option(
        "--url",
        default=None,
        help="The server's base URL (default: from the config's server.host and server.port).",
    )(command)
    command = click.option(
        "--token",
        envvar="OMIRO_ADMIN_TOKEN",
        default=None,
        help="Admin bearer token (default: $OMIRO_ADMIN_TOKEN, else admin.token of the config).",
    )(command)
    return config_option(command)


def _admin_call(
    config_path: Path | None,
    url: str | None,
    token: str | None,
    method: str,
    path: str,
    body: Any = None,
    *,
    expect: int,
) -> Any:
    """Call the admin API; return its decoded JSON (or None) when it answers ``expect``.

    Exits 1 when the server is unreachable or answers another status (saying
    what it answered), 2 when there is no admin token.
    """
    if url is None or token is None:
        config = _load(config_path)
        host = config.server.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        url = url or base_url(host, config.server.port)
        token = token or config.admin.token
    if not token:
        click.echo("omiro: no admin token (set OMIRO_ADMIN_TOKEN or admin.token)", err=True)
        sys.exit(2)
    data = None if body is None else msgspec.json.encode(body)
    req = urllib.request.Request(
        url.rstrip("/") + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=ADMIN_TIMEOUT_S) as response:
            status, body_bytes = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body_bytes = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        click.echo(f"omiro: cannot reach {url}: {exc}", err=True)
        sys.exit(1)
    payload = msgspec.json.decode(body_bytes) if body_bytes else None
    if status != expect:
        message = payload.get("message") if isinstance(payload, dict) else None
        click.echo(f"omiro: the server answered {status}: {message or payload}", err=True)
        sys.exit(1)
    return payload


def _describe_ban(entry: dict[str, Any]) -> str:
    until = entry.get("until")
    ends = "permanent" if until is None else f"until {_unix(until)}"
    reason = f"  {entry['reason']}" if entry.get("reason") else ""
    by = f"  (by {entry['by']})" if entry.get("by") else ""
    return f"{entry['target']}\t{ends}{reason}{by}"


def _unix(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@ban.command("add")
@_admin_options
@click.argument("target")
@click.option(
    "--duration",
    "duration_s",
    type=click.IntRange(min=1),
    default=None,
    help="Seconds the ban lasts (default: permanent).",
)
@click.option("--reason", default="", help="Why (kept with the ban, for operators).")
def ban_add(
    config_path: Path | None,
    url: str | None,
    token: str | None,
    target: str,
    duration_s: int | None,
    reason: str,
) -> None:
    """Ban TARGET, an IP address, a CIDR network or account:KEY (an account key a
    report names); its open sockets are closed."""
    body = {"target": target, "duration_s": duration_s, "reason": reason}
    payload = _admin_call(config_path, url, token, "POST", "/admin/bans", body, expect=201)
    click.echo(f"banned {_describe_ban(payload)}")


@ban.command("list")
@_admin_options
@click.option("--search", default="", help="Only bans whose target, reason or setter has this.")
def ban_list(config_path: Path | None, url: str | None, token: str | None, search: str) -> None:
    """List the bans in force, newest first."""
    path = "/admin/bans" + (f"?{urllib.parse.urlencode({'q': search})}" if search else "")
    payload = _admin_call(config_path, url, token, "GET", path, expect=200)
    for entry in payload["bans"]:
        click.echo(_describe_ban(entry))


@ban.command("remove")
@_admin_options
@click.argument("target")
def ban_remove(config_path: Path | None, url: str | None, token: str | None, target: str) -> None:
    """Lift the ban of TARGET (exactly as it was banned)."""
    path = "/admin/bans/" + urllib.parse.quote(target, safe="")
    _admin_call(config_path, url, token, "DELETE", path, expect=204)
    click.echo(f"lifted the ban of {target}")


# -- moderation: accounts, reports, the audit log ---------------------------------


@main.group()
def moderator() -> None:
    """Manage moderator accounts through a running server's /admin API."""


@moderator.command("add")
@_admin_options
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["moderator", "admin"]),
    default="moderator",
    help="moderator: reports and bans up to moderation.moderator_max_ban_s; admin: everything.",
)
def moderator_add(
    config_path: Path | None, url: str | None, token: str | None, name: str, role: str
) -> None:
    """Make the account NAME and print its password (shown this once, kept only as a hash)."""
    body = {"name": name, "role": role}
    payload = _admin_call(config_path, url, token, "POST", "/admin/moderators", body, expect=201)
    click.echo(f"made the {role} account {name}")
    click.echo(f"password: {payload['password']}")
    click.echo("sign in at /console on the server; the password is not shown again")


@moderator.command("list")
@_admin_options
def moderator_list(config_path: Path | None, url: str | None, token: str | None) -> None:
    """List the accounts."""
    payload = _admin_call(config_path, url, token, "GET", "/admin/moderators", expect=200)
    for entry in payload["moderators"]:
        click.echo(f"{entry['name']}\t{entry['role']}\tsince {_unix(entry['created_at'])}")


@moderator.command("remove")
@_admin_options
@click.argument("name")
def moderator_remove(
    config_path: Path | None, url: str | None, token: str | None, name: str
) -> None:
    """Remove the account NAME; its console sessions end with it."""
    path = "/admin/moderators/" + urllib.parse.quote(name, safe="")
    _admin_call(config_path, url, token, "DELETE", path, expect=204)
    click.echo(f"removed the account {name}")


@main.group()
def report() -> None:
    """Work the report queue through a running server's /admin API."""


def _describe_report(entry: dict[str, Any]) -> str:
    state = entry["status"]["state"]
    extra = f" by {entry['status']['by']}" if entry["status"].get("by") else ""
    auto = "  auto-banned" if entry["status"].get("autoban") else ""
    reporters = f"  {entry['reporters']} reporters" if "reporters" in entry else ""
    return (
        f"#{entry['id']}\t{entry.get('category', '')}\t{entry['reported_ip']}\t"
        f"{_unix(entry['at'])}\t{state}{extra}{reporters}{auto}"
    )


@report.command("queue")
@_admin_options
def report_queue(config_path: Path | None, url: str | None, token: str | None) -> None:
    """List the open reports, most urgent first."""
    payload = _admin_call(config_path, url, token, "GET", "/admin/queue", expect=200)
    for entry in payload["reports"]:
        click.echo(_describe_report(entry))


@report.command("show")
@_admin_options
@click.argument("report_id", type=int)
def report_show(
    config_path: Path | None, url: str | None, token: str | None, report_id: int
) -> None:
    """Show one report with its transcript and its client's history."""
    payload = _admin_call(config_path, url, token, "GET", f"/admin/reports/{report_id}", expect=200)
    click.echo(_describe_report(payload))
    click.echo(f"reason: {payload['reason']}")
    if payload.get("match_s") is not None:
        click.echo(f"the match had lasted {payload['match_s']} s")
    if payload.get("reported_account"):
        click.echo(f"reported account: account:{payload['reported_account']}")
    click.echo(f"reported by {payload['reporter_ip']}")
    for line in payload["transcript"]:
        click.echo(f"  {line}")
    click.echo(f"earlier reports of this client: {len(payload['earlier_reports'])}")
    for ban_entry in payload["bans"] + payload.get("account_bans", []):
        click.echo(f"  banned {_describe_ban(ban_entry)}")


def _report_action(
    config_path: Path | None,
    url: str | None,
    token: str | None,
    report_id: int,
    action: str,
    body: dict[str, Any],
) -> None:
    path = f"/admin/reports/{report_id}/{action}"
    payload = _admin_call(config_path, url, token, "POST", path, body, expect=200)
    state = payload["status"]
    click.echo(
        f"report #{report_id}: {state['state']}"
        + (f" ({state['action']})" if state["action"] else "")
    )


@report.command("claim")
@_admin_options
@click.argument("report_id", type=int)
def report_claim(
    config_path: Path | None, url: str | None, token: str | None, report_id: int
) -> None:
    """Claim a report, so no other moderator acts on it at once."""
    _report_action(config_path, url, token, report_id, "claim", {})


@report.command("ban")
@_admin_options
@click.argument("report_id", type=int)
@click.option(
    "--duration",
    "duration_s",
    type=click.IntRange(min=1),
    default=None,
    help="Seconds the ban lasts (default: permanent; admins only).",
)
@click.option("--note", default="", help="Why (kept with the ban and in the audit log).")
@click.option(
    "--account",
    is_flag=True,
    help="Ban the reported account (the report names one) instead of its address.",
)
def report_ban(
    config_path: Path | None,
    url: str | None,
    token: str | None,
    report_id: int,
    duration_s: int | None,
    note: str,
    account: bool,
) -> None:
    """Ban the reported client (or account); its open sockets are closed on every server."""
    body = {"duration_s": duration_s, "note": note, "target": "account" if account else "address"}
    _report_action(config_path, url, token, report_id, "ban", body)


@report.command("dismiss")
@_admin_options
@click.argument("report_id", type=int)
@click.option("--note", default="", help="Why (kept in the audit log).")
def report_dismiss(
    config_path: Path | None, url: str | None, token: str | None, report_id: int, note: str
) -> None:
    """Dismiss a report: nothing to act on."""
    _report_action(config_path, url, token, report_id, "dismiss", {"note": note})


@report.command("lift")
@_admin_options
@click.argument("report_id", type=int)
@click.option("--note", default="", help="Why (kept in the audit log).")
def report_lift(
    config_path: Path | None, url: str | None, token: str | None, report_id: int, note: str
) -> None:
    """Lift the ban in force on the reported client (an automatic one) and dismiss the report."""
    _report_action(config_path, url, token, report_id, "lift", {"note": note})


@main.group()
def audit() -> None:
    """The audit log of moderator actions (admins)."""


@audit.command("export")
@_admin_options
@click.option("--format", "kind", type=click.Choice(["jsonl", "csv"]), default="jsonl")
@click.option(
    "--output", type=click.File("wb"), default="-", help="File to write (default: stdout)."
)
def audit_export(
    config_path: Path | None, url: str | None, token: str | None, kind: str, output: Any
) -> None:
    """Write the whole audit log kept, newest first, as JSON Lines or CSV."""
    from omiro_trio.backends.base import AuditEntry
    from omiro_trio.moderation import audit_csv, audit_jsonl

    entries: list[AuditEntry] = []
    before: int | None = None
    while True:
        query = {"limit": "1000"} | ({"before": str(before)} if before else {})
        path = "/admin/audit?" + urllib.parse.urlencode(query)
        payload = _admin_call(config_path, url, token, "GET", path, expect=200)
        entries += msgspec.convert(payload["entries"], list[AuditEntry])
        before = payload["next_before"]
        if before is None:
            break
    output.write(audit_csv(entries) if kind == "csv" else audit_jsonl(entries))
