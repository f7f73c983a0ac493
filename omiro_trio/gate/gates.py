"""Which gate a server runs: ``[gate] kind`` made into an ``EntryGate``."""

from __future__ import annotations

import time
from collections.abc import Callable

from omiro_trio.backends.base import Backend
from omiro_trio.config import GateConfig
from omiro_trio.errors import ConfigError
from omiro_trio.gate import EntryGate, OpenGate
from omiro_trio.gate.invite import InviteGate
from omiro_trio.gate.oidc import OidcGate, OidcSettings
from omiro_trio.gate.oidc_rules import AgeRules, AllowList
from omiro_trio.gate.passes import GatePasses
from omiro_trio.gate.passphrase import PassphraseGate

__all__ = ["build_gate"]


def build_gate(
    config: GateConfig,
    secret: bytes,
    backend: Backend,
    *,
    wall: Callable[[], float] = time.time,
) -> EntryGate:
    """The gate of ``config.kind``.

    Args:
        secret: the session secret (signs the gate passes).
        backend: keeps invites, counts tries.

    Raises:
        ConfigError: a kind this server cannot run.
    """
    if config.kind == "open":
        return OpenGate()
    if config.kind == "passphrase":
        return PassphraseGate(
            config.passphrase_hash,
            secret,
            backend,
            remember_s=config.remember_s,
            tries_per_minute=config.tries_per_minute,
            wall=wall,
        )
    if config.kind == "invite":
        return InviteGate(
            secret,
            backend,
            remember_s=config.remember_s,
            tries_per_minute=config.tries_per_minute,
            wall=wall,
        )
    if config.kind == "oidc":
        settings = OidcSettings(
            issuer=config.oidc_issuer,
            client_id=config.oidc_client_id,
            client_secret=config.oidc_client_secret,
            redirect_url=config.oidc_redirect_url,
            scopes=config.oidc_scopes,
            allow=AllowList(
                tuple(domain.lower() for domain in config.oidc_email_domains),
                config.oidc_claim,
                config.oidc_claim_values,
            ),
            ages=AgeRules(
                config.age_claim,
                config.age_claim_kind,
                config.adult_age,
                config.min_age,
                config.require_age,
            ),
        )
        # Passes are bound to the provider and the client: another ends them all.
        epoch = f"oidc:{config.oidc_issuer}:{config.oidc_client_id}"
        passes = GatePasses(secret, epoch, config.remember_s)
        return OidcGate(
            settings,
            passes,
            secret,
            backend,
            tries_per_minute=config.tries_per_minute,
            wall=wall,
        )
    raise ConfigError(f'gate.kind: "{config.kind}" is not built into this server yet')
