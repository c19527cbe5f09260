"""`tokenward.integrations.aiohttp.TokenMiddleware` against the emulator over real HTTP."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import aiohttp
import pytest
from clients_support import Events

from tokenward import TokenManager
from tokenward.integrations.aiohttp import TokenMiddleware
from tokenward.testing import fingerprint
from tokenward.testing.server import EmulatorServer


@pytest.fixture
async def session(manager: TokenManager) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(middlewares=(TokenMiddleware(manager),)) as session:
        yield session


async def test_sets_the_bearer_header(
    tokenward_emulator: EmulatorServer, manager: TokenManager, session: aiohttp.ClientSession
) -> None:
    async with session.get(tokenward_emulator.api_url + "/items") as answer:
        assert answer.status == 200
        body = await answer.json()
    assert body["token_fingerprint"] == fingerprint((await manager.atoken()).access_token)
    assert repr(TokenMiddleware(manager)) == "TokenMiddleware('ml')"


async def test_post_meeting_a_401_is_replayed_once_with_the_same_body_and_a_newer_token(
    tokenward_emulator: EmulatorServer,
    manager: TokenManager,
    session: aiohttp.ClientSession,
    events: Events,
) -> None:
    old = await manager.atoken()
    tokenward_emulator.emulator.expire_access_tokens()
    async with session.post(tokenward_emulator.api_url + "/orders", json={"item": 42}) as answer:
        assert answer.status == 200
        body = await answer.json()
    new = await manager.atoken()
    assert new.version > old.version
    assert body["json"] == {"item": 42}
    assert body["token_fingerprint"] == fingerprint(new.access_token)
    counts = tokenward_emulator.emulator.counters
    assert (counts["api_calls"], counts["refreshes"]) == (2, 1)
    assert "request.replayed" in events.names


async def test_seekable_file_body_is_replayed(
    tokenward_emulator: EmulatorServer, session: aiohttp.ClientSession
) -> None:
    tokenward_emulator.emulator.expire_access_tokens()
    data = io.BytesIO(b"file-payload")
    async with session.post(tokenward_emulator.api_url + "/upload", data=data) as answer:
        assert answer.status == 200
        assert (await answer.json())["body"] == "file-payload"
    assert tokenward_emulator.emulator.counters["api_calls"] == 2


async def test_async_generator_body_is_not_replayed(
    tokenward_emulator: EmulatorServer, session: aiohttp.ClientSession, events: Events
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"once"

    tokenward_emulator.emulator.expire_access_tokens()
    async with session.post(tokenward_emulator.api_url + "/upload", data=chunks()) as answer:
        assert answer.status == 401
    assert "request.not_replayed" in events.names
    counts = tokenward_emulator.emulator.counters
    # Not replayed, but the rejected token is retired so the next request gets a new one.
    assert (counts["api_calls"], counts["refreshes"]) == (1, 1)


async def test_persistent_401_means_exactly_three_upstream_calls(
    tokenward_emulator: EmulatorServer, session: aiohttp.ClientSession
) -> None:
    tokenward_emulator.emulator.inject("401", endpoint="api", times=5)
    async with session.post(tokenward_emulator.api_url + "/orders", json={"a": 1}) as answer:
        assert answer.status == 401
        assert (await answer.json())["message"] == "invalid_token"
    assert tokenward_emulator.emulator.counters["api_calls"] == 3


async def test_insufficient_scope_is_not_replayed(
    tokenward_emulator: EmulatorServer, session: aiohttp.ClientSession
) -> None:
    async with session.get(tokenward_emulator.api_url + "/scope-limited") as answer:
        assert answer.status == 403
    counts = tokenward_emulator.emulator.counters
    assert (counts["api_calls"], counts["refreshes"]) == (1, 0)


async def test_many_tasks_across_an_expiry_cause_one_refresh(
    tokenward_emulator: EmulatorServer, session: aiohttp.ClientSession
) -> None:
    tokenward_emulator.emulator.expire_access_tokens()
    url = tokenward_emulator.api_url + "/items"

    async def call(i: int) -> int:
        async with session.post(url, json={"i": i}) as answer:
            await answer.read()
            return answer.status

    statuses = await asyncio.gather(*(call(i) for i in range(50)))
    assert statuses == [200] * 50
    assert tokenward_emulator.emulator.counters["refreshes"] == 1
