"""A token's expiry counts from when its request was sent, not from when the answer arrived
(issue 16, section 4).

A provider starts a token's `expires_in` when it issues the token, somewhere between our send
and our receipt. Counted from receipt, the client believes the token lives longer than it does
by the token call's latency, so proactive refresh is late by that much and requests meet
expired-token 401s at every expiry. The emulator's `answer_latency` puts that latency after the
token is issued, where it does the damage.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx2
import pytest

from tokenward import TokenAuth
from tokenward.manager import TokenManager
from tokenward.sources import ApiKeyExchange, FunctionSource, RefreshTokenGrant
from tokenward.stores import MemoryStore, SQLiteStore
from tokenward.testing import TEST_API_KEY, TEST_CLIENT_ID
from tokenward.testing.emulator import Emulator
from tokenward.testing.server import EmulatorServer
from tokenward.token import Token

pytestmark = pytest.mark.timeout(60)

KEY = "ml"


@pytest.fixture
def emulator(tokenward_emulator: EmulatorServer) -> Emulator:
    emu = tokenward_emulator.emulator
    # 2-second tokens; the token call takes 200 ms: 100 ms before the token is issued, 100 ms
    # while its answer travels back (the token's lifetime already runs). Before the fix the
    # client overestimated each token's life by those 100 ms; after it, a request would have to
    # be delayed by more than 100 ms (+ the leeway) between `token()` and the provider's check
    # to meet an expired token.
    emu.configure(access_lifetime=2, latency=0.1, answer_latency=0.1)
    return emu


def test_stored_expiry_is_never_later_than_the_providers(
    tmp_path: Path, emulator: Emulator, source: RefreshTokenGrant
) -> None:
    """Deterministic: whatever the machine's load, the expiry the client stores is no later
    than the one the provider enforces (issue time by the provider's clock + lifetime)."""
    store = SQLiteStore(tmp_path / "tokens.db")
    try:
        with TokenManager(KEY, source, store) as manager:
            manager.seed(refresh_token=emulator.issue_refresh_token(TEST_CLIENT_ID))
            for _ in range(5):
                token = manager.refresh()
                issued = emulator.refresh_log[-1]["time"]  # wall clock, when the token was made
                assert token.expires_at is not None
                assert token.expires_at <= issued + emulator.access_lifetime, (
                    f"the client thinks the token lives "
                    f"{token.expires_at - issued - emulator.access_lifetime:.3f}s longer"
                )
                assert token.lifetime == pytest.approx(2.0)  # the full lifetime, no less
                record = store.load(KEY)
                assert record is not None and record.expires_at == token.expires_at
    finally:
        store.close()


async def test_async_expiry_counts_from_the_send(
    emulator: Emulator, source: RefreshTokenGrant
) -> None:
    async with TokenManager(KEY, source, MemoryStore()) as manager:
        manager.seed(refresh_token=emulator.issue_refresh_token(TEST_CLIENT_ID))
        token = await manager.arefresh()
        issued = emulator.refresh_log[-1]["time"]
        assert token.expires_at is not None
        assert token.expires_at <= issued + emulator.access_lifetime


async def test_api_key_exchange_expiry_counts_from_the_send(
    tokenward_emulator: EmulatorServer, emulator: Emulator
) -> None:
    """The non-rotating async driver (its own client, on the loop) and a default lifetime:
    counted from the send too. The provider holds the request; any time read while it is held
    is after the send and before the receipt."""
    source = ApiKeyExchange(
        tokenward_emulator.url + "/v1/streaming.create_token", TEST_API_KEY, default_lifetime=60
    )
    async with TokenManager("heygen", source, MemoryStore()) as manager:
        hold = emulator.hold("session", stage="received")
        refresh = asyncio.ensure_future(manager.arefresh())
        await asyncio.to_thread(hold.wait)
        while_held = time.time()
        hold.release()
        token = await refresh
    assert token.expires_at is not None
    assert token.expires_at - 60 < while_held


def test_function_source_expiry_counts_from_the_call() -> None:
    """A token function that takes a while: its `expires_in` counts from the call."""
    called: list[float] = []

    def fetch(current: Token | None) -> dict[str, object]:
        called.append(time.time())
        time.sleep(0.1)  # the token function's own latency (what it models, not a wait)
        return {"access_token": f"tok-{len(called)}", "expires_in": 60}

    with TokenManager("fn", FunctionSource(fetch), MemoryStore()) as manager:
        token = manager.token()
    assert token.expires_at is not None
    assert token.expires_at <= called[0] + 60


def test_no_expired_token_401_at_expiry_over_http(
    tokenward_emulator: EmulatorServer, emulator: Emulator, source: RefreshTokenGrant
) -> None:
    """Requests flow back to back across two expiries of 2-second tokens: none meets an
    expired-token 401 (counted by the provider), since proactive refresh now starts before the
    provider's expiry instead of the token call's latency after it."""
    with TokenManager(KEY, source, MemoryStore()) as manager:
        manager.seed(refresh_token=emulator.issue_refresh_token(TEST_CLIENT_ID))
        first = manager.token()
        sent = 0
        with httpx2.Client(auth=TokenAuth(manager)) as client:
            while len(emulator.refresh_log) < 3:  # the first token and two refreshes
                assert client.get(f"{tokenward_emulator.api_url}/items").status_code == 200
                sent += 1
            assert manager.token().version > first.version
    counters = emulator.counters
    assert counters["api_401_expired"] == 0, counters
    assert counters["api_401"] == 0 and counters["api_ok"] == sent, counters
