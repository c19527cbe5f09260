"""Sans-I/O helpers for the interactive grants: authorization code + PKCE (RFC 6749 4.1,
RFC 7636), device authorization (RFC 8628), revocation (RFC 7009) and discovery (RFC 8414,
OpenID Connect Discovery).

They build `HttpRequest`s and parse `HttpResponse`s; the CLI does the I/O (browser, callback
server, polling). Keeping them free of I/O lets them be tested without a network and reused by
any front end (CLI today, the broker later). Client authentication is the same as for the
refresh grant, so they reuse `sources.oauth2`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from ..errors import AuthorizationDenied, MalformedTokenResponse
from ..redact import scrub
from ..token import Grant
from ..transport import HttpRequest, HttpResponse
from .oauth2 import ClientAuth, _OAuth2Client, parse_token_response

__all__ = [
    "DEVICE_GRANT_TYPE",
    "AuthorizationDenied",
    "DeviceAuthorization",
    "OAuthClient",
    "Pkce",
    "authorization_url",
    "discovery_urls",
    "make_client",
    "parse_callback",
    "parse_device_authorization",
    "parse_device_poll",
    "parse_metadata",
]

DEVICE_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"


@dataclass(frozen=True, slots=True)
class Pkce:
    """A PKCE pair (RFC 7636, S256): the verifier stays here, the challenge goes in the URL."""

    verifier: str = field(repr=False)
    challenge: str

    @classmethod
    def new(cls) -> Pkce:
        verifier = secrets.token_urlsafe(64)[:96]
        digest = hashlib.sha256(verifier.encode("ascii")).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
        return cls(verifier, challenge)


def authorization_url(
    authorize_url: str,
    client_id: str,
    redirect_uri: str,
    *,
    state: str,
    pkce: Pkce,
    scope: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> str:
    """The URL a person opens to grant access (response_type=code with an S256 challenge)."""
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "state": state,
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
    }
    if scope:
        params["scope"] = scope
    params.update(extra or {})
    joiner = "&" if "?" in authorize_url else "?"
    return authorize_url + joiner + urlencode(params)


def parse_callback(query: Mapping[str, str], expected_state: str) -> str:
    """The authorization code from the redirect's query, after checking `state` (CSRF)."""
    if query.get("state") != expected_state:
        raise AuthorizationDenied(
            "the login callback carried the wrong state (a stale or forged redirect); "
            "run the login again"
        )
    error = query.get("error")
    if error:
        # The provider's words, cut short and without the state (a secret of this login).
        detail = scrub(query.get("error_description"), [expected_state])
        error = scrub(error, [expected_state], limit=80) or "?"
        raise AuthorizationDenied(
            f"the provider refused the authorization: {error}" + (f" ({detail})" if detail else "")
        )
    code = query.get("code")
    if not code:
        raise AuthorizationDenied("the login callback carried no authorization code")
    return code


@dataclass(frozen=True, slots=True)
class DeviceAuthorization:
    """RFC 8628 section 3.2: what to show the user, and how to poll."""

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float


@dataclass(repr=False)
class OAuthClient(_OAuth2Client):
    """The client side of the interactive endpoints (same client auth as the refresh grant)."""

    device_authorization_url: str | None = None
    revocation_url: str | None = None

    def build_request(self, prior: Any) -> HttpRequest:  # pragma: no cover - not a source
        raise NotImplementedError("OAuthClient is not a refresh source")

    def code_request(self, code: str, redirect_uri: str, pkce: Pkce) -> HttpRequest:
        """Exchange an authorization code (with its PKCE verifier) for tokens."""
        return self._request(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": pkce.verifier,
            }
        )

    def device_request(self, scope: str | None) -> HttpRequest:
        """Start a device authorization (RFC 8628 3.1)."""
        if not self.device_authorization_url:
            raise ValueError("the credential has no device_authorization_url")
        request = self._request({"scope": scope} if scope else {})
        return HttpRequest("POST", self.device_authorization_url, request.headers, request.body)

    def device_poll_request(self, device: DeviceAuthorization) -> HttpRequest:
        """Ask whether the user approved yet (RFC 8628 3.4)."""
        return self._request({"grant_type": DEVICE_GRANT_TYPE, "device_code": device.device_code})

    def revocation_request(self, token: str, hint: str) -> HttpRequest:
        """Revoke `token` (RFC 7009 2.1); `hint` is refresh_token or access_token."""
        if not self.revocation_url:
            raise ValueError("the credential has no revocation_url")
        request = self._request({"token": token, "token_type_hint": hint})
        return HttpRequest("POST", self.revocation_url, request.headers, request.body)


def make_client(
    token_url: str,
    client_id: str,
    client_secret: str | None,
    client_auth: ClientAuth,
    *,
    device_authorization_url: str | None = None,
    revocation_url: str | None = None,
) -> OAuthClient:
    """An `OAuthClient` (a plain constructor, so callers need not know the dataclass order)."""
    return OAuthClient(
        token_url=token_url,
        client_id=client_id,
        client_secret=client_secret,
        client_auth=client_auth,
        device_authorization_url=device_authorization_url,
        revocation_url=revocation_url,
    )


def _json_object(response: HttpResponse, what: str) -> dict[str, Any]:
    try:
        payload = json.loads(response.body)
    except (ValueError, UnicodeDecodeError):
        payload = None
    if not isinstance(payload, dict):
        raise MalformedTokenResponse(what, "body", f"HTTP {response.status}: not a JSON object")
    return payload


def parse_device_authorization(response: HttpResponse, credential: str) -> DeviceAuthorization:
    """The device authorization answer, or a classified error."""
    if response.status >= 400:
        parse_token_response(response, credential)  # raises the classified error
    payload = _json_object(response, credential)
    for name in ("device_code", "user_code", "verification_uri"):
        if not isinstance(payload.get(name), str) or not payload[name]:
            raise MalformedTokenResponse(credential, name, "missing or not a string")
    complete = payload.get("verification_uri_complete")
    return DeviceAuthorization(
        device_code=payload["device_code"],
        user_code=payload["user_code"],
        verification_uri=payload["verification_uri"],
        verification_uri_complete=complete if isinstance(complete, str) else None,
        expires_in=float(payload.get("expires_in") or 600),
        interval=float(payload.get("interval") or 5),
    )


def parse_device_poll(response: HttpResponse, credential: str) -> Grant | str:
    """A grant once approved; "pending" or "slow_down" while waiting (RFC 8628 3.5)."""
    if response.status == 400:
        payload = _json_object(response, credential)
        error = payload.get("error")
        if error in ("authorization_pending", "slow_down"):
            return str(error)
        if error in ("access_denied", "expired_token"):
            raise AuthorizationDenied(
                "the device login was denied"
                if error == "access_denied"
                else "the device code expired before it was approved; run the login again"
            )
    return parse_token_response(response, credential)


def discovery_urls(issuer: str) -> list[str]:
    """Where an issuer's metadata may live: RFC 8414 first, then OpenID Connect Discovery.

    RFC 8414 inserts the well-known segment between host and path; OpenID appends it.
    """
    parts = urlsplit(issuer.rstrip("/"))
    path = parts.path
    oauth = urlunsplit(
        (parts.scheme, parts.netloc, "/.well-known/oauth-authorization-server" + path, "", "")
    )
    openid = urlunsplit(
        (parts.scheme, parts.netloc, path + "/.well-known/openid-configuration", "", "")
    )
    return [oauth, openid]


#: Metadata field -> credential setting it fills.
METADATA_FIELDS = {
    "token_endpoint": "token_url",
    "authorization_endpoint": "authorize_url",
    "device_authorization_endpoint": "device_authorization_url",
    "revocation_endpoint": "revocation_url",
}


def parse_metadata(response: HttpResponse, url: str) -> dict[str, str] | None:
    """Endpoint settings from an authorization server's metadata; None when not found there."""
    if response.status != 200:
        return None
    payload = _json_object(response, url)
    if not isinstance(payload.get("token_endpoint"), str):
        raise MalformedTokenResponse(url, "token_endpoint", "missing from the metadata")
    return {
        setting: payload[name]
        for name, setting in METADATA_FIELDS.items()
        if isinstance(payload.get(name), str)
    }
