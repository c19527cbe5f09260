"""The configuration read into typed, frozen objects: one rule parser (every `ExpiryRule` field
expressible in TOML), one validator whose errors name the file, the credential and the key, and
the broker's `[broker]` table typed from the same read of the file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tokenward.broker.config import load_broker
from tokenward.config import (
    ConfigError,
    CredentialConfig,
    ProviderSettings,
    SessionCallSettings,
    load_config,
)
from tokenward.rules import ExpiryRule

GRAPHQL_BODY = b'{"errors": [{"extensions": {"code": "AUTH_EXPIRED"}}]}'


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "tokenward.toml"
    path.write_text('[store]\nurl = "memory://"\n' + body)
    path.chmod(0o600)
    return path


def test_toml_expresses_every_expiry_rule_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[credentials.gql]\ntoken_url = "http://t"\nclient_id = "1"\n'
        "[credentials.gql.expiry_rule]\n"
        'preset = "graphql"\n'
        'graphql_codes = ["UNAUTHENTICATED", "AUTH_EXPIRED"]\n'
        "graphql_statuses = [200, 400]\n"
        "statuses = [401, 419]\n"
        'www_authenticate_errors = ["invalid_token", "expired_token"]\n'
        'body_contains = ["expired"]\n'
        'json_fields = { "error.code" = "TOKEN_EXPIRED" }\n',
    )
    rule = load_config(path).credential_config("gql").rule
    assert rule == ExpiryRule(
        statuses=frozenset({401, 419}),
        www_authenticate_errors=frozenset({"invalid_token", "expired_token"}),
        body_contains=("expired",),
        json_fields={"error.code": "TOKEN_EXPIRED"},
        graphql_codes=frozenset({"UNAUTHENTICATED", "AUTH_EXPIRED"}),
        graphql_statuses=frozenset({200, 400}),
    )
    assert rule.matches(400, {}, GRAPHQL_BODY)


def test_a_credential_is_typed_and_frozen(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[credentials.avatar]\npreset = "heygen"\napi_key = "env:HEYGEN_KEY"\n'
        '[credentials.ml]\npreset = "mercadolibre"\nclient_id = "1"\n'
        'extra_params = { a = "b" }\n',
    )
    config = load_config(path)
    avatar = config.credential_config("avatar")
    assert isinstance(avatar, CredentialConfig) and avatar.key == avatar.name == "avatar"
    assert isinstance(avatar.provider, ProviderSettings)
    assert avatar.provider.grant == "api_key" and avatar.provider.default_lifetime == 300.0
    assert avatar.provider.token_url == "https://api.heygen.com/v1/streaming.create_token"
    assert avatar.session_scoped and avatar.session_calls == SessionCallSettings(
        new="/v1/streaming.new",
        start="/v1/streaming.start",
        keep_alive="/v1/streaming.keep_alive",
        stop="/v1/streaming.stop",
        id_path="data.session_id",
        limit_path="data.session_duration_limit",
        api_key_calls=("/v1/streaming.stop",),
    )
    ml = config.credential_config("ml")
    assert ml.provider.rotating is True and ml.provider.client_auth == "body"
    assert ml.preset == "mercadolibre" and ml.session_calls is None and not ml.session_scoped
    assert ml.rule == ExpiryRule.mercadolibre()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ml.key = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ml.provider.extra_params["a"] = "c"  # type: ignore[index]


def test_an_inline_secret_stays_out_of_the_repr(tmp_path: Path) -> None:
    path = write(tmp_path, '[credentials.h]\npreset = "heygen"\napi_key = "inline-s3cr3t"\n')
    with pytest.warns(UserWarning):
        config = load_config(path)
    assert "inline-s3cr3t" not in repr(config.credential_config("h"))


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("statuses = 401", "statuses must be a list of HTTP status codes, e.g. [401], got 401"),
        ('graphql_code = ["X"]', "unknown key 'graphql_code'; did you mean 'graphql_codes'?"),
        ("graphql_codes = [1]", "graphql_codes must be a list of strings"),
        ('preset = "nope"', "unknown expiry rule preset 'nope'"),
    ],
)
def test_rule_errors_name_the_file_the_credential_and_the_key(
    tmp_path: Path, rule: str, expected: str
) -> None:
    path = write(
        tmp_path,
        f'[credentials.x]\ntoken_url = "http://t"\nclient_id = "1"\n'
        f"[credentials.x.expiry_rule]\n{rule}\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: [credentials.x] expiry_rule: ")
    assert expected in str(caught.value)


def test_the_broker_builds_on_the_same_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[credentials.ml]\npreset = "mercadolibre"\nclient_id = "1"\n'
        "[broker]\nport = 9000\n[broker.limits]\nupstream_timeout = 2\n",
    )
    config, broker = load_broker(path)
    assert config.credential_config("ml").provider.token_url
    assert dict(config.broker)["port"] == 9000 and broker.port == 9000
    assert broker.limits.upstream_timeout == 2.0
    bad = write(tmp_path, '[broker]\nport = "x"\n')
    with pytest.raises(ConfigError, match=r"\[broker\]: port must be a port number, got 'x'"):
        load_broker(bad)
    bad.write_text("broker = 3\n")
    with pytest.raises(ConfigError, match=r"tokenward\.toml: broker must be a table, got 3"):
        load_config(bad)


def test_every_policy_field_has_a_check() -> None:
    """A field added to `Policy` without a check could never be set from the file."""
    from tokenward.broker import config as broker_config

    names = {f.name for f in dataclasses.fields(broker_config.Policy)}
    assert set(broker_config._POLICY_KEYS) == names
