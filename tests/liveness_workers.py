"""A caller process for tests/test_liveness.py and bench/liveness.py (a plain subprocess), and
`Caller`, the parent's handle on one:

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
import queue
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import httpx2

from tokenward.integrations.httpx import TokenAuth
from tokenward.manager import TokenManager
from tokenward.sources.oauth2 import RefreshTokenGrant
from tokenward.stores.base import Record, Store
from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET, Emulator
from tokenward.transport import DEFAULT_TIMEOUT

_OUT = threading.Lock()
#: How long the parent waits for something that takes well under a second when it works.
PATIENCE = 20.0


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
    liveness.process_identity = lambda: foreign


# --- the parent's side ----------------------------------------------------------------------


class Caller:
    """A tests/liveness_workers.py process and the JSON lines it prints."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put({"eof": True})

    def wait_for(
        self, match: Callable[[dict[str, Any]], bool], what: str, patience: float = PATIENCE
    ) -> dict[str, Any]:
        found = self.poll(match, what, patience)
        if found is None:
            raise AssertionError(f"pid {self.proc.pid}: no {what} within {patience}s")
        return found

    def poll(
        self, match: Callable[[dict[str, Any]], bool], what: str, patience: float
    ) -> dict[str, Any] | None:
        """The first line that matches, waiting at most `patience` seconds for it."""
        for line in self.seen:
            if match(line):
                return line
        deadline = time.monotonic() + patience
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                return None
            self.seen.append(line)
            if "crashed" in line or "eof" in line:
                stderr = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"pid {self.proc.pid} ended before {what}: {line} {stderr}")
            if match(line):
                return line

    def go(self) -> None:
        self.wait_for(lambda line: "ready" in line, "ready")
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.seen if line.get("event") == name]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def first_of(
    callers: list[Caller], match: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """The first line matching from any of `callers`."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        for caller in callers:
            if (found := caller.poll(match, what, 0.01)) is not None:
                return found
    raise AssertionError(f"no {what} from any caller within {PATIENCE}s")


def seed(emu: Emulator, store: Store, key: str) -> str:
    """An expired access token and a good refresh token; returns the refresh token."""
    refresh_token = emu.issue_refresh_token(TEST_CLIENT_ID)
    stale = emu.issue_access_token(TEST_CLIENT_ID, lifetime=0)
    now = time.time()
    record = Record(
        key,
        1,
        access_token=stale,
        refresh_token=refresh_token,
        expires_at=now - 60,
        obtained_at=now - 120,
    )
    assert store.compare_and_set(record, 0)
    return refresh_token


# --- the caller process ---------------------------------------------------------------------


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
