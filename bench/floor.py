"""The floor: the least work any refresher must do per refresh, hand-written on asyncio.

Per refresh: one token POST (httpx2), one compare-and-set that also files the next due time,
and a share of one batched claim (which moves the claimed keys' due time and returns their
records, so no separate load). No leases, no in-flight records, no events, no retries: a
refresher that is correct under process death cannot do less, so tokenward's CPU per refresh is
reported as a ratio to this loop's (bench/refresher_cpu.py). It reads and writes the same
records as tokenward's stores (same layout, same JSON), so both run against one seeding.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2

#: (key, version, record data as a dict)
Claimed = tuple[str, int, dict[str, Any]]

_REDIS_CLAIM = """
local keys = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, key in ipairs(keys) do
  redis.call('ZADD', KEYS[1], ARGV[3], key)
  local rec = redis.call('HMGET', ARGV[4] .. key, 'version', 'data')
  table.insert(out, key)
  table.insert(out, rec[1])
  table.insert(out, rec[2])
end
return out
"""
_REDIS_CAS = """
if redis.call('HGET', KEYS[1], 'version') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'data', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
return 1
"""


class FloorStore:
    """The two store operations of the floor: claim a batch (with records) and compare-and-set."""

    claim: Callable[[float, int], Awaitable[list[Claimed]]]
    cas: Callable[[str, int, dict[str, Any], float], Awaitable[bool]]

    async def close(self) -> None:
        """Release connections."""


class RedisFloor(FloorStore):
    def __init__(self, url: str, prefix: str) -> None:
        import redis.asyncio

        self.client = redis.asyncio.Redis.from_url(url)
        self.prefix = prefix
        self._claim = self.client.register_script(_REDIS_CLAIM)
        self._cas = self.client.register_script(_REDIS_CAS)
        self.claim = self._claim_batch
        self.cas = self._compare_and_set

    async def _claim_batch(self, now: float, limit: int) -> list[Claimed]:
        keys = [f"{self.prefix}due"]
        args: list[float | str] = [now, limit, now + 60, f"{self.prefix}record:"]
        flat = await self._claim(keys=keys, args=args)
        return [
            (flat[i].decode(), int(flat[i + 1]), json.loads(flat[i + 2]))
            for i in range(0, len(flat), 3)
        ]

    async def _compare_and_set(
        self, key: str, version: int, data: dict[str, Any], due: float
    ) -> bool:
        text = json.dumps(data, separators=(",", ":"), sort_keys=True)
        keys = [f"{self.prefix}record:{key}", f"{self.prefix}due"]
        return bool(await self._cas(keys=keys, args=[version, version + 1, text, key, due]))

    async def close(self) -> None:
        await self.client.aclose()


class PostgresFloor(FloorStore):
    def __init__(self, url: str, schema: str) -> None:
        self.url, self.schema = url, schema
        self.claim = self._claim_batch
        self.cas = self._compare_and_set

    async def open(self) -> None:
        import psycopg
        from psycopg.types.json import Jsonb

        self._jsonb = Jsonb
        self.conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        s = self.schema
        self._claim_sql = (
            f"UPDATE {s}.records AS r SET due_at = %s, claimed_by = 'floor' FROM ("
            f"SELECT key FROM {s}.records WHERE due_at <= %s ORDER BY due_at LIMIT %s "
            "FOR UPDATE SKIP LOCKED) AS due WHERE r.key = due.key "
            "RETURNING r.key, r.version, r.data"
        )
        self._cas_sql = (
            f"UPDATE {s}.records SET version = %s, data = %s, updated_at = %s, due_at = %s, "
            "claimed_by = NULL WHERE key = %s AND version = %s"
        )

    async def _claim_batch(self, now: float, limit: int) -> list[Claimed]:
        cursor = await self.conn.execute(self._claim_sql, (now + 60, now, limit))
        return [(key, int(version), data) for key, version, data in await cursor.fetchall()]

    async def _compare_and_set(
        self, key: str, version: int, data: dict[str, Any], due: float
    ) -> bool:
        params = (version + 1, self._jsonb(data), time.time(), due, key, version)
        cursor = await self.conn.execute(self._cas_sql, params)
        return cursor.rowcount == 1

    async def close(self) -> None:
        await self.conn.close()


class SQLiteFloor(FloorStore):
    """Same durability as tokenward's SQLite store (WAL, synchronous=FULL); sqlite3 calls are
    local and short, so they run on the loop's thread."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute("PRAGMA busy_timeout = 10000")
        self.claim = self._claim_batch
        self.cas = self._compare_and_set

    async def _claim_batch(self, now: float, limit: int) -> list[Claimed]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        rows = conn.execute(
            "SELECT key, version, data FROM records WHERE due_at <= ? ORDER BY due_at LIMIT ?",
            (now, limit),
        ).fetchall()
        conn.executemany(
            "UPDATE records SET due_at = ?, claimed_by = 'floor' WHERE key = ?",
            [(now + 60, key) for key, _, _ in rows],
        )
        conn.execute("COMMIT")
        return [(key, int(version), json.loads(data)) for key, version, data in rows]

    async def _compare_and_set(
        self, key: str, version: int, data: dict[str, Any], due: float
    ) -> bool:
        text = json.dumps(data, separators=(",", ":"), sort_keys=True)
        cursor = self.conn.execute(
            "UPDATE records SET version = ?, data = ?, updated_at = ?, due_at = ?, "
            "claimed_by = NULL WHERE key = ? AND version = ?",
            (version + 1, text, time.time(), due, key, version),
        )
        return cursor.rowcount == 1

    async def close(self) -> None:
        self.conn.close()


async def refresh_one(
    client: httpx2.AsyncClient, store: FloorStore, token_url: str, claimed: Claimed
) -> bool:
    """One refresh: POST the record's refresh token, compare-and-set the answer."""
    key, version, data = claimed
    sent_at = time.time()
    response = await client.post(
        token_url,
        data={"grant_type": "refresh_token", "refresh_token": data["refresh_token"]},
        auth=("bench-app", "bench-secret"),
    )
    if response.status_code != 200:
        return False
    answer = response.json()
    lifetime = float(answer["expires_in"])
    data.update(
        version=version + 1,
        access_token=answer["access_token"],
        refresh_token=answer.get("refresh_token", data["refresh_token"]),
        expires_at=sent_at + lifetime,
        obtained_at=sent_at,
        updated_at=time.time(),
        refresh_count=data.get("refresh_count", 0) + 1,
    )
    due = sent_at + lifetime - min(lifetime * 0.05, 300.0)
    return await store.cas(key, version, data, due)


async def run(store: FloorStore, token_url: str, count: int, batch: int = 64) -> dict[str, int]:
    """Claim and refresh until `count` refreshes are stored (or nothing is due any more)."""
    limits = httpx2.Limits(max_connections=batch, max_keepalive_connections=batch)
    done = failed = 0
    async with httpx2.AsyncClient(limits=limits, timeout=30.0) as client:
        while done + failed < count:
            claimed = await store.claim(time.time(), min(batch, count - done - failed))
            if not claimed:
                break
            results = await asyncio.gather(
                *(refresh_one(client, store, token_url, item) for item in claimed)
            )
            done += sum(results)
            failed += len(results) - sum(results)
    return {"refreshed": done, "failed": failed}
