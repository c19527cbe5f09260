"""The Redis and PostgreSQL servers the tests use, and the one rule for when they are absent:
skip with the reason outside CI, fail under `CI=true` (CI must run these tests)."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REDIS_URL = os.environ.get("TOKENWARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "TOKENWARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)

_REACHABLE: dict[str, str | None] = {}  # server -> None when reachable, else why not


def unreachable(reason: str) -> NoReturn:
    """Skip (or fail under CI) the current test because a server is missing."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: this test must run)")
    pytest.skip(reason)


def _probe(server: str) -> None:
    if server == "redis":
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.ping()
        client.close()
    else:
        import psycopg

        psycopg.connect(POSTGRES_URL, connect_timeout=2).close()


def require(server: str) -> None:
    """Make sure `server` ("redis" or "postgres") answers; checked once per test session."""
    if server not in _REACHABLE:
        try:
            _probe(server)
            _REACHABLE[server] = None
        except Exception as exc:  # ImportError too: the extra is not installed
            _REACHABLE[server] = f"{type(exc).__name__}: {exc}".strip()
    reason = _REACHABLE[server]
    if reason is not None:
        unreachable(f"{server} is not reachable: {reason}")
