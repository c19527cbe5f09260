"""`make demo` / `python -m demo`: tokenward against the hand-made refresher teams
ship, side by side, as a pipeline of real processes and threads.

Why this exists: "refresh on 401 with a cooldown" looks fine in one process and fails once
refresh tokens are single-use and several processes share a credential. The demo shows both
under the same load, against the provider emulator over real HTTP on loopback: 2-second access
tokens, single-use rotating refresh tokens with reuse detection (RFC 9700: a rotated refresh
token presented again revokes the whole family), MercadoLibre-style client authentication.

- `handmade.py` is the "before" code: `.env` + globals, retry once on 401, a cooldown.
- `withtokenward.py` is the "after" code: the same helpers over `TokenAuth(manager)`.
- `pipeline.py` is one process of the pipeline; `race.py` runs both sides and reads every
  figure from each side's emulator.

Act 1 runs the pipeline across 10 token lifetimes; act 2 kills one process of each side with
SIGKILL mid-refresh. tokenward's column is also a self-check (no failed request, one refresh
per expiry, a valid refresh token after both acts): otherwise the exit status is 1. No secret
is printed: tokens never leave the processes and the `.env` files, only counts are shown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .workload import (
    ML_EXPIRY_RULE,
    NaiveApproach,
    Schedule,
    Tally,
    _attempt,
    _drain,
    _request_args,
)

if TYPE_CHECKING:  # imported when the demo runs, not when bench/ imports the workload
    from rich.console import Console
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID

    from .race import ActResult, DemoConfig, SideOutcome

__all__ = [
    "ML_EXPIRY_RULE",
    "DemoResult",
    "NaiveApproach",
    "Schedule",
    "Tally",
    "_attempt",
    "_drain",
    "_request_args",
    "main",
    "run_demo",
]


@dataclass(frozen=True)
class DemoResult:
    config: DemoConfig
    pipeline: ActResult
    sigkill: ActResult

    @property
    def problems(self) -> list[str]:
        """Why tokenward's column fails the self-check (empty: it passes)."""
        ours, killed = self.pipeline.sides["tokenward"], self.sigkill.sides["tokenward"]
        found = []
        if ours.failed:
            found.append(f"{ours.failed} requests failed")
        if ours.invalid_grant or killed.invalid_grant:
            found.append("invalid_grant answers")
        if ours.refreshes > most_refreshes(ours.lifetimes):
            found.append(
                f"{ours.refreshes} refreshes in {ours.lifetimes} token lifetimes (one per expiry "
                f"makes at most {most_refreshes(ours.lifetimes)})"
            )
        if not ours.env_token_valid:
            found.append("the refresh token in .env is no longer valid after act 1")
        if not killed.env_token_valid:
            found.append("the refresh token in .env is no longer valid after the SIGKILL")
        if killed.kill is None or not killed.kill.abandoned:
            found.append("no process was killed mid-refresh")
        return found

    @property
    def expiries(self) -> int:
        """Access tokens of tokenward's pipeline that reached their refresh window in act 1."""
        return self.pipeline.sides["tokenward"].expiries

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "pipeline": asdict(self.pipeline),
            "sigkill": asdict(self.sigkill),
            "self_check": {"passed": not self.problems, "problems": self.problems},
        }


def most_refreshes(lifetimes: int) -> int:
    """The most refreshes one refresh per expiry makes while `lifetimes` whole lifetimes pass
    (from the login to the last API request, so less than `lifetimes + 1`): a token is refreshed
    no earlier than its refresh window, at (1 - window) of its lifetime, counted from when its
    request was sent, and the last refresh is due before the last request. More is a refresh
    that was not needed, at any load (the count of expiries cannot tell: a refresh made too
    early adds a token, which reaches its window later in the run).

    There is no lower bound: a run that made no request for a lifetime (a stalled process on a
    busy machine) needs no refresh for it; a token left to expire shows as failed requests."""
    from tokenward.manager import RefreshPolicy

    window = RefreshPolicy().window_fraction
    return math.ceil((lifetimes + 1) / (1 - window) - 1e-9) - 1


def run_demo(config: DemoConfig, progress: Any = None) -> DemoResult:
    """Both acts, each with both sides at once (act 2's processes start during act 1)."""
    from .race import run_both

    return DemoResult(config, *run_both(config, progress))


# -- presentation -------------------------------------------------------------------------------
def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def _seen(count: int) -> str:
    return f"yes ({count}x)" if count else "no"


PIPELINE_ROWS: tuple[tuple[str, Callable[[SideOutcome], str]], ...] = (
    ("requests sent", lambda o: str(o.requests)),
    ("access-token lifetimes", lambda o: str(o.lifetimes)),
    ("access tokens due a refresh", lambda o: str(o.expiries)),
    ("requests ok", lambda o: str(o.ok)),
    ("requests failed", lambda o: str(o.failed)),
    ("token endpoint calls", lambda o: str(o.token_calls)),
    ("refreshes made", lambda o: str(o.refreshes)),
    ("invalid_grant answers", lambda o: str(o.invalid_grant)),
    ("401 answers", lambda o: str(o.unauthorized)),
    ("refresh token in .env valid at the end", lambda o: _yes(o.env_token_valid)),
    ("race inside the cooldown", lambda o: _seen(o.cooldown_races)),
    ("another process's stale refresh token", lambda o: _seen(o.stale_from_other_process)),
    (".env overwritten by an older token", lambda o: _seen(o.env_rollbacks)),
)


def _killed(o: SideOutcome) -> str:
    if o.kill is None:
        return "none (no refresh started)"
    return f"process {o.kill.index} at {o.kill.at:.1f}s"


KILL_ROWS: tuple[tuple[str, Callable[[SideOutcome], str]], ...] = (
    ("killed mid-refresh (SIGKILL)", _killed),
    ("requests ok", lambda o: str(o.ok)),
    ("401 answers", lambda o: str(o.unauthorized)),
    ("token endpoint calls", lambda o: str(o.token_calls)),
    ("invalid_grant answers", lambda o: str(o.invalid_grant)),
    ("refresh token in .env valid", lambda o: _yes(o.env_token_valid)),
    ("survivors with valid refresh token", lambda o: f"{o.valid_in_processes}/{o.survivors}"),
)


def verdict(result: DemoResult) -> str:
    """One line that says who kept the pipeline running (and its `.env` usable)."""
    if result.problems:
        logs = [act.logs for act in (result.pipeline, result.sigkill) if act.logs]
        kept = f" (process logs: {', '.join(logs)})" if logs else ""
        return (
            "Verdict: tokenward FAILED its self-check: " + "; ".join(result.problems) + kept + "."
        )
    ours, theirs = result.pipeline.sides["tokenward"], result.pipeline.sides["hand-made"]
    after_kill = result.sigkill.sides["hand-made"]

    def env(side: SideOutcome) -> str:
        return "valid" if side.env_token_valid else "dead"

    return (
        f"Verdict: tokenward served {ours.ok}/{ours.requests} requests with {ours.refreshes} "
        f"refreshes for {result.expiries} expiries and kept a valid refresh token in .env, also "
        f"after a SIGKILL mid-refresh; the hand-made refresher failed "
        f"{theirs.failed}/{theirs.requests} requests with {theirs.invalid_grant} invalid_grant "
        f"answers and left a {env(theirs)} refresh token in .env ({env(after_kill)} after the "
        "SIGKILL)."
    )


def _table(title: str, rows: Any, act: ActResult) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("tokenward", justify="right")
    table.add_column("hand-made refresher", justify="right")
    for label, cell in rows:
        table.add_row(label, cell(act.sides["tokenward"]), cell(act.sides["hand-made"]))
    return table


def render(result: DemoResult, console: Console) -> None:
    """Both acts' tables and the verdict, on a rich console."""
    c = result.config
    console.print(
        f"{c.processes} processes x {c.threads} threads per side, {c.rate:g} requests/s per "
        f"side, {c.lifetime:g} s access tokens, single-use rotating refresh tokens"
        f"{' with reuse detection' if c.reuse_detection else ''}, {c.token_latency * 1000:g} ms "
        f"token endpoint. Hand-made cooldown {c.cooldown:g} s (10 s in the original, scaled "
        f"to the {c.lifetime:g} s tokens); tokenward lease {c.lease_ttl:g} s (30 s by default)."
    )
    console.print(
        _table(
            f"Act 1: the pipeline, {result.pipeline.duration:g} s", PIPELINE_ROWS, result.pipeline
        )
    )
    console.print(
        _table(
            f"Act 2: one process per side killed mid-refresh, {result.sigkill.duration:g} s",
            KILL_ROWS,
            result.sigkill,
        )
    )
    console.print(verdict(result))


ACT_NAMES = {"pipeline": "act 1", "sigkill": "act 2"}


class BarDisplay:
    """A live progress bar per side: requests due so far, and the provider's counters."""

    def __init__(self, progress: RichProgress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}

    def begin(self, act: str, total: int) -> None:
        for task in self._tasks.values():
            self._progress.update(task, visible=False)
        for side in ("tokenward", "hand-made"):
            self._tasks[side] = self._progress.add_task(
                f"{ACT_NAMES[act]} {side}", total=total, ok=0, u401=0, calls=0, grant=0
            )

    def update(self, side: str, due: int, counters: dict[str, int]) -> None:
        self._progress.update(
            self._tasks[side],
            completed=due,
            ok=counters["api_ok"],
            u401=counters["api_401"],
            calls=counters["token_requests"],
            grant=counters["invalid_grant"],
        )


@contextlib.contextmanager
def live_progress(quiet: bool) -> Iterator[Any]:
    """Rich progress bars on stderr, or none with `quiet`."""
    if quiet:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (
        TextColumn("{task.description:<17}"),
        BarColumn(bar_width=12),
        MofNCompleteColumn(),
        TextColumn("ok [bold]{task.fields[ok]:>4}[/]"),
        TextColumn("401 {task.fields[u401]:>4}"),
        TextColumn("token calls {task.fields[calls]:>3}"),
        TextColumn("invalid_grant {task.fields[grant]:>3}"),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        yield BarDisplay(progress)


# -- command line -------------------------------------------------------------------------------
def _parser(defaults: DemoConfig) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description="tokenward vs the hand-made token refresher, against the provider emulator.",
    )
    parser.add_argument("--duration", type=float, default=defaults.duration, help="act 1, s")
    parser.add_argument("--kill-duration", type=float, default=defaults.kill_duration)
    parser.add_argument("--lifetime", type=float, default=defaults.lifetime, help="seconds")
    parser.add_argument("--processes", type=int, default=defaults.processes)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="requests/s per side")
    parser.add_argument("--quiet", action="store_true", help="no live progress bars")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--no-reuse-detection",
        action="store_true",
        help="the provider does not revoke the token family when a rotated token is reused",
    )
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[DemoConfig, argparse.Namespace]:
    """The run's configuration and the display options; a bad value exits with usage (2)."""
    from .race import DemoConfig

    parser = _parser(DemoConfig())
    args = parser.parse_args(argv)
    try:
        config = DemoConfig(
            duration=args.duration,
            kill_duration=args.kill_duration,
            lifetime=args.lifetime,
            processes=args.processes,
            threads=args.threads,
            rate=args.rate,
            reuse_detection=not args.no_reuse_detection,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return config, args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; exit status 1 when tokenward's own column fails the self-check."""
    try:
        import dotenv  # noqa: F401
        import requests  # noqa: F401
        from rich.console import Console
    except ImportError as exc:
        print(f"the demo needs the demo extra: pip install -e '.[demo]' ({exc})", file=sys.stderr)
        return 2
    config, args = parse_args(argv)
    with live_progress(args.quiet or args.json) as progress:
        result = run_demo(config, progress)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        render(result, Console())
    return 1 if result.problems else 0
