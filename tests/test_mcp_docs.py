"""docs/mcp.md works when pasted: the agent-platform recipe (saved as agents.py and run as the
page says), the fastmcp snippet, and the login commands (the browser they open is a script
that follows the authorization URL; the example URL is the test server's)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("mcp")

from tokenward.testing.mcp import McpTestServer

pytestmark = pytest.mark.e2e  # subprocesses against a real MCP server

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "mcp.md").read_text()
EXAMPLE_URL = "https://mcp.example.com/mcp"


def _block(after: str, language: str) -> str:
    match = re.search(rf"{re.escape(after)}.*?```{language}\n(.*?)```", PAGE, re.S)
    assert match, f"docs/mcp.md has no {language} block after {after!r}"
    return match.group(1)


def test_the_agent_platform_recipe_runs_as_written(tmp_path: Path) -> None:
    (tmp_path / "agents.py").write_text(_block("## Recipe: an agent platform", "python"))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "agents.py"], cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    calls, refreshes = done.stdout.splitlines()
    ok = re.fullmatch(r"(\d+) tool calls succeeded, 0 failed", calls)
    assert ok and int(ok.group(1)) > 0, calls
    counted = re.fullmatch(
        r"(\d+) refreshes for 2 grants, 0 invalid_grant, 2 grants alive", refreshes
    )
    assert counted, refreshes
    # One refresh per expiry per grant: never more than the 2-second lifetimes the whole run
    # lasted (+1 each for the tokens that expired while the workers started).
    assert 2 <= int(counted.group(1)) <= 2 * (elapsed / 2.0 + 1)
    # The page's example output has the same shape.
    shown = _block("It prints (the number of calls", "text").splitlines()
    assert re.fullmatch(r"\d+ tool calls succeeded, 0 failed", shown[0])
    assert shown[1].endswith("refreshes for 2 grants, 0 invalid_grant, 2 grants alive")


def test_the_fastmcp_snippet_prints_5(tmp_path: Path) -> None:
    pytest.importorskip("fastmcp")
    done = subprocess.run(
        [sys.executable, "-c", _block("## fastmcp", "python")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "5"


def test_the_login_commands_run_as_written(tmp_path: Path) -> None:
    block = _block("## Log in", "console")
    commands = [line[2:] for line in block.splitlines() if line.startswith("$ ")]
    shown = [line for line in block.splitlines() if line and not line.startswith("$ ")]
    browser = tmp_path / "browser"
    browser.write_text(
        f"#!{sys.executable}\nimport sys, httpx2\n"
        "httpx2.get(sys.argv[1], follow_redirects=True, timeout=30)\n"
    )
    browser.chmod(0o755)
    with McpTestServer() as server:
        env = dict(
            os.environ,
            BROWSER=str(browser),
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            NO_COLOR="1",
            TOKENWARD_CONFIG=str(tmp_path / "tokenward.toml"),
            XDG_DATA_HOME=str(tmp_path / "data"),
        )
        (tmp_path / "tokenward.toml").write_text(
            f'[store]\nurl = "sqlite://{tmp_path}/tokens.db"\n'
        )
        outputs = []
        for command in commands:
            done = subprocess.run(
                command.replace(EXAMPLE_URL, server.url),
                shell=True,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            outputs.append(done.stdout.strip())
    login_shown = re.escape(shown[1]).replace(r"\.\.\.", ".+")
    assert re.fullmatch(login_shown, outputs[0]), (outputs[0], shown[1])
    assert outputs[1] == shown[2] == "mcp-example mcp ok"
