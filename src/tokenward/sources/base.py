"""What a source is, and how token endpoint answers are classified.

A source knows how to obtain a token; it never does I/O itself. An `HttpSource` builds an
`HttpRequest` from the previous grant (`PriorGrant`: the stored refresh token and `extra`) and
parses the `HttpResponse` into a `Grant`; a `FunctionSource` wraps user code. The refresh flow
(`tokenward.flow`) runs them through a sync or an async driver, so both kinds of callers share
one implementation.

Every answer falls into one of four classes: a grant; a permanent refusal
(`ReauthorizationRequired`); a transient failure worth retrying (`TransientError`); or a malformed
answer (`MalformedTokenResponse`) naming the field at fault.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    MalformedTokenResponse,
    ReauthorizationRequired,
    RequestRejected,
    TransientError,
)
from ..redact import request_secrets, scrub
from ..token import Grant
from ..transport import HttpRequest, HttpResponse

__all__ = [
    "MAX_EXPIRES_IN",
    "PERMANENT_ERRORS",
    "HttpSource",
    "PriorGrant",
    "Source",
    "check_expires_in",
    "json_body",
    "parse_retry_after",
    "raise_for_error",
]

#: OAuth2 error codes after which retrying the same grant is pointless and harmful.
PERMANENT_ERRORS = frozenset({"invalid_grant", "invalid_client", "unauthorized_client"})

#: Longest `expires_in` we believe (10 years); beyond that the provider sent nonsense.
MAX_EXPIRES_IN = 10 * 365 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class PriorGrant:
    """What a source may build its request from: the credential's stored refresh token and the
    configuration kept beside the grant (`extra`: an MCP client's registration, its token
    endpoint). Its own small type, not the store's record: a source needs no version, lease
    state or bookkeeping, and must not depend on how a store keeps them."""

    key: str
    refresh_token: str | None = field(default=None, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)


class Source:
    """Obtains tokens for one credential.

    `needs_record`: the source can only work from a stored record (a refresh token); without
    one the credential must be seeded first. `rotating`: a successful call may invalidate the
    stored secret (single-use refresh tokens), which makes lost answers dangerous.
    `kept_extra`: entries of the record's `extra` that are configuration stored beside the
    grant (an MCP client's registration, its token endpoint) rather than parts of a token
    answer; a refresh keeps them instead of replacing `extra` with the answer's fields.
    """

    needs_record: bool = False
    rotating: bool = False
    kept_extra: frozenset[str] = frozenset()

    def describe(self) -> str:
        """A secret-free one-line description for status displays."""
        return type(self).__name__


class HttpSource(Source, ABC):
    """A source that talks to a token endpoint over HTTP (sans-I/O)."""

    @abstractmethod
    def build_request(self, prior: PriorGrant | None) -> HttpRequest:
        """The request that obtains a new token, given the previous grant (None: there is no
        stored record yet)."""

    @abstractmethod
    def parse_response(self, response: HttpResponse, credential: str) -> Grant:
        """The grant in `response` (with any refresh token), or a classified error."""

    def rotated_refresh_token(self, response: HttpResponse) -> str | None:
        """A refresh token in an answer `parse_response` refused as malformed. The provider may
        have rotated the old one already, so the flow stores this one before failing."""
        return None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def _describe_body(response: HttpResponse) -> str:
    """What a non-JSON body looks like, without quoting it (it could echo a secret)."""
    kind = response.content_type or "no content type"
    head = response.body.lstrip()[:15].lower()
    if head.startswith((b"<!doctype", b"<html")) or kind == "text/html":
        what = "an HTML page"
    elif not response.body:
        what = "an empty body"
    else:
        what = "a body that is not JSON"
    return f"{what} ({kind}, {len(response.body)} bytes)"


def json_body(response: HttpResponse, credential: str) -> Any:
    """The decoded JSON body, or `MalformedTokenResponse` describing what came instead."""
    try:
        return json.loads(response.body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedTokenResponse(
            credential, "body", f"HTTP {response.status} with {_describe_body(response)}"
        ) from None


def raise_for_error(response: HttpResponse, credential: str, *, advice: str | None = None) -> None:
    """Classify a non-2xx answer (and 2xx answers carrying an OAuth `error`). `advice`: what
    to do about a permanent refusal, when logging in again is not it (an API key)."""
    status = response.status
    if status in (408, 425, 429) or status >= 500:
        raise TransientError(
            f"HTTP {status} from the token endpoint",
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            status=status,
        )
    try:
        payload = json.loads(response.body)
    except (ValueError, UnicodeDecodeError):
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if status < 400 and not isinstance(error, str):
        return
    description = payload.get("error_description") if isinstance(payload, dict) else None
    # The provider's words, minus every secret of the request it answers (some echo them).
    secrets = request_secrets(response.request)
    description = scrub(description, secrets) if isinstance(description, str) else None
    error = scrub(error, secrets, limit=80) if isinstance(error, str) else None
    if error is not None and error in PERMANENT_ERRORS:
        raise ReauthorizationRequired(credential, error, description, advice=advice)
    if status in (401, 403):
        raise ReauthorizationRequired(
            credential, error or f"http_{status}", description, advice=advice
        )
    code = error if error is not None else "an unexpected answer"
    if payload is None:
        code = _describe_body(response)
    raise RequestRejected(credential, status, code, description)


def check_expires_in(value: Any, credential: str, field: str = "expires_in") -> float | None:
    """A sane lifetime in seconds from a provider's `expires_in` (number or numeric string)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise MalformedTokenResponse(credential, field, "not a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        got = type(value).__name__
        raise MalformedTokenResponse(credential, field, f"expected a number, got {got}")
    if value < 0:
        raise MalformedTokenResponse(credential, field, f"negative lifetime ({value})")
    if value > MAX_EXPIRES_IN:
        raise MalformedTokenResponse(credential, field, f"absurd lifetime ({value} seconds)")
    return float(value)
