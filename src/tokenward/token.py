"""The `Token` value object (an access token, its expiry and where it came from) and the `Grant`.

A token is immutable. Its `repr` shows a fingerprint (the first hex digits of the SHA-256 of the
access token), never the secret itself, so a token can be logged or shown in a traceback safely.

Why two types: a `Grant` is what the provider answered, a token plus the refresh token that
obtains the next one. Only sources, the refresh protocol and the stores handle grants; what
callers are served (`TokenManager.token()`, `TokenAuth`, the broker) is a `Token`, which has no
refresh token at all, so no caller can leak or spend it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, Self

__all__ = ["Grant", "Token", "fingerprint", "jwt_expiry"]

FINGERPRINT_LENGTH = 12


def fingerprint(secret: str | None) -> str:
    """A short, stable, non-reversible name for a secret (first hex digits of its SHA-256)."""
    if not secret:
        return "-"
    return hashlib.sha256(secret.encode()).hexdigest()[:FINGERPRINT_LENGTH]


def jwt_expiry(value: str) -> float | None:
    """The `exp` claim of a JWT (as a UNIX time), or None when `value` is not a JWT with one.

    The signature is not checked: the expiry is only a hint for when to refresh, and the
    provider remains the judge of validity.
    """
    parts = value.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        return None
    return float(exp)


@dataclass(frozen=True, slots=True)
class Token:
    """An access token as served to callers.

    `version` is the store record version the token belongs to: it lets `invalidate()` tell an
    old token (someone already refreshed) from the current one (refresh needed).
    """

    access_token: str = field(repr=False)
    token_type: str = "Bearer"
    expires_at: float | None = None
    scope: str | None = None
    obtained_at: float = field(default_factory=time.time)
    version: int = 0
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _authorization: str = field(init=False, repr=False, compare=False, default="")

    @classmethod
    def from_response(
        cls,
        access_token: str,
        *,
        expires_in: float | None = None,
        received_at: float | None = None,
        **fields: Any,
    ) -> Self:
        """Build a token whose expiry comes from `expires_in` (relative to `received_at`),
        else from the JWT `exp` claim of the access token, else stays unknown."""
        received = time.time() if received_at is None else received_at
        if expires_in is not None:
            expires_at: float | None = received + expires_in
        else:
            expires_at = jwt_expiry(access_token)
        return cls(access_token, expires_at=expires_at, obtained_at=received, **fields)

    @property
    def fingerprint(self) -> str:
        """Short hash naming the access token in logs and errors."""
        return fingerprint(self.access_token)

    @property
    def lifetime(self) -> float | None:
        """Seconds between receipt and expiry, when the expiry is known."""
        if self.expires_at is None:
            return None
        return self.expires_at - self.obtained_at

    def expires_in(self, now: float | None = None) -> float | None:
        """Seconds left before expiry (negative once expired), or None when unknown."""
        if self.expires_at is None:
            return None
        return self.expires_at - (time.time() if now is None else now)

    def is_expired(self, now: float | None = None, leeway: float = 0.0) -> bool:
        """True once the token is past its expiry (minus `leeway` seconds)."""
        left = self.expires_in(now)
        return left is not None and left <= leeway

    @property
    def authorization(self) -> str:
        """The value for an `Authorization` header: `Bearer <token>`.

        The type is normalized to `Bearer` when the provider says `bearer` (MercadoLibre does).
        Built once per token: it is read on every request.
        """
        return self._authorization

    def __post_init__(self) -> None:
        kind = "Bearer" if self.token_type.lower() == "bearer" else self.token_type
        object.__setattr__(self, "_authorization", f"{kind} {self.access_token}")

    def evolve(self, **changes: Any) -> Self:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def __repr__(self) -> str:
        left = self.expires_in()
        expiry = "unknown" if left is None else f"{left:.0f}s"
        return (
            f"Token(fingerprint={self.fingerprint!r}, type={self.token_type!r}, "
            f"expires_in={expiry}, version={self.version})"
        )

    __str__ = __repr__


@dataclass(frozen=True, slots=True, repr=False)
class Grant(Token):
    """What the provider granted: a token plus, for refreshable credentials, the refresh token
    that obtains the next one. Sources return grants, the refresh protocol stores them; callers
    are served `grant.token()`, never the grant. A function source receives the current grant
    (it may run its own refresh); as it is a `Token` too, a function written for tokens works."""

    refresh_token: str | None = field(default=None, repr=False, kw_only=True)

    @classmethod
    def of(cls, token: Token, refresh_token: str | None = None) -> Grant:
        """`token` as a grant carrying `refresh_token` (a grant already is one: as it is)."""
        if isinstance(token, Grant) and refresh_token is None:
            return token
        return cls(**_copied(token, Token), refresh_token=refresh_token)

    def token(self) -> Token:
        """The token to serve: this grant without its refresh token."""
        return Token(**_copied(self, Token))

    def __repr__(self) -> str:
        served = Token.__repr__(self).removeprefix("Token(").removesuffix(")")
        return f"Grant({served}, refresh_token={'yes' if self.refresh_token else 'no'})"

    __str__ = __repr__


def _copied(token: Token, kind: type[Token]) -> dict[str, Any]:
    """The constructor arguments of `kind` taken from `token` (`extra` copied, not shared)."""
    values = {f.name: getattr(token, f.name) for f in fields(kind) if f.init}
    values["extra"] = dict(token.extra)
    return values
