"""Issue 17, defects 3 and 4: a session that outlives its token never leaks upstream and never
answers with silent 401s; stops tell the truth (DELETE, reaper, shutdown); lifetimes are
reported honestly; session calls come from the preset and its configuration. The emulator's
clock (`advance`) expires tokens; no test waits for a token to die."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from session_support import SessionEnv, session_env
from waiting import until

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.e2e,
]  # e2e: session_env runs the emulator and the broker

#: Session tokens live 5 s (by the emulator's clock); sessions are not reaped upstream by it.
LIFE = {"session_token_lifetime": 5, "session_idle_timeout": 10_000, "session_duration_limit": 900}

EXTRA = """
[credentials.told]              # a provider whose token answer says how long it lives
preset = "heygen"
base_url = "{url}"
api_key = "env:TWB_API_KEY"
expires_in_path = "data.expires_in"

[credentials.strict]            # a provider that accepts no API key for the stop
preset = "heygen"
base_url = "{url}"
api_key = "env:TWB_API_KEY"
session_api_key_calls = []
"""


@pytest.fixture
def env(tmp_path: Path) -> Iterator[SessionEnv]:
    with session_env(tmp_path, extra=EXTRA, **LIFE) as environment:
        yield environment
        assert environment.leaks() == []


#: Waits for a counter the broker's reaper moves.
_until = functools.partial(until, "the broker's reaper", timeout=20.0)


def _metric(env: SessionEnv, line: str) -> float:
    text = env.http.get("/metrics").text
    found = [row for row in text.splitlines() if row.startswith(line)]
    return float(found[0].rsplit(" ", 1)[1]) if found else 0.0


def test_a_task_after_the_token_expired_ends_the_session_with_410_and_stops_it(
    env: SessionEnv,
) -> None:
    session = env.open()
    assert env.task(session).status_code == 200
    env.emulator.advance(6)  # the token is dead; the upstream session is still open
    expired = env.task(session)
    assert expired.status_code == 410
    assert expired.json()["error"] == "session_expired"
    assert "POST /v1/sessions" in expired.json()["reason"]
    counts = env.emulator.counters
    # stopped upstream with the API key (the provider accepts it for streaming.stop)
    assert env.emulator.open_sessions() == []
    assert counts["sessions_stopped"] == 1 and counts["session_api_key_calls"] == 1
    assert counts["session_401_expired"] == 1  # one refused call, not one per task
    assert env.task(session).status_code == 404  # over and forgotten
    metric = 'tokenward_session_events_total{credential="avatar",event="expired"}'
    assert _metric(env, metric) == 1.0
    assert any("session.expired" in line for line in env.recorder.lines)
    # the frontend starts a new session: a fresh token, which works
    fresh = env.open()
    assert env.task(fresh).status_code == 200
    assert env.close(fresh).status_code == 204
    counts = env.emulator.counters
    assert counts["session_tokens"] == 2 and counts["session_tokens_reused"] == 0


def test_delete_after_the_token_expired_stops_upstream_with_the_api_key(env: SessionEnv) -> None:
    session = env.open()
    env.emulator.advance(6)
    assert env.close(session).status_code == 204
    assert env.emulator.open_sessions() == []


def test_a_failing_stop_is_502_pending_and_retried_until_the_provider_confirms(
    env: SessionEnv,
) -> None:
    session = env.open()
    env.emulator.inject("503", times=1000, endpoint="stop")
    failed = env.close(session)
    assert failed.status_code == 502, failed.text
    assert failed.json()["error"] == "stop_pending"
    assert env.emulator.open_sessions() == [session["upstream_session_id"]]
    # still held: it counts against the client's quota and cannot be used
    assert env.task(session).status_code == 410
    metric = 'tokenward_session_events_total{credential="avatar",event="stop_pending"}'
    assert _metric(env, metric) >= 1.0
    env.emulator.clear_faults()
    _until(lambda: env.emulator.open_sessions() == [])  # the reaper's next attempt
    assert env.emulator.counters["sessions_stopped"] == 1
    _until(
        lambda: any("session.reap" in line and "status=204" in line for line in env.recorder.lines)
    )
    assert env.close(session).status_code == 404


def test_a_stop_nothing_can_do_is_502_stop_failed_not_204(env: SessionEnv) -> None:
    session = env.open("strict")
    env.emulator.advance(6)
    failed = env.close(session)
    assert failed.status_code == 502
    assert failed.json()["error"] == "stop_failed"
    assert "no API key" in failed.json()["reason"]


def test_expires_at_is_honest(env: SessionEnv) -> None:
    env.emulator.configure(session_token_expires_in=True)
    before = time.time()
    told = env.open("told")
    assert told["expires_at_basis"] == "provider"
    assert before + 4 <= told["expires_at"] <= time.time() + 5  # the provider's 5 s
    assert before + 899 <= told["session_ends_at"] <= time.time() + 900
    assumed = env.open("avatar")
    assert assumed["expires_at_basis"] == "preset"  # HeyGen documents no lifetime
    for session in (told, assumed):
        assert env.close(session).status_code == 204


def test_session_calls_come_from_the_configuration(env: SessionEnv) -> None:
    env.emulator.configure(session_optional_calls=[])  # no streaming.start, no keep_alive
    refused = env.http.post("/v1/sessions", headers=env.headers(), json={"credential": "avatar"})
    assert refused.status_code == 502  # the heygen preset calls streaming.start
    assert env.emulator.open_sessions() == []  # ... and stopped what it had opened
    plain = env.open("plain")  # session_start = "" and session_keep_alive = ""
    assert env.task(plain).status_code == 200
    kept = env.http.post(f"/v1/sessions/{plain['session_id']}/keepalive", headers=env.headers())
    assert kept.status_code == 200  # nothing to call upstream: the idle clock is reset
    assert env.close(plain).status_code == 204
    assert env.emulator.counters["keepalives"] == 0


def test_a_broker_shutdown_stops_its_sessions(env: SessionEnv) -> None:
    for _ in range(3):
        env.open()
    assert len(env.emulator.open_sessions()) == 3
    env.broker.stop()
    assert env.emulator.open_sessions() == []
    assert env.emulator.counters["sessions_stopped"] == 3


def test_the_providers_concurrency_quota_is_reported_and_nothing_leaks(env: SessionEnv) -> None:
    env.emulator.configure(session_concurrency=2)  # the account's quota, upstream
    held = [env.open(), env.open()]
    refused = env.http.post("/v1/sessions", headers=env.headers(), json={"credential": "avatar"})
    assert refused.status_code == 502 and refused.json()["error"] == "upstream_failed"
    assert env.emulator.counters["sessions_refused_quota"] == 1
    assert len(env.emulator.open_sessions()) == 2
    for session in held:
        assert env.close(session).status_code == 204
    assert env.open()["session_id"]  # a slot is free again upstream
