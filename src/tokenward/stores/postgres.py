"""A store in PostgreSQL, shared by every process and machine that reaches the database.

Tables live in their own schema (default `tokenward`), created and migrated on first use.
Migrations are numbered; each store applies the missing ones inside one transaction that first
takes `pg_advisory_xact_lock` on a key derived from the schema name, so several processes
starting at once queue up and only the first does the work. A schema migrated by a newer
tokenward is refused, never written to.

Every operation is ONE statement on a pooled autocommit connection (`begin_refresh`: three in
one pipeline), so no lock or transaction is ever held between calls:

- compare-and-set: `UPDATE ... WHERE key = %s AND version = %s`, or for a new record
  `INSERT ... ON CONFLICT DO NOTHING`; the row count says who won. The commit is durable when
  the statement returns (invariant 2, with PostgreSQL's default `synchronous_commit`).
- leases are rows `(key, owner, expires_at)` timed by the database clock (`now()`), so clients'
  clocks do not matter. Acquiring is one upsert that only overwrites a lease held by the same
  owner or already expired; renew and release are owner-checked.
- the due-queue is the indexed column `records.due_at` (migration 2), set by every
  compare-and-set (`due_time`). `claim_due` is one `UPDATE ... FROM (SELECT ... ORDER BY due_at
  LIMIT n FOR UPDATE SKIP LOCKED)`: concurrent workers skip each other's rows instead of
  waiting, and each claimed row's `due_at` moves to `now + ttl`.

- liveness (migration 3): a lease row records its holder's identity (`tokenward.liveness`),
  including a session advisory lock that a dedicated connection of the holding process keeps;
  the `in_flight` table records a refresh token sent and not yet answered. Reached through a
  pooler (the server's port differs from the one we connected to, e.g. PgBouncer in
  transaction mode) no session signal is recorded and server-side prepared statements are off.

The module is longer than most (about 650 lines; its SQL is in `postgres_sql.py`) because it
carries the store contract twice, natively: the sync methods use a `psycopg_pool.ConnectionPool`;
the async ones (the asyncio refresher's path) an `AsyncConnectionPool`
per event loop (an async connection belongs to the loop that opened it). Pools are opened on
first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from ..errors import StoreCorrupted, StoreError
from .base import Begun, Claim, InFlightMark, Record, Store, check_successor, due_time
from .postgres_sql import LATEST, MIGRATIONS, Statements
from .record import record_from_data
from .url import redact_url

__all__ = ["LATEST", "MIGRATIONS", "PostgresStore"]


_PORT = "SELECT current_setting('port')::int"
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def _lock_id(schema: str) -> int:
    digest = hashlib.sha256(f"tokenward:migrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresStore(Store):
    """Records and leases in PostgreSQL.

    `url` is a `postgresql://` URL (or a libpq conninfo string). `timeout` bounds how long an
    operation waits for a connection; `max_size` caps each pool.
    """

    native_async = True

    def __init__(
        self,
        url: str,
        *,
        schema: str = "tokenward",
        timeout: float = 10.0,
        max_size: int = 10,
        liveness: bool = True,
    ) -> None:
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(
                f"schema {schema!r} is not a plain SQL identifier (letters, digits, _; max 63)"
            )
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError:
            raise ValueError("not a valid PostgreSQL URL or conninfo string") from None
        password = params.get("password")
        self._password = str(password) if password else None
        if "://" in url:
            self.location = redact_url(url)
        else:
            self.location = make_conninfo(
                "", **{k: v for k, v in params.items() if k != "password"}
            )
        if schema != "tokenward":
            self.location += ("&" if "?" in self.location else "?") + f"schema={schema}"
        self._url = url
        self.schema = schema
        self._timeout = timeout
        self._max_size = max_size
        self._sql = Statements(schema)
        self._guard = threading.Lock()
        self._liveness = liveness
        #: Reached through a connection pooler (see `_check_direct`).
        self._pooled = False
        self._live_lock = threading.Lock()
        self._live: psycopg.Connection[Any] | None = None
        self._live_pid = 0
        self._live_key: str | None = None
        self._live_checked: tuple[int, float] = (0, 0.0)
        self._pool: psycopg_pool.ConnectionPool | None = None
        self._async: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, asyncio.Task[psycopg_pool.AsyncConnectionPool]
        ] = weakref.WeakKeyDictionary()

    # --- sync API -----------------------------------------------------------------------------

    def load(self, key: str) -> Record | None:
        rows = self._read("read", self._sql.load, (key,))
        return None if not rows else self._record_of(key, rows[0][0], rows[0][1])

    def compare_and_set(self, record: Record, expected_version: int) -> bool:
        check_successor(record, expected_version)
        statement, params = self._cas(record, expected_version)
        with self._errors("compare-and-set"), self._connection() as conn:
            return conn.execute(statement, params).rowcount == 1

    def delete(self, key: str) -> bool:
        with self._errors("delete"), self._connection() as conn:
            return conn.execute(self._sql.delete, {"k": key}).rowcount == 1

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(row[0] for row in self._read("list keys", self._sql.keys, (prefix,)))

    def acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        with self._errors("acquire lease"), self._connection() as conn:
            params = (key, owner, float(ttl), self._holder())
            return conn.execute(self._sql.acquire, params).rowcount == 1

    def renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        with self._errors("renew lease"), self._connection() as conn:
            return conn.execute(self._sql.renew, (float(ttl), key, owner)).rowcount == 1

    def release_lease(self, key: str, owner: str) -> bool:
        with self._errors("release lease"), self._connection() as conn:
            return conn.execute(self._sql.release, (key, owner)).rowcount == 1

    def lease_holder(self, key: str) -> Claim | None:
        rows = self._read("read lease", self._sql.holder, (key,))
        return Claim(rows[0][0], rows[0][1], rows[0][2]) if rows else None

    def take_over_lease(self, key: str, dead_owner: str, owner: str, ttl: float) -> bool:
        params = (owner, float(ttl), self._holder(), key, dead_owner)
        with self._errors("take over lease"), self._connection() as conn:
            return conn.execute(self._sql.take_over, params).rowcount == 1

    def mark_in_flight(self, key: str, owner: str, fingerprint: str, ttl: float) -> None:
        params = (key, owner, fingerprint, float(ttl), self._holder())
        with self._errors("mark in flight"), self._connection() as conn:
            conn.execute(self._sql.mark, params)

    def in_flight(self, key: str) -> Claim | None:
        rows = self._read("read in-flight record", self._sql.in_flight, (key,))
        return Claim(rows[0][0], rows[0][1], rows[0][2], rows[0][3]) if rows else None

    def clear_in_flight(self, key: str, owner: str) -> bool:
        with self._errors("clear in flight"), self._connection() as conn:
            return conn.execute(self._sql.clear, (key, owner)).rowcount == 1

    # --- liveness -----------------------------------------------------------------------------

    @property
    def session_liveness(self) -> bool:
        """True when this store can prove a lease holder on another host dead: it reaches the
        server directly (not through a pooler such as PgBouncer) and `liveness` is on."""
        self._sync_pool()
        return self._session() is not None

    def _session(self) -> str | None:
        """A session-level advisory lock that a dedicated connection of this process holds for
        as long as the process runs: PostgreSQL releases it when the connection ends, and the
        kernel ends a dead process's connections. Checked at most once a second (a reconnect
        takes a new lock). None through a connection pooler in transaction mode (PgBouncer):
        there a server session outlives its client and is shared, so it proves nothing."""
        if not self._liveness:
            return None
        second = (os.getpid(), time.monotonic() // 1)
        with self._live_lock:
            if self._live_checked == second:
                return self._live_key
            self._live_checked = second
            try:
                self._live_key = self._live_session()
            except psycopg.Error:
                self._drop_live()
            return self._live_key

    def _live_session(self) -> str | None:
        conn = self._live
        if conn is not None and (conn.closed or self._live_pid != os.getpid()):
            conn = None
        if conn is not None:
            conn.execute("SELECT 1")
            return self._live_key
        self._live_key = None
        conn = psycopg.connect(self._url, **self._connect_options())
        self._live, self._live_pid = conn, os.getpid()
        self._check_direct(conn.info.port, conn.execute(_PORT).fetchone())
        if not self._liveness:
            self._drop_live()
            return None
        lock = secrets.randbelow(2**62) + 1
        conn.execute("SELECT pg_advisory_lock(%s)", (lock,))
        return f"pg{lock}"

    def _drop_live(self) -> None:
        conn, self._live, self._live_key = self._live, None, None
        if conn is not None and self._live_pid == os.getpid():
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _session_alive(self, session: str) -> bool | None:
        if not session.startswith("pg") or not session[2:].isdigit():
            return None
        lock = int(session[2:])
        try:
            rows = self._read(
                "check liveness", self._sql.advisory_held, (lock >> 32, lock & 0xFFFFFFFF)
            )
        except StoreError:
            return None
        return bool(rows and rows[0][0])

    def schedule(self, key: str, due_at: float | None) -> None:
        with self._errors("schedule"), self._connection() as conn:
            conn.execute(self._sql.schedule, (due_at, key))

    def claim_due(self, now: float, limit: int, owner: str, ttl: float) -> list[str]:
        if limit <= 0:
            return []
        params = (float(now + ttl), owner, float(now), int(limit))
        with self._errors("claim due keys"), self._connection() as conn:
            rows = conn.execute(self._sql.claim, params).fetchall()
        return [row[0] for row in rows]

    def begin_refresh(
        self, key: str, owner: str, ttl: float, mark: InFlightMark | None = None
    ) -> Begun:
        """Three statements in one pipeline (one round trip): the lease, then (a new snapshot,
        so a refresh committed while we waited for the lease is seen) the record and in-flight
        record, then the conditional mark."""
        holder = self._holder()
        lease = (key, owner, float(ttl), holder)
        marking = self._mark_params(key, owner, holder, mark)
        with self._errors("begin refresh"), self._connection() as conn:
            with conn.pipeline():
                acquired = conn.execute(self._sql.acquire, lease)
                seen = conn.execute(self._sql.begun, {"k": key})
                marked = conn.execute(self._sql.mark_if, marking) if marking else None
            return self._begun(key, acquired.rowcount == 1, seen.fetchone(), marked)

    def finish_refresh(
        self, record: Record, expected_version: int, owner: str, clear_in_flight: bool = True
    ) -> bool:
        check_successor(record, expected_version)
        statement, params = self._finish(record, expected_version, owner, clear_in_flight)
        with self._errors("finish refresh"), self._connection() as conn:
            row = conn.execute(statement, params).fetchone()
        return bool(row and row[0])

    def claim_due_records(self, now: float, limit: int, owner: str, ttl: float) -> list[Record]:
        if limit <= 0:
            return []
        params = (float(now + ttl), owner, float(now), int(limit))
        with self._errors("claim due keys"), self._connection() as conn:
            rows = conn.execute(self._sql.claim_records, params).fetchall()
        return [self._record_of(key, version, data) for key, version, data in rows]

    def close(self) -> None:
        """Close the sync pool; async pools are dropped (`aclose` closes the current loop's)."""
        self._async.clear()
        with self._live_lock:
            self._drop_live()
        with self._guard:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    # --- async API ----------------------------------------------------------------------------

    async def aload(self, key: str) -> Record | None:
        rows = await self._aread("read", self._sql.load, (key,))
        return None if not rows else self._record_of(key, rows[0][0], rows[0][1])

    async def acompare_and_set(self, record: Record, expected_version: int) -> bool:
        check_successor(record, expected_version)
        statement, params = self._cas(record, expected_version)
        return await self._arowcount("compare-and-set", statement, params)

    async def adelete(self, key: str) -> bool:
        return await self._arowcount("delete", self._sql.delete, {"k": key})

    async def akeys(self, prefix: str = "") -> list[str]:
        return sorted(row[0] for row in await self._aread("list keys", self._sql.keys, (prefix,)))

    async def aacquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        holder = await asyncio.to_thread(self._holder)
        params = (key, owner, float(ttl), holder)
        return await self._arowcount("acquire lease", self._sql.acquire, params)

    async def arenew_lease(self, key: str, owner: str, ttl: float) -> bool:
        return await self._arowcount("renew lease", self._sql.renew, (float(ttl), key, owner))

    async def arelease_lease(self, key: str, owner: str) -> bool:
        return await self._arowcount("release lease", self._sql.release, (key, owner))

    async def alease_holder(self, key: str) -> Claim | None:
        rows = await self._aread("read lease", self._sql.holder, (key,))
        return Claim(rows[0][0], rows[0][1], rows[0][2]) if rows else None

    async def atake_over_lease(self, key: str, dead_owner: str, owner: str, ttl: float) -> bool:
        holder = await asyncio.to_thread(self._holder)
        params = (owner, float(ttl), holder, key, dead_owner)
        return await self._arowcount("take over lease", self._sql.take_over, params)

    async def amark_in_flight(self, key: str, owner: str, fingerprint: str, ttl: float) -> None:
        holder = await asyncio.to_thread(self._holder)
        params = (key, owner, fingerprint, float(ttl), holder)
        await self._arowcount("mark in flight", self._sql.mark, params)

    async def ain_flight(self, key: str) -> Claim | None:
        rows = await self._aread("read in-flight record", self._sql.in_flight, (key,))
        return Claim(rows[0][0], rows[0][1], rows[0][2], rows[0][3]) if rows else None

    async def aclear_in_flight(self, key: str, owner: str) -> bool:
        return await self._arowcount("clear in flight", self._sql.clear, (key, owner))

    async def aschedule(self, key: str, due_at: float | None) -> None:
        await self._arowcount("schedule", self._sql.schedule, (due_at, key))

    async def aclaim_due(self, now: float, limit: int, owner: str, ttl: float) -> list[str]:
        records = await self.aclaim_due_records(now, limit, owner, ttl)
        return [record.key for record in records]

    async def abegin_refresh(
        self, key: str, owner: str, ttl: float, mark: InFlightMark | None = None
    ) -> Begun:
        holder = await asyncio.to_thread(self._holder)
        lease, marking = (
            (key, owner, float(ttl), holder),
            self._mark_params(key, owner, holder, mark),
        )
        with self._errors("begin refresh"):
            pool = await self._apool()
            async with pool.connection() as conn:
                async with conn.pipeline():
                    acquired = await conn.execute(self._sql.acquire, lease)
                    seen = await conn.execute(self._sql.begun, {"k": key})
                    marked = await conn.execute(self._sql.mark_if, marking) if marking else None
                row = await seen.fetchone()
                return self._begun(key, acquired.rowcount == 1, row, marked)

    async def afinish_refresh(
        self, record: Record, expected_version: int, owner: str, clear_in_flight: bool = True
    ) -> bool:
        check_successor(record, expected_version)
        statement, params = self._finish(record, expected_version, owner, clear_in_flight)
        with self._errors("finish refresh"):
            pool = await self._apool()
            async with pool.connection() as conn:
                row = await (await conn.execute(statement, params)).fetchone()
        return bool(row and row[0])

    async def aclaim_due_records(
        self, now: float, limit: int, owner: str, ttl: float
    ) -> list[Record]:
        if limit <= 0:
            return []
        params = (float(now + ttl), owner, float(now), int(limit))
        with self._errors("claim due keys"):
            pool = await self._apool()
            async with pool.connection() as conn:
                rows = await (await conn.execute(self._sql.claim_records, params)).fetchall()
        return [self._record_of(key, version, data) for key, version, data in rows]

    async def aclose(self) -> None:
        """Close this loop's async pool and the sync pool."""
        task = self._async.pop(asyncio.get_running_loop(), None)
        if task is not None and task.done() and not task.cancelled() and not task.exception():
            await task.result().close()
        await asyncio.to_thread(self.close)

    # Reads are retried on a dropped connection (a server restart, a terminated backend, a
    # failover): the pool discards the broken connection and the next attempt gets a new one.
    # Writes are not: whether a write that lost its connection committed is unknown, and the
    # refresh flow already handles a failed compare-and-set by reloading.
    _READ_ATTEMPTS = 3

    def _read(self, action: str, statement: sql.Composed, params: tuple[Any, ...]) -> list[Any]:
        with self._errors(action):
            for attempt in range(1, self._READ_ATTEMPTS + 1):
                try:
                    with self._connection() as conn:
                        return conn.execute(statement, params).fetchall()
                except psycopg.OperationalError:
                    if attempt == self._READ_ATTEMPTS:
                        raise
        raise AssertionError("unreachable")

    async def _aread(
        self, action: str, statement: sql.Composed, params: tuple[Any, ...]
    ) -> list[Any]:
        with self._errors(action):
            for attempt in range(1, self._READ_ATTEMPTS + 1):
                try:
                    pool = await self._apool()
                    async with pool.connection() as conn:
                        return await (await conn.execute(statement, params)).fetchall()
                except psycopg.OperationalError:
                    if attempt == self._READ_ATTEMPTS:
                        raise
        raise AssertionError("unreachable")

    # --- pools and schema ---------------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self._sync_pool().connection() as conn:
            yield conn

    def _sync_pool(self) -> psycopg_pool.ConnectionPool:
        pool = self._pool
        if pool is not None:
            return pool
        with self._guard:
            if self._pool is None:
                # First use: one direct connection migrates the schema and, when the server is
                # unreachable, fails at once with libpq's reason (a pool would only time out).
                try:
                    conn = psycopg.connect(self._url, **self._connect_options())
                except psycopg.Error as exc:
                    raise StoreError(self._unreachable(exc)) from None
                with conn:
                    self._migrate(conn)
                    self._check_direct(conn.info.port, conn.execute(_PORT).fetchone())
                pool = psycopg_pool.ConnectionPool(self._url, open=False, **self._pool_options())
                try:
                    pool.open(wait=True, timeout=self._timeout)
                except psycopg_pool.PoolTimeout:
                    pool.close()
                    raise StoreError(
                        f"token store {self.location}: no pooled connection within "
                        f"{self._timeout:g}s"
                    ) from None
                self._pool = pool
            return self._pool

    async def _apool(self) -> psycopg_pool.AsyncConnectionPool:
        loop = asyncio.get_running_loop()
        task = self._async.get(loop)
        if task is None:
            task = self._async[loop] = loop.create_task(self._open_async())
        try:
            return await asyncio.shield(task)
        except BaseException:
            if task.done() and self._async.get(loop) is task:
                del self._async[loop]  # a failed opening is retried by the next call
            raise

    async def _open_async(self) -> psycopg_pool.AsyncConnectionPool:
        try:
            conn = await psycopg.AsyncConnection.connect(self._url, **self._connect_options())
        except psycopg.Error as exc:
            raise StoreError(self._unreachable(exc)) from None
        async with conn:
            await self._amigrate(conn)
            self._check_direct(conn.info.port, await (await conn.execute(_PORT)).fetchone())
        pool = psycopg_pool.AsyncConnectionPool(self._url, open=False, **self._pool_options())
        try:
            await pool.open(wait=True, timeout=self._timeout)
        except psycopg_pool.PoolTimeout:
            await pool.close()
            raise StoreError(
                f"token store {self.location}: no pooled connection within {self._timeout:g}s"
            ) from None
        return pool

    def _connect_options(self) -> dict[str, Any]:
        return {"autocommit": True, "connect_timeout": max(2, round(self._timeout))}

    def _check_direct(self, port: int, row: tuple[Any, ...] | None) -> None:
        """A server that listens on another port than the one we connected to is reached
        through something in between: most often PgBouncer, whose transaction pooling hands
        each transaction to any server session. Then server-side prepared statements (which
        belong to a session) are off, and a session proves nothing about a client's liveness."""
        if row is None or row[0] != port:
            self._pooled = True
            self._liveness = False

    def _pool_options(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"autocommit": True}
        if self._pooled:
            kwargs["prepare_threshold"] = None
        return {
            "min_size": 1,
            "max_size": self._max_size,
            "timeout": self._timeout,
            "kwargs": kwargs,
            "name": f"tokenward-{self.schema}",
        }

    def _unreachable(self, exc: psycopg.Error) -> str:
        cause = self._scrub(str(exc).strip())
        return f"token store {self.location}: cannot connect to PostgreSQL: {cause}"

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        with self._errors("migrate schema"):
            exists = conn.execute(sql.SQL("SELECT to_regclass({})").format(self._sql.registry))
            if self._current(exists.fetchone()) and self._check(
                conn.execute(self._sql.current).fetchone()
            ):
                return  # the common case: no lock, no DDL
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_id(self.schema),))
                conn.execute(self._sql.create_schema)
                conn.execute(self._sql.create_registry)
                row = conn.execute(self._sql.current).fetchone()
                if self._check(row):
                    return  # another process migrated while we waited for the lock
                for version, steps in self._sql.migrations:
                    if row is not None and version <= row[0]:
                        continue
                    for step in steps:
                        conn.execute(step)
                    conn.execute(self._sql.record_migration, (version,))

    async def _amigrate(self, conn: psycopg.AsyncConnection[Any]) -> None:
        with self._errors("migrate schema"):
            cursor = await conn.execute(
                sql.SQL("SELECT to_regclass({})").format(self._sql.registry)
            )
            if self._current(await cursor.fetchone()):
                cursor = await conn.execute(self._sql.current)
                if self._check(await cursor.fetchone()):
                    return
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_id(self.schema),))
                await conn.execute(self._sql.create_schema)
                await conn.execute(self._sql.create_registry)
                cursor = await conn.execute(self._sql.current)
                row = await cursor.fetchone()
                if self._check(row):
                    return
                for version, steps in self._sql.migrations:
                    if row is not None and version <= row[0]:
                        continue
                    for step in steps:
                        await conn.execute(step)
                    await conn.execute(self._sql.record_migration, (version,))

    @staticmethod
    def _current(row: tuple[Any, ...] | None) -> bool:
        """True when the migrations registry exists."""
        return row is not None and row[0] is not None

    def _check(self, row: tuple[Any, ...] | None) -> bool:
        """True when the schema is at the latest version; refuses a newer one."""
        version = 0 if row is None else int(row[0])
        if version > LATEST:
            raise StoreCorrupted(
                self.location,
                f"schema version {version} is newer than this tokenward supports ({LATEST}); "
                "upgrade tokenward",
            )
        return version == LATEST

    # --- statements ---------------------------------------------------------------------------

    def _cas(self, record: Record, expected_version: int) -> tuple[sql.Composed, tuple[Any, ...]]:
        data = Jsonb(record.to_dict())
        due = due_time(record)
        if expected_version == 0:
            return self._sql.insert, (record.key, record.version, data, record.updated_at, due)
        return self._sql.update, (
            record.version,
            data,
            record.updated_at,
            due,
            record.key,
            expected_version,
        )

    async def _arowcount(
        self, action: str, statement: sql.Composed, params: tuple[Any, ...] | dict[str, Any]
    ) -> bool:
        with self._errors(action):
            pool = await self._apool()
            async with pool.connection() as conn:
                cursor = await conn.execute(statement, params)
                return cursor.rowcount == 1

    @staticmethod
    def _mark_params(
        key: str, owner: str, holder: str | None, mark: InFlightMark | None
    ) -> dict[str, Any] | None:
        if mark is None:
            return None
        return {
            "k": key,
            "o": owner,
            "fp": mark.fingerprint,
            "ttl": float(mark.ttl),
            "h": holder,
            "v": mark.version,
        }

    def _begun(self, key: str, acquired: bool, row: tuple[Any, ...] | None, marked: Any) -> Begun:
        assert row is not None  # the statement always answers one row
        version, data, owner, left, holder, fp = row
        record = None if version is None else self._record_of(key, version, data)
        if not acquired:
            return Begun(False, record)
        in_flight = None if owner is None else Claim(owner, left, holder, fp)
        return Begun(True, record, in_flight, marked is not None and marked.rowcount == 1)

    def _finish(
        self, record: Record, expected_version: int, owner: str, clear: bool
    ) -> tuple[sql.Composed, dict[str, Any]]:
        params = {
            "k": record.key,
            "o": owner,
            "clear": clear,
            "v": record.version,
            "data": Jsonb(record.to_dict()),
            "at": record.updated_at,
            "due": due_time(record),
            "expected": expected_version,
        }
        statement = self._sql.finish_insert if expected_version == 0 else self._sql.finish_update
        return statement, params

    def _record_of(self, key: str, version: Any, data: Any) -> Record:
        where = f"record {key!r}"
        record = record_from_data(self.location, data, where)
        if record.key != key or record.version != version:
            raise StoreCorrupted(self.location, f"{where}: data disagrees with its row")
        return record

    def _scrub(self, message: str) -> str:
        return message.replace(self._password, "***") if self._password else message

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """psycopg and pool errors → StoreError naming the database (never its password)."""
        try:
            yield
        except psycopg_pool.PoolTimeout:
            raise StoreError(
                f"token store {self.location}: {action} failed: no connection free within "
                f"{self._timeout:g}s"
            ) from None
        except psycopg.Error as exc:
            message = self._scrub(str(exc).strip())
            raise StoreError(
                f"token store {self.location}: {action} failed: {type(exc).__name__}: {message}"
            ) from None
