"""A caller process for tests/test_liveness.py and bench/liveness.py (a plain subprocess):

    python tests/liveness_workers.py '<json config>'

It opens its own store (SQLite file, Redis prefix or PostgreSQL schema) and manager, prints
`{"ready": pid}`, waits for `go` on stdin, then makes `calls` requests to the emulator's API
through `TokenAuth`. Everything it does is one JSON line on stdout: each request's outcome
(`{"call": i, "status": ..., "fp": ..., "t": wall clock}`), each `tokenward` event
(`{"event": name, ...fields}`), and `{"done": true}`. Tokens appear only as fingerprints.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import traceback
from typing import Any

import httpx2

from tokenward.integrations.httpx import TokenAuth
from tokenward.manager import TokenManager
from tokenward.sources.oauth2 import RefreshTokenGrant
from tokenward.stores.base import Store
from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET
from tokenward.transport import DEFAULT_TIMEOUT

_OUT = threading.Lock()


def say(**fields: Any) -> None:
    with _OUT:
        sys.stdout.write(json.dumps(fields, default=str) + "\n")
        sys.stdout.flush()


class _Events(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", None)
        if event is not None:
            say(event=event, pid=os.getpid(), **getattr(record, "tokenward", {}))


def open_store(cfg: dict[str, Any]) -> Store:
    kind = cfg["kind"]
    if kind == "sqlite":
        from tokenward.stores.sqlite import SQLiteStore

        return SQLiteStore(cfg["path"])
    if kind == "redis":
        from tokenward.stores.redis import RedisStore

        return RedisStore(cfg["url"], prefix=cfg["prefix"])
    if kind == "postgres":
        from tokenward.stores.postgres import PostgresStore

        return PostgresStore(cfg["url"], schema=cfg["schema"])
    raise ValueError(f"unknown store kind {kind!r}")


def pretend_another_host() -> None:
    """Record a holder identity from another boot: the process signal then proves nothing to
    the other callers (as for a process on another machine), only the store's session signal."""
    import tokenward.liveness as liveness

    real = liveness.process_identity()
    assert real is not None
    foreign = "another-host-boot/" + real.split("/", 1)[1]
    liveness.process_identity = lambda: foreign  # type: ignore[assignment]


def main(cfg: dict[str, Any]) -> None:
    if cfg.get("foreign_host"):
        pretend_another_host()
    logger = logging.getLogger("tokenward")
    logger.addHandler(_Events())
    logger.setLevel(logging.INFO)
    store = open_store(cfg)
    manager = TokenManager(
        cfg["key"],
        RefreshTokenGrant(cfg["token_url"], TEST_CLIENT_ID, TEST_CLIENT_SECRET),
        store,
        lease_ttl=cfg["lease_ttl"],
        lease_wait=cfg["lease_wait"],
        # A shorter token request means a shorter in-flight record.
        timeout=cfg.get("timeout", DEFAULT_TIMEOUT),
    )
    with httpx2.Client(auth=TokenAuth(manager), timeout=60) as client:
        say(ready=os.getpid())
        if sys.stdin.readline().strip() != "go":
            return
        for index in range(cfg["calls"]):
            response = client.get(f"{cfg['api_url']}/liveness/{os.getpid()}/{index}")
            fp = response.json().get("token_fingerprint") if response.status_code == 200 else None
            say(call=index, status=response.status_code, fp=fp, t=time.time())
    manager.close()
    store.close()
    say(done=True)


if __name__ == "__main__":
    try:
        main(json.loads(sys.argv[1]))
    except BaseException:
        say(crashed=traceback.format_exc())
        sys.exit(1)
