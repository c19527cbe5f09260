"""The expiry rule engine: presets, config dicts, JSON paths and GraphQL answers."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest

from tokenward import ExpiryRule
from tokenward.rules import PRESETS

ML_EXPIRED = json.dumps({"message": "invalid_token", "error": "not_found", "status": 401}).encode()
ML_FORBIDDEN = json.dumps(
    {"message": "user not authorized", "error": "unauthorized_request_error", "status": 401}
).encode()
GQL_EXPIRED = json.dumps(
    {"data": None, "errors": [{"message": "x", "extensions": {"code": "UNAUTHENTICATED"}}]}
).encode()
GQL_OTHER = json.dumps({"errors": [{"message": "x", "extensions": {"code": "FORBIDDEN"}}]}).encode()
CHALLENGE = httpx2.Headers({"WWW-Authenticate": 'Bearer error="invalid_token"'})
SCOPE = {"www-authenticate": 'Bearer error="insufficient_scope", scope="admin"'}


def test_default_rule_is_unchanged() -> None:
    rule = ExpiryRule()
    assert rule == ExpiryRule.rfc6750() == ExpiryRule.preset("rfc6750")
    assert rule.matches(401, {})
    assert rule.matches(400, CHALLENGE)
    assert not rule.matches(403, SCOPE)
    assert not rule.matches(401, SCOPE)
    assert not rule.matches(200, {}, GQL_EXPIRED)
    assert not rule.needs_body(401)


def test_mercadolibre_preset_needs_the_invalid_token_body() -> None:
    rule = ExpiryRule.mercadolibre()
    assert rule.needs_body(401) and not rule.needs_body(200)
    assert rule.matches(401, {}, ML_EXPIRED)
    assert not rule.matches(401, {}, ML_FORBIDDEN)
    assert not rule.matches(401, {}, None)
    assert not rule.matches(401, {}, b"<html>")
    assert not rule.matches(500, {}, ML_EXPIRED)


def test_graphql_preset_reads_200_answers_for_unauthenticated() -> None:
    rule = ExpiryRule.graphql()
    assert rule.may_match(200, {}) and rule.needs_body(200)
    assert rule.matches(200, {}, GQL_EXPIRED)
    assert rule.matches(200, {}, json.dumps({"errors": [{"code": "UNAUTHENTICATED"}]}).encode())
    assert not rule.matches(200, {}, GQL_OTHER)
    assert not rule.matches(200, {}, b'{"data": {"ok": true}}')
    assert not rule.matches(200, {}, b'{"errors": "nope"}')
    assert not rule.matches(200, {}, b"not json")
    assert not rule.matches(200, {}, None)
    assert rule.matches(401, {})  # a plain 401 still counts
    custom = ExpiryRule.graphql(codes=["AUTH_EXPIRED"])
    assert custom.matches(200, {}, b'{"errors":[{"extensions":{"code":"AUTH_EXPIRED"}}]}')
    assert not custom.matches(200, {}, GQL_EXPIRED)


def test_may_match_keeps_the_hot_path_cheap() -> None:
    rule = ExpiryRule()
    assert not rule.may_match(200, {})
    assert not rule.may_match(500, {})
    assert rule.may_match(401, {})
    assert rule.may_match(400, CHALLENGE)


def test_json_fields_accept_dotted_paths_and_body_substrings() -> None:
    rule = ExpiryRule(json_fields={"error.code": "token_expired"}, body_contains=("EXPIRED!",))
    assert rule.matches(401, {}, b'{"error": {"code": "token_expired"}}')
    assert rule.matches(401, {}, b"token EXPIRED!")
    assert not rule.matches(401, {}, b'{"error": {"code": "other"}}')
    assert not rule.matches(401, {}, b'["error"]')


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, ExpiryRule()),
        ({"preset": "mercadolibre"}, ExpiryRule.mercadolibre()),
        ({"preset": "graphql"}, ExpiryRule.graphql()),
        (
            {"preset": "graphql", "graphql_codes": ["UNAUTHENTICATED", "AUTH_EXPIRED"]},
            ExpiryRule(graphql_codes=frozenset({"UNAUTHENTICATED", "AUTH_EXPIRED"})),
        ),
        (
            {
                "statuses": [401, 419],
                "www_authenticate_errors": ["invalid_token", "expired_token"],
                "body_contains": ["expired"],
                "json_fields": {"message": "invalid_token"},
                "graphql_statuses": [200, 400],
            },
            ExpiryRule(
                statuses=frozenset({401, 419}),
                www_authenticate_errors=frozenset({"invalid_token", "expired_token"}),
                body_contains=("expired",),
                json_fields={"message": "invalid_token"},
                graphql_statuses=frozenset({200, 400}),
            ),
        ),
    ],
)
def test_from_config(config: dict[str, Any], expected: ExpiryRule) -> None:
    assert ExpiryRule.from_config(config) == expected


@pytest.mark.parametrize(
    "config",
    [
        {"preset": "nope"},
        {"status": [401]},
        {"statuses": 401},
        {"statuses": ["401"]},
        {"statuses": [True]},
        {"body_contains": "expired"},
        {"body_contains": [1]},
        {"json_fields": {"message": 1}},
        {"json_fields": ["message"]},
    ],
)
def test_from_config_refuses_mistakes(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ExpiryRule.from_config(config)


def test_presets_are_listed() -> None:
    assert sorted(PRESETS) == ["graphql", "mercadolibre", "rfc6750"]
    for name in PRESETS:
        assert isinstance(ExpiryRule.preset(name), ExpiryRule)
