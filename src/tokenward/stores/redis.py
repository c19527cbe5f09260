"""A store in Redis, shared by every process and machine that reaches the server.

Layout, under a key prefix (default `tokenward:`):

- `{prefix}record:{key}` - a hash with `version` and `data` (the record as JSON);
- `{prefix}lease:{key}` - a string holding the owner, with the lease's TTL as its expiry (the
  server's clock decides when a lease has expired, so clients' clocks do not matter);
- `{prefix}holder:{key}` - the lease holder's identity (`tokenward.liveness`: its process and
  the `CLIENT ID` of a connection it keeps open), set, renewed and dropped with the lease;
- `{prefix}inflight:{key}` - a hash (owner, fingerprint, holder) expiring at the deadline of
  the token request that has the refresh token in flight;
- `{prefix}keys` - a sorted set of the record keys, all with score 0, so `keys(prefix)` is one
  `ZRANGEBYLEX` over a sorted range (deterministic, no `SCAN` over the whole keyspace);
- `{prefix}due` - the due-queue: a sorted set of record keys scored by the time (Unix seconds)
  each is next due for a refresh. Every compare-and-set sets the score (`due_time`), and
  `claim_due` is one script: `ZRANGEBYSCORE` the due ones, then `ZADD` them to `now + ttl`.

Compare-and-set and the three lease operations are Lua scripts: each runs atomically on the
server and checks the version or the owner before writing. A lease is only ever renewed or
released by its owner.

Durability: a compare-and-set is as durable as the server's persistence settings make it
(`appendonly yes` with `appendfsync always` for invariant 2 across a server crash).

The module is longer than most (about 550 lines) because it carries the whole store contract
twice, natively: the sync methods use `redis.Redis`; the async ones use `redis.asyncio.Redis`
(the asyncio refresher's path), one client per event loop (an asyncio connection belongs to the
loop that opened it). The scripts (`redis_scripts.py`) touch several keys of one prefix, so on
Redis Cluster all of them must hash to one slot: put a hash tag in the
prefix, e.g. `prefix="{tokenward}:"`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.connection
import redis.connection
from redis.commands.core import AsyncScript, Script

from ..errors import StoreCorrupted, StoreError
from .base import Begun, Claim, InFlightMark, Record, Store, check_successor, due_time
from .record import record_from_data
from .url import redact_url

__all__ = ["RedisStore"]

from .redis_scripts import SCRIPTS as _SCRIPTS

_TIMEOUTS = {"socket_connect_timeout": 10.0, "socket_timeout": 30.0}
#: Connections of one event loop's async client; more tasks than this wait for a free one.
_ASYNC_CONNECTIONS = 64


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _AsyncSide:
    """One event loop's async client and scripts."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self.scripts: dict[str, AsyncScript] = {
            name: client.register_script(lua) for name, lua in _SCRIPTS.items()
        }


class RedisStore(Store):
    """Records and leases in Redis.

    `url_or_client` is a `redis://` / `rediss://` / `unix://` URL, or a `redis.Redis` client
    (the async clients then connect with the same connection settings). Keys live under
    `prefix`, so several applications (or tests) can share one database.
    """

    native_async = True

    def __init__(self, url_or_client: str | redis.Redis, *, prefix: str = "tokenward:") -> None:
        self.prefix = prefix
        self._index = f"{prefix}keys"
        self._due = f"{prefix}due"
        if isinstance(url_or_client, str):
            self._url: str | None = url_or_client
            try:
                self._client = redis.Redis.from_url(url_or_client, **_TIMEOUTS)
            except ValueError as exc:
                raise ValueError(f"bad Redis URL {redact_url(url_or_client)}: {exc}") from None
            kwargs = self._client.connection_pool.connection_kwargs
            self._password = kwargs.get("password")
            self.location = redact_url(url_or_client)
        else:
            self._url = None
            self._client = url_or_client
            kwargs = url_or_client.connection_pool.connection_kwargs
            self._password = kwargs.get("password")
            if "path" in kwargs:
                self.location = f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
            else:
                scheme = "rediss" if self._is_ssl(url_or_client) else "redis"
                where = f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
                self.location = f"{scheme}://{where}/{kwargs.get('db', 0)}"
        if prefix != "tokenward:":
            self.location += ("&" if "?" in self.location else "?") + f"prefix={prefix}"
        self._scripts: dict[str, Script] = {
            name: self._client.register_script(lua) for name, lua in _SCRIPTS.items()
        }
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncSide] = (
            weakref.WeakKeyDictionary()
        )
        self._live_lock = threading.Lock()
        self._live: redis.Redis | None = None
        self._live_id: str | None = None
        self._live_checked: tuple[int, float] = (0, 0.0)

    # --- keys ---------------------------------------------------------------------------------

    def _record_key(self, key: str) -> str:
        return f"{self.prefix}record:{key}"

    def _lease_key(self, key: str) -> str:
        return f"{self.prefix}lease:{key}"

    def _lease_keys(self, key: str) -> list[str]:
        """The lease and its holder identity (set, renewed and dropped together)."""
        return [f"{self.prefix}lease:{key}", f"{self.prefix}holder:{key}"]

    def _in_flight_key(self, key: str) -> str:
        return f"{self.prefix}inflight:{key}"

    def _delete_keys(self, key: str) -> list[str]:
        return [
            self._record_key(key),
            self._lease_key(key),
            self._index,
            self._due,
            f"{self.prefix}holder:{key}",
            self._in_flight_key(key),
        ]

    def _range(self, prefix: str) -> tuple[bytes, bytes]:
        if not prefix:
            return b"-", b"+"
        raw = prefix.encode()
        return b"[" + raw, b"(" + raw + b"\xff"  # 0xff never occurs in UTF-8

    @staticmethod
    def _ttl_ms(ttl: float) -> int:
        return max(1, round(ttl * 1000))

    # --- sync API -----------------------------------------------------------------------------

    def load(self, key: str) -> Record | None:
        with self._errors("read"):
            version, data = self._client.hmget(self._record_key(key), ["version", "data"])
        return self._record_of(key, version, data)

    def compare_and_set(self, record: Record, expected_version: int) -> bool:
        check_successor(record, expected_version)
        keys, args = self._cas_args(record, expected_version)
        with self._errors("compare-and-set"):
            return bool(self._scripts["cas"](keys=keys, args=args))

    def delete(self, key: str) -> bool:
        keys = self._delete_keys(key)
        with self._errors("delete"):
            return bool(self._scripts["del"](keys=keys, args=[key]))

    def keys(self, prefix: str = "") -> list[str]:
        low, high = self._range(prefix)
        with self._errors("list keys"):
            members = self._client.zrangebylex(self._index, low, high)
        return sorted(_text(member) for member in members)

    def acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        args: list[str | int] = [owner, self._ttl_ms(ttl), self._holder() or ""]
        with self._errors("acquire lease"):
            return bool(self._scripts["acquire"](keys=self._lease_keys(key), args=args))

    def renew_lease(self, key: str, owner: str, ttl: float) -> bool:
        with self._errors("renew lease"):
            return bool(
                self._scripts["renew"](keys=self._lease_keys(key), args=[owner, self._ttl_ms(ttl)])
            )

    def release_lease(self, key: str, owner: str) -> bool:
        with self._errors("release lease"):
            return bool(self._scripts["release"](keys=self._lease_keys(key), args=[owner]))

    def lease_holder(self, key: str) -> Claim | None:
        with self._errors("read lease"):
            found = self._scripts["holder"](keys=self._lease_keys(key))
        return self._claim(found)

    def take_over_lease(self, key: str, dead_owner: str, owner: str, ttl: float) -> bool:
        args: list[str | int] = [dead_owner, owner, self._ttl_ms(ttl), self._holder() or ""]
        with self._errors("take over lease"):
            return bool(self._scripts["take_over"](keys=self._lease_keys(key), args=args))

    def mark_in_flight(self, key: str, owner: str, fingerprint: str, ttl: float) -> None:
        args: list[str | int] = [owner, fingerprint, self._ttl_ms(ttl), self._holder() or ""]
        with self._errors("mark in flight"):
            self._scripts["mark"](keys=[self._in_flight_key(key)], args=args)

    def in_flight(self, key: str) -> Claim | None:
        with self._errors("read in-flight record"):
            found = self._scripts["in_flight"](keys=[self._in_flight_key(key)])
        return self._claim(found)

    def clear_in_flight(self, key: str, owner: str) -> bool:
        with self._errors("clear in flight"):
            return bool(self._scripts["clear"](keys=[self._in_flight_key(key)], args=[owner]))

    def schedule(self, key: str, due_at: float | None) -> None:
        args = [key, "" if due_at is None else repr(float(due_at))]
        with self._errors("schedule"):
            self._scripts["schedule"](keys=[self._record_key(key), self._due], args=args)

    def claim_due(self, now: float, limit: int, owner: str, ttl: float) -> list[str]:
        if limit <= 0:
            return []
        args: list[str | int] = [repr(float(now)), int(limit), repr(float(now + ttl))]
        with self._errors("claim due keys"):
            claimed = self._scripts["claim"](keys=[self._due], args=args)
        return [_text(key) for key in claimed]

    def begin_refresh(
        self, key: str, owner: str, ttl: float, mark: InFlightMark | None = None
    ) -> Begun:
        keys, args = self._begin_args(key, owner, ttl, mark)
        with self._errors("begin refresh"):
            found = self._scripts["begin"](keys=keys, args=args)
        return self._begun(key, found)

    def finish_refresh(
        self, record: Record, expected_version: int, owner: str, clear_in_flight: bool = True
    ) -> bool:
        check_successor(record, expected_version)
        keys, args = self._finish_args(record, expected_version, owner, clear_in_flight)
        with self._errors("finish refresh"):
            return bool(self._scripts["finish"](keys=keys, args=args))

    def claim_due_records(self, now: float, limit: int, owner: str, ttl: float) -> list[Record]:
        if limit <= 0:
            return []
        with self._errors("claim due keys"):
            found = self._scripts["claim_records"](
                keys=[self._due], args=self._claim_args(now, limit, ttl)
            )
        return self._claimed(found)

    def close(self) -> None:
        """Close the sync connections; async clients are dropped (use `aclose` in a loop to
        close the current loop's client cleanly)."""
        self._async.clear()
        with self._live_lock:
            live, self._live = self._live, None
        if live is not None:
            live.close()
        if self._url is not None:  # a client the caller passed in stays the caller's
            self._client.close()

    # --- async API ----------------------------------------------------------------------------

    async def aload(self, key: str) -> Record | None:
        side = self._side()
        with self._errors("read"):
            version, data = await side.client.hmget(self._record_key(key), ["version", "data"])
        return self._record_of(key, version, data)

    async def acompare_and_set(self, record: Record, expected_version: int) -> bool:
        check_successor(record, expected_version)
        keys, args = self._cas_args(record, expected_version)
        side = self._side()
        with self._errors("compare-and-set"):
            return bool(await side.scripts["cas"](keys=keys, args=args))

    async def adelete(self, key: str) -> bool:
        keys = self._delete_keys(key)
        side = self._side()
        with self._errors("delete"):
            return bool(await side.scripts["del"](keys=keys, args=[key]))

    async def akeys(self, prefix: str = "") -> list[str]:
        low, high = self._range(prefix)
        side = self._side()
        with self._errors("list keys"):
            members = await side.client.zrangebylex(self._index, low, high)
        return sorted(_text(member) for member in members)

    async def aacquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        side = self._side()
        with self._errors("acquire lease"):
            result = await side.scripts["acquire"](
                keys=self._lease_keys(key), args=[owner, self._ttl_ms(ttl), self._holder() or ""]
            )
        return bool(result)

    async def arenew_lease(self, key: str, owner: str, ttl: float) -> bool:
        side = self._side()
        with self._errors("renew lease"):
            result = await side.scripts["renew"](
                keys=self._lease_keys(key), args=[owner, self._ttl_ms(ttl)]
            )
        return bool(result)

    async def arelease_lease(self, key: str, owner: str) -> bool:
        side = self._side()
        with self._errors("release lease"):
            result = await side.scripts["release"](keys=self._lease_keys(key), args=[owner])
        return bool(result)

    async def alease_holder(self, key: str) -> Claim | None:
        side = self._side()
        with self._errors("read lease"):
            found = await side.scripts["holder"](keys=self._lease_keys(key))
        return self._claim(found)

    async def atake_over_lease(self, key: str, dead_owner: str, owner: str, ttl: float) -> bool:
        args: list[str | int] = [dead_owner, owner, self._ttl_ms(ttl), self._holder() or ""]
        side = self._side()
        with self._errors("take over lease"):
            return bool(await side.scripts["take_over"](keys=self._lease_keys(key), args=args))

    async def amark_in_flight(self, key: str, owner: str, fingerprint: str, ttl: float) -> None:
        args: list[str | int] = [owner, fingerprint, self._ttl_ms(ttl), self._holder() or ""]
        side = self._side()
        with self._errors("mark in flight"):
            await side.scripts["mark"](keys=[self._in_flight_key(key)], args=args)

    async def ain_flight(self, key: str) -> Claim | None:
        side = self._side()
        with self._errors("read in-flight record"):
            found = await side.scripts["in_flight"](keys=[self._in_flight_key(key)])
        return self._claim(found)

    async def aclear_in_flight(self, key: str, owner: str) -> bool:
        side = self._side()
        with self._errors("clear in flight"):
            return bool(await side.scripts["clear"](keys=[self._in_flight_key(key)], args=[owner]))

    async def aschedule(self, key: str, due_at: float | None) -> None:
        args = [key, "" if due_at is None else repr(float(due_at))]
        side = self._side()
        with self._errors("schedule"):
            await side.scripts["schedule"](keys=[self._record_key(key), self._due], args=args)

    async def aclaim_due(self, now: float, limit: int, owner: str, ttl: float) -> list[str]:
        if limit <= 0:
            return []
        args: list[str | int] = [repr(float(now)), int(limit), repr(float(now + ttl))]
        side = self._side()
        with self._errors("claim due keys"):
            claimed = await side.scripts["claim"](keys=[self._due], args=args)
        return [_text(key) for key in claimed]

    async def abegin_refresh(
        self, key: str, owner: str, ttl: float, mark: InFlightMark | None = None
    ) -> Begun:
        keys, args = self._begin_args(key, owner, ttl, mark)
        side = self._side()
        with self._errors("begin refresh"):
            found = await side.scripts["begin"](keys=keys, args=args)
        return self._begun(key, found)

    async def afinish_refresh(
        self, record: Record, expected_version: int, owner: str, clear_in_flight: bool = True
    ) -> bool:
        check_successor(record, expected_version)
        keys, args = self._finish_args(record, expected_version, owner, clear_in_flight)
        side = self._side()
        with self._errors("finish refresh"):
            return bool(await side.scripts["finish"](keys=keys, args=args))

    async def aclaim_due_records(
        self, now: float, limit: int, owner: str, ttl: float
    ) -> list[Record]:
        if limit <= 0:
            return []
        side = self._side()
        with self._errors("claim due keys"):
            found = await side.scripts["claim_records"](
                keys=[self._due], args=self._claim_args(now, limit, ttl)
            )
        return self._claimed(found)

    async def aclose(self) -> None:
        """Close this loop's async client and the sync connections."""
        side = self._async.pop(asyncio.get_running_loop(), None)
        if side is not None:
            await side.client.aclose()
        self.close()

    # --- liveness -----------------------------------------------------------------------------

    def _session(self) -> str | None:
        """The id of a connection this process keeps open to the server for as long as it runs
        (`CLIENT ID`): a dead process's sockets are closed by its kernel, and the server then
        forgets the client. Read again at most once a second (a reconnect changes it); None when
        the server refuses `CLIENT` (an ACL, a proxy): liveness is then unknown."""
        now = time.monotonic()
        with self._live_lock:
            if self._live_checked == (os.getpid(), now // 1):
                return self._live_id
            try:
                if self._live is None:
                    self._live = self._dedicated_client()
                self._live_id = f"{self._live.client_id()}"
            except redis.RedisError:
                self._live_id = None
            self._live_checked = (os.getpid(), now // 1)
            return self._live_id

    def _session_alive(self, session: str) -> bool | None:
        if not session.isdigit():
            return None
        try:
            found = self._client.execute_command(  # type: ignore[no-untyped-call]
                "CLIENT", "LIST", "ID", session
            )
        except redis.RedisError:
            return None  # CLIENT refused or the server unreachable: cannot tell
        text = _text(found) if isinstance(found, bytes | str) else str(found)
        return bool(text.strip())

    def _dedicated_client(self) -> redis.Redis:
        kwargs = dict(self._client.connection_pool.connection_kwargs)
        pool = redis.ConnectionPool(
            connection_class=self._client.connection_pool.connection_class,
            max_connections=1,
            **kwargs,
        )
        return redis.Redis(connection_pool=pool)  # the pool keeps its one connection open

    def _claim(self, found: Any) -> Claim | None:
        if not found:
            return None
        owner, left = _text(found[0]), int(found[1])
        if left < 0:  # no expiry (written by hand) or gone meanwhile
            return None
        holder = _text(found[2]) or None
        fp = _text(found[3]) if len(found) > 3 else None
        return Claim(owner, left / 1000, holder, fp)

    # --- helpers ------------------------------------------------------------------------------

    def _side(self) -> _AsyncSide:
        loop = asyncio.get_running_loop()
        side = self._async.get(loop)
        if side is None:
            side = self._async[loop] = _AsyncSide(self._async_client())
        return side

    def _async_client(self) -> redis.asyncio.Redis:
        if self._url is not None:
            # A blocking pool: many tasks at once (an asyncio refresher) wait for a connection
            # instead of failing with "Too many connections" past redis-py's default 100.
            blocking = redis.asyncio.BlockingConnectionPool.from_url(
                self._url, max_connections=_ASYNC_CONNECTIONS, **_TIMEOUTS
            )
            return redis.asyncio.Redis(connection_pool=blocking)
        pool = self._client.connection_pool
        connection_class: type[redis.asyncio.connection.AbstractConnection]
        if "path" in pool.connection_kwargs:
            connection_class = redis.asyncio.connection.UnixDomainSocketConnection
        elif self._is_ssl(self._client):
            connection_class = redis.asyncio.connection.SSLConnection
        else:
            connection_class = redis.asyncio.connection.Connection
        accepted: set[str] = set()
        for cls in connection_class.__mro__:
            if "__init__" in vars(cls):
                accepted |= set(inspect.signature(cls.__init__).parameters)  # type: ignore[misc]
        accepted -= {"self", "args", "kwargs"}
        kwargs = {k: v for k, v in pool.connection_kwargs.items() if k in accepted}
        return redis.asyncio.Redis(
            connection_pool=redis.asyncio.BlockingConnectionPool(
                connection_class=connection_class, max_connections=_ASYNC_CONNECTIONS, **kwargs
            )
        )

    @staticmethod
    def _is_ssl(client: redis.Redis) -> bool:
        return issubclass(client.connection_pool.connection_class, redis.connection.SSLConnection)

    def _cas_args(self, record: Record, expected_version: int) -> tuple[list[str], list[Any]]:
        data = json.dumps(record.to_dict(), separators=(",", ":"), sort_keys=True)
        keys = [self._record_key(record.key), self._index, self._due]
        due = due_time(record)
        return keys, [
            str(expected_version),
            str(record.version),
            data,
            record.key,
            "" if due is None else repr(float(due)),
        ]

    def _begin_args(
        self, key: str, owner: str, ttl: float, mark: InFlightMark | None
    ) -> tuple[list[str], list[str | int]]:
        keys = [*self._lease_keys(key), self._record_key(key), self._in_flight_key(key)]
        args: list[str | int] = [owner, self._ttl_ms(ttl), self._holder() or ""]
        if mark is None:
            return keys, [*args, "", "", 0]
        return keys, [*args, str(mark.version), mark.fingerprint, self._ttl_ms(mark.ttl)]

    def _begun(self, key: str, found: Any) -> Begun:
        record = self._record_of(key, found[1], found[2])
        if not found[0]:
            return Begun(False, record)
        in_flight = self._claim(found[3:7]) if found[3] else None
        return Begun(True, record, in_flight, bool(found[7]))

    def _finish_args(
        self, record: Record, expected_version: int, owner: str, clear: bool
    ) -> tuple[list[str], list[Any]]:
        keys, args = self._cas_args(record, expected_version)
        keys += [self._in_flight_key(record.key), *self._lease_keys(record.key)]
        return keys, [*args, owner, "1" if clear else "0"]

    def _claim_args(self, now: float, limit: int, ttl: float) -> list[str | int]:
        return [repr(float(now)), int(limit), repr(float(now + ttl)), f"{self.prefix}record:"]

    def _claimed(self, found: Any) -> list[Record]:
        records = []
        for i in range(0, len(found), 3):
            key, version, data = _text(found[i]), found[i + 1], found[i + 2]
            if version:  # else the record was deleted after it was queued
                record = self._record_of(key, version, data)
                if record is not None:
                    records.append(record)
        return records

    def _record_of(self, key: str, version: Any, data: Any) -> Record | None:
        if version is None and data is None:
            return None
        where = f"record {key!r}"
        try:
            number = int(_text(version))
            decoded = json.loads(_text(data))
        except (TypeError, ValueError, UnicodeDecodeError):
            raise StoreCorrupted(self.location, f"{where}: version or data is malformed") from None
        record = record_from_data(self.location, decoded, where)
        if record.key != key or record.version != number:
            raise StoreCorrupted(self.location, f"{where}: data disagrees with its version")
        return record

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Redis errors → StoreError naming the server (never its password)."""
        try:
            yield
        except redis.RedisError as exc:
            message = str(exc)
            if self._password:
                message = message.replace(str(self._password), "***")
            raise StoreError(
                f"token store {self.location}: {action} failed: {type(exc).__name__}: {message}"
            ) from None
