"""Session-scoped tokens (`tokenward.sessions`) against the emulator's HeyGen endpoints."""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import httpx2
import pytest
from clients_support import Events

from tokenward import ApiKeyExchange, FunctionSource
from tokenward.sessions import (
    HeyGenStreaming,
    SessionClosed,
    SessionExpired,
    SessionHooks,
    Sessions,
    SessionState,
    StopFailed,
    TokenReused,
)
from tokenward.testing import TEST_API_KEY
from tokenward.testing.server import EmulatorServer


def heygen(server: EmulatorServer, **hooks: object) -> Sessions:
    source = ApiKeyExchange(server.url + "/v1/streaming.create_token", TEST_API_KEY)
    return Sessions(
        source,
        key="heygen",
        base_url=server.url,
        hooks=HeyGenStreaming(**hooks),  # type: ignore[arg-type]
    )


def test_three_sessions_get_three_distinct_tokens_each_accepted_once(
    tokenward_emulator: EmulatorServer, events: Events
) -> None:
    sessions = heygen(tokenward_emulator)
    emulator = tokenward_emulator.emulator
    tokens = []
    for n in range(3):
        with sessions.session() as s:
            tokens.append(s.token.access_token)
            assert s.id in emulator.open_sessions()
            task = s.client.post(
                "/v1/streaming.task", json={"session_id": s.id, "text": f"hello {n}"}
            )
            assert task.status_code == 200
            # the token is single-session: a second streaming.new with it is refused, and that
            # is an exception (the session is over), never a silent 401
            with pytest.raises(SessionExpired):
                s.client.post("/v1/streaming.new", json={})
    assert len(set(tokens)) == 3
    counts = emulator.counters
    assert counts["session_token_requests"] == 3
    assert (counts["sessions_started"], counts["sessions_stopped"]) == (3, 3)
    assert counts["session_tokens_reused"] == 3  # the three refused streaming.new above
    assert counts["session_api_key_calls"] == 3  # each stop went with the API key
    assert emulator.open_sessions() == []
    assert not any(token in line for token in tokens for line in events.text)
    assert events.names.count("session.closed") == 3


def test_a_stopped_sessions_token_is_never_returned_again(
    tokenward_emulator: EmulatorServer,
) -> None:
    sessions = heygen(tokenward_emulator)
    with sessions.session() as first:
        old = first.token
    with pytest.raises(SessionClosed):
        first.token  # noqa: B018
    with pytest.raises(SessionClosed):
        first.client  # noqa: B018
    assert "closed" in repr(first)
    seen = {old.access_token}
    for _ in range(5):
        with sessions.session() as s:
            assert s.token.access_token not in seen
            seen.add(s.token.access_token)


def test_a_source_that_repeats_a_token_is_refused() -> None:
    sessions = Sessions(FunctionSource(lambda current: "always-the-same"))
    with sessions.session() as s:
        assert s.token.access_token == "always-the-same"
    with pytest.raises(TokenReused), sessions.session():
        pass  # pragma: no cover - never entered


async def test_fifty_concurrent_sessions_get_fifty_distinct_tokens(
    tokenward_emulator: EmulatorServer,
) -> None:
    sessions = heygen(tokenward_emulator)
    emulator = tokenward_emulator.emulator
    opened = asyncio.Event()
    inside = 0

    async def one() -> str:
        nonlocal inside
        async with sessions.session() as s:
            inside += 1
            if inside == 50:
                opened.set()
            await asyncio.wait_for(opened.wait(), 10)
            answer = await s.client.post(
                "/v1/streaming.task", json={"session_id": s.id, "text": "x"}
            )
            assert answer.status_code == 200
            return s.token.access_token

    tokens = await asyncio.gather(*(one() for _ in range(50)))
    assert len(set(tokens)) == 50
    counts = emulator.counters
    assert (counts["sessions_started"], counts["sessions_stopped"]) == (50, 50)
    assert emulator.open_sessions() == []


def test_an_exception_inside_the_block_still_stops_the_upstream_session(
    tokenward_emulator: EmulatorServer,
) -> None:
    sessions = heygen(tokenward_emulator)
    emulator = tokenward_emulator.emulator
    with pytest.raises(RuntimeError), sessions.session() as s:
        assert emulator.open_sessions() == [s.id]
        raise RuntimeError("boom")
    assert emulator.open_sessions() == []
    assert emulator.counters["sessions_stopped"] == 1


async def test_an_exception_inside_an_async_block_still_stops_the_upstream_session(
    tokenward_emulator: EmulatorServer,
) -> None:
    sessions = heygen(tokenward_emulator)
    with pytest.raises(RuntimeError):
        async with sessions.session() as s:
            assert tokenward_emulator.emulator.open_sessions() == [s.id]
            raise RuntimeError("boom")
    assert tokenward_emulator.emulator.open_sessions() == []


def test_an_abandoned_session_is_stopped_by_its_finalizer(
    tokenward_emulator: EmulatorServer, events: Events
) -> None:
    sessions = heygen(tokenward_emulator)
    s = sessions.open()
    assert len(tokenward_emulator.emulator.open_sessions()) == 1
    del s
    gc.collect()
    assert tokenward_emulator.emulator.open_sessions() == []
    assert "session.abandoned" in events.names


async def test_an_abandoned_async_session_is_stopped_by_its_finalizer(
    tokenward_emulator: EmulatorServer,
) -> None:
    sessions = heygen(tokenward_emulator)
    s = await sessions.aopen()
    assert len(tokenward_emulator.emulator.open_sessions()) == 1
    del s
    await asyncio.to_thread(gc.collect)  # the finalizer's sync stop must not block the loop
    assert tokenward_emulator.emulator.open_sessions() == []


def test_keep_alive_ticks_while_open_and_stops_after(tokenward_emulator: EmulatorServer) -> None:
    sessions = heygen(tokenward_emulator, keep_alive_interval=0.05)
    emulator = tokenward_emulator.emulator
    with sessions.session():
        deadline = time.monotonic() + 5
        while emulator.counters["keepalives"] < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert emulator.counters["keepalives"] >= 3
    after = emulator.counters["keepalives"]
    time.sleep(0.2)
    assert emulator.counters["keepalives"] == after


async def test_async_keep_alive_ticks_while_open(tokenward_emulator: EmulatorServer) -> None:
    sessions = heygen(tokenward_emulator, keep_alive_interval=0.05)
    emulator = tokenward_emulator.emulator
    async with sessions.session():
        await asyncio.sleep(0.3)
    assert emulator.counters["keepalives"] >= 2
    after = emulator.counters["keepalives"]
    await asyncio.sleep(0.2)
    assert emulator.counters["keepalives"] == after


def test_a_failing_start_hook_stops_what_was_opened(tokenward_emulator: EmulatorServer) -> None:
    class StartFails(HeyGenStreaming):
        def start(self, state: SessionState) -> None:
            super().start(state)
            raise RuntimeError("the avatar failed to load")

    source = ApiKeyExchange(tokenward_emulator.url + "/v1/streaming.create_token", TEST_API_KEY)
    sessions = Sessions(source, base_url=tokenward_emulator.url, hooks=StartFails())
    with pytest.raises(RuntimeError), sessions.session():
        pass  # pragma: no cover - never entered
    assert tokenward_emulator.emulator.open_sessions() == []


def test_a_slow_stop_hook_is_bounded_by_the_stop_timeout() -> None:
    entered, release, finished = threading.Event(), threading.Event(), threading.Event()

    class SlowStop(SessionHooks):
        def stop(self, state: SessionState) -> None:
            entered.set()
            release.wait(60)  # stuck until the test lets it go
            finished.set()

    counter = iter(range(1000))
    sessions = Sessions(
        FunctionSource(lambda current: f"t{next(counter)}"), hooks=SlowStop(), stop_timeout=0.1
    )
    try:
        with pytest.raises(StopFailed) as failed, sessions.session() as s:
            assert s.id is None
        # Bounded: the session's exit returned while its stop hook was still stuck (had it
        # waited for the hook, it would not have returned), and not reported as done: a later
        # close() may try again.
        assert not finished.is_set()
        assert failed.value.pending and "no answer within 0.1 s" in str(failed.value)
        assert not s.closed
        assert entered.wait(30)  # the hook was called all the same
    finally:
        release.set()
    assert "Sessions('session'" in repr(sessions)


async def test_amint_mints_a_fresh_token_remembered_like_a_sessions_own(
    tokenward_emulator: EmulatorServer,
) -> None:
    """`Sessions.amint` (the broker's token vending of session-scoped credentials): a fresh
    token per call from the provider, never one an earlier mint or session already had."""
    sessions = heygen(tokenward_emulator)
    async with httpx2.AsyncClient() as client:
        minted = [await sessions.amint(client) for _ in range(2)]
    async with sessions.session() as s:
        opened = s.token
    assert len({t.access_token for t in [*minted, opened]}) == 3
    assert tokenward_emulator.emulator.counters["session_token_requests"] == 3


async def test_amint_refuses_a_repeated_token_as_a_session_would() -> None:
    sessions = Sessions(FunctionSource(lambda current: "always-the-same"))
    async with httpx2.AsyncClient() as client:
        assert (await sessions.amint(client)).access_token == "always-the-same"
        with pytest.raises(TokenReused):
            await sessions.amint(client)
    with pytest.raises(TokenReused):
        async with sessions.session():
            pass  # pragma: no cover - never entered
