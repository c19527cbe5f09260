"""tokenward.integrations.mcp against a real MCP server on 127.0.0.1 (the `mcp` SDK's own
server, authorization-server routes and bearer middleware; tokenward.testing.mcp): login
through the SDK's flow, calls across expiries with the SDK's client and fastmcp's, the 401
replay, a refused grant surfaced as `McpLoginRequired`, and the SDK's `TokenStorage` protocol
over tokenward stores. Time runs on the server's real clock with 1-second tokens; the tests
wait on the server's counters, never on a sleep's length."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx2
import pytest

pytest.importorskip("mcp")

from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent

from tokenward.integrations.mcp import (
    McpLoginRequired,
    McpOAuth,
    McpRegistration,
    StoreTokenStorage,
    default_client_metadata,
)
from tokenward.stores import Store
from tokenward.stores.file import JsonFileStore
from tokenward.stores.sqlite import SQLiteStore
from tokenward.testing.mcp import HeadlessBrowser, McpTestServer

pytestmark = pytest.mark.e2e  # a real MCP server over HTTP

KEY = "mcp:alice"


@contextlib.asynccontextmanager
async def _session(url: str, auth: httpx2.Auth) -> AsyncIterator[Client]:
    """The SDK's client over streamable HTTP, its HTTP client carrying `auth`."""
    async with (
        httpx2.AsyncClient(auth=auth) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


def _text(result: CallToolResult) -> str:
    """The text of a tool call's first content block (which must be text)."""
    content = result.content[0]
    assert isinstance(content, TextContent), content
    return content.text


@pytest.fixture
def server() -> Iterator[McpTestServer]:
    with McpTestServer(access_lifetime=1.0) as running:
        yield running


async def _login(server: McpTestServer, store: Store, key: str = KEY) -> None:
    """A person's login through the SDK's flow (discovery, registration, PKCE)."""
    browser = HeadlessBrowser()
    auth = McpOAuth(
        server.url,
        key,
        store,
        redirect_handler=browser.redirect_handler,
        callback_handler=browser.callback_handler,
    )
    async with _session(server.url, auth) as client:
        assert _text(await client.call_tool("add", {"a": 1, "b": 2})) == "3"
    await auth.aclose()
    assert browser.opened == 1


async def _calls_until(client: Client, server: McpTestServer, refreshes: int) -> int:
    """Tool calls until the server has seen `refreshes` refreshes; returns how many calls."""
    calls = 0
    deadline = time.monotonic() + 30
    while server.provider.counters["refreshes"] < refreshes:
        assert time.monotonic() < deadline, server.provider.stats()
        result = await client.call_tool("add", {"a": calls, "b": 1})
        assert _text(result) == str(calls + 1)
        calls += 1
        await asyncio.sleep(0.01)
    return calls


async def test_login_stores_grant_and_registration_then_headless_calls_refresh(
    server: McpTestServer, tmp_path: Path
) -> None:
    store = SQLiteStore(tmp_path / "tokens.db")
    await _login(server, store)
    record = store.load(KEY)
    registration = McpRegistration.from_record(record)
    assert record is not None and record.state == "ok" and record.refresh_token
    assert registration is not None and registration.client_id in server.provider.clients
    assert registration.token_endpoint == server.base_url + "/token"
    assert registration.resource == server.url
    assert server.provider.counters["registrations"] == 1

    # A headless worker: no handlers, everything from the store.
    auth = McpOAuth(server.url, KEY, store)
    async with _session(server.url, auth) as client:
        await _calls_until(client, server, refreshes=3)
    await auth.aclose()
    stats = server.provider.stats()
    assert stats["invalid_grant"] == 0 and stats["active_grants"] == 1
    assert stats["registrations"] == 1 and stats["logins"] == 1  # no new registration or login
    after = store.load(KEY)
    assert after is not None and after.refresh_count >= 3 and after.refresh_token is not None
    # The registration survived every refresh, and the stored refresh token is the live one.
    assert McpRegistration.from_record(after) == registration
    assert server.provider.refresh[after.refresh_token] is not None


async def test_fastmcp_client_takes_the_auth(server: McpTestServer, tmp_path: Path) -> None:
    fastmcp = pytest.importorskip("fastmcp")
    store = SQLiteStore(tmp_path / "tokens.db")
    await _login(server, store)
    auth = McpOAuth(server.url, KEY, store)
    async with fastmcp.Client(server.url, auth=auth) as client:
        calls = 0
        while server.provider.counters["refreshes"] < 2:
            result = await client.call_tool("add", {"a": calls, "b": 2})
            assert result.content[0].text == str(calls + 2)
            calls += 1
            await asyncio.sleep(0.01)
    await auth.aclose()
    assert server.provider.counters["invalid_grant"] == 0


async def test_a_rejected_access_token_is_replayed_once_with_a_new_one(
    server: McpTestServer, tmp_path: Path
) -> None:
    store = SQLiteStore(tmp_path / "tokens.db")
    await _login(server, store)
    auth = McpOAuth(server.url, KEY, store)
    async with _session(server.url, auth) as client:
        await client.call_tool("add", {"a": 0, "b": 0})
        before = dict(server.provider.counters)
        server.provider.access.clear()  # every access token revoked, the grant kept
        result = await client.call_tool("add", {"a": 2, "b": 2})
        assert _text(result) == "4"
    await auth.aclose()
    assert server.provider.counters["refreshes"] == before.get("refreshes", 0) + 1
    assert server.provider.counters["rejected_unknown"] >= 1


async def test_headless_without_a_grant_names_the_login_command(
    server: McpTestServer, tmp_path: Path
) -> None:
    auth = McpOAuth(server.url, KEY, SQLiteStore(tmp_path / "tokens.db"))
    async with httpx2.AsyncClient(auth=auth) as http:
        with pytest.raises(McpLoginRequired) as caught:
            await http.post(server.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    message = str(caught.value)
    assert f"tokenward login {server.url} --name {KEY}" in message
    assert "no usable grant" in message


async def test_a_revoked_grant_becomes_needs_reauth_for_every_process(
    server: McpTestServer, tmp_path: Path
) -> None:
    store = SQLiteStore(tmp_path / "tokens.db")
    await _login(server, store)
    record = store.load(KEY)
    assert record is not None and record.refresh_token
    for grant_id in list(server.provider.grants):
        server.provider._revoke(grant_id)  # an administrator revokes the grant
    auth = McpOAuth(server.url, KEY, store)
    async with httpx2.AsyncClient(auth=auth) as http:
        with pytest.raises(McpLoginRequired) as caught:
            await http.post(server.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert "invalid_grant" in str(caught.value)
    assert record.refresh_token not in str(caught.value)
    stored = store.load(KEY)
    assert stored is not None and stored.state == "needs_reauth"
    refused = server.provider.counters["invalid_grant"]
    # Another worker (a new process would read the same record) does not try again.
    other = McpOAuth(server.url, KEY, SQLiteStore(tmp_path / "tokens.db"))
    async with httpx2.AsyncClient(auth=other) as http:
        with pytest.raises(McpLoginRequired):
            await http.post(server.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert server.provider.counters["invalid_grant"] == refused
    # A login (interactive handlers) repairs it in place: same registration, new grant.
    await _login(server, store)
    repaired = store.load(KEY)
    assert repaired is not None and repaired.state == "ok"
    assert server.provider.counters["registrations"] == 1


async def test_interactive_auth_logs_in_again_after_a_refusal(
    server: McpTestServer, tmp_path: Path
) -> None:
    store = SQLiteStore(tmp_path / "tokens.db")
    await _login(server, store)
    for grant_id in list(server.provider.grants):
        server.provider._revoke(grant_id)
    browser = HeadlessBrowser()
    auth = McpOAuth(
        server.url,
        KEY,
        store,
        redirect_handler=browser.redirect_handler,
        callback_handler=browser.callback_handler,
    )
    async with _session(server.url, auth) as client:
        assert _text(await client.call_tool("add", {"a": 5, "b": 5})) == "10"
    await auth.aclose()
    assert browser.opened == 1 and server.provider.counters["logins"] == 2
    assert store.load(KEY).state == "ok"  # type: ignore[union-attr]


def test_sync_client_uses_the_stored_grant(server: McpTestServer, tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "tokens.db")
    asyncio.run(_login(server, store))
    auth = McpOAuth(server.url, KEY, store)
    with httpx2.Client(auth=auth) as http:
        answer = http.post(
            server.url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
            headers={"Accept": "application/json, text/event-stream"},
        )
    auth.close()
    assert answer.status_code == 200, answer.text
    assert "add" in [tool["name"] for tool in answer.json()["result"]["tools"]]


async def test_store_token_storage_with_the_sdks_own_provider(
    server: McpTestServer, tmp_path: Path
) -> None:
    """The storage alone, under the SDK's OAuthClientProvider: tokens and the registration
    (its secret apart, so that an encrypted store seals it) survive in a JSON file store."""
    store = JsonFileStore(tmp_path / "tokens.json")
    storage = StoreTokenStorage(store, KEY, server.url)
    browser = HeadlessBrowser()
    provider = OAuthClientProvider(
        server.url,
        default_client_metadata(),
        storage,
        redirect_handler=browser.redirect_handler,
        callback_handler=browser.callback_handler,
    )
    async with _session(server.url, provider) as client:
        assert _text(await client.call_tool("add", {"a": 1, "b": 1})) == "2"
    tokens = await storage.get_tokens()
    info = await storage.get_client_info()
    assert tokens is not None and tokens.refresh_token in server.provider.refresh
    assert info is not None and info.client_id in server.provider.clients
    reopened = StoreTokenStorage(JsonFileStore(tmp_path / "tokens.json"), KEY, server.url)
    again = await reopened.get_tokens()
    assert again is not None and again.access_token == tokens.access_token
    assert again.refresh_token == tokens.refresh_token
    assert (await reopened.get_client_info()) == info


def test_four_agent_processes_share_one_grant_side_by_side_with_the_sdk() -> None:
    """The issue's proof, short: 4 agent processes x 4 concurrent tool calls on one user's
    grant. The SDK's own provider (file storage, told the stored expiry as fastmcp does) spends
    the rotating refresh token in several processes and the server revokes the grant; with
    tokenward every call succeeds, one refresh per expiry, and the grant stays alive. Each run
    ends on the server's counters (4 refreshes, or the grant revoked), not on a clock."""
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from bench import mcp_agents

    sdk = mcp_agents.run_peer("sdk-expiry", duration=60, lifetime=2.0, until_refreshes=4)
    ours = mcp_agents.run_peer("tokenward", duration=60, lifetime=2.0, until_refreshes=4)

    assert sdk["reuse_detected"] >= 1 and sdk["invalid_grant"] >= 1, sdk
    assert not sdk["grant_alive"] and sdk["failed"] > 0, sdk

    assert ours["failed"] == 0 and ours["ok"] > 0, ours
    assert ours["invalid_grant"] == 0 and ours["reuse_detected"] == 0, ours
    assert ours["grant_alive"], ours
    assert ours["refreshes"] >= 4
    # One refresh per expiry: at most 5 % more refreshes than token lifetimes elapsed (+1 for
    # the refresh that ended the run).
    assert ours["refreshes"] <= 1.05 * ours["lifetimes"] + 1, ours


@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_any_store_holds_the_grant_and_its_registration(
    server: McpTestServer, kind: str
) -> None:
    """The same over the network stores agent platforms share across machines."""
    import uuid

    from servers import POSTGRES_URL, REDIS_URL, drop_postgres_schema, require

    require(kind)
    name = "tw_mcp_" + uuid.uuid4().hex[:12]
    store: Store
    if kind == "redis":
        from tokenward.stores.redis import RedisStore

        store = RedisStore(REDIS_URL, prefix=name + ":")
    else:
        from tokenward.stores.postgres import PostgresStore

        store = PostgresStore(POSTGRES_URL, schema=name)
    try:
        await _login(server, store)
        auth = McpOAuth(server.url, KEY, store)
        async with _session(server.url, auth) as client:
            await _calls_until(client, server, refreshes=2)
        await auth.aclose()
        record = store.load(KEY)
        assert record is not None and record.state == "ok" and record.refresh_count >= 2
        assert McpRegistration.from_record(record) is not None
        assert server.provider.counters["invalid_grant"] == 0
    finally:
        store.delete(KEY)
        store.close()
        if kind == "postgres":
            drop_postgres_schema(name)
