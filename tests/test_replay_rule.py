"""A second rejection right after a replay (issue 16, section 5).

An administrator revokes every access token (a password change, "log out everywhere") just
after a natural refresh: a request sent with the old token is refused, replayed with the token
the natural refresh produced, and refused again, because that one was revoked as well. The rule
(`tokenward.integrations._replay.replay_allowed`): a further replay only with a token strictly
newer than the one the replay failed with, at most `MAX_REPLAYS` replays in all. Every client
integration follows it; these tests drive the exact sequence over real HTTP with emulator holds.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import httpx2
import pytest
import requests

from tokenward import TokenAuth
from tokenward.integrations._replay import MAX_REPLAYS, replay_allowed
from tokenward.integrations.aiohttp import TokenMiddleware
from tokenward.integrations.requests import TokenAuth as RequestsAuth
from tokenward.integrations.sdk import ExpiryGuard, current_token
from tokenward.manager import TokenManager
from tokenward.sources import FunctionSource, RefreshTokenGrant
from tokenward.stores import MemoryStore
from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET
from tokenward.testing.emulator import Emulator, Hold, fingerprint
from tokenward.testing.server import EmulatorServer
from tokenward.token import Token

pytestmark = pytest.mark.timeout(60)


class VendorAuthError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


@pytest.fixture
def manager(tokenward_emulator: EmulatorServer, emulator: Emulator) -> Iterator[TokenManager]:
    source = RefreshTokenGrant(
        tokenward_emulator.token_url, TEST_CLIENT_ID, TEST_CLIENT_SECRET, client_auth="body"
    )
    with TokenManager("ml", source, MemoryStore()) as manager:
        manager.seed(refresh_token=emulator.issue_refresh_token(TEST_CLIENT_ID))
        yield manager


def test_the_rule() -> None:
    old = Token("a", version=1)
    assert replay_allowed(0, old, Token("a", version=1))  # the first replay: as ever
    assert replay_allowed(1, old, Token("b", version=2))  # strictly newer
    assert not replay_allowed(1, old, Token("a", version=2))  # same value: not newer
    assert not replay_allowed(1, old, Token("b", version=1))  # same version: not newer
    assert not replay_allowed(MAX_REPLAYS, old, Token("c", version=9))  # the bound


def revoke_after_natural_refresh(emulator: Emulator, manager: TokenManager, hold: Hold) -> None:
    """While the provider holds a request carrying the current token: a natural refresh, then
    an administrator revokes every access token (the fresh one included)."""
    hold.wait()
    manager.refresh()
    assert emulator.revoke_access_tokens() >= 2
    hold.release()


def check_served(emulator: Emulator, manager: TokenManager, answer: dict[str, Any]) -> None:
    """Served by the third send, with a token newer than the revoked ones; two refreshes."""
    assert answer["token_fingerprint"] == fingerprint(manager.token().access_token)
    counters = emulator.counters
    assert counters["api_401_revoked"] == 2 and counters["api_ok"] == 1, counters
    assert counters["api_calls"] == 3 and counters["refreshes"] == 3, counters


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(call()))
    thread.start()
    return thread, result


def test_httpx_replays_again_after_an_admin_revocation(
    tokenward_emulator: EmulatorServer, emulator: Emulator, manager: TokenManager
) -> None:
    manager.token()
    hold = emulator.hold("api", stage="received")
    with httpx2.Client(auth=TokenAuth(manager)) as client:
        thread, result = in_thread(
            lambda: client.post(f"{tokenward_emulator.api_url}/orders", json={"n": 1})
        )
        revoke_after_natural_refresh(emulator, manager, hold)
        thread.join(30)
    response = result[0]
    assert response.status_code == 200
    assert response.json()["json"] == {"n": 1}  # the body went along every time
    check_served(emulator, manager, response.json())


def test_requests_replays_again_after_an_admin_revocation(
    tokenward_emulator: EmulatorServer, emulator: Emulator, manager: TokenManager
) -> None:
    manager.token()
    hold = emulator.hold("api", stage="received")
    with requests.Session() as session:
        session.auth = RequestsAuth(manager)
        thread, result = in_thread(
            lambda: session.post(f"{tokenward_emulator.api_url}/orders", json={"n": 2})
        )
        revoke_after_natural_refresh(emulator, manager, hold)
        thread.join(30)
    response = result[0]
    assert response.status_code == 200 and len(response.history) == 2
    check_served(emulator, manager, response.json())


def test_sdk_guard_replays_again_after_an_admin_revocation(
    tokenward_emulator: EmulatorServer, emulator: Emulator, manager: TokenManager
) -> None:
    guard = ExpiryGuard(manager, on=VendorAuthError)

    def vendor_call() -> dict[str, Any]:
        headers = {"Authorization": current_token().authorization}
        answer = httpx2.get(f"{tokenward_emulator.api_url}/me", headers=headers)
        if answer.status_code == 401:
            raise VendorAuthError(401)
        return answer.json()  # type: ignore[no-any-return]

    manager.token()
    hold = emulator.hold("api", stage="received")
    thread, result = in_thread(lambda: guard.call(vendor_call))
    revoke_after_natural_refresh(emulator, manager, hold)
    thread.join(30)
    check_served(emulator, manager, result[0])


async def test_async_clients_replay_again_after_an_admin_revocation(
    tokenward_emulator: EmulatorServer, emulator: Emulator, manager: TokenManager
) -> None:
    url = f"{tokenward_emulator.api_url}/orders"

    async def with_httpx() -> dict[str, Any]:
        async with httpx2.AsyncClient(auth=TokenAuth(manager)) as client:
            response = await client.post(url, json={"n": 3})
            assert response.status_code == 200
            return response.json()  # type: ignore[no-any-return]

    async def with_aiohttp() -> dict[str, Any]:
        middlewares = (TokenMiddleware(manager),)
        async with (
            aiohttp.ClientSession(middlewares=middlewares) as session,
            session.post(url, json={"n": 4}) as response,
        ):
            assert response.status == 200
            return await response.json()  # type: ignore[no-any-return]

    for send in (with_httpx, with_aiohttp):
        await manager.atoken()
        emulator.reset_counters()
        hold = emulator.hold("api", stage="received")
        request = asyncio.ensure_future(send())
        await asyncio.to_thread(hold.wait)
        await manager.arefresh()
        emulator.revoke_access_tokens()
        hold.release()
        answer = await request
        assert answer["token_fingerprint"] == fingerprint((await manager.atoken()).access_token)
        counters = emulator.counters
        assert counters["api_401_revoked"] == 2 and counters["api_ok"] == 1, counters
        assert counters["api_calls"] == 3 and counters["refreshes"] == 2, counters


def test_no_further_replay_without_a_strictly_newer_token(
    tokenward_emulator: EmulatorServer, emulator: Emulator
) -> None:
    """A source that keeps handing out the same (revoked) token: replayed once as ever, then
    the rule stops, because nothing newer than the token the replay failed with exists."""
    revoked = emulator.issue_access_token(TEST_CLIENT_ID)
    emulator.revoke(revoked)
    source = FunctionSource(lambda current: revoked)
    with (
        TokenManager("fixed", source, MemoryStore()) as manager,
        httpx2.Client(auth=TokenAuth(manager)) as client,
    ):
        response = client.get(f"{tokenward_emulator.api_url}/me")
    assert response.status_code == 401
    assert emulator.counters["api_calls"] == 2 and emulator.counters["api_401_revoked"] == 2


def test_an_api_that_refuses_every_token_costs_a_bounded_number_of_calls(
    tokenward_emulator: EmulatorServer, emulator: Emulator, manager: TokenManager
) -> None:
    manager.token()
    emulator.inject("401", endpoint="api", times=100)
    with httpx2.Client(auth=TokenAuth(manager)) as client:
        for _ in range(3):
            assert client.get(f"{tokenward_emulator.api_url}/me").status_code == 401
    counters = emulator.counters
    # Per request: 1 + MAX_REPLAYS sends and at most MAX_REPLAYS refreshes; never a loop.
    assert counters["api_calls"] == 3 * (1 + MAX_REPLAYS)
    assert counters["refreshes"] <= 1 + 3 * MAX_REPLAYS


def test_broker_proxy_replays_again_after_an_admin_revocation(
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    tokenward_emulator: EmulatorServer,
    emulator: Emulator,
) -> None:
    from broker_support import CLIENT_SECRET_ENV, BrokerServer, write_config

    from tokenward.broker import create_app

    monkeypatch.setenv(CLIENT_SECRET_ENV, TEST_CLIENT_SECRET)
    monkeypatch.setenv("TWB_API_KEY", "unused")
    path, keys = write_config(tmp_path, tokenward_emulator.url)
    broker = BrokerServer(create_app(path)).start()
    try:
        manager = broker.app.state.broker.credentials["api"].manager
        manager.seed(refresh_token=emulator.issue_refresh_token(TEST_CLIENT_ID))
        headers = {"Authorization": f"Bearer {keys['backend']}"}
        url = f"{broker.url}/v1/proxy/api/api/orders"
        assert httpx2.post(url, headers=headers, json={"n": 0}).status_code == 200
        emulator.reset_counters()
        hold = emulator.hold("api", stage="received")
        thread, result = in_thread(lambda: httpx2.post(url, headers=headers, json={"n": 5}))
        revoke_after_natural_refresh(emulator, manager, hold)
        thread.join(30)
        answer = result[0]
        assert answer.status_code == 200 and answer.json()["json"] == {"n": 5}
        assert answer.json()["token_fingerprint"] == fingerprint(manager.token().access_token)
        counters = emulator.counters
        assert counters["api_401_revoked"] == 2 and counters["api_ok"] == 1, counters
        assert counters["refreshes"] == 2, counters  # the natural one, then one for the replay
    finally:
        broker.stop()
