"""Issue 17, defects 1 and 2: one-session tokens are never cached, stored or reused, on any
path (broker proxy, vending, library, CLI), and a frontend sends its tasks through the broker
with the token of the session it opened (the session-bound proxy). Real HTTP: uvicorn in front
of the emulator's HeyGen-style provider, which counts tokens issued and reused."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from session_support import SessionEnv, session_env

import tokenward
from tokenward.cli import cli
from tokenward.errors import SessionScoped
from tokenward.testing import TEST_API_KEY

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.e2e,
]  # e2e: session_env runs the emulator and the broker


@pytest.fixture
def env(tmp_path: Path) -> Iterator[SessionEnv]:
    with session_env(tmp_path) as environment:
        yield environment
        assert environment.leaks() == []


def _stored(env: SessionEnv) -> list[str]:
    """Rows of the broker's store that name the session-scoped credential or hold a session
    token the provider issued (there must be none)."""
    database = env.path.parent / "tokens.db"
    if not database.exists():
        return []
    with sqlite3.connect(database) as db:
        tables = [row[0] for row in db.execute("select name from sqlite_master where type='table'")]
        found: list[str] = []
        for table in tables:
            found += [repr(row) for row in db.execute(f"select * from {table}")]
    tokens = set(env.emulator._session_tokens) | env.minted
    return [row for row in found if "avatar" in row or any(t in row for t in tokens)]


# -- defect 1: the proxy reused one-session tokens and stored them ------------------------------
def test_proxying_a_session_scoped_credential_outside_a_session_is_refused(env: SessionEnv) -> None:
    for _ in range(3):
        answer = env.http.post("/v1/proxy/avatar/v1/streaming.new", headers=env.headers(), json={})
        assert answer.status_code == 400
        body = answer.json()
        assert body["error"] == "session_required"
        assert "POST /v1/sessions" in body["reason"] and "/proxy/" in body["reason"]
    counts = env.emulator.counters
    assert counts["session_tokens"] == 0 and counts["sessions_started"] == 0
    assert counts["session_tokens_reused"] == 0
    assert _stored(env) == []  # nothing minted, nothing stored


def test_library_and_cli_never_cache_or_store_a_session_token(
    env: SessionEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWB_API_KEY", TEST_API_KEY)
    credential = tokenward.credential("avatar", env.path)
    with pytest.raises(SessionScoped, match=r"sessions\(\)"):
        credential.token()
    with pytest.raises(SessionScoped):
        credential.manager.refresh()
    with credential.sessions().session() as s:
        answer = s.client.post("/v1/streaming.task", json={"session_id": s.id, "text": "hi"})
        assert answer.status_code == 200
    printed = set()
    for _ in range(3):
        result = CliRunner().invoke(cli, ["token", "avatar", "--config", str(env.path)])
        assert result.exit_code == 0, result.output
        printed.add(result.output.strip())
    assert len(printed) == 3  # a fresh token on every call
    assert env.emulator.counters["session_tokens"] == 4
    assert _stored(env) == []


def test_vending_mints_a_fresh_token_every_call_and_stores_none(env: SessionEnv) -> None:
    # `raw_tokens` for this test's client: vending is how a backend hands one to a browser.
    env.app.state.broker.clients.clients = tuple(env.app.state.broker.clients.clients)
    for client in env.app.state.broker.clients.clients:
        object.__setattr__(client, "policy", _with(client.policy, raw_tokens=True))
    tokens = set()
    for _ in range(3):
        answer = env.http.post("/v1/credentials/avatar/token", headers=env.headers())
        assert answer.status_code == 200
        tokens.add(answer.json()["token"])
    assert len(tokens) == 3 and env.emulator.counters["session_tokens"] == 3
    assert _stored(env) == []


def _with(policy: object, **changes: object) -> object:
    import dataclasses

    return dataclasses.replace(policy, **changes)  # type: ignore[type-var]


# -- defect 2: a task for a broker session through the broker ------------------------------------
def test_tasks_go_through_the_session_bound_proxy_with_the_sessions_own_token(
    env: SessionEnv,
) -> None:
    session = env.open()
    assert session["proxy"] == f"/v1/sessions/{session['session_id']}/proxy"
    for n in range(5):
        answer = env.task(session, f"hello {n}")  # no session_id: the broker fills it in
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"]["duration_ms"] > 0
    named = env.task(session, "named", session_id=session["upstream_session_id"])
    assert named.status_code == 200
    counts = env.emulator.counters
    assert counts["tasks"] == 6
    assert counts["session_tokens"] == 1 and counts["session_tokens_reused"] == 0
    assert env.close(session).status_code == 204
    assert env.emulator.open_sessions() == []
    assert env.emulator.counters["sessions_stopped"] == 1


def test_only_the_client_that_opened_a_session_may_use_it(env: SessionEnv) -> None:
    mine = env.open()
    theirs = env.open(client="other")
    # another client's session is not even named
    assert env.task(mine, client="other").status_code == 404
    assert env.close(mine, client="other").status_code == 404
    # a body naming another upstream session is refused (the API key would reach it)
    crossed = env.task(mine, session_id=theirs["upstream_session_id"])
    assert crossed.status_code == 400 and crossed.json()["error"] == "session_mismatch"
    # the client's policy still applies to the paths it may call
    narrow = env.open(client="narrow")
    keep = env.http.post(
        f"/v1/sessions/{narrow['session_id']}/proxy/v1/streaming.interrupt",
        headers=env.headers("narrow"),
        json={},
    )
    assert keep.status_code == 403
    assert env.emulator.counters["tasks"] == 0
    for session, client in ((mine, "web"), (theirs, "other"), (narrow, "narrow")):
        assert env.close(session, client).status_code == 204
    assert env.emulator.open_sessions() == []
    assert env.emulator.counters["session_tokens_reused"] == 0


@pytest.mark.parametrize(
    ("tail", "error"),
    [
        ("/v1/streaming.task?_method=DELETE", "method_override"),
        ("/v1/streaming.task?a=1&%5fMETHOD=put", "method_override"),
        ("/v1/%2e%2e/admin", "unsafe_path"),
        ("/v1/..;/streaming.task", "unsafe_path"),
    ],
)
def test_the_session_bound_proxy_refuses_what_the_credential_proxy_refuses(
    env: SessionEnv, tail: str, error: str
) -> None:
    session = env.open()
    base = f"/v1/sessions/{session['session_id']}/proxy"
    answer = env.http.post(base + tail, headers=env.headers(), json={"text": "hi"})
    assert (answer.status_code, answer.json()["error"]) == (400, error)
    # a session id spelled with a percent-escape: the path would mean two things
    first = session["session_id"][0]
    encoded = base.replace(f"/{first}", f"/%{ord(first):02X}", 1) + "/v1/streaming.task"
    assert encoded != base + "/v1/streaming.task"
    answer = env.http.post(encoded, headers=env.headers(), json={"text": "hi"})
    assert (answer.status_code, answer.json()["error"]) == (400, "bad_path")
    assert env.emulator.counters["tasks"] == 0  # nothing reached the provider
    assert env.close(session).status_code == 204


def test_proxying_the_stop_call_ends_the_broker_session(env: SessionEnv) -> None:
    session = env.open()
    stop = env.http.post(
        f"/v1/sessions/{session['session_id']}/proxy/v1/streaming.stop",
        headers=env.headers(),
        json={},
    )
    assert stop.status_code == 204
    assert env.emulator.open_sessions() == []
    assert env.task(session).status_code == 404  # forgotten with its token
