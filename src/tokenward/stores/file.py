"""A JSON file store, plus the sidecar leases and the base class the dotenv store shares with it.

Why a sidecar lock file and `fcntl.flock`: the data file is replaced by `os.replace` on every
write (that is what makes a write atomic), so it cannot carry the lock itself: a process waiting
on the old inode would wake up holding a lock on a file nobody reads any more. The lock lives on
`<path>.lock`, which is never replaced. `flock` is released by the kernel when its holder dies,
so a crashed process never leaves the store locked.

Why temp file + fsync + `os.replace` + directory fsync: a crash at any instant leaves either the
old document or the new one (invariant 7), and once `compare_and_set` returns the new refresh
token is on disk before anyone uses it (invariant 2).

Why leases in a sidecar (`<path>.leases`) rather than in the document: leases change far more
often than records and are worth nothing after a crash (every holder is dead then), so they are
written atomically but without fsync, and the credentials file is only rewritten when a record
changes. A lost or unreadable lease file only means "no leases"; it never touches a record.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from ..errors import StoreCorrupted
from .base import Claim, Record, Store, check_successor
from .disk import FILE_MODE, FileLock, atomic_write, read_bytes, sweep_temp_files
from .record import record_from_data

__all__ = ["JsonFileStore"]

log = logging.getLogger(__name__)

#: Version of the JSON document layout; a newer file is refused rather than misread.
FORMAT_VERSION = 1


class SidecarLeases:
    """Leases kept as `{key: {"owner": ..., "expires_at": ..., "holder": ...}}` in a JSON
    sidecar file (in-flight records use the same shape, plus a `fp`, under reserved names).

    Every method must be called while holding the store's `FileLock`. Expiry uses the wall clock
    (`time.time()`) because leases are compared across processes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def acquire(self, key: str, owner: str, ttl: float, holder: str | None = None) -> bool:
        now = time.time()
        leases = self._read(now)
        held = leases.get(key)
        if held and held["owner"] != owner:
            return False
        leases[key] = _entry(owner, now + ttl, holder)
        self._write(leases)
        return True

    def renew(self, key: str, owner: str, ttl: float) -> bool:
        now = time.time()
        leases = self._read(now)
        held = leases.get(key)
        if not held or held["owner"] != owner:
            return False
        held["expires_at"] = now + ttl
        self._write(leases)
        return True

    def take_over(self, key: str, dead_owner: str, entry: dict[str, Any]) -> bool:
        """Replace the entry of `key` with `entry` iff `dead_owner` holds it."""
        leases = self._read(time.time())
        held = leases.get(key)
        if not held or held["owner"] != dead_owner:
            return False
        leases[key] = entry
        self._write(leases)
        return True

    def put(self, key: str, entry: dict[str, Any]) -> None:
        leases = self._read(time.time())
        leases[key] = entry
        self._write(leases)

    def get(self, key: str) -> Claim | None:
        now = time.time()
        held = self._read(now).get(key)
        if held is None:
            return None
        return Claim(held["owner"], held["expires_at"] - now, held.get("holder"), held.get("fp"))

    def release(self, key: str, owner: str) -> bool:
        leases = self._read(None)
        held = leases.get(key)
        if not held or held["owner"] != owner:
            return False
        del leases[key]
        self._write(leases)
        return True

    def drop(self, key: str) -> None:
        leases = self._read(None)
        if leases.pop(key, None) is not None:
            self._write(leases)

    def _read(self, now: float | None) -> dict[str, dict[str, Any]]:
        """Current entries; with `now`, expired ones are left out (so anyone may take them)."""
        raw = read_bytes(self.path)
        if not raw:
            return {}
        try:
            data = json.loads(raw)
            leases = {k: _entry(**v) for k, v in data.items()}
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning("lease file %s is unreadable; treating it as holding no lease", self.path)
            return {}
        return {k: v for k, v in leases.items() if now is None or v["expires_at"] > now}

    def _write(self, leases: dict[str, dict[str, Any]]) -> None:
        data = {k: {n: v for n, v in e.items() if v is not None} for k, e in sorted(leases.items())}
        # No fsync: after a power loss every lease holder is dead anyway.
        atomic_write(self.path, json.dumps(data).encode(), durable=False)


#: Prefix of the lease file's in-flight entries (a NUL: no credential key starts with one).
IN_FLIGHT = "\x00in-flight:"


def _entry(
    owner: str,
    expires_at: float,
    holder: str | None = None,
    fp: str | None = None,
    **_newer: Any,  # fields a newer tokenward wrote: ignored
) -> dict[str, Any]:
    """One sidecar entry, type-checked (a malformed file raises TypeError/ValueError)."""
    if not isinstance(owner, str) or not isinstance(holder, str | None):
        raise TypeError("malformed lease entry")
    return {"owner": owner, "expires_at": float(expires_at), "holder": holder, "fp": fp}


def sidecar(path: Path, suffix: str) -> Path:
    """`<path><suffix>`, e.g. `tokens.json.lock`."""
    return path.with_name(path.name + suffix)


# --- stores kept in one file ------------------------------------------------------------------


class SidecarFileStore(Store):
    """Base of the stores kept in one file at `path`: writers serialize on an `flock` of
    `<path>.lock` (never the data file, which is replaced on every write), and leases live in
    `<path>.leases`, since losing a lease loses no data."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.location = str(path)
        self._lock = FileLock(sidecar(self.path, ".lock"))
        self._leases = SidecarLeases(sidecar(self.path, ".leases"))
        sweep_temp_files(self.path)

    def acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        with self._lock.hold():
            return self._leases.acquire(key, owner, ttl, self._holder())

    def renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        with self._lock.hold():
            return self._leases.renew(key, owner, ttl)

    def release_lease(self, key: str, owner: str) -> bool:
        with self._lock.hold():
            return self._leases.release(key, owner)

    def lease_holder(self, key: str) -> Claim | None:
        with self._lock.hold():
            return self._leases.get(key)

    def take_over_lease(self, key: str, dead_owner: str, owner: str, ttl: float) -> bool:
        entry = _entry(owner, time.time() + ttl, self._holder())
        with self._lock.hold():
            return self._leases.take_over(key, dead_owner, entry)

    # In-flight records share the lease file under reserved names: no other file beside the
    # user's, and to an older tokenward they read as leases on keys nobody uses.
    def mark_in_flight(self, key: str, owner: str, fingerprint: str, ttl: float) -> None:
        entry = _entry(owner, time.time() + ttl, self._holder(), fingerprint)
        with self._lock.hold():
            self._leases.put(IN_FLIGHT + key, entry)

    def in_flight(self, key: str) -> Claim | None:
        with self._lock.hold():
            return self._leases.get(IN_FLIGHT + key)

    def clear_in_flight(self, key: str, owner: str) -> bool:
        with self._lock.hold():
            return self._leases.release(IN_FLIGHT + key, owner)

    def _drop_leases(self, key: str) -> None:
        """The lease and in-flight record of a deleted credential (hold the lock)."""
        self._leases.drop(key)
        self._leases.drop(IN_FLIGHT + key)


# --- the JSON file store ---------------------------------------------------------------------


class JsonFileStore(SidecarFileStore):
    """All records in one JSON document at `path`; leases in the sidecar `<path>.leases`.

    Layout: `{"tokenward": 1, "records": {key: record_fields}}`. Writers hold an exclusive
    `flock` on `<path>.lock` for the whole read-compare-write, so `compare_and_set` is atomic
    across threads and processes. Readers take no lock: they always see a complete document.
    The file is written with mode 0600; a missing file is an empty store, a corrupt one raises
    `StoreCorrupted` and is never overwritten. POSIX only (`fcntl`).
    """

    def load(self, key: str) -> Record | None:
        return self._read().get(key)

    def compare_and_set(self, record: Record, expected_version: int) -> bool:
        check_successor(record, expected_version)
        with self._lock.hold():
            records = self._read()
            current = records.get(record.key)
            if (current.version if current else 0) != expected_version:
                return False
            records[record.key] = record
            self._write(records)
            return True

    def delete(self, key: str) -> bool:
        with self._lock.hold():
            records = self._read()
            self._drop_leases(key)
            if records.pop(key, None) is None:
                return False
            self._write(records)
            return True

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self._read() if k.startswith(prefix))

    def _read(self) -> dict[str, Record]:
        raw = read_bytes(self.path)
        if raw is None:
            return {}
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            raise StoreCorrupted(self.location, f"not valid JSON ({_json_error(exc)})") from None
        return self._records_of(doc)

    def _records_of(self, doc: Any) -> dict[str, Record]:
        if not isinstance(doc, dict) or not isinstance(doc.get("records"), dict):
            raise StoreCorrupted(self.location, 'expected an object with a "records" object')
        version = doc.get("tokenward", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise StoreCorrupted(
                self.location,
                f"format version {version!r} is not one this tokenward reads (up to "
                f"{FORMAT_VERSION}); upgrade tokenward",
            )
        records: dict[str, Record] = {}
        for key, data in doc["records"].items():
            record = record_from_data(self.location, data, f"record {key!r}")
            if record.key != key:
                raise StoreCorrupted(self.location, f"record {key!r} holds key {record.key!r}")
            records[key] = record
        return records

    def _write(self, records: dict[str, Record]) -> None:
        doc = {
            "tokenward": FORMAT_VERSION,
            "records": {k: records[k].to_dict() for k in sorted(records)},
        }
        data = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
        atomic_write(self.path, data, mode=FILE_MODE)


def _json_error(exc: Exception) -> str:
    """Where the JSON broke, without quoting the document (it may hold secrets)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return type(exc).__name__
