"""What callers are served carries no refresh token (issue 12): the provider's `Grant` stays
inside the sources, the refresh protocol and the stores; `TokenManager.token()`, `atoken()`,
`refresh()`, `invalidate()`, `TokenAuth` and function sources' callers get a `Token`.

Real manager, real HTTP against the provider emulator, real SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tokenward import Grant, TokenAuth
from tokenward.manager import TokenManager
from tokenward.retry import RetryPolicy
from tokenward.sources import FunctionSource, RefreshTokenGrant
from tokenward.stores import SQLiteStore, Store
from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET
from tokenward.testing.server import EmulatorServer
from tokenward.token import Token

pytestmark = pytest.mark.timeout(60)

KEY = "ml"
FAST = RetryPolicy(initial=0.01, maximum=0.05, deadline=5)


def assert_served(token: Token, store: Store) -> None:
    """`token` is a plain `Token`, and no value of it is the stored refresh token."""
    record = store.load(KEY)
    assert record is not None and record.refresh_token
    assert type(token) is Token
    assert not hasattr(token, "refresh_token")
    values = [repr(getattr(token, f.name)) for f in fields(token)]
    assert not any(record.refresh_token in value for value in values)
    assert record.refresh_token not in repr(token)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "tokens.db")
    yield opened
    opened.close()


@pytest.fixture
def manager(tokenward_emulator: EmulatorServer, store: SQLiteStore) -> Iterator[TokenManager]:
    source = RefreshTokenGrant(
        tokenward_emulator.token_url, TEST_CLIENT_ID, TEST_CLIENT_SECRET, client_auth="body"
    )
    with TokenManager(KEY, source, store, retry=FAST) as opened:
        refresh = tokenward_emulator.emulator.issue_refresh_token(TEST_CLIENT_ID)
        opened.seed(refresh_token=refresh)
        yield opened


def test_every_sync_path_serves_a_token_without_refresh_token(
    tokenward_emulator: EmulatorServer, manager: TokenManager, store: SQLiteStore
) -> None:
    first = manager.token()  # obtained: the provider's grant, stored, then served
    assert_served(first, store)
    assert_served(manager.token(), store)  # the hot path: the cached token
    rotated = manager.refresh()  # a forced refresh with a rotated refresh token
    assert rotated.version == first.version + 1
    assert_served(rotated, store)
    assert_served(manager.invalidate(first), store)  # an old token: adopts the current one
    source = RefreshTokenGrant(
        tokenward_emulator.token_url, TEST_CLIENT_ID, TEST_CLIENT_SECRET, client_auth="body"
    )
    with TokenManager(KEY, source, store, retry=FAST) as other:  # another process: adopts
        adopted = other.token()
        assert adopted.access_token == rotated.access_token
        assert_served(adopted, store)
    assert tokenward_emulator.emulator.counters["refreshes"] == 2


async def test_async_paths_serve_a_token_without_refresh_token(
    manager: TokenManager, store: SQLiteStore
) -> None:
    assert_served(await manager.atoken(), store)
    assert_served(await manager.arefresh(), store)


def test_token_auth_sends_the_served_token(
    tokenward_emulator: EmulatorServer, manager: TokenManager, store: SQLiteStore
) -> None:
    seen: list[str] = []

    def record(request: httpx2.Request) -> None:
        seen.append(request.headers["Authorization"])

    hooks: dict[str, Any] = {"request": [record]}
    with httpx2.Client(auth=TokenAuth(manager), event_hooks=hooks) as client:
        assert client.get(f"{tokenward_emulator.api_url}/items").status_code == 200
    served = manager.token()
    assert_served(served, store)
    assert seen == [served.authorization]


def test_a_function_source_gets_the_grant_its_callers_do_not(tmp_path: Path) -> None:
    """A function source may run its own refresh: it receives the current grant (a `Token`
    with the stored refresh token); what the manager serves has none."""
    received: list[Token | None] = []

    def fetch(current: Token | None) -> Grant:
        received.append(current)
        number = len(received)
        return Grant(f"access-{number}", expires_at=None, refresh_token=f"refresh-{number}")

    store = SQLiteStore(tmp_path / "tokens.db")
    with TokenManager(KEY, FunctionSource(fetch, rotating=True), store, retry=FAST) as manager:
        manager.seed(refresh_token="refresh-0")
        assert_served(manager.token(), store)
        assert_served(manager.refresh(), store)
    store.close()
    assert received[0] is None  # the seed holds no access token yet: nothing to hand over
    assert isinstance(received[1], Grant) and received[1].refresh_token == "refresh-1"
