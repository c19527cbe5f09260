"""Every snippet of docs/cli.md, docs/configuration.md and docs/broker.md runs as written.

Each fenced block has a runner below, in the order of the document; a block without one fails
`test_every_snippet_has_a_runner` (add a runner next to the others: most are one line). The
runners execute the text itself, in the sandbox of `docs_sandbox.py`, where the providers' URLs
lead to the emulator; where a block shows output, the output must fit it (`...` = anything).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from docs_sandbox import (
    DOC_CLIENT_ID,
    Block,
    World,
    announced_url,
    blocks,
    commands,
    matches,
)

from tokenward.testing import TEST_API_KEY

Runner = Callable[[World, Block], None]


@pytest.fixture
def world(tmp_path: Path, tokenward_emulator: Any) -> Iterator[World]:
    if shutil.which("curl") is None or shutil.which("jq") is None:
        pytest.fail("the docs' snippets use curl and jq: `make test` installs them (apt-get)")
    sandbox = World(tmp_path, tokenward_emulator)
    try:
        yield sandbox
    finally:
        sandbox.close()


def _run_console(world: World, block: Block, cwd: Path | None = None) -> list[str]:
    """Run a console block's commands; check the output shown after each `$ ` command."""
    parsed = commands(block)
    outputs = world.sh([command for command, _ in parsed], cwd)
    for (command, expected), output in zip(parsed, outputs, strict=True):
        if expected:
            assert matches(expected, output), f"{command!r} printed:\n{output}\nnot:\n{expected}"
    return outputs


# -- docs/cli.md -----------------------------------------------------------------------------------
def cli_first_steps(world: World, block: Block) -> None:
    outputs = _run_console(world, block)
    assert "login complete" in (world.base / "browser.log").read_text()  # the browser's visit
    status = outputs[-1]
    assert "ml" in status and " ok " in status and "logged in ml" in outputs[-2]


def cli_token_in_a_shell(world: World, block: Block) -> None:
    (output,) = _run_console(world, block)
    assert (
        json.loads(output)["path"] == "/api/users/me"
    )  # the emulator's API answered with the token


def cli_status_jq(world: World, block: Block) -> None:
    assert _run_console(world, block) == [""]  # nothing needs a login
    world.sh(["tokenward revoke ml --local"])
    assert _run_console(world, block) == ["ml\n"]


def cli_login_python(world: World, block: Block) -> None:
    world.env["ML_CLIENT_SECRET"] = "..."
    output = world.python(block.text)  # after cli_status_jq's `revoke --local`: a new login
    assert "Open https://auth.mercadolibre.com/authorization?" in output
    assert "logged in ml, token " in output
    rows = json.loads(world.sh(["tokenward status --json"])[0])
    assert {row["name"]: row["state"] for row in rows}["ml"] == "ok"


def cli_revoke_python(world: World, block: Block) -> None:
    assert world.python(block.text) == "needs_reauth\n"  # after cli_login_python's login
    output = world.sh(["tokenward token ml || test $? -eq 3"])[0]  # exit code 3: a login
    assert "revoked locally" in output


def cli_import_env(world: World, block: Block) -> None:
    emulator = world.emulator.emulator
    folder = world.base / "import"
    folder.mkdir()
    (folder / ".env").write_text(
        f"ML_CLIENT_ID={DOC_CLIENT_ID}\nML_CLIENT_SECRET=...\n"
        f"ML_REFRESH_TOKEN={emulator.issue_refresh_token(DOC_CLIENT_ID)}\n"
        "ML_ACCESS_TOKEN=APP_USR-old\nOTHER=kept\n"
    )
    (folder / "app.env").write_text(
        f"APP_ID={DOC_CLIENT_ID}\nAPP_SECRET=...\n"
        f"APP_REFRESH={emulator.issue_refresh_token(DOC_CLIENT_ID)}\nAPP_ACCESS=\n"
    )
    for env in (".env", "app.env"):
        (folder / env).chmod(0o600)
    outputs = _run_console(world, block, folder)
    assert all("next: export" in output for output in outputs)
    # As the text after the block says: export the secret from the .env, then use it.
    token = world.sh(["set -a; . ./.env; set +a", "tokenward token ml"], folder)[1].strip()
    assert emulator.is_access_token_valid(token)
    assert f"ML_ACCESS_TOKEN={token}" in (folder / ".env").read_text()


def cli_gitignore(world: World, block: Block) -> None:
    folder = world.base / "import"  # after cli_import_env and a refresh there
    ignored = set(block.text.split())
    beside = {path.name for path in folder.iterdir() if path.name.startswith(".env")}
    assert beside == ignored, f"tokenward keeps {sorted(beside)} beside .env; the doc: {ignored}"


def cli_completion(world: World, block: Block) -> None:
    lines = [command for command, _ in commands(block)]
    assert len(lines) == 3
    bash, zsh, fish = lines
    registered = world.sh([bash, "complete -p tokenward"])[1]
    assert "_tokenward_completion" in registered
    for line, shell, expected in ((zsh, "zsh", "compdef"), (fish, "fish", "complete")):
        if shutil.which(shell):
            world.sh([f"{shell} -c {json.dumps(line)}"])
        source = line.split("$(")[-1].split(")")[0] if "$(" in line else line.split(" |")[0]
        assert expected in world.sh([source])[0]


# -- docs/configuration.md -------------------------------------------------------------------------
def config_python(world: World, block: Block) -> None:
    world.sh(
        [
            "tokenward add ml --preset mercadolibre --client-id 1234567890 "
            "--client-secret env:ML_CLIENT_SECRET",
            "export ML_CLIENT_SECRET=...",
            "tokenward login ml",
        ]
    )
    before = world.emulator.emulator.counters.get("api_requests", 0)
    world.env["ML_CLIENT_SECRET"] = "..."
    world.python(block.text)
    assert world.emulator.emulator.counters.get("api_requests", 0) >= before


def config_complete_example(world: World, block: Block) -> None:
    from tokenward.config import parse_config

    config = parse_config(tomllib.loads(block.text), world.work / "tokenward.toml")
    assert set(config.credentials) == {"ml", "avatar", "m2m", "custom"}
    rule = config.credential_config("custom").expiry_rule()
    assert rule is not None and rule.json_fields == {"message": "invalid_token"}


def config_unknown_key(world: World, block: Block) -> None:
    (world.work / "tokenward.toml").write_text(
        '[credentials.ml]\npreset = "mercadolibre"\nclient_id = "1234567890"\n'
        'clinet_secret = "env:ML_CLIENT_SECRET"\n'
    )
    (world.work / "tokenward.toml").chmod(0o600)
    ((command, expected),) = commands(block)
    output = world.sh([f"{command} || test $? -eq 2"])[0]
    assert matches(expected, output), output


# -- docs/broker.md --------------------------------------------------------------------------------
def _broker_config(world: World, clients: str = "") -> Path:
    """The credentials of docs/broker.md's example, in the sandbox (its store, its secrets)."""
    secret = world.base / "heygen-api-key"
    secret.write_text(TEST_API_KEY + "\n")
    path = world.work / "tokenward.toml"
    path.write_text(
        f'[store]\nurl = "sqlite://{world.base}/tokens.db"\n\n'
        '[credentials.ml]\npreset = "mercadolibre"\nclient_id = "1234567890"\n'
        'client_secret = "env:ML_CLIENT_SECRET"\n\n'
        f'[credentials.avatar]\npreset = "heygen"\napi_key = "file:{secret}"\n\n'
        f"[broker]\nport = 0\n{clients}"  # any free port: serve announces it
    )
    path.chmod(0o600)
    world.env["ML_CLIENT_SECRET"] = "..."
    return path


def broker_toml(world: World, block: Block) -> None:
    from tokenward.broker.config import load_broker

    path = world.work / "tokenward.toml"
    path.write_text(block.text)
    path.chmod(0o600)
    config, settings = load_broker(path)
    assert set(config.credentials) == {"ml", "avatar"} and settings.port == 8421
    assert {client.name for client in settings.clients} == {"web", "backend"}


def broker_add_client(world: World, block: Block) -> None:
    path = _broker_config(world)
    _run_console(world, block)
    assert "[broker.clients.web]" in path.read_text()


def broker_running(world: World, block: Block) -> None:
    (first, _), (second, _) = commands(block)
    path = _broker_config(world, '[broker.clients.web]\nkey_sha256 = "' + "0" * 64 + '"\n')
    assert tomllib.loads(path.read_text())["broker"]["port"] == 0
    url, _ = announced_url(world.start(["bash", "-c", first]))
    assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")  # [broker] host, port
    assert httpx2.get(f"{url}/healthz", timeout=10).status_code == 200
    with socket.socket() as probe:
        busy = probe.connect_ex(("127.0.0.1", 9000)) == 0
    if busy:  # someone else's port 9000 on this machine: the line must then say so, exit 5
        process = world.start(["bash", "-c", second])
        assert process.wait(60) == 5 and process.stderr is not None
        assert "0.0.0.0:9000: the port is already in use" in process.stderr.read()
        return
    url, _ = announced_url(world.start(["bash", "-c", second]))
    assert url == "http://0.0.0.0:9000"
    assert httpx2.get("http://127.0.0.1:9000/healthz", timeout=10).status_code == 200


def broker_create_app(world: World, block: Block) -> None:
    _broker_config(world)
    world.python(block.text + "\nassert app.openapi()['paths']\n")


def broker_using_it(world: World, block: Block) -> None:
    # One client holding every right, whose key is the doc's placeholder `twk_...`.
    digest = hashlib.sha256(b"twk_...").hexdigest()
    path = _broker_config(
        world,
        f'[broker.clients.backend]\nkey_sha256 = "{digest}"\ncredentials = ["ml", "avatar"]\n'
        'methods = ["*"]\nraw_tokens = true\nadmin = true\nmax_sessions = 2\n',
    )
    emulator = world.emulator.emulator
    world.sh(["tokenward login ml"])
    process = world.start(["tokenward", "serve", "--config", str(path)])
    url, _ = announced_url(process)
    world.map("http://127.0.0.1:8421", url)
    _run_console(world, block)
    assert emulator.counters["sessions_started"] >= 1 and emulator.counters["sessions_stopped"] >= 1
    assert emulator.counters["tasks"] >= 1  # through the session-bound proxy
    world.broker = process  # its audit log: broker_audit_line


def broker_audit_line(world: World, block: Block) -> None:
    process = world.broker
    assert process is not None, "broker_using_it runs first"
    process.terminate()
    assert process.stderr is not None
    lines = [line for line in process.stderr.read().splitlines() if "action=proxy" in line]
    shown = block.text.strip()
    assert lines and matches([shown.replace("3f1c0a9b2d4e", "...")], lines[0]), (lines, shown)


RUNNERS: dict[str, list[tuple[str, Runner]]] = {
    "docs/cli.md": [
        ("tokenward init", cli_first_steps),
        ('curl -H "Authorization: Bearer $(tokenward token ml)"', cli_token_in_a_shell),
        ("tokenward status --json | jq", cli_status_jq),
        ("from tokenward.login import login", cli_login_python),
        ("from tokenward.login import revoke", cli_revoke_python),
        ("tokenward import-env .env", cli_import_env),
        (".env", cli_gitignore),
        ('eval "$(_TOKENWARD_COMPLETE=bash_source tokenward)"', cli_completion),
    ],
    "docs/configuration.md": [
        ("import asyncio", config_python),
        ("[store]", config_complete_example),
        ("$ tokenward token ml", config_unknown_key),
    ],
    "docs/broker.md": [
        ("[store]", broker_toml),
        ("$ tokenward broker add-client web", broker_add_client),
        ("$ tokenward serve --config tokenward.toml", broker_running),
        ("from tokenward.broker import create_app", broker_create_app),
        ("$ KEY=twk_...", broker_using_it),
        ("INFO:     tokenward.audit", broker_audit_line),
    ],
}


@pytest.mark.parametrize("doc", sorted(RUNNERS))
def test_every_snippet_has_a_runner(doc: str) -> None:
    found = blocks(doc)
    listed = RUNNERS[doc]
    shown = [f"{b.index}: {b.first_line}" for b in found]
    assert len(found) == len(listed), (
        f"{doc} has {len(found)} blocks, runners for {len(listed)}: {shown}"
    )
    for block, (start, runner) in zip(found, listed, strict=True):
        assert block.first_line.startswith(start), (
            f"{doc} block {block.index} starts {block.first_line!r}; {runner.__name__} expects "
            f"{start!r}: add a runner for a new block in tests/test_docs_snippets.py"
        )


@pytest.mark.parametrize("doc", sorted(RUNNERS))
def test_every_snippet_runs_as_written(doc: str, world: World) -> None:
    for block, (_start, runner) in zip(blocks(doc), RUNNERS[doc], strict=True):
        try:
            runner(world, block)
        except AssertionError as exc:
            raise AssertionError(
                f"{doc}, block {block.index} ({block.first_line!r}): {exc}"
            ) from None
