"""One credential of `tokenward.toml`, typed and frozen: `CredentialConfig` (its key, file and
parts), `ProviderSettings` (how tokens are obtained: grant, endpoints, client, API key, answer
paths), `SessionCallSettings` (a session-scoped credential's upstream calls) and its
`ExpiryRule`. `parse_credential` is the only place a validated table becomes these objects;
everything else reads typed fields, never string keys.

Secrets stay references (`env:NAME`, `file:PATH`) in these objects and are resolved on use
(`CredentialConfig.secret`), so loading a file never needs the secrets it names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from ..errors import ConfigError
from ..manager import TokenManager
from ..rules import ExpiryRule
from ..session_hooks import SessionCalls, SessionHooks
from ..sessions import Sessions
from ..sources import ApiKeyExchange, ClientCredentialsGrant, RefreshTokenGrant, Source
from ..sources.authorization import OAuthClient, make_client
from ..sources.oauth2 import ClientAuth
from ..stores.base import Store
from .files import discover, load_preset, resolve_reference
from .validate import CREDENTIAL_KEYS, URL_KEYS, check_required, check_table

__all__ = [
    "CredentialConfig",
    "Grant",
    "ProviderSettings",
    "SessionCallSettings",
    "parse_credential",
]

Grant = Literal["refresh_token", "client_credentials", "api_key", "mcp"]
_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class ProviderSettings:
    """How the credential's tokens are obtained. Secrets are kept as written (references)."""

    grant: Grant = "refresh_token"
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    client_auth: ClientAuth = "basic"
    base_url: str | None = None
    issuer: str | None = None
    token_url: str | None = None
    authorize_url: str | None = None
    device_authorization_url: str | None = None
    revocation_url: str | None = None
    #: What to tell a person when the provider has no revocation endpoint.
    revocation_note: str | None = None
    #: The login callback's port (0: any free port).
    redirect_port: int = 0
    authorize_params: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    scope: str | None = None
    audience: str | None = None
    extra_params: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    rotating: bool = True
    api_key: str | None = field(default=None, repr=False)
    api_key_header: str = "x-api-key"
    api_key_prefix: str = ""
    token_path: str = "data.token"
    expires_in_path: str | None = None
    expires_at_path: str | None = None
    token_request_body: Mapping[str, Any] | None = None
    default_lifetime: float | None = None
    mcp_server: str | None = None


@dataclass(frozen=True)
class SessionCallSettings:
    """A session-scoped credential's upstream session calls (paths relative to `base_url`;
    None or "" when the provider has no such call), see `tokenward.session_hooks.SessionCalls`."""

    new: str | None = None
    start: str | None = None
    keep_alive: str | None = None
    stop: str | None = None
    id_path: str = "data.session_id"
    limit_path: str | None = None
    api_key_calls: tuple[str, ...] = ()


@dataclass(frozen=True)
class CredentialConfig:
    """One credential: its preset and its own table merged, validated and typed."""

    #: The credential's key: `[credentials.KEY]`, its record in the store.
    key: str
    #: The configuration file it came from (references are relative to it).
    path: Path
    provider: ProviderSettings = field(default_factory=ProviderSettings)
    #: What an expired-token answer looks like (None: RFC 6750's default).
    rule: ExpiryRule | None = None
    #: Each token serves one session (HeyGen): never cached, stored or reused.
    session_scoped: bool = False
    session_calls: SessionCallSettings | None = None
    #: The credential's own store URL (None: the configuration's `[store]`).
    store: str | None = None
    #: A `.env` store's variable names for this credential's fields.
    store_variables: Mapping[str, str] | None = None
    preset: str | None = None
    description: str | None = None
    #: The merged table as written (read-only), for display; code reads the typed fields.
    table: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, repr=False, compare=False)
    _discovered: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        """The credential's `key` (its older name here)."""
        return self.key

    @property
    def settings(self) -> Mapping[str, Any]:
        """The merged table (read-only); kept for code written before the typed fields."""
        return self.table

    @property
    def where(self) -> str:
        return f"{self.path}: [credentials.{self.key}]"

    @property
    def grant(self) -> Grant:
        return self.provider.grant

    @property
    def client_auth(self) -> ClientAuth:
        return self.provider.client_auth

    def get(self, setting: str) -> Any:
        """A provider setting; endpoint URLs are discovered from `issuer` when not set."""
        value = getattr(self.provider, setting, None)
        if value is None and setting in URL_KEYS and self.provider.issuer is not None:
            return self.discovered().get(setting)
        return value

    def require(self, setting: str, purpose: str) -> str:
        value = self.get(setting)
        if not value:
            raise ConfigError(f"{self.where}: {setting} is required to {purpose}")
        return str(value)

    def secret(self, setting: str) -> str | None:
        """The value of a provider setting with an `env:` or `file:` reference resolved."""
        value = getattr(self.provider, setting, None)
        if value is None:
            return None
        return resolve_reference(str(value), self.path, f"{self.where} {setting}")

    def discovered(self) -> dict[str, str]:
        """Endpoints from the issuer's metadata (fetched once)."""
        if not self._discovered:
            self._discovered.update(discover(str(self.provider.issuer), self.where))
        return self._discovered

    def expiry_rule(self) -> ExpiryRule | None:
        return self.rule

    def source(self) -> Source:
        """The refresh source the settings describe (secrets resolved now)."""
        p = self.provider
        if p.grant == "api_key":
            return ApiKeyExchange(
                url=self.require("token_url", "exchange the API key"),
                api_key=self.secret("api_key") or "",
                header=p.api_key_header,
                prefix=p.api_key_prefix,
                token_path=p.token_path,
                expires_in_path=p.expires_in_path,
                expires_at_path=p.expires_at_path,
                default_lifetime=p.default_lifetime,
                json_body=dict(p.token_request_body) if p.token_request_body else None,
            )
        if p.grant == "mcp":
            from ..integrations.mcp import McpRefreshGrant  # the `mcp` extra: imported on use

            return McpRefreshGrant(server_url=self.require("mcp_server", "refresh MCP tokens"))
        token_url = self.require("token_url", "refresh tokens")
        client_id = self.secret("client_id") or ""
        if p.grant == "client_credentials":
            return ClientCredentialsGrant(
                token_url,
                client_id,
                self.secret("client_secret"),
                p.client_auth,
                extra_params=dict(p.extra_params),
                scope=p.scope,
                audience=p.audience,
            )
        return RefreshTokenGrant(
            token_url,
            client_id,
            self.secret("client_secret"),
            p.client_auth,
            extra_params=dict(p.extra_params),
            scope=None,  # the refresh keeps the granted scope; `scope` is for the login
            rotating=p.rotating,
        )

    def oauth_client(self) -> OAuthClient:
        """The client for login, device flow and revocation."""
        return make_client(
            self.require("token_url", "log in"),
            self.secret("client_id") or "",
            self.secret("client_secret"),
            self.provider.client_auth,
            device_authorization_url=self.get("device_authorization_url"),
            revocation_url=self.get("revocation_url"),
        )

    def session_hooks(self, **options: Any) -> SessionHooks:
        """The upstream session calls the `session_*` settings describe (`options` go to
        `SessionCalls`, e.g. `keep_alive_interval`)."""
        calls = self.session_calls
        if calls is None:
            return SessionHooks()
        return SessionCalls(
            new=calls.new,
            start=calls.start,
            keep_alive=calls.keep_alive,
            stop=calls.stop,
            id_path=calls.id_path,
            limit_path=calls.limit_path,
            api_key_calls=calls.api_key_calls,
            **options,
        )

    def sessions(self, **options: Any) -> Sessions:
        """A `Sessions` for this session-scoped credential: its source, `base_url`, session
        calls and expiry rule (`options` go to `Sessions`, e.g. `hooks`, `stop_timeout`)."""
        if not self.session_scoped:
            raise ConfigError(
                f"{self.where}: not session-scoped; sessions need `session_scoped = true` "
                "(presets heygen, liveavatar, openai-realtime set it)"
            )
        options.setdefault("hooks", self.session_hooks())
        return Sessions(
            self.source(),
            key=self.key,
            base_url=self.provider.base_url or "",
            expiry_rule=self.rule,
            **options,
        )

    def manager(self, store: Store, **options: Any) -> TokenManager:
        """The credential's TokenManager; `options` go to TokenManager (retry, timeout, ...).
        A session-scoped credential's manager refuses to fetch or store tokens
        (`SessionScoped`): use `sessions()`."""
        return TokenManager(
            self.key,
            self.source(),
            store,
            expiry_rule=self.rule,
            session_scoped=self.session_scoped,
            **options,
        )


# -- from a table to the typed credential ---------------------------------------------------------
_PROVIDER_KEYS = frozenset(f.name for f in fields(ProviderSettings))
_SESSION_PREFIX = "session_"


def parse_credential(key: str, table: Mapping[str, Any], path: Path) -> CredentialConfig:
    """Validate `[credentials.KEY]` (its preset merged under it) into a `CredentialConfig`."""
    where = f"{path}: [credentials.{key}]"
    check_table(table, CREDENTIAL_KEYS, where)
    merged: dict[str, Any] = {}
    if "preset" in table:
        merged.update(load_preset(table["preset"], f"{where} preset"))
        merged.pop("description", None)
    merged.update(table)
    _expand_base_url(merged, where)
    check_required(merged, where)
    try:
        rule = ExpiryRule.from_config(merged["expiry_rule"]) if "expiry_rule" in merged else None
    except ValueError as exc:
        raise ConfigError(f"{where} expiry_rule: {exc}") from None
    provider = {k: v for k, v in merged.items() if k in _PROVIDER_KEYS}
    for mapping in ("authorize_params", "extra_params"):
        if mapping in provider:
            provider[mapping] = MappingProxyType(dict(provider[mapping]))
    if "default_lifetime" in provider:
        provider["default_lifetime"] = float(provider["default_lifetime"])
    variables = merged.get("store_variables")
    return CredentialConfig(
        key,
        path,
        ProviderSettings(**provider),
        rule=rule,
        session_scoped=bool(merged.get("session_scoped", False)),
        session_calls=_session_calls(merged),
        store=merged.get("store"),
        store_variables=MappingProxyType(dict(variables)) if variables else None,
        preset=merged.get("preset"),
        description=merged.get("description"),
        table=MappingProxyType(merged),
    )


def _session_calls(merged: Mapping[str, Any]) -> SessionCallSettings | None:
    calls = ("session_new", "session_start", "session_keep_alive", "session_stop")
    if not any(call in merged for call in calls):
        return None
    given = {
        name.removeprefix(_SESSION_PREFIX): value
        for name, value in merged.items()
        if name.startswith(_SESSION_PREFIX) and name != "session_scoped"
    }
    if "api_key_calls" in given:
        given["api_key_calls"] = tuple(given["api_key_calls"])
    return SessionCallSettings(**given)


def _expand_base_url(settings: dict[str, Any], where: str) -> None:
    """`{base_url}` in a URL setting is replaced, so overriding `base_url` moves every
    endpoint of a preset (tests point it at the emulator)."""
    base = settings.get("base_url")
    for key in URL_KEYS:
        value = settings.get(key)
        if isinstance(value, str) and "{base_url}" in value:
            if not base:
                raise ConfigError(f"{where}: {key} uses {{base_url}} but base_url is not set")
            settings[key] = value.replace("{base_url}", base.rstrip("/"))
