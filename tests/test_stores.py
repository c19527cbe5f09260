"""The store contract, run against every store, plus what is particular to each file format.

To run the contract against a new store, add a factory to STORE_KINDS (and to SHARED_KINDS when
it is shared between processes). Workers of the multi-process tests rebuild their store from the
kind's name, so factories must be plain module-level functions of a directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import multiprocessing
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from servers import POSTGRES_SCHEMAS, POSTGRES_URL, REDIS_PREFIXES, REDIS_URL, require

try:  # python-dotenv is optional; when installed, it must read what we write
    import dotenv as python_dotenv  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover
    python_dotenv = None  # type: ignore[assignment]

from tokenward.errors import StoreCorrupted, StoreError
from tokenward.stores import (
    DotenvStore,
    JsonFileStore,
    MemoryStore,
    Record,
    SQLiteStore,
    Store,
    open_store,
)
from tokenward.stores.base import InFlightMark
from tokenward.stores.url import SCHEMES, register_scheme


def _memory(directory: Path) -> Store:
    return MemoryStore()


def _json(directory: Path) -> Store:
    return JsonFileStore(directory / "tokens.json")


def _dotenv(directory: Path) -> Store:
    return DotenvStore(directory / ".env")


def _sqlite(directory: Path) -> Store:
    return SQLiteStore(directory / "tokens.db")


# Network stores: each test gets its own key prefix / schema, named after its temporary
# directory so that worker processes (which get the directory) land in the same one. What a test
# created is removed after it (tests/conftest.py). An unreachable server skips these tests,
# except under CI=true, where it fails them: CI must run them.


def _isolated_name(directory: Path) -> str:
    return "tw_test_" + hashlib.sha256(str(directory).encode()).hexdigest()[:16]


def _redis(directory: Path) -> Store:
    require("redis")
    from tokenward.stores.redis import RedisStore

    prefix = _isolated_name(directory) + ":"
    REDIS_PREFIXES.add(prefix)
    return RedisStore(REDIS_URL, prefix=prefix)


def _postgres(directory: Path) -> Store:
    require("postgres")
    from tokenward.stores.postgres import PostgresStore

    schema = _isolated_name(directory)
    POSTGRES_SCHEMAS.add(schema)
    return PostgresStore(POSTGRES_URL, schema=schema)


STORE_KINDS: dict[str, Callable[[Path], Store]] = {
    "memory": _memory,
    "json": _json,
    "dotenv": _dotenv,
    "sqlite": _sqlite,
    "redis": _redis,
    "postgres": _postgres,
}
#: Stores that several processes can share.
SHARED_KINDS = ["json", "dotenv", "sqlite", "redis", "postgres"]
#: Stores kept in local files.
FILE_KINDS = ["json", "dotenv", "sqlite"]


@pytest.fixture(params=list(STORE_KINDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    instance = STORE_KINDS[request.param](tmp_path)
    yield instance
    instance.close()


def full_record(key: str = "acct:42") -> Record:
    """A record with every field away from its default, including awkward characters."""
    return Record(
        key=key,
        version=1,
        access_token="APP_USR-1234567890-abcdef",
        token_type="bearer",
        expires_at=1700000123.25,
        refresh_token="TG-65f0c0ffee-123456",
        scope="offline_access read write",
        obtained_at=1700000000.5,
        extra={"user_id": 42, "nested": {"list": [1, "two", None]}, "note": 'it\'s \\ "q" é $x'},
        state="needs_reauth",
        last_error="invalid_grant: it's gone",
        refresh_count=7,
        updated_at=1700000001.75,
    )


def increment(store: Store, key: str) -> None:
    """Read, add one to extra["count"], compare-and-set; retry when someone wrote first."""
    while True:
        current = store.load(key)
        assert current is not None
        count = current.extra["count"] + 1
        if store.compare_and_set(current.successor(extra={"count": count}), current.version):
            return


def seed_counter(store: Store, key: str) -> None:
    assert store.compare_and_set(Record(key, 1, extra={"count": 0}), 0)


# --- the contract ---------------------------------------------------------------------------


def test_load_missing_is_none(store: Store) -> None:
    assert store.load("nope") is None


def test_create_then_conflicting_cas_loses(store: Store) -> None:
    first = Record("ml", 1, access_token="first", refresh_token="r1")
    assert store.compare_and_set(first, 0)
    assert not store.compare_and_set(Record("ml", 1, access_token="second"), 0)
    loaded = store.load("ml")
    assert loaded is not None and loaded.access_token == "first"

    winner = loaded.successor(access_token="winner")
    assert store.compare_and_set(winner, 1)
    assert not store.compare_and_set(loaded.successor(access_token="loser"), 1)
    final = store.load("ml")
    assert final is not None and (final.version, final.access_token) == (2, "winner")


def test_cas_requires_the_next_version(store: Store) -> None:
    with pytest.raises(ValueError):
        store.compare_and_set(Record("k", 3), 0)
    with pytest.raises(ValueError):
        store.compare_and_set(Record("k", 1), 1)
    assert store.load("k") is None


def test_round_trip_of_every_field(store: Store) -> None:
    record = full_record()
    assert store.compare_and_set(record, 0)
    loaded = store.load(record.key)
    assert loaded is not None and loaded.to_dict() == record.to_dict()

    cleared = loaded.successor(
        access_token=None, refresh_token=None, expires_at=None, scope=None, state="ok"
    )
    assert store.compare_and_set(cleared, 1)
    reloaded = store.load(record.key)
    assert reloaded is not None and reloaded.to_dict() == cleared.to_dict()


def test_keys_with_prefix(store: Store) -> None:
    for key in ["ml:2", "heygen", "ml:1"]:
        assert store.compare_and_set(Record(key, 1, access_token="t"), 0)
    assert store.keys() == ["heygen", "ml:1", "ml:2"]
    assert store.keys("ml:") == ["ml:1", "ml:2"]
    assert store.keys("zz") == []


def test_delete(store: Store) -> None:
    assert store.compare_and_set(Record("k", 1, access_token="t"), 0)
    assert store.acquire_lease("k", "owner-1", 30)
    assert store.delete("k")
    assert store.load("k") is None
    assert store.keys() == []
    assert not store.delete("k")
    assert store.acquire_lease("k", "owner-2", 30)  # the lease went with the record
    assert store.compare_and_set(Record("k", 1, access_token="again"), 0)


def test_leases(store: Store) -> None:
    assert store.acquire_lease("k", "a", 30)
    assert not store.acquire_lease("k", "b", 30)
    assert store.acquire_lease("k", "a", 30)  # re-acquiring is renewing
    assert store.renew_lease("k", "a", 30)
    assert not store.renew_lease("k", "b", 30)
    assert not store.release_lease("k", "b")
    assert not store.acquire_lease("k", "b", 30)
    assert store.acquire_lease("other", "b", 30)  # leases are per key
    assert store.release_lease("k", "a")
    assert not store.release_lease("k", "a")
    assert not store.renew_lease("k", "a", 30)  # a late renewal never revives a released lease
    assert store.acquire_lease("k", "b", 30)


def test_expired_lease_can_be_taken(store: Store) -> None:
    # A 1-second lease: the next call comes well within it, even on a busy machine.
    assert store.acquire_lease("k", "a", 1.0)
    acquired = time.monotonic()  # the lease ends at the latest 1 s after this
    assert not store.acquire_lease("k", "b", 1.0)
    time.sleep(max(1.05 - (time.monotonic() - acquired), 0.0))
    assert not store.renew_lease("k", "a", 30)
    assert store.acquire_lease("k", "b", 30)
    assert not store.release_lease("k", "a")
    assert store.release_lease("k", "b")


def test_threads_lose_no_update(store: Store) -> None:
    seed_counter(store, "counter")

    def work() -> None:
        for _ in range(50):
            increment(store, "counter")

    threads = [threading.Thread(target=work) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = store.load("counter")
    assert final is not None
    assert (final.extra["count"], final.version) == (800, 801)


def test_repr_names_location_not_secrets(store: Store) -> None:
    record = full_record()
    store.compare_and_set(record, 0)
    assert store.location in repr(store)
    assert record.access_token is not None and record.access_token not in repr(store)


async def _async_contract(store: Store, key: str) -> None:
    assert await store.aload(key) is None
    assert await store.acompare_and_set(Record(key, 1, access_token="a1"), 0)
    assert not await store.acompare_and_set(Record(key, 1, access_token="lost"), 0)
    loaded = await store.aload(key)
    assert loaded is not None and loaded.access_token == "a1"
    assert await store.acompare_and_set(loaded.successor(access_token="a2"), 1)
    assert not await store.acompare_and_set(loaded.successor(access_token="lost"), 1)
    assert key in await store.akeys()
    assert await store.akeys(key) == [key]
    assert await store.aacquire_lease(key, "a", 30)
    assert not await store.aacquire_lease(key, "b", 30)
    assert await store.arenew_lease(key, "a", 30)
    assert not await store.arenew_lease(key, "b", 30)
    assert not await store.arelease_lease(key, "b")
    assert await store.arelease_lease(key, "a")
    assert await store.aacquire_lease(key, "b", 30)
    assert await store.adelete(key)
    assert not await store.adelete(key)
    assert await store.aload(key) is None
    assert await store.aacquire_lease(key, "c", 30)  # the lease went with the record
    assert await store.arelease_lease(key, "c")


def test_async_api_from_several_event_loops(store: Store) -> None:
    asyncio.run(_async_contract(store, "loop-1"))
    asyncio.run(_async_contract(store, "loop-2"))  # a new loop: native clients are per loop
    assert store.load("loop-1") is None


async def test_async_tasks_lose_no_update(store: Store) -> None:
    assert await store.acompare_and_set(Record("counter", 1, extra={"count": 0}), 0)

    async def work() -> None:
        for _ in range(10):
            while True:
                current = await store.aload("counter")
                assert current is not None
                bumped = current.successor(extra={"count": current.extra["count"] + 1})
                if await store.acompare_and_set(bumped, current.version):
                    break

    await asyncio.gather(*(work() for _ in range(10)))
    final = await store.aload("counter")
    assert final is not None and (final.extra["count"], final.version) == (100, 101)
    await store.aclose()


# --- several processes ----------------------------------------------------------------------


def cas_worker(kind: str, directory: str, rounds: int) -> None:
    store = STORE_KINDS[kind](Path(directory))
    for _ in range(rounds):
        increment(store, "counter")
    store.close()


def lease_worker(kind: str, directory: str, rounds: int, owner: str) -> None:
    """Increment a plain file with no compare-and-set at all: only the lease protects it."""
    store = STORE_KINDS[kind](Path(directory))
    counter = Path(directory) / "plain-counter"
    done = 0
    while done < rounds:
        if not store.acquire_lease("shared", owner, 10.0):
            time.sleep(0.001)
            continue
        value = int(counter.read_text())
        time.sleep(0.001)  # widen the window a lost update would need
        counter.write_text(str(value + 1))
        current = store.load("under-lease")
        assert current is not None
        bumped = current.successor(refresh_count=current.refresh_count + 1)
        assert store.compare_and_set(bumped, current.version), "CAS lost while holding the lease"
        assert store.release_lease("shared", owner)
        done += 1
    store.close()


def run_processes(target: Callable[..., None], args: list[tuple[object, ...]]) -> None:
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=target, args=a) for a in args]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * len(processes)


@pytest.mark.parametrize("kind", SHARED_KINDS)
@pytest.mark.e2e
def test_processes_lose_no_cas_update(kind: str, tmp_path: Path) -> None:
    store = STORE_KINDS[kind](tmp_path)
    seed_counter(store, "counter")
    run_processes(cas_worker, [(kind, str(tmp_path), 100)] * 4)
    final = store.load("counter")
    assert final is not None
    assert (final.extra["count"], final.version) == (400, 401)
    store.close()


@pytest.mark.parametrize("kind", SHARED_KINDS)
@pytest.mark.e2e
def test_lease_excludes_other_processes(kind: str, tmp_path: Path) -> None:
    store = STORE_KINDS[kind](tmp_path)
    assert store.compare_and_set(Record("under-lease", 1), 0)
    (tmp_path / "plain-counter").write_text("0")
    run_processes(lease_worker, [(kind, str(tmp_path), 25, f"owner-{i}") for i in range(4)])
    assert (tmp_path / "plain-counter").read_text() == "100"
    final = store.load("under-lease")
    assert final is not None and final.refresh_count == 100
    store.close()


# --- liveness and in-flight records (the stall and process-death protocol) --------------------


def _encrypted(directory: Path) -> Store:
    from tokenward.stores.encrypted import EncryptedStore, Keyring

    return EncryptedStore(SQLiteStore(directory / "sealed.db"), Keyring([bytes(range(32))]))


#: Every store, plus the encrypted wrapper (which must hand these operations to its inner store).
LIVENESS_KINDS: dict[str, Callable[[Path], Store]] = {**STORE_KINDS, "encrypted": _encrypted}


@pytest.fixture(params=list(LIVENESS_KINDS))
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    instance = LIVENESS_KINDS[request.param](tmp_path)
    yield instance
    instance.close()


def test_lease_holder_and_take_over(any_store: Store) -> None:
    store = any_store
    assert store.lease_holder("k") is None
    assert not store.take_over_lease("k", "a", "b", 30)  # nobody holds it: acquire instead
    assert store.acquire_lease("k", "a", 30)
    claim = store.lease_holder("k")
    assert claim is not None and claim.owner == "a" and claim.fingerprint is None
    assert 25 < claim.expires_in <= 30
    assert store.holder_alive(claim.holder) is True  # recorded by this very process
    assert not store.take_over_lease("k", "x", "b", 30)  # x does not hold it
    assert store.lease_holder("k").owner == "a"  # type: ignore[union-attr]
    assert store.take_over_lease("k", "a", "b", 10)
    claim = store.lease_holder("k")
    assert claim is not None and claim.owner == "b" and claim.expires_in <= 10
    assert not store.renew_lease("k", "a", 30)  # the dead owner's late renewal loses
    assert not store.release_lease("k", "a")
    assert not store.acquire_lease("k", "a", 30)
    assert store.release_lease("k", "b")
    assert store.lease_holder("k") is None


async def test_lease_holder_and_in_flight_async(any_store: Store) -> None:
    store = any_store
    assert await store.aacquire_lease("k", "a", 30)
    claim = await store.alease_holder("k")
    assert claim is not None and claim.owner == "a"
    assert await store.aholder_alive(claim.holder) is True
    assert await store.atake_over_lease("k", "a", "b", 30)
    await store.amark_in_flight("k", "b", "fp-1", 20)
    flight = await store.ain_flight("k")
    assert flight is not None and (flight.owner, flight.fingerprint) == ("b", "fp-1")
    assert await store.aclear_in_flight("k", "b")
    assert await store.ain_flight("k") is None


def test_in_flight_records(any_store: Store) -> None:
    store = any_store
    assert store.in_flight("k") is None
    store.mark_in_flight("k", "a", "fp-1", 20)
    flight = store.in_flight("k")
    assert flight is not None and (flight.owner, flight.fingerprint) == ("a", "fp-1")
    assert 15 < flight.expires_in <= 20
    assert store.holder_alive(flight.holder) is True
    assert store.in_flight("other") is None  # per key
    store.mark_in_flight("k", "b", "fp-2", 20)  # a newer request replaces it
    flight = store.in_flight("k")
    assert flight is not None and (flight.owner, flight.fingerprint) == ("b", "fp-2")
    assert not store.clear_in_flight("k", "a")  # only its owner clears it
    assert store.clear_in_flight("k", "b")
    assert store.in_flight("k") is None
    assert not store.clear_in_flight("k", "b")
    # The record is gone once its deadline passes, and with the credential.
    store.mark_in_flight("k", "a", "fp-3", 0.05)
    time.sleep(0.1)
    assert store.in_flight("k") is None
    store.mark_in_flight("k", "a", "fp-4", 30)
    assert store.compare_and_set(Record("k", 1), 0)
    assert store.acquire_lease("k", "a", 30)
    assert store.delete("k")
    assert store.in_flight("k") is None and store.lease_holder("k") is None


def test_holder_identity_pid_reuse_and_other_hosts(any_store: Store) -> None:
    """The process signal: a pid alone is not the process (a reused pid started at another
    time is not the holder), and another boot or pid namespace proves nothing."""
    from tokenward.liveness import process_identity

    me = process_identity()
    if me is None:
        pytest.skip("no /proc: the process signal is Linux-only")
    boot, namespace, pid, start = me.split("/")
    assert any_store.holder_alive(f"p={me}") is True
    assert any_store.holder_alive(f"p={boot}/{namespace}/{pid}/{int(start) + 1}") is False
    assert any_store.holder_alive(f"p=other-boot/{namespace}/{pid}/{start}") is None
    assert any_store.holder_alive(f"p={boot}/4026531999/{pid}/{start}") is None
    assert any_store.holder_alive("p=garbage") is None
    assert any_store.holder_alive(None) is None


def holder_worker(kind: str, directory: str, ready: str) -> None:
    """Hold the lease on "k" and mark a refresh token in flight, then wait to be killed."""
    store = LIVENESS_KINDS[kind](Path(directory))
    assert store.acquire_lease("k", "doomed", 60)
    store.mark_in_flight("k", "doomed", "fp-doomed", 60)
    Path(ready).write_text("ready")
    time.sleep(120)


def _without_process_part(holder: str | None) -> str | None:
    """The holder as a process on another host sees it: only the store's session signal."""
    parts = [part for part in (holder or "").split() if not part.startswith("p=")]
    return " ".join(parts) or None


@pytest.mark.parametrize("kind", [*SHARED_KINDS, "encrypted"])
@pytest.mark.e2e
def test_killed_holder_is_provably_dead(kind: str, tmp_path: Path) -> None:
    """SIGKILL the process that holds a lease and has a refresh token in flight: from this host
    it is provably dead at once (pid gone); from another host too where the store has a session
    signal (PostgreSQL advisory lock, Redis client id), otherwise unknown (never "alive")."""
    store = LIVENESS_KINDS[kind](tmp_path)
    ready = tmp_path / "holder-ready"
    context = multiprocessing.get_context("spawn")
    holder = context.Process(target=holder_worker, args=(kind, str(tmp_path), str(ready)))
    holder.start()
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert holder.is_alive() and time.monotonic() < deadline, "holder never got ready"
            time.sleep(0.01)
        lease, flight = store.lease_holder("k"), store.in_flight("k")
        assert lease is not None and lease.owner == "doomed"
        assert flight is not None and flight.fingerprint == "fp-doomed"
        assert store.holder_alive(lease.holder) is True
        assert store.holder_alive(flight.holder) is True
        remote = _without_process_part(lease.holder)
        session = kind in ("redis", "postgres")
        assert store.holder_alive(remote) is (True if session else None)
        assert holder.pid is not None
        os.kill(holder.pid, 9)
        # Wait for its death without reaping it: the zombie left behind is dead too.
        os.waitid(os.P_PID, holder.pid, os.WEXITED | os.WNOWAIT)
        assert store.holder_alive(lease.holder) is False
        assert store.holder_alive(flight.holder) is False
        if session:  # the server notices the closed connection within moments
            deadline = time.monotonic() + 10
            while store.holder_alive(remote) is not False:
                assert time.monotonic() < deadline, "the server never noticed the dead client"
                time.sleep(0.01)
        else:
            assert store.holder_alive(remote) is None
        # Taking over the dead holder's lease: only from that holder.
        assert not store.acquire_lease("k", "survivor", 30)
        assert store.take_over_lease("k", "doomed", "survivor", 30)
        assert store.lease_holder("k").owner == "survivor"  # type: ignore[union-attr]
    finally:
        holder.kill()
        holder.join()
        store.close()


# --- corruption -----------------------------------------------------------------------------


def assert_corrupt_and_untouched(path: Path, attempt: Callable[[], object]) -> StoreCorrupted:
    before = path.read_bytes()
    with pytest.raises(StoreCorrupted) as caught:
        attempt()
    assert str(path) in str(caught.value)
    assert path.read_bytes() == before
    return caught.value


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"",
        b"\xff\xfe garbage",
        b"[]",
        b'{"records": []}',
        b'{"tokenward": 99, "records": {}}',
        b'{"records": {"a": {"key": "a"}}}',
        b'{"records": {"a": {"key": "a", "version": "2"}}}',
        b'{"records": {"a": {"key": "a", "version": 1, "state": "weird"}}}',
        b'{"records": {"a": {"key": "b", "version": 1}}}',
        b'{"records": {"a": {"key": "a", "version": 1, "extra": []}}}',
    ],
    ids=[
        "garbage",
        "empty",
        "binary",
        "list",
        "records-list",
        "newer-format",
        "missing-version",
        "version-string",
        "bad-state",
        "key-mismatch",
        "extra-not-object",
    ],
)
def test_corrupt_json_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "tokens.json"
    path.write_bytes(content)
    store = JsonFileStore(path)
    assert_corrupt_and_untouched(path, lambda: store.load("a"))
    assert_corrupt_and_untouched(path, lambda: store.compare_and_set(Record("a", 2), 1))
    assert_corrupt_and_untouched(path, lambda: store.delete("a"))
    assert_corrupt_and_untouched(path, store.keys)


def test_corrupt_json_names_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_bytes(b'{"records": {"a": {"key": "a", "version": 1, "access_token": ["SECRET1"]}}}')
    error = assert_corrupt_and_untouched(path, lambda: JsonFileStore(path).load("a"))
    assert "SECRET1" not in str(error)
    assert "access_token" in str(error)


def test_not_a_sqlite_database(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    path.write_bytes(b"this is not a database\n" * 100)
    assert_corrupt_and_untouched(path, lambda: SQLiteStore(path))
    assert sorted(os.listdir(tmp_path)) == ["tokens.db"]


def test_sqlite_without_our_schema(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE things (x)")
    conn.close()
    error = assert_corrupt_and_untouched(path, lambda: SQLiteStore(path))
    assert "things" in str(error)


def test_sqlite_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    conn.close()
    error = assert_corrupt_and_untouched(path, lambda: SQLiteStore(path))
    assert "99" in str(error) and "upgrade" in str(error)


def test_sqlite_closed_store_refuses(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "tokens.db")
    store.close()
    with pytest.raises(StoreError):
        store.load("k")


def is_open(conn: sqlite3.Connection) -> bool:
    try:
        conn.total_changes  # noqa: B018 - raises on a closed connection
    except sqlite3.ProgrammingError:
        return False
    return True


def test_sqlite_connection_per_thread_is_dropped_with_the_thread(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "tokens.db")
    threads = [threading.Thread(target=store.load, args=("k",)) for _ in range(20)]
    for thread in threads:
        thread.start()
        thread.join()
    assert len([c for c in store._connections if is_open(c)]) == 1  # the main thread's
    store.close()


def test_malformed_dotenv_state_line(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_bytes(
        b"# tokens\n"
        b"TOKENWARD_ML_ACCESS_TOKEN=SECRET-ACCESS\n"
        b'TOKENWARD_STATE_ML=\'{"key": "ml", "version": \'\n'
    )
    store = DotenvStore(path)
    error = assert_corrupt_and_untouched(path, lambda: store.load("ml"))
    assert "line 3" in str(error) and "SECRET-ACCESS" not in str(error)
    assert_corrupt_and_untouched(path, lambda: store.compare_and_set(Record("ml", 2), 1))
    assert_corrupt_and_untouched(path, store.keys)


def test_dotenv_expiry_not_a_number(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_bytes(b"TOKENWARD_ML_ACCESS_TOKEN=tok\nTOKENWARD_ML_EXPIRES_AT=tomorrow\n")
    error = assert_corrupt_and_untouched(path, lambda: DotenvStore(path).load("ml"))
    assert "line 2" in str(error) and "TOKENWARD_ML_EXPIRES_AT" in str(error)


# --- dotenv specifics -----------------------------------------------------------------------

ML_MAPPING = {
    "ml": {
        "access_token": "ML_ACCESS_TOKEN",
        "refresh_token": "ML_REFRESH_TOKEN",
        "expires_at": "ML_EXPIRES_AT",
    }
}

USER_ENV = (
    "# MercadoLibre app - keep this file private\n"
    'export APP_NAME="Mi Tienda"   # quoted, with a comment\n'
    "\n"
    "ML_CLIENT_ID=1234567890\n"
    "ML_CLIENT_SECRET='s3cr3t value'\n"
    'export ML_ACCESS_TOKEN="APP_USR-old-access"  # refreshed by tokenward\n'
    "ML_REFRESH_TOKEN=TG-old-refresh\n"
    "\t\n"
    "UNRELATED_PATH=/usr/local/bin:/usr/bin\n"
    'MULTILINE="first\n'
    'second"\n'
    "# the end"
)


def shell_values(path: Path, *names: str) -> list[str]:
    """What bash sees after `source`-ing the file."""
    printed = " ".join(f'"${name}"' for name in names)
    script = f"set -a; . {path}; printf '%s\\0' {printed}"
    out = subprocess.run(["bash", "-c", script], capture_output=True, check=True, text=True)
    return out.stdout.split("\0")[:-1]


@pytest.mark.e2e
def test_dotenv_keeps_the_users_lines(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text(USER_ENV)
    store = DotenvStore(path, mapping=ML_MAPPING)
    record = store.load("ml")
    assert record is not None and record.version == 1
    assert (record.access_token, record.refresh_token) == ("APP_USR-old-access", "TG-old-refresh")
    for round_ in range(3):
        record = record.successor(
            access_token=f"APP_USR-new-{round_}",
            refresh_token=f"TG-new-{round_}",
            expires_at=1700000000 + round_,
        )
        assert store.compare_and_set(record, record.version - 1)

    expected = USER_ENV.splitlines(keepends=True)
    expected[5] = "export ML_ACCESS_TOKEN=APP_USR-new-2  # refreshed by tokenward\n"
    expected[6] = "ML_REFRESH_TOKEN=TG-new-2\n"
    expected[-1] += "\n"
    lines = path.read_text().splitlines(keepends=True)
    assert lines[: len(expected)] == expected
    assert lines[len(expected)] == "ML_EXPIRES_AT=1700000002\n"
    assert lines[len(expected) + 1].startswith("TOKENWARD_STATE_ML='{")
    assert len(lines) == len(expected) + 2

    loaded = store.load("ml")
    assert loaded is not None and loaded.to_dict() == record.to_dict()
    access, refresh, app, state = shell_values(
        path, "ML_ACCESS_TOKEN", "ML_REFRESH_TOKEN", "APP_NAME", "TOKENWARD_STATE_ML"
    )
    assert (access, refresh, app) == ("APP_USR-new-2", "TG-new-2", "Mi Tienda")
    assert json.loads(state)["version"] == 4


@pytest.mark.e2e
def test_dotenv_values_read_the_same_in_bash(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    store = DotenvStore(path, mapping={"x": {"access_token": "A", "scope": "S"}})
    odd = ["plain-token_1.2~3", "has $dollar and space", "it's", "back\\slash", "é-unicode"]
    record: Record | None = None
    for value in odd:
        if record is None:
            record = Record("x", 1, access_token=value, scope=value, last_error="it's \\ $x")
        else:
            record = record.successor(access_token=value, scope=value)
        assert store.compare_and_set(record, record.version - 1)
        access, scope, state = shell_values(path, "A", "S", "TOKENWARD_STATE_X")
        assert access == scope == value
        assert json.loads(state)["last_error"] == "it's \\ $x"
        if python_dotenv is not None:
            values = python_dotenv.dotenv_values(path)
            assert values["A"] == values["S"] == value
            state_x = values["TOKENWARD_STATE_X"]
            assert state_x is not None and json.loads(state_x) == json.loads(state)
        loaded = store.load("x")
        assert loaded is not None and loaded.to_dict() == record.to_dict()


def test_dotenv_refuses_a_value_no_quoting_can_carry(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    store = DotenvStore(path)
    assert store.compare_and_set(Record("x", 1, access_token="ok"), 0)
    before = path.read_bytes()
    with pytest.raises(StoreError) as caught:
        store.compare_and_set(Record("x", 2, access_token="it's $HOME"), 1)
    assert "$HOME" not in str(caught.value)
    assert path.read_bytes() == before


def test_dotenv_python_dotenv_reads_it(tmp_path: Path) -> None:
    dotenv = pytest.importorskip("dotenv")  # not a dependency; installed in some dev envs
    path = tmp_path / ".env"
    path.write_text(USER_ENV)
    store = DotenvStore(path, mapping=ML_MAPPING)
    record = full_record("ml")
    assert store.compare_and_set(replace(record, version=2), 1)
    values = dotenv.dotenv_values(path)
    assert values["ML_ACCESS_TOKEN"] == record.access_token
    assert values["ML_REFRESH_TOKEN"] == record.refresh_token
    assert values["APP_NAME"] == "Mi Tienda"
    state = json.loads(values["TOKENWARD_STATE_ML"])
    assert state["extra"] == record.extra and state["last_error"] == record.last_error


def test_dotenv_takes_over_a_hand_made_mercadolibre_file(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    original = (
        "ML_CLIENT_ID=1234567890\n"
        "ML_CLIENT_SECRET=abcdefSECRET\n"
        "ML_ACCESS_TOKEN=APP_USR-1234567890-hand\n"
        "ML_REFRESH_TOKEN=TG-hand-made\n"
    )
    path.write_text(original)
    os.chmod(path, 0o640)
    store = DotenvStore(path, mapping=ML_MAPPING)
    record = store.load("ml")
    assert record is not None
    assert record.version == 1 and record.state == "ok" and record.expires_at is None
    assert (record.access_token, record.refresh_token) == (
        "APP_USR-1234567890-hand",
        "TG-hand-made",
    )
    assert store.keys() == ["ml"]
    assert not store.compare_and_set(Record("ml", 1, access_token="x"), 0)

    rotated = record.successor(access_token="APP_USR-new", refresh_token="TG-new", expires_at=1.5e9)
    assert store.compare_and_set(rotated, 1)
    text = path.read_text()
    assert text.startswith("ML_CLIENT_ID=1234567890\nML_CLIENT_SECRET=abcdefSECRET\n")
    assert "TOKENWARD_STATE_ML=" in text and "ML_EXPIRES_AT=1500000000\n" in text
    loaded = store.load("ml")
    assert loaded is not None and loaded.version == 2 and loaded.expires_at == 1.5e9
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # the user's mode is kept


def test_dotenv_keeps_crlf_and_export(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_bytes(b"# win\r\nexport TOKENWARD_K_ACCESS_TOKEN=old\r\nOTHER=1")
    store = DotenvStore(path)
    record = store.load("k")
    assert record is not None
    assert store.compare_and_set(record.successor(access_token="new"), 1)
    data = path.read_bytes()
    assert data.startswith(b"# win\r\nexport TOKENWARD_K_ACCESS_TOKEN=new\r\nOTHER=1\r\n")
    assert data.endswith(b"\r\n") and b"TOKENWARD_STATE_K='" in data


def test_dotenv_through_a_symlink_keeps_the_link(tmp_path: Path) -> None:
    real = tmp_path / "secrets" / "app.env"
    real.parent.mkdir()
    real.write_text("OTHER=1\n")
    link = tmp_path / ".env"
    link.symlink_to(real)
    store = DotenvStore(link)
    assert store.compare_and_set(Record("k", 1, access_token="t"), 0)
    assert link.is_symlink()
    assert real.read_text().startswith("OTHER=1\nTOKENWARD_K_ACCESS_TOKEN=t\n")


@pytest.mark.parametrize("kind", ["json", "dotenv"])
def test_unreadable_lease_file_means_no_lease(kind: str, tmp_path: Path) -> None:
    store = STORE_KINDS[kind](tmp_path)
    assert store.compare_and_set(Record("k", 1, access_token="t"), 0)
    leases = Path(store.location + ".leases")
    leases.write_text("{torn")
    assert store.acquire_lease("k", "a", 30)
    assert not store.acquire_lease("k", "b", 30)
    record = store.load("k")
    assert record is not None and record.access_token == "t"


def test_dotenv_keys_that_share_variables_are_refused(tmp_path: Path) -> None:
    store = DotenvStore(tmp_path / ".env")
    assert store.compare_and_set(Record("a-b", 1, access_token="t"), 0)
    with pytest.raises(StoreError, match="give one of them a mapping"):
        store.load("a_b")


def test_dotenv_rejects_a_bad_mapping(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DotenvStore(tmp_path / ".env", mapping={"x": {"password": "PW"}})
    with pytest.raises(ValueError):
        DotenvStore(tmp_path / ".env", mapping={"x": {"access_token": "NOT A NAME"}})


# --- file modes -----------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_new_files_are_private(kind: str, tmp_path: Path) -> None:
    directory = tmp_path / "nested" / "dir"
    store = STORE_KINDS[kind](directory)
    assert store.compare_and_set(Record("k", 1, access_token="t"), 0)
    assert store.acquire_lease("k", "a", 30)
    assert mode(directory) == 0o700
    for path in directory.iterdir():
        assert mode(path) == 0o600, path.name
    store.close()


def test_json_file_is_made_private_again(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    store = JsonFileStore(path)
    assert store.compare_and_set(Record("k", 1), 0)
    os.chmod(path, 0o644)
    assert store.compare_and_set(Record("k", 2), 1)
    assert mode(path) == 0o600


def test_no_temp_files_left_behind(tmp_path: Path) -> None:
    for kind in FILE_KINDS:
        store = STORE_KINDS[kind](tmp_path)
        assert store.compare_and_set(Record("k", 1), 0)
        store.close()
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_temp_files_of_killed_writers_are_swept(tmp_path: Path) -> None:
    """A writer killed mid-write leaves a private temp file holding secrets; opening the store
    removes old ones and keeps a fresh one (it may belong to a write in progress)."""
    for kind in ("json", "dotenv"):  # the stores written by atomic_write
        folder = tmp_path / kind
        folder.mkdir()
        name = STORE_KINDS[kind](folder).location.rsplit("/", 1)[-1]
        old, fresh = folder / f".{name}.dead.tmp", folder / f".{name}.live.tmp"
        for leftover in (old, fresh):
            leftover.write_bytes(b"secret-bytes")
        os.utime(old, (time.time() - 3600, time.time() - 3600))
        STORE_KINDS[kind](folder).close()
        assert not old.exists(), kind
        assert fresh.exists(), kind


# --- open_store -----------------------------------------------------------------------------


def test_open_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert isinstance(open_store("memory://"), MemoryStore)
    cases: list[tuple[str, type[Store], str]] = [
        (f"sqlite://{tmp_path}/abs.db", SQLiteStore, f"{tmp_path}/abs.db"),
        ("sqlite://relative.db", SQLiteStore, "relative.db"),
        (f"file://{tmp_path}/abs.json", JsonFileStore, f"{tmp_path}/abs.json"),
        ("file://relative.json", JsonFileStore, "relative.json"),
        ("dotenv://.env", DotenvStore, ".env"),
        (f"dotenv://{tmp_path}/abs/.env", DotenvStore, f"{tmp_path}/abs/.env"),
        ("file://with%20space.json", JsonFileStore, "with space.json"),
    ]
    for url, cls, location in cases:
        store = open_store(url)
        assert isinstance(store, cls) and store.location == location, url
        assert store.compare_and_set(Record("k", 1), 0)
        assert Path(location).exists() or Path(tmp_path, location).exists()
        store.close()


def test_open_store_rejects_unknown_schemes(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError) as caught:
        open_store("mongodb://localhost:27017/0")
    assert "'mongodb'" in str(caught.value)
    for scheme in ["memory://", "sqlite://", "file://", "dotenv://", "redis://", "postgresql://"]:
        assert scheme in str(caught.value)
    with pytest.raises(ValueError, match="not a store URL"):
        open_store("tokens.db")
    with pytest.raises(ValueError, match="no path"):
        open_store("sqlite://")

    monkeypatch.setitem(SCHEMES, "mongodb", lambda url: MemoryStore())
    assert isinstance(open_store("mongodb://localhost:27017/0"), MemoryStore)
    monkeypatch.delitem(SCHEMES, "mongodb")
    register_scheme("Custom", lambda url: MemoryStore())
    assert isinstance(open_store("custom://x"), MemoryStore)
    del SCHEMES["custom"]


# --- network stores -------------------------------------------------------------------------


@pytest.mark.e2e
def test_open_store_network_urls(tmp_path: Path) -> None:
    require("redis")
    require("postgres")
    from tokenward.stores import PostgresStore, RedisStore

    name = _isolated_name(tmp_path)
    REDIS_PREFIXES.add(name + ":")
    POSTGRES_SCHEMAS.add(name)
    redis_store = open_store(f"{REDIS_URL}?prefix={name}:")
    assert isinstance(redis_store, RedisStore) and redis_store.prefix == name + ":"
    pg_store = open_store(f"{POSTGRES_URL}?schema={name}")
    assert isinstance(pg_store, PostgresStore) and pg_store.schema == name
    assert pg_store.session_liveness  # direct: it can prove a holder dead
    quiet = open_store(f"{POSTGRES_URL}?schema={name}&liveness=off")
    assert isinstance(quiet, PostgresStore) and not quiet.session_liveness
    with pytest.raises(ValueError, match="liveness=off"):
        open_store(f"{POSTGRES_URL}?schema={name}&liveness=maybe")
    for store in (redis_store, pg_store, quiet):
        assert store.compare_and_set(Record("k", 1, access_token="t"), 0) is (store is not quiet)
        assert name in store.location
        store.close()


UNREACHABLE = [
    ("redis", "redis://someone:hunter2-SECRET@127.0.0.1:1/0"),
    ("postgres", "postgresql://someone:hunter2-SECRET@127.0.0.1:1/test"),
]


@pytest.mark.parametrize(("server", "url"), UNREACHABLE, ids=[s for s, _ in UNREACHABLE])
def test_unreachable_server_error_names_url_not_password(server: str, url: str) -> None:
    """No server needed: nothing listens on port 1."""
    pytest.importorskip("redis" if server == "redis" else "psycopg_pool")
    store = open_store(url)
    assert "hunter2" not in store.location and "hunter2" not in repr(store)
    with pytest.raises(StoreError) as caught:
        store.load("k")
    message = str(caught.value)
    assert "127.0.0.1:1" in message or "port 1" in message
    assert "someone@127.0.0.1:1" in message
    assert "hunter2" not in message
    store.close()


@pytest.mark.e2e
async def test_unreachable_server_async(tmp_path: Path) -> None:
    pytest.importorskip("redis")
    pytest.importorskip("psycopg_pool")
    for _, url in UNREACHABLE:
        store = open_store(url)
        with pytest.raises(StoreError) as caught:
            await store.aload("k")
        assert "hunter2" not in str(caught.value)
        await store.aclose()


@pytest.mark.e2e
def test_postgres_concurrent_first_use_migrates_once(tmp_path: Path) -> None:
    require("postgres")
    import psycopg
    from psycopg import sql

    from tokenward.stores.postgres import LATEST, PostgresStore

    schema = _isolated_name(tmp_path)
    POSTGRES_SCHEMAS.add(schema)
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def first_use(index: int) -> None:
        store = PostgresStore(POSTGRES_URL, schema=schema)
        try:
            barrier.wait()
            assert store.compare_and_set(Record(f"k{index}", 1), 0)
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=first_use, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with psycopg.connect(POSTGRES_URL) as conn:
        query = sql.SQL("SELECT version FROM {}.schema_migrations ORDER BY version")
        rows = conn.execute(query.format(sql.Identifier(schema))).fetchall()
    assert [row[0] for row in rows] == list(range(1, LATEST + 1))


@pytest.mark.e2e
def test_postgres_newer_schema_is_refused(tmp_path: Path) -> None:
    require("postgres")
    import psycopg
    from psycopg import sql

    store = _postgres(tmp_path)
    assert store.compare_and_set(Record("k", 1), 0)
    store.close()
    schema = _isolated_name(tmp_path)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        query = sql.SQL("INSERT INTO {}.schema_migrations (version) VALUES (99)")
        conn.execute(query.format(sql.Identifier(schema)))
    newer = _postgres(tmp_path)
    with pytest.raises(StoreCorrupted, match="upgrade"):
        newer.load("k")
    newer.close()


@pytest.mark.e2e
def test_redis_keys_come_from_the_index_not_scan(tmp_path: Path) -> None:
    store = _redis(tmp_path)
    for key in ["b", "a:2", "a:1", "é"]:
        assert store.compare_and_set(Record(key, 1), 0)
    assert store.keys() == ["a:1", "a:2", "b", "é"]
    assert store.keys("a:") == ["a:1", "a:2"]
    assert store.delete("a:1")
    assert store.keys("a") == ["a:2"]
    store.close()


@pytest.mark.e2e
def test_importing_stores_needs_no_network_extras() -> None:
    code = (
        "import sys, tokenward.stores; "
        "assert 'redis' not in sys.modules and 'psycopg' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- compound operations: the refresh protocol's store steps in one round trip -------------------
def test_begin_refresh_takes_the_lease_reads_and_marks(any_store: Store) -> None:
    store = any_store
    assert store.compare_and_set(Record("k", 1, access_token="a1", refresh_token="r1"), 0)
    begun = store.begin_refresh("k", "a", 30, InFlightMark(1, "fp-r1", 20))
    assert begun.acquired and begun.marked and begun.in_flight is None
    assert begun.record is not None and begun.record.refresh_token == "r1"  # decrypted, too
    assert store.lease_holder("k").owner == "a"  # type: ignore[union-attr]
    flight = store.in_flight("k")
    assert flight is not None and (flight.owner, flight.fingerprint) == ("a", "fp-r1")
    assert 15 < flight.expires_in <= 20
    # Another owner: no lease, the record all the same (to adopt), no mark.
    other = store.begin_refresh("k", "b", 30, InFlightMark(1, "fp-r1", 20))
    assert not other.acquired and not other.marked
    assert other.record is not None and other.record.version == 1
    assert store.in_flight("k").owner == "a"  # type: ignore[union-attr]


def test_begin_refresh_never_marks_over_another_owners_same_token(any_store: Store) -> None:
    store = any_store
    assert store.compare_and_set(Record("k", 1, refresh_token="r1"), 0)
    store.mark_in_flight("k", "stalled", "fp-r1", 20)  # a stalled leader sent r1
    begun = store.begin_refresh("k", "a", 30, InFlightMark(1, "fp-r1", 20))
    assert begun.acquired and not begun.marked
    assert begun.in_flight is not None and begun.in_flight.owner == "stalled"
    assert store.in_flight("k").owner == "stalled"  # type: ignore[union-attr]
    assert store.release_lease("k", "a")
    # A record that moved on since it was claimed (version 2): no mark either.
    assert store.compare_and_set(Record("k", 2, refresh_token="r2"), 1)
    moved = store.begin_refresh("k", "a", 30, InFlightMark(1, "fp-r1", 20))
    assert moved.acquired and not moved.marked and moved.record.version == 2  # type: ignore[union-attr]
    # Another token in flight (a spent one) does not hold up r2.
    again = store.begin_refresh("k", "a", 30, InFlightMark(2, "fp-r2", 20))
    assert again.marked and store.in_flight("k").fingerprint == "fp-r2"  # type: ignore[union-attr]


def test_finish_refresh_writes_clears_and_releases_only_when_it_wins(any_store: Store) -> None:
    store = any_store
    assert store.compare_and_set(Record("k", 1, refresh_token="r1"), 0)
    assert store.begin_refresh("k", "a", 30, InFlightMark(1, "fp-r1", 20)).marked
    assert not store.finish_refresh(Record("k", 3, refresh_token="x"), 2, "a")  # lost
    assert store.lease_holder("k").owner == "a"  # type: ignore[union-attr]  # untouched
    assert store.in_flight("k") is not None
    assert store.load("k").refresh_token == "r1"  # type: ignore[union-attr]
    assert store.finish_refresh(Record("k", 2, access_token="a2", refresh_token="r2"), 1, "a")
    assert store.load("k").refresh_token == "r2"  # type: ignore[union-attr]
    assert store.in_flight("k") is None and store.lease_holder("k") is None
    assert store.acquire_lease("k", "b", 30)
    # Somebody else's lease and in-flight record are never dropped by our finish.
    store.mark_in_flight("k", "b", "fp-r2", 20)
    assert store.finish_refresh(Record("k", 3, refresh_token="r3"), 2, "a")
    assert store.lease_holder("k").owner == "b"  # type: ignore[union-attr]
    assert store.in_flight("k").owner == "b"  # type: ignore[union-attr]
    # A first write through finish, and keeping the in-flight record when asked to.
    assert store.acquire_lease("new", "a", 30)
    store.mark_in_flight("new", "a", "fp", 20)
    assert store.finish_refresh(Record("new", 1, refresh_token="n1"), 0, "a", clear_in_flight=False)
    assert store.in_flight("new") is not None and store.lease_holder("new") is None


def test_claim_due_records_hands_out_records(any_store: Store) -> None:
    store = any_store
    now = time.time()
    for i, expires in enumerate([now - 5, now - 1, now + 3600]):
        record = Record(
            f"k{i}",
            1,
            access_token=f"a{i}",
            refresh_token=f"r{i}",
            expires_at=expires,
            obtained_at=expires - 3600,
        )
        assert store.compare_and_set(record, 0)
    claimed = store.claim_due_records(now, 10, "w", 60)
    assert [(r.key, r.refresh_token) for r in claimed] == [("k0", "r0"), ("k1", "r1")]
    assert store.claim_due_records(now, 10, "w", 60) == []  # claimed until now + 60


async def test_compound_operations_async(any_store: Store) -> None:
    store = any_store
    assert await store.acompare_and_set(Record("k", 1, refresh_token="r1", expires_at=1.0), 0)
    begun = await store.abegin_refresh("k", "a", 30, InFlightMark(1, "fp-r1", 20))
    assert begun.acquired and begun.marked and begun.record.refresh_token == "r1"  # type: ignore[union-attr]
    assert not (await store.abegin_refresh("k", "b", 30)).acquired
    assert await store.afinish_refresh(Record("k", 2, refresh_token="r2"), 1, "a")
    assert await store.ain_flight("k") is None and await store.alease_holder("k") is None
    assert await store.acompare_and_set(Record("d", 1, refresh_token="rd", expires_at=1.0), 0)
    claimed = await store.aclaim_due_records(time.time(), 10, "w", 60)
    assert [record.key for record in claimed] == ["d"]
