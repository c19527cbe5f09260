"""Writes docs/benchmarks.md and its plots (docs/benchmarks/*.png) from a results dict.

Every number in the page comes from the results the harness produced (bench/results/latest.json).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

HOT_TARGET = 1.03
STORM_TARGET = 1.05
BROKER_TARGET = 0.90


def _fmt(value: float, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def checks(results: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """(target, met, measured) for every target the issue sets."""
    out: list[tuple[str, bool, str]] = []
    hot = results.get("hot")
    if hot:
        counted = {
            row["mode"]: row
            for row in (results.get("instructions") or {}).get("rows", [])
            if row["case"] == "httpx2 + tokenward"
        }
        for row in hot["rows"]:
            if row["case"] != "httpx2 + tokenward":
                continue
            timed = (
                f"time {row['cpu_ratio_vs_static']:.3f} (IQR {row['cpu_ratio_iqr'][0]:.3f}-"
                f"{row['cpu_ratio_iqr'][1]:.3f})"
            )
            target = f"hot path ({row['mode']}): CPU/request <= {HOT_TARGET:.2f} x static"
            if row["mode"] in counted:
                # Instructions decide: the timing's spread on this VM is wider than the target.
                ratio = counted[row["mode"]]["ratio_vs_static"]
                out.append((target, ratio <= HOT_TARGET, f"{ratio:.4f} in instructions; {timed}"))
            else:
                out.append((target, row["cpu_ratio_vs_static"] <= HOT_TARGET, timed))
    storm = results.get("storm")
    if storm:
        ours = [row for row in storm["rows"] if row["peer"] == "tokenward"]
        failed = sum(row["failed"] for row in ours)
        worst = max((row["refreshes_per_expiry"] for row in ours), default=float("nan"))
        lost = [
            f"{row['kind']} {row['concurrency']}" for row in ours if not row["refresh_token_valid"]
        ]
        out.append(("storm: tokenward fails 0 requests", failed == 0, f"{failed} failed"))
        out.append(
            (
                f"storm: tokenward <= {STORM_TARGET} refreshes per expiry",
                worst <= STORM_TARGET,
                f"worst {worst:.3f}",
            )
        )
        out.append(
            (
                "storm: tokenward's refresh token never lost",
                not lost,
                "valid in every run" if not lost else "lost in " + ", ".join(lost),
            )
        )
    broker = results.get("broker")
    if broker:
        for ratio in broker["ratios"]:
            low, high = ratio.get("throughput_ratio_range", [math.nan, math.nan])
            out.append(
                (
                    f"broker ({ratio['connections']} connections): requests/s >= "
                    f"{BROKER_TARGET * 100:.0f} % of the bare pass-through",
                    ratio["throughput_ratio"] >= BROKER_TARGET,
                    f"{ratio['throughput_ratio'] * 100:.1f} % (rounds {low * 100:.0f}-"
                    f"{high * 100:.0f} %)",
                )
            )
    instructions = results.get("broker_instructions")
    if broker and instructions:
        ratio = instructions["throughput_ratio"]
        out.append(
            (
                f"broker: requests/s >= {BROKER_TARGET * 100:.0f} % of the bare pass-through, "
                "from instructions per request (load-independent)",
                ratio >= BROKER_TARGET,
                f"{ratio * 100:.1f} % ({instructions['broker_per_request']:,} vs "
                f"{instructions['pass_through_per_request']:,} instructions/request)",
            )
        )
    soak = results.get("soak")
    if soak:
        out.append(("soak: 0 failures", soak["failed"] == 0, f"{soak['failed']} failed"))
        out.append(
            (
                "soak: RSS last vs first window within 5 %",
                abs(soak["rss_growth"]) <= 0.05,
                f"{soak['rss_growth'] * 100:+.1f} %",
            )
        )
    mcp = results.get("mcp")
    if mcp:
        mcp_ours = next(row for row in mcp["rows"] if row["peer"] == "tokenward")
        out.append(
            (
                "mcp: 4 agent processes, tokenward fails 0 tool calls",
                mcp_ours["failed"] == 0,
                f"{mcp_ours['failed']} of {mcp_ours['calls']} failed",
            )
        )
        out.append(
            (
                f"mcp: tokenward <= {STORM_TARGET} refreshes per expiry",
                mcp_ours["refreshes_per_expiry"] <= STORM_TARGET,
                f"{mcp_ours['refreshes_per_expiry']:.3f}",
            )
        )
        out.append(
            (
                "mcp: the grant survives (no reused refresh token)",
                mcp_ours["grant_alive"] and mcp_ours["reuse_detected"] == 0,
                f"{mcp_ours['invalid_grant']} invalid_grant, "
                f"grant {'alive' if mcp_ours['grant_alive'] else 'REVOKED'}",
            )
        )
    for row in (results.get("scale") or {}).get("rows", []):
        out.append(
            (
                f"scale ({row['store']}): 3 refresher processes, no refresh late or missed",
                row["late"] == 0 and row["missed"] == 0,
                f"{row['late']} late (worst {row['worst_late']:.2f} s), {row['missed']} missed",
            )
        )
        out.append(
            (
                f"scale ({row['store']}): no double refresh, no refresh token refused",
                row["twice"] == 0 and row["invalid_grant"] == 0 and row["refresh_reuse"] == 0,
                f"{row['twice']} twice, {row['invalid_grant']} invalid_grant",
            )
        )
    out += _refresher_checks(results.get("refresher") or {})
    return out


def _refresher_checks(refresher: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """Issue 13: CPU per refresh within 1.3x the floor; flat (20 %) from 10k to 1M credentials."""
    out = []
    for kind, row in refresher.get("side_by_side", {}).items():
        out.append(
            (
                f"refresher ({kind}): CPU per refresh at most 1.3x the floor's",
                row["ratio"] <= 1.3,
                f"{row['tokenward']['cpu_ms_per_refresh']:.3f} ms vs "
                f"{row['floor']['cpu_ms_per_refresh']:.3f} ms: {row['ratio']:.2f}x",
            )
        )
    for kind, rows in refresher.get("growth", {}).items():
        costs = [row["tokenward"]["cpu_ms_per_refresh"] for row in rows]
        if len(costs) > 1:
            spread = max(costs) / min(costs)
            sizes = f"{rows[0]['credentials']:,} to {rows[-1]['credentials']:,}"
            out.append(
                (
                    f"refresher ({kind}): cost per refresh flat (20 %) from {sizes} credentials",
                    spread <= 1.2,
                    ", ".join(f"{cost:.3f}" for cost in costs) + f" ms ({spread:.2f}x)",
                )
            )
    return out


# -- plots ---------------------------------------------------------------------------------------
def _plots(results: dict[str, Any], directory: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}

    hot = results.get("hot")
    if hot:
        fig, axes = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [10, 6]})
        for ax, mode in zip(axes, ("sync", "async"), strict=True):
            rows = [row for row in hot["rows"] if row["mode"] == mode]
            names = [row["case"] for row in rows]
            values = [row["cpu_us_per_request"] for row in rows]
            colors = [
                "tab:green" if "tokenward" in n else "tab:gray" if "static" in n else "tab:blue"
                for n in names
            ]
            ax.barh(names, values, color=colors)
            ax.invert_yaxis()
            ax.set_title(f"{mode}: client CPU per request (us, lower is better)")
            ax.tick_params(axis="y", labelsize=8)
        fig.tight_layout()
        fig.savefig(directory / "hot.png", dpi=90)
        plt.close(fig)
        made["hot"] = "hot.png"

    storm = results.get("storm")
    if storm:
        rows = storm["rows"]
        configs = list(dict.fromkeys(f"{r['kind']} {r['concurrency']}" for r in rows))
        peers = list(dict.fromkeys(r["peer"] for r in rows))
        fig, axes = plt.subplots(2, 1, figsize=(13, 8), sharex=True)
        width = 0.8 / max(len(peers), 1)
        for i, peer in enumerate(peers):
            xs, fails, per = [], [], []
            for j, config in enumerate(configs):
                for r in rows:
                    if r["peer"] == peer and f"{r['kind']} {r['concurrency']}" == config:
                        xs.append(j + i * width)
                        fails.append(100 * r["failure_rate"])
                        per.append(r["refreshes_per_expiry"])
            axes[0].bar(xs, fails, width, label=peer)
            axes[1].bar(xs, per, width, label=peer)
        axes[0].set_ylabel("failed requests (%)")
        axes[1].set_ylabel("refreshes per expiry")
        axes[1].axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        axes[1].set_xticks([j + 0.4 - width / 2 for j in range(len(configs))], configs)
        axes[0].legend(fontsize=8, ncol=3)
        axes[0].set_title(
            f"Refresh storm: {storm['lifetime']:g}-second tokens, rotating refresh tokens"
        )
        fig.tight_layout()
        fig.savefig(directory / "storm.png", dpi=90)
        plt.close(fig)
        made["storm"] = "storm.png"

    broker = results.get("broker")
    if broker:
        rows = broker["rows"]
        counts = list(dict.fromkeys(r["connections"] for r in rows))
        targets = list(dict.fromkeys(r["target"] for r in rows))
        target_colors = {"direct": "tab:gray", "pass-through": "tab:blue", "broker": "tab:green"}
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
        width = 0.8 / max(len(targets), 1)
        for i, target in enumerate(targets):
            mine = {r["connections"]: r for r in rows if r["target"] == target}
            xs = [j + i * width for j in range(len(counts))]
            axes[0].bar(
                xs,
                [mine[c]["requests_per_s"] for c in counts],
                width,
                label=target,
                color=target_colors.get(target),
            )
            axes[1].bar(
                xs,
                [mine[c]["p99_ms"] for c in counts],
                width,
                label=target,
                color=target_colors.get(target),
            )
        for ax in axes:
            ax.set_xticks([j + width for j in range(len(counts))], [f"{c} conn." for c in counts])
            ax.set_yscale("log")
        axes[0].set_title("requests/s (log; higher is better)")
        axes[1].set_title("p99 latency, ms (log; lower is better)")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(directory / "broker.png", dpi=90)
        plt.close(fig)
        made["broker"] = "broker.png"

    stores = results.get("stores")
    if stores and stores["ops"]:
        rows = stores["ops"]
        fig, ax = plt.subplots(figsize=(11, 4.5))
        names = [r["store"] for r in rows]
        width = 0.27
        for k, (field, label) in enumerate(
            [
                ("get_per_s", "get"),
                ("cas_per_s", "compare-and-set"),
                ("lease_cycles_per_s", "lease"),
            ]
        ):
            ax.bar(
                [i + k * width for i in range(len(rows))],
                [r[field] for r in rows],
                width,
                label=label,
            )
        ax.set_xticks([i + width for i in range(len(rows))], names)
        ax.set_yscale("log")
        ax.set_ylabel("operations per second (log)")
        ax.legend()
        ax.set_title("Store operations, one thread")
        fig.tight_layout()
        fig.savefig(directory / "stores.png", dpi=90)
        plt.close(fig)
        made["stores"] = "stores.png"

    soak = results.get("soak")
    if soak and soak.get("rss_samples"):
        fig, ax = plt.subplots(figsize=(11, 3.5))
        ax.plot([s[0] for s in soak["rss_samples"]], [s[1] for s in soak["rss_samples"]])
        ax.set_xlabel("seconds")
        ax.set_ylabel("client RSS (MB)")
        ax.set_ylim(bottom=0)
        ax.set_title(f"Soak: {soak['workers']} workers, 1-second tokens, {soak['duration']:g} s")
        fig.tight_layout()
        fig.savefig(directory / "soak.png", dpi=90)
        plt.close(fig)
        made["soak"] = "soak.png"
    return made


# -- the page ------------------------------------------------------------------------------------
def _hot_section(
    hot: dict[str, Any], profile: dict[str, Any] | None, counted: dict[str, Any] | None
) -> list[str]:
    lines = [
        "## 1. Hot path: a fresh token, one request after another",
        "",
        f"Each case sent {hot['requests_per_round']} GET requests per round, {hot['rounds']} "
        "rounds, cases in a new random order each round; figures are medians over the rounds. "
        "The server (`bench/fastserver.py`, raw asyncio, answers 200) runs in a separate "
        "process: CPU is `time.process_time()` of the client process only. The ratio is the "
        "median of the per-round ratios to the static `Authorization` header on the same client "
        "library (both measured in the same round), with its interquartile range: the spread "
        "shows how much of a difference is noise on this machine.",
        "",
        "| mode | client | requests/s | CPU us/request | CPU ratio vs static header "
        "(IQR) | CPU ratio vs httpx2 static |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in hot["rows"]:
        iqr = row["cpu_ratio_iqr"]
        lines.append(
            f"| {row['mode']} | {row['case']} | {_fmt(row['requests_per_s'])} | "
            f"{_fmt(row['cpu_us_per_request'], 1)} | {row['cpu_ratio_vs_static']:.3f} "
            f"({iqr[0]:.3f}-{iqr[1]:.3f}) | {row['cpu_ratio_vs_httpx2_static']:.3f} |"
        )
    if counted:
        lines += [
            "",
            "**Instructions per request** (`bench/instructions.py`): each case once more in its "
            "own process under valgrind's callgrind, which counts the instructions the client "
            f"process executes for {counted['requests']:,} requests after a "
            f"{counted['warmup']}-request warm-up (the server runs natively). A count does not "
            "move with the machine's load, so this is the measure the 3 % target is checked "
            "against; the timings above show the same cost through this VM's noise.",
            "",
            "| mode | client | instructions/request | ratio vs static header |",
            "|---|---|---:|---:|",
        ]
        for row in counted["rows"]:
            lines.append(
                f"| {row['mode']} | {row['case']} | {row['instructions_per_request']:,} | "
                f"{row['ratio_vs_static']:.4f} |"
            )
    if profile:
        lines += [
            "",
            "**Where tokenward's cost is** (cProfile of httpx2 + tokenward, "
            f"{profile['sync']['requests']} requests per mode; profiling inflates small Python "
            "functions, so this is an upper bound): tokenward's own functions take "
            f"{profile['sync']['tokenward_share'] * 100:.2f} % of the client's profiled time "
            f"in sync code and {profile['async']['tokenward_share'] * 100:.2f} % in async code. "
            + _calls_sentence(profile)
            + "The largest tokenward entries:",
            "",
            "| mode | function | own time us/request (profiled) | calls |",
            "|---|---|---:|---:|",
        ]
        for mode in ("sync", "async"):
            for entry in profile[mode]["top"][:5]:
                lines.append(
                    f"| {mode} | `{entry['function']}` | {entry['own_us_per_request']:.1f} | "
                    f"{entry['calls']} |"
                )
    return lines


def _calls_sentence(profile: dict[str, Any]) -> str:
    if "calls_ratio" not in profile["sync"]:
        return ""
    sync, asyn = profile["sync"], profile["async"]
    return (
        "Python function calls per request (a count, so independent of machine load): sync "
        f"{sync['calls_per_request']:.0f} with tokenward vs {sync['static_calls_per_request']:.0f} "
        f"with the static header (x{sync['calls_ratio']:.3f}), async "
        f"{asyn['calls_per_request']:.0f} vs {asyn['static_calls_per_request']:.0f} "
        f"(x{asyn['calls_ratio']:.3f}). "
    )


def _storm_section(storm: dict[str, Any]) -> list[str]:
    lines = [
        "## 2. Refresh storm",
        "",
        f"{storm['lifetime']:g}-second access tokens, single-use rotating refresh tokens with "
        f"reuse detection (a rotated refresh token presented again revokes the family, RFC "
        f"9700), a {storm['token_latency'] * 1000:.0f} ms token endpoint; the emulator runs in "
        f"its own process. **Each run lasts {storm['duration']:g} s** ({storm['duration']:g} "
        "token lifetimes; the issue's figure is 30 s, scaled down so that `make bench` stays "
        "under 10 minutes). Workers follow the demo's fixed schedule: "
        f"{storm['rate']:g} requests/s in all, spread evenly over the workers (with 1,000 "
        "tasks each sends one request every 5 s: this 2-core machine, which also runs the "
        "emulator, cannot answer 1,000 requests/s within the 1-second token lifetime, and then "
        "every client fails). A request not sent within 2 s of the run's end counts as failed "
        "(*not sent*: a client stuck behind a lock). Processes run "
        f"{storm['threads_per_process']} threads each; tokenward's processes share one SQLite "
        "store, each peer process keeps its own copy of the starting token (what those "
        "libraries offer). A request fails when the final answer is not 200. Refreshes per "
        "expiry = refreshes counted by the provider / token lifetimes elapsed. Valid refresh "
        "token = the provider still accepts the refresh token held at the end (any copy).",
        "",
        "| workers | peer | requests | failed | of which not sent | refreshes per expiry | "
        "token endpoint calls | invalid_grant | expired-token answers | valid refresh token "
        "at the end |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines_after = [
        "",
        "Reading the peers' rows: every peer is configured for auto-refresh as its documentation "
        "shows (bench/peers.py), with a 5 % early-expiry margin where it has one. Once two "
        "callers present the same refresh token, the provider's reuse detection revokes the "
        "family and every later refresh gets `invalid_grant` (the *invalid_grant* column); "
        "nothing but a new login recovers. Authlib stores `expires_at` as whole seconds "
        "(`int(time.time()) + expires_in`), so 1-second tokens look expired early and it "
        "refreshes about twice per lifetime even with one caller. requests-oauthlib has no "
        "early-expiry margin and no replay: tokens expire in flight (*expired-token answers*). "
        "httpx-auth falls back to a browser login when a refresh fails (no browser here; its "
        "timeout is set to 0.5 s), which holds callers up (*not sent*).",
    ]
    for row in storm["rows"]:
        lines.append(
            f"| {row['kind']} {row['concurrency']} | {row['peer']} | {row['requests']} | "
            f"{row['failed']} ({row['failure_rate'] * 100:.1f} %) | {row.get('not_sent', 0)} | "
            f"{row['refreshes_per_expiry']:.2f} | {row['token_calls']} | {row['invalid_grant']} | "
            f"{row['expired_answers']} | {'yes' if row['refresh_token_valid'] else 'NO'} |"
        )
    return lines + lines_after


def _broker_section(broker: dict[str, Any], counted: dict[str, Any] | None) -> list[str]:
    generator = broker["generator"]
    lines = [
        "## 3. Broker",
        "",
        "`GET /v1/proxy/{credential}/api/items` through the broker vs the same request sent "
        "to the upstream directly vs through a bare pass-through proxy on the same stack "
        "(`bench/passthrough.py`: FastAPI, uvicorn, a streaming `httpx2.AsyncClient`; no client "
        "key, no policy, no token, no path checks, no audit, no metrics). The upstream "
        "(`bench/fastserver.py`, raw asyncio, answers 200), the broker and the pass-through "
        "each run in their own process; both proxies run one uvicorn worker with the same "
        f"settings ({', '.join(f'{k}={v}' for k, v in broker['uvicorn'].items())}) and no log "
        "handler (the broker's audit lines are built but written nowhere). The broker's "
        "credential holds a one-hour client-credentials token fetched before measuring, so "
        "nothing is refreshed: this is the cost of the proxy path. Its client key is sent as "
        f"`Authorization: Bearer twk_...` by the load generator, **{generator}**, in its own "
        f"process. At each concurrency every target ran {broker['rounds']} rounds of "
        f"{broker['duration']:g} s after a {broker['warmup']:g} s warm-up, targets in a new "
        "random order each round; figures are medians over the rounds, and the ratio is the "
        "median of the per-round ratios (broker / pass-through, measured in the same round). "
        "Proxy CPU is the proxy process's user + system time per request (`/proc`). The proxy "
        "under test has the machine's last core to itself (`sched_setaffinity`); wrk and the "
        "upstream share the others, so the direct figures are the upstream's ceiling there, "
        "and the two proxies are bound by their single Python worker.",
        "",
        "| connections | target | requests/s | p50 (ms) | p99 (ms) | proxy CPU us/request | "
        "errors |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in broker["rows"]:
        cpu = row.get("proxy_cpu_us_per_request")
        lines.append(
            f"| {row['connections']} | {row['target']} | {_fmt(row['requests_per_s'])} | "
            f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {_fmt(cpu) if cpu else '-'} | "
            f"{row['errors']} |"
        )
    lines += [
        "",
        "| connections | broker / pass-through requests/s (per-round range) | broker / "
        "pass-through CPU per request |",
        "|---:|---:|---:|",
    ]
    for ratio in broker["ratios"]:
        low, high = ratio.get("throughput_ratio_range", [math.nan, math.nan])
        lines.append(
            f"| {ratio['connections']} | {ratio['throughput_ratio']:.3f} ({low:.3f}-{high:.3f}) "
            f"| {ratio['cpu_ratio']:.3f} |"
        )
    if counted:
        lines += [
            "",
            "**Instructions per request** (`bench/instructions.py`): each proxy once more under "
            "valgrind's callgrind, sent "
            f"{counted['requests']} requests one at a time after {counted['warmup']} warm-up "
            "requests, its counters zeroed and dumped around them (`callgrind_control`). The "
            f"broker executes {counted['broker_per_request']:,} instructions per request, the "
            f"pass-through {counted['pass_through_per_request']:,} "
            f"(x{counted['broker_per_request'] / counted['pass_through_per_request']:.3f}). A "
            "single-worker proxy that is bound by its CPU serves requests in inverse proportion "
            "to that work, so the broker keeps "
            f"**{counted['throughput_ratio'] * 100:.1f} %** of the pass-through's throughput by "
            "this count, which does not move with the machine's load the way the wrk rounds "
            "above do.",
        ]
    profile = broker.get("profile")
    if profile:
        calls = profile["calls_per_request"]
        us = profile["profiled_us_per_request"]
        lines += [
            "",
            "**Where the broker's extra time goes** (cProfile of each proxy in a separate "
            f"process, one connection for {profile['seconds']:g} s; profiling inflates small "
            "Python functions and includes waiting, so read the call counts first): the broker "
            f"runs {calls['broker']:.0f} Python function calls per request against the "
            f"pass-through's {calls['pass-through']:.0f} "
            f"(x{calls['broker'] / calls['pass-through']:.3f}); tokenward's own functions take "
            f"{profile['tokenward_us_per_request']:.0f} us of the broker's "
            f"{us['broker']:.0f} us profiled per request. The rest of the difference is the "
            "framework work the broker's features ask for: FastAPI resolving the client-key "
            "dependency (`HTTPBearer` + `_client`), the audit `LogRecord` (the metrics handler "
            "keeps the `tokenward` logger at INFO), Prometheus labels, and the path safety "
            "checks (`_target`, `paths.py`). The Python functions called most often more per "
            "request in the broker than in the pass-through (left), and the functions whose "
            "own time per request grows most (right; kernel waits left out):",
            "",
            "| function | extra calls/request | | function | extra own time us/request "
            "(profiled) |",
            "|---|---:|---|---|---:|",
        ]
        for by_calls, by_time in zip(
            profile["top_extra_calls"], profile["top_extra"], strict=False
        ):
            lines.append(
                f"| `{by_calls['function']}` | {by_calls['extra_calls_per_request']:.1f} | | "
                f"`{by_time['function']}` | {by_time['extra_us_per_request']:.1f} |"
            )
    return lines


def _stores_section(stores: dict[str, Any]) -> list[str]:
    lines = [
        "## 4. Stores",
        "",
        f"One thread, {stores['seconds_per_op']:g} s per operation, one key. A compare-and-set "
        "is durable when it returns (fsync / commit). A lease cycle is acquire + release.",
        "",
        "| store | get/s | compare-and-set/s | lease cycles/s |",
        "|---|---:|---:|---:|",
    ]
    for row in stores["ops"]:
        lines.append(
            f"| {row['store']} | {_fmt(row['get_per_s'])} | {_fmt(row['cas_per_s'])} | "
            f"{_fmt(row['lease_cycles_per_s'])} |"
        )
    if stores["load"]:
        lines += [
            "",
            f"Loading {stores['count']:,} credentials: written with `compare_and_set` by "
            f"{stores['load'][0]['writers']} threads, then all read back (`keys()`, then `load` "
            "for each, by as many threads) and held in a dict.",
            "",
            "| store | write all (s) | writes/s | read all (s) | reads/s | client RSS growth (MB) "
            "| store size (MB) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in stores["load"]:
            lines.append(
                f"| {row['store']} | {row['write_s']:.1f} | {_fmt(row['writes_per_s'])} | "
                f"{row['read_all_s']:.1f} | {_fmt(row['reads_per_s'])} | "
                f"{row['client_rss_growth_mb']:.0f} | {row['store_size_mb']:.1f} |"
            )
        lines += [
            "",
            "Store size: the SQLite files, Redis `used_memory` growth, PostgreSQL "
            "`pg_total_relation_size` of the records table; the memory store has no size of "
            "its own (it is the process's memory).",
        ]
    return lines


def _soak_section(soak: dict[str, Any]) -> list[str]:
    return [
        "## 5. Soak",
        "",
        f"{soak['workers']} workers (half threads, half asyncio tasks) through one "
        f"`TokenAuth(manager)`, {soak['rate']:g} requests/s, 1-second tokens, for "
        f"**{soak['duration']:g} s** (`make soak` runs the issue's 10 minutes; `make bench` a "
        f"short version). RSS windows: first and last {soak['window']:g} s.",
        "",
        "| requests | failed | refreshes per expiry | valid refresh token | RSS first window (MB) "
        "| RSS last window (MB) | change |",
        "|---:|---:|---:|---|---:|---:|---:|",
        f"| {soak['requests']} | {soak['failed']} | {soak['refreshes_per_expiry']:.3f} | "
        f"{'yes' if soak['refresh_token_valid'] else 'NO'} | {soak['rss_first_mb']:.1f} | "
        f"{soak['rss_last_mb']:.1f} | {soak['rss_growth'] * 100:+.1f} % |",
    ]


#: How the MCP peers are named on the page.
MCP_PEERS = {
    "sdk": "mcp SDK `OAuthClientProvider` + file storage",
    "sdk-expiry": "the same, told the stored expiry (fastmcp's fix)",
    "tokenward": "tokenward `McpOAuth` + SQLite store",
}


def _mcp_section(mcp: dict[str, Any]) -> list[str]:
    first = mcp["rows"][0]
    lines = [
        "## 6. MCP agents",
        "",
        f"{first['processes']} agent processes, each with one `mcp` SDK `Client` session "
        f"(streamable HTTP) and {first['concurrency']} concurrent tool-call loops, share one "
        "user's grant on a real MCP server (the SDK's `MCPServer` and authorization-server "
        f"routes, `tokenward.testing.mcp`): {first['lifetime']:g}-second access tokens, refresh "
        "tokens rotated on every use, a rotated refresh token presented again revokes the "
        "grant. Each peer gets its own server and login, then runs for the time shown "
        "(`bench/mcp_agents.py`).",
        "",
        "| peer | seconds | tool calls | failed | refreshes per expiry | invalid_grant | "
        "reuse detected | grant at the end |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in mcp["rows"]:
        lines.append(
            f"| {MCP_PEERS.get(row['peer'], row['peer'])} | {row['duration']:g} | {row['calls']} "
            f"| {row['failed']} | {row['refreshes_per_expiry']:.3f} | {row['invalid_grant']} | "
            f"{row['reuse_detected']} | {'alive' if row['grant_alive'] else 'revoked'} |"
        )
    lines += [
        "",
        "The SDK's provider reads its storage once per process and refreshes on its own: as "
        "shipped, a process that starts from stored tokens does not know their expiry and "
        "only meets a 401, which starts a browser login no worker can finish; told the expiry, "
        "every process refreshes with the same refresh token, the server sees it reused and "
        "revokes the grant. Failed calls of the SDK peers include the sessions that broke and "
        "were reopened.",
    ]
    return lines


def _scale_section(scale: dict[str, Any]) -> list[str]:
    lines = [
        "## 7. Refresher processes on the network stores",
        "",
        "Three refresher processes (`tokenward.Refresher`, 16 threads each) share the "
        "credentials on one store; their first expiries are spread over one lifetime "
        "(`bench/scale.py`). Late: a refresh that reached the provider only after the token it "
        "replaced had expired; missed: an expiry inside the run with no refresh. "
        "`tests/test_scale.py` checks what holds however busy the machine is (no token spent "
        "twice, no double refresh, every credential refreshed); these timings are this page's.",
        "",
        "| store | credentials | lifetime (s) | run (s) | refreshes/s | late | worst late (s) "
        "| missed | twice | invalid_grant | per process |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in scale["rows"]:
        lines.append(
            f"| {row['store']} | {row['count']:,} | {row['lifetime']:g} | {row['duration']:g} | "
            f"{row['refreshes_per_s']:.0f} | {row['late']} | {row['worst_late']:.2f} | "
            f"{row['missed']} | {row['twice']} | {row['invalid_grant']} | "
            f"{', '.join(str(n) for n in row['per_process'])} |"
        )
    for kind, why in scale.get("skipped", {}).items():
        lines.append(f"\n{kind}: not measured ({why}).")
    return lines


def _refresher_section(refresher: dict[str, Any]) -> list[str]:
    lines = [
        "## 8. The refresher's CPU per refresh, beside the floor",
        "",
        "CPU time (user + system, all threads) of one refresher process from its first claim to "
        f"its last stored refresh, over {refresher['refreshes']:,} credentials all due at once, "
        "divided by the refreshes stored (`bench/refresher_cpu.py`). The floor "
        "(`bench/floor.py`) is a hand-written asyncio loop doing only the unavoidable work per "
        "refresh: one token POST with httpx2, one compare-and-set that files the next due time, "
        "and a share of a batched claim that returns the records. The token endpoint is "
        "`bench/tokenprovider.py` (raw asyncio, rotating single-use refresh tokens); its own "
        "CPU per refresh is shown apart.",
        "",
        "tokenward is `tokenward.refresher.AsyncRefresher`, what `tokenward refresher` runs.",
        "",
        "| store | floor (ms) | tokenward (ms) | ratio | provider (ms) | invalid_grant |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, row in refresher.get("side_by_side", {}).items():
        floor, ours = row["floor"], row["tokenward"]
        lines.append(
            f"| {kind} | {floor['cpu_ms_per_refresh']:.3f} | {ours['cpu_ms_per_refresh']:.3f} | "
            f"{row['ratio']:.2f}x | {ours['provider_cpu_ms_per_refresh']:.3f} | "
            f"{floor['invalid_grant'] + ours['invalid_grant']} |"
        )
    lines += [
        "",
        "Where the rest goes (cProfile of both loops on Redis, 2,000 refreshes, 2026-11-28; "
        "`python bench/run.py --only refresher` for the figures above): the floor takes no "
        "lease, so tokenward makes one store round trip more per refresh (`begin_refresh`: "
        "the lease, the record read again under it, the in-flight mark that keeps a stalled "
        "leader's refresh token from being spent twice), about 0.2 ms of redis-py; its own "
        "Python (the protocol generator and its driver, record validation and JSON, the "
        "token objects) about 0.25 ms; a task per refresh about 0.05 ms. httpx2 and its "
        "transport are about 1.9 ms of both loops' profiled time alike. SQLite pays a second "
        "transaction (the lease) where the floor writes once. The round trips cannot go "
        '(docs/scale.md, "Store round trips per refresh"); the Python could be thinner.',
    ]
    if refresher.get("growth"):
        lines += [
            "",
            "Growth: the store first holds N credentials (seeded straight into it), then "
            f"{refresher['refreshes']:,} of them fall due. Claim: median wall time of one "
            "64-key claim from the refresher's client.",
            "",
            "| store | credentials | claim (ms) | CPU per refresh (ms) | bytes per credential |",
            "|---|---:|---:|---:|---:|",
        ]
        for kind, rows in refresher["growth"].items():
            for row in rows:
                lines.append(
                    f"| {kind} | {row['credentials']:,} | {row['claim_ms']:.3f} | "
                    f"{row['tokenward']['cpu_ms_per_refresh']:.3f} | "
                    f"{row['bytes_per_credential']:,} |"
                )
    if refresher.get("rss"):
        rss = refresher["rss"]
        lines += [
            "",
            f"RSS: one refresher process grew {rss['rss_growth_mb']:.1f} MB while refreshing "
            f"{rss['touched']:,} credentials on {rss['kind']}, "
            f"{rss.get('rss_warm_growth_mb', rss['rss_growth_mb']):.1f} MB of it after the first "
            f"quarter (warm-up: imports, connection pools, allocator arenas): "
            f"{rss['mb_per_100k']:.1f} MB per 100,000 credentials touched after warm-up.",
        ]
    for kind, why in refresher.get("skipped", {}).items():
        lines.append(f"\n{kind}: not measured ({why}).")
    return lines


def _parts_dates(results: dict[str, Any]) -> list[str]:
    """When parts were measured at different times (`--only` merges into latest.json)."""
    dates = results.get("parts_dates", {})
    parts = ("hot", "storm", "broker", "stores", "soak", "mcp", "scale", "refresher")
    shown = [part for part in parts if results.get(part)]
    if len({dates.get(part) for part in shown}) <= 1:
        return []
    return [
        "- parts measured at different times (`--only`): "
        + ", ".join(f"{part} {dates.get(part, 'unknown')}" for part in shown)
    ]


def _load_sentence(machine: dict[str, Any]) -> str:
    load = machine.get("load_average")
    if not load:
        return ""
    return (
        f"Load average (1, 5, 15 minutes) when the run started: {load[0]:g}, {load[1]:g}, "
        f"{load[2]:g} on {machine['cores']} cores. On a busy machine CPU-per-request figures "
        "carry several percent of noise: read them with their interquartile ranges."
    )


def write(results: dict[str, Any], page: Path) -> None:
    images = page.parent / "benchmarks"
    made = _plots(results, images)
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python bench/run.py`) from `bench/results/latest.json`; do "
        "not edit by hand. Every figure below was measured by the harness on the machine "
        "below, with all peers side by side in the same run of their part (`--only` reruns "
        "some parts and keeps the others); compare ratios, not absolute numbers, across "
        "machines.",
        "",
        f"- date: {results.get('date', m['date'])}",
        f"- CPU: {m['cpu']}, {m['cores']} cores; {m['platform']}",
        f"- Python {m['python']} ({m['implementation']})",
        f"- peers: {', '.join(f'{k} {v}' for k, v in results.get('versions', {}).items())}",
        f"- command: `{results.get('command', 'python bench/run.py').strip()}`",
        *_parts_dates(results),
        "",
        _load_sentence(m),
        "",
        "## Targets",
        "",
        "| target | met | measured |",
        "|---|---|---|",
    ]
    for target, met, measured in checks(results):
        lines.append(f"| {target} | {'yes' if met else 'NO'} | {measured} |")
    profile = results.get("profile")
    if results.get("hot") and profile and "calls_ratio" in profile["sync"]:
        sync, asyn = profile["sync"], profile["async"]
        lines += [
            "",
            "The hot-path timings are end-to-end on a shared machine: their interquartile "
            "ranges are wider than the 3 % being measured, so the target is checked on "
            "instructions counted by callgrind (section 1) when valgrind is installed. Two more "
            "measures from the same run that depend far less on machine load: tokenward adds "
            f"{sync['calls_per_request'] - sync['static_calls_per_request']:.0f}"
            " Python function calls per request to httpx2's "
            f"{profile['sync']['static_calls_per_request']:.0f} in sync code "
            f"(x{profile['sync']['calls_ratio']:.3f}) and "
            f"{asyn['calls_per_request'] - asyn['static_calls_per_request']:.0f}"
            f" to {profile['async']['static_calls_per_request']:.0f} in async code "
            f"(x{profile['async']['calls_ratio']:.3f}); its own functions take "
            f"{profile['sync']['tokenward_share'] * 100:.1f} % (sync) and "
            f"{profile['async']['tokenward_share'] * 100:.1f} % (async) of the client's profiled "
            "time (section 1).",
        ]
    sections: list[tuple[str, Callable[[dict[str, Any]], list[str]]]] = [
        ("hot", lambda r: _hot_section(r["hot"], r.get("profile"), r.get("instructions"))),
        ("storm", lambda r: _storm_section(r["storm"])),
        ("broker", lambda r: _broker_section(r["broker"], r.get("broker_instructions"))),
        ("stores", lambda r: _stores_section(r["stores"])),
        ("soak", lambda r: _soak_section(r["soak"])),
        ("mcp", lambda r: _mcp_section(r["mcp"])),
        ("scale", lambda r: _scale_section(r["scale"])),
        ("refresher", lambda r: _refresher_section(r["refresher"])),
    ]
    for name, render in sections:
        if results.get(name):
            lines += ["", *render(results)]
            if name in made:
                lines += ["", f"![{name}](benchmarks/{made[name]})"]
    lines += [
        "",
        "## Reproducing",
        "",
        "```console",
        "make bench                                   # everything above (about 14 minutes)",
        "make soak                                    # the 10-minute soak",
        "python bench/run.py --only hot,broker        # some parts (the page keeps the others)",
        "python bench/run.py --quick --no-docs        # a few seconds: does the harness work?",
        "```",
        "",
        "Redis and PostgreSQL are taken from `TOKENWARD_BENCH_REDIS_URL` "
        "(default `redis://127.0.0.1:6379/0`) and `TOKENWARD_BENCH_POSTGRES_URL` "
        "(default `postgresql://postgres@127.0.0.1:5432/test`); a store whose server does not "
        "answer is left out. The broker part uses `wrk` (installed with apt-get when missing and "
        "run as root; else the slower `bench/load.py`).",
        "",
    ]
    page.write_text("\n".join(lines))
