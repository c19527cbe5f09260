"""The credential record and its codec: the one thing every store keeps, in one home.

A `Record` is what a store holds for one credential key: the grant (access and refresh token,
expiry, scope, `extra`), its state and bookkeeping (version, refresh count, last error). Every
store writes `Record.to_dict()` and reads back through `record_from_data`, which validates a
decoded document field by field, so a damaged or hand-edited store raises `StoreCorrupted`
naming the field (never its value) instead of handing a wrong credential out; whether the
document lives in a JSON file, a dotenv line, a SQLite row, a Redis hash or a PostgreSQL row.

A record can also tell when its secrets are still sealed (`Record.sealed`): read through a store
opened without its encryption keys, the values are ciphertext that must never be served or sent
to a provider. `SEALED_PREFIX` is the mark `EncryptedStore` puts on every value it seals.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from ..errors import StoreCorrupted, StoreError
from ..token import Grant, Token, fingerprint

__all__ = ["SEALED_PREFIX", "Record", "State", "record_from_data"]

#: How every value sealed by `EncryptedStore` starts (`twenc:v1:<key id>:<ciphertext>`).
SEALED_PREFIX = "twenc:v1:"

State = Literal["ok", "needs_reauth"]


@dataclass(frozen=True, slots=True)
class Record:
    """What a store keeps for one credential. `version` starts at 1 and grows by one per write."""

    key: str
    version: int = 0
    access_token: str | None = field(default=None, repr=False)
    token_type: str = "Bearer"
    expires_at: float | None = None
    refresh_token: str | None = field(default=None, repr=False)
    scope: str | None = None
    obtained_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    state: State = "ok"
    last_error: str | None = None
    refresh_count: int = 0
    updated_at: float = field(default_factory=time.time)

    def successor(self, *, updated_at: float | None = None, **changes: Any) -> Record:
        """The next version of this record, ready for `compare_and_set(next, self.version)`,
        written at `updated_at` (default: now; the refresh protocol passes its own, as it reads
        no clock)."""
        at = time.time() if updated_at is None else updated_at
        return replace(self, version=self.version + 1, updated_at=at, **changes)

    def token(self) -> Token | None:
        """The access token this record holds, as served to callers (no refresh token), or None
        when it holds none."""
        grant = self.grant()
        return None if grant is None else grant.token()

    def grant(self) -> Grant | None:
        """The grant this record holds (the access token with the refresh token), or None when
        it holds no access token. For the refresh protocol and sources, never for callers."""
        if not self.access_token:
            return None
        return Grant(
            self.access_token,
            token_type=self.token_type,
            expires_at=self.expires_at,
            refresh_token=self.refresh_token,
            scope=self.scope,
            obtained_at=self.obtained_at if self.obtained_at is not None else self.updated_at,
            version=self.version,
            extra=dict(self.extra),
        )

    @property
    def sealed(self) -> bool:
        """True when a token of this record is still encrypted: it was read through a store
        opened without its encryption keys, so its secrets are ciphertext."""
        return any(
            value is not None and value.startswith(SEALED_PREFIX)
            for value in (self.access_token, self.refresh_token)
        )

    def ensure_readable(self, location: str) -> None:
        """Refuse a sealed record: sent to the provider as a refresh token, ciphertext would
        earn an `invalid_grant` and cost a login. `location` names the store."""
        if self.sealed:
            raise StoreError(
                f"credential {self.key!r}: the store {location} holds encrypted tokens but "
                "was opened without the encryption keys. Configure `[store] encryption_keys` "
                "(or TOKENWARD_ENCRYPTION_KEY); nothing was sent to the provider."
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (contains secrets: for stores only, never for display). Built
        field by field: `dataclasses.asdict` deep-copies recursively, a cost on every write."""
        data = {name: getattr(self, name) for name in _FIELDS}
        data["extra"] = dict(self.extra)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        """Inverse of `to_dict`; unknown keys are ignored so newer files stay readable."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def describe(self) -> dict[str, Any]:
        """A secret-free summary for status displays and logs."""
        return {
            "key": self.key,
            "version": self.version,
            "state": self.state,
            "token": fingerprint(self.access_token),
            "expires_at": self.expires_at,
            "has_refresh_token": bool(self.refresh_token),
            "refresh_count": self.refresh_count,
            "last_error": self.last_error,
            "updated_at": self.updated_at,
        }

    def __repr__(self) -> str:
        return (
            f"Record(key={self.key!r}, version={self.version}, state={self.state!r}, "
            f"token={fingerprint(self.access_token)!r}, "
            f"refresh_token={fingerprint(self.refresh_token)!r})"
        )


_NONE = type(None)
_NUMBER = (int, float)
#: Record fields and the JSON types each may hold (bool is rejected separately where an int is
#: expected). Fields missing from a document take the Record default, except REQUIRED ones.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "key": (str,),
    "version": (int,),
    "access_token": (str, _NONE),
    "token_type": (str,),
    "expires_at": (*_NUMBER, _NONE),
    "refresh_token": (str, _NONE),
    "scope": (str, _NONE),
    "obtained_at": (*_NUMBER, _NONE),
    "extra": (dict,),
    "state": (str,),
    "last_error": (str, _NONE),
    "refresh_count": (int,),
    "updated_at": _NUMBER,
}
#: The fields `to_dict` writes, in order.
_FIELDS = tuple(f.name for f in fields(Record))
REQUIRED_FIELDS = ("key", "version")
STATES = ("ok", "needs_reauth")


def record_from_data(location: str, data: Any, where: str) -> Record:
    """Validate a decoded record and build it; anything off raises `StoreCorrupted`.

    Messages name fields and types, never values: a value may be a secret.
    """
    if not isinstance(data, dict):
        raise StoreCorrupted(location, f"{where} is a {type(data).__name__}, not an object")
    for name in REQUIRED_FIELDS:
        if name not in data:
            raise StoreCorrupted(location, f"{where} has no {name!r} field")
    for name, value in data.items():
        _check_field(location, where, name, value)
    return Record.from_dict(data)


def _check_field(location: str, where: str, name: str, value: Any) -> None:
    types = FIELD_TYPES.get(name)
    if types is None:
        return  # written by a newer tokenward: ignored, as Record.from_dict does
    wrong_type = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
    if wrong_type:
        raise StoreCorrupted(
            location, f"{where}: field {name!r} is a {type(value).__name__}, not {_names(types)}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise StoreCorrupted(location, f"{where}: field {name!r} is not a finite number")
    if name == "version" and value < 1:
        raise StoreCorrupted(location, f"{where}: field 'version' is {value}, below 1")
    if name == "state" and value not in STATES:
        raise StoreCorrupted(location, f"{where}: field 'state' is not one of {STATES}")


def _names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is _NONE else t.__name__ for t in types)
