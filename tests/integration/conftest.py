"""Fixtures shared by the integration tests."""

from __future__ import annotations

from typing import Any

import pytest
from redis_support import new_prefix


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Config overrides for each backend, for a test that holds on both (``start_server``)."""
    if request.param == "memory":
        return {}
    redis = request.getfixturevalue("redis_server")
    return {
        "backend__kind": "redis",
        "redis__url": redis.url,
        "redis__key_prefix": new_prefix(),
        "session__secret": "a-shared-secret-of-at-least-32-bytes",
    }
