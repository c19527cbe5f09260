"""`TokenManager` against the provider emulator over loopback HTTP.

Covers rotation, restarts, the lock-free hot path, single-flight across threads, tasks and
event loops, invalidate-by-version, transient and permanent failures, lost answers and the
background refresher (invariants 1-6 in docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import pytest

from tokenward.errors import MalformedTokenResponse, ReauthorizationRequired, RefreshFailed
from tokenward.manager import RefreshPolicy, TokenManager
from tokenward.retry import RetryPolicy
from tokenward.sources import RefreshTokenGrant
from tokenward.stores import MemoryStore, Record, SQLiteStore, Store
from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET
from tokenward.testing.emulator import Emulator
from tokenward.testing.server import EmulatorServer
from tokenward.token import Token

pytestmark = pytest.mark.timeout(60)

KEY = "ml"
FAST = RetryPolicy(initial=0.01, maximum=0.05, deadline=5)


class CountingStore(Store):
    """Delegates to another store, counting calls; `on_load` may act once per load."""

    def __init__(self, inner: Store, on_load: Callable[[int], None] | None = None) -> None:
        self.inner = inner
        self.on_load = on_load
        self.loads = 0
        self.saves = 0
        self.location = inner.location
        #: When set, writes wait until it opens: a refresh in flight stays in flight.
        self.gate: threading.Event | None = None

    def load(self, key: str) -> Record | None:
        self.loads += 1
        record = self.inner.load(key)
        if self.on_load is not None:
            self.on_load(self.loads)
        return record

    def compare_and_set(self, record: Record, expected_version: int) -> bool:
        self.saves += 1
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        return self.inner.compare_and_set(record, expected_version)

    def delete(self, key: str) -> bool:
        return self.inner.delete(key)

    def keys(self, prefix: str = "") -> list[str]:
        return self.inner.keys(prefix)

    def acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        return self.inner.acquire_lease(key, owner, ttl)

    def renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        return self.inner.renew_lease(key, owner, ttl)

    def release_lease(self, key: str, owner: str) -> bool:
        return self.inner.release_lease(key, owner)


@pytest.fixture
def server(tokenward_emulator: EmulatorServer) -> EmulatorServer:
    return tokenward_emulator


@pytest.fixture
def make_manager(source: RefreshTokenGrant) -> Iterator[Callable[..., TokenManager]]:
    managers: list[TokenManager] = []

    def make(store: Store, **kwargs: object) -> TokenManager:
        kwargs.setdefault("retry", FAST)
        manager = TokenManager(KEY, kwargs.pop("source", source), store, **kwargs)  # type: ignore[arg-type]
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        manager.close()


def login(manager: TokenManager, emulator: Emulator) -> str:
    """What `tokenward login` leaves behind: a refresh token in the store."""
    refresh = emulator.issue_refresh_token(TEST_CLIENT_ID)
    manager.seed(refresh_token=refresh)
    return refresh


def stored(store: Store) -> Record:
    record = store.load(KEY)
    assert record is not None
    return record


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


# -- rotation and persistence ---------------------------------------------------------------
def test_rotation_over_fifty_forced_refreshes(
    emulator: Emulator, make_manager: Callable[..., TokenManager]
) -> None:
    store = MemoryStore()
    manager = make_manager(store)
    previous = login(manager, emulator)
    token = manager.token()
    seen_access = {token.access_token}
    for _ in range(50):
        before = stored(store)
        newer = manager.refresh()
        after = stored(store)
        # Invariant 2: when the token is handed out, its rotated refresh token is stored.
        assert after.access_token == newer.access_token
        assert after.version == before.version + 1 == newer.version
        assert after.refresh_token not in (None, before.refresh_token)
        assert emulator.is_refresh_token_valid(after.refresh_token or "")
        assert not emulator.is_refresh_token_valid(before.refresh_token or "")
        assert emulator.is_access_token_valid(newer.access_token)
        seen_access.add(newer.access_token)
    assert len(seen_access) == 51
    assert not emulator.is_refresh_token_valid(previous)
    counters = emulator.counters
    assert counters["refreshes"] == 51 and counters["invalid_grant"] == 0
    assert stored(store).refresh_count == 51


def test_restarted_process_continues_from_the_store(
    tmp_path: Path, emulator: Emulator, make_manager: Callable[..., TokenManager]
) -> None:
    path = tmp_path / "tokens.db"
    first_store = SQLiteStore(path)
    first = make_manager(first_store)
    login(first, emulator)
    first.token()
    last = first.refresh()
    first.close()
    first_store.close()

    # A new process: new store object on the same file, new manager, no login.
    store = SQLiteStore(path)
    try:
        second = make_manager(store)
        adopted = second.token()
        assert adopted.access_token == last.access_token and adopted.version == last.version
        assert emulator.counters["refreshes"] == 2  # adopted, not refreshed
        refreshed = second.refresh()  # the stored (rotated) refresh token still works
        assert refreshed.version == last.version + 1
        assert emulator.counters["refreshes"] == 3
        assert emulator.counters["invalid_grant"] == 0
        assert second.status()["state"] == "ok"
    finally:
        store.close()


def test_hot_path_does_no_io(
    server: EmulatorServer, emulator: Emulator, make_manager: Callable[..., TokenManager]
) -> None:
    store = CountingStore(MemoryStore())
    manager = make_manager(store)
    login(manager, emulator)
    token = manager.token()
    loads, saves, requests = store.loads, store.saves, sum(emulator.path_counts.values())
    for _ in range(2000):
        assert manager.token() is token
    assert (store.loads, store.saves) == (loads, saves)
    assert sum(emulator.path_counts.values()) == requests


async def test_async_hot_path_does_no_io(
    emulator: Emulator, make_manager: Callable[..., TokenManager]
) -> None:
    store = CountingStore(MemoryStore())
    manager = make_manager(store)
    login(manager, emulator)
    token = await manager.atoken()
    loads = store.loads
    for _ in range(2000):
        assert await manager.atoken() is token
    assert store.loads == loads
    assert emulator.counters["token_requests"] == 1


# -- single flight --------------------------------------------------------------------------
def test_in_window_callers_get_the_valid_token_while_one_refresh_runs(
    emulator: Emulator, make_manager: Callable[..., TokenManager]
) -> None:
    # A 30-second token in its refresh window from 0.3 s on: still usable for 29 s more, so a
    # busy machine cannot push the callers below past its usable time.
    emulator.access_lifetime = 30
    store = CountingStore(MemoryStore())
    manager = make_manager(store, policy=RefreshPolicy(window_fraction=0.99))
    login(manager, emulator)
    old = manager.token()
    time.sleep(max(manager.policy.refresh_at(old) - time.time(), 0) + 0.05)
    # The refresh that starts now cannot finish until the gate opens: a caller that waited
    # for it would hang (and fail the join below) instead of returning.
    store.gate = threading.Event()
    served: list[Token] = []
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(20):
            token = manager.token()
            with lock:
                served.append(token)

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    blocked = sum(thread.is_alive() for thread in threads)
    store.gate.set()
    assert blocked == 0
    assert len(served) == 160 and {t.access_token for t in served} == {old.access_token}
    deadline = time.monotonic() + 5
    while (new := manager.token()).access_token == old.access_token:
        assert time.monotonic() < deadline, "the background refresh never landed"
        time.sleep(0.01)
    assert new.version == old.version + 1
    assert emulator.counters["token_requests"] == 2  # the first token + one refresh


async def test_in_window_async_callers_are_not_blocked(
    emulator: Emulator, make_manager: Callable[..., TokenManager]
) -> None:
    emulator.access_lifetime = 30  # in its window from 0.3 s, usable for 29 s more
    store = CountingStore(MemoryStore())
    manager = make_manager(store, policy=RefreshPolicy(window_fraction=0.99))
    login(manager, emulator)
    old = await manager.atoken()
    await asyncio.sleep(max(manager.policy.refresh_at(old) - time.time(), 0) + 0.05)
    store.gate = threading.Event()
    try:
        served = await asyncio.wait_for(
            asyncio.gather(*(manager.atoken() for _ in range(100))), timeout=5
        )
    finally:
        store.gate.set()
    assert {token.access_token for token in served} == {old.access_token}
    for _ in range(500):
        if (new := await manager.atoken()).access_token != old.access_token:
            break
        await asyncio.sleep(0.01)
    assert new.version == old.version + 1
    assert emulator.counters["token_requests"] == 2


async def test_tasks_and_threads_meeting_an_expired_token_refresh_once(
    emulator: Emulator, make_manager: Callable[..., TokenManager]
) -> None:
    emulator.access_lifetime = 1
    manager = make_manager(MemoryStore())
    login(manager, emulator)
    old = await manager.atoken()
    await asyncio.sleep(max(manager.policy.usable_until(old) - time.time(), 0) + 0.02)
    emulator.latency = 0.2  # everybody arrives while the refresh is in flight
    before = emulator.counters["refreshes"]

    go = threading.Event()
    results: list[Token] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def thread_caller() -> None:
        go.wait()
        for _ in range(5):
            try:
                token = manager.token()
            except BaseException as exc:
                with lock:
                    failures.append(exc)
            else:
                with lock:
                    results.append(token)

    start = asyncio.Event()

    async def task_caller() -> Token:
        await start.wait()
        return await manager.atoken()

    threads = [threading.Thread(target=thread_caller) for _ in range(16)]
    for thread in threads:
        thread.start()
    tasks = [asyncio.create_task(task_caller()) for _ in range(200)]
    await asyncio.sleep(0)
    go.set()
    start.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for thread in threads:
        await asyncio.to_thread(thread.join)

    failures += [o for o in outcomes if isinstance(o, BaseException)]
    results += [o for o in outcomes if isinstance(o, Token)]
    assert failures == []
    assert len(results) == 16 * 5 + 200
    assert emulator.counters["refreshes"] - before == 1
    assert emulator.counters["invalid_grant"] == 0
    assert {token.access_token for token in results} == {results[0].access_token}
    assert results[0].version == old.version + 1
    assert emulator.is_access_token_valid(results[0].access_token)


def test_event_loops_in_several_threads_share_one_refresh(
    emulator: Emulator, make_manager: Callable[..., TokenManager]
) -> None:
    manager = make_manager(MemoryStore())
    login(manager, emulator)
    emulator.latency = 0.3
    barrier = threading.Barrier(4)
    results: list[Token] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    async def burst() -> list[Token]:
        return await asyncio.gather(*(manager.atoken() for _ in range(25)))

    def loop_thread() -> None:
        barrier.wait()
        try:
            tokens = asyncio.run(burst())
        except BaseException as exc:
            with lock:
                failures.append(exc)
        else:
            with lock:
                results.extend(tokens)

    threads = [threading.Thread(target=loop_thread) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(results) == 100
    assert {token.access_token for token in results} == {results[0].access_token}
    assert emulator.counters["token_requests"] == 1


# -- invalidate by version (invariant 4) ----------------------------------------------------
def test_invalidate_of_an_old_token_adopts_the_current_one(
    emulator: Emulator, make_manager: Callable[..., TokenManager]
) -> None:
    manager = make_manager(MemoryStore())
    login(manager, emulator)
    old = manager.token()
    current = manager.refresh()
    refreshes = emulator.counters["refreshes"]
    assert manager.invalidate(old) == current
    assert emulator.counters["refreshes"] == refreshes  # no refresh
    # A rejection of the current token refreshes, exactly once.
    newer = manager.invalidate(current)
    assert newer.version == current.version + 1
    assert emulator.counters["refreshes"] == refreshes + 1


async def test_invalidate_of_a_token_another_process_replaced(
    emulator: Emulator, make_manager: Callable[..., TokenManager]
) -> None:
    store = MemoryStore()
    ours = make_manager(store)
    theirs = make_manager(store)
    login(ours, emulator)
    old = await ours.atoken()
    assert theirs.token() == old  # adopted from the store
    current = theirs.refresh()  # the other process refreshed
    refreshes = emulator.counters["refreshes"]
    # Our copy of the old token met a 401: the store already has a newer one.
    adopted = await ours.ainvalidate(old)
    assert adopted.access_token == current.access_token
    assert emulator.counters["refreshes"] == refreshes
    assert (await ours.atoken()).access_token == current.access_token


# -- transient failures (invariant 6) -------------------------------------------------------
def test_503_three_times_then_ok(
    emulator: Emulator, make_manager: Callable[..., TokenManager], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tokenward")
    manager = make_manager(MemoryStore())
    login(manager, emulator)
    emulator.inject("503", times=3)
    token = manager.token()
    assert emulator.is_access_token_valid(token.access_token)
    counters = emulator.counters
    assert counters["token_requests"] == 4 and counters["refreshes"] == 1
    failed = events(caplog, "refresh.failed")
    assert [r.attempt for r in failed] == [1, 2, 3]  # type: ignore[attr-defined]
    assert all(r.kind == "transient" for r in failed)  # type: ignore[attr-defined]


def test_transient_failures_past_the_deadline(
    emulator: Emulator, make_manager: Callable[..., TokenManager]
) -> None:
    manager = make_manager(MemoryStore(), retry=RetryPolicy(initial=0.05, deadline=0.3))
    login(manager, emulator)
    emulator.inject("500", times=100)
    with pytest.raises(RefreshFailed) as info:
        manager.token()
    assert info.value.attempts >= 2 and "500" in str(info.value)
    # Nothing was spent: once the provider recovers, the same refresh token works.
    emulator.clear_faults()
    assert emulator.is_access_token_valid(manager.token().access_token)
    assert manager.status()["state"] == "ok"


def test_valid_token_is_served_while_the_provider_fails(
    emulator: Emulator, make_manager: Callable[..., TokenManager]
) -> None:
    emulator.access_lifetime = 30  # in its window from 0.3 s, usable for 29 s more
    manager = make_manager(
        MemoryStore(),
        policy=RefreshPolicy(window_fraction=0.99),
        retry=RetryPolicy(initial=0.01, deadline=0.2),
    )
    login(manager, emulator)
    old = manager.token()
    emulator.inject("503", times=1000)
    time.sleep(max(manager.policy.refresh_at(old) - time.time(), 0) + 0.05)
    # At least 0.3 s, and until the background refresh has met the failing provider.
    end = time.monotonic() + 0.3
    while time.monotonic() < end or emulator.counters["faults_injected"] == 0:
        assert manager.token().access_token == old.access_token
        assert time.monotonic() < end + 20, "no background refresh reached the provider"
        time.sleep(0.01)
    # Failed background refreshes pause instead of hammering the provider.
    assert 1 <= emulator.counters["faults_injected"] < 100


def test_429_retry_after_is_honored(
    emulator: Emulator, make_manager: Callable[..., TokenManager], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tokenward")
    manager = make_manager(MemoryStore())
    login(manager, emulator)
    emulator.inject("429", retry_after=1)
    started = time.monotonic()
    token = manager.token()
    took = time.monotonic() - started
    assert emulator.is_access_token_valid(token.access_token)
    assert took >= 0.95  # the policy alone would have waited about 10 ms
    assert emulator.counters["token_requests"] == 2
    (failed,) = events(caplog, "refresh.failed")
    assert failed.retry_in == 1.0  # type: ignore[attr-defined]


# -- permanent refusals (invariants 5 and 6) ------------------------------------------------
def test_invalid_grant_needs_reauth_until_seeded(
    server: EmulatorServer,
    emulator: Emulator,
    make_manager: Callable[..., TokenManager],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tokenward")
    store = MemoryStore()
    manager = make_manager(store)
    refresh = login(manager, emulator)
    # Someone else spends our single-use refresh token (another tool, a copy of the file).
    spent = httpx2.post(
        server.token_url,
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "client_id": TEST_CLIENT_ID,
            "client_secret": TEST_CLIENT_SECRET,
        },
    )
    assert spent.status_code == 200
    with pytest.raises(ReauthorizationRequired) as info:
        manager.token()
    assert info.value.error == "invalid_grant" and not info.value.answer_lost
    assert "already used" in (info.value.description or "")
    record = stored(store)
    assert record.state == "needs_reauth"
    assert record.last_error is not None and "invalid_grant" in record.last_error
    assert record.refresh_token == refresh  # kept for forensics, never presented again
    assert len(events(caplog, "reauth.required")) == 1

    requests = emulator.counters["token_requests"]
    for call in (manager.token, manager.refresh):
        with pytest.raises(ReauthorizationRequired):
            call()
    restarted = make_manager(store)  # another process sees the persisted state
    with pytest.raises(ReauthorizationRequired):
        restarted.token()
    assert emulator.counters["token_requests"] == requests  # no retry storm

    manager.seed(refresh_token=emulator.issue_refresh_token(TEST_CLIENT_ID))
    token = manager.token()
    assert emulator.is_access_token_valid(token.access_token)
    assert stored(store).state == "ok" and stored(store).last_error is None
    assert restarted.token().access_token == token.access_token


async def test_async_invalid_grant_makes_no_further_calls(
    emulator: Emulator, make_manager: Callable[..., TokenManager]
) -> None:
    store = MemoryStore()
    manager = make_manager(store)
    login(manager, emulator)
    emulator.inject("invalid_grant")
    with pytest.raises(ReauthorizationRequired):
        await manager.atoken()
    for _ in range(3):
        with pytest.raises(ReauthorizationRequired):
            await manager.atoken()
    assert emulator.counters["token_requests"] == 1
    assert stored(store).state == "needs_reauth"


def test_refusal_after_another_manager_rotated_adopts_its_token(
    emulator: Emulator, make_manager: Callable[..., TokenManager]
) -> None:
    inner = MemoryStore()
    other = make_manager(inner)
    login(other, emulator)

    def other_process_refreshes(load: int) -> None:
        # Our refresh is slow to start: our lease (50 ms) expires, the other process takes
        # it and rotates the refresh token we are about to present.
        if load == 2:
            time.sleep(0.1)
            other.token()

    store = CountingStore(inner, on_load=other_process_refreshes)
    ours = make_manager(store, lease_ttl=0.05)
    token = ours.token()
    theirs = stored(inner)
    assert token.access_token == theirs.access_token and token.version == theirs.version
    assert theirs.state == "ok"
    counters = emulator.counters
    assert counters["invalid_grant"] == 1 and counters["refreshes"] == 1


# -- lost answers ---------------------------------------------------------------------------
def test_lost_answer_recovered_within_the_reuse_grace(
    emulator: Emulator, make_manager: Callable[..., TokenManager], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tokenward")
    emulator.reuse_grace = 5
    store = MemoryStore()
    manager = make_manager(store, timeout=0.5)
    first = login(manager, emulator)
    emulator.inject("drop_after_processing", delay=3)
    token = manager.token()
    counters = emulator.counters
    assert counters["refreshes"] == 1  # the provider rotated once...
    assert counters["refresh_grace_replays"] == 1  # ...and replayed its answer to our retry
    assert counters["token_requests"] == 2
    assert emulator.is_access_token_valid(token.access_token)
    rotated = stored(store).refresh_token
    assert rotated not in (None, first) and emulator.is_refresh_token_valid(rotated or "")
    assert len(events(caplog, "refresh.answer_lost")) == 1


def test_lost_answer_without_grace_needs_reauth(
    emulator: Emulator, make_manager: Callable[..., TokenManager]
) -> None:
    store = MemoryStore()
    manager = make_manager(store, timeout=0.5)
    login(manager, emulator)
    emulator.inject("drop_after_processing", delay=3)
    with pytest.raises(ReauthorizationRequired) as info:
        manager.token()
    assert info.value.answer_lost
    assert "lost" in str(info.value)
    record = stored(store)
    assert record.state == "needs_reauth"
    assert record.last_error is not None and "answer to a refresh was lost" in record.last_error
    counters = emulator.counters
    assert counters["token_requests"] == 2  # one retry with the same token, no more
    assert counters["refresh_reuse"] == 1


# -- background refresher -------------------------------------------------------------------
def wait_for_version(store: Store, version: int, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while (store.load(KEY) or Record(KEY)).version < version:
        assert time.monotonic() < deadline, f"version {version} never reached the store"
        time.sleep(0.01)


def test_background_thread_refreshes_before_expiry(
    emulator: Emulator, make_manager: Callable[..., TokenManager]
) -> None:
    emulator.access_lifetime = 2
    inner = MemoryStore()
    store = CountingStore(inner)
    manager = make_manager(store, policy=RefreshPolicy(window_fraction=0.5))
    login(manager, emulator)
    old = manager.token()
    manager.start()
    # Nobody calls token() meanwhile: only the refresher can refresh.
    wait_for_version(inner, old.version + 1)
    assert emulator.refresh_log[-1]["time"] < (old.expires_at or 0)
    deadline = time.monotonic() + 5
    while (token := manager.token()).version == old.version:  # the refresher is landing
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert token.version == old.version + 1 and not token.is_expired()
    loads = store.loads
    assert manager.token() is token and store.loads == loads  # served from memory
    assert emulator.counters["refreshes"] == 2  # the first token + the refresher's one
    manager.stop()
    assert not any(t.name == f"tokenward-{KEY}" for t in threading.enumerate())


async def test_background_task_refreshes_before_expiry(
    emulator: Emulator, make_manager: Callable[..., TokenManager]
) -> None:
    emulator.access_lifetime = 2
    inner = MemoryStore()
    store = CountingStore(inner)
    manager = make_manager(store, policy=RefreshPolicy(window_fraction=0.5))
    login(manager, emulator)
    await manager.astart()  # obtains the first token too, before anybody asks
    await asyncio.to_thread(wait_for_version, inner, 2)
    old = await manager.atoken()
    await asyncio.to_thread(wait_for_version, inner, old.version + 1)
    assert emulator.refresh_log[-1]["time"] < (old.expires_at or 0)
    for _ in range(500):
        if (token := await manager.atoken()).version != old.version:
            break
        await asyncio.sleep(0.01)
    assert token.version == old.version + 1 and not token.is_expired()
    loads = store.loads
    assert await manager.atoken() is token and store.loads == loads
    assert emulator.counters["refreshes"] == 2
    manager.stop()


# -- a program that exits while a refresh is in flight --------------------------------------
CHILD = """
import sys, time
import httpx2
from tokenward.manager import RefreshPolicy, TokenManager
from tokenward.sources import RefreshTokenGrant
from tokenward.stores import SQLiteStore

base, token_url, path, mode = sys.argv[1:]
source = RefreshTokenGrant(token_url, "test-client", "test-secret", client_auth="body")
# 30 s tokens due for refresh after 0.9 s: ~28 s in which the old token is still served,
# however late a busy machine wakes this process up.
policy = RefreshPolicy(window_fraction=0.97)
manager = TokenManager("ml", source, SQLiteStore(path), policy=policy)
old = manager.token()                               # a long-running job...
if mode == "start":
    manager.start()
# The provider will rotate at once but answer late: the refresh stays in flight.
httpx2.post(base + "/_emulator/inject", json={"fault": "drop_after_processing", "delay": 0.5})
time.sleep(max(manager.policy.refresh_at(old) - time.time(), 0) + 0.05)
if mode == "call":
    assert manager.token().access_token == old.access_token  # ...served while refreshing
deadline = time.monotonic() + 10
while httpx2.get(base + "/_emulator/counters").json()["refreshes"] < 2:
    assert time.monotonic() < deadline
    time.sleep(0.01)
# ...and the program ends right now, its refresh token rotated but not yet stored.
"""


@pytest.mark.parametrize("mode", ["call", "start"])
def test_exit_waits_for_a_refresh_in_flight(
    tmp_path: Path, server: EmulatorServer, emulator: Emulator, mode: str
) -> None:
    emulator.access_lifetime = 30
    path = tmp_path / "tokens.db"
    store = SQLiteStore(path)
    try:
        first = emulator.issue_refresh_token(TEST_CLIENT_ID)
        store.compare_and_set(Record(KEY, 1, refresh_token=first), 0)
        child = subprocess.run(
            [sys.executable, "-c", CHILD, server.url, server.token_url, str(path), mode],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert child.returncode == 0, child.stderr
        assert emulator.counters["refreshes"] == 2
        record = stored(store)
        assert record.version == 3 and record.state == "ok"
        assert emulator.is_refresh_token_valid(record.refresh_token or "")
    finally:
        store.close()


def test_malformed_answer_keeps_the_rotated_refresh_token(
    emulator: Emulator, make_manager: Callable[..., TokenManager]
) -> None:
    """The provider rotates, then answers `expires_in: -5`: the answer is refused as malformed,
    but the new refresh token in it is stored, so the next refresh needs no new login."""
    store = MemoryStore()
    manager = make_manager(store)
    old = login(manager, emulator)
    manager.token()
    before = stored(store)
    emulator.inject("negative_expires")
    with pytest.raises(MalformedTokenResponse) as raised:
        manager.refresh()
    assert "expires_in" in str(raised.value)
    kept = stored(store)
    assert kept.refresh_token not in (old, before.refresh_token)
    assert emulator.is_refresh_token_valid(kept.refresh_token or "")
    assert kept.last_error and "malformed" in kept.last_error
    assert kept.refresh_token is not None and kept.refresh_token not in kept.last_error
    fresh = manager.refresh()
    assert fresh.version > kept.version
    assert emulator.counters["invalid_grant"] == 0
