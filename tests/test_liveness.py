"""Process death and stalled leaders (issue 16, sections 2 and 3), with real processes, real
signals, real stores and the emulator over HTTP.

- A lease holder SIGKILLed while its token request is at the provider: the other processes see
  it is provably dead (its pid, its store connection) and take over at once instead of waiting
  out the 30 s lease TTL.
- A leader SIGSTOPped while its token request is at the provider, for longer than its lease
  TTL: the process that takes the lapsed lease finds the refresh token recorded in flight and
  waits for the leader's answer instead of presenting the same single-use refresh token again.

Every step synchronises on something observable (the emulator's hold, a caller's events, the
store), never on a sleep. The kill-to-resume time is measured by `make bench` (bench/liveness.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import liveness_workers
import psycopg
import pytest
from liveness_workers import PATIENCE, Caller, first_of, seed
from psycopg.conninfo import conninfo_to_dict
from servers import (
    POSTGRES_URL,
    REDIS_URL,
    drop_postgres_schema,
    drop_redis_prefix,
    free_port,
    require,
    unreachable,
)

from tokenward.stores.base import Record, Store
from tokenward.testing import EmulatorServer, fingerprint

pytestmark = pytest.mark.e2e  # processes, Redis, PostgreSQL, PgBouncer

KEY = "live"
#: Long on purpose: a survivor that waited for the lease to expire would miss every deadline.
LONG_TTL = 30.0


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def store_cfg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Where the callers keep the credential: a SQLite file, or a fresh Redis prefix /
    PostgreSQL schema on the shared servers (removed afterwards)."""
    name = "tw_live_" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]
    kind = request.param
    if kind == "sqlite":
        yield {"kind": kind, "path": str(tmp_path / "tokens.db")}
        return
    require(kind)
    if kind == "redis":
        yield {"kind": kind, "url": REDIS_URL, "prefix": name + ":"}
        drop_redis_prefix(name + ":")
    else:
        yield {"kind": kind, "url": POSTGRES_URL, "schema": name}
        drop_postgres_schema(name)


def _seed(server: EmulatorServer, store: Store) -> str:
    return seed(server.emulator, store, KEY)


def _callers(
    server: EmulatorServer, cfg: dict[str, Any], count: int, calls: int, lease_ttl: float
) -> list[Caller]:
    common = {
        **cfg,
        "key": KEY,
        "token_url": server.token_url,
        "api_url": server.api_url,
        "lease_ttl": lease_ttl,
        "lease_wait": 120.0,
        "calls": calls,
    }
    return [Caller(common) for _ in range(count)]


def _served(caller: Caller, calls: int) -> list[dict[str, Any]]:
    caller.wait_for(lambda line: "done" in line, "the end of its calls")
    return [line for line in caller.seen if "call" in line]


@pytest.mark.timeout(120)
def test_killed_lease_holder_is_taken_over_at_once(
    tokenward_emulator: EmulatorServer, store_cfg: dict[str, Any]
) -> None:
    """SIGKILL the lease holder while its token request is at the provider (lease TTL 30 s):
    both survivors resume long before the lease would have expired, through one refresh that
    presents the refresh token the dead process never got to spend."""
    emu = tokenward_emulator.emulator
    store = liveness_workers.open_store(store_cfg)
    refresh_token = _seed(tokenward_emulator, store)
    leader, *survivors = _callers(tokenward_emulator, store_cfg, 3, 3, LONG_TTL)
    try:
        hold = emu.hold("token", stage="received")
        leader.go()
        hold.wait(PATIENCE)  # the leader holds the lease; its request is at the provider
        claim = store.lease_holder(KEY)
        assert claim is not None and claim.owner.endswith(f":{leader.proc.pid}")
        assert store.in_flight(KEY) is not None  # recorded before the request left
        for survivor in survivors:
            survivor.go()
        leader.proc.kill()
        killed_at = time.time()
        leader.proc.wait()
        assert hold.client_gone.wait(PATIENCE)  # the provider drops the dead request ...
        hold.release()  # ... unprocessed: the refresh token was never spent
        served = [_served(survivor, 3) for survivor in survivors]
    finally:
        for caller in (leader, *survivors):
            caller.stop()
    assert all(line["status"] == 200 for rows in served for line in rows), served
    assert [len(rows) for rows in served] == [3, 3]
    first = min(rows[0]["t"] for rows in served)
    # Taken over, not waited out: far sooner than the 30 s TTL (the 2 s goal: bench/liveness.py).
    assert first - killed_at < LONG_TTL / 2, first - killed_at
    taken = [e for s in survivors for e in s.events("lease.taken_over")]
    assert len(taken) == 1 and taken[0]["dead_holder"] == claim.owner, taken
    assert not [e for s in survivors for e in s.events("lease.holder_silent")]
    counters = emu.counters
    assert counters["refreshes"] == 1 and counters["invalid_grant"] == 0, counters
    assert emu.refresh_log[0]["old"] == fingerprint(refresh_token)
    record = store.load(KEY)
    assert record is not None and record.refresh_token is not None
    assert emu.is_refresh_token_valid(record.refresh_token)
    flight = store.in_flight(KEY)  # the survivor's record names a spent refresh token, if any
    assert flight is None or flight.fingerprint != fingerprint(record.refresh_token)
    store.close()


@pytest.mark.timeout(120)
def test_stalled_leader_refresh_token_is_never_spent_twice(
    tokenward_emulator: EmulatorServer, store_cfg: dict[str, Any]
) -> None:
    """SIGSTOP the leader while its token request is at the provider and keep it stopped until
    its lease (1 s) has lapsed and another process has taken it, then SIGCONT it: the process
    that took the lease waits for the stalled leader's answer instead of presenting the same
    refresh token. 0 invalid_grant, the family intact, every caller served by one refresh."""
    emu = tokenward_emulator.emulator
    store = liveness_workers.open_store(store_cfg)
    refresh_token = _seed(tokenward_emulator, store)
    leader, *others = _callers(tokenward_emulator, store_cfg, 3, 2, 1.0)
    stopped = False
    try:
        hold = emu.hold("token", stage="received")
        leader.go()
        hold.wait(PATIENCE)
        os.kill(leader.proc.pid, signal.SIGSTOP)
        stopped = True
        hold.release()  # the provider rotates the refresh token; the answer waits in a socket
        for other in others:
            other.go()
        # Someone took the lapsed lease and found the refresh token in flight: it waits.
        waiting = first_of(
            others, lambda line: line.get("event") == "lease.waiting_in_flight", "in-flight wait"
        )
        claim = store.lease_holder(KEY)
        assert claim is not None and not claim.owner.endswith(f":{leader.proc.pid}")
        assert emu.counters["refreshes"] == 1
        os.kill(leader.proc.pid, signal.SIGCONT)
        stopped = False
        served = [_served(caller, 2) for caller in (leader, *others)]
    finally:
        if stopped:
            os.kill(leader.proc.pid, signal.SIGCONT)
        for caller in (leader, *others):
            caller.stop()
    assert waiting["holder"].endswith(f":{leader.proc.pid}")
    assert all(line["status"] == 200 for rows in served for line in rows), served
    assert [len(rows) for rows in served] == [2, 2, 2]
    counters = emu.counters
    assert counters["invalid_grant"] == 0 and counters["refresh_reuse"] == 0, counters
    assert counters["refreshes"] == 1, counters
    log = emu.refresh_log
    assert len(log) == 1 and log[0]["old"] == fingerprint(refresh_token)
    assert {line["fp"] for rows in served for line in rows} == {log[0]["access"]}
    record = store.load(KEY)
    assert record is not None and record.refresh_token is not None
    assert fingerprint(record.refresh_token) == log[0]["new"]
    assert emu.is_refresh_token_valid(record.refresh_token)  # the family was never revoked
    store.close()


# --- PostgreSQL through PgBouncer (transaction pooling) --------------------------------------


@pytest.fixture
def pgbouncer(tmp_path: Path) -> Iterator[str]:
    """Our own PgBouncer in transaction-pooling mode, on a free port, in front of the shared
    PostgreSQL (installed by `make pgbouncer`); yields its URL."""
    require("postgres")
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.access(binary, os.X_OK):
        unreachable("pgbouncer is not installed (make pgbouncer)")
    target = conninfo_to_dict(POSTGRES_URL)
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix="tw-pgbouncer-"))  # readable after it drops root
    home.chmod(0o755)
    users = home / "users.txt"
    users.write_text(f'"{target.get("user", "postgres")}" ""\n')
    config = home / "pgbouncer.ini"
    server = " ".join(f"{k}={target[k]}" for k in ("host", "port", "dbname", "user") if k in target)
    config.write_text(
        "[databases]\n"
        f"{target.get('dbname', 'test')} = {server}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {users}\npool_mode = transaction\n"
        "default_pool_size = 4\nmax_client_conn = 200\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
        + ("user = nobody\n" if os.geteuid() == 0 else "")
    )
    for path in (users, config):
        path.chmod(0o644)
    proc = subprocess.Popen(
        [binary, str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"postgresql://{target.get('user', 'postgres')}@127.0.0.1:{port}/{target['dbname']}"
    try:
        deadline = time.monotonic() + PATIENCE
        while True:  # until it accepts connections (or died: say why)
            try:
                psycopg.connect(url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    out = proc.communicate()[0]
                    raise AssertionError(f"pgbouncer did not start: {out}") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(home, ignore_errors=True)


def test_postgres_through_pgbouncer_is_correct_and_says_liveness_is_unknown(
    pgbouncer: str, tmp_path: Path
) -> None:
    """Through PgBouncer a server session is not a client's: the store notices (it reached the
    server through another port), turns server-side prepared statements off, and offers no
    session signal, so a holder on another host is never judged dead through it."""
    from tokenward.stores.postgres import PostgresStore

    schema = "tw_bouncer_" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]
    direct = PostgresStore(POSTGRES_URL, schema=schema)
    pooled = PostgresStore(pgbouncer, schema=schema)
    try:
        assert direct.session_liveness
        assert not pooled.session_liveness
        # Correct through the pooler: many statements (beyond psycopg's prepare threshold).
        assert pooled.compare_and_set(Record("k", 1), 0)
        for version in range(1, 21):
            current = pooled.load("k")
            assert current is not None and current.version == version
            assert pooled.compare_and_set(current.successor(), version)
        assert pooled.acquire_lease("k", "a", 30)
        assert not direct.acquire_lease("k", "b", 30)
        claim = direct.lease_holder("k")
        assert claim is not None and claim.owner == "a"
        assert "s=" not in (claim.holder or "")  # no session signal recorded through it
        assert direct.acquire_lease("d", "a", 30)
        remote = direct.lease_holder("d")
        assert remote is not None and "s=pg" in (remote.holder or "")
        assert pooled.holder_alive(remote.holder) is True
    finally:
        direct.close()
        pooled.close()
        drop_postgres_schema(schema)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("via", ["direct", "pgbouncer"])
def test_killed_holder_on_another_host_postgres(
    tokenward_emulator: EmulatorServer, request: pytest.FixtureRequest, tmp_path: Path, via: str
) -> None:
    """A lease holder on "another host" (its process signal says nothing here) is SIGKILLed
    mid-request. Reached directly, PostgreSQL proves it dead (its session advisory lock is
    gone): taken over at once. Through PgBouncer nothing can prove it: the survivors say they
    wait on a silent holder (`lease.holder_silent`, then `lease.silent_wait_ended` with how
    long), wait out its lease (3 s here) and its in-flight record, and then succeed."""
    url = POSTGRES_URL if via == "direct" else request.getfixturevalue("pgbouncer")
    require("postgres")
    schema = "tw_foreign_" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]
    cfg = {"kind": "postgres", "url": url, "schema": schema, "timeout": 2.0}
    store = liveness_workers.open_store({**cfg, "url": POSTGRES_URL})
    refresh_token = _seed(tokenward_emulator, store)
    emu = tokenward_emulator.emulator
    ttl = LONG_TTL if via == "direct" else 3.0
    (leader,) = _callers(tokenward_emulator, {**cfg, "foreign_host": True}, 1, 1, ttl)
    survivors = _callers(tokenward_emulator, cfg, 2, 2, ttl)
    try:
        hold = emu.hold("token", stage="received")
        leader.go()
        hold.wait(PATIENCE)
        for survivor in survivors:
            survivor.go()
        leader.proc.kill()
        leader.proc.wait()
        assert hold.client_gone.wait(PATIENCE)
        hold.release()
        served = [_served(survivor, 2) for survivor in survivors]
    finally:
        for caller in (leader, *survivors):
            caller.stop()
        store.close()
        drop_postgres_schema(schema)
    assert all(line["status"] == 200 for rows in served for line in rows), served
    counters = emu.counters
    assert counters["refreshes"] == 1 and counters["invalid_grant"] == 0, counters
    assert emu.refresh_log[0]["old"] == fingerprint(refresh_token)
    taken = [e for s in survivors for e in s.events("lease.taken_over")]
    silent = [e for s in survivors for e in s.events("lease.holder_silent")]
    ended = [e for s in survivors for e in s.events("lease.silent_wait_ended")]
    if via == "direct":
        assert len(taken) == 1 and not silent, (taken, silent)
    else:
        assert not taken and silent, (taken, silent)
        assert all(0 < e["at_most"] <= ttl for e in silent if e["waiting_on"] == "lease")
        assert ended and all(e["waited"] >= 0 for e in ended)


def test_broker_metrics_count_silent_waits_and_takeovers() -> None:
    """`/metrics` says how often and how long a credential waited on a silent lease holder, and
    how many dead holders' leases were taken over (from the flow's events)."""
    from tokenward import events
    from tokenward.broker.metrics import BrokerMetrics
    from tokenward.stores.memory import MemoryStore

    metrics = BrokerMetrics(lambda: {"api": ("api", MemoryStore())})
    metrics.attach()
    try:
        events.emit("lease.holder_silent", "api", waiting_on="lease", holder="h:1", at_most=3.0)
        events.emit("lease.silent_wait_ended", "api", waited=2.5, outcome="acquired")
        events.emit("lease.holder_silent", "api", waiting_on="in_flight", holder="h:1", at_most=1)
        events.emit("lease.silent_wait_ended", "api", waited=0.75, outcome="adopted")
        events.emit("lease.taken_over", "api", dead_holder="h:2")
        events.emit("lease.taken_over", "elsewhere", dead_holder="h:3")  # not this broker's
    finally:
        metrics.detach()
    text = metrics.render().decode()
    assert 'tokenward_silent_lease_waits_total{credential="api"} 2.0' in text
    assert 'tokenward_silent_lease_wait_seconds_total{credential="api"} 3.25' in text
    assert 'tokenward_lease_takeovers_total{credential="api"} 1.0' in text
    assert "elsewhere" not in text


@pytest.mark.parametrize("rotation", [True, False], ids=["rotating", "kept"])
def test_in_flight_record_never_outlives_its_use(
    tokenward_emulator: EmulatorServer, tmp_path: Path, rotation: bool
) -> None:
    """After a refresh, no in-flight record names the refresh token the store holds (else the
    next refresh by another process would wait for its deadline): the write that stores the
    answer (`Finish`) clears it in the same round trip, whether the token rotated or not."""
    from tokenward.manager import TokenManager
    from tokenward.sources.oauth2 import RefreshTokenGrant
    from tokenward.stores.sqlite import SQLiteStore
    from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET

    emu = tokenward_emulator.emulator
    emu.refresh_rotation = rotation
    store = SQLiteStore(tmp_path / "tokens.db")
    seed(emu, store, KEY)
    grant = RefreshTokenGrant(tokenward_emulator.token_url, TEST_CLIENT_ID, TEST_CLIENT_SECRET)
    with TokenManager(KEY, grant, store) as manager:
        for _ in range(3):
            manager.refresh()
            record = store.load(KEY)
            assert record is not None and record.refresh_token is not None
            flight = store.in_flight(KEY)
            assert flight is None or flight.fingerprint != fingerprint(record.refresh_token)
            assert flight is None
    assert emu.counters["refreshes"] == 3 and emu.counters["invalid_grant"] == 0
    store.close()
