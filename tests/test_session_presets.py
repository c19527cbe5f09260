"""Issue 17: the session presets beside HeyGen's (OpenAI Realtime client secrets, LiveAvatar)
mint, vend and open sessions against the emulator's endpoints of the same shapes."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from session_support import SessionEnv, session_env

from tokenward.config import load_preset

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.e2e,
]  # e2e: session_env runs the emulator and the broker

EXTRA = """
[credentials.realtime]
preset = "openai-realtime"
base_url = "{url}"
api_key = "env:TWB_API_KEY"

[credentials.live]
preset = "liveavatar"
base_url = "{url}"
api_key = "env:TWB_API_KEY"
token_request_body = { mode = "FULL", avatar_id = "test-avatar" }
"""


@pytest.fixture
def env(tmp_path: Path) -> Iterator[SessionEnv]:
    with session_env(tmp_path, extra=EXTRA, session_token_lifetime=60) as environment:
        broker = environment.app.state.broker
        for client in broker.clients.clients:  # this test's clients may receive raw tokens
            object.__setattr__(
                client, "policy", dataclasses.replace(client.policy, raw_tokens=True)
            )
        yield environment
        assert environment.leaks() == []


def test_presets_say_what_is_not_confirmed() -> None:
    for name in ("heygen", "liveavatar", "openai-realtime"):
        preset = load_preset(name)
        assert preset["session_scoped"] is True
    for name in ("heygen", "liveavatar", "openai-realtime"):
        text = Path(__file__).parents[1].joinpath(f"src/tokenward/presets/{name}.toml").read_text()
        assert "NOT confirmed" in text


def test_openai_realtime_client_secrets_vend_and_open_sessions(env: SessionEnv) -> None:
    vended = [
        env.http.post("/v1/credentials/realtime/token", headers=env.headers()).json()
        for _ in range(2)
    ]
    assert all(v["token"].startswith("ek_") for v in vended)
    assert vended[0]["token"] != vended[1]["token"]
    session = env.open("realtime")
    assert session["token"].startswith("ek_")
    assert session["expires_at_basis"] == "provider"  # the answer's expires_at
    assert time.time() + 50 <= session["expires_at"] <= time.time() + 61
    assert session["upstream_session_id"] is None  # no server-side session calls
    assert env.close(session).status_code == 204
    assert env.emulator.counters["session_tokens"] == 3


def test_liveavatar_sessions_start_and_stop_upstream(env: SessionEnv) -> None:
    session = env.open("live")
    assert session["upstream_session_id"] in env.emulator.open_sessions()
    kept = env.http.post(f"/v1/sessions/{session['session_id']}/keepalive", headers=env.headers())
    assert kept.status_code == 200 and env.emulator.counters["keepalives"] == 1
    assert env.close(session).status_code == 204
    assert env.emulator.open_sessions() == []
    vended = env.http.post("/v1/credentials/live/token", headers=env.headers())
    assert vended.status_code == 200 and vended.json()["token"]
    counts = env.emulator.counters
    assert counts["session_tokens"] == 2 and counts["session_tokens_reused"] == 0
