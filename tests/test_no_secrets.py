"""Invariant 8: no secret escapes. A full scenario runs with the `tokenward` logger at DEBUG;
no token, refresh token, client secret or API key may appear in any log record attribute,
in any exception raised, or in the reprs and status summaries a program might print."""

from __future__ import annotations

import base64
import json
import logging
import secrets
import traceback
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import httpx2
import pytest

from tokenward.errors import (
    MalformedTokenResponse,
    ReauthorizationRequired,
    RequestRejected,
    TokenwardError,
)
from tokenward.integrations.httpx import TokenAuth
from tokenward.manager import TokenManager
from tokenward.redact import MAX_PROVIDER_TEXT
from tokenward.retry import RetryPolicy
from tokenward.sources import ApiKeyExchange, ClientCredentialsGrant, RefreshTokenGrant
from tokenward.stores import MemoryStore
from tokenward.testing.emulator import Emulator
from tokenward.testing.server import EmulatorServer
from tokenward.token import fingerprint

pytestmark = pytest.mark.timeout(60)

FAST = RetryPolicy(initial=0.01, maximum=0.05, deadline=5)


class AllAttributes(logging.Handler):
    """Formats every attribute of every record, the way a JSON log formatter would."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        attributes = vars(record)
        self.lines.append(repr(attributes))
        self.lines.append(json.dumps(attributes, default=repr))


@pytest.fixture
def handler() -> Iterator[AllAttributes]:
    logger = logging.getLogger("tokenward")
    handler = AllAttributes()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def describe(exc: BaseException) -> list[str]:
    """Everything an exception shows when printed, logged or inspected."""
    texts = [str(exc), repr(exc), *map(repr, exc.args), repr(vars(exc))]
    texts += traceback.format_exception(exc)
    return texts


def issued_secrets(emulator: Emulator) -> set[str]:
    """Every access, refresh and session token the emulator ever issued (its own books)."""
    with emulator._lock:
        return set(emulator._access) | set(emulator._refresh) | set(emulator._session_tokens)


def test_no_secret_escapes(
    tokenward_emulator: EmulatorServer,
    caplog: pytest.LogCaptureFixture,
    handler: AllAttributes,
) -> None:
    caplog.set_level(logging.DEBUG, logger="tokenward")
    server = tokenward_emulator
    emulator = server.emulator
    client_id = "shop-" + secrets.token_hex(4)
    client_secret = "cs-" + secrets.token_urlsafe(24)
    wrong_secret = "cs-wrong-" + secrets.token_urlsafe(24)
    api_key = "ak-" + secrets.token_urlsafe(24)
    wrong_key = "ak-wrong-" + secrets.token_urlsafe(24)
    emulator.add_client(client_id, client_secret)
    emulator.add_api_key(api_key)
    given = {client_secret, wrong_secret, api_key, wrong_key}

    raised: list[BaseException] = []
    shown: list[str] = []
    store = MemoryStore()

    def expect(kind: type[BaseException], call: Any) -> BaseException:
        with pytest.raises(kind) as info:
            call()
        raised.append(info.value)
        return info.value

    source = RefreshTokenGrant(server.token_url, client_id, client_secret)  # HTTP Basic
    with TokenManager("ml", source, store, retry=FAST, timeout=0.3) as manager:
        manager.seed(refresh_token=emulator.issue_refresh_token(client_id))
        token = manager.token()
        for _ in range(3):
            manager.refresh()

        # An expired-token answer and its replay.
        emulator.expire_access_tokens()
        with httpx2.Client(auth=TokenAuth(manager)) as client:
            response = client.post(server.api_url + "/items", json={"title": "x"})
        assert response.status_code == 200

        # Transient failures: 503, then 429 with Retry-After, then a lost answer.
        emulator.inject("503")
        manager.refresh()
        emulator.inject("429", retry_after=0.05)
        manager.refresh()
        emulator.reuse_grace = 5
        emulator.inject("drop_after_processing", delay=1.0)
        manager.refresh()

        # A malformed answer that carries fresh tokens in its body.
        emulator.inject("negative_expires")
        expect(MalformedTokenResponse, manager.refresh)

        # A re-login, then a refusal: invalid_grant, needs_reauth, later calls refused too.
        manager.seed(refresh_token=emulator.issue_refresh_token(client_id))
        emulator.inject("invalid_grant")
        expect(ReauthorizationRequired, manager.refresh)
        expect(ReauthorizationRequired, manager.token)
        shown += [repr(manager), str(manager), repr(token), str(token), repr(store)]
        shown.append(repr(store.load("ml")))
        shown.append(json.dumps(manager.status()))

    # Client credentials: a good secret, then a wrong one (invalid_client).
    good = ClientCredentialsGrant(server.token_url, client_id, client_secret, scope="read")
    with TokenManager("cc", good, MemoryStore(), retry=FAST) as manager:
        shown.append(repr(manager.token()))
        shown.append(json.dumps(manager.status()))
    bad = ClientCredentialsGrant(server.token_url, client_id, wrong_secret, client_auth="body")
    with TokenManager("cc-bad", bad, MemoryStore(), retry=FAST) as manager:
        expect(ReauthorizationRequired, manager.token)
        shown += [repr(bad), bad.describe()]

    # API-key exchange: a good key, then a wrong one.
    exchange = ApiKeyExchange(server.session_token_url, api_key, default_lifetime=60)
    with TokenManager("heygen", exchange, MemoryStore(), retry=FAST) as manager:
        shown.append(repr(manager.token()))
        shown += [repr(exchange), exchange.describe()]
    wrong = ApiKeyExchange(server.session_token_url, wrong_key)
    with TokenManager("heygen-bad", wrong, MemoryStore(), retry=FAST) as manager:
        expect(ReauthorizationRequired, manager.token)

    # The scenario really happened, and was logged.
    counters = emulator.counters
    assert counters["refreshes"] >= 7 and counters["api_401"] == 1
    assert counters["refresh_grace_replays"] == 1 and counters["invalid_client"] == 1
    logged = {getattr(r, "event", None) for r in caplog.records}
    for event in (
        "token.requested",
        "token.refreshed",
        "token.expired_answer",
        "request.replayed",
        "refresh.failed",
        "refresh.answer_lost",
        "reauth.required",
        "token.seeded",
    ):
        assert event in logged, event
    assert all(isinstance(exc, TokenwardError) for exc in raised)

    haystack = [caplog.text, *handler.lines, *shown]
    for exc in raised:
        haystack += describe(exc)
    for record in caplog.records:
        haystack.append(record.getMessage())
    text = "\n".join(haystack)

    issued = issued_secrets(emulator)
    assert len(issued) >= 12
    leaked = sorted(s for s in issued | given if s in text)
    assert leaked == [], f"{len(leaked)} secret(s) leaked"


def test_provider_text_that_echoes_secrets_is_scrubbed(
    tokenward_emulator: EmulatorServer,
    caplog: pytest.LogCaptureFixture,
    handler: AllAttributes,
) -> None:
    """A provider that repeats what it was sent in its refusals (the refresh token, the form
    with the client secret, the Basic pair, the API key): none of it reaches an exception, the
    status, the stored record or a log line; each secret is named by its fingerprint instead,
    and the provider's text is cut short."""
    caplog.set_level(logging.DEBUG, logger="tokenward")
    server = tokenward_emulator
    emulator = server.emulator
    emulator.echo_secrets = True
    client_id = "echo-" + secrets.token_hex(4)
    client_secret = "cs-/+" + secrets.token_urlsafe(24)  # encodes differently in a form
    wrong_secret = "cs-wrong-" + secrets.token_urlsafe(24)
    wrong_key = "ak-wrong-" + secrets.token_urlsafe(24)
    emulator.add_client(client_id, client_secret)
    revoked = emulator.issue_refresh_token(client_id)
    emulator.revoke(revoked)
    raised: list[BaseException] = []
    shown: list[str] = []

    # invalid_grant, the form (refresh token and client secret) echoed in the description.
    store = MemoryStore()
    body_auth = RefreshTokenGrant(server.token_url, client_id, client_secret, client_auth="body")
    with TokenManager("echo", body_auth, store, retry=FAST) as manager:
        manager.seed(refresh_token=revoked)
        with pytest.raises(ReauthorizationRequired) as refused:
            manager.refresh()
        raised.append(refused.value)
        shown += [json.dumps(manager.status()), repr(store.load("echo"))]
        last_error = manager.status()["last_error"]
    assert f"[secret {fingerprint(revoked)}]" in str(refused.value)  # scrubbed, not absent
    assert "tokenward login" in str(refused.value)
    assert last_error and f"[secret {fingerprint(revoked)}]" in last_error

    # invalid_request (a form the provider refuses), echoed with the client secret.
    broken = ClientCredentialsGrant(
        server.token_url,
        client_id,
        client_secret,
        client_auth="body",
        extra_params={"grant_type": ""},
    )
    with TokenManager("echo-cc", broken, MemoryStore(), retry=FAST) as manager:
        with pytest.raises(RequestRejected) as rejected:
            manager.token()
        raised.append(rejected.value)
    assert rejected.value.description and len(rejected.value.description) <= MAX_PROVIDER_TEXT
    assert f"[secret {fingerprint(client_secret)}]" in str(rejected.value)

    # invalid_client with HTTP Basic: the Authorization header echoed.
    basic = ClientCredentialsGrant(server.token_url, client_id, wrong_secret)
    with TokenManager("echo-basic", basic, MemoryStore(), retry=FAST) as manager:
        with pytest.raises(ReauthorizationRequired) as basic_refused:
            manager.token()
        raised.append(basic_refused.value)

    # A wrong API key, echoed in HeyGen's `error`: advice about the key, not a login.
    wrong = ApiKeyExchange(server.session_token_url, wrong_key)
    with TokenManager("echo-key", wrong, MemoryStore(), retry=FAST) as manager:
        with pytest.raises(ReauthorizationRequired) as key_refused:
            manager.token()
        raised.append(key_refused.value)
    assert "api_key" in str(key_refused.value) and "tokenward login" not in str(key_refused.value)
    assert f"[secret {fingerprint(wrong_key)}]" in str(key_refused.value)

    haystack = [caplog.text, *handler.lines, *shown]
    for exc in raised:
        haystack += describe(exc)
    text = "\n".join(haystack)
    given = {revoked, client_secret, wrong_secret, wrong_key}
    forms = {f for s in given for f in (s, quote(s, safe=""), quote_plus(s))}
    forms.add(base64.b64encode(f"{client_id}:{wrong_secret}".encode()).decode())
    leaked = sorted(fingerprint(s) for s in forms if s in text)
    assert leaked == [], f"{len(leaked)} secret form(s) leaked"
