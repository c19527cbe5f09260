"""The broker end to end: real uvicorn on 127.0.0.1 in front of the provider emulator.

One broker and one emulator serve the whole module (start-up costs); each test resets the
emulator's counters and faults. After every test, no secret (client secret, API key, refresh
token, broker key, and outside the vending answers any access or session token) may appear in
any response the test received or any log line emitted meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from broker_support import (
    API_KEY_ENV,
    CLIENT_SECRET_ENV,
    ORIGIN,
    BrokerServer,
    Recorder,
    raw_http,
    write_config,
)
from waiting import until

from tokenward.broker.app import create_app
from tokenward.broker.config import load_broker, new_key
from tokenward.testing import TEST_API_KEY, TEST_CLIENT_ID, TEST_CLIENT_SECRET
from tokenward.testing.emulator import Emulator
from tokenward.testing.server import EmulatorServer
from tokenward.token import Token, fingerprint

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.e2e,
]  # e2e: its module fixture runs the emulator and the broker

#: Endpoints whose answers carry a token on purpose.
VENDING = ("/token", "/v1/sessions")


class Env:
    def __init__(
        self, emulator: Emulator, broker: BrokerServer, keys: dict[str, str], app: Any
    ) -> None:
        self.emulator = emulator
        self.broker = broker
        self.keys = keys
        self.app = app
        self.recorder = Recorder()
        self.http = httpx2.Client(
            base_url=broker.url, timeout=10, event_hooks={"response": [self.recorder.response]}
        )

    def headers(self, client: str = "backend", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[client]}", **extra}

    def manager(self, name: str = "api") -> Any:
        return self.app.state.broker.credentials[name].manager

    def secrets(self) -> tuple[set[str], set[str]]:
        """(never anywhere, never outside vending answers)"""
        emu = self.emulator
        always = {TEST_CLIENT_SECRET, TEST_API_KEY, *self.keys.values(), *emu._refresh}
        tokens = {*emu._access, *emu._session_tokens}
        return always, tokens


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("broker")
    emulator = Emulator()
    emulator.add_client(TEST_CLIENT_ID, TEST_CLIENT_SECRET)
    emulator.add_api_key(TEST_API_KEY)
    emu_server = EmulatorServer(emulator).start()
    path, keys = write_config(Path(tmp), emu_server.url)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CLIENT_SECRET_ENV, TEST_CLIENT_SECRET)
        mp.setenv(API_KEY_ENV, TEST_API_KEY)
        app = create_app(path)
        broker = BrokerServer(app).start()
        environment = Env(emulator, broker, keys, app)
        for name in ("api", "other"):
            environment.manager(name).seed(
                refresh_token=emulator.issue_refresh_token(TEST_CLIENT_ID)
            )
        loggers = [logging.getLogger(n) for n in ("tokenward", "uvicorn", "httpx2")]
        levels = [lg.level for lg in loggers]
        root = logging.getLogger()
        root.addHandler(environment.recorder)
        for lg in loggers:
            lg.setLevel(logging.DEBUG)
        try:
            yield environment
        finally:
            root.removeHandler(environment.recorder)
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)
            environment.http.close()
            broker.stop()
            emu_server.stop()


@pytest.fixture(autouse=True)
def fresh(env: Env) -> Iterator[Env]:
    """Reset the emulator's counters and faults; afterwards scan for secrets."""
    env.emulator.reset_counters()
    env.emulator.clear_faults()
    env.recorder.clear()
    yield env
    always, tokens = env.secrets()
    for path, shown in env.recorder.responses:
        leaked = [fingerprint(s) for s in always if s in shown]
        if not path.endswith(VENDING) and "/v1/sessions" not in path:
            leaked += [fingerprint(s) for s in tokens if s in shown]
        assert not leaked, f"secret(s) {leaked} in the answer to {path}"
    for line in env.recorder.lines:
        leaked = [fingerprint(s) for s in always | tokens if s in line]
        assert not leaked, f"secret(s) {leaked} in a log line: {line[:200]}"


def audit_lines(env: Env, action: str) -> list[str]:
    return [line for line in env.recorder.lines if "tokenward.audit" in line and action in line]


# -- proxy -----------------------------------------------------------------------------------------
def test_proxy_forwards_with_injected_token(env: Env) -> None:
    answer = env.http.get("/v1/proxy/api/api/items?color=red", headers=env.headers())
    assert answer.status_code == 200
    body = answer.json()
    assert body["path"] == "/api/items" and body["query"] == {"color": "red"}
    assert body["token_fingerprint"] == env.manager().token().fingerprint
    assert env.emulator.counters["api_ok"] == 1
    (line,) = audit_lines(env, "action=proxy")
    assert "client=backend" in line and "credential=api" in line and "status=200" in line
    assert f"token_fingerprint={body['token_fingerprint']}" in line


def test_proxy_replays_once_across_an_expiry(env: Env) -> None:
    before = env.manager().token()
    env.emulator.expire_access_tokens()
    answer = env.http.post(
        "/v1/proxy/api/api/orders", headers=env.headers(), json={"item": 7, "qty": 2}
    )
    assert answer.status_code == 200
    assert answer.json()["json"] == {"item": 7, "qty": 2}
    counters = env.emulator.counters
    assert (counters["api_401"], counters["api_ok"], counters["refreshes"]) == (1, 1, 1)
    after = env.manager().token()
    assert after.version > before.version
    assert answer.json()["token_fingerprint"] == after.fingerprint


def test_proxy_streams_a_large_body(env: Env) -> None:
    size = 3_000_000  # > replay buffer (64 KiB), < max body (4 MB)

    def chunks() -> Iterator[bytes]:
        for _ in range(size // 100_000):
            yield b"a" * 100_000

    answer = env.http.post("/v1/proxy/api/api/upload", headers=env.headers(), content=chunks())
    assert answer.status_code == 200
    assert len(answer.json()["body"]) == size


def test_proxy_body_limit_is_413(env: Env) -> None:
    big = b"x" * 4_000_001
    answer = env.http.post("/v1/proxy/api/api/upload", headers=env.headers(), content=big)
    assert answer.status_code == 413
    assert answer.json()["error"] == "body_too_large"
    assert env.emulator.path_counts == {}

    def chunks() -> Iterator[bytes]:  # chunked: caught while streaming
        for _ in range(50):
            yield b"x" * 100_000

    answer = env.http.post("/v1/proxy/api/api/upload", headers=env.headers(), content=chunks())
    assert answer.status_code == 413
    assert env.emulator.counters["api_ok"] == 0


def test_upstream_timeout_is_504_with_a_clear_body(env: Env) -> None:
    env.manager().token()
    # The upstream takes 10 s, the broker's timeout is 1 s: a 504 (not the late 200) shows the
    # broker gave up at its own timeout, however slow the machine (no wall-clock bound here).
    env.emulator.inject("timeout", endpoint="api", delay=10)
    answer = env.http.get("/v1/proxy/api/api/slow", headers=env.headers())
    assert answer.status_code == 504
    assert answer.json()["error"] == "upstream_timeout"
    assert "did not answer within 1 s" in answer.json()["reason"]


# -- authentication and policy ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer twk_wrong", "Bearer not-a-broker-key"],
)
def test_no_or_wrong_key_is_401(env: Env, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    answer = env.http.get("/v1/proxy/api/api/items", headers=headers)
    assert answer.status_code == 401
    assert answer.json()["error"] == "unauthorized"
    assert env.emulator.path_counts == {}


def test_a_well_formed_unknown_key_is_401(env: Env) -> None:
    answer = env.http.get("/v1/credentials", headers={"Authorization": f"Bearer {new_key()}"})
    assert answer.status_code == 401


@pytest.mark.parametrize(
    ("client", "method", "path", "why"),
    [
        ("web", "POST", "/v1/proxy/api/api/public/x", "may not POST"),
        ("web", "GET", "/v1/proxy/api/api/private/x", "may not proxy /api/private/x"),
        ("web", "GET", "/v1/proxy/other/api/public/x", "may not use credential 'other'"),
        ("backend", "GET", "/v1/proxy/other/api/x", "may not use credential 'other'"),
        ("backend", "GET", "/v1/proxy/api/oauth/token", "may not proxy /oauth/token"),
    ],
)
def test_out_of_policy_is_403_with_a_reason(
    env: Env, client: str, method: str, path: str, why: str
) -> None:
    answer = env.http.request(method, path, headers=env.headers(client))
    assert answer.status_code == 403
    assert why in answer.json()["reason"]
    assert env.emulator.path_counts == {}


def test_rate_limit_per_client(env: Env) -> None:
    codes = [
        env.http.get("/v1/credentials", headers=env.headers("slow")).status_code for _ in range(4)
    ]
    assert codes[:2] == [200, 200]
    assert 429 in codes[2:]
    limited = env.http.get("/v1/credentials", headers=env.headers("slow"))
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert env.http.get("/v1/credentials", headers=env.headers()).status_code == 200


def test_cors_preflight_and_origins(env: Env) -> None:
    preflight = {
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    ok = env.http.options("/v1/proxy/api/api/public/x", headers={"Origin": ORIGIN, **preflight})
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in ok.headers["access-control-allow-headers"]
    evil = env.http.options(
        "/v1/proxy/api/api/public/x", headers={"Origin": "https://evil.example", **preflight}
    )
    assert evil.status_code == 403
    assert "access-control-allow-origin" not in evil.headers
    allowed = env.http.get("/v1/proxy/api/api/public/x", headers=env.headers("web", Origin=ORIGIN))
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    denied = env.http.get(
        "/v1/proxy/api/api/public/x", headers=env.headers("web", Origin="https://evil.example")
    )
    assert denied.status_code == 403 and denied.json()["error"] == "origin_forbidden"
    assert "access-control-allow-origin" not in denied.headers
    assert env.emulator.counters["api_calls"] == 1


@pytest.mark.parametrize(
    "target",
    [
        "/v1/proxy/api/api/../oauth/token",
        "/v1/proxy/api/api/%2e%2e/oauth/token",
        "/v1/proxy/api/api/%2E%2E%2Foauth%2Ftoken",
        "/v1/proxy/api/api%2f..%2foauth/token",
        "/v1/proxy/api/api/%252e%252e/oauth/token",
        "/v1/proxy/api//evil.example/api/x",
        "/v1/proxy/api/http://evil.example/api/x",
        "/v1/proxy/api/api\\..\\oauth\\token",
        "/v1/proxy/api/api/x%0d%0aHost:%20evil.example",
        "/v1/proxy/api/api/./x",
        "/v1/proxy/api%2f..%2fother/api/x",
    ],
)
def test_path_traversal_and_ssrf_attempts_never_reach_upstream(env: Env, target: str) -> None:
    key = env.keys["backend"]
    request = (
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    status, data = raw_http(env.broker.port, request)
    env.recorder.raw(target, data.decode("latin-1"))
    # 400 from the path check; 404 when the decoded path holds a newline (no route matches)
    assert status in (400, 404), data[:300]
    assert any(code in data for code in (b'"unsafe_path"', b'"bad_path"', b'"not_found"'))
    assert env.emulator.path_counts == {}


def test_crlf_header_injection_is_rejected(env: Env) -> None:
    key = env.keys["backend"]
    for injected in (
        "X-Note: a\r\nAuthorization: Bearer stolen",  # folded into two headers: harmless
        "X-Note: a\rHost: evil.example",  # bare CR inside a value
        "X-Note: a\nHost: evil.example",  # bare LF
    ):
        request = (
            f"GET /v1/proxy/api/api/public/x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {key}\r\n{injected}\r\nConnection: close\r\n\r\n"
        ).encode("latin-1")
        status, data = raw_http(env.broker.port, request)
        env.recorder.raw("crlf", data.decode("latin-1"))
        assert status in (400, 401), data[:300]
    assert env.emulator.path_counts == {}


# -- token vending ---------------------------------------------------------------------------------
def test_token_vending_allowed_and_denied(env: Env) -> None:
    answer = env.http.post("/v1/credentials/api/token", headers=env.headers())
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["fingerprint"] == env.manager().token().fingerprint == fingerprint(body["token"])
    assert env.emulator.is_access_token_valid(body["token"])
    denied = env.http.post("/v1/credentials/api/token", headers=env.headers("web"))
    assert denied.status_code == 403 and "may not receive tokens" in denied.json()["reason"]
    other = env.http.post("/v1/credentials/other/token", headers=env.headers())
    assert other.status_code == 403


def test_vended_token_carries_no_refresh_token(env: Env) -> None:
    """The broker vends what the manager serves: a `Token`, which has no refresh token."""
    answer = env.http.post("/v1/credentials/api/token", headers=env.headers())
    assert answer.status_code == 200
    record = env.manager().store.load("api")
    assert record is not None and record.refresh_token
    assert "refresh_token" not in answer.json() and record.refresh_token not in answer.text
    served = env.manager().token()
    assert served.access_token == answer.json()["token"]
    assert type(served) is Token and not hasattr(served, "refresh_token")


def test_vending_a_session_scoped_credential_mints_every_call(env: Env) -> None:
    tokens = [
        env.http.post("/v1/credentials/avatar/token", headers=env.headers()).json()["token"]
        for _ in range(3)
    ]
    assert len(set(tokens)) == 3
    assert env.emulator.counters["session_tokens"] == 3


# -- sessions --------------------------------------------------------------------------------------
def test_session_create_keepalive_delete_stops_upstream(env: Env) -> None:
    created = env.http.post("/v1/sessions", headers=env.headers(), json={"credential": "avatar"})
    assert created.status_code == 201
    body = created.json()
    assert body["token"] and body["expires_at"] > time.time()
    assert env.emulator.open_sessions() == [body["upstream_session_id"]]
    assert env.emulator.counters["streams_started"] == 1
    sid = body["session_id"]
    kept = env.http.post(f"/v1/sessions/{sid}/keepalive", headers=env.headers())
    assert kept.status_code == 200
    assert env.emulator.counters["keepalives"] == 1
    assert env.http.delete(f"/v1/sessions/{sid}", headers=env.headers()).status_code == 204
    assert env.emulator.open_sessions() == []
    assert env.emulator.counters["sessions_stopped"] == 1
    gone = env.http.post(f"/v1/sessions/{sid}/keepalive", headers=env.headers())
    assert gone.status_code == 404


def test_session_tokens_are_fresh_and_another_client_cannot_touch_them(env: Env) -> None:
    first = env.http.post("/v1/sessions", headers=env.headers(), json={"credential": "avatar"})
    second = env.http.post("/v1/sessions", headers=env.headers(), json={"credential": "avatar"})
    assert first.json()["token"] != second.json()["token"]
    sid = first.json()["session_id"]
    assert env.http.delete(f"/v1/sessions/{sid}", headers=env.headers("web")).status_code == 404
    for answer in (first, second):
        sid = answer.json()["session_id"]
        assert env.http.delete(f"/v1/sessions/{sid}", headers=env.headers()).status_code == 204


def test_session_quota_is_enforced(env: Env) -> None:
    web = env.headers("web")
    first = env.http.post("/v1/sessions", headers=web, json={"credential": "avatar"})
    assert first.status_code == 201
    second = env.http.post("/v1/sessions", headers=web, json={"credential": "avatar"})
    assert second.status_code == 429 and second.json()["error"] == "session_quota"
    sid = first.json()["session_id"]
    assert env.http.delete(f"/v1/sessions/{sid}", headers=web).status_code == 204
    third = env.http.post("/v1/sessions", headers=web, json={"credential": "avatar"})
    assert third.status_code == 201
    env.http.delete(f"/v1/sessions/{third.json()['session_id']}", headers=web)
    none = env.http.post("/v1/sessions", headers=env.headers("batch"), json={"credential": "api"})
    assert none.status_code == 403
    assert env.emulator.counters["sessions_started"] == 2


def test_idle_sessions_are_reaped_and_stopped_upstream(env: Env) -> None:
    created = env.http.post("/v1/sessions", headers=env.headers(), json={"credential": "avatar"})
    sid = created.json()["session_id"]
    # The reaper runs on its own schedule: wait for its audit line (written once the session is
    # stopped upstream and forgotten), however busy the machine.
    until("the idle session to be reaped", lambda: audit_lines(env, "action=session.reap"))
    assert env.emulator.open_sessions() == []
    assert env.emulator.counters["sessions_stopped"] == 1
    assert env.http.post(f"/v1/sessions/{sid}/keepalive", headers=env.headers()).status_code == 404


# -- admin, health, metrics ------------------------------------------------------------------------
def test_list_credentials_shows_state_without_secrets(env: Env) -> None:
    answer = env.http.get("/v1/credentials", headers=env.headers())
    assert answer.status_code == 200
    names = {c["name"]: c for c in answer.json()}
    assert set(names) == {"api", "avatar"}  # "other" is not this client's
    api = names["api"]
    assert api["state"] == "ok" and api["has_refresh_token"] is True
    assert api["refresh_count"] >= 1 and api["expires_in"] > 0
    web = env.http.get("/v1/credentials", headers=env.headers("web")).json()
    assert {c["name"] for c in web} == {"api", "avatar"}


def test_forced_refresh_needs_admin(env: Env) -> None:
    before = env.manager().token()
    answer = env.http.post("/v1/credentials/api/refresh", headers=env.headers())
    assert answer.status_code == 200 and answer.json()["version"] > before.version
    assert env.emulator.counters["refreshes"] == 1
    denied = env.http.post("/v1/credentials/api/refresh", headers=env.headers("web"))
    assert denied.status_code == 403


def test_health_ready_metrics_openapi(env: Env) -> None:
    assert env.http.get("/healthz").json() == {"status": "ok"}
    ready = env.http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    env.http.get("/v1/proxy/api/api/items", headers=env.headers())
    metrics = env.http.get("/metrics").text
    assert 'tokenward_token_seconds_to_expiry{credential="api"}' in metrics
    assert 'tokenward_credential_refresh_count{credential="api"}' in metrics
    assert 'tokenward_proxy_seconds_count{credential="api",status="200"}' in metrics
    assert "tokenward_refreshes_total" in metrics
    spec = env.http.get("/openapi.json").json()
    assert "/v1/proxy/{credential}/{path}" in spec["paths"]
    assert "/v1/sessions" in spec["paths"]


def _sample(metrics: str, name: str) -> float:
    """The value of one sample line (`name{labels} value`) of a /metrics text (0 before the
    first count: a labelled child appears when first counted)."""
    lines = [line for line in metrics.splitlines() if line.startswith(name + " ")]
    assert len(lines) <= 1, lines
    return float(lines[0].split()[-1]) if lines else 0.0


def test_refresh_counters_count_whatever_the_log_level(env: Env) -> None:
    """The counters subscribe to events: an application that raises the `tokenward` logger
    to CRITICAL (after the broker started) still gets its refreshes and failures counted."""
    done, failed = (
        f'tokenward_{what}_total{{credential="api"}}' for what in ("refreshes", "refresh_failures")
    )
    before = env.http.get("/metrics").text
    logger = logging.getLogger("tokenward")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        env.emulator.inject("503")  # one failure (retried), then the refresh
        answer = env.http.post("/v1/credentials/api/refresh", headers=env.headers())
        assert answer.status_code == 200
    finally:
        logger.setLevel(level)
    after = env.http.get("/metrics").text
    assert env.emulator.counters["refreshes"] == 1
    assert _sample(after, done) == _sample(before, done) + 1
    assert _sample(after, failed) == _sample(before, failed) + 1


def test_config_loads_and_app_can_be_built_in_process(env: Env, tmp_path: Path) -> None:
    """`create_app(Config, BrokerConfig)` serves in process too (ASGI transport)."""
    config, settings = load_broker(env.app.state.broker.config.path)

    async def main() -> None:
        app = create_app(config, settings)
        state = app.state.broker
        await state.start()
        try:
            transport = httpx2.ASGITransport(app=app)
            async with httpx2.AsyncClient(transport=transport, base_url="http://broker") as c:
                assert (await c.get("/healthz")).status_code == 200
                assert (await c.get("/v1/credentials")).status_code == 401
        finally:
            await state.stop()

    asyncio.run(main())


def test_the_secret_scan_sees_what_it_looks_for(env: Env) -> None:
    """The scan after each test is not vacuous: it knows the secrets and sees the answers."""
    vended = env.http.post("/v1/credentials/api/token", headers=env.headers()).json()["token"]
    always, tokens = env.secrets()
    assert vended in tokens
    assert any(vended in shown for _path, shown in env.recorder.responses)
    assert {TEST_CLIENT_SECRET, TEST_API_KEY, env.keys["backend"]} <= always
    assert len(always) > len(env.keys) + 2  # refresh tokens issued by the emulator too
    assert audit_lines(env, "action=token.vend")
