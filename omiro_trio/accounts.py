"""Moderator accounts' secrets: passwords, console session keys, CSRF tokens.

A password is made by the server (``new_password``: 128 random bits,
shown once) and kept only as an argon2id hash (argon2-cffi's defaults,
RFC 9106's low-memory profile: 64 MiB, 3 passes). Hashing is slow and
memory-hungry on purpose, so it runs in a worker thread, never on the event
loop, and at most ``HASHES_AT_ONCE`` at a time in the process: a flood of
sign-ins waits its turn (and is throttled per client before it gets here,
``admin.AuthFailures``) instead of taking the memory of many at once.

A console session is a random key in a cookie; the backend keeps it under
the key's SHA-256 (``session_key``), so what Redis holds cannot be replayed
as a cookie.
"""

from __future__ import annotations

import functools
import hashlib
import secrets

import argon2
import trio
import trio.lowlevel

HASHES_AT_ONCE = 2
"""Password hashes computed at once in the process (each takes 64 MiB for ~0.1 s)."""

_hasher = argon2.PasswordHasher()
_limiter: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("hash_limiter")


def _hashing() -> trio.CapacityLimiter:
    """This run's limit on hashes at once."""
    try:
        return _limiter.get()
    except LookupError:
        limiter = trio.CapacityLimiter(HASHES_AT_ONCE)
        _limiter.set(limiter)
        return limiter


@functools.cache
def _dummy_hash() -> str:
    """Checked when the account does not exist, so the answer takes as long either way."""
    return _hasher.hash(secrets.token_urlsafe(16))


def new_password() -> str:
    """A fresh password for an account: 128 random bits, URL-safe text."""
    return secrets.token_urlsafe(16)


def new_token() -> str:
    """A console session's cookie value, or its CSRF token: 256 random bits."""
    return secrets.token_urlsafe(32)


def session_key(cookie: str) -> str:
    """What the backend keeps a console session under: the cookie value's SHA-256."""
    return hashlib.sha256(cookie.encode("utf-8", "replace")).hexdigest()


async def hash_password(password: str) -> str:
    """``password``'s argon2id hash (a PHC string), computed in a worker thread."""
    return await trio.to_thread.run_sync(_hasher.hash, password, limiter=_hashing())


async def check_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches ``password_hash`` (None: no such account; still hashed)."""

    def verify() -> bool:
        try:
            return _hasher.verify(password_hash or _dummy_hash(), password) and bool(password_hash)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    return await trio.to_thread.run_sync(verify, limiter=_hashing())
