"""`tokenward login <MCP server URL>` end to end in a real subprocess against a real MCP server
(tokenward.testing.mcp): discovery, dynamic registration and the PKCE browser login, the grant
stored under a credential name, `tokenward status` showing it, `tokenward.credential(NAME)`
refreshing it, and a re-login reusing the registration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

pytest.importorskip("mcp")

from tokenward.config import load_config
from tokenward.integrations.mcp import McpRegistration
from tokenward.testing.mcp import McpTestServer

pytestmark = pytest.mark.e2e  # a real MCP server, `tokenward` subprocesses


@pytest.fixture
def server() -> Iterator[McpTestServer]:
    with McpTestServer(access_lifetime=1.0) as running:
        yield running


def _browser_login(
    args: list[str], env: dict[str, str], cwd: Path | None = None
) -> tuple[int, str, str]:
    """Run `tokenward login ... --no-browser` and act as the person's browser: open the URL it
    prints (the test server approves at once and redirects to the CLI's listener)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenward.cli", "login", *args, "--no-browser", "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )
    assert proc.stderr is not None
    seen: list[str] = []

    def browse() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("http") and "/authorize?" in line:
                httpx2.get(line.strip(), follow_redirects=True, timeout=30)

    reader = threading.Thread(target=browse, daemon=True)
    reader.start()
    out = proc.stdout.read() if proc.stdout else ""
    code = proc.wait(timeout=90)
    reader.join(timeout=10)
    return code, out, "".join(seen)


def test_login_by_url_then_status_then_refresh(server: McpTestServer, tmp_path: Path) -> None:
    config = tmp_path / "tokenward.toml"
    config.write_text(f'[store]\nurl = "sqlite://{tmp_path}/tokens.db"\n')
    env = dict(os.environ, TOKENWARD_CONFIG=str(config), NO_COLOR="1")

    code, out, err = _browser_login([server.url, "--name", "mcp-test"], env)
    assert code == 0, out + err
    assert out.startswith("logged in mcp-test: token ") and "with a refresh token" in out
    assert f"token endpoint {server.base_url}/token" in out
    assert "Open this URL to authorize tokenward" in err
    assert server.provider.counters["registrations"] == 1
    assert server.provider.counters["logins"] == 1
    text = config.read_text()
    assert '[credentials."mcp-test"]\ngrant = "mcp"\n' in text and server.url in text

    status = subprocess.run(
        [sys.executable, "-m", "tokenward.cli", "status", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    (row,) = json.loads(status.stdout)
    assert row["name"] == "mcp-test" and row["grant"] == "mcp" and row["state"] == "ok"
    loaded = load_config(config)
    store = loaded.store_for(loaded.credential_config("mcp-test"))
    record = store.load("mcp-test")
    assert record is not None and row["token"] == record.describe()["token"]
    assert record.refresh_token is not None
    assert record.refresh_token not in status.stdout + out + err
    assert McpRegistration.from_record(record) is not None

    # The configured credential refreshes like any other (McpRefreshGrant from the record).
    manager = loaded.credential_config("mcp-test").manager(store)
    fresh = manager.refresh()
    manager.close()
    assert fresh.version > record.version
    assert server.provider.counters["refreshes"] == 1

    # A second login by the credential's name reuses its registration and redirect port.
    code, out, err = _browser_login(["mcp-test"], env)
    assert code == 0, out + err
    assert server.provider.counters["registrations"] == 1
    assert server.provider.counters["logins"] == 2


def test_login_by_url_without_a_configuration_creates_one(
    server: McpTestServer, tmp_path: Path
) -> None:
    env = dict(
        os.environ,
        NO_COLOR="1",
        XDG_DATA_HOME=str(tmp_path / "data"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
    )
    env.pop("TOKENWARD_CONFIG", None)
    cwd = tmp_path / "project"
    cwd.mkdir()
    code, out, err = _browser_login([server.url], env, cwd=cwd)
    assert code == 0, out + err
    host_name = "mcp-127-0-0-1"
    assert out.startswith(f"logged in {host_name}: ")
    assert f'[credentials."{host_name}"]' in (cwd / "tokenward.toml").read_text()


def test_device_flow_is_refused_clearly(server: McpTestServer, tmp_path: Path) -> None:
    config = tmp_path / "tokenward.toml"
    config.write_text(f'[store]\nurl = "sqlite://{tmp_path}/tokens.db"\n')
    env = dict(os.environ, TOKENWARD_CONFIG=str(config), NO_COLOR="1")
    done = subprocess.run(
        [sys.executable, "-m", "tokenward.cli", "login", server.url, "--device"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode != 0
    assert "no device flow" in done.stderr and "Traceback" not in done.stderr
