"""OAuth 2.0 token endpoint grants (RFC 6749): `refresh_token` and `client_credentials`.

Both share the client authentication (HTTP Basic, or `client_id`/`client_secret` in the form
body as MercadoLibre wants) and the parsing of a standard token response.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, urlencode

from ..errors import CredentialNotSeeded, MalformedTokenResponse
from ..token import Grant
from ..transport import HttpRequest, HttpResponse
from .base import HttpSource, PriorGrant, check_expires_in, json_body, raise_for_error

__all__ = ["ClientAuth", "ClientCredentialsGrant", "RefreshTokenGrant", "parse_token_response"]

ClientAuth = Literal["basic", "body", "none"]

# Response fields that are secrets or already modelled; everything else lands in Grant.extra.
_KNOWN = {"access_token", "token_type", "expires_in", "refresh_token", "scope"}


def parse_token_response(response: HttpResponse, credential: str) -> Grant:
    """A `Grant` from an RFC 6749 section 5.1 answer, or a classified error."""
    raise_for_error(response, credential)
    payload = json_body(response, credential)
    if not isinstance(payload, dict):
        raise MalformedTokenResponse(credential, "body", "expected a JSON object")
    access = payload.get("access_token")
    if not isinstance(access, str) or not access.strip():
        raise MalformedTokenResponse(credential, "access_token", "missing or empty")
    token_type = payload.get("token_type", "Bearer")
    if not isinstance(token_type, str) or not token_type:
        raise MalformedTokenResponse(credential, "token_type", "expected a non-empty string")
    refresh = payload.get("refresh_token")
    if refresh is not None and (not isinstance(refresh, str) or not refresh):
        raise MalformedTokenResponse(credential, "refresh_token", "expected a non-empty string")
    scope = payload.get("scope")
    return Grant.from_response(
        access.strip(),
        expires_in=check_expires_in(payload.get("expires_in"), credential),
        received_at=response.lifetime_start,
        token_type=token_type,
        refresh_token=refresh,
        scope=scope if isinstance(scope, str) else None,
        extra={k: v for k, v in payload.items() if k not in _KNOWN},
    )


@dataclass(repr=False)
class _OAuth2Client(HttpSource):
    token_url: str
    client_id: str
    client_secret: str | None = None
    client_auth: ClientAuth = "basic"
    extra_params: Mapping[str, str] = field(default_factory=dict)
    extra_headers: Mapping[str, str] = field(default_factory=dict)

    def _request(self, params: dict[str, str]) -> HttpRequest:
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
            **self.extra_headers,
        }
        form = {**params, **self.extra_params}
        if self.client_auth == "basic" and self.client_secret is not None:
            # RFC 6749 section 2.3.1: form-encode both parts before joining them.
            pair = f"{quote(self.client_id, safe='')}:{quote(self.client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = self.client_id
            if self.client_auth == "body" and self.client_secret is not None:
                form["client_secret"] = self.client_secret
        return HttpRequest("POST", self.token_url, headers, urlencode(form).encode())

    def parse_response(self, response: HttpResponse, credential: str) -> Grant:
        return parse_token_response(response, credential)

    def rotated_refresh_token(self, response: HttpResponse) -> str | None:
        try:
            payload = json.loads(response.body)
        except (ValueError, UnicodeDecodeError):
            return None
        refresh = payload.get("refresh_token") if isinstance(payload, dict) else None
        return refresh if isinstance(refresh, str) and refresh else None

    def describe(self) -> str:
        return f"{type(self).__name__}({self.token_url}, client_id={self.client_id!r})"

    def __repr__(self) -> str:
        return self.describe()


@dataclass(repr=False)
class RefreshTokenGrant(_OAuth2Client):
    """`grant_type=refresh_token`. With `rotating=True` (the safe default) every refresh may
    return a new refresh token that replaces the old one; an answer without one keeps the old."""

    scope: str | None = None
    rotating: bool = True
    needs_record = True

    def build_request(self, prior: PriorGrant | None) -> HttpRequest:
        if prior is None or not prior.refresh_token:
            raise CredentialNotSeeded(prior.key if prior else "?")
        params = {"grant_type": "refresh_token", "refresh_token": prior.refresh_token}
        if self.scope:
            params["scope"] = self.scope
        return self._request(params)


@dataclass(repr=False)
class ClientCredentialsGrant(_OAuth2Client):
    """`grant_type=client_credentials`; scope, audience and extra params are sent every time."""

    scope: str | None = None
    audience: str | None = None

    def build_request(self, prior: PriorGrant | None) -> HttpRequest:
        params = {"grant_type": "client_credentials"}
        if self.scope:
            params["scope"] = self.scope
        if self.audience:
            params["audience"] = self.audience
        return self._request(params)
