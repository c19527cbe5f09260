"""`ExpiryRule`: which answers mean "this access token is no longer accepted"."""

from __future__ import annotations

import json

import httpx2
import pytest

from tokenward.rules import ExpiryRule, www_authenticate_error

NO_HEADERS = httpx2.Headers()
INVALID_TOKEN = httpx2.Headers({"WWW-Authenticate": 'Bearer error="invalid_token"'})
INSUFFICIENT_SCOPE = httpx2.Headers(
    {"WWW-Authenticate": 'Bearer realm="api", error="insufficient_scope", scope="admin"'}
)
ML = ExpiryRule(json_fields={"message": "invalid_token"})


def body(payload: object) -> bytes:
    return json.dumps(payload).encode()


# -- WWW-Authenticate parsing ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('Bearer error="invalid_token"', "invalid_token"),
        ("Bearer error=invalid_token", "invalid_token"),
        ('Bearer realm="example", error = "invalid_token"', "invalid_token"),
        (
            'Bearer error_description="The access token expired", error="invalid_token"',
            "invalid_token",
        ),
        ('Bearer error="insufficient_scope", scope="admin"', "insufficient_scope"),
        ('Bearer realm="example"', None),
        ('Basic realm="emulator"', None),
    ],
)
def test_www_authenticate_error(value: str, expected: str | None) -> None:
    assert www_authenticate_error(httpx2.Headers({"WWW-Authenticate": value})) == expected
    # Plain dicts with lower-cased names (what the transport layer builds) work too.
    assert www_authenticate_error({"www-authenticate": value}) == expected


def test_no_www_authenticate_header() -> None:
    assert www_authenticate_error(NO_HEADERS) is None
    assert www_authenticate_error({}) is None


# -- the default rule -----------------------------------------------------------------------
def test_default_rule_any_401_is_expiry() -> None:
    rule = ExpiryRule()
    assert rule.matches(401, NO_HEADERS)
    assert rule.matches(401, NO_HEADERS, body({"message": "whatever"}))
    assert rule.matches(401, INVALID_TOKEN)
    # It never needs the body, so integrations need not read it.
    assert not rule.inspects_body
    assert not rule.needs_body(401)


@pytest.mark.parametrize("status", [200, 400, 403, 404, 500])
def test_default_rule_invalid_token_header_on_any_status(status: int) -> None:
    assert ExpiryRule().matches(status, INVALID_TOKEN)


@pytest.mark.parametrize("status", [200, 400, 403, 404, 429, 500, 503])
def test_default_rule_other_statuses_without_header_are_not_expiry(status: int) -> None:
    assert not ExpiryRule().matches(status, NO_HEADERS, body({"message": "invalid_token"}))


@pytest.mark.parametrize("status", [401, 403])
def test_insufficient_scope_is_never_expiry(status: int) -> None:
    # RFC 6750 3.1: a new token would not fix a missing scope, so never refresh on it,
    # not even with a 401 or with a body that a body rule would otherwise accept.
    assert not ExpiryRule().matches(status, INSUFFICIENT_SCOPE)
    assert not ML.matches(status, INSUFFICIENT_SCOPE, body({"message": "invalid_token"}))


# -- MercadoLibre: the body decides ---------------------------------------------------------
@pytest.mark.parametrize(
    "payload",
    [
        {"message": "invalid_token"},
        {"message": "invalid_token", "error": "not_found", "status": 401, "cause": []},
    ],
)
def test_mercadolibre_invalid_token_body_is_expiry(payload: object) -> None:
    assert ML.needs_body(401)
    assert ML.matches(401, NO_HEADERS, body(payload))


def test_mercadolibre_user_not_authorized_is_not_expiry() -> None:
    payload = {
        "message": "user not authorized",
        "error": "unauthorized_request_error",
        "status": 401,
        "cause": [],
    }
    assert not ML.matches(401, NO_HEADERS, body(payload))


@pytest.mark.parametrize(
    "raw",
    [
        None,  # body not read
        b"",
        b"<html>401 Unauthorized</html>",
        b'["invalid_token"]',  # JSON, but not an object
        b'{"message": "INVALID_TOKEN"}',  # values match exactly
        b'{"error": "invalid_token"}',  # the configured field is `message`
    ],
)
def test_mercadolibre_rule_needs_the_configured_field(raw: bytes | None) -> None:
    assert not ML.matches(401, NO_HEADERS, raw)


def test_body_rule_only_applies_to_its_statuses() -> None:
    assert not ML.needs_body(403)
    assert not ML.needs_body(200)
    assert not ML.matches(403, NO_HEADERS, body({"message": "invalid_token"}))
    # A standard header still counts, whatever the body says.
    assert ML.matches(401, INVALID_TOKEN, body({"message": "user not authorized"}))


def test_body_contains_rule() -> None:
    rule = ExpiryRule(statuses=frozenset({200, 401}), body_contains=("UNAUTHENTICATED",))
    graphql = body({"errors": [{"extensions": {"code": "UNAUTHENTICATED"}}]})
    assert rule.matches(200, NO_HEADERS, graphql)
    assert not rule.matches(200, NO_HEADERS, body({"data": {"ok": True}}))
    assert not rule.matches(500, NO_HEADERS, graphql)


def test_rule_is_frozen() -> None:
    # Frozen: one rule can be shared by every integration without copying.
    rule = ExpiryRule()
    with pytest.raises(AttributeError):
        rule.statuses = frozenset({403})  # type: ignore[misc]
