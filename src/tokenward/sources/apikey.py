"""API-key exchange: trade a long-lived API key for a short-lived token.

The HeyGen pattern (`POST /v1/streaming.create_token` with `x-api-key`, token at `data.token`),
also used by OpenAI Realtime, Deepgram, AssemblyAI and others. Where the token and its lifetime
sit in the JSON answer is configured with dotted paths.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import MalformedTokenResponse
from ..jsonpath import MISSING, lookup
from ..token import Grant
from ..transport import HttpRequest, HttpResponse
from .base import HttpSource, PriorGrant, check_expires_in, json_body, raise_for_error

__all__ = ["ApiKeyExchange"]


@dataclass(repr=False)
class ApiKeyExchange(HttpSource):
    """POST to `url` with the API key in `header` (prefixed by `prefix`, e.g. "Bearer ")."""

    url: str
    api_key: str
    header: str = "x-api-key"
    prefix: str = ""
    token_path: str = "data.token"
    expires_in_path: str | None = None
    expires_at_path: str | None = None
    #: Lifetime assumed when the answer does not say (HeyGen does not document one).
    default_lifetime: float | None = None
    method: str = "POST"
    json_body: Mapping[str, Any] | None = None
    token_type: str = "Bearer"
    extra_headers: Mapping[str, str] = field(default_factory=dict)

    def build_request(self, prior: PriorGrant | None) -> HttpRequest:
        headers = {"Accept": "application/json", **self.extra_headers}
        headers[self.header] = self.prefix + self.api_key
        body = None
        if self.json_body is not None:
            headers["Content-Type"] = "application/json"
            body = json.dumps(self.json_body).encode()
        return HttpRequest(self.method, self.url, headers, body)

    def parse_response(self, response: HttpResponse, credential: str) -> Grant:
        raise_for_error(
            response,
            credential,
            advice="The provider refused the API key: put a valid key in the credential's "
            "api_key setting (a file:, env: or literal value) and restart.",
        )
        payload = json_body(response, credential)
        token = lookup(payload, self.token_path)
        if token is MISSING or not isinstance(token, str) or not token:
            raise MalformedTokenResponse(credential, self.token_path, "missing or not a string")
        expires_in = None
        if self.expires_in_path:
            value = lookup(payload, self.expires_in_path)
            if value is not MISSING:
                expires_in = check_expires_in(value, credential, self.expires_in_path)
        if expires_in is None and self.expires_at_path:
            value = lookup(payload, self.expires_at_path)
            if value is not MISSING:
                expires_in = self._until(value, response.lifetime_start, credential)
        if expires_in is None:
            expires_in = self.default_lifetime
        return Grant.from_response(
            token,
            expires_in=expires_in,
            received_at=response.lifetime_start,
            token_type=self.token_type,
        )

    def _until(self, value: Any, now: float, credential: str) -> float:
        path = self.expires_at_path or "expires_at"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MalformedTokenResponse(credential, path, "expected a UNIX timestamp")
        if not math.isfinite(value) or value < now - 60:
            raise MalformedTokenResponse(credential, path, "timestamp is in the past")
        return check_expires_in(max(value - now, 0.0), credential, path) or 0.0

    def key_headers(self) -> dict[str, str]:
        """The API key as the provider expects it on its own calls (a session's stop, where
        the provider accepts the key instead of the session token)."""
        return {self.header: self.prefix + self.api_key}

    def describe(self) -> str:
        return f"ApiKeyExchange({self.url}, header={self.header!r})"

    def __repr__(self) -> str:
        return self.describe()
