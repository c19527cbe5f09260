"""The demo (`make demo`) races the hand-made refresher teams ship against tokenward, as real
processes over real HTTP. These tests pin what makes it honest: every figure is the provider's
own count (not the demo's bookkeeping), the hand-made side keeps its cooldown and retry-once
rule, and the SIGKILL act kills the process whose token request has reached the provider."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("rich")
pytest.importorskip("uvicorn")
pytest.importorskip("requests")
pytest.importorskip("dotenv")

import itertools

import demo
from demo import DemoResult
from demo.race import (
    ActResult,
    DemoConfig,
    DemoEmulator,
    Kill,
    SideOutcome,
    configured_emulator,
    env_rollbacks,
    failure_modes,
    run_act,
)

#: The clone `python -m demo` runs from (`make demo` runs there; the demo is not in the wheel).
ROOT = Path(__file__).resolve().parents[1]
SECRET_PREFIXES = ("APP_USR-", "TG-")
SMALL = DemoConfig(duration=3.0, kill_duration=2.6, lifetime=1.0, processes=2, threads=2, rate=40.0)


class Recorder:
    """Makes each side's emulator, and keeps it so the test can read its counters."""

    def __init__(self, config: DemoConfig) -> None:
        self.config = config
        self.made: list[DemoEmulator] = []

    def __call__(self) -> DemoEmulator:
        emulator = configured_emulator(self.config)
        if not self.made:  # the tokenward side: three API answers say "expired" (replayed)
            emulator.inject("401", times=3, endpoint="api")
        self.made.append(emulator)
        return emulator


@pytest.mark.e2e
def test_every_figure_is_the_providers_own_count() -> None:
    recorder = Recorder(SMALL)
    act = run_act("pipeline", SMALL, emulators=recorder)
    ours, theirs = act.sides["tokenward"], act.sides["hand-made"]

    for side, emulator in zip((ours, theirs), recorder.made, strict=True):
        counters = emulator.counters
        assert side.ok == counters["api_ok"]
        assert side.failed == side.requests - counters["api_ok"]
        assert side.token_calls == counters["token_requests"]
        assert side.refreshes == counters["refreshes"]
        assert side.invalid_grant == counters["invalid_grant"]
        assert side.unauthorized == counters["api_401"]
        # The processes' own tallies agree, and never decide a figure.
        assert side.reported.get("200", 0) == side.ok
        assert sum(side.reported.values()) == side.requests
    # The three injected 401s were replayed: invisible to the pipeline, counted by the provider.
    assert ours.unauthorized >= 3 and ours.reported == {"200": ours.requests}
    assert ours.failed == 0 and ours.invalid_grant == 0 and ours.env_token_valid
    # One refresh per lifetime for all processes together, plus at most one per injected 401
    # (a 401 on the current token means it was revoked: tokenward refreshes, then replays).
    # The lifetimes run from the login to the provider's last API request: on a loaded machine
    # the run lasts longer than its schedule, and needs more refreshes.
    assert ours.lifetimes >= 3 and ours.expiries >= 1
    assert 1 <= ours.refreshes <= demo.most_refreshes(ours.lifetimes) + 3
    assert (ours.cooldown_races, ours.stale_from_other_process, ours.env_rollbacks) == (0, 0, 0)
    # No refresh token was presented twice: each one was spent once, by one process.
    presented = [entry["presented"] for entry in recorder.made[0].grant_log]
    assert len(presented) == len(set(presented)) == ours.refreshes

    # The hand-made side: several processes spend the same refresh token at the first expiry.
    assert theirs.stale_from_other_process >= 1 and theirs.invalid_grant >= 1
    assert not theirs.env_token_valid and theirs.failed > 0


@pytest.mark.e2e
def test_the_hand_made_side_keeps_its_cooldown_and_retry_once() -> None:
    recorder = Recorder(SMALL)
    act = run_act("pipeline", SMALL, emulators=recorder)
    theirs, emulator = act.sides["hand-made"], recorder.made[1]
    counters = emulator.counters

    assert counters["api_calls"] <= 2 * theirs.requests  # at most one retry per request
    assert counters["api_calls"] > theirs.requests  # and it does retry
    by_process: dict[str, list[float]] = {}
    for entry in emulator.grant_log:
        by_process.setdefault(entry["agent"], []).append(entry["clock"])
    assert len(by_process) == SMALL.processes  # every process refreshed on its own
    for clocks in by_process.values():
        gaps = [later - earlier for earlier, later in itertools.pairwise(clocks)]
        spaced = [gap for gap in gaps if gap >= SMALL.cooldown / 2]
        assert len(gaps) - len(spaced) <= theirs.cooldown_races  # only a race beats it
        # Its token calls fall between the login and the last API request (each one is
        # followed by its retry), less than `expiries + 1` lifetimes: the run's real length,
        # longer than its schedule on a loaded machine.
        lasted = (theirs.lifetimes + 1) * SMALL.lifetime
        assert len(clocks) <= lasted / SMALL.cooldown + 1 + theirs.cooldown_races


@pytest.mark.e2e
def test_sigkill_lands_on_the_process_whose_token_request_reached_the_provider() -> None:
    recorder = Recorder(replace(SMALL, processes=3))
    act = run_act("sigkill", recorder.config, emulators=recorder)
    ours, theirs = act.sides["tokenward"], act.sides["hand-made"]

    for side, emulator in zip((ours, theirs), recorder.made, strict=True):
        assert side.kill is not None and side.kill.abandoned, side
        assert side.survivors == 2
        counters = emulator.counters
        assert counters["abandoned_requests"] >= 1  # the killed process's token request
        killed = f"orders-pipeline/{side.kill.pid}"
        assert killed not in {e["agent"] for e in emulator.grant_log}
    # tokenward: another process took over the lease; nothing was spent twice.
    assert ours.invalid_grant == 0 and ours.env_token_valid
    assert ours.valid_in_processes == 2 and ours.refreshes >= 1
    assert ours.reported == {"200": ours.reported.get("200", 0)}  # survivors never failed
    # The hand-made survivors each spend the login's refresh token: one wins, the family dies.
    assert theirs.invalid_grant >= 1 and not theirs.env_token_valid
    assert theirs.valid_in_processes == 0


def test_failure_modes_are_read_from_the_grant_log() -> None:
    def entry(
        agent: str, presented: str, outcome: str, clock: float, new: str | None = None
    ) -> dict[str, object]:
        return {
            "agent": agent,
            "presented": presented,
            "outcome": outcome,
            "clock": clock,
            "new": new,
        }

    log = [
        entry("p/1", "a", "rotated", 1.0, "b"),
        entry("p/1", "a", "reused", 1.01),  # same process, inside the cooldown: a race
        entry("p/2", "a", "revoked", 1.02),  # family already revoked: neither mode
        entry("p/3", "b", "rotated", 2.0, "c"),
        entry("p/2", "b", "reused", 2.1),  # another process rotated it: stale
        entry("p/2", "b", "revoked", 3.0),  # after the cooldown: not a race
    ]
    assert failure_modes(log, cooldown=0.5) == (1, 1)
    assert env_rollbacks(["a", "b", "a", "c", "b", "x"], "a", log) == 2


def _side(name: str, **changes: object) -> SideOutcome:
    base = SideOutcome(
        side=name,
        requests=100,
        lifetimes=10,
        expiries=10,
        ok=100,
        failed=0,
        token_calls=10,
        refreshes=10,
        invalid_grant=0,
        unauthorized=0,
        env_token_valid=True,
        valid_in_processes=2,
        survivors=2,
        cooldown_races=0,
        stale_from_other_process=0,
        env_rollbacks=0,
        kill=Kill(0, 4242, 1.0, True),
        reported={"200": 100},
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _result(ours: SideOutcome, killed: SideOutcome) -> DemoResult:
    theirs = _side("hand-made", ok=10, failed=90, invalid_grant=5, env_token_valid=False)
    return DemoResult(
        DemoConfig(),
        ActResult("pipeline", 20.0, {"tokenward": ours, "hand-made": theirs}),
        ActResult("sigkill", 6.0, {"tokenward": killed, "hand-made": theirs}),
    )


def test_self_check_flags_each_broken_promise(monkeypatch: pytest.MonkeyPatch) -> None:
    good = _result(_side("tokenward"), _side("tokenward"))
    assert good.problems == []
    assert demo.verdict(good).startswith("Verdict: tokenward served 100/100")

    bad = _result(
        _side("tokenward", ok=99, failed=1, refreshes=14, env_token_valid=False),
        _side("tokenward", env_token_valid=False, kill=None),
    )
    assert len(bad.problems) == 5, bad.problems
    assert "FAILED" in demo.verdict(bad)
    with_logs = replace(bad, pipeline=replace(bad.pipeline, logs="/tmp/kept-logs"))
    assert "(process logs: /tmp/kept-logs)" in demo.verdict(with_logs)
    monkeypatch.setattr(demo, "run_demo", lambda config, progress=None: bad)
    assert demo.main(["--quiet", "--json"]) == 1


@pytest.mark.e2e
def test_command_line_shows_both_acts_and_the_verdict() -> None:
    args = ["--quiet", "--duration", "3", "--kill-duration", "2.6", "--lifetime", "1"]
    args += ["--processes", "2", "--threads", "2", "--rate", "40"]
    completed = subprocess.run(
        [sys.executable, "-m", "demo", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    out = completed.stdout
    for label in (
        "Act 1",
        "Act 2",
        "hand-made refresher",
        "invalid_grant answers",
        "cooldown 0.25 s",
        "killed mid-refresh",
        "Verdict: tokenward served",
    ):
        assert label in out, label
    assert not any(p in out + completed.stderr for p in SECRET_PREFIXES)


@pytest.mark.e2e
def test_help_in_a_subprocess() -> None:
    """`python -m demo --help` from the clone (was `tokenward demo --help` while the demo was
    in the package): the options, no run."""
    completed = subprocess.run(
        [sys.executable, "-m", "demo", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert completed.returncode == 0, completed.stderr
    assert "usage: python -m demo" in completed.stdout and "--duration" in completed.stdout


@pytest.mark.e2e
def test_json_output_holds_no_secret() -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "demo",
            "--json",
            "--duration",
            "2",
            "--kill-duration",
            "2.6",
            "--lifetime",
            "1",
            "--processes",
            "2",
            "--threads",
            "1",
            "--rate",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    shown = completed.stdout + completed.stderr
    assert not any(p in shown for p in SECRET_PREFIXES)
    data = json.loads(completed.stdout)
    assert data["self_check"]["passed"], data["self_check"]
    assert data["sigkill"]["sides"]["tokenward"]["kill"]["abandoned"] is True


def test_docs_show_the_real_code_of_both_sides() -> None:
    """docs/demo.md's code blocks are verbatim excerpts of the modules the demo runs."""
    code = "".join(
        (ROOT / "demo" / name).read_text() for name in ("handmade.py", "withtokenward.py")
    )
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "demo.md").read_text(), re.S)
    assert len(blocks) >= 5
    for block in blocks:
        assert block in code, block


@pytest.mark.e2e
def test_a_broken_tokenward_side_is_caught_and_its_logs_kept() -> None:
    """The self-check is not decoration: a provider that refuses tokenward's refresh token
    (an injected invalid_grant) shows up in the figures, and the processes' logs are kept."""

    class Refusing(DemoEmulator):
        def reset_counters(self) -> None:  # the demo resets them right after the login
            super().reset_counters()
            self.inject("invalid_grant", times=50)

    settings = configured_emulator(SMALL).settings()
    act = run_act("pipeline", SMALL, emulators=lambda: Refusing(**settings))
    ours = act.sides["tokenward"]
    assert ours.invalid_grant >= 1 and ours.failed > 0
    assert act.logs is not None
    logs = sorted(Path(act.logs).glob("tokenward-process-*.log"))
    assert len(logs) == SMALL.processes
    text = "".join(log.read_text() for log in logs)
    assert "reauth.required" in text
    assert not any(prefix in text for prefix in SECRET_PREFIXES)
    shutil.rmtree(act.logs)
