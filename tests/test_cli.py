"""The `tokenward` command line: every command once through a real subprocess, error messages
and exit codes through click's CliRunner, logins end to end against the provider emulator."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from click.testing import CliRunner

from tokenward.cli import cli
from tokenward.testing import TEST_API_KEY, TEST_CLIENT_ID, TEST_CLIENT_SECRET

TOKENWARD = Path(sys.executable).parent / "tokenward"
COMMANDS = [
    "init",
    "add",
    "presets",
    "token",
    "status",
    "refresh",
    "login",
    "revoke",
    "import-env",
]


def run(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(TOKENWARD), *args], env=env, capture_output=True, text=True, timeout=60
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def seed(config: Path, emulator: Any) -> str:
    """Store a refresh token for `ml` as a login would; returns it."""
    import tokenward

    refresh: str = emulator.issue_refresh_token(TEST_CLIENT_ID)
    with tokenward.credential("ml", config=config) as ml:
        ml.manager.seed(refresh_token=refresh)
    return refresh


# -- help ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_an_example_in_its_help(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0 and "Example" in result.output


# -- init, add, presets ----------------------------------------------------------------------------
@pytest.mark.e2e
def test_init_add_presets_in_subprocesses(tmp_path: Path, env: dict[str, str]) -> None:
    run("init", env=env)
    path = tmp_path / "tokenward.toml"
    assert path.stat().st_mode & 0o777 == 0o600 and "# [credentials.ml]" in path.read_text()
    again = run("init", env=env, check=False)
    assert again.returncode == 2 and "--force" in again.stderr
    run("add", "ml", "--preset", "mercadolibre", "--client-id", "1",
        "--client-secret", "env:TW_SECRET", env=env)  # fmt: skip
    assert (
        "[credentials.ml]" in path.read_text() and "# tokenward configuration" in path.read_text()
    )
    assert "mercadolibre" in run("presets", env=env).stdout
    status = json.loads(run("status", "--json", env=env).stdout)
    assert status[0]["name"] == "ml" and status[0]["state"] == "empty"


def test_add_refuses_an_inline_secret(tmp_path: Path, env: dict[str, str]) -> None:
    result = CliRunner().invoke(
        cli, ["add", "ml", "--preset", "mercadolibre", "--client-id", "1", "--client-secret", "x1"]
    )
    assert result.exit_code == 2 and "env:NAME or file:PATH" in result.output
    assert not (tmp_path / "tokenward.toml").exists()


def test_add_refuses_an_invalid_table(tmp_path: Path, env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["add", "x", "--preset", "nope", "--client-id", "1"])
    assert result.exit_code == 2 and "unknown preset 'nope'" in result.output
    assert not (tmp_path / "tokenward.toml").exists()


# -- bad configurations: specific message, exit code 2 ---------------------------------------------
@pytest.mark.parametrize(
    ("text", "mode", "expected"),
    [
        (None, 0o600, "configuration file not found"),
        ("[credentials.ml\n", 0o600, "not valid TOML"),
        (
            '[credentials.ml]\npreset = "mercadolibre"\nclient_id = "1"\nclinet_secret = "env:A"',
            0o600,
            "did you mean 'client_secret'?",
        ),
        (
            '[credentials.ml]\npreset = "mercadolibre"\nclient_id = "1"\n'
            'client_secret = "env:TW_NOT_SET"',
            0o600,
            "environment variable TW_NOT_SET is not set",
        ),
        (
            '[credentials.ml]\npreset = "mercadolibre"\nclient_id = "1"\n'
            'client_secret = "inline-secret-123"',
            0o644,
            "chmod 600 ",
        ),
        ('[credentials.ml]\npreset = "nope"\nclient_id = "1"', 0o600, "unknown preset 'nope'"),
    ],
)
def test_bad_configs_exit_2(
    tmp_path: Path, env: dict[str, str], text: str | None, mode: int, expected: str
) -> None:
    path = tmp_path / "bad.toml"
    if text is not None:
        path.write_text(text)
        path.chmod(mode)
    result = CliRunner().invoke(cli, ["token", "ml", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    assert "inline-secret-123" not in result.output


@pytest.mark.e2e
def test_bad_config_in_a_subprocess_has_no_traceback(tmp_path: Path, env: dict[str, str]) -> None:
    done = run("token", "ml", "--config", str(tmp_path / "missing.toml"), env=env, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    debug = run("--debug", "token", "ml", "--config", "missing.toml", env=env, check=False)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


# -- token, status, refresh, revoke ----------------------------------------------------------------
def test_token_is_usable_as_a_header(
    config: Path, env: dict[str, str], tokenward_emulator: Any
) -> None:
    seed(config, tokenward_emulator.emulator)
    done = run("token", "ml", env=env)
    token = done.stdout.strip()
    assert done.stdout == token + "\n" and done.stderr == ""
    answer = httpx2.get(
        f"{tokenward_emulator.api_url}/items", headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 200
    session = run("token", "avatar", env=env).stdout.strip()
    assert session and session != token
    # Session-scoped: never the same token twice.
    assert run("token", "avatar", env=env).stdout.strip() != session


def test_token_without_login_exits_3(config: Path, env: dict[str, str]) -> None:
    done = run("token", "ml", env=env, check=False)
    assert done.returncode == 3 and "tokenward login ml" in done.stderr


@pytest.mark.e2e
def test_unreachable_provider_exits_4(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "tokenward.toml"
    path.write_text(
        f'[store]\nurl = "sqlite://{tmp_path}/t.db"\n[credentials.avatar]\npreset = "heygen"\n'
        'api_key = "env:TW_API_KEY"\nbase_url = "http://127.0.0.1:1"\n'
    )
    import tokenward.config
    from tokenward.retry import RetryPolicy

    original = tokenward.config.CredentialConfig.manager

    def fast(self: Any, store: Any) -> Any:
        manager = original(self, store)
        manager._retry = RetryPolicy(deadline=0.5)
        return manager

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tokenward.config.CredentialConfig, "manager", fast)
        result = CliRunner().invoke(cli, ["token", "avatar"])
    assert result.exit_code == 4, result.output
    assert "Check the network" in result.output


def test_status_refresh_revoke(config: Path, env: dict[str, str], tokenward_emulator: Any) -> None:
    refresh_token = seed(config, tokenward_emulator.emulator)
    first = run("token", "ml", env=env).stdout.strip()
    done = run("refresh", "ml", env=env)
    assert "refreshed ml" in done.stdout and first not in done.stdout
    status = run("status", "--json", env=env).stdout
    rows = {row["name"]: row for row in json.loads(status)}
    assert rows["ml"]["state"] == "ok" and rows["ml"]["refresh_count"] >= 1
    assert rows["ml"]["expires_in"] > 0 and rows["avatar"]["state"] == "empty"
    table = run("status", env=env).stdout
    assert "ml" in table and "ok" in table
    for text in (status, table):
        assert first not in text and refresh_token not in text
        assert TEST_CLIENT_SECRET not in text and TEST_API_KEY not in text
    current = run("token", "ml", env=env).stdout.strip()
    done = run("revoke", "ml", env=env)
    assert "revoked ml" in done.stdout and current not in done.stdout
    assert not tokenward_emulator.emulator.is_access_token_valid(current)
    rows = {row["name"]: row for row in json.loads(run("status", "--json", env=env).stdout)}
    assert rows["ml"]["state"] == "needs_reauth"
    assert run("token", "ml", env=env, check=False).returncode == 3


# -- login -----------------------------------------------------------------------------------------
def _stderr_lines(process: subprocess.Popen[str]) -> Iterator[str]:
    assert process.stderr is not None
    for line in process.stderr:
        yield line.rstrip("\n")


def test_login_authorization_code_end_to_end(
    config: Path, env: dict[str, str], tokenward_emulator: Any
) -> None:
    process = subprocess.Popen(
        [str(TOKENWARD), "login", "ml", "--no-browser", "--timeout", "30"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = next(line for line in _stderr_lines(process) if line.startswith("http"))
        assert "code_challenge_method=S256" in url and "state=" in url
        # The "browser": follow the emulator's redirect to the one-shot callback server.
        page = httpx2.get(url, follow_redirects=True, timeout=10)
        assert page.status_code == 200 and "login complete" in page.text
        stdout, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0 and "logged in ml" in stdout
    assert tokenward_emulator.emulator.counters["authorization_code"] == 1
    token = run("token", "ml", env=env).stdout.strip()
    assert tokenward_emulator.emulator.is_access_token_valid(token)
    assert token not in stdout


def test_login_device_flow_end_to_end(
    config: Path, env: dict[str, str], tokenward_emulator: Any
) -> None:
    process = subprocess.Popen(
        [str(TOKENWARD), "login", "ml", "--device", "--timeout", "30"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _stderr_lines(process)
        next(line for line in lines if line.startswith("Go to"))
        user_code = next(lines)
        assert tokenward_emulator.emulator.approve_device(user_code)
        stdout, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0 and "logged in ml" in stdout
    token = run("token", "ml", env=env).stdout.strip()
    assert tokenward_emulator.emulator.is_access_token_valid(token)


def test_login_callback_with_wrong_state_exits_3(
    config: Path, env: dict[str, str], tokenward_emulator: Any
) -> None:
    result: dict[str, Any] = {}

    def forge() -> None:
        import re
        import time

        for _ in range(200):
            match = re.search(r"redirect_uri=([^&\s]+)", runner_output.getvalue())
            if match:
                from urllib.parse import unquote

                httpx2.get(unquote(match.group(1)) + "?code=x&state=forged", timeout=5)
                return
            time.sleep(0.05)

    import io

    runner_output = io.StringIO()

    def invoke() -> None:
        from contextlib import redirect_stderr

        with redirect_stderr(runner_output):
            try:
                from tokenward.cli import main

                main(["login", "ml", "--no-browser", "--timeout", "20"])
            except SystemExit as exc:
                result["code"] = exc.code

    worker = threading.Thread(target=invoke)
    worker.start()
    forge()
    worker.join(30)
    assert result["code"] == 3 and "wrong state" in runner_output.getvalue()


# -- import-env ------------------------------------------------------------------------------------
def test_import_env_keeps_the_dotenv_working(
    tmp_path: Path, env: dict[str, str], tokenward_emulator: Any
) -> None:
    emulator = tokenward_emulator.emulator
    refresh = emulator.issue_refresh_token(TEST_CLIENT_ID)
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# my app\n"
        f"ML_CLIENT_ID={TEST_CLIENT_ID}\nML_CLIENT_SECRET={TEST_CLIENT_SECRET}\n"
        f"ML_REFRESH_TOKEN={refresh}\nML_ACCESS_TOKEN=APP_USR-old\nOTHER=kept\n"
    )
    config = tmp_path / "tokenward.toml"
    config.write_text(f'[store]\nurl = "sqlite://{tmp_path}/tokens.db"\n')
    config.chmod(0o600)
    done = run("import-env", str(dotenv), "--base-url", tokenward_emulator.url, env=env)
    assert "export ML_CLIENT_SECRET" in done.stdout and TEST_CLIENT_SECRET not in done.stdout
    text = config.read_text()
    assert 'client_secret = "env:ML_CLIENT_SECRET"' in text and TEST_CLIENT_SECRET not in text
    token = run("token", "ml", env={**env, "ML_CLIENT_SECRET": TEST_CLIENT_SECRET}).stdout.strip()
    assert emulator.is_access_token_valid(token)
    after = dotenv.read_text()
    assert f"ML_ACCESS_TOKEN={token}" in after and "OTHER=kept" in after
    assert refresh not in after and "# my app" in after


def test_login_device_flow_denied_exits_3(
    config: Path, env: dict[str, str], tokenward_emulator: Any
) -> None:
    process = subprocess.Popen(
        [str(TOKENWARD), "login", "ml", "--device", "--timeout", "30"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _stderr_lines(process)
        next(line for line in lines if line.startswith("Go to"))
        assert tokenward_emulator.emulator.approve_device(next(lines), deny=True)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 3 and "denied" in stderr


def test_pkce_and_discovery_helpers() -> None:
    import base64
    import hashlib

    from tokenward.sources.authorization import Pkce, discovery_urls

    pkce = Pkce.new()
    digest = hashlib.sha256(pkce.verifier.encode()).digest()
    assert pkce.challenge == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert 43 <= len(pkce.verifier) <= 128 and pkce.verifier not in repr(pkce)
    assert discovery_urls("https://id.example.com/tenant/") == [
        "https://id.example.com/.well-known/oauth-authorization-server/tenant",
        "https://id.example.com/tenant/.well-known/openid-configuration",
    ]
