"""Broker pieces in isolation: the `[broker]` table, path normalization, client keys, the
`add-client` command, and header handling against a mock upstream (in process, ASGI)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx2
import pytest
from click.testing import CliRunner

from tokenward.broker.app import create_app
from tokenward.broker.auth import BrokerError, ClientRegistry
from tokenward.broker.config import (
    BrokerConfig,
    Policy,
    hash_key,
    load_broker,
    new_key,
    parse_broker,
)
from tokenward.broker.paths import UnsafePath, upstream_path
from tokenward.cli import cli
from tokenward.config import ConfigError, load_config

pytestmark = pytest.mark.timeout(30)

HASH = "0" * 64


# -- [broker] table -------------------------------------------------------------------------------
def test_policies_are_named_and_overridden_per_client() -> None:
    parsed = parse_broker(
        {
            "port": 9000,
            "limits": {"max_body_bytes": 1000, "upstream_timeout": 2},
            "policies": {"ro": {"credentials": ["ml*"], "methods": ["get"], "paths": ["/a/*"]}},
            "clients": {
                "a": {"key_sha256": HASH, "policy": "ro"},
                "b": {"key_sha256": HASH, "policy": "ro", "methods": ["GET", "POST"]},
            },
        }
    )
    assert parsed.port == 9000 and parsed.limits.max_body_bytes == 1000
    assert parsed.limits.upstream_timeout == 2.0
    a, b = parsed.clients
    assert a.policy.methods == ("GET",) and b.policy.methods == ("GET", "POST")
    assert a.policy.allows_credential("ml-ar") and not a.policy.allows_credential("heygen")
    assert a.policy.allows_path("/a/b/c") and not a.policy.allows_path("/b")
    assert a.policy.max_sessions == 0 and not a.policy.raw_tokens  # closed by default


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"prot": 1}, "unknown key 'prot'"),
        ({"clients": {"a": {"key_sha256": "abc"}}}, "key_sha256 must be the 64 hex digits"),
        ({"clients": {"a": {"key_sha256": HASH, "policy": "x"}}}, "unknown policy 'x'"),
        ({"clients": {"a": {"key_sha256": HASH, "rate": -1}}}, "rate must be positive"),
        ({"clients": {"a": {"key_sha256": HASH, "raw_tokens": "yes"}}}, "true or false"),
        ({"policies": {"p": {"paths": ["api/*"]}}}, "must start with /"),
        ({"limits": {"upstream_timeout": 0}}, "must be positive"),
        ({"limits": {"max_body": 1}}, "unknown key 'max_body'"),
    ],
)
def test_broker_table_errors_name_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_broker(table)


def test_core_config_tolerates_a_broker_table(tmp_path: Path) -> None:
    path = tmp_path / "tokenward.toml"
    path.write_text('[broker]\nport = 1\n[broker.clients.a]\nkey_sha256 = "' + HASH + '"\n')
    assert load_config(path).credentials == {}
    assert load_broker(path)[1].clients[0].name == "a"


# -- keys -----------------------------------------------------------------------------------------
def test_keys_are_random_and_only_their_hash_authenticates() -> None:
    key = new_key()
    assert key.startswith("twk_") and len(key) > 40 and new_key() != key
    registry = ClientRegistry(
        parse_broker({"clients": {"a": {"key_sha256": hash_key(key)}}}).clients
    )
    assert registry.authenticate(f"Bearer {key}").name == "a"
    for bad in (None, "", f"Basic {key}", f"Bearer {hash_key(key)}", f"Bearer {key}x"):
        with pytest.raises(BrokerError) as caught:
            registry.authenticate(bad)
        assert caught.value.status == 401


def test_add_client_prints_the_key_once_and_stores_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "tokenward.toml"
    path.write_text('[store]\nurl = "memory://"\n')
    path.chmod(0o600)
    runner = CliRunner()
    args = ["broker", "add-client", "web", "--config", str(path), "--credential", "avatar"]
    result = runner.invoke(
        cli, [*args, "--origin", "https://app.example.com", "--max-sessions", "2"]
    )
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert key.startswith("twk_")
    text = path.read_text()
    assert key not in text and hash_key(key) in text
    (client,) = load_broker(path)[1].clients
    assert client.policy.credentials == ("avatar",) and client.policy.max_sessions == 2
    assert ClientRegistry([client]).authenticate(f"Bearer {key}").name == "web"
    again = runner.invoke(cli, args)
    assert again.exit_code == 2 and "exists already" in again.output
    bad = runner.invoke(
        cli, ["broker", "add-client", "x", "--config", str(path), "--policy", "nope"]
    )
    assert bad.exit_code == 2 and "unknown policy" in bad.output
    assert "[broker.clients.x]" not in path.read_text()  # rolled back


# -- paths ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw", ["api/items", "api/items.json", "v1/streaming.task", "a/b%20c", "a/%7Euser", "a:b/c"]
)
def test_ordinary_paths_pass(raw: str) -> None:
    if raw.startswith("a:b"):
        with pytest.raises(UnsafePath):  # looks like a scheme: refused
            upstream_path(raw)
        return
    assert upstream_path(raw) == "/" + raw


@pytest.mark.parametrize(
    "raw",
    [
        "..",
        "a/../b",
        "a/./b",
        "a/%2e%2e/b",
        "a/%2E./b",
        "a%2fb",
        "a%5cb",
        "a\\b",
        "/a",
        "a//b",
        "http://evil/x",
        "//evil/x",
        "a%0d%0ab",
        "a\r\nb",
        "a b",
        "a%252e%252e/b",
        "a%00b",
        "a#b",
        "",
    ],
)
def test_unsafe_paths_are_refused(raw: str) -> None:
    if raw == "":
        assert upstream_path(raw) == "/"
        return
    with pytest.raises(UnsafePath):
        upstream_path(raw)


# -- headers, against a mock upstream -------------------------------------------------------------
CONFIG = """
[store]
url = "memory://"
[credentials.ml]
grant = "refresh_token"
base_url = "http://upstream.test/base"
token_url = "http://upstream.test/oauth/token"
client_id = "app"
[credentials.ml.expiry_rule]
json_fields = { message = "invalid_token" }
"""


def test_headers_are_stripped_both_ways(tmp_path: Path) -> None:
    path = tmp_path / "tokenward.toml"
    key = new_key()
    path.write_text(
        CONFIG + f'[broker.clients.a]\nkey_sha256 = "{hash_key(key)}"\n'
        'credentials = ["ml"]\nmethods = ["*"]\n'
    )
    seen: list[httpx2.Request] = []

    def upstream(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        status = 401 if request.url.path.endswith("/denied") else 200
        body = b'{"message": "user not authorized"}' if status == 401 else b"hello"
        return httpx2.Response(
            status,
            content=body,
            headers=[
                ("Set-Cookie", "upstream=1"),
                ("Connection", "x-hop"),
                ("X-Hop", "1"),
                ("X-Kept", "yes"),
                ("Access-Control-Allow-Origin", "*"),
            ],
        )

    async def main() -> list[httpx2.Response]:
        app = create_app(path)
        state = app.state.broker
        await state.start()
        await state.http.aclose()
        state.http = httpx2.AsyncClient(transport=httpx2.MockTransport(upstream))
        state.credentials["ml"].manager.seed(access_token="upstream-token", expires_in=3600)
        headers = {
            "Authorization": f"Bearer {key}",
            "Cookie": "session=browser",
            "Connection": "x-custom",
            "X-Custom": "1",
            "Proxy-Authorization": "Basic abc",
            "X-Forwarded-Host": "kept-as-data",
            "User-Agent": "python-httpx2/test-client",
        }
        try:
            transport = httpx2.ASGITransport(app=app)
            async with httpx2.AsyncClient(transport=transport, base_url="http://broker") as c:
                ok = await c.post("/v1/proxy/ml/items?q=1", headers=headers, content=b"body")
                denied = await c.get("/v1/proxy/ml/denied", headers=headers)
                return [ok, denied]
        finally:
            await state.stop()

    ok, denied = asyncio.run(main())
    first = seen[0]
    assert str(first.url) == "http://upstream.test/base/items?q=1"
    assert first.headers["authorization"] == "Bearer upstream-token"
    assert first.headers["host"] == "upstream.test"
    for name in ("cookie", "x-custom", "proxy-authorization", "connection"):
        assert name not in first.headers
    assert first.content == b"body"
    assert first.headers["user-agent"] == "python-httpx2/test-client"
    assert ok.status_code == 200 and ok.content == b"hello"
    assert ok.headers["x-kept"] == "yes"
    for name in ("set-cookie", "x-hop", "access-control-allow-origin"):
        assert name not in ok.headers
    # a 401 that the rule says is not an expiry: read, not replayed, passed on intact
    assert denied.status_code == 401 and denied.json() == {"message": "user not authorized"}
    assert len(seen) == 2


def test_default_broker_config_has_no_clients() -> None:
    assert BrokerConfig().clients == () and Policy().credentials == ()


def test_example_page_only_when_enabled(tmp_path: Path) -> None:
    path = tmp_path / "tokenward.toml"
    path.write_text(CONFIG)

    async def fetch(examples: bool) -> httpx2.Response:
        config, _settings = load_broker(path)
        app = create_app(config, BrokerConfig(examples=examples))
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://broker") as c:
            return await c.get("/examples/session")

    page = asyncio.run(fetch(True))
    assert page.status_code == 200 and "/v1/sessions" in page.text
    assert page.headers["content-type"].startswith("text/html")
    assert asyncio.run(fetch(False)).status_code == 404


def test_metrics_stop_counting_when_detached() -> None:
    """The broker's counters subscribe at start and unsubscribe at shutdown: a stopped app
    leaves no subscriber behind (nor a changed `tokenward` logger level)."""
    import logging

    from tokenward import events
    from tokenward.broker.metrics import BrokerMetrics
    from tokenward.stores.memory import MemoryStore

    level = logging.getLogger("tokenward").level
    metrics = BrokerMetrics(lambda: {"api": ("api", MemoryStore())})
    metrics.attach()
    metrics.attach()  # idempotent: still counted once
    events.emit("token.refreshed", "api", fingerprint="abc", version=2)
    metrics.detach()
    events.emit("token.refreshed", "api", fingerprint="def", version=3)
    assert 'tokenward_refreshes_total{credential="api"} 1.0' in metrics.render().decode()
    assert logging.getLogger("tokenward").level == level
