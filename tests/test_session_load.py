"""Issue 17, done means: 200 sessions opened and closed through the broker by 20 concurrent
browser-like clients, each session sending 3 tasks through the session-bound proxy, every
fourth session outliving its token mid-way (the emulator expires that session's token between
its first and second task). Such a session answers 410 `session_expired`; the client does what
the browser module does: it starts a new session and sends the task again there.

Checked on the provider's counters, not on timing: 0 task failures the provider would have
accepted (every task accepted once, 600 in all), tokens issued = sessions opened, 0 reused,
0 upstream sessions left open, and the API key in no response, header, log line, metric or
store. The run's wall time is printed (the bound belongs in `make bench`, not here)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from session_support import SessionEnv, session_env

from tokenward.testing import TEST_API_KEY

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.e2e,
]  # e2e: session_env runs the emulator and the broker

CLIENTS = 20
SESSIONS_PER_CLIENT = 10
TASKS = 3


@pytest.fixture
def env(tmp_path: Path) -> Iterator[SessionEnv]:
    life: dict[str, Any] = {"session_idle_timeout": 10_000, "session_duration_limit": 10_000}
    with session_env(tmp_path, max_sessions=2, crowd=CLIENTS, **life) as environment:
        yield environment


class Browser:
    """One client: sessions one after the other, as a page does (fresh token each time)."""

    def __init__(self, env: SessionEnv, http: httpx2.AsyncClient, name: str) -> None:
        self.env = env
        self.http = http
        self.headers = {"Authorization": f"Bearer {env.keys[name]}"}
        self.opened = 0
        self.expired = 0
        self.failures: list[str] = []

    async def open(self) -> dict[str, Any]:
        answer = await self.http.post(
            "/v1/sessions", headers=self.headers, json={"credential": "avatar"}
        )
        assert answer.status_code == 201, answer.text
        self.opened += 1
        body: dict[str, Any] = answer.json()
        return body

    async def run(self, index: int) -> None:
        for n in range(SESSIONS_PER_CLIENT):
            session = await self.open()
            outlives = (index * SESSIONS_PER_CLIENT + n) % 4 == 0
            sent = 0
            while sent < TASKS:
                if outlives and sent == 1:
                    assert self.env.emulator.expire_session_token(session["upstream_session_id"])
                    outlives = False
                answer = await self.http.post(
                    f"{session['proxy']}/v1/streaming.task",
                    headers=self.headers,
                    json={"text": f"task {sent}"},
                )
                if answer.status_code == 410:  # the token died: a new session, same task
                    self.expired += 1
                    session = await self.open()
                    continue
                if answer.status_code != 200:
                    self.failures.append(f"{answer.status_code} {answer.text[:100]}")
                sent += 1
            closed = await self.http.delete(
                f"/v1/sessions/{session['session_id']}", headers=self.headers
            )
            if closed.status_code != 204:
                self.failures.append(f"close {closed.status_code} {closed.text[:100]}")


def test_200_sessions_by_20_clients_with_tokens_dying_mid_session(env: SessionEnv) -> None:
    async def main() -> list[Browser]:
        limits = httpx2.Limits(max_connections=CLIENTS)
        async with httpx2.AsyncClient(base_url=env.broker.url, timeout=60, limits=limits) as http:
            http.event_hooks["response"] = [_recorded(env)]
            browsers = [Browser(env, http, f"load{n}") for n in range(CLIENTS)]
            await asyncio.gather(*(b.run(n) for n, b in enumerate(browsers)))
            return browsers

    started = time.monotonic()
    browsers = asyncio.run(main())
    elapsed = time.monotonic() - started
    failures = [f for b in browsers for f in b.failures]
    assert failures == []
    opened = sum(b.opened for b in browsers)
    expired = sum(b.expired for b in browsers)
    counts = env.emulator.counters
    print(
        f"\n{opened} sessions ({expired} outlived their token), {counts['tasks']} tasks "
        f"in {elapsed:.1f} s"
    )
    assert expired == CLIENTS * SESSIONS_PER_CLIENT // 4
    assert opened == CLIENTS * SESSIONS_PER_CLIENT + expired
    assert counts["tasks"] == CLIENTS * SESSIONS_PER_CLIENT * TASKS  # each accepted once
    assert counts["session_tokens"] == opened == counts["sessions_started"]
    assert counts["session_tokens_reused"] == 0
    assert counts["session_401_expired"] == expired  # one refused call per dead token
    assert env.emulator.open_sessions() == []
    assert counts["sessions_stopped"] == opened
    # the API key (and the client keys) in no answer, header or log line ...
    assert env.leaks() == []
    # ... nor metric, nor store
    assert TEST_API_KEY not in env.http.get("/metrics").text
    database = env.path.parent / "tokens.db"
    if database.exists():
        with sqlite3.connect(database) as db:
            tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
            for table in tables:
                rows = repr(db.execute(f"select * from {table}").fetchall())
                assert TEST_API_KEY not in rows and "avatar" not in rows


def _recorded(env: SessionEnv) -> Any:
    async def hook(response: httpx2.Response) -> None:
        await response.aread()
        shown = f"{response.status_code} {list(response.headers.multi_items())} {response.text}"
        env.recorder.raw(response.request.url.path, shown)

    return hook
