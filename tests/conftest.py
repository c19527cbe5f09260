"""Fixtures that several test modules share (one copy each; a module that needs another meaning
of a name defines its own fixture of that name, which takes precedence here), and the `unit` /
`e2e` markers.

The emulator itself is the `tokenward_emulator` fixture of the tokenward pytest plugin
(src/tokenward/testing/plugin.py); the fixtures below build on it.

Markers (`pytest -m unit`: the fast tests alone; `make test` runs both): a test is `e2e` when it
runs a real server or another process: it uses a fixture that starts one (E2E_FIXTURES, directly
or through other fixtures), is parametrized with a network store (Redis, PostgreSQL), or its
module or itself is marked `pytest.mark.e2e` (servers or processes started in the test body or in
a module's own fixture). Every other test is `unit`: no sockets, no subprocesses, milliseconds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients_support import Events, make_manager
from servers import drop_registered

from tokenward import TokenManager
from tokenward.sources import RefreshTokenGrant
from tokenward.testing import TEST_API_KEY, TEST_CLIENT_ID, TEST_CLIENT_SECRET, Emulator
from tokenward.testing.server import EmulatorServer

#: Fixtures that start a server: a test that uses one, even through another fixture, is e2e.
E2E_FIXTURES = frozenset({"tokenward_emulator"})
#: Parameter values that put a test on a network store server.
NETWORK_STORES = frozenset({"redis", "postgres"})


def _is_e2e(item: pytest.Item) -> bool:
    if item.get_closest_marker("e2e") is not None:
        return True
    if E2E_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    params = callspec.params.values() if callspec is not None else ()
    return any(isinstance(value, str) and value in NETWORK_STORES for value in params)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test `e2e` or `unit` (the rule is in this module's docstring)."""
    for item in items:
        item.add_marker(pytest.mark.e2e if _is_e2e(item) else pytest.mark.unit)


@pytest.fixture(autouse=True)
def _clean_network_stores() -> Iterator[None]:
    """Drop the Redis prefixes and PostgreSQL schemas the test registered (servers.py)."""
    yield
    drop_registered()


# -- the emulator and a credential on it ---------------------------------------------------------


@pytest.fixture
def emulator(tokenward_emulator: EmulatorServer) -> Emulator:
    """The state (settings, counters, faults) of the test's running emulator."""
    return tokenward_emulator.emulator


@pytest.fixture
def source(tokenward_emulator: EmulatorServer) -> RefreshTokenGrant:
    """The refresh-token grant of the emulator's pre-registered client (secret in the body)."""
    return RefreshTokenGrant(
        tokenward_emulator.token_url, TEST_CLIENT_ID, TEST_CLIENT_SECRET, client_auth="body"
    )


@pytest.fixture
def manager(tokenward_emulator: EmulatorServer) -> Iterator[TokenManager]:
    """A seeded manager (memory store) that already holds its first token, counters reset
    (clients_support.make_manager), closed after the test."""
    with make_manager(tokenward_emulator) as manager:
        yield manager


@pytest.fixture
def events() -> Iterator[Events]:
    """tokenward's log records at DEBUG, collected for the test (event names and text)."""
    handler = Events()
    logger = logging.getLogger("tokenward")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(previous)


# -- the command line (test_cli, test_cli_first_hour) --------------------------------------------


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An environment that never touches the user's real configuration or store."""
    values = {
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
        "TW_SECRET": TEST_CLIENT_SECRET,
        "TW_API_KEY": TEST_API_KEY,
    }
    monkeypatch.delenv("TOKENWARD_CONFIG", raising=False)
    monkeypatch.delenv("TOKENWARD_STORE", raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    return {k: v for k, v in os.environ.items() if not k.startswith("TOKENWARD_")}


@pytest.fixture
def config(tmp_path: Path, env: dict[str, str], tokenward_emulator: EmulatorServer) -> Path:
    """A configuration with an OAuth credential (`ml`) and an API key (`avatar`) on the emulator."""
    url = tokenward_emulator.url
    path = tmp_path / "tokenward.toml"
    path.write_text(
        f'[store]\nurl = "sqlite://{tmp_path}/tokens.db"\n\n'
        f'[credentials.ml]\npreset = "mercadolibre"\nclient_id = "{TEST_CLIENT_ID}"\n'
        f'client_secret = "env:TW_SECRET"\nbase_url = "{url}"\n'
        f'authorize_url = "{url}/authorize"\nrevocation_url = "{url}/oauth/revoke"\n'
        f'device_authorization_url = "{url}/oauth/device/code"\n\n'
        f'[credentials.avatar]\npreset = "heygen"\napi_key = "env:TW_API_KEY"\nbase_url = "{url}"\n'
    )
    path.chmod(0o600)
    return path
