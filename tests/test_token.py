"""The `Token` and `Grant` value objects: expiry sources, fingerprint, redaction, header value,
and that a served token carries no refresh token."""

from __future__ import annotations

import base64
import hashlib
import json
import time

import pytest

from tokenward.token import Grant, Token, fingerprint, jwt_expiry

ACCESS = "APP_USR-8f3k2-very-secret-access"
REFRESH = "TG-61c0ffee-very-secret-refresh"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(claims: object, header: object | None = None) -> str:
    head = b64url(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    return f"{head}.{body}.{b64url(b'not-a-real-signature')}"


# -- expiry ---------------------------------------------------------------------------------
def test_expiry_from_expires_in_is_relative_to_receipt() -> None:
    token = Token.from_response(ACCESS, expires_in=21600, received_at=1_000_000.0)
    assert token.expires_at == 1_021_600.0
    assert token.obtained_at == 1_000_000.0
    assert token.lifetime == 21600
    assert token.expires_in(now=1_000_600.0) == 21000
    assert not token.is_expired(now=1_021_599.0)
    assert token.is_expired(now=1_021_600.0)
    assert token.is_expired(now=1_021_590.0, leeway=30)


def test_expires_in_wins_over_jwt_exp() -> None:
    jwt = make_jwt({"sub": "u", "exp": 5_000_000})
    token = Token.from_response(jwt, expires_in=60, received_at=1_000.0)
    assert token.expires_at == 1_060.0


def test_expiry_from_jwt_exp() -> None:
    exp = int(time.time()) + 900
    jwt = make_jwt({"sub": "user-1", "exp": exp, "scope": "read"})
    token = Token.from_response(jwt)
    assert token.expires_at == float(exp)
    assert jwt_expiry(jwt) == float(exp)
    left = token.expires_in()
    assert left is not None and 890 < left <= 900


def test_jwt_exp_with_padding_sensitive_payload() -> None:
    # Payload lengths that need 1 and 2 characters of base64 padding both decode.
    for sub in ("a", "ab", "abc", "abcd"):
        jwt = make_jwt({"sub": sub, "exp": 1_700_000_000.5})
        assert jwt_expiry(jwt) == 1_700_000_000.5


@pytest.mark.parametrize(
    "value",
    [
        "opaque-token-without-dots",
        "two.parts",
        "a.b.c.d",
        "header.!!!not-base64!!!.sig",
        "header." + b64url(b"not json") + ".sig",
        make_jwt({"sub": "no exp"}),
        make_jwt({"exp": "1700000000"}),  # a string is not a NumericDate
        make_jwt({"exp": True}),
        make_jwt(["exp", 1]),
    ],
)
def test_unknown_expiry(value: str) -> None:
    assert jwt_expiry(value) is None
    token = Token.from_response(value)
    assert token.expires_at is None
    assert token.lifetime is None
    assert token.expires_in() is None
    assert not token.is_expired(leeway=1e9)


# -- fingerprint and redaction --------------------------------------------------------------
def test_fingerprint_is_a_short_sha256_prefix() -> None:
    token = Token(ACCESS)
    expected = hashlib.sha256(ACCESS.encode()).hexdigest()[:12]
    assert token.fingerprint == expected == fingerprint(ACCESS)
    assert Token(ACCESS + "x").fingerprint != expected
    assert fingerprint(None) == fingerprint("") == "-"


@pytest.mark.parametrize("expires_in", [None, 3600])
def test_repr_and_str_never_show_secrets(expires_in: float | None) -> None:
    grant = Grant.from_response(
        ACCESS,
        expires_in=expires_in,
        refresh_token=REFRESH,
        scope="offline_access read",
        extra={"id_token": "eyJ-secret-id-token"},
        version=7,
    )
    for shown in (grant, grant.token()):
        for text in (repr(shown), str(shown), f"{shown}", f"{shown!r}", repr([shown])):
            assert ACCESS not in text
            assert REFRESH not in text
            assert "eyJ-secret-id-token" not in text
            assert grant.fingerprint in text
            assert "version=7" in text
    assert "refresh_token=yes" in repr(grant)
    assert "refresh_token" not in repr(grant.token())


def test_a_served_token_has_no_refresh_token() -> None:
    """The grant keeps the refresh token; the token made from it, for callers, has none."""
    grant = Grant(ACCESS, expires_at=123.0, refresh_token=REFRESH, scope="s", version=4)
    token = grant.token()
    assert type(token) is Token and not hasattr(token, "refresh_token")
    assert (token.access_token, token.expires_at, token.scope, token.version) == (
        ACCESS,
        123.0,
        "s",
        4,
    )
    assert token.authorization == grant.authorization == f"Bearer {ACCESS}"
    with pytest.raises(TypeError):
        Token(ACCESS, refresh_token=REFRESH)  # type: ignore[call-arg]
    assert Grant.of(token, REFRESH).refresh_token == REFRESH
    assert Grant.of(grant) is grant


def test_evolve_keeps_redaction_and_changes_fields() -> None:
    token = Grant(ACCESS, refresh_token=REFRESH, version=1)
    newer = token.evolve(version=2)
    assert newer.version == 2 and newer.access_token == ACCESS and newer.refresh_token == REFRESH
    assert ACCESS not in repr(newer) and REFRESH not in repr(newer)


# -- Authorization header -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bearer", "Bearer", "BEARER", "bEaReR"])
def test_authorization_normalizes_bearer(kind: str) -> None:
    assert Token(ACCESS, token_type=kind).authorization == f"Bearer {ACCESS}"


def test_authorization_keeps_other_schemes() -> None:
    assert Token(ACCESS, token_type="DPoP").authorization == f"DPoP {ACCESS}"
