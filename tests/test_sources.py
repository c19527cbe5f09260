"""Sources, sans-I/O: the requests they build and how they classify token endpoint answers.

Responses are built by hand as `HttpResponse` values; a few tests then check the same behaviour
end to end against the emulator over loopback HTTP.
"""

from __future__ import annotations

import base64
import email.utils
import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote

import pytest

from tokenward.errors import (
    CredentialNotSeeded,
    MalformedTokenResponse,
    ReauthorizationRequired,
    RequestRejected,
    TransientError,
)
from tokenward.manager import TokenManager
from tokenward.retry import RetryPolicy
from tokenward.sources import (
    ApiKeyExchange,
    ClientCredentialsGrant,
    FunctionSource,
    RefreshTokenGrant,
)
from tokenward.sources.base import MAX_EXPIRES_IN, PriorGrant, parse_retry_after
from tokenward.stores import MemoryStore
from tokenward.testing import TEST_API_KEY, TEST_CLIENT_ID, TEST_CLIENT_SECRET
from tokenward.testing.server import EmulatorServer
from tokenward.token import Grant, Token
from tokenward.transport import HttpRequest, HttpResponse

TOKEN_URL = "https://provider.example/oauth/token"
CRED = "ml-seller"
ACCESS = "APP_USR-1234-access-SECRET"
REFRESH = "TG-5678-refresh-SECRET"
NEW_REFRESH = "TG-9999-rotated-SECRET"
NOW = 1_700_000_000.0
FAST = RetryPolicy(initial=0.01, maximum=0.05, deadline=5)


def response(
    status: int = 200,
    payload: Any = None,
    *,
    raw: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    received_at: float = NOW,
) -> HttpResponse:
    if raw is None:
        raw = json.dumps(payload).encode()
        content_type = "application/json"
    else:
        content_type = "text/plain"
    all_headers = {
        "content-type": content_type,
        **{k.lower(): v for k, v in (headers or {}).items()},
    }
    return HttpResponse(status, all_headers, raw, received_at)


def form(request: HttpRequest) -> dict[str, str]:
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.body is not None
    parsed = parse_qs(request.body.decode(), keep_blank_values=True, strict_parsing=True)
    assert all(len(values) == 1 for values in parsed.values()), "a parameter is repeated"
    return {k: v[0] for k, v in parsed.items()}


def basic_pair(request: HttpRequest) -> tuple[str, str]:
    scheme, _, value = request.headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(value).decode().partition(":")
    return unquote(user), unquote(password)


def seeded(refresh: str = REFRESH) -> PriorGrant:
    return PriorGrant(CRED, refresh_token=refresh)


def grant(**kwargs: Any) -> RefreshTokenGrant:
    return RefreshTokenGrant(TOKEN_URL, "client-1", "shh-client-secret", **kwargs)


# -- refresh_token grant: the request -------------------------------------------------------
def test_refresh_request_with_basic_client_auth() -> None:
    request = grant().build_request(seeded())
    assert request.method == "POST" and request.url == TOKEN_URL
    assert request.headers["Accept"] == "application/json"
    assert form(request) == {"grant_type": "refresh_token", "refresh_token": REFRESH}
    assert basic_pair(request) == ("client-1", "shh-client-secret")


def test_refresh_request_with_body_client_auth() -> None:
    request = grant(client_auth="body", scope="read").build_request(seeded())
    assert "Authorization" not in request.headers
    assert form(request) == {
        "grant_type": "refresh_token",
        "refresh_token": REFRESH,
        "scope": "read",
        "client_id": "client-1",
        "client_secret": "shh-client-secret",
    }


def test_public_client_sends_only_its_id() -> None:
    source = RefreshTokenGrant(TOKEN_URL, "public-app", client_auth="none")
    request = source.build_request(seeded())
    assert "Authorization" not in request.headers
    assert form(request)["client_id"] == "public-app"
    assert "client_secret" not in form(request)


SPECIAL = "p@ss:w/rd+%&= é?#"


def test_special_characters_in_secret_basic() -> None:
    source = RefreshTokenGrant(TOKEN_URL, "id:with+colon", SPECIAL)
    request = source.build_request(seeded())
    # RFC 6749 2.3.1: both parts are form-encoded, so the colon separator stays unambiguous.
    raw = base64.b64decode(request.headers["Authorization"].split()[1]).decode()
    assert raw.count(":") == 1
    assert basic_pair(request) == ("id:with+colon", SPECIAL)


def test_special_characters_in_secret_body() -> None:
    source = RefreshTokenGrant(TOKEN_URL, "client-1", SPECIAL, client_auth="body")
    assert form(source.build_request(seeded(REFRESH + "+/=")))["client_secret"] == SPECIAL
    assert form(source.build_request(seeded(REFRESH + "+/=")))["refresh_token"] == REFRESH + "+/="


def test_refresh_request_needs_a_refresh_token() -> None:
    with pytest.raises(CredentialNotSeeded, match=CRED):
        grant().build_request(PriorGrant(CRED))
    with pytest.raises(CredentialNotSeeded):
        grant().build_request(None)


def test_repr_of_sources_hides_secrets() -> None:
    sources: list[object] = [
        grant(),
        ClientCredentialsGrant(TOKEN_URL, "client-1", "shh-client-secret"),
        ApiKeyExchange("https://api.example/v1/streaming.create_token", "sk-live-SECRET"),
    ]
    for source in sources:
        for text in (repr(source), str(source), source.describe()):  # type: ignore[attr-defined]
            assert "SECRET" not in text and "shh-client-secret" not in text


# -- client_credentials ---------------------------------------------------------------------
def test_client_credentials_keeps_scope_audience_and_extra_params() -> None:
    source = ClientCredentialsGrant(
        TOKEN_URL,
        "client-1",
        "shh-client-secret",
        scope="read write",
        audience="https://api.example",
        extra_params={"resource": "urn:orders", "tenant": "t-1"},
        extra_headers={"X-Request-Source": "tokenward"},
    )
    for _ in range(2):  # the same every time
        request = source.build_request(None)
        assert form(request) == {
            "grant_type": "client_credentials",
            "scope": "read write",
            "audience": "https://api.example",
            "resource": "urn:orders",
            "tenant": "t-1",
        }
        assert request.headers["X-Request-Source"] == "tokenward"
        assert basic_pair(request) == ("client-1", "shh-client-secret")


# -- parsing a success ----------------------------------------------------------------------
def ml_success(**changes: Any) -> dict[str, Any]:
    payload = {
        "access_token": ACCESS,
        "token_type": "bearer",
        "expires_in": 21600,
        "scope": "offline_access read write",
        "user_id": 12345,
        "refresh_token": NEW_REFRESH,
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not None}


def test_parse_success() -> None:
    token = grant().parse_response(response(200, ml_success()), CRED)
    assert token.access_token == ACCESS
    assert token.expires_at == NOW + 21600 and token.obtained_at == NOW
    assert token.scope == "offline_access read write"
    assert token.authorization == f"Bearer {ACCESS}"
    assert token.extra == {"user_id": 12345}
    # Rotation: the answer's refresh token is the one to keep from now on.
    assert token.refresh_token == NEW_REFRESH


def test_parse_without_refresh_token_leaves_it_unset() -> None:
    token = grant().parse_response(response(200, ml_success(refresh_token=None)), CRED)
    assert token.refresh_token is None  # the manager then keeps the stored one


def test_parse_expires_in_as_string_and_missing() -> None:
    token = grant().parse_response(response(200, ml_success(expires_in="3600")), CRED)
    assert token.expires_at == NOW + 3600
    token = grant().parse_response(response(200, ml_success(expires_in=None)), CRED)
    assert token.expires_at is None


# -- classification of refusals -------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "error"),
    [(400, "invalid_grant"), (401, "invalid_client"), (400, "unauthorized_client")],
)
def test_permanent_refusals(status: int, error: str) -> None:
    description = "Error validating grant. Your refresh token may be expired or already used"
    payload = {"error": error, "error_description": description, "status": status, "cause": []}
    with pytest.raises(ReauthorizationRequired) as info:
        grant().parse_response(response(status, payload), CRED)
    exc = info.value
    assert exc.credential == CRED
    assert exc.error == error
    assert exc.description == description
    assert description in str(exc) and CRED in str(exc) and error in str(exc)
    assert not exc.answer_lost


def test_error_field_in_a_200_answer_is_not_a_token() -> None:
    with pytest.raises(ReauthorizationRequired):
        grant().parse_response(response(200, {"error": "invalid_grant"}), CRED)


def test_other_oauth_errors_are_configuration_problems() -> None:
    payload = {"error": "invalid_scope", "error_description": "scope exceeds grant"}
    with pytest.raises(RequestRejected) as info:
        grant().parse_response(response(400, payload), CRED)
    assert info.value.status == 400 and info.value.error == "invalid_scope"
    assert "scope exceeds grant" in str(info.value)


def test_429_with_retry_after_seconds() -> None:
    with pytest.raises(TransientError) as info:
        grant().parse_response(
            response(429, {"message": "local_rate_limited"}, headers={"Retry-After": "7"}), CRED
        )
    assert info.value.status == 429
    assert info.value.retry_after == 7.0
    assert not info.value.sent


def test_429_with_retry_after_http_date() -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    with pytest.raises(TransientError) as info:
        grant().parse_response(response(429, {}, headers={"Retry-After": when}), CRED)
    assert info.value.retry_after is not None
    assert 115 <= info.value.retry_after <= 120


def test_retry_after_parsing() -> None:
    now = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now=now) == 0.0  # past: no wait
    assert parse_retry_after(" 2.5 ") == 2.5
    for bad in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(bad) is None


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_server_errors_are_transient(status: int) -> None:
    with pytest.raises(TransientError) as info:
        grant().parse_response(response(status, raw=b"<html>Bad Gateway</html>"), CRED)
    assert info.value.status == status
    assert info.value.retry_after is None


# -- malformed answers ----------------------------------------------------------------------
def assert_malformed(resp: HttpResponse, field: str, *secrets: str) -> MalformedTokenResponse:
    with pytest.raises(MalformedTokenResponse) as info:
        grant().parse_response(resp, CRED)
    exc = info.value
    assert exc.field == field
    message = str(exc)
    assert field in message and CRED in message
    for secret in secrets:
        assert secret not in message
        assert secret not in repr(exc)
    if resp.body:
        assert resp.body.decode("utf-8", "replace") not in message
    return exc


def test_malformed_non_json() -> None:
    raw = f"access_token={ACCESS}&expires_in=3600".encode()
    exc = assert_malformed(response(200, raw=raw), "body", ACCESS)
    assert "not JSON" in str(exc)


def test_malformed_html_page() -> None:
    page = f"<!DOCTYPE html><html><body>Login as {REFRESH}</body></html>".encode()
    resp = HttpResponse(200, {"content-type": "text/html"}, page, NOW)
    exc = assert_malformed(resp, "body", REFRESH, "Login as")
    assert "HTML page" in str(exc)


def test_malformed_error_page_with_client_error_status() -> None:
    # A proxy's HTML page on a 4xx is a configuration problem, described without quoting it.
    page = f"<html><body>Forbidden {REFRESH}</body></html>".encode()
    resp = HttpResponse(404, {"content-type": "text/html"}, page, NOW)
    with pytest.raises(RequestRejected) as info:
        grant().parse_response(resp, CRED)
    assert REFRESH not in str(info.value) and "HTML page" in str(info.value)


def test_malformed_no_access_token() -> None:
    payload = ml_success(access_token=None)
    exc = assert_malformed(response(200, payload), "access_token", NEW_REFRESH)
    assert "missing" in exc.detail


def test_malformed_not_an_object() -> None:
    assert_malformed(response(200, [ACCESS]), "body", ACCESS)


@pytest.mark.parametrize(
    ("value", "what"),
    [(-5, "negative"), (MAX_EXPIRES_IN * 10, "absurd"), ("soon", "not a number"), ([1], "number")],
)
def test_malformed_expires_in(value: Any, what: str) -> None:
    exc = assert_malformed(response(200, ml_success(expires_in=value)), "expires_in", ACCESS)
    assert what in str(exc)
    assert NEW_REFRESH not in str(exc)


# -- API-key exchange -----------------------------------------------------------------------
HEYGEN = "https://api.heygen.example/v1/streaming.create_token"


def test_api_key_exchange_request() -> None:
    source = ApiKeyExchange(HEYGEN, "hg-key-SECRET")
    request = source.build_request(None)
    assert request.method == "POST" and request.url == HEYGEN
    assert request.headers["x-api-key"] == "hg-key-SECRET"
    assert request.body is None
    bearer = ApiKeyExchange(
        HEYGEN, "sk-SECRET", header="Authorization", prefix="Bearer ", json_body={"ttl": 60}
    ).build_request(None)
    assert bearer.headers["Authorization"] == "Bearer sk-SECRET"
    assert bearer.headers["Content-Type"] == "application/json"
    assert json.loads(bearer.body or b"") == {"ttl": 60}


def test_api_key_exchange_parses_data_token() -> None:
    source = ApiKeyExchange(HEYGEN, "hg-key", default_lifetime=300)
    token = source.parse_response(response(200, {"error": None, "data": {"token": "sess"}}), CRED)
    assert token.access_token == "sess"
    assert token.expires_at == NOW + 300
    assert token.authorization == "Bearer sess"


def test_api_key_exchange_expiry_paths() -> None:
    body = {"data": {"token": "t", "ttl": 30, "expires_at": NOW + 600}}
    by_in = ApiKeyExchange(HEYGEN, "k", expires_in_path="data.ttl")
    assert by_in.parse_response(response(200, body), CRED).expires_at == NOW + 30
    by_at = ApiKeyExchange(HEYGEN, "k", expires_at_path="data.expires_at")
    assert by_at.parse_response(response(200, body), CRED).expires_at == NOW + 600
    # The relative lifetime wins when both are configured and present.
    both = ApiKeyExchange(
        HEYGEN, "k", expires_in_path="data.ttl", expires_at_path="data.expires_at"
    )
    assert both.parse_response(response(200, body), CRED).expires_at == NOW + 30
    unknown = ApiKeyExchange(HEYGEN, "k")
    assert unknown.parse_response(response(200, body), CRED).expires_at is None
    nested = ApiKeyExchange(HEYGEN, "k", token_path="items.0.value")
    token = nested.parse_response(response(200, {"items": [{"value": "v"}]}), CRED)
    assert token.access_token == "v"


def test_api_key_exchange_malformed_and_refused() -> None:
    source = ApiKeyExchange(HEYGEN, "hg-key", expires_at_path="data.expires_at")
    with pytest.raises(MalformedTokenResponse) as info:
        source.parse_response(response(200, {"error": None, "data": {}}), CRED)
    assert info.value.field == "data.token" and "data.token" in str(info.value)
    with pytest.raises(MalformedTokenResponse) as info:
        payload = {"data": {"token": "t", "expires_at": NOW - 3600}}
        source.parse_response(response(200, payload), CRED)
    assert info.value.field == "data.expires_at"
    with pytest.raises(ReauthorizationRequired) as refused:
        source.parse_response(response(401, {"error": "invalid api key", "data": None}), CRED)
    assert refused.value.error == "invalid api key"
    with pytest.raises(TransientError):
        source.parse_response(response(503, {"error": "busy"}), CRED)


def test_api_key_exchange_against_the_emulator(tokenward_emulator: EmulatorServer) -> None:
    emulator = tokenward_emulator.emulator
    source = ApiKeyExchange(tokenward_emulator.session_token_url, TEST_API_KEY, default_lifetime=60)
    with TokenManager("heygen", source, MemoryStore(), retry=FAST) as manager:
        token = manager.token()
    assert token.expires_in() is not None
    assert emulator.counters["session_tokens"] == 1
    bad = ApiKeyExchange(tokenward_emulator.session_token_url, "wrong-key")
    with (
        TokenManager("heygen", bad, MemoryStore(), retry=FAST) as manager,
        pytest.raises(ReauthorizationRequired) as info,
    ):
        manager.token()
    assert "wrong-key" not in str(info.value)


# -- FunctionSource -------------------------------------------------------------------------
def test_function_source_normalizes_results() -> None:
    source = FunctionSource(lambda current: "x")
    assert not source.is_async
    as_grant = Grant("given", expires_at=NOW + 5, refresh_token="r")
    assert source.parse_result(as_grant, CRED) is as_grant
    as_token = Token("given", expires_at=NOW + 5, obtained_at=NOW)
    assert source.parse_result(as_token, CRED) == Grant(
        "given", expires_at=NOW + 5, obtained_at=NOW
    )
    assert source.parse_result(as_token, CRED).token() == as_token
    plain = source.parse_result("plain-token", CRED, received_at=NOW)
    assert plain.access_token == "plain-token" and plain.expires_at is None
    mapped = source.parse_result(
        {
            "access_token": "m",
            "expires_in": 60,
            "refresh_token": "r",
            "token_type": "bearer",
            "x": 1,
        },
        CRED,
        received_at=NOW,
    )
    assert mapped.expires_at == NOW + 60
    assert mapped.refresh_token == "r" and mapped.extra == {"x": 1}
    assert mapped.authorization == "Bearer m"
    for bad, field in (
        ({"expires_in": 5}, "access_token"),
        (42, "return value"),
        ("", "return value"),
    ):
        with pytest.raises(MalformedTokenResponse) as info:
            source.parse_result(bad, CRED)
        assert info.value.field == field
    with pytest.raises(MalformedTokenResponse) as info:
        source.parse_result({"access_token": "m", "expires_in": -1}, CRED)
    assert info.value.field == "expires_in"


def test_function_source_detects_async_callables() -> None:
    async def fetch(current: Token | None) -> str:
        return "a"

    class AsyncCallable:
        async def __call__(self, current: Token | None) -> str:
            return "b"

    assert FunctionSource(fetch).is_async
    assert FunctionSource(AsyncCallable()).is_async
    assert "fetch" in repr(FunctionSource(fetch))


def _results() -> list[Any]:
    return [
        Token("from-token", expires_at=time.time() + 3600),
        "from-string",
        {"access_token": "from-dict", "expires_in": 3600},
    ]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_function_source_sync_through_the_manager(index: int) -> None:
    seen: list[Token | None] = []

    def fetch(current: Token | None) -> Any:
        seen.append(current)
        return _results()[index]

    with TokenManager("fn", FunctionSource(fetch), MemoryStore(), retry=FAST) as manager:
        first = manager.token()
        assert first.access_token.startswith("from-")
        assert manager.token() is first  # served from memory, no second call
        second = manager.refresh()
    assert seen[0] is None
    assert seen[1] is not None and seen[1].access_token == first.access_token
    assert second.version == first.version + 1


@pytest.mark.parametrize("index", [0, 1, 2])
async def test_function_source_async_through_the_manager(index: int) -> None:
    calls = 0

    async def fetch(current: Token | None) -> Any:
        nonlocal calls
        calls += 1
        return _results()[index]

    with TokenManager("fn", FunctionSource(fetch), MemoryStore(), retry=FAST) as manager:
        first = await manager.atoken()
        assert first.access_token.startswith("from-")
        assert (await manager.atoken()).access_token == first.access_token
    assert calls == 1


def test_async_function_source_from_sync_code() -> None:
    async def fetch(current: Token | None) -> str:
        return "from-async"

    with TokenManager("fn", FunctionSource(fetch), MemoryStore(), retry=FAST) as manager:
        assert manager.token().access_token == "from-async"


async def test_sync_function_source_from_async_code() -> None:
    with TokenManager("fn", FunctionSource(lambda current: "s"), MemoryStore()) as manager:
        assert (await manager.atoken()).access_token == "s"


# -- end to end against the emulator --------------------------------------------------------
@pytest.mark.parametrize("client_auth", ["basic", "body"])
def test_special_secret_accepted_by_the_emulator(
    tokenward_emulator: EmulatorServer, client_auth: Any
) -> None:
    emulator = tokenward_emulator.emulator
    emulator.add_client("odd+client:id", SPECIAL)
    refresh = emulator.issue_refresh_token("odd+client:id")
    source = RefreshTokenGrant(
        tokenward_emulator.token_url, "odd+client:id", SPECIAL, client_auth=client_auth
    )
    with TokenManager("odd", source, MemoryStore(), retry=FAST) as manager:
        manager.seed(refresh_token=refresh)
        assert emulator.is_access_token_valid(manager.token().access_token)
    assert emulator.counters["invalid_client"] == 0


def test_client_credentials_against_the_emulator(tokenward_emulator: EmulatorServer) -> None:
    source = ClientCredentialsGrant(
        tokenward_emulator.token_url,
        TEST_CLIENT_ID,
        TEST_CLIENT_SECRET,
        scope="read",
        audience="orders",
        extra_params={"resource": "urn:orders"},
    )
    with TokenManager("cc", source, MemoryStore(), retry=FAST) as manager:
        token = manager.token()
    # The emulator echoes what it received (never the secret) in `params`.
    assert token.extra["params"] == {
        "grant_type": "client_credentials",
        "scope": "read",
        "audience": "orders",
        "resource": "urn:orders",
    }
    assert token.scope == "read"


class DropsRefreshToken(RefreshTokenGrant):
    """A provider that does not rotate and omits `refresh_token` from its answers."""

    def parse_response(self, response: HttpResponse, credential: str) -> Grant:
        payload = json.loads(response.body)
        payload.pop("refresh_token", None)
        stripped = HttpResponse(
            response.status, response.headers, json.dumps(payload).encode(), response.received_at
        )
        return super().parse_response(stripped, credential)


def test_rotation_replaces_and_missing_keeps_the_old(tokenward_emulator: EmulatorServer) -> None:
    emulator = tokenward_emulator.emulator
    store = MemoryStore()
    first = emulator.issue_refresh_token(TEST_CLIENT_ID)
    url = tokenward_emulator.token_url
    rotating = RefreshTokenGrant(url, TEST_CLIENT_ID, TEST_CLIENT_SECRET)
    with TokenManager("ml", rotating, store, retry=FAST) as manager:
        manager.seed(refresh_token=first)
        manager.token()
    rotated = store.load("ml")
    assert rotated is not None and rotated.refresh_token not in (None, first)
    assert emulator.is_refresh_token_valid(rotated.refresh_token or "")
    assert not emulator.is_refresh_token_valid(first)

    emulator.refresh_rotation = False
    keeping = DropsRefreshToken(url, TEST_CLIENT_ID, TEST_CLIENT_SECRET)
    with TokenManager("ml", keeping, store, retry=FAST) as manager:
        for _ in range(3):
            manager.refresh()
    kept = store.load("ml")
    assert kept is not None and kept.version == rotated.version + 3
    assert kept.refresh_token == rotated.refresh_token
    assert emulator.counters["refreshes"] == 4
