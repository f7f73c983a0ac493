"""``omiro invite``, ``omiro raid`` and ``omiro gate``: the entry gate from the command line.

``invite`` and ``raid`` call a running server's admin API (as ``omiro
ban`` does, with the same ``--url``/``--token``/``--config``);
``gate hash-passphrase`` runs locally and prints what goes in ``[gate]
passphrase_hash``. Added to ``omiro`` through its ``omiro.commands`` entry
points (``pyproject.toml``), so ``omiro serve`` never imports them.
"""

from __future__ import annotations

import sys
import urllib.parse
from pathlib import Path
from typing import Any, Final

import click
import trio

from omiro_trio import accounts
from omiro_trio.cli import _admin_call, _admin_options, _unix

__all__ = ["gate", "invite", "parse_duration", "raid"]

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_duration(text: str) -> int:
    """Seconds in ``"90"``, ``"90s"``, ``"15m"``, ``"12h"`` or ``"7d"``.

    Raises:
        click.BadParameter: anything else.
    """
    text = text.strip().lower()
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    if not number.isdigit() or len(number) > 9:
        raise click.BadParameter(f"expected a duration such as 90s, 15m, 12h or 7d, got {text!r}")
    return int(number) * _UNITS[unit]


def _describe(entry: dict[str, Any]) -> str:
    note = f"  {entry['note']}" if entry.get("note") else ""
    return (
        f"{entry['id']}\t{entry['left']}/{entry['uses']} left\t"
        f"expires {_unix(entry['expires_at'])}\tby {entry['by']}{note}"
    )


@click.group()
def invite() -> None:
    """Make, list and revoke invite codes ([gate] kind = "invite")."""


@invite.command("create")
@_admin_options
@click.option("--uses", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--expires", default="7d", show_default=True, help="e.g. 12h, 7d, 30d.")
@click.option("--note", default="", help="Who it is for (kept with the invite).")
@click.option("--link", "link_base", default=None, help="Print the link on this base URL.")
def invite_create(
    config_path: Path | None,
    url: str | None,
    token: str | None,
    uses: int,
    expires: str,
    note: str,
    link_base: str | None,
) -> None:
    """Make an invite code; print it (shown this once) and its link."""
    body = {"uses": uses, "expires_s": parse_duration(expires), "note": note}
    payload = _admin_call(config_path, url, token, "POST", "/admin/invites", body, expect=201)
    code = payload["code"]
    click.echo(f"invite {_describe(payload['invite'])}")
    click.echo(f"code: {code}")
    base = (link_base or url or "https://YOUR-HOST").rstrip("/")
    click.echo(f"link: {base}/?{urllib.parse.urlencode({'invite': code})}")
    click.echo("the code is not shown again")


@invite.command("list")
@_admin_options
def invite_list(config_path: Path | None, url: str | None, token: str | None) -> None:
    """List the invites (expired ones for a day), newest first."""
    payload = _admin_call(config_path, url, token, "GET", "/admin/invites", expect=200)
    for entry in payload["invites"]:
        click.echo(_describe(entry))


@invite.command("revoke")
@_admin_options
@click.argument("invite_id")
def invite_revoke(
    config_path: Path | None, url: str | None, token: str | None, invite_id: str
) -> None:
    """Revoke the invite INVITE_ID: its code stops letting people in."""
    path = "/admin/invites/" + urllib.parse.quote(invite_id, safe="")
    _admin_call(config_path, url, token, "DELETE", path, expect=204)
    click.echo(f"revoked the invite {invite_id}")


@click.command()
@_admin_options
@click.argument("switch", type=click.Choice(["on", "off", "status"]))
@click.option(
    "--retry-after",
    "retry_after",
    default="5m",
    show_default=True,
    help="What refused pages are told to wait (on).",
)
@click.option(
    "--pow-only",
    "pow_only",
    is_flag=True,
    help="Do not pause: let newcomers in with proof of work at [gate] pow_raid_max_number (on).",
)
def raid(
    config_path: Path | None,
    url: str | None,
    token: str | None,
    switch: str,
    retry_after: str,
    pow_only: bool,
) -> None:
    """Raid mode: pause new sessions service-wide (on), resume them (off), or show it."""
    if switch == "status":
        payload = _admin_call(config_path, url, token, "GET", "/admin/raid", expect=200)
    else:
        body = {
            "on": switch == "on",
            "retry_after_s": parse_duration(retry_after),
            "pause": not pow_only,
        }
        payload = _admin_call(config_path, url, token, "PUT", "/admin/raid", body, expect=200)
    if payload["on"] and not payload.get("pause", True):
        click.echo(
            f"raid mode is on since {_unix(payload['since'])} (by {payload['by']}): "
            "newcomers must bring proof of work at the raid difficulty"
        )
    elif payload["on"]:
        click.echo(
            f"raid mode is on since {_unix(payload['since'])} (by {payload['by']}): "
            f"new sessions are paused, told to retry after {payload['retry_after_s']} s"
        )
    else:
        click.echo("raid mode is off: new sessions are let in")


@click.group()
def gate() -> None:
    """The entry gate's local tools (docs/gate.md)."""


@gate.command("hash-passphrase")
@click.option(
    "--stdin", "from_stdin", is_flag=True, help="Read the phrase from standard input (one line)."
)
def hash_passphrase(from_stdin: bool) -> None:
    """Print the argon2id hash of a passphrase, for [gate] passphrase_hash."""
    if from_stdin:
        phrase = sys.stdin.readline().rstrip("\r\n")
    else:
        phrase = click.prompt("passphrase", hide_input=True, confirmation_prompt=True)
    if not phrase:
        click.echo("omiro: the passphrase must not be empty", err=True)
        sys.exit(2)
    click.echo(trio.run(accounts.hash_password, phrase))
