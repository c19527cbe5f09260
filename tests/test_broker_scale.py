"""Three `tokenward serve` processes sharing one PostgreSQL store refresh a credential once.

Three real broker processes read one `tokenward.toml` whose `[store] url` is PostgreSQL (a
schema of this run's own, dropped afterwards), in front of the provider emulator with a short
access-token lifetime. 300 concurrent proxied requests, spread over the three brokers, cross
the token's refresh window and its expiry: the emulator sees exactly one refresh, and every
request succeeds.

PostgreSQL unreachable: the test skips, except under CI=true, where it fails.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from broker_support import CLIENT_SECRET_ENV
from servers import POSTGRES_URL, drop_postgres_schema, free_port, require, tokenward_command

from tokenward.broker.config import hash_key, new_key
from tokenward.config import load_config
from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET
from tokenward.testing.emulator import Emulator
from tokenward.testing.server import EmulatorServer

pytestmark = [pytest.mark.timeout(120), pytest.mark.e2e]  # e2e: broker processes on PostgreSQL

BROKERS = 3
REQUESTS = 300
LIFETIME = 4.0  # seconds: the seeded access token's lifetime (at the emulator and in the store)
#: The refreshed token's: short, but longer than the test, so a second refresh is a bug even
#: on a slow machine.
REFRESHED_LIFETIME = 30.0


@pytest.fixture
def schema() -> Iterator[str]:
    """A schema of this test's own, dropped afterwards."""
    require("postgres")
    name = "tw_broker_scale_" + uuid.uuid4().hex[:12]
    try:
        yield name
    finally:
        drop_postgres_schema(name)


def _write_config(tmp: Path, emulator_url: str, schema: str, key: str) -> Path:
    sep = "&" if "?" in POSTGRES_URL else "?"
    text = f"""
[store]
url = "{POSTGRES_URL}{sep}schema={schema}"

[credentials.api]
grant = "refresh_token"
base_url = "{emulator_url}"
token_url = "{{base_url}}/oauth/token"
client_id = "{TEST_CLIENT_ID}"
client_secret = "env:{CLIENT_SECRET_ENV}"

[broker.limits]
upstream_timeout = 10.0

[broker.clients.load]
key_sha256 = "{hash_key(key)}"
credentials = ["api"]
methods = ["GET"]
paths = ["/api/*"]
rate = 100000
burst = 100000
"""
    path = tmp / "tokenward.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


class Brokers:
    """`count` `tokenward serve` processes on their own ports, the same configuration."""

    def __init__(self, config: Path, count: int, log_dir: Path) -> None:
        self.urls: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs = [log_dir / f"broker{i}.log" for i in range(count)]
        for log in self.logs:
            port = free_port()
            command = [*tokenward_command(), "serve", "--config", str(config), "--port", str(port)]
            with log.open("wb") as out:
                self.procs.append(
                    subprocess.Popen(
                        command,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                    )
                )
            self.urls.append(f"http://127.0.0.1:{port}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for proc, url, log in zip(self.procs, self.urls, self.logs, strict=True):
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"a broker exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
                try:
                    if httpx2.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx2.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"a broker did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def emulator() -> Iterator[tuple[Emulator, str]]:
    emu = Emulator(access_lifetime=REFRESHED_LIFETIME, api_latency=0.2)
    emu.add_client(TEST_CLIENT_ID, TEST_CLIENT_SECRET)
    server = EmulatorServer(emu).start()
    try:
        yield emu, server.url
    finally:
        server.stop()


async def _load(urls: list[str], key: str, start: float) -> list[Any]:
    """REQUESTS requests, all launched at once, each sent at its moment after `start` (a
    monotonic time): a third before the refresh window, a third in one burst at the expiry,
    a third after it; round-robin over the brokers."""
    third = REQUESTS // 3
    moments = (
        [2.5 + 1.2 * i / third for i in range(third)]  # before the refresh window (3.8 s)
        + [LIFETIME - 0.05] * third  # a burst at the expiry
        + [LIFETIME + 1.0 * i / third for i in range(REQUESTS - 2 * third)]  # after it
    )
    limits = httpx2.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx2.AsyncClient(timeout=30, limits=limits, headers=headers) as http:

        async def one(i: int, moment: float) -> Any:
            await asyncio.sleep(max(0.0, start + moment - time.monotonic()))
            url = f"{urls[i % len(urls)]}/v1/proxy/api/api/users/me?i={i}"
            try:
                return await http.get(url)
            except httpx2.HTTPError as exc:
                return exc

        return await asyncio.gather(*(one(i, m) for i, m in enumerate(moments)))


def test_three_brokers_on_postgres_refresh_once_across_an_expiry(
    tmp_path: Path,
    schema: str,
    emulator: tuple[Emulator, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emu, emu_url = emulator
    monkeypatch.setenv(CLIENT_SECRET_ENV, TEST_CLIENT_SECRET)
    key = new_key()
    config_path = _write_config(tmp_path, emu_url, schema, key)
    brokers = Brokers(config_path, BROKERS, tmp_path)
    try:
        brokers.wait_ready()
        # The credential as a login left it: a refresh token and an access token for LIFETIME s.
        config = load_config(config_path)
        try:
            cc = config.credentials["api"]
            manager = cc.manager(config.store_for(cc))
            refresh_token = emu.issue_refresh_token(TEST_CLIENT_ID)
            access_token = emu.issue_access_token(TEST_CLIENT_ID, lifetime=LIFETIME)
            start = time.monotonic()
            manager.seed(
                refresh_token=refresh_token, access_token=access_token, expires_in=LIFETIME
            )
            manager.close()
        finally:
            config.close()
        emu.reset_counters()

        answers = asyncio.run(_load(brokers.urls, key, start))
        elapsed = time.monotonic() - start
    finally:
        brokers.stop()

    failed = [a if isinstance(a, Exception) else a.status_code for a in answers]
    failed = [f for f in failed if f != 200]
    assert len(answers) == REQUESTS
    assert not failed, f"{len(failed)} failed requests, e.g. {failed[:5]}"
    assert elapsed > LIFETIME, "the requests did not cross the expiry"
    counters = emu.counters
    assert counters["refreshes"] == 1, (elapsed, emu.refresh_log, counters)
    assert counters["api_ok"] == REQUESTS, counters
