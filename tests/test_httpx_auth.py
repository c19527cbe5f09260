"""`TokenAuth` on httpx2 and legacy httpx clients, sync and async, against the emulator.

Invariant 3: a request that meets an expired-token answer is replayed at most once, body
included, with a newer token; a second rejection reaches the caller as is.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from types import ModuleType
from typing import Any

import httpx
import httpx2
import pytest

from tokenward.integrations.httpx import TokenAuth
from tokenward.manager import TokenManager
from tokenward.retry import RetryPolicy
from tokenward.rules import ExpiryRule
from tokenward.sources import RefreshTokenGrant
from tokenward.stores import MemoryStore
from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET
from tokenward.testing.emulator import Emulator
from tokenward.testing.server import EmulatorServer
from tokenward.token import fingerprint

pytestmark = pytest.mark.timeout(60)

FAST = RetryPolicy(initial=0.01, maximum=0.05, deadline=5)
ML_RULE = ExpiryRule(json_fields={"message": "invalid_token"})
PAYLOAD = {"item": {"title": "Zapatillas", "price": 99.5}, "tags": ["a", "b"]}


@pytest.fixture(params=["httpx2", "httpx"])
def http(request: pytest.FixtureRequest) -> ModuleType:
    """The client package under test: httpx2, or the legacy httpx."""
    return {"httpx2": httpx2, "httpx": httpx}[request.param]


@pytest.fixture
def server(tokenward_emulator: EmulatorServer) -> EmulatorServer:
    return tokenward_emulator


@pytest.fixture
def make_manager(server: EmulatorServer) -> Iterator[Callable[..., TokenManager]]:
    managers: list[TokenManager] = []

    def make(**kwargs: Any) -> TokenManager:
        source = RefreshTokenGrant(
            server.token_url, TEST_CLIENT_ID, TEST_CLIENT_SECRET, client_auth="body"
        )
        manager = TokenManager("ml", source, MemoryStore(), retry=FAST, **kwargs)
        manager.seed(refresh_token=server.emulator.issue_refresh_token(TEST_CLIENT_ID))
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        manager.close()


@pytest.fixture
def manager(make_manager: Callable[..., TokenManager]) -> TokenManager:
    return make_manager()


def not_replayed(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "request.not_replayed"]


# -- the header -----------------------------------------------------------------------------
def test_sets_the_bearer_header(
    http: ModuleType, server: EmulatorServer, manager: TokenManager
) -> None:
    with http.Client(auth=TokenAuth(manager)) as client:
        response = client.get(server.api_url + "/users/me", headers={"Authorization": "Basic x"})
    assert response.status_code == 200
    assert response.json()["token_fingerprint"] == manager.token().fingerprint


async def test_async_sets_the_bearer_header(
    http: ModuleType, server: EmulatorServer, manager: TokenManager
) -> None:
    async with http.AsyncClient(auth=TokenAuth(manager)) as client:
        response = await client.get(server.api_url + "/users/me")
    assert response.status_code == 200
    assert response.json()["token_fingerprint"] == (await manager.atoken()).fingerprint


def test_is_an_auth_for_both_packages(manager: TokenManager) -> None:
    auth = TokenAuth(manager)
    assert isinstance(auth, httpx2.Auth) and isinstance(auth, httpx.Auth)
    assert repr(auth) == "TokenAuth('ml')"


# -- replay once ----------------------------------------------------------------------------
def test_expired_post_is_replayed_once_with_its_body(
    http: ModuleType, server: EmulatorServer, emulator: Emulator, manager: TokenManager
) -> None:
    old = manager.token()
    emulator.expire_access_tokens()  # the provider revoked it early; we still think it's fine
    with http.Client(auth=TokenAuth(manager)) as client:
        response = client.post(server.api_url + "/items", json=PAYLOAD)
    assert response.status_code == 200
    echo = response.json()
    assert echo["method"] == "POST" and echo["json"] == PAYLOAD
    new = manager.token()
    assert new.version > old.version
    assert echo["token_fingerprint"] == new.fingerprint != old.fingerprint
    counters = emulator.counters
    assert counters["api_calls"] == 2 and counters["api_401"] == 1
    assert counters["refreshes"] == 2  # the first token + one refresh


async def test_async_expired_post_is_replayed_once_with_its_body(
    http: ModuleType, server: EmulatorServer, emulator: Emulator, manager: TokenManager
) -> None:
    old = await manager.atoken()
    emulator.expire_access_tokens()
    async with http.AsyncClient(auth=TokenAuth(manager)) as client:
        response = await client.post(server.api_url + "/items", content=json.dumps(PAYLOAD))
    assert response.status_code == 200
    echo = response.json()
    assert echo["json"] == PAYLOAD
    new = await manager.atoken()
    assert new.version > old.version and echo["token_fingerprint"] == new.fingerprint
    assert emulator.counters["api_calls"] == 2


def test_short_lifetime_with_www_authenticate(
    http: ModuleType, server: EmulatorServer, emulator: Emulator, manager: TokenManager
) -> None:
    emulator.www_authenticate = True
    manager.token()
    emulator.advance(4000)  # past the emulator's 1 h lifetime, our clock does not know
    with http.Client(auth=TokenAuth(manager)) as client:
        response = client.put(server.api_url + "/items/1", data={"title": "x"})
    assert response.status_code == 200
    assert response.json()["body"] == "title=x"
    assert emulator.counters["api_401"] == 1


async def test_concurrent_expired_requests_share_one_refresh(
    http: ModuleType, server: EmulatorServer, emulator: Emulator, manager: TokenManager
) -> None:
    await manager.atoken()
    emulator.expire_access_tokens()
    refreshes = emulator.counters["refreshes"]
    async with http.AsyncClient(auth=TokenAuth(manager)) as client:
        responses = await asyncio.gather(
            *(client.post(server.api_url + "/items", json={"n": n}) for n in range(30))
        )
    assert [r.status_code for r in responses] == [200] * 30
    assert sorted(r.json()["json"]["n"] for r in responses) == list(range(30))
    assert emulator.counters["refreshes"] == refreshes + 1


# -- no second replay, no replay at all -----------------------------------------------------
def test_persistent_401_reaches_the_caller_after_three_calls(
    http: ModuleType, server: EmulatorServer, emulator: Emulator, manager: TokenManager
) -> None:
    manager.token()
    emulator.inject("401", times=5, endpoint="api")
    with http.Client(auth=TokenAuth(manager)) as client:
        response = client.post(server.api_url + "/items", json=PAYLOAD)
    assert response.status_code == 401
    assert response.json()["message"] == "invalid_token"
    counters = emulator.counters
    # Bounded (MAX_REPLAYS): each replay had a strictly newer token, then the rule stops.
    assert counters["api_calls"] == 3 and counters["api_401"] == 3
    assert counters["refreshes"] == 3  # the first token, then one refresh per replay


async def test_async_persistent_401_reaches_the_caller_after_three_calls(
    http: ModuleType, server: EmulatorServer, emulator: Emulator, manager: TokenManager
) -> None:
    await manager.atoken()
    emulator.inject("401", times=5, endpoint="api")
    async with http.AsyncClient(auth=TokenAuth(manager)) as client:
        response = await client.get(server.api_url + "/orders")
    assert response.status_code == 401
    assert emulator.counters["api_calls"] == 3


@pytest.mark.parametrize("use_async", [False, True])
async def test_insufficient_scope_is_not_refreshed_nor_replayed(
    http: ModuleType,
    server: EmulatorServer,
    emulator: Emulator,
    manager: TokenManager,
    use_async: bool,
) -> None:
    token = manager.token()
    requests = emulator.counters["token_requests"]
    url = server.api_url + "/scope-limited"
    if use_async:
        async with http.AsyncClient(auth=TokenAuth(manager)) as client:
            response = await client.get(url)
    else:
        with http.Client(auth=TokenAuth(manager)) as client:
            response = await asyncio.to_thread(client.get, url)
    assert response.status_code == 403
    assert "insufficient_scope" in response.headers["www-authenticate"]
    counters = emulator.counters
    assert counters["api_calls"] == 1 and counters["token_requests"] == requests
    assert manager.token() is token


def test_streaming_body_is_not_replayed(
    http: ModuleType,
    server: EmulatorServer,
    emulator: Emulator,
    manager: TokenManager,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tokenward")
    manager.token()
    refreshes = emulator.counters["refreshes"]
    emulator.expire_access_tokens()
    produced: list[bytes] = []

    def body() -> Iterator[bytes]:
        for chunk in (b'{"part": ', b"1}"):
            produced.append(chunk)
            yield chunk

    with http.Client(auth=TokenAuth(manager)) as client:
        response = client.post(server.api_url + "/upload", content=body())
        assert response.status_code == 401
        assert emulator.counters["api_calls"] == 1
        assert len(produced) == 2  # the stream was consumed once, never rewound
        # The rejected token was retired all the same: the next request goes out with a new one.
        assert emulator.counters["refreshes"] == refreshes + 1
        assert client.get(server.api_url + "/next").status_code == 200
        assert emulator.counters["api_401"] == 1
    (event,) = not_replayed(caplog)
    assert event.credential == "ml"  # type: ignore[attr-defined]
    assert "stream" in event.reason  # type: ignore[attr-defined]


async def test_async_streaming_body_is_not_replayed(
    http: ModuleType,
    server: EmulatorServer,
    emulator: Emulator,
    manager: TokenManager,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tokenward")
    await manager.atoken()
    emulator.expire_access_tokens()

    async def body() -> AsyncIterator[bytes]:
        yield b"chunk-1"
        yield b"chunk-2"

    async with http.AsyncClient(auth=TokenAuth(manager)) as client:
        response = await client.post(server.api_url + "/upload", content=body())
    assert response.status_code == 401
    assert emulator.counters["api_calls"] == 1
    assert len(not_replayed(caplog)) == 1


# -- MercadoLibre: the body decides ---------------------------------------------------------
def test_mercadolibre_rule_replays_invalid_token_bodies(
    http: ModuleType,
    server: EmulatorServer,
    emulator: Emulator,
    make_manager: Callable[..., TokenManager],
) -> None:
    manager = make_manager(expiry_rule=ML_RULE)
    old = manager.token()
    emulator.expire_access_tokens()  # 401 {"message": "invalid_token", ...}, no header
    with http.Client(auth=TokenAuth(manager)) as client:
        response = client.post(server.api_url + "/items", json=PAYLOAD)
    assert response.status_code == 200
    assert response.json()["json"] == PAYLOAD
    assert response.json()["token_fingerprint"] != old.fingerprint
    assert emulator.counters["api_calls"] == 2


def _mercadolibre_api(message: str, calls: list[str]) -> Callable[[Any], Any]:
    """A stand-in MercadoLibre API: every call is refused with a 401 carrying `message`."""

    def handler(request: Any) -> Any:
        calls.append(request.headers["Authorization"])
        body = {"message": message, "error": "unauthorized_request_error", "status": 401}
        return (httpx2 if isinstance(request, httpx2.Request) else httpx).Response(401, json=body)

    return handler


def test_mercadolibre_user_not_authorized_is_not_replayed(
    http: ModuleType, emulator: Emulator, make_manager: Callable[..., TokenManager]
) -> None:
    manager = make_manager(expiry_rule=ML_RULE)
    token = manager.token()
    calls: list[str] = []
    transport = http.MockTransport(_mercadolibre_api("user not authorized", calls))
    with http.Client(auth=TokenAuth(manager), transport=transport) as client:
        response = client.get("https://api.mercadolibre.example/users/me")
    assert response.status_code == 401
    assert response.json()["message"] == "user not authorized"
    assert calls == [token.authorization]  # one call, no refresh
    assert emulator.counters["token_requests"] == 1


async def test_async_mercadolibre_rule_reads_the_body_once(
    http: ModuleType, emulator: Emulator, make_manager: Callable[..., TokenManager]
) -> None:
    manager = make_manager(expiry_rule=ML_RULE)
    old = await manager.atoken()
    calls: list[str] = []
    transport = http.MockTransport(_mercadolibre_api("invalid_token", calls))
    async with http.AsyncClient(auth=TokenAuth(manager), transport=transport) as client:
        response = await client.get("https://api.mercadolibre.example/users/me")
    assert response.status_code == 401  # still refused after the replays
    assert response.json()["message"] == "invalid_token"
    new = await manager.atoken()
    assert len(calls) == 3 and calls[0] == old.authorization and calls[2] == new.authorization
    assert len(set(calls)) == 3  # each replay with a strictly newer token
    assert new.version == old.version + 2
    assert fingerprint(new.access_token) != old.fingerprint
