"""The asyncio refresher (issue 13) against the emulator over real HTTP, on SQLite, Redis and
PostgreSQL: every due credential refreshed once with nothing refused, and a stop or a
cancellation in the middle of a refresh loses no rotated refresh token. Instants are reached
through emulator holds and counters, never sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import POSTGRES_URL, REDIS_URL, drop_postgres_schema, require
from waiting import auntil, until

from tokenward.refresher import AsyncRefresher
from tokenward.sources import RefreshTokenGrant
from tokenward.stores import Record, SQLiteStore, Store
from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET
from tokenward.testing.emulator import Emulator, fingerprint
from tokenward.testing.server import EmulatorServer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    kind, name = request.param, "tw_async_" + uuid.uuid4().hex[:12]
    opened: Store
    if kind == "sqlite":
        opened = SQLiteStore(tmp_path / "tokens.db")
    elif kind == "redis":
        require("redis")
        from tokenward.stores.redis import RedisStore

        opened = RedisStore(REDIS_URL, prefix=name + ":")
    else:
        require("postgres")
        from tokenward.stores.postgres import PostgresStore

        opened = PostgresStore(POSTGRES_URL, schema=name)
    yield opened
    for key in opened.keys(""):
        opened.delete(key)
    opened.close()
    if kind == "postgres":
        drop_postgres_schema(name)


@pytest.fixture
def emulator(tokenward_emulator: EmulatorServer) -> Emulator:
    emu = tokenward_emulator.emulator
    # Single-use refresh tokens with reuse detection: a refresh token spent twice, or lost,
    # revokes the whole family and shows in the counters.
    emu.configure(access_lifetime=3600, revoke_family_on_reuse=True)
    return emu


def seed_due(store: Store, emu: Emulator, count: int) -> dict[str, str]:
    """`count` credentials, all due now: key -> fingerprint of its refresh token."""
    seeds = {}
    now = time.time()
    for i in range(count):
        refresh_token = emu.issue_refresh_token(TEST_CLIENT_ID)
        record = Record(
            f"ml:{i:04d}",
            1,
            access_token=f"old-{i}",
            refresh_token=refresh_token,
            expires_at=now - 1,
            obtained_at=now - 3601,
        )
        assert store.compare_and_set(record, 0)
        seeds[record.key] = fingerprint(refresh_token)
    return seeds


def refresher_for(store: Store, server: EmulatorServer, **options: float) -> AsyncRefresher:
    grant = RefreshTokenGrant(server.token_url, TEST_CLIENT_ID, TEST_CLIENT_SECRET)
    return AsyncRefresher(store, lambda _key: grant, poll_interval=0.02, **options)  # type: ignore[arg-type]


async def run_until(refresher: AsyncRefresher, refreshed: int) -> None:
    """Run `refresher` until its stats count `refreshed` refreshes, then stop and drain."""
    task = asyncio.create_task(refresher.run())

    def counted() -> bool:  # or the refresher ended (its error surfaces below)
        return refresher.stats.snapshot()["refreshed"] >= refreshed or task.done()

    await auntil(f"{refreshed} refreshes", counted, timeout=60)
    refresher.stop()
    await task


def assert_every_record_newest_and_valid(
    store: Store, emu: Emulator, seeds: dict[str, str]
) -> None:
    issued = {entry["old"]: entry["new"] for entry in emu.refresh_log}
    for key, seed in seeds.items():
        record = store.load(key)
        assert record is not None and record.version == 2 and record.state == "ok", key
        assert record.refresh_token is not None, key
        assert issued.get(seed) == fingerprint(record.refresh_token), key  # the one rotation
        assert emu.is_refresh_token_valid(record.refresh_token or "")
    counters = emu.counters
    assert counters["refreshes"] == len(seeds), counters  # once each, never twice
    assert counters["invalid_grant"] == counters["families_revoked"] == 0, counters


def test_every_due_credential_is_refreshed_once(
    store: Store, tokenward_emulator: EmulatorServer, emulator: Emulator
) -> None:
    seeds = seed_due(store, emulator, 60)
    refresher = refresher_for(store, tokenward_emulator, concurrency=16, batch=8)
    asyncio.run(run_until(refresher, len(seeds)))
    stats = refresher.stats.snapshot()
    assert stats["refreshed"] == len(seeds) and stats["failed"] == 0, stats
    assert_every_record_newest_and_valid(store, emulator, seeds)
    # Nothing is due any more: the compare-and-set filed each record's next due time.
    assert store.claim_due_records(time.time(), 100, "check", 60) == []


def test_two_refreshers_on_one_store_refresh_each_credential_once(
    store: Store, tokenward_emulator: EmulatorServer, emulator: Emulator
) -> None:
    seeds = seed_due(store, emulator, 40)
    first = refresher_for(store, tokenward_emulator, concurrency=8, batch=4)
    second = refresher_for(store, tokenward_emulator, concurrency=8, batch=4)

    async def both() -> None:
        tasks = [asyncio.create_task(r.run()) for r in (first, second)]
        every = len(seeds)
        await auntil("every refresh", lambda: emulator.counters["refreshes"] >= every, timeout=60)
        for refresher in (first, second):
            refresher.stop()
        await asyncio.gather(*tasks)

    asyncio.run(both())
    assert_every_record_newest_and_valid(store, emulator, seeds)


@pytest.mark.parametrize("how", ["stop", "cancel"])
def test_a_stop_mid_refresh_waits_for_the_answer_and_stores_it(
    store: Store, tokenward_emulator: EmulatorServer, emulator: Emulator, how: str
) -> None:
    """The provider has rotated the refresh token and holds its answer when the refresher is
    stopped (or the task running it is cancelled, as `asyncio.run` does on Ctrl-C): the answer
    is still stored, the new refresh token is valid."""
    seeds = seed_due(store, emulator, 1)
    hold = emulator.hold("token", stage="answered")
    refresher = refresher_for(store, tokenward_emulator)

    async def scenario() -> None:
        task = asyncio.create_task(refresher.run())
        await asyncio.to_thread(hold.wait, 60)  # rotated at the provider, answer held
        if how == "stop":
            refresher.stop()
        else:
            task.cancel()
        await asyncio.sleep(0)
        assert not task.done()  # draining: the answer has not arrived
        hold.release()
        if how == "stop":
            await task
        else:
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    assert refresher.stats.snapshot()["refreshed"] == 1
    assert_every_record_newest_and_valid(store, emulator, seeds)


def test_the_scale_guide_example_runs(
    tmp_path: Path, tokenward_emulator: EmulatorServer, emulator: Emulator
) -> None:
    """docs/scale.md, section 4: the AsyncRefresher example, as written, with a due credential
    (its first claim comes before `duration` is looked at, so the refresh always happens)."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "scale.md").read_text()
    start = text.index("```python\nimport asyncio\nimport signal\n")
    code = text[start + len("```python\n") : text.index("```", start + 3)]
    store = SQLiteStore(tmp_path / "tokens.db")
    seeds = seed_due(store, emulator, 1)
    ml = RefreshTokenGrant(tokenward_emulator.token_url, TEST_CLIENT_ID, TEST_CLIENT_SECRET)
    namespace: dict[str, Any] = {"store": store, "ml": ml}
    exec(compile(code, "docs/scale.md", "exec"), namespace)
    assert namespace["refresher"].stats.snapshot()["refreshed"] == 1
    assert_every_record_newest_and_valid(store, emulator, seeds)
    store.close()


def test_metrics_and_status_line_show_the_refreshers_counters(
    tmp_path: Path, tokenward_emulator: EmulatorServer, emulator: Emulator
) -> None:
    import socket

    import httpx2

    from tokenward.refresher import Refresher
    from tokenward.refresher_metrics import StatusLine, serve_metrics

    store = SQLiteStore(tmp_path / "tokens.db")
    seeds = seed_due(store, emulator, 5)
    grant = RefreshTokenGrant(tokenward_emulator.token_url, TEST_CLIENT_ID, TEST_CLIENT_SECRET)
    refresher = Refresher(store, lambda _key: grant)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve_metrics([refresher], port)
    assert refresher.run_once() == len(seeds)
    text = httpx2.get(f"http://127.0.0.1:{port}/metrics").text
    assert "tokenward_refresher_claimed_total 5.0" in text
    assert 'tokenward_refresher_outcomes_total{outcome="refreshed"} 5.0' in text
    assert 'tokenward_refresher_outcomes_total{outcome="failed"} 0.0' in text
    assert "tokenward_refresher_in_flight 0.0" in text
    assert 'tokenward_refresher_lateness_seconds_bucket{le="+Inf"} 5.0' in text
    line = StatusLine([refresher]).render()
    assert line.startswith("refreshed 5, in flight 0, failed 0"), line
    assert_every_record_newest_and_valid(store, emulator, seeds)
    store.close()


def test_cli_refresher_shows_a_status_line_serves_metrics_and_drains_on_sigterm(
    tmp_path: Path, tokenward_emulator: EmulatorServer, emulator: Emulator
) -> None:
    """`tokenward refresher --metrics-port` with stderr on a terminal: /metrics counts the
    refreshes, the status line says what it did, SIGTERM ends it with exit 0 and its totals."""
    import json
    import os
    import pty
    import signal
    import socket
    import subprocess
    import sys

    import httpx2

    config = tmp_path / "tokenward.toml"
    config.write_text(
        f'[store]\nurl = "sqlite://{tmp_path}/cred.db"\n'
        f'[credentials.ml]\npreset = "mercadolibre"\nclient_id = "{TEST_CLIENT_ID}"\n'
        f'client_secret = "env:TW_CLI_SECRET"\nbase_url = "{tokenward_emulator.url}"\n'
    )
    config.chmod(0o600)
    store = SQLiteStore(tmp_path / "cred.db")
    seeds = seed_due(store, emulator, 3)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    terminal, stderr = pty.openpty()
    script = Path(sys.executable).with_name("tokenward")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "tokenward.cli"]
    proc = subprocess.Popen(
        [*command, "refresher", "--config", str(config), "--metrics-port", str(port)],
        env={**os.environ, "TW_CLI_SECRET": TEST_CLIENT_SECRET},
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    os.close(stderr)
    try:
        refreshed = 'tokenward_refresher_outcomes_total{outcome="refreshed"} 3.0'

        def metrics() -> str:
            with contextlib.suppress(httpx2.TransportError):  # not listening yet
                return httpx2.get(f"http://127.0.0.1:{port}/metrics").text
            return ""

        until("/metrics to count 3 refreshes", lambda: refreshed in metrics(), timeout=60)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    shown = b""
    with contextlib.suppress(OSError):  # the pty reads EIO once the child is gone
        while chunk := os.read(terminal, 65536):
            shown += chunk
    os.close(terminal)
    assert proc.returncode == 0
    assert json.loads(out.strip().splitlines()[-1])["refreshed"] == 3
    assert b"refreshed 3, in flight 0, failed 0" in shown, shown
    assert_every_record_newest_and_valid(store, emulator, seeds)
    store.close()


def test_a_slow_request_keeps_its_lease_renewed_and_stops_renewing_after() -> None:
    """The async driver renews the lease every third of its TTL while a token request is in
    flight (a timer starts the renewals only if the request outlives the first third)."""
    from tokenward.driver import _arenewing
    from tokenward.flow import Renew
    from tokenward.stores import MemoryStore

    class Counting(MemoryStore):
        renewals = 0
        renewed = asyncio.Event()

        async def arenew_lease(self, key: str, owner: str, ttl: float) -> bool:
            self.renewals += 1
            if self.renewals >= 2:
                self.renewed.set()
            return await super().arenew_lease(key, owner, ttl)

    async def scenario() -> int:
        store = Counting()
        assert store.acquire_lease("k", "me", 0.3)
        async with _arenewing(store, Renew("k", "me", 0.3)):
            await asyncio.wait_for(store.renewed.wait(), 60)  # the request is "in flight"
        after = store.renewals
        await asyncio.sleep(0.3)  # a renewal would be due twice over by now
        assert store.renewals == after  # none after the request ended
        return after

    assert asyncio.run(scenario()) >= 2
