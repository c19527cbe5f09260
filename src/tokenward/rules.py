"""What an "expired token" answer looks like, per credential.

Providers disagree: RFC 6750 says 401 with `WWW-Authenticate: Bearer error="invalid_token"`;
MercadoLibre sends 401 with `{"message":"invalid_token"}` and no header; some GraphQL APIs send
200 with an `UNAUTHENTICATED` error code. A rule is pure data plus one pure function, so every
integration (and the broker) asks the same question the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["ExpiryRule", "www_authenticate_error"]

_ERROR_PARAM = re.compile(r'error\s*=\s*"?([A-Za-z0-9_\-]+)"?')


class _Headers(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...


def www_authenticate_error(headers: _Headers) -> str | None:
    """The `error` parameter of a `WWW-Authenticate` challenge, if any."""
    value = headers.get("www-authenticate") or headers.get("WWW-Authenticate")
    if not value:
        return None
    match = _ERROR_PARAM.search(value)
    return match.group(1) if match else None


@dataclass(frozen=True, slots=True)
class ExpiryRule:
    """Decides whether an answer means "this access token is no longer accepted".

    By default: any 401, or any answer whose `WWW-Authenticate` says `invalid_token`; never a
    `insufficient_scope` answer (403), which a new token would not fix. With `body_contains` or
    `json_fields`, a status match also needs the body to match one of them (MercadoLibre:
    `json_fields={"message": "invalid_token"}`), so "user not authorized" is not taken for expiry.
    """

    statuses: frozenset[int] = frozenset({401})
    www_authenticate_errors: frozenset[str] = frozenset({"invalid_token"})
    body_contains: tuple[str, ...] = ()
    json_fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def inspects_body(self) -> bool:
        return bool(self.body_contains or self.json_fields)

    def needs_body(self, status: int) -> bool:
        """Whether `matches` must see the body of an answer with this status."""
        return self.inspects_body and status in self.statuses

    def matches(self, status: int, headers: _Headers, body: bytes | None = None) -> bool:
        """True when the answer means the token expired or was revoked."""
        error = www_authenticate_error(headers)
        if error == "insufficient_scope":
            return False
        if error is not None and error in self.www_authenticate_errors:
            return True
        if status not in self.statuses:
            return False
        if not self.inspects_body:
            return True
        return body is not None and self._body_matches(body)

    def _body_matches(self, body: bytes) -> bool:
        text = body.decode("utf-8", "replace")
        if any(needle in text for needle in self.body_contains):
            return True
        if not self.json_fields:
            return False
        try:
            payload = json.loads(text)
        except ValueError:
            return False
        return isinstance(payload, dict) and any(
            payload.get(name) == value for name, value in self.json_fields.items()
        )
