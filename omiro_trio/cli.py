"""The ``omiro`` command: ``serve`` and ``check-config``.

Exit codes: 0 after a clean stop (Ctrl-C or SIGTERM included), 1 when the
server could not start (port in use, ...), 2 for a configuration error.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import click
import msgspec
import trio

from omiro_trio import __version__
from omiro_trio.config import Config, config_as_dict, load_config
from omiro_trio.errors import ConfigError
from omiro_trio.logging import setup_logging

log = logging.getLogger("omiro")

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="omiro")
def main() -> None:
    """Omiro: self-hostable random video chat."""


@main.command()
@config_option
@click.option("--host", default=None, help="Address to listen on (overrides server.host).")
@click.option("--port", type=int, default=None, help="Port to listen on; 0 picks a free one.")
def serve(config_path: Path | None, host: str | None, port: int | None) -> None:
    """Run the server until Ctrl-C or SIGTERM, then drain and exit."""
    config = _load(config_path)
    server = config.server
    if host is not None:
        server = msgspec.structs.replace(server, host=host)
    if port is not None:
        if not 0 <= port <= 65535:
            raise click.BadParameter("must be 0..65535", param_hint="--port")
        server = msgspec.structs.replace(server, port=port)
    config = msgspec.structs.replace(config, server=server)
    setup_logging(config.log.level, config.log.format)
    failed = False
    try:
        trio.run(_serve_until_signalled, config)
    except* OSError as group:  # the port is taken, the address is not ours, ...
        for exc in group.exceptions:
            log.error("could not start: %s", exc)
        failed = True
    if failed:
        sys.exit(1)


async def _serve_until_signalled(config: Config) -> None:
    from omiro_trio.server import serve as run_server  # the CLI stays quick to import

    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                await run_server(config, stop)
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
