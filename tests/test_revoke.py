"""TokenManager.revoke(): at the provider emulator over loopback HTTP (RFC 7009), then in real
SQLite stores by compare-and-set, including a refresh and a login that land in another store
object (another process, as far as the store can tell) while the revocation runs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import pytest

from tokenward.errors import ReauthorizationRequired
from tokenward.manager import TokenManager
from tokenward.retry import RetryPolicy
from tokenward.sources import RefreshTokenGrant
from tokenward.sources.authorization import OAuthClient, make_client
from tokenward.stored_grant import ATTEMPTS, RevocationConflict, revoke_stored
from tokenward.stores import SQLiteStore
from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET
from tokenward.testing.server import EmulatorServer

KEY = "ml"
FAST = RetryPolicy(initial=0.01, maximum=0.05, deadline=5)


@pytest.fixture
def client(tokenward_emulator: EmulatorServer) -> OAuthClient:
    return make_client(
        tokenward_emulator.token_url,
        TEST_CLIENT_ID,
        TEST_CLIENT_SECRET,
        "body",
        revocation_url=tokenward_emulator.revoke_url,
    )


@pytest.fixture
def manager_for(
    tokenward_emulator: EmulatorServer, tmp_path: Path
) -> Iterator[Callable[..., TokenManager]]:
    """A manager on its own SQLiteStore object over one shared database file."""
    source = RefreshTokenGrant(
        tokenward_emulator.token_url, TEST_CLIENT_ID, TEST_CLIENT_SECRET, client_auth="body"
    )
    opened: list[tuple[TokenManager, SQLiteStore]] = []

    def make(**options: object) -> TokenManager:
        store = SQLiteStore(tmp_path / "tokens.db")
        manager = TokenManager(KEY, source, store, retry=FAST, **options)  # type: ignore[arg-type]
        opened.append((manager, store))
        return manager

    yield make
    for manager, store in opened:
        manager.close()
        store.close()


def _log_in(manager: TokenManager, server: EmulatorServer) -> str:
    refresh = server.emulator.issue_refresh_token(TEST_CLIENT_ID)
    manager.seed(refresh_token=refresh)
    return refresh


def test_revoke_at_the_provider_then_a_login_is_needed(
    manager_for: Callable[..., TokenManager],
    client: OAuthClient,
    tokenward_emulator: EmulatorServer,
) -> None:
    manager = manager_for()
    refresh = _log_in(manager, tokenward_emulator)
    access = manager.token().access_token
    record = manager.revoke(client, via=" in a test")
    emulator = tokenward_emulator.emulator
    assert record is not None and record.state == "needs_reauth"
    assert record.access_token is None and record.refresh_token is None
    assert "revoked at the provider in a test" in str(record.last_error)
    assert not emulator.is_access_token_valid(access)
    assert not emulator.is_refresh_token_valid(refresh)
    with pytest.raises(ReauthorizationRequired):
        manager.token()


def test_revoke_locally_asks_no_provider(
    manager_for: Callable[..., TokenManager], tokenward_emulator: EmulatorServer
) -> None:
    manager = manager_for()
    refresh = _log_in(manager, tokenward_emulator)
    record = revoke_stored(manager.store, KEY)
    assert record is not None and record.refresh_token is None
    assert record.last_error is not None and "revoked locally" in record.last_error
    assert tokenward_emulator.emulator.is_refresh_token_valid(refresh)
    assert tokenward_emulator.emulator.counters.get("revocations", 0) == 0
    assert revoke_stored(manager.store, "nobody") is None


def test_a_refresh_landing_during_the_revocation_is_revoked_too(
    manager_for: Callable[..., TokenManager],
    client: OAuthClient,
    tokenward_emulator: EmulatorServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The other process refreshes after our read, before the provider hears of the revocation:
    our compare-and-set fails, and the fresh record's tokens are revoked before it succeeds."""
    other = manager_for()
    _log_in(other, tokenward_emulator)
    landed: list[str] = []

    def refresh_elsewhere(request: httpx2.Request) -> None:
        if not landed:
            landed.append(other.refresh().access_token)

    hooked = httpx2.Client(event_hooks={"request": [refresh_elsewhere]})
    revoker = manager_for(http_client=hooked)
    caplog.set_level(logging.INFO, logger="tokenward")
    try:
        record = revoker.revoke(client)
    finally:
        hooked.close()
    assert len(landed) == 1
    current = other.store.load(KEY)
    assert record is not None and current is not None and current.version == record.version
    assert current.state == "needs_reauth" and current.refresh_token is None
    assert not tokenward_emulator.emulator.is_access_token_valid(landed[0])
    conflicts = [r for r in caplog.records if getattr(r, "event", None) == "store.conflict"]
    assert [getattr(r, "during", None) for r in conflicts] == ["revoke"]
    with pytest.raises(ReauthorizationRequired):
        other.refresh()


def test_logins_landing_every_time_end_in_a_clear_error(
    manager_for: Callable[..., TokenManager],
    client: OAuthClient,
    tokenward_emulator: EmulatorServer,
) -> None:
    other = manager_for()
    _log_in(other, tokenward_emulator)
    logins: list[str] = []

    def log_in_elsewhere(request: httpx2.Request) -> None:
        if b"token_type_hint=refresh_token" in request.content:
            logins.append(_log_in(other, tokenward_emulator))

    hooked = httpx2.Client(event_hooks={"request": [log_in_elsewhere]})
    revoker = manager_for(http_client=hooked)
    try:
        with pytest.raises(RevocationConflict, match="changed 3 times") as raised:
            revoker.revoke(client)
    finally:
        hooked.close()
    assert len(logins) == ATTEMPTS == 3
    assert TEST_CLIENT_SECRET not in str(raised.value)
    current = other.store.load(KEY)
    assert current is not None and current.state == "ok" and current.refresh_token == logins[-1]


async def test_arevoke_shares_the_steps(
    manager_for: Callable[..., TokenManager],
    client: OAuthClient,
    tokenward_emulator: EmulatorServer,
) -> None:
    manager = manager_for()
    refresh = _log_in(manager, tokenward_emulator)
    record = await manager.arevoke(client)
    assert record is not None and record.state == "needs_reauth"
    assert not tokenward_emulator.emulator.is_refresh_token_valid(refresh)
    with pytest.raises(ReauthorizationRequired):
        await manager.atoken()
