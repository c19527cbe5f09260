"""Shutdown never loses a rotated refresh token (issue 16, section 1).

A refresh token rotates at the provider the moment it processes the request; if the program
closes its `TokenManager` (or a `Credential`, the broker, a refresher) while that request is in
flight and the answer is dropped, the store keeps a spent refresh token and the next run needs a
new login. These tests close at chosen instants of a real refresh over loopback HTTP, with reuse
detection on, and check with the emulator's own bookkeeping that the store always holds the
newest, still valid refresh token. The instants are reached through emulator holds (a request
stalled at the provider until the test releases it), never through sleeps.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tokenward
from tokenward.errors import ManagerClosed
from tokenward.manager import RefreshPolicy, TokenManager
from tokenward.retry import RetryPolicy
from tokenward.sources import RefreshTokenGrant
from tokenward.stores import Record, SQLiteStore, Store
from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET
from tokenward.testing.emulator import Emulator, Hold, fingerprint
from tokenward.testing.server import EmulatorServer

pytestmark = pytest.mark.timeout(120)

KEY = "ml"
FAST = RetryPolicy(initial=0.01, maximum=0.05, deadline=5)
#: Every token is in its refresh window at once: each `token()` from a held token starts a
#: background refresh, so a test reaches "a refresh in flight" without waiting for time to pass.
ALWAYS_DUE = RefreshPolicy(window_fraction=1.0)
#: Where the close lands in the refresh: right after it started (the request may not have left
#: yet), while the provider holds the request unprocessed, after the provider rotated the
#: refresh token but before its answer left, and after the new token was stored.
INSTANTS = ("started", "received", "answered", "stored")


@pytest.fixture
def emulator(tokenward_emulator: EmulatorServer) -> Emulator:
    emu = tokenward_emulator.emulator
    # Single-use refresh tokens with RFC 9700 reuse detection: presenting a spent one revokes
    # the whole family, so a lost refresh token cannot go unnoticed.
    emu.configure(access_lifetime=60, revoke_family_on_reuse=True, latency=0.002)
    return emu


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = SQLiteStore(tmp_path / "tokens.db")
    yield opened
    opened.close()


def assert_newest_and_valid(store: Store, emulator: Emulator) -> Record:
    """The store holds the refresh token the provider issued last, and it still works."""
    record = store.load(KEY)
    assert record is not None and record.state == "ok", record and record.describe()
    refresh = record.refresh_token or ""
    log = emulator.refresh_log
    assert log, "no refresh happened"
    assert fingerprint(refresh) == log[-1]["new"], "the store lost the newest refresh token"
    assert emulator.is_refresh_token_valid(refresh)
    counters = emulator.counters
    assert counters["invalid_grant"] == 0 and counters["families_revoked"] == 0, counters
    return record


def hold_for(emulator: Emulator, instant: str) -> Hold | None:
    return emulator.hold("token", stage=instant) if instant in ("received", "answered") else None


def closes_at(
    instant: str,
    hold: Hold | None,
    store: Store,
    version: int,
    close: Callable[[], None],
) -> None:
    """Call `close` at `instant` of the background refresh that has just been started."""
    if instant == "stored":
        deadline = time.monotonic() + 10
        while (store.load(KEY) or Record(KEY)).version <= version:
            assert time.monotonic() < deadline, "the background refresh never landed"
            time.sleep(0.002)
    if hold is None:
        close()
        return
    hold.wait()
    closer = threading.Thread(target=close)
    closer.start()
    # The provider holds the request: close() must still be waiting for it (a busy machine can
    # only make this more likely, never less).
    closer.join(timeout=0.05)
    assert closer.is_alive(), "close() returned while a refresh was in flight"
    hold.release()
    closer.join(timeout=30)
    assert not closer.is_alive()


def test_fifty_closes_at_random_instants_of_a_refresh(
    emulator: Emulator, source: RefreshTokenGrant, store: Store
) -> None:
    rng = random.Random(16)
    TokenManager(KEY, source, store).seed(
        refresh_token=emulator.issue_refresh_token(TEST_CLIENT_ID)
    )
    seen: dict[str, int] = dict.fromkeys(INSTANTS, 0)
    for _ in range(50):
        instant = rng.choice(INSTANTS)
        seen[instant] += 1
        manager = TokenManager(KEY, source, store, policy=ALWAYS_DUE, retry=FAST)
        held = manager.token()  # a refresh of its own: the manager now holds a token
        hold = hold_for(emulator, instant)
        assert manager.token() is held  # in the refresh window: served, refresh in background
        closes_at(instant, hold, store, held.version, manager.close)
        assert_newest_and_valid(store, emulator)
        requests = emulator.counters["token_requests"]
        with pytest.raises(ManagerClosed, match="closed"):
            manager.refresh()
        assert emulator.counters["token_requests"] == requests  # refused, nothing sent
    assert all(seen.values()), seen
    assert len(emulator.refresh_log) >= 50


def test_fifty_async_closes_at_random_instants_of_a_refresh(
    emulator: Emulator, source: RefreshTokenGrant, store: Store
) -> None:
    rng = random.Random(61)
    TokenManager(KEY, source, store).seed(
        refresh_token=emulator.issue_refresh_token(TEST_CLIENT_ID)
    )

    async def one(instant: str) -> None:
        manager = TokenManager(KEY, source, store, policy=ALWAYS_DUE, retry=FAST)
        held = await manager.atoken()
        hold = hold_for(emulator, instant)
        assert await manager.atoken() is held  # the refresh runs in the background
        if instant == "stored" or hold is None:
            await asyncio.to_thread(closes_at, instant, None, store, held.version, lambda: None)
            await manager.aclose()
        else:
            await asyncio.to_thread(hold.wait)
            closing = asyncio.ensure_future(manager.aclose())
            await asyncio.sleep(0.05)  # the loop keeps running while aclose() waits
            assert not closing.done(), "aclose() returned while a refresh was in flight"
            hold.release()
            await closing
        with pytest.raises(ManagerClosed):
            await manager.arefresh()

    for _ in range(50):
        asyncio.run(one(rng.choice(INSTANTS)))
        assert_newest_and_valid(store, emulator)


def test_context_manager_exit_waits_and_refuses_later_refreshes(
    emulator: Emulator, source: RefreshTokenGrant, store: Store
) -> None:
    with TokenManager(KEY, source, store, policy=ALWAYS_DUE, retry=FAST) as manager:
        manager.seed(refresh_token=emulator.issue_refresh_token(TEST_CLIENT_ID))
        held = manager.token()
        hold = emulator.hold("token", stage="answered")
        manager.token()
        hold.wait()
        threading.Timer(0.05, hold.release).start()
    assert_newest_and_valid(store, emulator)
    assert manager.token() is not held  # the refresh landed before the exit returned
    with pytest.raises(ManagerClosed, match=r"'ml' is closed"):
        manager.start()


def write_config(tmp_path: Path, base_url: str) -> Path:
    path = tmp_path / "tokenward.toml"
    path.write_text(
        f'[store]\nurl = "sqlite://{tmp_path}/cred.db"\n'
        f'[credentials.ml]\npreset = "mercadolibre"\nclient_id = "{TEST_CLIENT_ID}"\n'
        f'client_secret = "env:TW_SHUTDOWN_SECRET"\nbase_url = "{base_url}"\n'
    )
    path.chmod(0o600)
    return path


def test_credential_with_block_waits_for_its_refresh(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tokenward_emulator: EmulatorServer,
    emulator: Emulator,
) -> None:
    monkeypatch.setenv("TW_SHUTDOWN_SECRET", TEST_CLIENT_SECRET)
    path = write_config(tmp_path, tokenward_emulator.url)
    with tokenward.credential("ml", config=path) as ml:
        ml.manager.policy = ALWAYS_DUE
        ml.manager.seed(refresh_token=emulator.issue_refresh_token(TEST_CLIENT_ID))
        ml.token()
        hold = emulator.hold("token", stage="answered")
        ml.token()  # starts the background refresh
        hold.wait()  # the provider has rotated; the block ends before the answer leaves
        threading.Timer(0.05, hold.release).start()
    store = SQLiteStore(tmp_path / "cred.db")
    try:
        record = store.load("ml")
        assert record is not None
        assert fingerprint(record.refresh_token or "") == emulator.refresh_log[-1]["new"]
        assert emulator.is_refresh_token_valid(record.refresh_token or "")
    finally:
        store.close()


def test_async_credential_block_waits_for_its_refresh(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tokenward_emulator: EmulatorServer,
    emulator: Emulator,
) -> None:
    monkeypatch.setenv("TW_SHUTDOWN_SECRET", TEST_CLIENT_SECRET)
    path = write_config(tmp_path, tokenward_emulator.url)

    async def job() -> None:
        async with tokenward.credential("ml", config=path) as ml:
            ml.manager.policy = ALWAYS_DUE
            ml.manager.seed(refresh_token=emulator.issue_refresh_token(TEST_CLIENT_ID))
            await ml.atoken()
            hold = emulator.hold("token", stage="answered")
            await ml.atoken()
            await asyncio.to_thread(hold.wait)
            asyncio.get_running_loop().call_later(0.05, hold.release)

    asyncio.run(job())
    store = SQLiteStore(tmp_path / "cred.db")
    try:
        assert_newest_and_valid(store, emulator)
    finally:
        store.close()


def _tokenward() -> list[str]:
    script = Path(sys.executable).with_name("tokenward")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tokenward.cli"]


def test_sigterm_drains_the_refresher(
    tmp_path: Path, tokenward_emulator: EmulatorServer, emulator: Emulator
) -> None:
    """`tokenward refresher` gets SIGTERM (docker stop, systemd, Kubernetes) while the provider
    holds the answer to a refresh it already performed: the process waits for the answer, stores
    it, and exits 0."""
    config = write_config(tmp_path, tokenward_emulator.url)
    store = SQLiteStore(tmp_path / "cred.db")
    try:
        manager = TokenManager("ml", RefreshTokenGrant("http://unused", "x", "y"), store)
        # Due at once: the access token expires now.
        manager.seed(
            refresh_token=emulator.issue_refresh_token(TEST_CLIENT_ID),
            access_token="expired",
            expires_in=0,
        )
        hold = emulator.hold("token", stage="answered")
        env = {**os.environ, "TW_SHUTDOWN_SECRET": TEST_CLIENT_SECRET}
        proc = subprocess.Popen(
            [*_tokenward(), "refresher", "--config", str(config)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            hold.wait(timeout=60)  # the provider has rotated; its answer waits for us
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(timeout=0.2)  # still draining: the answer is not there yet
            hold.release()
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err
        assert '"refreshed": 1' in out, out
        assert_newest_and_valid(store, emulator)
    finally:
        store.close()


def test_broker_shutdown_waits_for_a_background_refresh(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tokenward_emulator: EmulatorServer,
    emulator: Emulator,
) -> None:
    from broker_support import CLIENT_SECRET_ENV, BrokerServer
    from broker_support import write_config as broker_config

    from tokenward.broker import create_app

    monkeypatch.setenv(CLIENT_SECRET_ENV, TEST_CLIENT_SECRET)
    monkeypatch.setenv("TWB_API_KEY", "unused")
    path, keys = broker_config(tmp_path, tokenward_emulator.url)
    broker = BrokerServer(create_app(path)).start()
    try:
        manager = broker.app.state.broker.credentials["api"].manager
        manager.policy = ALWAYS_DUE
        manager.seed(refresh_token=emulator.issue_refresh_token(TEST_CLIENT_ID))
        headers = {"Authorization": f"Bearer {keys['backend']}"}
        vend = f"{broker.url}/v1/credentials/api/token"
        import httpx2

        assert httpx2.post(vend, headers=headers).status_code == 200
        hold = emulator.hold("token", stage="answered")
        assert httpx2.post(vend, headers=headers).status_code == 200  # refresh in background
        hold.wait()
        stopper = threading.Thread(target=broker.stop)
        stopper.start()
        stopper.join(timeout=0.2)
        assert stopper.is_alive(), "the broker stopped while a refresh was in flight"
        hold.release()
        stopper.join(timeout=30)
        assert not stopper.is_alive()
    finally:
        if broker.thread.is_alive():
            broker.stop()
    store = SQLiteStore(tmp_path / "tokens.db")
    try:
        record = store.load("api")
        assert record is not None and record.state == "ok"
        assert fingerprint(record.refresh_token or "") == emulator.refresh_log[-1]["new"]
        assert emulator.is_refresh_token_valid(record.refresh_token or "")
    finally:
        store.close()


def test_sessions_close_waits_for_a_session_being_opened(
    tokenward_emulator: EmulatorServer, emulator: Emulator
) -> None:
    """`Sessions.close()` while a session token is being minted: the open completes on an open
    pool (its upstream session can then be closed), and no session opens afterwards."""
    from tokenward.sessions import HeyGenStreaming, SessionClosed, Sessions
    from tokenward.sources import ApiKeyExchange
    from tokenward.testing import TEST_API_KEY

    source = ApiKeyExchange(tokenward_emulator.url + "/v1/streaming.create_token", TEST_API_KEY)
    sessions = Sessions(
        source,
        base_url=tokenward_emulator.url,
        hooks=HeyGenStreaming(keep_alive_interval=None),
    )
    hold = emulator.hold("session", stage="answered")
    opened: list[object] = []
    opener = threading.Thread(target=lambda: opened.append(sessions.open()))
    opener.start()
    hold.wait()  # the provider minted the token; its answer waits
    closer = threading.Thread(target=sessions.close)
    closer.start()
    closer.join(timeout=0.05)
    assert closer.is_alive(), "Sessions.close() returned while a session was being opened"
    hold.release()
    closer.join(timeout=30)
    opener.join(timeout=30)
    assert len(opened) == 1 and emulator.counters["sessions_started"] == 1
    with pytest.raises(SessionClosed, match="closed"):
        sessions.open()
    opened[0].close()  # type: ignore[attr-defined]
    assert emulator.counters["sessions_stopped"] == 1


@pytest.mark.e2e
def test_guide_shutdown_example_runs(tmp_path: Path) -> None:
    guide = (Path(__file__).resolve().parent.parent / "docs" / "guide.md").read_text()
    match = re.search(r"## Shutdown.*?```python\n(.*?)```", guide, re.S)
    assert match, "docs/guide.md has no python block under '## Shutdown'"
    result = subprocess.run(
        [sys.executable, "-c", match.group(1)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "'demo' is closed" in result.stdout


def test_close_gives_up_on_a_refresh_stuck_beyond_its_limits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The wait is bounded: a refresh stuck past its own lease wait, retry deadline and request
    timeout is abandoned with a `manager.close_timeout` event instead of hanging the exit."""
    from tokenward.sources import FunctionSource
    from tokenward.stores import MemoryStore

    stuck, entered = threading.Event(), threading.Event()

    def fetch(current: object) -> str:
        entered.set()
        stuck.wait(30)
        return "late-token"

    manager = TokenManager(
        "stuck",
        FunctionSource(fetch),
        MemoryStore(),
        lease_wait=0.05,
        retry=RetryPolicy(deadline=0.05),
        timeout=0.05,
    )
    landed: list[str] = []
    refresh = threading.Thread(target=lambda: landed.append(manager.refresh().access_token))
    refresh.start()
    assert entered.wait(10)
    caplog.set_level("WARNING", logger="tokenward")
    manager.close()  # returns although the source never answered
    assert not stuck.is_set() and refresh.is_alive()
    assert [r for r in caplog.records if getattr(r, "event", "") == "manager.close_timeout"]
    stuck.set()  # a source that needs no HTTP client still lands once it answers
    refresh.join(10)
    assert landed == ["late-token"]
