"""The one validator of `tokenward.toml`: its schema (every key a table may hold, with its type)
and the checks that turn a mistake into a `ConfigError` naming the file, the table, the key, what
was expected and how to fix it. The broker's `[broker]` table is checked with the same
functions (`tokenward.broker.config`), so both halves of the file speak alike.

Unknown keys are errors (with a "did you mean"): a misspelled `clinet_secret` silently ignored
would surface much later as an `invalid_client`. A wrongly typed secret is named by its type,
never echoed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigError, did_you_mean

__all__ = [
    "CLIENT_AUTHS",
    "CREDENTIAL_KEYS",
    "GRANTS",
    "SECRET_KEYS",
    "STORE_KEYS",
    "TOP_KEYS",
    "URL_KEYS",
    "Check",
    "check_required",
    "check_table",
    "is_reference",
    "table",
]

GRANTS = ("refresh_token", "client_credentials", "api_key", "mcp")
CLIENT_AUTHS = ("basic", "body", "none")
#: Keys whose value is a secret: references are expected, inline values warn.
SECRET_KEYS = frozenset({"client_secret", "api_key"})
#: Keys holding a URL, in which `{base_url}` is replaced by the credential's base URL.
URL_KEYS = (
    "token_url",
    "authorize_url",
    "device_authorization_url",
    "revocation_url",
    "issuer",
)

#: A check and the words for what it expects ("a string").
Check = tuple[Callable[[Any], bool], str]


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _is_str_table(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


STR: Check = (_is_str, "a string")
BOOL: Check = (lambda v: isinstance(v, bool), "true or false")
TABLE: Check = (lambda v: isinstance(v, dict), "a table")
STR_TABLE: Check = (_is_str_table, 'a table of strings, e.g. { name = "value" }')
STR_LIST: Check = (_is_str_list, "a list of strings")

#: Every key a `[credentials.KEY]` table (or a preset) may hold.
CREDENTIAL_KEYS: dict[str, Check] = {
    "preset": STR,
    "description": STR,
    "grant": (lambda v: v in GRANTS, " | ".join(GRANTS)),
    "client_id": STR,
    "client_secret": STR,
    "client_auth": (lambda v: v in CLIENT_AUTHS, " | ".join(CLIENT_AUTHS)),
    "base_url": STR,
    "issuer": STR,
    "token_url": STR,
    "authorize_url": STR,
    "device_authorization_url": STR,
    "revocation_url": STR,
    "revocation_note": STR,
    "redirect_port": (lambda v: isinstance(v, int) and 0 <= v < 65536, "a port number"),
    "authorize_params": STR_TABLE,
    "scope": STR,
    "audience": STR,
    "extra_params": STR_TABLE,
    "rotating": BOOL,
    "api_key": STR,
    "api_key_header": STR,
    "api_key_prefix": STR,
    "token_path": STR,
    "expires_in_path": STR,
    "expires_at_path": STR,
    "token_request_body": (TABLE[0], "a table (sent as the token request's JSON body)"),
    "default_lifetime": (_is_number, "a number of seconds"),
    "session_scoped": BOOL,
    # A session-scoped credential's upstream session calls (paths relative to base_url; ""
    # when the provider or plan has no such call), see tokenward.session_hooks.SessionCalls.
    "session_new": STR,
    "session_start": STR,
    "session_keep_alive": STR,
    "session_stop": STR,
    "session_id_path": STR,
    "session_limit_path": STR,
    "session_api_key_calls": (_is_str_list, 'a list of paths, e.g. ["/v1/streaming.stop"]'),
    "store": STR,
    "store_variables": STR_TABLE,
    # Parsed by ExpiryRule.from_config (the one rule parser): every ExpiryRule field, a preset.
    "expiry_rule": (TABLE[0], "a table of ExpiryRule fields, e.g. { statuses = [401] }"),
    # grant = "mcp": the MCP server (its registration and endpoints are stored with the grant).
    "mcp_server": STR,
}
STORE_KEYS: dict[str, Check] = {
    "url": STR,
    "encryption_keys": (_is_str_list, 'a list of references, e.g. ["env:TOKENWARD_KEY"]'),
}
TOP_KEYS: dict[str, Check] = {
    "store": TABLE,
    "credentials": (TABLE[0], "a table of [credentials.KEY] tables"),
    # Parsed by tokenward.broker.config (the `broker` extra); only its shape is checked here.
    "broker": TABLE,
}


def check_table(table: Mapping[str, Any], schema: Mapping[str, Check], where: str) -> None:
    """Unknown keys and wrongly typed values are errors naming `where` and the key."""
    for key, value in table.items():
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise ConfigError(
                f"{where}: unknown key {key!r}{did_you_mean(key, schema)} (known keys: {known})"
            )
        check, expected = schema[key]
        if not check(value):
            shown = type(value).__name__ if key in SECRET_KEYS else repr(value)
            raise ConfigError(f"{where}: {key} must be {expected}, got {shown}")


def table(value: Any, where: str) -> dict[str, Any]:
    """`value`, which must be a TOML table."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table, got {type(value).__name__}")
    return value


def check_required(settings: Mapping[str, Any], where: str) -> None:
    """The keys a credential's grant cannot do without (after its preset is merged in)."""
    grant = settings.get("grant", "refresh_token")
    if grant == "mcp":
        if not isinstance(settings.get("mcp_server"), str):
            raise ConfigError(
                f"{where}: mcp_server (the MCP server's URL) is required for grant = 'mcp'"
            )
        return
    needed = {"api_key": ["api_key"], "client_credentials": ["client_id", "client_secret"]}.get(
        grant, ["client_id"]
    )
    for key in needed:
        if key not in settings:
            raise ConfigError(f"{where}: {key} is required for grant = {grant!r}")
    if "token_url" not in settings and "issuer" not in settings:
        raise ConfigError(
            f"{where}: token_url is required (or `issuer` for discovery, or a `preset`)"
        )
    if grant == "api_key" and "token_url" not in settings:
        raise ConfigError(f"{where}: token_url (the key exchange URL) is required")


def is_reference(value: str) -> bool:
    """An `env:NAME` or `file:PATH` reference rather than the secret itself."""
    return value.startswith(("env:", "file:"))
