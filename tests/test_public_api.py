"""The public surface of `tokenward`: every exception a public call can raise is importable from
the package, the stores users construct are there too, and `import tokenward` loads none of the
optional or heavy parts (they are imported on first use)."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import tokenward

#: Exception classes that no public call lets escape, with the reason.
INTERNAL_EXCEPTIONS = {
    # The broker's own answers, turned into HTTP responses (never raised to a library user).
    "tokenward.broker.auth.BrokerError",
    "tokenward.broker.proxy.BodyTooLarge",
    "tokenward.broker.paths.UnsafePath",
    # `tokenward serve` reports it as a CLI error; it is a ConfigError, reachable as such.
    "tokenward.broker.cli.AddressInUse",
}

#: Modules `import tokenward` must not load: the extras and the layers above the core.
MUST_NOT_LOAD = (
    "tokenward.broker",
    "tokenward.cli",
    "tokenward.config",
    "tokenward.configured",
    "tokenward.sessions",
    "tokenward.session_hooks",
    "tokenward.manager",
    "tokenward.integrations.requests",
    "tokenward.integrations.aiohttp",
    "tokenward.integrations.mcp",
    "tokenward.stores",
    "tokenward.stores.redis",
    "tokenward.stores.postgres",
    "tokenward.stores.encrypted",
    "tokenward.testing",
    "httpx2",
    "requests",
    "aiohttp",
    "redis",
    "psycopg",
    "mcp",
    "fastapi",
    "click",
    "rich",
    "cryptography",
)


def _defined_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(tokenward.__path__, "tokenward."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == info.name
                and not name.startswith("_")
                and not info.name.rsplit(".", 1)[-1].startswith("_")
            ):
                found[f"{info.name}.{name}"] = value
    return found


def test_every_exception_is_reachable_from_the_package() -> None:
    defined = _defined_exceptions()
    assert "tokenward.stores.encrypted.StoreDecryptionError" in defined  # the walk works
    missing = [
        where
        for where, cls in sorted(defined.items())
        if where not in INTERNAL_EXCEPTIONS and getattr(tokenward, cls.__name__, None) is not cls
    ]
    assert missing == []


@pytest.mark.parametrize(
    "name",
    ["SQLiteStore", "open_store", "MemoryStore", "JsonFileStore", "DotenvStore", "EncryptedStore"],
)
def test_stores_are_exported(name: str) -> None:
    assert name in tokenward.__all__
    assert getattr(tokenward, name) is getattr(importlib.import_module("tokenward.stores"), name)


def test_network_stores_are_reachable_but_not_in_star() -> None:
    from tokenward.stores.redis import RedisStore

    assert tokenward.RedisStore is RedisStore
    assert "RedisStore" not in tokenward.__all__  # `import *` must not need the redis extra


def test_every_name_in_all_resolves() -> None:
    for name in tokenward.__all__:
        assert getattr(tokenward, name) is not None
    assert set(tokenward.__all__) <= set(dir(tokenward))


def test_credential_stays_the_function() -> None:
    """`tokenward.credential` is the one-liner, whichever module was imported first."""
    import tokenward.configured

    assert callable(tokenward.credential)
    assert tokenward.credential is tokenward.configured.credential


def test_unknown_attribute_is_an_attribute_error() -> None:
    assert not hasattr(tokenward, "no_such_name")


_PROBE = """
import json, sys
before = set(sys.modules)
import tokenward
loaded = sorted(set(sys.modules) - before)
print(json.dumps(loaded))
"""


@pytest.mark.e2e
@pytest.mark.e2e  # a fresh interpreter: the only way to see what `import tokenward` loads
def test_import_loads_no_optional_part() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], check=True, capture_output=True, text=True
    ).stdout
    loaded = set(json.loads(out))
    assert sorted(m for m in loaded if m.startswith("tokenward")) == [
        "tokenward",
        "tokenward.errors",
    ]
    assert [m for m in MUST_NOT_LOAD if m in loaded] == []


# -- one name for one concept: a credential is named by its key ------------------------------------
def _config(tmp_path: Path) -> Path:
    path = tmp_path / "tokenward.toml"
    path.write_text(
        f'[store]\nurl = "memory://"\n[credentials.m2m]\ngrant = "client_credentials"\n'
        f'token_url = "http://127.0.0.1:9/token"\nclient_id = "id"\n'
        f'client_secret = "file:{tmp_path}/secret"\n'
    )
    (tmp_path / "secret").write_text("s")
    return path


def test_credential_takes_key_and_still_accepts_name(tmp_path: Path) -> None:
    path = _config(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with tokenward.credential(key="m2m", config=path) as cred:
            assert cred.key == "m2m" and cred.manager.key == "m2m"
    deprecated = pytest.warns(DeprecationWarning, match=r"'name' is deprecated; pass key=")
    with deprecated, tokenward.credential(name="m2m", config=path) as cred:
        assert cred.key == "m2m"
    with pytest.warns(DeprecationWarning, match=r"Credential\.name is deprecated"):
        assert cred.name == "m2m"


def test_renamed_keyword_refuses_mistakes(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'nmae'"):
        tokenward.credential(nmae="m2m")
    with pytest.raises(TypeError, match="missing required argument: 'key'"):
        tokenward.credential()
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="both 'key' and"):
        tokenward.credential("m2m", name="m2m")


def test_login_functions_take_key_and_still_accept_name(tmp_path: Path) -> None:
    from tokenward.login import login, revoke

    path = _config(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert revoke(key="m2m", config=path, local=True) is None  # nothing stored yet
    with pytest.warns(DeprecationWarning, match=r"tokenward\.login\.revoke: the keyword 'name'"):
        assert revoke(name="m2m", config=path, local=True) is None
    with pytest.raises(TypeError, match="missing required argument: 'key'"):
        login(config=path)
