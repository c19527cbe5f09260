"""MCP agents side by side: the `mcp` SDK's own `OAuthClientProvider` with file token storage
versus tokenward's `McpOAuth`, against one real MCP server (tokenward.testing.mcp: the SDK's
`MCPServer` and authorization-server routes; 1-second access tokens, refresh tokens rotated on
every use, a rotated refresh token presented again revokes the grant).

Each peer gets its own server and its own grant (one login through the SDK's PKCE flow, made
once the agents are ready, so that they all start from a fresh token), and
`processes` agent processes (spawned, like the workers of an agent platform) each open one SDK
`Client` session over streamable HTTP and run `concurrency` concurrent tool-call loops, for
`duration` seconds, all sharing the user's one grant: the SDK's through its JSON token file,
tokenward's through its SQLite store. Counted: tool calls that failed, refreshes and
`invalid_grant` answers at the authorization server, whether it detected a reused refresh
token, and whether the grant is still alive at the end.

    python bench/mcp_agents.py --duration 20            # prints the rows as JSON
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable (also for spawn)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio
import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from tokenward.integrations.mcp import McpOAuth, default_client_metadata
from tokenward.stores.sqlite import SQLiteStore
from tokenward.testing.mcp import HeadlessBrowser, McpTestServer

#: sdk: the SDK's provider as shipped; sdk-expiry: the same, told the stored token's expiry
#: when it loads it (what fastmcp's `OAuth._initialize` adds; without it a process that starts
#: from stored tokens never refreshes, it only meets a 401); tokenward: `McpOAuth`.
PEERS = ("sdk", "sdk-expiry", "tokenward")
KEY = "mcp:alice"
CALL_TIMEOUT = 10.0


class FileTokenStorage:
    """The SDK's `TokenStorage` on a JSON file, written the way its docs suggest (the absolute
    expiry kept, as fastmcp does, so a reload does not trust a stale `expires_in`)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return {}

    def _write(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)

    async def get_tokens(self) -> OAuthToken | None:
        data = self._read().get("tokens")
        if data is None:
            return None
        expires_at = data.pop("expires_at", None)
        if expires_at is not None:
            data["expires_in"] = max(int(expires_at - time.time()), 0)
        return OAuthToken.model_validate(data)

    async def set_tokens(self, tokens: OAuthToken) -> None:
        data = self._read()
        stored = tokens.model_dump(mode="json", exclude_none=True)
        if tokens.expires_in is not None:
            stored["expires_at"] = time.time() + tokens.expires_in
        data["tokens"] = stored
        self._write(data)

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        data = self._read().get("client")
        return None if data is None else OAuthClientInformationFull.model_validate(data)

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        data = self._read()
        data["client"] = client_info.model_dump(mode="json", exclude_none=True)
        self._write(data)


class ExpiryAwareProvider(OAuthClientProvider):
    """The SDK's provider with fastmcp's one fix: the stored token's expiry is known on load."""

    async def _initialize(self) -> None:
        await super()._initialize()
        if self.context.current_tokens is not None:
            self.context.update_token_expiry(self.context.current_tokens)


def make_auth(peer: str, url: str, path: str, browser: HeadlessBrowser | None = None) -> Any:
    """The auth one agent process uses (with a browser: the login that creates the grant)."""
    handlers: dict[str, Any] = {}
    if browser is not None:
        handlers = {
            "redirect_handler": browser.redirect_handler,
            "callback_handler": browser.callback_handler,
        }
    if peer in ("sdk", "sdk-expiry"):
        kind = OAuthClientProvider if peer == "sdk" else ExpiryAwareProvider
        return kind(url, default_client_metadata(), FileTokenStorage(Path(path)), **handlers)
    return McpOAuth(url, KEY, SQLiteStore(path), **handlers)


async def _close(auth: Any) -> None:
    if isinstance(auth, McpOAuth):
        await auth.aclose()


async def login(peer: str, url: str, path: str) -> None:
    """The user's one login (the SDK's discovery, registration and PKCE flow in both peers)."""
    auth = make_auth(peer, url, path, HeadlessBrowser())
    async with (
        httpx2.AsyncClient(auth=auth) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        await client.call_tool("add", {"a": 0, "b": 0})
    await _close(auth)


# -- one agent process ---------------------------------------------------------------------------
def agent(
    peer: str, url: str, path: str, concurrency: int, ready: Any, go: Any, stop: Any, out: Any
) -> None:
    """An agent process: one SDK session, `concurrency` concurrent tool-call loops."""
    tally: Counter[str] = Counter()
    try:
        asyncio.run(_agent(peer, url, path, concurrency, ready, go, stop, tally))
    except BaseException as exc:  # reported, never lost: the parent counts it
        tally[f"agent:{type(exc).__name__}"] += 1
    out.put(dict(tally))


async def _agent(
    peer: str,
    url: str,
    path: str,
    concurrency: int,
    ready: Any,
    go: Any,
    stop: Any,
    tally: Counter[str],
) -> None:
    auth = make_auth(peer, url, path)
    ready.put(os.getpid())
    await asyncio.to_thread(go.wait)
    try:
        while not stop.is_set():
            try:
                async with (
                    httpx2.AsyncClient(auth=auth) as http,
                    Client(streamable_http_client(url, http_client=http)) as client,
                ):
                    await asyncio.gather(
                        *(_loop(client, n, stop, tally) for n in range(concurrency))
                    )
            except Exception as exc:  # the session broke: count it, open a new one (agents do)
                tally["failed"] += 1
                tally[f"session:{type(exc).__name__}"] += 1
                await asyncio.sleep(0.05)
    finally:
        await _close(auth)


async def _loop(client: Client, n: int, stop: Any, tally: Counter[str]) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        try:
            with anyio.fail_after(CALL_TIMEOUT):
                result = await client.call_tool("add", {"a": n, "b": i})
            text = result.content[0].text if result.content else ""  # type: ignore[union-attr]
            if result.is_error or text != str(n + i):
                tally["failed"] += 1
                tally["tool_error"] += 1
            else:
                tally["ok"] += 1
        except Exception as exc:
            tally["failed"] += 1
            tally[type(exc).__name__] += 1
            await asyncio.sleep(0.01)


# -- the run --------------------------------------------------------------------------------------
def run_peer(
    peer: str,
    *,
    duration: float,
    lifetime: float = 1.0,
    processes: int = 4,
    concurrency: int = 4,
    until_refreshes: int | None = None,
) -> dict[str, Any]:
    """One peer: a fresh server and grant, `processes` agents for `duration` seconds (or, with
    `until_refreshes`, until the server counted that many refreshes or the grant died)."""
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp, McpTestServer(access_lifetime=lifetime) as server:
        path = str(Path(tmp) / ("tokens.db" if peer == "tokenward" else "tokens.json"))
        ready, out, go, stop = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Event()
        procs = [
            ctx.Process(
                target=agent, args=(peer, server.url, path, concurrency, ready, go, stop, out)
            )
            for _ in range(processes)
        ]
        for proc in procs:
            proc.start()
        tallies: list[dict[str, int]] = []
        try:
            for _ in procs:
                ready.get(timeout=60)
            # The login comes last, so that every agent starts from a fresh token (the SDK's
            # provider reads its storage at its first request, after `go`).
            asyncio.run(login(peer, server.url, path))
            before = server.provider.stats()
            started = time.monotonic()
            go.set()
            _wait(server, started, duration, until_refreshes, before)
            elapsed = time.monotonic() - started
            stop.set()
            tallies = [out.get(timeout=60) for _ in procs]
        finally:
            stop.set()
            go.set()
            for proc in procs:
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()
        after = server.provider.stats()
    return _row(peer, tallies, before, after, elapsed, lifetime, processes, concurrency)


def _wait(
    server: McpTestServer,
    started: float,
    duration: float,
    until_refreshes: int | None,
    before: dict[str, int],
) -> None:
    """Until the duration is over, or (short runs) the server's counters say enough happened:
    `until_refreshes` refreshes, or the grant revoked (then nothing more can succeed)."""
    while time.monotonic() - started < duration:
        counters = server.provider.counters
        if until_refreshes is not None and (
            counters["refreshes"] - before["refreshes"] >= until_refreshes
            or server.provider.active_grants() == 0
        ):
            return
        time.sleep(0.02)


def _row(
    peer: str,
    tallies: list[dict[str, int]],
    before: dict[str, int],
    after: dict[str, int],
    elapsed: float,
    lifetime: float,
    processes: int,
    concurrency: int,
) -> dict[str, Any]:
    total: Counter[str] = Counter()
    for tally in tallies:
        total.update(tally)
    lifetimes = elapsed / lifetime
    refreshes = after["refreshes"] - before["refreshes"]
    return {
        "peer": peer,
        "processes": processes,
        "concurrency": concurrency,
        "duration": round(elapsed, 2),
        "lifetime": lifetime,
        "lifetimes": round(lifetimes, 2),
        "calls": total["ok"] + total["failed"],
        "ok": total["ok"],
        "failed": total["failed"],
        "refreshes": refreshes,
        "refreshes_per_expiry": refreshes / lifetimes if lifetimes else float("nan"),
        "invalid_grant": after["invalid_grant"] - before["invalid_grant"],
        "reuse_detected": after["reuse_detected"] - before["reuse_detected"],
        "grant_alive": after["active_grants"] >= 1,
        "errors": {k: v for k, v in total.items() if k not in ("ok", "failed")},
    }


def run(
    duration: float = 45.0,
    processes: int = 4,
    concurrency: int = 4,
    lifetime: float = 2.0,
    progress: Any = print,
    sdk_duration: float = 12.0,
) -> dict[str, Any]:
    """Every peer, one after the other, the same workload. The SDK's peers run `sdk_duration`
    seconds at most: they fail from their first expiries on, and `make bench` stays short."""
    rows = []
    for peer in PEERS:
        seconds = duration if peer == "tokenward" else min(duration, sdk_duration)
        row = run_peer(
            peer, duration=seconds, lifetime=lifetime, processes=processes, concurrency=concurrency
        )
        progress(
            f"  mcp {peer:9} {row['calls']} calls, {row['failed']} failed, "
            f"{row['refreshes_per_expiry']:.2f} refreshes/expiry, "
            f"{row['invalid_grant']} invalid_grant, "
            f"grant {'alive' if row['grant_alive'] else 'REVOKED'}"
        )
        rows.append(row)
    ours = rows[-1]
    passed = ours["failed"] == 0 and ours["grant_alive"] and ours["refreshes_per_expiry"] <= 1.05
    return {"rows": rows, "passed": passed}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=45.0)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--lifetime", type=float, default=2.0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        print(
            json.dumps(
                run(args.duration, args.processes, args.concurrency, args.lifetime), indent=2
            )
        )
