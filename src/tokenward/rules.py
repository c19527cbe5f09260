"""What an "expired token" answer looks like, per credential.

Providers disagree: RFC 6750 says 401 with `WWW-Authenticate: Bearer error="invalid_token"`;
MercadoLibre sends 401 with `{"message":"invalid_token"}` and no header; some GraphQL APIs send
200 with an `UNAUTHENTICATED` error code. A rule is pure data plus pure functions, so every
integration (httpx, requests, aiohttp, the broker) asks the same question the same way, and a
config file can describe a rule as a plain dict (`ExpiryRule.from_config`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

from .errors import did_you_mean
from .jsonpath import lookup

__all__ = ["PRESETS", "ExpiryRule", "www_authenticate_error"]

_ERROR_PARAM = re.compile(r'error\s*=\s*"?([A-Za-z0-9_\-]+)"?')


class _Headers(Protocol):
    """What the rules read of response headers: a case-insensitive `get` (httpx and requests
    headers, aiohttp's multidict) or a dict with lower-cased names. Positional-only, so that any
    `Mapping[str, str]` matches."""

    def get(self, key: str, /) -> Any: ...


def www_authenticate_error(headers: _Headers) -> str | None:
    """The `error` parameter of a `WWW-Authenticate` challenge, if any.

    `headers` must look names up case-insensitively (httpx, requests and aiohttp headers do)
    or hold lower-case names: one lookup per answer keeps the hot path cheap."""
    value = headers.get("www-authenticate")
    if not value:
        return None
    match = _ERROR_PARAM.search(value)
    return match.group(1) if match else None


def _graphql_codes(payload: Any) -> set[str]:
    """The `errors[].extensions.code` values of a GraphQL answer (plus `errors[].code`, which
    some servers use instead)."""
    errors = payload.get("errors") if isinstance(payload, dict) else None
    if not isinstance(errors, list):
        return set()
    codes: set[str] = set()
    for error in errors:
        if not isinstance(error, dict):
            continue
        extensions = error.get("extensions")
        for holder in (extensions if isinstance(extensions, dict) else {}, error):
            code = holder.get("code")
            if isinstance(code, str):
                codes.add(code)
    return codes


@dataclass(frozen=True, slots=True)
class ExpiryRule:
    """Decides whether an answer means "this access token is no longer accepted".

    By default: any 401, or any answer whose `WWW-Authenticate` says `invalid_token`; never a
    `insufficient_scope` answer (403), which a new token would not fix. With `body_contains` or
    `json_fields`, a status match also needs the body to match one of them (MercadoLibre:
    `json_fields={"message": "invalid_token"}`), so "user not authorized" is not taken for expiry.
    `json_fields` names may be dotted paths (`error.code`). With `graphql_codes`, an answer
    whose status is in `graphql_statuses` (200 by default) and whose `errors[].extensions.code`
    holds one of the codes is an expiry too, whatever `statuses` says.
    """

    statuses: frozenset[int] = frozenset({401})
    www_authenticate_errors: frozenset[str] = frozenset({"invalid_token"})
    body_contains: tuple[str, ...] = ()
    json_fields: Mapping[str, str] = field(default_factory=dict)
    graphql_codes: frozenset[str] = frozenset()
    graphql_statuses: frozenset[int] = frozenset({200})

    # -- constructors ---------------------------------------------------------------------------
    @classmethod
    def rfc6750(cls) -> ExpiryRule:
        """The default: 401, or `WWW-Authenticate: Bearer error="invalid_token"`."""
        return cls()

    @classmethod
    def mercadolibre(cls) -> ExpiryRule:
        """401 with `{"message": "invalid_token"}`; other 401 bodies ("user not authorized")
        are permission problems a new token would not fix."""
        return cls(json_fields={"message": "invalid_token"})

    @classmethod
    def graphql(cls, codes: Iterable[str] = ("UNAUTHENTICATED",)) -> ExpiryRule:
        """Any 401, plus 200 answers carrying an `UNAUTHENTICATED` error code."""
        return cls(graphql_codes=frozenset(codes))

    @classmethod
    def preset(cls, name: str) -> ExpiryRule:
        """A named preset (`rfc6750`, `mercadolibre`, `graphql`)."""
        try:
            return PRESETS[name]()
        except KeyError:
            known = ", ".join(sorted(PRESETS))
            raise ValueError(f"unknown expiry rule preset {name!r} (known: {known})") from None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ExpiryRule:
        """Build a rule from a config table, e.g. `{"preset": "mercadolibre"}` or
        `{"statuses": [401, 419], "body_contains": ["token expired"]}`; keys given next to a
        preset override it. Every field is a key (`graphql_codes` and `graphql_statuses`
        included). Unknown keys and wrongly typed values raise `ValueError`, so a typo in a
        config file fails at load time instead of silently never matching. This is the one
        parser of rules: `tokenward.toml`'s `expiry_rule` tables go through it too."""
        settings = dict(config)
        preset = settings.pop("preset", None)
        if preset is not None and not isinstance(preset, str):
            raise ValueError(f"preset must be one of {', '.join(sorted(PRESETS))}, got {preset!r}")
        base = cls.preset(preset) if preset is not None else cls()
        known = [f.name for f in fields(cls)]
        for key in settings:
            if key not in known:
                names = ", ".join(["preset", *sorted(known)])
                raise ValueError(
                    f"unknown key {key!r}{did_you_mean(key, known)} (known keys: {names})"
                )
        return replace(base, **{name: _CONVERT[name](name, v) for name, v in settings.items()})

    # -- matching -------------------------------------------------------------------------------
    @property
    def inspects_body(self) -> bool:
        """Whether a status match must be confirmed by the body."""
        return bool(self.body_contains or self.json_fields)

    def may_match(self, status: int, headers: _Headers) -> bool:
        """A cheap pre-check on status and headers, so the hot path reads no body."""
        return (
            status in self.statuses
            or (bool(self.graphql_codes) and status in self.graphql_statuses)
            or bool(headers.get("www-authenticate"))
        )

    def needs_body(self, status: int) -> bool:
        """Whether `matches` must see the body of an answer with this status."""
        return (self.inspects_body and status in self.statuses) or (
            bool(self.graphql_codes) and status in self.graphql_statuses
        )

    def matches(self, status: int, headers: _Headers, body: bytes | None = None) -> bool:
        """True when the answer means the token expired or was revoked."""
        error = www_authenticate_error(headers)
        if error == "insufficient_scope":
            return False
        if error is not None and error in self.www_authenticate_errors:
            return True
        if self._graphql_applies(status, body) and self._graphql_matches(body or b""):
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
        payload = _json(text)
        return any(lookup(payload, name) == value for name, value in self.json_fields.items())

    def _graphql_applies(self, status: int, body: bytes | None) -> bool:
        return bool(self.graphql_codes) and status in self.graphql_statuses and body is not None

    def _graphql_matches(self, body: bytes) -> bool:
        return bool(_graphql_codes(_json(body.decode("utf-8", "replace"))) & self.graphql_codes)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


# -- config conversion --------------------------------------------------------------------------
def _ints(name: str, value: Any) -> frozenset[int]:
    if not _is_list(value) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ValueError(f"{name} must be a list of HTTP status codes, e.g. [401], got {value!r}")
    return frozenset(value)


def _strs(name: str, value: Any) -> tuple[str, ...]:
    if not _is_list(value) or not all(isinstance(v, str) for v in value):
        raise ValueError(f'{name} must be a list of strings, e.g. ["expired"], got {value!r}')
    return tuple(value)


def _is_list(value: Any) -> bool:
    return isinstance(value, Iterable) and not isinstance(value, str | bytes | Mapping)


def _str_map(name: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(
            f'{name} must be a table of strings, e.g. {{ message = "invalid_token" }}, '
            f"got {value!r}"
        )
    return dict(value)


_CONVERT: Mapping[str, Callable[[str, Any], Any]] = {
    "statuses": _ints,
    "graphql_statuses": _ints,
    "www_authenticate_errors": lambda n, v: frozenset(_strs(n, v)),
    "graphql_codes": lambda n, v: frozenset(_strs(n, v)),
    "body_contains": _strs,
    "json_fields": _str_map,
}

#: Named presets for `ExpiryRule.preset()` and `{"preset": ...}` in config.
PRESETS: Mapping[str, Callable[[], ExpiryRule]] = {
    "rfc6750": ExpiryRule.rfc6750,
    "mercadolibre": ExpiryRule.mercadolibre,
    "graphql": ExpiryRule.graphql,
}
