"""`make demo` / `python -m tokenward.demo`: tokenward against a hand-made refresher, side by side.

Why this exists: "refresh on 401" looks fine in a single-threaded script and fails in production
once refresh tokens are single-use and several workers share a credential. The demo shows both
under the same load, against the provider emulator over real HTTP on loopback:

- 2-second access tokens, single-use rotating refresh tokens, MercadoLibre-style client
  authentication in the form body, and reuse detection (RFC 9700: presenting a rotated refresh
  token revokes the whole token family; MercadoLibre does not document what it does, so the demo
  builds for the strict case, `--no-reuse-detection` turns it off);
- 16 workers, half of them threads sharing one `httpx2.Client`, half asyncio tasks sharing one
  `httpx2.AsyncClient`, paced to a fixed request rate so the run crosses >= 10 expiries.

tokenward's column is also a self-check: it must fail no request, refresh once per expiry
(within one), and still hold a valid refresh token at the end; otherwise the exit status is 1.
No secret is ever printed: tokens are not shown at all, only versions and counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx2

from ..integrations.httpx import TokenAuth
from ..manager import RefreshPolicy, TokenManager
from ..rules import ExpiryRule
from ..sources.oauth2 import RefreshTokenGrant
from ..stores.sqlite import SQLiteStore
from ..testing.emulator import Emulator
from ..testing.server import EmulatorServer

if TYPE_CHECKING:  # rich is imported only when the demo runs, not when this module is imported
    from rich.console import Console
    from rich.progress import Progress, TaskID

__all__ = ["DemoConfig", "DemoResult", "Outcome", "main", "run_demo"]

#: MercadoLibre answers an expired token with 401 `{"message": "invalid_token", ...}`.
ML_EXPIRY_RULE = ExpiryRule(json_fields={"message": "invalid_token"})
CREDENTIAL = "mercadolibre-demo"
HTTP_TIMEOUT = 10.0

SyncCall = Callable[[int, int], bool]
AsyncCall = Callable[[int, int], Awaitable[bool]]


# -- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoConfig:
    """One demo run. The defaults give 2,401 requests over 20 s (10 expiries of 2 s tokens)."""

    duration: float = 20.0
    workers: int = 16
    lifetime: float = 2.0
    #: Requests per second, all workers together (each worker gets an equal share).
    rate: float = 120.0
    #: Token endpoint latency; None: 2.5% of the lifetime (50 ms for 2 s tokens), half the
    #: manager's refresh window, so a refresh started in the window lands before expiry. A real
    #: token endpoint takes tens to hundreds of milliseconds; with none at all, concurrent
    #: hand-made refreshes would hardly ever overlap, which is not what production sees.
    token_latency: float | None = None
    api_latency: float = 0.005
    reuse_detection: bool = True

    def __post_init__(self) -> None:
        if self.workers < 2:
            raise ValueError("workers must be at least 2 (threads and asyncio tasks)")
        if self.duration <= 0 or self.lifetime <= 0 or self.rate <= 0:
            raise ValueError("duration, lifetime and rate must be positive")

    @property
    def provider_latency(self) -> float:
        """The token endpoint latency the emulator is given."""
        return self.lifetime / 40 if self.token_latency is None else self.token_latency

    @property
    def threads(self) -> int:
        """Half the workers are threads; the other half are asyncio tasks."""
        return self.workers // 2


# -- the provider -------------------------------------------------------------------------------
@dataclass
class Provider:
    """The emulator, served over loopback, with one registered OAuth client."""

    server: EmulatorServer
    client_id: str
    client_secret: str = field(repr=False)

    @property
    def emulator(self) -> Emulator:
        return self.server.emulator

    def login(self) -> str:
        """A refresh token as a user's consent would give (each login starts a new family)."""
        return self.emulator.issue_refresh_token(self.client_id)

    def counters(self) -> dict[str, int]:
        return self.emulator.counters

    def accepts(self, refresh_token: str | None) -> bool:
        """Whether the provider would still honour `refresh_token` (the credential survived)."""
        return bool(refresh_token) and self.emulator.is_refresh_token_valid(refresh_token or "")


@contextlib.contextmanager
def running_provider(config: DemoConfig) -> Iterator[Provider]:
    """Start the emulator in a background thread with the demo's provider behaviour."""
    emulator = Emulator()
    emulator.configure(
        access_lifetime=config.lifetime,
        refresh_rotation=True,
        revoke_family_on_reuse=config.reuse_detection,
        latency=config.provider_latency,
        api_latency=config.api_latency,
    )
    client_id, client_secret = "demo-app", secrets.token_urlsafe(24)
    emulator.add_client(client_id, client_secret)
    with EmulatorServer(emulator) as server:
        yield Provider(server, client_id, client_secret)


def _request_args(worker: int, seq: int) -> tuple[str, str, dict[str, Any] | None]:
    """A small, pipeline-like mix: three POSTs with a JSON body, then one GET."""
    if seq % 4 == 3:
        return "GET", f"/orders/{worker}-{seq - 1}", None
    order = {"worker": worker, "seq": seq, "item": f"MLA{1000 + seq % 97}", "quantity": 1 + seq % 3}
    return "POST", "/orders", order


def _bearer(token: str | None) -> dict[str, str] | None:
    return {"Authorization": f"Bearer {token}"} if token else None


def _send(client: httpx2.Client, worker: int, seq: int, token: str | None = None) -> int:
    method, path, body = _request_args(worker, seq)
    return client.request(method, path, json=body, headers=_bearer(token)).status_code


async def _asend(
    client: httpx2.AsyncClient, worker: int, seq: int, token: str | None = None
) -> int:
    method, path, body = _request_args(worker, seq)
    return (await client.request(method, path, json=body, headers=_bearer(token))).status_code


# -- measuring ----------------------------------------------------------------------------------
class Tally:
    """Thread-safe request counters (measurement only: not part of either approach)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ok = 0
        self.failed = 0
        self.errors: Counter[str] = Counter()
        self.last_done = 0.0

    def record(self, ok: bool, error: str | None = None) -> None:
        with self._lock:
            if ok:
                self.ok += 1
            else:
                self.failed += 1
            if error is not None:
                self.errors[error] += 1
            self.last_done = time.monotonic()

    @property
    def done(self) -> int:
        return self.ok + self.failed


class EventCounter(logging.Handler):
    """Counts tokenward's structured events (`request.replayed`, `token.refreshed`, ...) and
    remembers the latest token version, by listening on the `tokenward` logger."""

    _VERSIONED = frozenset({"token.obtained", "token.refreshed", "token.adopted"})

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: Counter[str] = Counter()
        self.version = 0

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", None)
        if not isinstance(event, str):
            return
        self.counts[event] += 1
        version = getattr(record, "version", None)
        if event in self._VERSIONED and isinstance(version, int):
            self.version = max(self.version, version)


@contextlib.contextmanager
def listening(counter: EventCounter) -> Iterator[EventCounter]:
    """Attach `counter` to the `tokenward` logger (at INFO at least) for the block."""
    logger = logging.getLogger("tokenward")
    level = logger.level
    if not logger.isEnabledFor(logging.INFO):
        logger.setLevel(logging.INFO)
    logger.addHandler(counter)
    try:
        yield counter
    finally:
        logger.removeHandler(counter)
        logger.setLevel(level)


# -- the two approaches -------------------------------------------------------------------------
class Approach(Protocol):
    """What the workload runner needs from a way of calling the API."""

    name: str

    def warm_up(self) -> None: ...
    def settle(self) -> None: ...
    def call(self, worker: int, seq: int) -> bool: ...
    def async_caller(self) -> AbstractAsyncContextManager[AsyncCall]: ...
    def version(self) -> int: ...
    def recovered(self) -> int: ...
    def refresh_token(self) -> str | None: ...
    def close(self) -> None: ...


class TokenwardApproach:
    """The API called through `TokenAuth(manager)`: proactive, single-flight refresh, rotated
    refresh tokens persisted in SQLite before use, one replay after an expired-token answer."""

    name = "tokenward"

    def __init__(self, provider: Provider, store_path: Path, events: EventCounter) -> None:
        self._events = events
        self.store = SQLiteStore(store_path)
        source = RefreshTokenGrant(
            provider.server.token_url,
            provider.client_id,
            provider.client_secret,
            client_auth="body",
        )
        self.manager = TokenManager(CREDENTIAL, source, self.store, expiry_rule=ML_EXPIRY_RULE)
        self.manager.seed(refresh_token=provider.login())
        self._api_url = provider.server.api_url
        self._auth = TokenAuth(self.manager)
        self._client = httpx2.Client(base_url=self._api_url, auth=self._auth, timeout=HTTP_TIMEOUT)

    def warm_up(self) -> None:
        self.manager.token()

    def settle(self, quiet_for: float = 0.5, limit: float = 5.0) -> None:
        """Wait until no refresh is running. One of the last requests may have started a
        background refresh: the refresh token checked at the end must be the one the provider
        issued last, and that refresh must not run into the next approach's measurement.
        A refresh holds the store lease from before it calls the provider until it has
        committed, so "lease free and version unchanged for `quiet_for` seconds" is settled."""
        deadline = time.monotonic() + limit
        seen, since = self._version_stored(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            version = self._version_stored()
            if version != seen or not self._lease_free():
                seen, since = version, time.monotonic()
            elif time.monotonic() - since >= quiet_for:
                return

    def _version_stored(self) -> int:
        record = self.store.load(CREDENTIAL)
        return record.version if record else 0

    def _lease_free(self) -> bool:
        owner = "tokenward-demo-settle"
        if not self.store.acquire_lease(CREDENTIAL, owner, 1.0):
            return False
        self.store.release_lease(CREDENTIAL, owner)
        return True

    def call(self, worker: int, seq: int) -> bool:
        return _send(self._client, worker, seq) == 200

    @contextlib.asynccontextmanager
    async def async_caller(self) -> AsyncIterator[AsyncCall]:
        async with httpx2.AsyncClient(
            base_url=self._api_url, auth=self._auth, timeout=HTTP_TIMEOUT
        ) as client:

            async def acall(worker: int, seq: int) -> bool:
                return await _asend(client, worker, seq) == 200

            yield acall

    def version(self) -> int:
        return self._events.version

    def recovered(self) -> int:
        return self._events.counts["request.replayed"]

    def refresh_token(self) -> str | None:
        record = self.store.load(CREDENTIAL)
        return record.refresh_token if record else None

    def close(self) -> None:
        self._client.close()
        self.manager.close()
        self.store.close()


class NaiveApproach:
    """The hand-made refresher found in many pipelines: a shared global token pair; each request
    reads the access token once; on any 401 the worker calls the token endpoint itself with the
    current refresh token and updates the globals. No lock, no coordination, no proactive
    refresh, no "someone already refreshed" check: nothing tokenward does."""

    name = "hand-made"

    def __init__(self, provider: Provider) -> None:
        self._provider = provider
        self._api_url = provider.server.api_url
        self._client = httpx2.Client(base_url=self._api_url, timeout=HTTP_TIMEOUT)
        # The shared globals.
        self.access_token: str | None = None
        self.refresh_token_value: str = provider.login()
        self.generation = 0
        self._recovered = 0
        self._count_lock = threading.Lock()  # guards the demo's counter only

    def _form(self) -> dict[str, str]:
        return {
            "grant_type": "refresh_token",
            "refresh_token": self.refresh_token_value,
            "client_id": self._provider.client_id,
            "client_secret": self._provider.client_secret,
        }

    def _adopt(self, response: httpx2.Response) -> bool:
        if response.status_code != 200:
            return False
        body = response.json()
        self.access_token = body["access_token"]
        self.refresh_token_value = body.get("refresh_token") or self.refresh_token_value
        self.generation += 1
        return True

    def _refresh(self) -> bool:
        token_url = self._provider.server.token_url
        return self._adopt(self._client.post(token_url, data=self._form()))

    async def _arefresh(self, client: httpx2.AsyncClient) -> bool:
        token_url = self._provider.server.token_url
        return self._adopt(await client.post(token_url, data=self._form()))

    def _count_recovered(self, ok: bool) -> bool:
        if ok:
            with self._count_lock:
                self._recovered += 1
        return ok

    def warm_up(self) -> None:
        self._refresh()

    def settle(self) -> None:
        """Nothing runs in the background here: every refresh happens inside a request."""

    def call(self, worker: int, seq: int) -> bool:
        status = _send(self._client, worker, seq, self.access_token)
        if status != 401:
            return status == 200
        if not self._refresh():
            return False
        return self._count_recovered(_send(self._client, worker, seq, self.access_token) == 200)

    @contextlib.asynccontextmanager
    async def async_caller(self) -> AsyncIterator[AsyncCall]:
        async with httpx2.AsyncClient(base_url=self._api_url, timeout=HTTP_TIMEOUT) as client:

            async def acall(worker: int, seq: int) -> bool:
                status = await _asend(client, worker, seq, self.access_token)
                if status != 401:
                    return status == 200
                if not await self._arefresh(client):
                    return False
                replayed = await _asend(client, worker, seq, self.access_token)
                return self._count_recovered(replayed == 200)

            yield acall

    def version(self) -> int:
        return self.generation

    def recovered(self) -> int:
        return self._recovered

    def refresh_token(self) -> str | None:
        return self.refresh_token_value

    def close(self) -> None:
        self._client.close()


# -- the workload -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    """Fixed pacing: request number k (worker k % workers) is due `k / rate` seconds after the
    start, up to and including `duration`, so the run spans at least `duration` whatever the
    latency, and both approaches see the same load."""

    start: float
    duration: float
    rate: float
    workers: int

    def due(self, worker: int, seq: int) -> float | None:
        """When the worker's `seq`-th request is due (monotonic), or None: the run is over."""
        offset = (seq * self.workers + worker) / self.rate
        return None if offset > self.duration + 1e-9 else self.start + offset

    @property
    def total(self) -> int:
        """How many requests are due in all."""
        return math.floor(self.duration * self.rate + 1e-9) + 1


def _attempt(call: SyncCall, worker: int, seq: int, tally: Tally) -> None:
    try:
        ok = call(worker, seq)
    except Exception as exc:  # a failed request is a result to count, not a crash
        tally.record(False, type(exc).__name__)
    else:
        tally.record(ok)


def _thread_worker(schedule: Schedule, worker: int, call: SyncCall, tally: Tally) -> None:
    seq = 0
    while (due := schedule.due(worker, seq)) is not None:
        time.sleep(max(due - time.monotonic(), 0.0))
        _attempt(call, worker, seq, tally)
        seq += 1


async def _task_worker(schedule: Schedule, worker: int, call: AsyncCall, tally: Tally) -> None:
    seq = 0
    while (due := schedule.due(worker, seq)) is not None:
        await asyncio.sleep(max(due - time.monotonic(), 0.0))
        try:
            ok = await call(worker, seq)
        except Exception as exc:  # a failed request is a result to count, not a crash
            tally.record(False, type(exc).__name__)
        else:
            tally.record(ok)
        seq += 1


async def _drain() -> None:
    """Let tasks the library spawned on this loop (a background refresh) finish before the
    loop closes: cancelling a refresh in flight could lose a rotated refresh token."""
    for _ in range(50):
        pending = asyncio.all_tasks() - {asyncio.current_task()}
        if not pending:
            return
        await asyncio.wait(pending, timeout=0.2)


async def _async_side(schedule: Schedule, workers: range, approach: Approach, tally: Tally) -> None:
    async with approach.async_caller() as call:
        await asyncio.gather(*(_task_worker(schedule, w, call, tally) for w in workers))
    await _drain()


@contextlib.contextmanager
def _ticking(tick: Callable[[], None], every: float = 0.1) -> Iterator[None]:
    """Call `tick` from a helper thread while the block runs (drives the progress bar)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            tick()

    thread = threading.Thread(target=loop, name="tokenward-demo-ticker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        tick()


def run_workload(config: DemoConfig, approach: Approach, tally: Tally) -> float:
    """Run the paced workload on threads and asyncio tasks; the seconds it took."""
    schedule = Schedule(time.monotonic() + 0.05, config.duration, config.rate, config.workers)
    threads = [
        threading.Thread(
            target=_thread_worker, args=(schedule, w, approach.call, tally), daemon=True
        )
        for w in range(config.threads)
    ]
    for thread in threads:
        thread.start()
    asyncio.run(_async_side(schedule, range(config.threads, config.workers), approach, tally))
    for thread in threads:
        thread.join()
    return max(tally.last_done, schedule.start) - schedule.start


# -- results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """What one approach achieved. Counts from the emulator are for the timed run only."""

    approach: str
    requests: int
    ok: int
    failed: int
    seconds: float
    expiries: int
    refreshes: int
    token_calls: int
    invalid_grant: int
    expired_answers: int
    recovered: int
    refresh_token_valid: bool
    errors: dict[str, int]


def refresh_tolerance(expiries: int) -> int:
    """How far the refresh count may be from the expiries crossed: one, except on runs long
    enough for the early refresh to add up (refreshing at 95% of the lifetime makes up to
    1/0.95 refreshes per expiry)."""
    window = RefreshPolicy().window_fraction
    return max(1, math.ceil(expiries * window / (1 - window) - 1e-9))


@dataclass(frozen=True)
class DemoResult:
    config: DemoConfig
    tokenward: Outcome
    naive: Outcome

    @property
    def problems(self) -> list[str]:
        """Why tokenward's column fails the self-check (empty: it passes)."""
        out = self.tokenward
        found = []
        if out.failed:
            found.append(f"{out.failed} requests failed")
        if abs(out.refreshes - out.expiries) > refresh_tolerance(out.expiries):
            found.append(f"{out.refreshes} refreshes for {out.expiries} expiries")
        if not out.refresh_token_valid:
            found.append("the stored refresh token is no longer valid")
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "tokenward": asdict(self.tokenward),
            "naive": asdict(self.naive),
            "self_check": {"passed": not self.problems, "problems": self.problems},
        }


class Display(Protocol):
    """Where live progress goes (a rich progress bar, or nowhere)."""

    def begin(self, name: str, total: int) -> None: ...
    def update(self, name: str, tally: Tally, version: int) -> None: ...


class NoDisplay:
    def begin(self, name: str, total: int) -> None:
        pass

    def update(self, name: str, tally: Tally, version: int) -> None:
        pass


def _delta(before: dict[str, int], after: dict[str, int], name: str) -> int:
    return after.get(name, 0) - before.get(name, 0)


def measure(
    approach: Approach, provider: Provider, config: DemoConfig, display: Display
) -> Outcome:
    """Warm up (the first token is the login's, not a refresh), then run and count."""
    approach.warm_up()
    tally = Tally()
    display.begin(approach.name, Schedule(0, config.duration, config.rate, config.workers).total)
    before = provider.counters()
    with _ticking(lambda: display.update(approach.name, tally, approach.version())):
        seconds = run_workload(config, approach, tally)
        approach.settle()
    after = provider.counters()
    return Outcome(
        approach=approach.name,
        requests=tally.done,
        ok=tally.ok,
        failed=tally.failed,
        seconds=round(seconds, 2),
        expiries=math.floor(seconds / config.lifetime),
        refreshes=_delta(before, after, "refreshes"),
        token_calls=_delta(before, after, "token_requests"),
        invalid_grant=_delta(before, after, "invalid_grant"),
        expired_answers=_delta(before, after, "api_401"),
        recovered=approach.recovered(),
        refresh_token_valid=provider.accepts(approach.refresh_token()),
        errors=dict(tally.errors),
    )


def run_demo(config: DemoConfig, display: Display | None = None) -> DemoResult:
    """Both approaches, one after the other, against one emulator (fresh login each)."""
    display = display or NoDisplay()
    with running_provider(config) as provider:
        with (
            tempfile.TemporaryDirectory(prefix="tokenward-demo-") as tmp,
            listening(EventCounter()) as events,
        ):
            smart = TokenwardApproach(provider, Path(tmp) / "tokens.db", events)
            try:
                ours = measure(smart, provider, config, display)
            finally:
                smart.close()
        naive = NaiveApproach(provider)
        try:
            theirs = measure(naive, provider, config, display)
        finally:
            naive.close()
    return DemoResult(config, ours, theirs)


# -- presentation -------------------------------------------------------------------------------
ROWS: tuple[tuple[str, Callable[[Outcome], str]], ...] = (
    ("requests sent", lambda o: str(o.requests)),
    ("requests ok", lambda o: str(o.ok)),
    ("requests failed", lambda o: str(o.failed)),
    ("wall-clock seconds", lambda o: f"{o.seconds:.1f}"),
    ("access-token expiries crossed", lambda o: str(o.expiries)),
    ("refreshes made (provider count)", lambda o: str(o.refreshes)),
    ("token endpoint calls", lambda o: str(o.token_calls)),
    ("invalid_grant answers", lambda o: str(o.invalid_grant)),
    ("expired-token answers (401)", lambda o: str(o.expired_answers)),
    ("recovered by replay", lambda o: str(o.recovered)),
    ("valid refresh token at the end", lambda o: "yes" if o.refresh_token_valid else "NO"),
)


def verdict(result: DemoResult) -> str:
    """One line that says who kept the pipeline running."""
    ours, theirs = result.tokenward, result.naive
    if result.problems:
        return "Verdict: tokenward FAILED its self-check: " + "; ".join(result.problems) + "."
    head = (
        f"Verdict: tokenward served {ours.ok}/{ours.requests} requests with {ours.refreshes} "
        f"refreshes for {ours.expiries} expiries; "
    )
    kept = "kept" if theirs.refresh_token_valid else "lost"
    return head + (
        f"the hand-made refresher failed {theirs.failed}/{theirs.requests} with "
        f"{theirs.invalid_grant} invalid_grant answers and {kept} its refresh token."
    )


def render(result: DemoResult, console: Console) -> None:
    """The side-by-side table and the verdict, on a rich console."""
    from rich.table import Table

    config = result.config
    title = (
        f"{config.workers} workers ({config.threads} threads + "
        f"{config.workers - config.threads} asyncio tasks), {config.lifetime:g}s access tokens, "
        f"single-use rotating refresh tokens"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("tokenward", justify="right")
    table.add_column("hand-made refresher", justify="right")
    for label, cell in ROWS:
        table.add_row(label, cell(result.tokenward), cell(result.naive))
    console.print(table)
    console.print(verdict(result))


class RichDisplay:
    """A live progress bar per approach: requests done, failed, and the token version."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}

    def begin(self, name: str, total: int) -> None:
        self._tasks[name] = self._progress.add_task(name, total=total, failed=0, version=0)

    def update(self, name: str, tally: Tally, version: int) -> None:
        self._progress.update(
            self._tasks[name], completed=tally.done, failed=tally.failed, version=version
        )


@contextlib.contextmanager
def live_display(quiet: bool) -> Iterator[Display]:
    """A rich progress bar on stderr, or no display at all with `quiet`."""
    if quiet:
        yield NoDisplay()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed [bold]{task.fields[failed]:>5}[/]"),
        TextColumn("token v{task.fields[version]}"),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        yield RichDisplay(progress)


# -- command line -------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    defaults = DemoConfig()
    parser = argparse.ArgumentParser(
        prog="python -m tokenward.demo",
        description="tokenward vs a hand-made token refresher, against the provider emulator.",
    )
    parser.add_argument("--duration", type=float, default=defaults.duration, help="seconds")
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--lifetime", type=float, default=defaults.lifetime, help="seconds")
    parser.add_argument("--rate", type=float, default=defaults.rate, help="requests/s")
    parser.add_argument("--quiet", action="store_true", help="no live progress bar")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--no-reuse-detection",
        action="store_true",
        help="the provider does not revoke the token family when a rotated token is reused",
    )
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[DemoConfig, argparse.Namespace]:
    """The run's configuration and the display options; a bad value exits with usage (2)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = DemoConfig(
            duration=args.duration,
            workers=args.workers,
            lifetime=args.lifetime,
            rate=args.rate,
            reuse_detection=not args.no_reuse_detection,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return config, args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; exit status 1 when tokenward's own column fails the self-check."""
    config, args = parse_args(argv)
    try:
        from rich.console import Console
    except ImportError:
        print("the demo needs rich: pip install 'tokenward[demo]'", file=sys.stderr)
        return 2
    with live_display(args.quiet) as display:
        result = run_demo(config, display)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        render(result, Console())
    return 1 if result.problems else 0
