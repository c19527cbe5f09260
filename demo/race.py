"""The demo's race: the hand-made refresher and tokenward, side by side, as real processes.

Each side gets its own provider emulator (same settings, served over loopback by this process),
its own directory with the same `.env` (one fresh login), and the same pipeline: `processes`
processes of `threads` threads each (`pipeline.py`), started together on one schedule. Every
figure is read from the side's emulator (its counters and its grant log), never from what the
pipeline processes say they did: those tallies only serve as a cross-check.

Act 1 runs the pipeline across many token lifetimes. Act 2 kills one process of each side with
SIGKILL mid-refresh: the instant its token request has reached the provider (an emulator hold),
before the provider processes it; then it asks who still holds a valid refresh token.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx2
from dotenv import dotenv_values

from tokenward.manager import TokenManager
from tokenward.sources.oauth2 import RefreshTokenGrant
from tokenward.stores.dotenv import DotenvStore
from tokenward.testing.emulator import Emulator, Hold, fingerprint
from tokenward.testing.emulator.shapes import Reply
from tokenward.testing.server import EmulatorServer

from .workload import Schedule

__all__ = ["Act", "ActResult", "DemoConfig", "Kill", "SideOutcome", "run_act", "run_both"]

SIDES = ("tokenward", "hand-made")
#: The directory holding the `demo` package (a clone of the repository).
REPO = Path(__file__).resolve().parent.parent
#: How the "after" code maps its credential onto the `.env` variables (withtokenward.py).
CREDENTIAL = "orders"
VARIABLES = {CREDENTIAL: {"access_token": "ACCESS_TOKEN", "refresh_token": "REFRESH_TOKEN"}}
AGENT_PREFIX = "orders-pipeline/"


@dataclass(frozen=True)
class DemoConfig:
    """One demo run. Defaults: act 1 is 20 s of 2 s tokens (10 lifetimes), 3 processes x 4
    threads per side at 90 requests/s per side; act 2 lasts 6 s."""

    duration: float = 20.0
    kill_duration: float = 6.0
    lifetime: float = 2.0
    processes: int = 3
    threads: int = 4
    #: Requests per second per side, all workers together.
    rate: float = 90.0
    api_latency: float = 0.005
    reuse_detection: bool = True

    def __post_init__(self) -> None:
        if self.processes < 2 or self.threads < 1:
            raise ValueError("processes must be at least 2 and threads at least 1")
        if min(self.duration, self.kill_duration, self.lifetime, self.rate) <= 0:
            raise ValueError("durations, lifetime and rate must be positive")

    @property
    def workers(self) -> int:
        return self.processes * self.threads

    @property
    def token_latency(self) -> float:
        """The token endpoint's latency: 1/40 of the lifetime (50 ms for 2 s tokens)."""
        return self.lifetime / 40

    @property
    def cooldown(self) -> float:
        """The hand-made cooldown, scaled: 10 s in the original is about 10 token calls of a
        real provider; here 10 x the token latency (a quarter of the lifetime), so it still
        covers every request in flight at an expiry and never blocks the next expiry."""
        return 10 * self.token_latency

    @property
    def lease_ttl(self) -> float:
        """tokenward's lease TTL (30 s by default), scaled to one token lifetime so that act 2
        fits in seconds. Not scaled like the cooldown: a lease must outlast scheduling delays,
        not token calls (it is renewed every TTL/3; with 0.25 s, one run on a 2-core machine at
        load 19 saw another process spend the same refresh token)."""
        return self.lifetime


# -- providers ----------------------------------------------------------------------------------
@dataclass
class Provider:
    """One side's emulator over loopback, with one registered OAuth client."""

    server: EmulatorServer
    client_id: str
    client_secret: str = field(repr=False)

    @property
    def emulator(self) -> Emulator:
        return self.server.emulator

    def login(self) -> dict[str, Any]:
        """A user's consent: a new token family, exchanged once for a first token pair."""
        first = self.emulator.issue_refresh_token(self.client_id)
        form = {"grant_type": "refresh_token", "refresh_token": first}
        form |= {"client_id": self.client_id, "client_secret": self.client_secret}
        sent = time.monotonic()
        response = httpx2.post(self.server.token_url, data=form, timeout=10)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        body["sent_at"] = sent  # the token's lifetime runs from here at the latest
        return body


class DemoEmulator(Emulator):
    """The emulator, noting when it last served the API (its clock): a run ends there, which on
    a loaded machine is well after its schedule's end (its requests are late), so the lifetimes
    it lived through are counted up to that moment, not up to the schedule's end."""

    def __init__(self, **settings: Any) -> None:
        self.last_api_clock: float | None = None
        super().__init__(**settings)

    def api_request(self, path: str, authorization: str | None) -> tuple[Reply | None, str]:
        answer = super().api_request(path, authorization)
        with self._lock:
            self.last_api_clock = max(self.last_api_clock or 0.0, self.now())
        return answer

    def reset_counters(self) -> None:
        super().reset_counters()
        self.last_api_clock = None


def configured_emulator(config: DemoConfig) -> DemoEmulator:
    """An emulator with the demo's provider behaviour (MercadoLibre-like, strict rotation)."""
    return DemoEmulator(
        access_lifetime=config.lifetime,
        refresh_rotation=True,
        revoke_family_on_reuse=config.reuse_detection,
        latency=config.token_latency,
        api_latency=config.api_latency,
    )


@contextlib.contextmanager
def running_provider(emulator: Emulator) -> Iterator[Provider]:
    client_id, client_secret = "orders-app", secrets.token_urlsafe(24)
    emulator.add_client(client_id, client_secret)
    with EmulatorServer(emulator) as server:
        yield Provider(server, client_id, client_secret)


# -- one side -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kill:
    """Act 2: which process was killed, and when (seconds after the start)."""

    index: int
    pid: int
    at: float
    #: The provider saw the client go and never processed its token request.
    abandoned: bool


class Side:
    """One side's directory, processes and `.env` trail during an act."""

    def __init__(self, name: str, provider: Provider, directory: Path) -> None:
        self.name = name
        self.provider = provider
        self.directory = directory
        self.env_file = directory / ".env"
        self.processes: list[subprocess.Popen[str]] = []
        #: Fingerprints of the REFRESH_TOKEN values `.env` held, in the order seen.
        self.env_trail: list[str] = []
        self.first_fingerprint = ""
        self.kill: Kill | None = None
        #: When the login's token request was sent (`time.monotonic()`).
        self.logged_in_at = 0.0

    def prepare(self) -> None:
        """Log in and write `.env`: the same file for both sides (tokenward seeds its expiry)."""
        tokens = self.provider.login()
        self.logged_in_at = tokens["sent_at"]
        self.first_fingerprint = fingerprint(tokens["refresh_token"])
        server = self.provider.server
        fd = os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as env:  # readable by its owner only, from the first byte
            env.write(
                "# the orders pipeline's credentials\n"
                f"API_URL={server.api_url}\nTOKEN_URL={server.token_url}\n"
                f"CLIENT_ID={self.provider.client_id}\n"
                f"CLIENT_SECRET={self.provider.client_secret}\n"
                f"REFRESH_TOKEN={tokens['refresh_token']}\nACCESS_TOKEN={tokens['access_token']}\n"
            )
        if self.name == "tokenward":
            self._seed(tokens)
        self.provider.emulator.reset_counters()  # the login is not part of the run

    def _seed(self, tokens: dict[str, Any]) -> None:
        """What `tokenward import-env` does once: the record's expiry joins the `.env`."""
        source = RefreshTokenGrant(
            self.provider.server.token_url,
            self.provider.client_id,
            self.provider.client_secret,
            client_auth="body",
        )
        with TokenManager(CREDENTIAL, source, DotenvStore(self.env_file, VARIABLES)) as manager:
            manager.seed(
                refresh_token=tokens["refresh_token"],
                access_token=tokens["access_token"],
                expires_in=tokens["expires_in"] - (time.monotonic() - tokens["sent_at"]),
            )

    def spawn(self, config: DemoConfig, duration: float) -> None:
        env = dict(os.environ)
        env |= {"REFRESH_COOLDOWN": repr(config.cooldown), "LEASE_TTL": repr(config.lease_ttl)}
        # The processes run in their own directory: `demo` (not in the wheel) must stay found.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        (self.directory / "results").mkdir(parents=True)
        for index in range(config.processes):
            args = [self.name, index, config.threads, config.workers, config.rate, duration]
            log = (self.directory / f"process-{index}.log").open("w")
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "demo.pipeline", *map(str, args)],
                    cwd=self.directory,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                    env=env,
                )
            )
            log.close()

    def wait_ready(self) -> None:
        for index, process in enumerate(self.processes):
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                log = (self.directory / f"process-{index}.log").read_text()[-2000:]
                raise RuntimeError(f"{self.name} process {index} did not start:\n{log}")

    def go(self, start: float) -> None:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(f"go {start!r}\n")
            process.stdin.close()

    def watch_env(self) -> None:
        """Note the `.env` refresh token if it changed (called every few milliseconds)."""
        with contextlib.suppress(OSError):
            value = dotenv_values(self.env_file).get("REFRESH_TOKEN")
            if value:
                seen = fingerprint(value)
                if not self.env_trail or self.env_trail[-1] != seen:
                    self.env_trail.append(seen)

    def kill_mid_refresh(self, hold: Hold, start: float) -> None:
        """SIGKILL the process whose token request reached `hold`, then let the provider
        notice it went (it never processes that request). No token request before every
        process has ended: nobody to kill."""
        while not hold.arrived.wait(0.05):
            if all(process.poll() is not None for process in self.processes):
                hold.release()
                return
        agent = hold.agents[0] or ""
        pids = {process.pid: index for index, process in enumerate(self.processes)}
        index = pids[int(agent.removeprefix(AGENT_PREFIX))]
        os.kill(self.processes[index].pid, signal.SIGKILL)  # mid-refresh: nothing is saved yet
        self.processes[index].wait()
        abandoned = hold.client_gone.wait(10.0)
        hold.release()
        pid = self.processes[index].pid
        self.kill = Kill(index, pid, round(time.monotonic() - start, 2), abandoned)

    def finish(self, limit: float) -> list[dict[str, Any]]:
        """Wait for the processes; what each survivor reported."""
        reports = []
        for index, process in enumerate(self.processes):
            try:
                process.wait(limit)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
            if self.kill is not None and self.kill.index == index:
                continue
            path = self.directory / "results" / f"{index}.json"
            if process.returncode != 0 or not path.exists():
                log = (self.directory / f"process-{index}.log").read_text()[-2000:]
                raise RuntimeError(f"{self.name} process {index} failed:\n{log}")
            reports.append(json.loads(path.read_text()))
        self.watch_env()
        return reports

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


# -- results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SideOutcome:
    """One side's figures for one act, all read from its emulator and its `.env`."""

    side: str
    requests: int
    #: Access-token lifetimes from the login to the provider's last API request (the run's real
    #: end, later than its schedule's on a loaded machine).
    lifetimes: int
    #: Access tokens (the login's and each refresh's) whose refresh window opened before that
    #: last request, by the provider's clock: each one needed a refresh. Fewer than `lifetimes`
    #: when no request came for a while (processes starting or stalled on a busy machine).
    expiries: int
    ok: int
    failed: int
    token_calls: int
    refreshes: int
    invalid_grant: int
    unauthorized: int
    env_token_valid: bool
    valid_in_processes: int
    survivors: int
    #: The same refresh token sent twice by one process within the cooldown (both passed it).
    cooldown_races: int
    #: A refresh token presented after another process had already rotated it.
    stale_from_other_process: int
    #: `.env` rewritten with a refresh token older than the one it held.
    env_rollbacks: int
    kill: Kill | None
    #: The processes' own tally of final statuses (a cross-check, not a figure).
    reported: dict[str, int]

    @property
    def valid_refresh_token(self) -> bool:
        return self.env_token_valid or self.valid_in_processes > 0


def failure_modes(grant_log: list[dict[str, Any]], cooldown: float) -> tuple[int, int]:
    """(cooldown races, stale tokens from another process), from the provider's grant log."""
    rotated_by = {e["presented"]: e["agent"] for e in grant_log if e["outcome"] == "rotated"}
    races = stale = 0
    last: dict[tuple[str, str], float] = {}
    for entry in grant_log:
        key = (entry["agent"], entry["presented"])
        if key in last and entry["clock"] - last[key] < cooldown / 2:
            races += 1
        last[key] = entry["clock"]
        rotator = rotated_by.get(entry["presented"])
        if entry["outcome"] == "reused" and rotator is not None and rotator != entry["agent"]:
            stale += 1
    return races, stale


def env_rollbacks(trail: list[str], first: str, grant_log: list[dict[str, Any]]) -> int:
    """How often `.env` went from a refresh token to one the provider had issued before it."""
    issued = {first: 0}
    for entry in grant_log:
        if entry["outcome"] == "rotated" and entry["new"] not in issued:
            issued[entry["new"]] = len(issued)
    order = [issued[f] for f in trail if f in issued]
    return sum(1 for before, after in itertools.pairwise(order) if after < before)


def lifetimes_and_expiries(
    side: Side, config: DemoConfig, grant_log: list[dict[str, Any]]
) -> tuple[int, int]:
    """(lifetimes, expiries) from the login to the side's last API request, by the provider's
    clock (`time.monotonic()`, the login's clock too); the tokens are issued at the login and at
    each rotation of the grant log, and reach their refresh window at 95% of their lifetime."""
    from tokenward.manager import RefreshPolicy

    emulator = side.provider.emulator
    assert isinstance(emulator, DemoEmulator), "the demo's figures need a DemoEmulator"
    end = emulator.last_api_clock or side.logged_in_at
    issued = [side.logged_in_at] + [e["clock"] for e in grant_log if e["outcome"] == "rotated"]
    window = (1 - RefreshPolicy().window_fraction) * config.lifetime
    expiries = sum(1 for clock in issued if clock + window <= end)
    return int(max(end - side.logged_in_at, 0.0) // config.lifetime), expiries


def outcome(
    side: Side, config: DemoConfig, schedule: Schedule, reports: list[dict[str, Any]]
) -> SideOutcome:
    """The side's figures: counters and grant log from its emulator, the `.env` it left."""
    emulator = side.provider.emulator
    counters, log = emulator.counters, emulator.grant_log
    races, stale = failure_modes(log, config.cooldown)
    env_token = dotenv_values(side.env_file).get("REFRESH_TOKEN") or ""
    if side.name == "tokenward":  # its processes hold no token of their own: the store's
        held = [env_token] * len(reports)
    else:
        held = [r["refresh_token"] for r in reports if r.get("refresh_token")]
    reported: Counter[str] = Counter()
    for report in reports:
        reported.update(report["tally"])
    lifetimes, expiries = lifetimes_and_expiries(side, config, log)
    return SideOutcome(
        side=side.name,
        requests=schedule.total,
        lifetimes=lifetimes,
        expiries=expiries,
        ok=counters["api_ok"],
        failed=schedule.total - counters["api_ok"],
        token_calls=counters["token_requests"],
        refreshes=counters["refreshes"],
        invalid_grant=counters["invalid_grant"],
        unauthorized=counters["api_401"],
        env_token_valid=emulator.is_refresh_token_valid(env_token),
        valid_in_processes=sum(emulator.is_refresh_token_valid(t) for t in held),
        survivors=len(reports),
        cooldown_races=races,
        stale_from_other_process=stale,
        env_rollbacks=env_rollbacks(side.env_trail, side.first_fingerprint, log),
        kill=side.kill,
        reported=dict(reported),
    )


@dataclass(frozen=True)
class ActResult:
    act: str
    duration: float
    sides: dict[str, SideOutcome]
    #: Where the pipeline processes' logs were kept when tokenward's side went wrong.
    logs: str | None = None


class Progress(Protocol):
    """Where live progress goes: due requests so far and the provider's counters."""

    def begin(self, act: str, total: int) -> None: ...
    def update(self, side: str, due: int, counters: dict[str, int]) -> None: ...


class NoProgress:
    def begin(self, act: str, total: int) -> None:
        pass

    def update(self, side: str, due: int, counters: dict[str, int]) -> None:
        pass


def _due(schedule: Schedule) -> int:
    elapsed = time.monotonic() - schedule.start
    if elapsed < 0:
        return 0
    return min(schedule.total, math.floor(elapsed * schedule.rate) + 1)


class Act:
    """One act's providers, directories and processes; leaving it stops them all."""

    def __init__(
        self, name: str, config: DemoConfig, emulators: Callable[[], DemoEmulator] | None = None
    ) -> None:
        self.name = name
        self.config = config
        self.duration = config.duration if name == "pipeline" else config.kill_duration
        self._make = emulators or (lambda: configured_emulator(config))
        self._stack = contextlib.ExitStack()
        self.sides: list[Side] = []

    def __enter__(self) -> Act:
        stack = self._stack.__enter__()
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tokenward-demo-")))
        for name in SIDES:
            provider = stack.enter_context(running_provider(self._make()))
            self.sides.append(Side(name, provider, tmp / name))
            stack.callback(self.sides[-1].stop)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.__exit__(None, None, None)

    def spawn(self) -> None:
        """Start the processes; they import their libraries, then wait for `run`."""
        for side in self.sides:
            side.spawn(self.config, self.duration)

    def run(self, progress: Progress, started: Callable[[], None] = lambda: None) -> ActResult:
        """Log in, start every process at once (then call `started`), and measure."""
        config, sides = self.config, self.sides
        for side in sides:
            side.wait_ready()
            side.prepare()  # the login, right before the start
        kill = self.name == "sigkill"
        holds = {side.name: side.provider.emulator.hold("token") for side in sides if kill}
        schedule = Schedule(time.monotonic() + 0.1, self.duration, config.rate, config.workers)
        progress.begin(self.name, schedule.total)
        for side in sides:
            side.go(schedule.start)
        started()
        killers = [
            threading.Thread(target=side.kill_mid_refresh, args=(holds[side.name], schedule.start))
            for side in sides
            if side.name in holds
        ]
        for killer in killers:
            killer.start()
        _watch(sides, schedule, progress, self.duration + 30)
        for killer in killers:
            killer.join()
        reports = {side.name: side.finish(30.0) for side in sides}
        result = {s.name: outcome(s, config, schedule, reports[s.name]) for s in sides}
        ours = result["tokenward"]
        wrong = ours.failed or ours.invalid_grant or not ours.env_token_valid
        return ActResult(self.name, self.duration, result, self._keep_logs() if wrong else None)

    def _keep_logs(self) -> str:
        """Copy the processes' logs (tokenward's events: fingerprints, never tokens) out of the
        directory about to be removed, so a failed self-check can be looked into."""
        kept = Path(tempfile.mkdtemp(prefix=f"tokenward-demo-{self.name}-logs-"))
        for side in self.sides:
            for log in side.directory.glob("process-*.log"):
                shutil.copy(log, kept / f"{side.name}-{log.name}")
        return str(kept)


def run_act(
    act: str,
    config: DemoConfig,
    progress: Progress | None = None,
    emulators: Callable[[], DemoEmulator] | None = None,
) -> ActResult:
    """Run one act ("pipeline" or "sigkill") with both sides at once; `emulators` makes each
    side's emulator (tests pass their own, to compare the figures with its counters)."""
    with Act(act, config, emulators) as running:
        running.spawn()
        return running.run(progress or NoProgress())


def run_both(config: DemoConfig, progress: Progress | None = None) -> tuple[ActResult, ActResult]:
    """Act 1, then act 2, whose processes start (and import) while act 1 runs."""
    progress = progress or NoProgress()
    with Act("pipeline", config) as first, Act("sigkill", config) as second:
        first.spawn()
        pipeline = first.run(progress, started=second.spawn)
        return pipeline, second.run(progress)


def _watch(sides: list[Side], schedule: Schedule, progress: Progress, limit: float) -> None:
    """Until every process has exited: note `.env` changes, update the progress bars."""
    deadline = time.monotonic() + limit
    tick = 0
    while time.monotonic() < deadline:
        for side in sides:
            side.watch_env()
        if tick % 10 == 0:
            for side in sides:
                progress.update(side.name, _due(schedule), side.provider.emulator.counters)
        if all(p.poll() is not None for side in sides for p in side.processes):
            break
        tick += 1
        time.sleep(0.01)
    for side in sides:
        progress.update(side.name, _due(schedule), side.provider.emulator.counters)
