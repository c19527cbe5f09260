"""The `Token` value object: an access token, its expiry and where it came from.

A token is immutable. Its `repr` shows a fingerprint (the first hex digits of the SHA-256 of the
access token), never the secret itself, so a token can be logged or shown in a traceback safely.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["Token", "fingerprint", "jwt_expiry"]

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
    refresh_token: str | None = field(default=None, repr=False)
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
    ) -> Token:
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

    def evolve(self, **changes: Any) -> Token:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def __repr__(self) -> str:
        left = self.expires_in()
        expiry = "unknown" if left is None else f"{left:.0f}s"
        return (
            f"Token(fingerprint={self.fingerprint!r}, type={self.token_type!r}, "
            f"expires_in={expiry}, version={self.version}, "
            f"refresh_token={'yes' if self.refresh_token else 'no'})"
        )

    __str__ = __repr__
