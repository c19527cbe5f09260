"""Code that runs in other processes for test_scale.py: `python tests/scale_workers.py <command>
'<json config>'`. Each command prints `ready` when set up, waits for a line on stdin (`go` or a
start time), does its work and prints one JSON line with its results (fingerprints only).

Commands: `storm` (asyncio tasks meet one expired token), `refresher` (a Refresher process for a
while), `slow-refresh` (forces one refresh; the parent SIGKILLs it mid-request).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import traceback
from typing import Any

import httpx2

from tokenward.manager import TokenManager
from tokenward.refresher import Refresher
from tokenward.sources.oauth2 import RefreshTokenGrant
from tokenward.stores.base import Store
from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET


def open_store(cfg: dict[str, Any]) -> Store:
    if cfg["kind"] == "redis":
        from tokenward.stores.redis import RedisStore

        return RedisStore(cfg["url"], prefix=cfg["prefix"])
    if cfg["kind"] == "postgres":
        from tokenward.stores.postgres import PostgresStore

        return PostgresStore(cfg["url"], schema=cfg["schema"], max_size=cfg.get("pool", 10))
    raise ValueError(f"unknown store kind {cfg['kind']!r}")


def source(cfg: dict[str, Any]) -> RefreshTokenGrant:
    return RefreshTokenGrant(cfg["token_url"], TEST_CLIENT_ID, TEST_CLIENT_SECRET)


def manager(cfg: dict[str, Any], store: Store) -> TokenManager:
    return TokenManager(
        cfg["key"], source(cfg), store, lease_ttl=cfg.get("lease_ttl", 5.0), lease_wait=30.0
    )


def _ready() -> str:
    print("ready", flush=True)
    return sys.stdin.readline().strip()


def storm(cfg: dict[str, Any]) -> dict[str, Any]:
    """`tasks` asyncio tasks call `atoken()` at the same instant, then use the token once."""
    store = open_store(cfg)
    mgr = manager(cfg, store)
    results: list[dict[str, Any]] = []

    async def caller(index: int, client: httpx2.AsyncClient, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.time()))
        try:
            token = await mgr.atoken()
            response = await client.get(
                f"{cfg['api_url']}/scale/{os.getpid()}/{index}",
                headers={"Authorization": f"Bearer {token.access_token}"},
            )
            results.append(
                {"version": token.version, "fp": token.fingerprint, "status": response.status_code}
            )
        except Exception as exc:
            results.append({"error": f"{type(exc).__name__}: {exc}"})

    async def main(at: float) -> None:
        limits = httpx2.Limits(max_connections=cfg["tasks"])
        async with httpx2.AsyncClient(timeout=30, limits=limits) as client:
            await asyncio.gather(*(caller(i, client, at) for i in range(cfg["tasks"])))

    at = float(_ready())
    try:
        asyncio.run(main(at))
    finally:
        mgr.close()
        store.close()
    return {"pid": os.getpid(), "results": results}


def refresher(cfg: dict[str, Any]) -> dict[str, Any]:
    """A refresher process: claims and refreshes from the start time until the parent writes
    `stop` (the parent decides from the provider's log, not from a clock), or `duration` seconds
    at the most."""
    store = open_store(cfg)
    grant = source(cfg)
    worker = Refresher(
        store,
        lambda _key: grant,
        concurrency=cfg.get("concurrency", 16),
        claim_ttl=cfg.get("claim_ttl", 10.0),
        poll_interval=cfg.get("poll_interval", 0.05),
        lease_ttl=cfg.get("lease_ttl", 5.0),
    )
    at = float(_ready())
    threading.Thread(target=lambda: (sys.stdin.readline(), worker.stop()), daemon=True).start()
    time.sleep(max(0.0, at - time.time()))
    try:
        worker.run(duration=cfg["duration"])
    finally:
        worker.close()
        store.close()
    return {"pid": os.getpid(), "stats": worker.stats.snapshot()}


def slow_refresh(cfg: dict[str, Any]) -> dict[str, Any]:
    """Force one refresh (the emulator is slow): the parent kills this process meanwhile."""
    store = open_store(cfg)
    mgr = manager(cfg, store)
    _ready()
    token = mgr.refresh()
    return {"pid": os.getpid(), "version": token.version}


COMMANDS = {"storm": storm, "refresher": refresher, "slow-refresh": slow_refresh}


def main(argv: list[str]) -> int:
    command, cfg = argv[1], json.loads(argv[2])
    try:
        print(json.dumps(COMMANDS[command](cfg)), flush=True)
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
