"""Issue 18, the command line's first hour: what the docs promise and a new user expects, each
through a real `tokenward` subprocess (or click's CliRunner where the terminal width matters)
against the provider emulator."""

from __future__ import annotations

import json
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx2
import pytest
from click.testing import CliRunner
from test_cli import TOKENWARD, run, seed

from tokenward.cli import cli

pytestmark = pytest.mark.e2e  # `tokenward` subprocesses


def _rows(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in json.loads(done.stdout)}


# -- --version, global options ---------------------------------------------------------------------
def test_version(env: dict[str, str]) -> None:
    assert run("--version", env=env).stdout == f"tokenward, version {version('tokenward')}\n"


def test_global_options_before_and_after_the_command(
    tmp_path: Path, config: Path, env: dict[str, str], tokenward_emulator: Any
) -> None:
    seed(config, tokenward_emulator.emulator)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config.rename(elsewhere / "x.toml")
    path = str(elsewhere / "x.toml")
    shapes = [
        ["--config", path, "--json", "status"],
        ["--json", "status", "--config", path],
        ["status", "--json", "--config", path],
        ["--config", path, "status", "--json"],
    ]
    answers = [_rows(run(*shape, env=env)) for shape in shapes]
    assert all(set(rows) == {"ml", "avatar"} for rows in answers)
    assert all(rows["ml"]["state"] == "ok" for rows in answers)
    # --config before a nested command (broker add-client) reaches it too.
    done = run("--config", path, "broker", "add-client", "web", "--credential", "ml", env=env)
    assert done.stdout.startswith("twk_") and "[broker.clients.web]" in Path(path).read_text()
    # --debug after the command shows the traceback, as before it.
    for shape in (["--debug", "token", "ml"], ["token", "ml", "--debug"]):
        debug = run(*shape, "--config", "missing.toml", env=env, check=False)
        assert debug.returncode == 2 and "Traceback" in debug.stderr
    plain = run("token", "ml", "--config", "missing.toml", env=env, check=False)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    # --json where a command has no JSON output: a usage error naming where it works.
    misplaced = run("--json", "token", "ml", "--config", path, env=env, check=False)
    assert misplaced.returncode == 2 and "--json works with: status" in misplaced.stderr


# -- revoke ----------------------------------------------------------------------------------------
def _without_revocation_url(config: Path) -> None:
    text = config.read_text()
    config.write_text("\n".join(line for line in text.splitlines() if "revocation_url" not in line))


def test_revoke_on_a_provider_without_endpoint_explains_and_forgets_on_request(
    config: Path, env: dict[str, str], tokenward_emulator: Any
) -> None:
    emulator = tokenward_emulator.emulator
    _without_revocation_url(config)  # the mercadolibre preset as shipped: no revocation_url
    seed(config, emulator)
    current = run("token", "ml", env=env).stdout.strip()
    refused = run("revoke", "ml", env=env, check=False)
    assert refused.returncode == 2, refused.stderr
    assert "has no revocation_url" in refused.stderr
    assert "MercadoLibre has no token revocation endpoint" in refused.stderr
    assert "tokenward revoke ml --local" in refused.stderr and "revocation_url = " in refused.stderr
    assert _rows(run("status", "--json", env=env))["ml"]["state"] == "ok"  # nothing lost

    done = run("revoke", "ml", "--local", env=env)
    assert "forgot the stored tokens of ml" in done.stdout and "tokenward login ml" in done.stdout
    assert emulator.counters["revocations"] == 0  # the provider was not asked ...
    assert emulator.is_access_token_valid(current)  # ... so its token stays valid there
    after = run("token", "ml", env=env, check=False)
    assert after.returncode == 3
    assert "revoked locally with `tokenward revoke --local`" in after.stderr
    assert "the provider was not asked" in after.stderr and "tokenward login ml" in after.stderr
    assert "refused the grant" not in after.stderr


def test_token_after_a_provider_revoke_says_so(
    config: Path, env: dict[str, str], tokenward_emulator: Any
) -> None:
    seed(config, tokenward_emulator.emulator)
    run("token", "ml", env=env)
    run("revoke", "ml", env=env)
    assert tokenward_emulator.emulator.counters["revocations"] >= 1
    after = run("token", "ml", env=env, check=False)
    assert (
        after.returncode == 3 and "revoked at the provider with `tokenward revoke`" in after.stderr
    )
    assert "refused the grant" not in after.stderr


def test_a_stored_refusal_is_reported_once_not_nested(
    config: Path, env: dict[str, str], tokenward_emulator: Any
) -> None:
    emulator = tokenward_emulator.emulator
    emulator.revoke(seed(config, emulator))  # the next refresh gets invalid_grant
    first = run("refresh", "ml", env=env, check=False)
    assert first.returncode == 3 and "the provider refused the grant: invalid_grant" in first.stderr
    again = run("token", "ml", env=env, check=False)  # from the stored state, no provider call
    assert again.returncode == 3
    assert again.stderr.count("re-authorization required") == 1
    assert "the provider refused the grant: invalid_grant" in again.stderr


# -- next steps ------------------------------------------------------------------------------------
def test_add_ends_with_the_next_command(tmp_path: Path, env: dict[str, str]) -> None:
    done = run("add", "ml", "--preset", "mercadolibre", "--client-id", "1",
               "--client-secret", "env:TW_UNSET_SECRET", env=env)  # fmt: skip
    assert done.stdout.splitlines()[-1] == "next: export TW_UNSET_SECRET=...; tokenward login ml"
    done = run("add", "avatar", "--preset", "heygen", "--api-key", "env:TW_API_KEY", env=env)
    assert done.stdout.splitlines()[-1] == "next: tokenward token avatar"  # TW_API_KEY is set


def test_status_says_how_to_fill_an_empty_credential(config: Path, env: dict[str, str]) -> None:
    out = run("status", env=env).stdout
    assert "ml has no token yet; next: tokenward login ml" in out
    assert "avatar has no token yet; next: tokenward token avatar" in out
    assert "next:" not in run("status", "--json", env=env).stdout


def test_status_without_credentials_says_how_to_add_one(
    tmp_path: Path, env: dict[str, str]
) -> None:
    run("init", env=env)
    done = run("status", env=env)
    assert done.stdout == (
        "no credential configured in tokenward.toml; next: tokenward add NAME --preset PRESET\n"
    )
    assert json.loads(run("status", "--json", env=env).stdout) == []


def test_login_no_browser_says_where_it_waits(
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
        assert process.stderr is not None
        url = waiting = ""
        for line in process.stderr:
            if line.startswith("http"):
                url = line.strip()
            if line.startswith("Waiting"):
                waiting = line.strip()
                break
        redirect = httpx2.URL(url).params["redirect_uri"]
        assert waiting == (
            f"Waiting up to 30s for the provider's redirect to {redirect} (Ctrl-C cancels)."
        )
        assert redirect.startswith("http://127.0.0.1:") and redirect.endswith("/callback")
        assert httpx2.get(url, follow_redirects=True, timeout=10).status_code == 200
        stdout, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0 and "logged in ml" in stdout


# -- status at 80 columns --------------------------------------------------------------------------
def test_status_fits_80_columns_and_is_complete_when_wide(
    config: Path, env: dict[str, str], tokenward_emulator: Any
) -> None:
    _without_revocation_url(config)
    seed(config, tokenward_emulator.emulator)
    run("token", "ml", env=env)
    run("revoke", "ml", "--local", env=env)  # state needs_reauth, a long last error
    narrow = CliRunner(env={"COLUMNS": "80"}).invoke(cli, ["status"])
    assert narrow.exit_code == 0, narrow.output
    lines = narrow.output.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in narrow.output
    ml = next(line for line in lines if line.split()[:1] == ["ml"])
    assert ml.split()[1] == "needs_reauth"
    assert "ml: revoked locally with `tokenward revoke --local`" in narrow.output
    avatar = next(line for line in lines if line.split()[:1] == ["avatar"])
    assert avatar.split()[1] == "empty"
    wide = CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["status"])
    assert "last refresh" in wide.output and "error" in wide.output and "…" not in wide.output
    ml_wide = next(line for line in wide.output.splitlines() if "│ ml " in line)
    assert "needs_reauth" in ml_wide and "revoked locally" in ml_wide
    rows = json.loads(CliRunner(env={"COLUMNS": "80"}).invoke(cli, ["status", "--json"]).output)
    assert set(rows[0]) == {
        "name", "preset", "grant", "state", "token", "expires_at", "expires_in",
        "last_refresh", "refresh_count", "last_error",
    }  # fmt: skip


@pytest.fixture(autouse=True)
def _no_user_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)


# -- serve -----------------------------------------------------------------------------------------
def _serve(config: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(TOKENWARD), "serve", "--config", str(config), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def _announcement(process: subprocess.Popen[str]) -> list[str]:
    """The startup summary: the lines up to `listening on ...` and its warnings."""
    assert process.stderr is not None
    lines: list[str] = []
    for line in process.stderr:
        lines.append(line.rstrip("\n"))
        if line.startswith("INFO:"):
            return lines
    raise AssertionError(f"serve exited ({process.wait()}) after:\n" + "\n".join(lines))


def test_serve_on_a_busy_port_exits_5_naming_it(config: Path, env: dict[str, str]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run("serve", "--config", str(config), "--port", str(port), env=env, check=False)
    assert done.returncode == 5, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in done.stderr
    assert "--port N" in done.stderr and "Traceback" not in done.stderr


def test_serve_says_what_it_loaded_and_warns_without_clients(
    config: Path, env: dict[str, str], tmp_path: Path
) -> None:
    process = _serve(config, env, "--port", "0")
    try:
        lines = _announcement(process)
        assert lines[0] == f"tokenward serve: configuration {config}"
        assert "  credentials: avatar, ml" in lines
        assert f"  store: {tmp_path}/tokens.db" in lines and "  clients: none" in lines
        url = next(line for line in lines if "listening on" in line).split()[2]
        warning = next(line for line in lines if line.startswith("warning:"))
        assert "every /v1 call will be answered 401" in warning
        assert "tokenward broker add-client web --credential avatar" in warning
        assert httpx2.get(f"{url}/v1/credentials", timeout=5).status_code == 401  # as warned
        assert httpx2.get(f"{url}/healthz", timeout=5).status_code == 200
    finally:
        process.terminate()
        process.wait(15)

    run("broker", "add-client", "web", "--credential", "ml", "--config", str(config), env=env)
    with config.open("a") as handle:
        handle.write("\n[broker]\nexamples = true\n")
    process = _serve(config, env, "--port", "0")
    try:
        lines = _announcement(process)
        assert "  clients: web" in lines and not any(x.startswith("warning") for x in lines)
        page = next(line for line in lines if "example page:" in line).split()[-1]
        assert httpx2.get(page, timeout=5).status_code == 200
    finally:
        process.terminate()
        process.wait(15)


# -- token --timeout, progress on a terminal -------------------------------------------------------
def _unreachable(tmp_path: Path) -> Path:
    path = tmp_path / "unreachable.toml"
    path.write_text(
        f'[store]\nurl = "sqlite://{tmp_path}/u.db"\n[credentials.avatar]\npreset = "heygen"\n'
        'api_key = "env:TW_API_KEY"\nbase_url = "http://127.0.0.1:1"\n'
    )
    path.chmod(0o600)
    return path


def _attempts(stderr: str) -> int:
    import re

    match = re.search(r"refresh failed after (\d+) attempt", stderr)
    assert match, stderr
    return int(match.group(1))


def test_token_timeout_bounds_the_retries(tmp_path: Path, env: dict[str, str]) -> None:
    path = _unreachable(tmp_path)
    done = run("token", "avatar", "--timeout", "1", "--config", str(path), env=env, check=False)
    assert done.returncode == 4 and done.stdout == ""
    # Backoff waits at least 0.1 + 0.2 + 0.4 + 0.8 s: a 1-second budget allows at most 4
    # attempts (the default 30 s allows 10). Not a terminal: the error line only.
    assert 1 <= _attempts(done.stderr) <= 4
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    bad = run("token", "avatar", "--timeout", "0", "--config", str(path), env=env, check=False)
    assert bad.returncode == 2 and "--timeout" in bad.stderr


def test_token_shows_retries_on_a_terminal(tmp_path: Path, env: dict[str, str]) -> None:
    import os
    import pty

    path = _unreachable(tmp_path)
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            [str(TOKENWARD), "token", "avatar", "--timeout", "1", "--config", str(path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
        )
        os.close(follower)
        stdout, _ = process.communicate(timeout=60)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other side is closed, all was read
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    shown = b"".join(chunks).decode().replace("\r\n", "\n")
    assert process.returncode == 4 and stdout == ""
    attempts = _attempts(shown)
    lines = [line for line in shown.splitlines() if line.startswith("avatar: attempt")]
    assert len(lines) == attempts and lines[0].startswith("avatar: attempt 1 failed (ConnectError")
    assert "retrying in" in lines[0] and lines[-1].endswith("giving up")


# -- import-env: what it adds, readable .env warned ------------------------------------------------
def _dotenv(tmp_path: Path, refresh: str, mode: int) -> Path:
    from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET

    dotenv = tmp_path / ".env"
    dotenv.write_text(
        f"ML_CLIENT_ID={TEST_CLIENT_ID}\nML_CLIENT_SECRET={TEST_CLIENT_SECRET}\n"
        f"ML_REFRESH_TOKEN={refresh}\nML_ACCESS_TOKEN=APP_USR-old\n"
    )
    dotenv.chmod(mode)
    config = tmp_path / "tokenward.toml"
    config.write_text(f'[store]\nurl = "sqlite://{tmp_path}/tokens.db"\n')
    config.chmod(0o600)
    return dotenv


def test_import_env_says_what_it_adds_and_the_files_match(
    tmp_path: Path, env: dict[str, str], tokenward_emulator: Any
) -> None:
    from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET

    emulator = tokenward_emulator.emulator
    dotenv = _dotenv(tmp_path, emulator.issue_refresh_token(TEST_CLIENT_ID), 0o600)
    before = {p.name for p in tmp_path.iterdir()}
    done = run("import-env", ".env", "--base-url", tokenward_emulator.url, env=env)
    assert done.stderr == ""  # mode 0600: no warning
    said = done.stdout.splitlines()[1]
    assert said.startswith("tokenward added TOKENWARD_STATE_ML to .env")
    assert said.endswith(".gitignore: .env .env.lock .env.leases")
    run("token", "ml", env={**env, "ML_CLIENT_SECRET": TEST_CLIENT_SECRET})  # a refresh: leases
    created = {p.name for p in tmp_path.iterdir()} - before - {"tokens.db"}
    assert created == {".env.lock", ".env.leases"}  # exactly what the message names
    added = {line.split("=")[0] for line in dotenv.read_text().splitlines()}
    assert added - {"ML_CLIENT_ID", "ML_CLIENT_SECRET", "ML_REFRESH_TOKEN", "ML_ACCESS_TOKEN"} == {
        "TOKENWARD_STATE_ML"
    }


def test_a_readable_dotenv_holding_the_secret_is_warned(
    tmp_path: Path, env: dict[str, str], tokenward_emulator: Any
) -> None:
    from tokenward.testing import TEST_CLIENT_ID, TEST_CLIENT_SECRET

    emulator = tokenward_emulator.emulator
    dotenv = _dotenv(tmp_path, emulator.issue_refresh_token(TEST_CLIENT_ID), 0o644)
    done = run("import-env", ".env", "--base-url", tokenward_emulator.url, env=env)
    expected = (
        f"warning: {dotenv} holds the secret ML_CLIENT_SECRET and tokens and is readable by "
        f"group or others (mode 644). Run `chmod 600 {dotenv}`."
    )
    assert done.stderr.splitlines() == [expected]
    used = run("token", "ml", env={**env, "ML_CLIENT_SECRET": TEST_CLIENT_SECRET})
    assert used.stderr.splitlines() == [expected]  # at every use, like the config file's check
    for text in (done.stdout, done.stderr, used.stderr):
        assert TEST_CLIENT_SECRET not in text
    dotenv.chmod(0o600)
    assert run("status", env=env).stderr == ""
