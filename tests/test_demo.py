"""The demo (`make demo`) is also a self-check: tokenward must keep a busy pipeline of threads and
asyncio tasks running across many expiries, while the hand-made refresher shows why it exists."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

pytest.importorskip("rich")
pytest.importorskip("uvicorn")

from tokenward import demo
from tokenward.demo import DemoConfig, DemoResult, Outcome, Schedule, run_demo

SECRET_PREFIXES = ("APP_USR-", "TG-")


def test_tokenward_survives_where_the_hand_made_refresher_breaks() -> None:
    config = DemoConfig(duration=6.0, lifetime=1.0, workers=8)
    result = run_demo(config)
    ours, theirs = result.tokenward, result.naive
    expected = Schedule(0, config.duration, config.rate, config.workers).total

    assert ours.requests == expected
    assert ours.failed == 0, ours.errors
    assert ours.expiries >= 5
    assert abs(ours.refreshes - ours.expiries) <= 1
    assert ours.invalid_grant == 0
    assert ours.recovered == ours.expired_answers  # every 401 was replayed successfully
    assert ours.refresh_token_valid
    assert result.problems == []

    assert theirs.requests == expected
    assert theirs.invalid_grant > 0
    assert theirs.failed > 0
    assert theirs.token_calls > theirs.expiries  # a refresh storm, not one per expiry

    shown = json.dumps(result.to_dict()) + demo.verdict(result)
    assert not any(prefix in shown for prefix in SECRET_PREFIXES)


def test_command_line_prints_the_table_and_exits_zero() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "tokenward.demo", "--quiet", "--duration", "4", "--lifetime", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    out = completed.stdout
    for label in ("tokenward", "hand-made refresher", "requests failed", "refreshes made"):
        assert label in out
    assert "Verdict: tokenward served" in out
    assert not any(p in out + completed.stderr for p in SECRET_PREFIXES)


def _outcome(**changes: object) -> Outcome:
    base = Outcome(
        approach="tokenward",
        requests=100,
        ok=100,
        failed=0,
        seconds=10.0,
        expiries=5,
        refreshes=5,
        token_calls=5,
        invalid_grant=0,
        expired_answers=0,
        recovered=0,
        refresh_token_valid=True,
        errors={},
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_self_check_flags_failures_extra_refreshes_and_a_lost_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bad = _outcome(ok=99, failed=1, refreshes=8, refresh_token_valid=False)
    result = DemoResult(DemoConfig(), bad, _outcome(approach="hand-made"))
    assert len(result.problems) == 3
    assert "FAILED" in demo.verdict(result)

    monkeypatch.setattr(demo, "run_demo", lambda config, display=None: result)
    assert demo.main(["--quiet", "--json"]) == 1


def test_schedule_spans_the_whole_duration() -> None:
    schedule = Schedule(start=0.0, duration=2.0, rate=10.0, workers=4)
    due = sorted(
        t for w in range(4) for seq in range(10) if (t := schedule.due(w, seq)) is not None
    )
    assert len(due) == schedule.total == 21
    assert due[0] == 0.0
    assert due[-1] == pytest.approx(2.0)


def test_refresh_tolerance_is_one_for_short_runs_and_grows_with_early_refreshes() -> None:
    assert demo.refresh_tolerance(10) == 1
    assert demo.refresh_tolerance(19) == 1
    assert demo.refresh_tolerance(100) == 6
