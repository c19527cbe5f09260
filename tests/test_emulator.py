"""The provider emulator over real loopback HTTP: every behaviour other tests rely on."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest

from tokenward.testing import (
    COUNTER_NAMES,
    FAULTS,
    INVALID_GRANT_BODY,
    TEST_API_KEY,
    TEST_CLIENT_ID,
    TEST_CLIENT_SECRET,
    Emulator,
    EmulatorServer,
    create_app,
    fingerprint,
)

CLIENT = (TEST_CLIENT_ID, TEST_CLIENT_SECRET)
EXACT_INVALID_GRANT = {
    "error": "invalid_grant",
    "error_description": (
        "Error validating grant. Your authorization code or refresh token may be expired "
        "or it was already used"
    ),
    "status": 400,
    "cause": [],
}
API_INVALID_TOKEN = {"message": "invalid_token", "error": "not_found", "status": 401, "cause": []}


@pytest.fixture
def emu(tokenward_emulator: EmulatorServer) -> Emulator:
    return tokenward_emulator.emulator


@pytest.fixture
def http(tokenward_emulator: EmulatorServer) -> Any:
    with httpx2.Client(base_url=tokenward_emulator.url, timeout=5) as client:
        yield client


def refresh(http: Any, token: str, **extra: str) -> Any:
    data = {"grant_type": "refresh_token", "refresh_token": token, **extra}
    return http.post("/oauth/token", data=data, auth=CLIENT)


def api_get(http: Any, access_token: str, path: str = "/api/items") -> Any:
    return http.get(path, headers={"Authorization": f"Bearer {access_token}"})


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


# ---------------------------------------------------------------------------- plugin & server


def test_plugin_is_registered_and_fixture_is_ready(
    pytestconfig: pytest.Config, tokenward_emulator: EmulatorServer
) -> None:
    assert pytestconfig.pluginmanager.has_plugin("tokenward")
    assert tokenward_emulator.url.startswith("http://127.0.0.1:")
    assert tokenward_emulator.token_url == tokenward_emulator.url + "/oauth/token"
    assert tokenward_emulator.api_url == tokenward_emulator.url + "/api"
    emu = tokenward_emulator.emulator
    assert set(COUNTER_NAMES) <= set(emu.counters)
    assert all(value == 0 for value in emu.counters.values())
    # The pre-registered client and API key work.
    token = emu.issue_refresh_token(TEST_CLIENT_ID)
    with httpx2.Client(base_url=tokenward_emulator.url) as http:
        assert refresh(http, token).status_code == 200
        created = http.post("/v1/streaming.create_token", headers={"x-api-key": TEST_API_KEY})
        assert created.status_code == 200


@pytest.mark.e2e
def test_plugin_import_does_not_load_server_stack() -> None:
    code = (
        "import sys, tokenward.testing.plugin\n"
        "print(sorted(m for m in ('starlette', 'uvicorn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.e2e
def test_server_port_known_before_start_and_stop_frees_it() -> None:
    server = EmulatorServer(Emulator())
    with pytest.raises(RuntimeError):
        _ = server.url
    with server:
        assert server.running
        port = server.port
        assert httpx2.get(server.url + "/.well-known/openid-configuration").status_code == 200
    assert not server.running
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(f"http://127.0.0.1:{port}/.well-known/openid-configuration", timeout=1)


@pytest.mark.e2e
def test_stop_is_fast_even_with_a_delayed_answer_in_flight() -> None:
    emu = Emulator()
    emu.add_client(*CLIENT)
    emu.inject("timeout")
    emu.fault_delay = 30
    server = EmulatorServer(emu).start()
    errors: list[BaseException] = []

    def slow_call() -> None:
        try:
            httpx2.post(server.token_url, data={"grant_type": "x"}, auth=CLIENT, timeout=60)
        except httpx2.HTTPError as exc:
            errors.append(exc)

    caller = threading.Thread(target=slow_call)
    caller.start()
    deadline = time.monotonic() + 30
    while emu.counters["faults_injected"] == 0:  # the request is held at the provider
        assert time.monotonic() < deadline, "the token request never reached the emulator"
        time.sleep(0.01)
    started = time.monotonic()
    server.stop()
    caller.join(25)
    # Well under the 30 s the answer is held: stop() did not wait for it (a bound that a busy
    # machine cannot reach, unlike a few seconds).
    assert time.monotonic() - started < 25
    assert not caller.is_alive()


@pytest.mark.e2e
def test_python_dash_m_prints_url_and_serves_until_interrupted() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenward.testing", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().split()
        url = first[0]
        assert url.startswith("http://127.0.0.1:")
        assert first[1:] == [
            f"client_id={TEST_CLIENT_ID}",
            f"client_secret={TEST_CLIENT_SECRET}",
            f"api_key={TEST_API_KEY}",
        ]
        answer = httpx2.post(
            url + "/_emulator/refresh-tokens", json={"client_id": TEST_CLIENT_ID}, timeout=5
        )
        token = answer.json()["refresh_token"]
        with httpx2.Client(base_url=url, timeout=5) as http:
            assert refresh(http, token).status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------- refresh tokens


def test_rotation_refuses_old_token_with_exact_mercadolibre_body(emu: Emulator, http: Any) -> None:
    first = emu.issue_refresh_token(TEST_CLIENT_ID)
    answer = refresh(http, first)
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {
        "access_token",
        "token_type",
        "expires_in",
        "scope",
        "user_id",
        "refresh_token",
    }
    assert body["access_token"].startswith("APP_USR-")
    assert body["refresh_token"].startswith("TG-") and body["refresh_token"] != first
    assert body["token_type"] == "Bearer" and body["user_id"] == 12345
    assert body["expires_in"] == 3600 and isinstance(body["expires_in"], int)
    assert body["scope"] == "offline_access read write"
    assert answer.headers["cache-control"] == "no-store"

    again = refresh(http, first)
    assert again.status_code == 400
    assert again.json() == EXACT_INVALID_GRANT == dict(INVALID_GRANT_BODY)
    counters = emu.counters
    assert counters["refreshes"] == 1
    assert counters["refresh_reuse"] == 1
    assert counters["invalid_grant"] == 1
    assert counters["token_requests"] == 2
    # The rotated-in token is still good: reuse alone does not revoke without the setting.
    assert refresh(http, body["refresh_token"]).status_code == 200


def test_fifty_rotations_each_logged_once(emu: Emulator, http: Any) -> None:
    token = emu.issue_refresh_token(TEST_CLIENT_ID)
    seen = {token}
    for _ in range(50):
        answer = refresh(http, token)
        assert answer.status_code == 200
        token = answer.json()["refresh_token"]
        assert token not in seen
        seen.add(token)
        assert api_get(http, answer.json()["access_token"]).status_code == 200
    log = emu.refresh_log
    assert len(log) == 50 == emu.counters["refreshes"]
    assert len({entry["family"] for entry in log}) == 1
    # The log chains: each entry's new token is the next entry's old one; no raw tokens in it.
    assert all(a["new"] == b["old"] for a, b in itertools.pairwise(log))
    assert log[-1]["new"] == fingerprint(token)
    assert not any(t in str(log) for t in seen)
    assert emu.is_refresh_token_valid(token)


def test_without_rotation_the_refresh_token_is_reusable(emu: Emulator, http: Any) -> None:
    emu.refresh_rotation = False
    token = emu.issue_refresh_token(TEST_CLIENT_ID)
    first = refresh(http, token).json()
    second = refresh(http, token).json()
    assert first["refresh_token"] == second["refresh_token"] == token
    assert first["access_token"] != second["access_token"]
    assert emu.counters["refresh_reuse"] == 0


def test_reuse_grace_returns_the_same_pair(emu: Emulator, http: Any) -> None:
    emu.reuse_grace = 5
    old = emu.issue_refresh_token(TEST_CLIENT_ID)
    first = refresh(http, old).json()
    replay = refresh(http, old)
    assert replay.status_code == 200
    assert replay.json() == first
    counters = emu.counters
    assert counters["refreshes"] == 1
    assert counters["refresh_grace_replays"] == 1
    emu.advance(6)  # past the grace
    assert refresh(http, old).json() == EXACT_INVALID_GRANT
    assert refresh(http, first["refresh_token"]).status_code == 200


def test_reuse_revokes_the_family_when_configured(emu: Emulator, http: Any) -> None:
    emu.revoke_family_on_reuse = True
    other_family = emu.issue_refresh_token(TEST_CLIENT_ID)
    old = emu.issue_refresh_token(TEST_CLIENT_ID)
    current = refresh(http, old).json()
    assert api_get(http, current["access_token"]).status_code == 200
    assert refresh(http, old).json() == EXACT_INVALID_GRANT  # reuse detected
    assert refresh(http, current["refresh_token"]).json() == EXACT_INVALID_GRANT
    assert api_get(http, current["access_token"]).status_code == 401
    assert emu.counters["families_revoked"] == 1
    assert refresh(http, other_family).status_code == 200  # other logins are unaffected


def test_revoke_old_access_on_refresh(emu: Emulator, http: Any) -> None:
    token = emu.issue_refresh_token(TEST_CLIENT_ID)
    first = refresh(http, token).json()
    second = refresh(http, first["refresh_token"]).json()
    assert api_get(http, first["access_token"]).status_code == 200  # default: old still valid
    emu.revoke_old_access_on_refresh = True
    third = refresh(http, second["refresh_token"]).json()
    assert api_get(http, second["access_token"]).status_code == 401
    assert api_get(http, third["access_token"]).status_code == 200


def test_refresh_lifetime_and_scope_narrowing(emu: Emulator, http: Any) -> None:
    token = emu.issue_refresh_token(TEST_CLIENT_ID)
    narrowed = refresh(http, token, scope="read")
    assert narrowed.json()["scope"] == "read"
    widened = refresh(http, narrowed.json()["refresh_token"], scope="read admin")
    assert widened.json()["error"] == "invalid_scope"
    emu.refresh_lifetime = 10
    emu.advance(11)
    assert refresh(http, narrowed.json()["refresh_token"]).json() == EXACT_INVALID_GRANT


def test_concurrent_refresh_with_the_same_token_one_wins(emu: Emulator, http: Any) -> None:
    emu.latency = 0.2
    token = emu.issue_refresh_token(TEST_CLIENT_ID)
    statuses: list[int] = []
    url = str(http.base_url).rstrip("/") + "/oauth/token"

    def call() -> None:
        data = {"grant_type": "refresh_token", "refresh_token": token}
        statuses.append(httpx2.post(url, data=data, auth=CLIENT, timeout=5).status_code)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 400]
    assert emu.counters["refreshes"] == 1


def test_expires_in_integer_or_float(emu: Emulator, http: Any) -> None:
    emu.access_lifetime = 1.5
    body = refresh(http, emu.issue_refresh_token(TEST_CLIENT_ID)).json()
    assert body["expires_in"] == 1.5
    emu.access_lifetime = 21600.0
    body = refresh(http, body["refresh_token"]).json()
    assert body["expires_in"] == 21600 and isinstance(body["expires_in"], int)


# ---------------------------------------------------------------------------- client auth & errors


def test_client_auth_basic_body_and_wrong_secret(emu: Emulator, http: Any) -> None:
    basic = refresh(http, emu.issue_refresh_token(TEST_CLIENT_ID))
    assert basic.status_code == 200
    body_auth = http.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": emu.issue_refresh_token(TEST_CLIENT_ID),
            "client_id": TEST_CLIENT_ID,
            "client_secret": TEST_CLIENT_SECRET,
        },
    )
    assert body_auth.status_code == 200
    token = emu.issue_refresh_token(TEST_CLIENT_ID)
    data = {"grant_type": "refresh_token", "refresh_token": token}
    wrong_basic = http.post("/oauth/token", data=data, auth=(TEST_CLIENT_ID, "nope"))
    assert wrong_basic.status_code == 401
    assert wrong_basic.json()["error"] == "invalid_client"
    assert wrong_basic.headers["www-authenticate"].startswith("Basic")
    wrong_body = http.post(
        "/oauth/token", data={**data, "client_id": TEST_CLIENT_ID, "client_secret": "nope"}
    )
    assert wrong_body.status_code == 401 and wrong_body.json()["error"] == "invalid_client"
    unknown = http.post("/oauth/token", data=data, auth=("ghost", "x"))
    assert unknown.json()["error"] == "invalid_client"
    anonymous = http.post("/oauth/token", data=data)
    assert anonymous.status_code == 401
    assert emu.counters["invalid_client"] == 4
    assert "nope" not in wrong_body.text
    assert refresh(http, token).status_code == 200  # failed auth did not burn the token


def test_request_errors(emu: Emulator, http: Any) -> None:
    no_grant = http.post("/oauth/token", data={}, auth=CLIENT)
    assert no_grant.status_code == 400
    assert no_grant.json()["error"] == "invalid_request"
    assert "grant_type" in no_grant.json()["error_description"]
    missing = http.post("/oauth/token", data={"grant_type": "refresh_token"}, auth=CLIENT)
    assert missing.json()["error"] == "invalid_request"
    assert "refresh_token" in missing.json()["error_description"]
    unsupported = http.post("/oauth/token", data={"grant_type": "password"}, auth=CLIENT)
    assert unsupported.status_code == 400
    assert unsupported.json()["error"] == "unsupported_grant_type"
    as_json = http.post("/oauth/token", json={"grant_type": "client_credentials"}, auth=CLIENT)
    assert as_json.json()["error"] == "invalid_request"
    repeated = http.post(
        "/oauth/token",
        content=b"grant_type=client_credentials&scope=a&scope=b",
        headers={"content-type": "application/x-www-form-urlencoded"},
        auth=CLIENT,
    )
    assert repeated.json()["error"] == "invalid_request"
    assert emu.counters["client_credentials"] == 0


def test_client_credentials_echoes_params(emu: Emulator, http: Any) -> None:
    answer = http.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "scope": "read",
            "audience": "https://api.example",
            "resource": "items",
            "client_id": TEST_CLIENT_ID,
            "client_secret": TEST_CLIENT_SECRET,
        },
    )
    assert answer.status_code == 200
    body = answer.json()
    assert "refresh_token" not in body
    assert body["scope"] == "read"
    assert body["params"]["audience"] == "https://api.example"
    assert body["params"]["resource"] == "items"
    assert "client_secret" not in body["params"]
    assert api_get(http, body["access_token"]).status_code == 200
    assert emu.counters["client_credentials"] == 1


# ---------------------------------------------------------------------------- other grants


def authorize(http: Any, challenge: str | None, redirect: str = "http://app/cb") -> str:
    params = {
        "response_type": "code",
        "client_id": TEST_CLIENT_ID,
        "redirect_uri": redirect,
        "state": "xyz",
        "scope": "offline_access read",
    }
    if challenge is not None:
        params.update(code_challenge=challenge, code_challenge_method="S256")
    answer = http.get("/authorize", params=params, follow_redirects=False)
    assert answer.status_code == 302
    location = urlsplit(str(answer.headers["location"]))
    assert f"{location.scheme}://{location.netloc}{location.path}" == redirect
    query = parse_qs(location.query)
    assert query["state"] == ["xyz"]
    return query["code"][0]


def exchange(http: Any, code: str, verifier: str | None, redirect: str = "http://app/cb") -> Any:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect}
    if verifier is not None:
        data["code_verifier"] = verifier
    return http.post("/oauth/token", data=data, auth=CLIENT)


def test_authorization_code_with_pkce(emu: Emulator, http: Any) -> None:
    verifier, challenge = pkce_pair()
    code = authorize(http, challenge)
    answer = exchange(http, code, verifier)
    assert answer.status_code == 200
    body = answer.json()
    assert body["scope"] == "offline_access read"
    assert body["refresh_token"].startswith("TG-")
    assert refresh(http, body["refresh_token"]).status_code == 200
    # Codes are single-use, and a replayed code revokes what it produced.
    assert exchange(http, code, verifier).json() == EXACT_INVALID_GRANT
    assert api_get(http, body["access_token"]).status_code == 401
    assert emu.counters["authorization_code"] == 1
    assert emu.counters["authorizations"] == 1


def test_authorization_code_bad_verifier_and_redirect(emu: Emulator, http: Any) -> None:
    verifier, challenge = pkce_pair()
    assert exchange(http, authorize(http, challenge), "wrong" * 10).json() == EXACT_INVALID_GRANT
    assert exchange(http, authorize(http, challenge), None).json() == EXACT_INVALID_GRANT
    mismatch = exchange(http, authorize(http, challenge), verifier, redirect="http://evil/cb")
    assert mismatch.json() == EXACT_INVALID_GRANT
    no_pkce = exchange(http, authorize(http, None), None)
    assert no_pkce.status_code == 200
    emu.advance(601)  # codes live ten minutes
    assert exchange(http, authorize(http, None), None).status_code == 200
    stale = authorize(http, None)
    emu.advance(601)
    assert exchange(http, stale, None).json() == EXACT_INVALID_GRANT
    assert emu.counters["invalid_grant"] == 4
    plain = http.get(
        "/authorize",
        params={
            "response_type": "code",
            "client_id": TEST_CLIENT_ID,
            "redirect_uri": "http://app/cb",
            "code_challenge": "abc",
            "code_challenge_method": "plain",
        },
        follow_redirects=False,
    )
    assert "error=invalid_request" in plain.headers["location"]


def test_device_flow_pending_then_approved(emu: Emulator, http: Any) -> None:
    start = http.post("/oauth/device/code", data={"client_id": TEST_CLIENT_ID, "scope": "x"})
    assert start.status_code == 401  # confidential client must authenticate
    start = http.post("/oauth/device/code", data={"scope": "offline_access read"}, auth=CLIENT)
    assert start.status_code == 200
    grant = start.json()
    assert set(grant) == {
        "device_code",
        "user_code",
        "verification_uri",
        "verification_uri_complete",
        "expires_in",
        "interval",
    }
    assert grant["verification_uri"] == str(http.base_url).rstrip("/") + "/device"
    assert grant["user_code"] in grant["verification_uri_complete"]
    poll = {"grant_type": "urn:ietf:params:oauth:grant-type:device_code"}
    poll["device_code"] = grant["device_code"]
    pending = http.post("/oauth/token", data=poll, auth=CLIENT)
    assert pending.status_code == 400
    assert pending.json()["error"] == "authorization_pending"
    assert http.post("/device/approve", data={"user_code": "NOPE-NOPE"}).status_code == 400
    assert http.post("/device/approve", data={"user_code": grant["user_code"]}).status_code == 200
    tokens = http.post("/oauth/token", data=poll, auth=CLIENT)
    assert tokens.status_code == 200
    assert tokens.json()["refresh_token"].startswith("TG-")
    assert http.post("/oauth/token", data=poll, auth=CLIENT).json() == EXACT_INVALID_GRANT
    assert emu.counters["device_code"] == 1


def test_device_flow_denied_public_client(emu: Emulator, http: Any) -> None:
    emu.add_client("cli", None)
    grant = http.post("/oauth/device/code", data={"client_id": "cli"}).json()
    assert emu.approve_device(grant["user_code"], deny=True)
    poll = {
        "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
        "device_code": grant["device_code"],
        "client_id": "cli",
    }
    assert http.post("/oauth/token", data=poll).json()["error"] == "access_denied"


def test_revocation(emu: Emulator, http: Any) -> None:
    pair = refresh(http, emu.issue_refresh_token(TEST_CLIENT_ID)).json()
    assert http.post("/oauth/revoke", data={"token": "unknown"}, auth=CLIENT).status_code == 200
    revoked = http.post(
        "/oauth/revoke",
        data={"token": pair["refresh_token"], "token_type_hint": "refresh_token"},
        auth=CLIENT,
    )
    assert revoked.status_code == 200
    assert refresh(http, pair["refresh_token"]).json() == EXACT_INVALID_GRANT
    assert api_get(http, pair["access_token"]).status_code == 401  # the family died
    access = emu.issue_access_token(TEST_CLIENT_ID)
    assert api_get(http, access).status_code == 200
    assert http.post("/oauth/revoke", data={"token": access}).status_code == 200
    assert api_get(http, access).status_code == 401
    assert emu.counters["revocations"] == 3


@pytest.mark.parametrize(
    "path", ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"]
)
def test_discovery_metadata(http: Any, tokenward_emulator: EmulatorServer, path: str) -> None:
    meta = http.get(path).json()
    base = tokenward_emulator.url
    assert meta["issuer"] == base
    assert meta["token_endpoint"] == tokenward_emulator.token_url
    assert meta["authorization_endpoint"] == base + "/authorize"
    assert meta["revocation_endpoint"] == base + "/oauth/revoke"
    assert meta["device_authorization_endpoint"] == base + "/oauth/device/code"
    assert meta["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
    ]
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert "refresh_token" in meta["grant_types_supported"]


# ---------------------------------------------------------------------------- protected API


def test_api_echo(emu: Emulator, http: Any) -> None:
    token = emu.issue_access_token(TEST_CLIENT_ID)
    answer = http.post(
        "/api/items/7?x=1",
        json={"a": 1},
        headers={"Authorization": f"bearer {token}"},  # scheme is case-insensitive
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body["ok"] is True
    assert body["method"] == "POST"
    assert body["path"] == "/api/items/7"
    assert body["query"] == {"x": "1"}
    assert body["json"] == {"a": 1}
    assert json.loads(body["body"]) == {"a": 1}
    assert body["token_fingerprint"] == hashlib.sha256(token.encode()).hexdigest()[:12]
    assert token not in answer.text
    text = http.put("/api/raw", content=b"plain", headers={"Authorization": f"Bearer {token}"})
    assert text.json()["body"] == "plain" and text.json()["json"] is None


def test_api_401_after_expiry(emu: Emulator, http: Any) -> None:
    emu.access_lifetime = 60
    token = refresh(http, emu.issue_refresh_token(TEST_CLIENT_ID)).json()["access_token"]
    assert api_get(http, token).status_code == 200
    emu.advance(59)
    assert emu.is_access_token_valid(token)  # the provider's clock alone decides
    emu.advance(1)
    expired = api_get(http, token)
    assert expired.status_code == 401
    assert expired.json() == API_INVALID_TOKEN
    assert "www-authenticate" not in expired.headers
    emu.www_authenticate = True
    assert api_get(http, token).headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert api_get(http, "APP_USR-unknown").status_code == 401
    missing = http.get("/api/items")
    assert missing.status_code == 401 and missing.json() == {"message": "authorization required"}
    counters = emu.counters
    assert (counters["api_calls"], counters["api_ok"], counters["api_401"]) == (5, 1, 4)


def test_advance_and_expire_access_tokens(emu: Emulator, http: Any) -> None:
    first = emu.issue_access_token(TEST_CLIENT_ID, lifetime=60)
    assert api_get(http, first).status_code == 200
    emu.advance(61)
    assert api_get(http, first).status_code == 401
    second = emu.issue_access_token(TEST_CLIENT_ID)
    emu.expire_access_tokens()
    assert api_get(http, second).status_code == 401
    assert not emu.is_access_token_valid(second)


def test_insufficient_scope_is_403_not_401(emu: Emulator, http: Any) -> None:
    token = emu.issue_access_token(TEST_CLIENT_ID)
    answer = api_get(http, token, "/api/scope-limited")
    assert answer.status_code == 403
    assert 'error="insufficient_scope"' in answer.headers["www-authenticate"]
    assert emu.counters["api_403"] == 1 and emu.counters["api_401"] == 0


# ---------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("fault", "status", "check"),
    [
        ("503", 503, lambda r: r.json()["status"] == 503),
        ("500", 500, lambda r: r.json()["status"] == 500),
        ("429", 429, lambda r: r.headers["retry-after"] == "1"),
        ("html", 200, lambda r: r.headers["content-type"].startswith("text/html")),
        ("garbage", 200, lambda r: not _is_json(r)),
        ("no_access_token", 200, lambda r: "access_token" not in r.json()),
        ("negative_expires", 200, lambda r: r.json()["expires_in"] == -5),
        ("invalid_grant", 400, lambda r: r.json() == EXACT_INVALID_GRANT),
    ],
)
def test_token_endpoint_faults(
    emu: Emulator, http: Any, fault: str, status: int, check: Any
) -> None:
    token = emu.issue_refresh_token(TEST_CLIENT_ID)
    emu.inject(fault)
    faulty = refresh(http, token)
    assert faulty.status_code == status
    assert check(faulty)
    assert emu.counters["faults_injected"] == 1
    # One use only; the next call is normal. Only negative_expires performed the refresh.
    if fault == "negative_expires":
        assert emu.counters["refreshes"] == 1
        token = faulty.json()["refresh_token"]
    else:
        assert emu.counters["refreshes"] == 0
    normal = refresh(http, token)
    assert normal.status_code == 200 and normal.json()["expires_in"] == 3600


def _is_json(response: Any) -> bool:
    try:
        response.json()
    except ValueError:
        return False
    return True


def test_faults_queue_in_order_and_retry_after_zero(emu: Emulator, http: Any) -> None:
    emu.inject("503", times=2)
    emu.inject("429", retry_after=0)
    assert emu.pending_faults() == [("503", 2), ("429", 1)]
    data = {"grant_type": "client_credentials"}
    statuses = [http.post("/oauth/token", data=data, auth=CLIENT) for _ in range(4)]
    assert [r.status_code for r in statuses] == [503, 503, 429, 200]
    assert statuses[2].headers["retry-after"] == "0"
    assert emu.counters["faults_injected"] == 3
    assert emu.pending_faults() == []


def test_inject_rejects_nonsense(emu: Emulator) -> None:
    assert "timeout" in FAULTS
    with pytest.raises(ValueError):
        emu.inject("teapot")
    with pytest.raises(ValueError):
        emu.inject("negative_expires", endpoint="api")
    with pytest.raises(ValueError):
        emu.inject("503", endpoint="nowhere")
    with pytest.raises(ValueError):
        emu.inject("503", times=0)
    assert emu.pending_faults("token") == []


def test_timeout_fault_abandons_unprocessed_request(emu: Emulator, http: Any) -> None:
    emu.fault_delay = 1
    token = emu.issue_refresh_token(TEST_CLIENT_ID)
    emu.inject("timeout")
    with pytest.raises(httpx2.ReadTimeout):
        http.post(
            "/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": token},
            auth=CLIENT,
            timeout=0.3,
        )
    deadline = time.monotonic() + 5
    while emu.counters["abandoned_requests"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)  # the server notices the client left when its delay is over
    assert emu.counters["abandoned_requests"] == 1
    assert emu.counters["refreshes"] == 0
    assert refresh(http, token).status_code == 200  # the token was never used


def test_timeout_fault_answers_late_to_a_patient_client(emu: Emulator, http: Any) -> None:
    emu.inject("timeout", delay=0.3)
    started = time.monotonic()
    answer = refresh(http, emu.issue_refresh_token(TEST_CLIENT_ID))
    assert answer.status_code == 200
    assert time.monotonic() - started >= 0.3


def test_drop_after_processing_rotates_although_client_timed_out(emu: Emulator, http: Any) -> None:
    emu.fault_delay = 1
    old = emu.issue_refresh_token(TEST_CLIENT_ID)
    emu.inject("drop_after_processing")
    with pytest.raises(httpx2.ReadTimeout):
        http.post(
            "/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": old},
            auth=CLIENT,
            timeout=0.3,
        )
    assert emu.counters["refreshes"] == 1  # the provider rotated; the client never heard
    assert not emu.is_refresh_token_valid(old)
    assert refresh(http, old).json() == EXACT_INVALID_GRANT  # blind retry fails


def test_drop_after_processing_with_grace_gets_the_same_pair(emu: Emulator, http: Any) -> None:
    emu.fault_delay = 1
    emu.reuse_grace = 10
    old = emu.issue_refresh_token(TEST_CLIENT_ID)
    emu.inject("drop_after_processing")
    with pytest.raises(httpx2.ReadTimeout):
        http.post(
            "/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": old},
            auth=CLIENT,
            timeout=0.3,
        )
    retry = refresh(http, old)
    assert retry.status_code == 200
    assert fingerprint(retry.json()["refresh_token"]) == emu.refresh_log[0]["new"]
    assert emu.counters["refreshes"] == 1
    assert emu.counters["refresh_grace_replays"] == 1


def test_api_faults(emu: Emulator, http: Any) -> None:
    token = emu.issue_access_token(TEST_CLIENT_ID)
    emu.inject("401", endpoint="api")
    emu.inject("503", endpoint="api")
    emu.inject("timeout", endpoint="api", delay=1)
    forced = api_get(http, token)
    assert forced.status_code == 401 and forced.json() == API_INVALID_TOKEN
    assert api_get(http, token).status_code == 503
    with pytest.raises(httpx2.ReadTimeout):
        http.get("/api/x", headers={"Authorization": f"Bearer {token}"}, timeout=0.3)
    assert api_get(http, token).status_code == 200
    counters = emu.counters
    assert counters["api_401"] == 1 and counters["faults_injected"] == 3


# ---------------------------------------------------------------------------- HeyGen sessions


def new_session(http: Any) -> tuple[str, str]:
    created = http.post("/v1/streaming.create_token", headers={"x-api-key": TEST_API_KEY})
    token = created.json()["data"]["token"]
    session = http.post("/v1/streaming.new", json={}, headers={"Authorization": f"Bearer {token}"})
    assert session.status_code == 200
    return token, session.json()["data"]["session_id"]


def test_session_token_minting(emu: Emulator, http: Any) -> None:
    bad = http.post("/v1/streaming.create_token", headers={"x-api-key": "leaked-key-123"})
    assert bad.status_code == 401
    assert bad.json() == {"error": "invalid api key", "data": None}
    assert "leaked-key-123" not in bad.text
    assert http.post("/v1/streaming.create_token").status_code == 401
    good = http.post("/v1/streaming.create_token", headers={"x-api-key": TEST_API_KEY})
    assert good.status_code == 200
    body = good.json()
    assert body["error"] is None and len(body["data"]["token"]) >= 32
    emu.inject("429", endpoint="session")
    limited = http.post("/v1/streaming.create_token", headers={"x-api-key": TEST_API_KEY})
    assert limited.status_code == 429
    assert emu.counters["session_tokens"] == 1
    assert emu.counters["session_token_requests"] == 4


def test_session_token_is_single_session(emu: Emulator, http: Any) -> None:
    token, session_id = new_session(http)
    auth = {"Authorization": f"Bearer {token}"}
    again = http.post("/v1/streaming.new", json={}, headers=auth)
    assert again.status_code == 401
    new_data = {"session_id": session_id}
    assert http.post("/v1/streaming.start", json=new_data, headers=auth).status_code == 200
    task = http.post(
        "/v1/streaming.task",
        json={"session_id": session_id, "text": "hello there", "task_type": "repeat"},
        headers=auth,
    )
    assert task.status_code == 200
    assert set(task.json()["data"]) == {"task_id", "duration_ms"}
    assert http.post("/v1/streaming.keep_alive", json=new_data, headers=auth).status_code == 200
    assert http.post("/v1/streaming.interrupt", json=new_data, headers=auth).status_code == 200
    other_token, other_session = new_session(http)
    cross = http.post("/v1/streaming.start", json={"session_id": other_session}, headers=auth)
    assert cross.status_code == 401  # a token only drives its own session
    assert sorted(emu.open_sessions()) == sorted([session_id, other_session])
    assert http.post("/v1/streaming.stop", json=new_data, headers=auth).status_code == 200
    after = http.post("/v1/streaming.keep_alive", json=new_data, headers=auth)
    assert after.status_code == 401
    counters = emu.counters
    assert counters["sessions_started"] == 2
    assert counters["sessions_stopped"] == 1
    assert counters["sessions_open"] == 1
    assert counters["keepalives"] == 1
    assert counters["tasks"] == 1
    assert other_token != token


def test_idle_sessions_are_closed_and_unused_tokens_expire(emu: Emulator, http: Any) -> None:
    token, session_id = new_session(http)
    unused = emu.issue_session_token()
    emu.advance(121)
    assert emu.open_sessions() == []
    keep = http.post(
        "/v1/streaming.keep_alive",
        json={"session_id": session_id},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert keep.status_code == 401
    assert emu.counters["sessions_timed_out"] == 1
    emu.advance(200)  # 321 s > session_token_lifetime
    late = http.post("/v1/streaming.new", json={}, headers={"Authorization": f"Bearer {unused}"})
    assert late.status_code == 401


# ---------------------------------------------------------------------------- control endpoints


def test_control_endpoints(emu: Emulator, http: Any) -> None:
    assert http.post("/_emulator/clients", json={"client_id": "c2", "client_secret": "s2"}).json()
    token = http.post("/_emulator/refresh-tokens", json={"client_id": "c2"}).json()["refresh_token"]
    config = http.post("/_emulator/config", json={"access_lifetime": 60, "reuse_grace": 1})
    assert config.status_code == 200 and config.json()["access_lifetime"] == 60
    assert emu.access_lifetime == 60 and emu.reuse_grace == 1
    assert http.post("/_emulator/config", json={"nope": 1}).status_code == 400
    assert http.post("/_emulator/config", json={"access_lifetime": "1"}).status_code == 400
    injected = http.post(
        "/_emulator/inject", json={"fault": "503", "times": 1, "endpoint": "token"}
    )
    assert injected.status_code == 200
    assert http.post("/_emulator/inject", json={"fault": "bogus"}).status_code == 400
    data = {"grant_type": "refresh_token", "refresh_token": token}
    assert http.post("/oauth/token", data=data, auth=("c2", "s2")).status_code == 503
    ok = http.post("/oauth/token", data=data, auth=("c2", "s2"))
    assert ok.status_code == 200 and ok.json()["expires_in"] == 60
    counters = http.get("/_emulator/counters").json()
    assert counters["refreshes"] == 1 and counters["faults_injected"] == 1
    assert http.get("/_emulator/refresh-log").json()[0]["old"] == fingerprint(token)
    assert http.post("/_emulator/reset-counters").json() == {"ok": True}
    assert http.get("/_emulator/counters").json()["refreshes"] == 0
    assert emu.refresh_log == []
    assert emu.path_counts == {"/_emulator/counters": 1}


async def test_control_endpoints_are_loopback_only() -> None:
    emu = Emulator()
    app = create_app(emu)
    remote = httpx2.ASGITransport(app=app, client=("10.1.2.3", 4000))
    async with httpx2.AsyncClient(transport=remote, base_url="http://emu") as client:
        answer = await client.post("/_emulator/config", json={"access_lifetime": 1})
        assert answer.status_code == 403
        assert emu.access_lifetime == 3600
        meta = await client.get("/.well-known/oauth-authorization-server")
        assert meta.json()["token_endpoint"] == "http://emu/oauth/token"


def test_emulator_never_logs_secrets(
    emu: Emulator, http: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = emu.issue_refresh_token(TEST_CLIENT_ID)
    pair = refresh(http, token).json()
    api_get(http, pair["access_token"])
    http.post("/v1/streaming.create_token", headers={"x-api-key": "secret-key-xyz"})
    wrong = (TEST_CLIENT_ID, "wrong-secret-zzz")
    http.post("/oauth/token", data={"grant_type": "refresh_token"}, auth=wrong)
    logged = caplog.text + os.linesep.join(str(r.args) for r in caplog.records)
    tokens = (token, pair["access_token"], pair["refresh_token"])
    for secret in (*tokens, "secret-key-xyz", "wrong-secret-zzz", TEST_CLIENT_SECRET):
        assert secret not in logged
        assert secret not in repr(emu)


def test_counters_reset_keeps_state(emu: Emulator, http: Any) -> None:
    token = emu.issue_refresh_token(TEST_CLIENT_ID)
    pair = refresh(http, token).json()
    assert emu.counters["refreshes"] == 1
    emu.reset_counters()
    assert all(value == 0 for value in emu.counters.values())
    assert refresh(http, pair["refresh_token"]).status_code == 200
    assert emu.counters["refreshes"] == 1
    with pytest.raises(ValueError):
        emu.configure(refresh_rotation=1)
    with pytest.raises(ValueError):
        emu.issue_refresh_token("ghost")
