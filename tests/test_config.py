"""Configuration: search order, validation messages, secret references, presets, and the
`tokenward.credential()` one-liner against the provider emulator."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import httpx2
import pytest

import tokenward
from tokenward.config import (
    ConfigError,
    InlineSecretWarning,
    find_config,
    load_config,
    load_preset,
    preset_names,
)
from tokenward.errors import SessionScoped
from tokenward.sources import ApiKeyExchange, ClientCredentialsGrant, RefreshTokenGrant
from tokenward.testing import TEST_API_KEY, TEST_CLIENT_ID, TEST_CLIENT_SECRET

SECRET = "s3cr3t-value-never-shown"


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the user's real configuration or store."""
    monkeypatch.delenv("TOKENWARD_CONFIG", raising=False)
    monkeypatch.delenv("TOKENWARD_STORE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.chdir(tmp_path)


def config_for(tmp_path: Path, body: str, store: bool = True) -> Path:
    head = f'[store]\nurl = "sqlite://{tmp_path}/tokens.db"\n' if store else ""
    return write(tmp_path / "tokenward.toml", head + body)


# -- finding the file ------------------------------------------------------------------------------
def test_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = tmp_path / "xdg-config" / "tokenward" / "config.toml"
    user.parent.mkdir(parents=True)
    write(user, "")
    assert find_config() == user
    local = write(tmp_path / "tokenward.toml", "")
    assert find_config().resolve() == local
    env = write(tmp_path / "env.toml", "")
    monkeypatch.setenv("TOKENWARD_CONFIG", str(env))
    assert find_config() == env
    explicit = write(tmp_path / "explicit.toml", "")
    assert find_config(explicit) == explicit


def test_missing_files_name_the_path_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match=r"no configuration file found.*tokenward init"):
        find_config()
    with pytest.raises(ConfigError, match=r"nope\.toml: configuration file not found"):
        find_config(tmp_path / "nope.toml")
    monkeypatch.setenv("TOKENWARD_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match=r"gone\.toml.*TOKENWARD_CONFIG"):
        find_config()


# -- validation ------------------------------------------------------------------------------------
def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "tokenward.toml", "[credentials.ml\nclient_id = 1\n")
    with pytest.raises(ConfigError, match=r"tokenward\.toml: not valid TOML"):
        load_config(path)


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = config_for(
        tmp_path, '[credentials.ml]\npreset = "mercadolibre"\nclient_id = "1"\nclinet_secret = "x"'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "[credentials.ml]" in message and str(path) in message
    assert "unknown key 'clinet_secret'; did you mean 'client_secret'?" in message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[stor]\nurl = "memory://"', "unknown key 'stor'; did you mean 'store'?"),
        ("[store]\nurl = 3", r"\[store\]: url must be a string, got 3"),
        (
            '[credentials.x]\ngrant = "password"\ntoken_url = "http://t"\nclient_id = "1"',
            "grant must be refresh_token | client_credentials | api_key, got 'password'",
        ),
        ('[credentials.x]\ntoken_url = "http://t"', "client_id is required"),
        ('[credentials.x]\nclient_id = "1"', "token_url is required"),
        (
            '[credentials.x]\npreset = "mercadolibre"\nclient_id = "1"\n'
            "[credentials.x.expiry_rule]\njson_field = {}",
            "expiry_rule: unknown key 'json_field'; did you mean 'json_fields'?",
        ),
        (
            '[credentials.x]\npreset = "mercadolbre"\nclient_id = "1"',
            "unknown preset 'mercadolbre'; did you mean 'mercadolibre'",
        ),
    ],
)
def test_invalid_settings(tmp_path: Path, body: str, expected: str) -> None:
    path = config_for(tmp_path, body, store=False)
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_wrong_type_of_a_secret_does_not_echo_it(tmp_path: Path) -> None:
    path = config_for(tmp_path, '[credentials.x]\ntoken_url = "http://t"\nclient_secret = 12345')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "client_secret must be a string, got int" in str(caught.value)
    assert "12345" not in str(caught.value)


# -- secrets ---------------------------------------------------------------------------------------
def test_env_reference_and_missing_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = config_for(
        tmp_path,
        '[credentials.ml]\npreset = "mercadolibre"\nclient_id = "1"\n'
        'client_secret = "env:TW_TEST_SECRET"',
    )
    settings = load_config(path).credential_config("ml")
    monkeypatch.delenv("TW_TEST_SECRET", raising=False)
    with pytest.raises(ConfigError) as caught:
        settings.source()
    message = str(caught.value)
    assert "environment variable TW_TEST_SECRET is not set" in message
    assert "[credentials.ml] client_secret" in message and "export TW_TEST_SECRET" in message
    monkeypatch.setenv("TW_TEST_SECRET", SECRET)
    source = settings.source()
    assert isinstance(source, RefreshTokenGrant) and source.client_secret == SECRET


def test_file_reference_strips_the_trailing_newline(tmp_path: Path) -> None:
    write(tmp_path / "secret.txt", SECRET + "\n")
    path = config_for(
        tmp_path,
        '[credentials.h]\npreset = "heygen"\napi_key = "file:secret.txt"',
    )
    assert load_config(path).credential_config("h").secret("api_key") == SECRET
    missing = config_for(tmp_path, '[credentials.h]\npreset = "heygen"\napi_key = "file:gone"')
    with pytest.raises(ConfigError, match=r"cannot read .*gone"):
        load_config(missing).credential_config("h").source()


def test_inline_secret_warns_without_the_value(tmp_path: Path) -> None:
    path = config_for(tmp_path, f'[credentials.h]\npreset = "heygen"\napi_key = "{SECRET}"')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_config(path)
    messages = [str(w.message) for w in caught if issubclass(w.category, InlineSecretWarning)]
    assert messages and "[credentials.h] api_key" in messages[0]
    assert SECRET not in messages[0]


def test_world_readable_inline_secret_is_refused_with_chmod(tmp_path: Path) -> None:
    path = config_for(tmp_path, f'[credentials.h]\npreset = "heygen"\napi_key = "{SECRET}"')
    path.chmod(0o644)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert f"chmod 600 {path}" in str(caught.value) and SECRET not in str(caught.value)
    # A world-readable file holding only references is fine.
    write(path, '[credentials.h]\npreset = "heygen"\napi_key = "env:X"', 0o644)
    load_config(path)


# -- presets ---------------------------------------------------------------------------------------
def test_presets_ship_and_validate() -> None:
    names = preset_names()
    assert {"mercadolibre", "heygen", "generic-oauth2", "github", "google", "microsoft"} <= set(
        names
    )
    for name in names:
        assert load_preset(name)["description"]


def test_mercadolibre_preset_and_base_url_override(tmp_path: Path) -> None:
    path = config_for(
        tmp_path,
        '[credentials.ml]\npreset = "mercadolibre"\nclient_id = "1"\nclient_secret = "env:X"\n'
        '[credentials.local]\npreset = "mercadolibre"\nclient_id = "1"\n'
        'base_url = "http://127.0.0.1:9"',
    )
    config = load_config(path)
    ml = config.credential_config("ml")
    assert ml.get("token_url") == "https://api.mercadolibre.com/oauth/token"
    assert ml.client_auth == "body" and ml.provider.rotating is True
    rule = ml.expiry_rule()
    assert rule is not None and dict(rule.json_fields) == {"message": "invalid_token"}
    assert config.credential_config("local").get("token_url") == "http://127.0.0.1:9/oauth/token"


def test_unknown_credential_name_suggests(tmp_path: Path) -> None:
    path = config_for(tmp_path, '[credentials.shop]\npreset = "heygen"\napi_key = "env:X"')
    with pytest.raises(ConfigError, match=r"no \[credentials.shp\] table; did you mean 'shop'"):
        load_config(path).credential_config("shp")


# -- the one-liner against the emulator ------------------------------------------------------------
def test_credential_refresh_token_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tokenward_emulator: Any
) -> None:
    monkeypatch.setenv("TW_TEST_SECRET", TEST_CLIENT_SECRET)
    config_for(
        tmp_path,
        f'[credentials.ml]\npreset = "mercadolibre"\nclient_id = "{TEST_CLIENT_ID}"\n'
        f'client_secret = "env:TW_TEST_SECRET"\nbase_url = "{tokenward_emulator.url}"',
    )
    refresh = tokenward_emulator.emulator.issue_refresh_token(TEST_CLIENT_ID)
    with tokenward.credential("ml") as ml:  # found as ./tokenward.toml
        ml.manager.seed(refresh_token=refresh)
        with httpx2.Client(auth=ml.auth) as client:
            assert client.get(f"{tokenward_emulator.api_url}/items").status_code == 200
        tokenward_emulator.emulator.expire_access_tokens()
        with httpx2.Client(auth=ml.auth) as client:  # replayed once after the 401
            assert client.get(f"{tokenward_emulator.api_url}/items").status_code == 200
        assert ml.token().version >= 2
        assert SECRET not in repr(ml) and TEST_CLIENT_SECRET not in repr(ml)


async def test_credential_api_key_async(tmp_path: Path, tokenward_emulator: Any) -> None:
    write(tmp_path / "key", TEST_API_KEY + "\n")
    path = config_for(
        tmp_path,
        f'[credentials.avatar]\npreset = "heygen"\napi_key = "file:key"\n'
        f'base_url = "{tokenward_emulator.url}"',
    )
    ml = tokenward.credential("avatar", config=path)
    assert isinstance(ml.manager.source, ApiKeyExchange)
    with pytest.raises(SessionScoped):  # a one-session token is never cached or stored
        await ml.atoken()
    async with ml.sessions().session() as s:  # one fresh token per session instead
        assert s.token.access_token and s.token.expires_at is not None
    ml.close()


def test_client_credentials_and_discovery(tmp_path: Path, tokenward_emulator: Any) -> None:
    os.environ["TW_CC_SECRET"] = TEST_CLIENT_SECRET
    try:
        path = config_for(
            tmp_path,
            f'[credentials.m2m]\npreset = "generic-oauth2"\ngrant = "client_credentials"\n'
            f'issuer = "{tokenward_emulator.url}"\nclient_id = "{TEST_CLIENT_ID}"\n'
            f'client_secret = "env:TW_CC_SECRET"\naudience = "api"',
        )
        config = load_config(path)
        settings = config.credential_config("m2m")
        assert settings.get("token_url") == tokenward_emulator.token_url
        assert settings.get("revocation_url") == tokenward_emulator.revoke_url
        with tokenward.credential("m2m", config=config) as cred:
            assert isinstance(cred.manager.source, ClientCredentialsGrant)
            assert cred.token().extra["params"]["audience"] == "api"
    finally:
        del os.environ["TW_CC_SECRET"]


def test_discovery_failure_is_a_config_error(tmp_path: Path, tokenward_emulator: Any) -> None:
    path = config_for(
        tmp_path,
        f'[credentials.x]\npreset = "generic-oauth2"\nclient_id = "1"\n'
        f'issuer = "{tokenward_emulator.url}/nowhere"',
    )
    with pytest.raises(ConfigError, match="no authorization server metadata"):
        load_config(path).credential_config("x").source()


def test_relative_store_path_is_relative_to_the_config(tmp_path: Path) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    path = write(
        sub / "tw.toml",
        '[store]\nurl = "sqlite://tokens.db"\n'
        '[credentials.h]\npreset = "heygen"\napi_key = "env:X"',
    )
    config = load_config(path)
    store = config.store_for(config.credential_config("h"))
    assert str(sub / "tokens.db") in store.location
