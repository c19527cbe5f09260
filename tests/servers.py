"""The Redis and PostgreSQL servers the tests use, and the one rule for when they are absent:
skip with the reason outside CI, fail under `CI=true` (CI must run these tests); the removal of
what a test created on them; a free local port and the `tokenward` command for the tests that
start their own server processes."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path
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


def drop_redis_prefix(prefix: str) -> None:
    """Delete every Redis key under `prefix` (what one test wrote)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def drop_postgres_schema(schema: str) -> None:
    """Drop a PostgreSQL schema (what one test created) with everything in it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


#: Redis prefixes and PostgreSQL schemas made for the running test; tests/conftest.py drops them
#: after it (stores opened by helpers that are not fixtures register here).
REDIS_PREFIXES: set[str] = set()
POSTGRES_SCHEMAS: set[str] = set()


def drop_registered() -> None:
    """Remove what the running test registered in `REDIS_PREFIXES` / `POSTGRES_SCHEMAS`."""
    while REDIS_PREFIXES:
        drop_redis_prefix(REDIS_PREFIXES.pop())
    while POSTGRES_SCHEMAS:
        drop_postgres_schema(POSTGRES_SCHEMAS.pop())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tokenward_command() -> list[str]:
    """The `tokenward` command of this interpreter's environment (fails the test when absent)."""
    script = Path(sys.executable).with_name("tokenward")
    found = str(script) if script.exists() else shutil.which("tokenward")
    if found is None:
        pytest.fail("the `tokenward` command is not installed (pip install -e '.[all]')")
    return [found]
