"""Encryption at rest for any store: a wrapper that encrypts the secrets of each record.

Why a wrapper: every store (memory, JSON, dotenv, SQLite, Redis, PostgreSQL, and any store
registered later) gets encryption from one implementation, reviewed once. Only the secrets are
encrypted: `access_token`, `refresh_token` and the string values of `extra` entries whose name
looks secret (`id_token`, `*_token`, `*secret*`, `*password*`). Versions, expiry, state and
leases stay clear, so compare-and-set, leases, `tokenward status` and the due-queue of network
stores work unchanged, and the wrapper needs nothing from the store it wraps.

Each value is sealed with AES-GCM (`cryptography`'s `AESGCM`, a 256-bit key, a fresh random
96-bit nonce per value) and stored as `twenc:v1:<key id>:<base64url(nonce + ciphertext)>`. The
associated data is the record key and the field name, so a ciphertext copied to another
record or field fails to open instead of handing out the wrong credential. A record written by
this wrapper also carries the marker `extra["_tokenward_encrypted"] = "v1"`: in such a record a
plaintext secret is an error (someone edited the store), while a record without the marker is
a plaintext record from before encryption was turned on, read as is and encrypted on its next
write (or by `tokenward rekey`).

Keys rotate: a `Keyring` holds several keys, writes with the first and reads with any. A key's
id is the first 8 hex digits of the SHA-256 of its bytes: derived, never configured, so two keys
can never be given the same id by mistake, and the id names a key without revealing it.

A value that cannot be opened raises `StoreDecryptionError` (a `StoreCorrupted`) naming the
store, the record, the field, the key id and the fix, never the value: the manager surfaces it
from `token()` at once (a store error is not retried as a transient provider error).

The module is longer than most (about 540 lines): it wraps the whole store contract, sync and
async and the compound operations, beside the keyring and `rekey`; each wrapper is a line or two.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from ..errors import StoreCorrupted, StoreError
from .base import Begun, Claim, InFlightMark, Record, Store
from .record import SEALED_PREFIX as PREFIX

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "ENCRYPTION_KEY_ENV",
    "MARKER",
    "EncryptedStore",
    "Keyring",
    "RekeyReport",
    "StoreDecryptionError",
    "encrypt_store",
    "generate_key",
    "is_secret_extra",
    "keyring_from_env",
]

#: Environment variable with the encryption keys (comma-separated, newest first) used when the
#: configuration names none.
ENCRYPTION_KEY_ENV = "TOKENWARD_ENCRYPTION_KEY"
#: `extra` entry marking a record whose secrets are all encrypted.
MARKER = "_tokenward_encrypted"
_NONCE = 12
_KEY_BYTES = 32
_HINT = "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"

Reason = Literal["unknown_key", "tampered", "plaintext"]


def generate_key() -> str:
    """A new random 256-bit key, base64url-encoded (43 characters)."""
    return secrets.token_urlsafe(_KEY_BYTES)


def key_id(key: bytes) -> str:
    """The public name of a key: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:8]


def parse_key(text: str, name: str = "encryption key") -> bytes:
    """A 256-bit key from 64 hex digits or base64 / base64url (padding optional).

    `name` says where the key came from (a reference such as `env:TOKENWARD_KEY`); the error
    never shows the text itself.
    """
    text = text.strip()
    if len(text) == 2 * _KEY_BYTES:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    try:
        padded = text.replace("+", "-").replace("/", "_") + "=" * (-len(text) % 4)
        raw = base64.urlsafe_b64decode(padded.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raw = b""
    if len(raw) != _KEY_BYTES:
        raise ValueError(
            f"{name} is not a 256-bit key (expected 64 hex digits or 43-44 base64 characters, "
            f"got {len(text)} characters); {_HINT}"
        )
    return raw


def _aesgcm(key: bytes) -> AESGCM:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:  # the `crypto` extra is optional
        raise StoreError(
            "encryption at rest needs the `cryptography` package: pip install 'tokenward[crypto]'"
        ) from None
    return AESGCM(key)


class Keyring:
    """Encryption keys by id: the first encrypts, every one decrypts (so keys can rotate).

    `keys` are raw 32-byte keys or their hex / base64 text. To rotate, put the new key first
    and keep the old one after it until `tokenward rekey` has re-encrypted every record.
    """

    def __init__(self, keys: Iterable[bytes | str], names: Sequence[str] | None = None) -> None:
        self._ciphers: dict[str, AESGCM] = {}
        for index, key in enumerate(keys):
            name = names[index] if names is not None else f"encryption key #{index + 1}"
            raw = parse_key(key, name) if isinstance(key, str) else key
            if len(raw) != _KEY_BYTES:
                raise ValueError(f"{name} is not a 256-bit key; {_HINT}")
            self._ciphers.setdefault(key_id(raw), _aesgcm(raw))
        if not self._ciphers:
            raise ValueError(f"a keyring needs at least one key; {_HINT}")
        self.ids: tuple[str, ...] = tuple(self._ciphers)

    @property
    def current(self) -> str:
        """The id of the key new values are encrypted with."""
        return self.ids[0]

    def encrypt(self, plaintext: str, aad: bytes) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._ciphers[self.current].encrypt(nonce, plaintext.encode("utf-8"), aad)
        body = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")
        return f"{PREFIX}{self.current}:{body}"

    def decrypt(self, kid: str, body: str, aad: bytes) -> str | None:
        """The plaintext, or None when the value does not authenticate. KeyError: unknown id."""
        from cryptography.exceptions import InvalidTag

        cipher = self._ciphers[kid]
        try:
            blob = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            if len(blob) < _NONCE + 16:
                return None
            return cipher.decrypt(blob[:_NONCE], blob[_NONCE:], aad).decode("utf-8")
        except (InvalidTag, binascii.Error, ValueError):
            return None

    def __repr__(self) -> str:
        return f"Keyring(ids={list(self.ids)!r})"


def keyring_from_env(variable: str = ENCRYPTION_KEY_ENV) -> Keyring | None:
    """The keys in `$TOKENWARD_ENCRYPTION_KEY` (comma-separated, newest first), or None."""
    value = os.environ.get(variable, "").strip()
    if not value:
        return None
    parts = [part.strip() for part in value.split(",") if part.strip()]
    names = [f"{variable} (key #{i + 1})" for i in range(len(parts))]
    return Keyring(parts, names)


def encrypt_store(store: Store, keys: Keyring | None = None) -> Store:
    """`store` encrypted with `keys`, else with `$TOKENWARD_ENCRYPTION_KEY`, else as it is."""
    keys = keys or keyring_from_env()
    return store if keys is None else EncryptedStore(store, keys)


def is_secret_extra(name: str) -> bool:
    """Whether an `extra` entry holds a secret (then its string value is encrypted)."""
    lowered = name.lower()
    return (
        lowered.endswith("token")
        or "secret" in lowered
        or "password" in lowered
        or lowered in {"api_key", "apikey", "code_verifier"}
    )


class StoreDecryptionError(StoreCorrupted):
    """A secret in an encrypted store cannot be opened: encrypted with a key that is not
    configured (`reason="unknown_key"`), altered or moved (`"tampered"`), or plaintext in a
    record marked as encrypted (`"plaintext"`). The message names the store, the record, the
    field, the key id and the fix; never the value nor any key."""

    def __init__(
        self,
        location: str,
        record_key: str,
        field_name: str,
        reason: Reason,
        kid: str | None,
        keys: Keyring,
    ) -> None:
        self.location = location
        self.record_key = record_key
        self.field = field_name
        self.reason = reason
        self.key_id = kid
        where = f"token store {location}: record {record_key!r}, field {field_name}"
        forget = (
            "restore the record from a backup, or delete it (`tokenward rekey "
            f"--delete-unreadable`) and log in again (`tokenward login {record_key}`)"
        )
        if reason == "unknown_key":
            detail = f"encrypted with key {kid}, which is not configured"
            text = (
                f"{where} is {detail} (configured keys: {', '.join(keys.ids)}). Add that key "
                "to [store] encryption_keys (or TOKENWARD_ENCRYPTION_KEY) after the current "
                "one, then run `tokenward rekey`."
            )
        elif reason == "tampered":
            detail = f"does not authenticate with key {kid}"
            text = (
                f"{where} {detail}: the ciphertext was altered, truncated, or copied from "
                f"another record or field. It was left untouched; {forget}."
            )
        else:
            detail = "holds a plaintext secret in a record marked as encrypted"
            text = (
                f"{where} {detail}: the store was edited by hand or by a program without "
                f"the encryption keys. It was left untouched; {forget}."
            )
        self.detail = detail
        StoreError.__init__(self, text)


@dataclass
class RekeyReport:
    """What `EncryptedStore.rekey` did (or would do, with `dry_run`)."""

    key_id: str
    #: Records re-encrypted from an older key.
    rekeyed: int = 0
    #: Plaintext records (from before encryption) encrypted.
    encrypted: int = 0
    #: Records already encrypted with the current key only.
    current: int = 0
    #: Records deleted because they could not be opened (`delete_unreadable`).
    deleted: int = 0
    #: Records that could not be opened: (record key, message without secrets).
    failed: list[tuple[str, str]] = field(default_factory=list)


class EncryptedStore(Store):
    """`inner` with every record's secrets encrypted by `keys` (see the module docstring).

    Leases, deletion, key listing and closing are the inner store's; the async methods call the
    inner store's async methods, so a natively async store stays natively async.
    """

    def __init__(self, inner: Store, keys: Keyring) -> None:
        self.inner = inner
        self.keyring = keys
        self.location = inner.location
        self.native_async = inner.native_async

    # -- sealing ------------------------------------------------------------------------------
    @staticmethod
    def _aad(record_key: str, field_name: str) -> bytes:
        return json.dumps(["tokenward", "v1", record_key, field_name]).encode("utf-8")

    def _seal(self, record: Record) -> Record:
        """The record as stored: secrets encrypted with the current key, marker set."""

        def seal(name: str, value: str) -> str:
            return self.keyring.encrypt(value, self._aad(record.key, name))

        extra = {
            name: seal(f"extra.{name}", value)
            if isinstance(value, str) and is_secret_extra(name)
            else value
            for name, value in record.extra.items()
            if name != MARKER
        }
        extra[MARKER] = "v1"
        return replace(
            record,
            access_token=None
            if record.access_token is None
            else seal("access_token", record.access_token),
            refresh_token=None
            if record.refresh_token is None
            else seal("refresh_token", record.refresh_token),
            extra=extra,
        )

    def _open_value(self, record: Record, name: str, value: str, marked: bool) -> str:
        if not value.startswith(PREFIX):
            if marked:
                raise self._error(record, name, "plaintext", None)
            return value  # a record from before encryption: encrypted on its next write
        kid, _, body = value[len(PREFIX) :].partition(":")
        if len(kid) != 8 or not body:  # cut short or mangled: not a value we wrote
            raise self._error(record, name, "tampered", kid or None)
        if kid not in self.keyring.ids:
            raise self._error(record, name, "unknown_key", kid)
        opened = self.keyring.decrypt(kid, body, self._aad(record.key, name))
        if opened is None:
            raise self._error(record, name, "tampered", kid)
        return opened

    def _error(
        self, record: Record, name: str, reason: Reason, kid: str | None
    ) -> StoreDecryptionError:
        return StoreDecryptionError(self.location, record.key, name, reason, kid, self.keyring)

    def _unseal(self, record: Record | None) -> Record | None:
        """The record with its secrets opened (and the marker removed)."""
        if record is None:
            return None
        marked = record.extra.get(MARKER) == "v1"

        def open_(name: str, value: str | None) -> str | None:
            return None if value is None else self._open_value(record, name, value, marked)

        extra = {
            name: self._open_value(record, f"extra.{name}", value, marked)
            if isinstance(value, str) and is_secret_extra(name)
            else value
            for name, value in record.extra.items()
            if name != MARKER
        }
        return replace(
            record,
            access_token=open_("access_token", record.access_token),
            refresh_token=open_("refresh_token", record.refresh_token),
            extra=extra,
        )

    def _key_ids(self, record: Record) -> set[str] | None:
        """Ids of the keys `record`'s secrets are encrypted with; None when it holds a
        plaintext secret."""
        values = [record.access_token, record.refresh_token] + [
            v for k, v in record.extra.items() if isinstance(v, str) and is_secret_extra(k)
        ]
        ids: set[str] = set()
        for value in values:
            if value is None:
                continue
            if not value.startswith(PREFIX):
                return None
            ids.add(value[len(PREFIX) :].partition(":")[0])
        return ids

    # -- the Store contract -------------------------------------------------------------------
    def load(self, key: str) -> Record | None:
        return self._unseal(self.inner.load(key))

    def compare_and_set(self, record: Record, expected_version: int) -> bool:
        return self.inner.compare_and_set(self._seal(record), expected_version)

    def delete(self, key: str) -> bool:
        return self.inner.delete(key)

    def keys(self, prefix: str = "") -> list[str]:
        return self.inner.keys(prefix)

    def acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        return self.inner.acquire_lease(key, owner, ttl)

    def renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        return self.inner.renew_lease(key, owner, ttl)

    def release_lease(self, key: str, owner: str) -> bool:
        return self.inner.release_lease(key, owner)

    def close(self) -> None:
        self.inner.close()

    # Liveness and in-flight records are the inner store's: they hold fingerprints, no secret.
    def lease_holder(self, key: str) -> Claim | None:
        return self.inner.lease_holder(key)

    def take_over_lease(self, key: str, dead_owner: str, owner: str, ttl: float) -> bool:
        return self.inner.take_over_lease(key, dead_owner, owner, ttl)

    def mark_in_flight(self, key: str, owner: str, fingerprint: str, ttl: float) -> None:
        self.inner.mark_in_flight(key, owner, fingerprint, ttl)

    def in_flight(self, key: str) -> Claim | None:
        return self.inner.in_flight(key)

    def clear_in_flight(self, key: str, owner: str) -> bool:
        return self.inner.clear_in_flight(key, owner)

    def holder_alive(self, holder: str | None) -> bool | None:
        return self.inner.holder_alive(holder)

    async def alease_holder(self, key: str) -> Claim | None:
        return await self.inner.alease_holder(key)

    async def atake_over_lease(self, key: str, dead_owner: str, owner: str, ttl: float) -> bool:
        return await self.inner.atake_over_lease(key, dead_owner, owner, ttl)

    async def amark_in_flight(self, key: str, owner: str, fingerprint: str, ttl: float) -> None:
        await self.inner.amark_in_flight(key, owner, fingerprint, ttl)

    async def ain_flight(self, key: str) -> Claim | None:
        return await self.inner.ain_flight(key)

    async def aclear_in_flight(self, key: str, owner: str) -> bool:
        return await self.inner.aclear_in_flight(key, owner)

    async def aholder_alive(self, holder: str | None) -> bool | None:
        return await self.inner.aholder_alive(holder)

    # The due-queue is the inner store's: it is derived from clear fields (expiry, state), and
    # shared stores claim atomically on their server, which a wrapper-side queue would not.
    def begin_refresh(
        self, key: str, owner: str, ttl: float, mark: InFlightMark | None = None
    ) -> Begun:
        begun = self.inner.begin_refresh(key, owner, ttl, mark)
        return replace(begun, record=self._unseal(begun.record))

    def finish_refresh(
        self, record: Record, expected_version: int, owner: str, clear_in_flight: bool = True
    ) -> bool:
        sealed = self._seal(record)
        return self.inner.finish_refresh(sealed, expected_version, owner, clear_in_flight)

    def claim_due_records(self, now: float, limit: int, owner: str, ttl: float) -> list[Record]:
        claimed = self.inner.claim_due_records(now, limit, owner, ttl)
        return [self._unsealed(record) for record in claimed]

    async def abegin_refresh(
        self, key: str, owner: str, ttl: float, mark: InFlightMark | None = None
    ) -> Begun:
        begun = await self.inner.abegin_refresh(key, owner, ttl, mark)
        return replace(begun, record=self._unseal(begun.record))

    async def afinish_refresh(
        self, record: Record, expected_version: int, owner: str, clear_in_flight: bool = True
    ) -> bool:
        sealed = self._seal(record)
        return await self.inner.afinish_refresh(sealed, expected_version, owner, clear_in_flight)

    async def aclaim_due_records(
        self, now: float, limit: int, owner: str, ttl: float
    ) -> list[Record]:
        claimed = await self.inner.aclaim_due_records(now, limit, owner, ttl)
        return [self._unsealed(record) for record in claimed]

    def _unsealed(self, record: Record) -> Record:
        opened = self._unseal(record)
        assert opened is not None  # _unseal maps a record to a record
        return opened

    def schedule(self, key: str, due_at: float | None) -> None:
        self.inner.schedule(key, due_at)

    def claim_due(self, now: float, limit: int, owner: str, ttl: float) -> list[str]:
        return self.inner.claim_due(now, limit, owner, ttl)

    async def aschedule(self, key: str, due_at: float | None) -> None:
        await self.inner.aschedule(key, due_at)

    async def aclaim_due(self, now: float, limit: int, owner: str, ttl: float) -> list[str]:
        return await self.inner.aclaim_due(now, limit, owner, ttl)

    async def aload(self, key: str) -> Record | None:
        return self._unseal(await self.inner.aload(key))

    async def acompare_and_set(self, record: Record, expected_version: int) -> bool:
        return await self.inner.acompare_and_set(self._seal(record), expected_version)

    async def adelete(self, key: str) -> bool:
        return await self.inner.adelete(key)

    async def akeys(self, prefix: str = "") -> list[str]:
        return await self.inner.akeys(prefix)

    async def aacquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        return await self.inner.aacquire_lease(key, owner, ttl)

    async def arenew_lease(self, key: str, owner: str, ttl: float) -> bool:
        return await self.inner.arenew_lease(key, owner, ttl)

    async def arelease_lease(self, key: str, owner: str) -> bool:
        return await self.inner.arelease_lease(key, owner)

    async def aclose(self) -> None:
        await self.inner.aclose()

    # -- rotation -----------------------------------------------------------------------------
    def rekey(
        self, *, dry_run: bool = False, delete_unreadable: bool = False, attempts: int = 50
    ) -> RekeyReport:
        """Re-encrypt every record still holding a plaintext secret or a secret encrypted with
        an older key, with the current key.

        Online: each record is rewritten by compare-and-set (version + 1, same contents) and
        re-read on a conflict, without taking the refresh lease, so refreshes never wait for it;
        a refresh that lands first simply wins and is re-encrypted on the next attempt.
        `delete_unreadable` deletes records that are tampered with (never those encrypted with
        a key that is merely not configured), so that a new login can replace them.
        """
        report = RekeyReport(self.keyring.current)
        for key in self.inner.keys(""):
            for _ in range(attempts):
                raw = self.inner.load(key)
                if raw is None:
                    break
                ids = self._key_ids(raw)
                marked = raw.extra.get(MARKER) == "v1"
                try:
                    opened = self._unseal(raw)
                except StoreDecryptionError as exc:
                    # A missing key is fixed by configuring it: only unopenable records go.
                    if delete_unreadable and exc.reason != "unknown_key" and not dry_run:
                        self.inner.delete(key)
                        report.deleted += 1
                    else:
                        report.failed.append((key, str(exc)))
                    break
                assert opened is not None
                if ids is not None and ids <= {self.keyring.current} and (marked or not ids):
                    report.current += 1
                    break
                if dry_run or self.compare_and_set(opened.successor(), raw.version):
                    if marked:
                        report.rekeyed += 1
                    else:
                        report.encrypted += 1
                    break
            else:
                report.failed.append(
                    (key, f"record {key!r} kept changing; {attempts} attempts lost; run again")
                )
        return report

    def __repr__(self) -> str:
        return f"EncryptedStore({self.inner!r}, keys={list(self.keyring.ids)!r})"
