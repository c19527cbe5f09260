"""Issue 18, the command line's first hour: what the docs promise and a new user expects, each
through a real `tokenward` subprocess (or click's CliRunner where the terminal width matters)
against the provider emulator."""
# ruff: noqa: F811 - the fixtures `env` and `config` come from test_cli

from __future__ import annotations

import json
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx2
import pytest
from click.testing import CliRunner
from test_cli import TOKENWARD, config, env, run, seed  # noqa: F401 - fixtures

from tokenward.cli import cli


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
