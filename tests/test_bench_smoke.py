"""The benchmark harness (bench/, `make bench`) in a tiny configuration, so it cannot rot.

It runs `bench/run.py --quick` in a subprocess (the storm spawns worker processes, which need
`bench` importable by path) with only tokenward and the hand-made refresher in the storm, and
checks that every part produced numbers and that tokenward's storm column failed no request it
sent (a request the machine was too busy to send before the run's end is counted as failed by
the bench, which reports it: that figure is `make bench`'s, not this test's). It never writes
docs/benchmarks.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # runs the benchmarks in a subprocess

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("authlib")
pytest.importorskip("requests_oauthlib")
pytest.importorskip("httpx_auth")


@pytest.mark.timeout(420)
def test_bench_quick_produces_numbers(tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(ROOT / "bench" / "run.py"),
        "--quick",
        "--no-docs",
        "--results",
        str(tmp_path),
        "--peers",
        "tokenward,hand-made",
        "--storm-configs",
        "async:10,threads:4,processes:2",
        "--storm-duration",
        "1.2",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=400, cwd=ROOT
    )  # ~40 s quiet
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = tmp_path.glob("quick-*.json")
    results = json.loads(path.read_text())

    hot = results["hot"]["rows"]
    assert {row["case"] for row in hot} >= {"httpx2 static header", "httpx2 + tokenward"}
    assert all(row["cpu_us_per_request"] > 0 and row["requests_per_s"] > 0 for row in hot)
    assert 0 <= results["profile"]["sync"]["tokenward_share"] < 1

    storm = results["storm"]["rows"]
    ours = [row for row in storm if row["peer"] == "tokenward"]
    assert {(row["kind"], row["concurrency"]) for row in ours} == {
        ("async", 10),
        ("threads", 4),
        ("processes", 2),
    }
    for row in ours:
        assert row["requests"] > 0 and row["ok"] > 0, row
        assert row["failed"] == row["not_sent"], row  # every request sent succeeded
        assert row["invalid_grant"] == 0, row
        assert row["refresh_token_valid"], row
    assert any(row["peer"] == "hand-made" for row in storm)

    stores = results["stores"]
    assert {row["store"] for row in stores["ops"]} >= {"memory", "sqlite", "file", "dotenv"}
    assert all(row["get_per_s"] > 0 and row["cas_per_s"] > 0 for row in stores["ops"])
    assert all(row["count"] == 200 and row["write_s"] > 0 for row in stores["load"])

    broker = results["broker"]
    rows = {(row["target"], row["connections"]): row for row in broker["rows"]}
    assert set(rows) == {
        (target, count) for target in ("direct", "pass-through", "broker") for count in (1, 4)
    }
    for row in rows.values():
        assert row["requests"] > 0 and row["requests_per_s"] > 0, row
        assert row["errors"] == 0, row  # every proxied request got the upstream's 200
        assert 0 < row["p50_ms"] <= row["p99_ms"], row
    assert all(ratio["throughput_ratio"] > 0 for ratio in broker["ratios"])
    profile = broker["profile"]
    assert profile["calls_per_request"]["broker"] > profile["calls_per_request"]["pass-through"]

    scale = results["scale"]  # Redis and PostgreSQL: skipped (and named) when absent
    assert {row["store"] for row in scale["rows"]} | set(scale["skipped"]) == {"redis", "postgres"}
    for row in scale["rows"]:
        assert row["refreshes"] > 0 and row["invalid_grant"] == row["refresh_reuse"] == 0, row

    soak = results["soak"]
    assert soak["requests"] > 0 and soak["ok"] > 0
    assert soak["failed"] == soak["not_sent"], soak  # every request sent succeeded
    assert soak["rss_first_mb"] > 0 and soak["rss_last_mb"] > 0

    refresher = results["refresher"]  # Redis and PostgreSQL skipped (and named) when absent
    measured = set(refresher["side_by_side"])
    assert measured | set(refresher["skipped"]) == {"redis", "postgres", "sqlite"}
    for kind, row in refresher["side_by_side"].items():
        for impl in ("floor", "tokenward"):
            # Every due credential refreshed once, none refused: the floor is a fair floor.
            assert row[impl]["refreshed"] == refresher["refreshes"], (kind, impl, row)
            assert row[impl]["failed"] == row[impl]["invalid_grant"] == 0, (kind, impl, row)
            assert row[impl]["cpu_ms_per_refresh"] > 0, (kind, impl, row)
