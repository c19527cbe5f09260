"""`tokenward.toml`: where credentials, their providers and the store are described.

Why a file at all: the same credential is used by scripts, the CLI and (later) the broker; one
description keeps them in agreement. Why secret *references* (`env:NAME`, `file:PATH`): the file
can then be committed or shared without leaking anything; an inline secret still works but
warns, and is refused outright when the file is readable by group or others.

Every error is a `ConfigError` naming the file, the table, the key and what was expected, so
that a typo is fixed in one step. Unknown keys are errors (with a "did you mean"): a misspelled
`clinet_secret` silently ignored would surface much later as an `invalid_client`.

    [store]
    url = "sqlite:///var/lib/tokenward/tokens.db"

    [credentials.ml]
    preset = "mercadolibre"
    client_id = "1234567890"
    client_secret = "env:ML_CLIENT_SECRET"
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx2
import platformdirs

from .errors import ConfigError, InlineSecretWarning, ReadableSecretsWarning, did_you_mean
from .manager import TokenManager
from .rules import ExpiryRule
from .sessions import SessionCalls, SessionHooks, Sessions
from .sources import ApiKeyExchange, ClientCredentialsGrant, RefreshTokenGrant, Source
from .sources.authorization import OAuthClient, discovery_urls, make_client, parse_metadata
from .sources.oauth2 import ClientAuth
from .stores.base import Store
from .transport import DEFAULT_TIMEOUT, HttpRequest, send

if TYPE_CHECKING:
    from .stores.encrypted import Keyring

__all__ = [
    "CONFIG_ENV",
    "Config",
    "ConfigError",
    "CredentialConfig",
    "InlineSecretWarning",
    "ReadableSecretsWarning",
    "candidate_paths",
    "find_config",
    "load_config",
    "load_preset",
    "preset_names",
    "user_config_path",
]

CONFIG_ENV = "TOKENWARD_CONFIG"
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


# -- schema ---------------------------------------------------------------------------------------
Check = Callable[[Any], bool]


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _is_str_table(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_int_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    )


def _is_table(value: Any) -> bool:
    return isinstance(value, dict)


_STR = (_is_str, "a string")
#: The settings that describe a provider's session calls (`CredentialConfig.session_hooks`).
_SESSION_CALLS = ("session_new", "session_start", "session_keep_alive", "session_stop")
_BOOL = (_is_bool, "true or false")
_TABLE = (_is_str_table, 'a table of strings, e.g. { name = "value" }')

#: Every key a `[credentials.NAME]` table (or a preset) may hold: key -> (check, expected).
CREDENTIAL_KEYS: dict[str, tuple[Check, str]] = {
    "preset": _STR,
    "description": _STR,
    "grant": (lambda v: v in GRANTS, " | ".join(GRANTS)),
    "client_id": _STR,
    "client_secret": _STR,
    "client_auth": (lambda v: v in CLIENT_AUTHS, " | ".join(CLIENT_AUTHS)),
    "base_url": _STR,
    "issuer": _STR,
    "token_url": _STR,
    "authorize_url": _STR,
    "device_authorization_url": _STR,
    "revocation_url": _STR,
    "revocation_note": _STR,
    "redirect_port": (lambda v: isinstance(v, int) and 0 <= v < 65536, "a port number"),
    "authorize_params": _TABLE,
    "scope": _STR,
    "audience": _STR,
    "extra_params": _TABLE,
    "rotating": _BOOL,
    "api_key": _STR,
    "api_key_header": _STR,
    "api_key_prefix": _STR,
    "token_path": _STR,
    "expires_in_path": _STR,
    "expires_at_path": _STR,
    "token_request_body": (_is_table, "a table (sent as the token request's JSON body)"),
    "default_lifetime": (_is_number, "a number of seconds"),
    "session_scoped": _BOOL,
    # A session-scoped credential's upstream session calls (paths relative to base_url; ""
    # when the provider or plan has no such call), see tokenward.sessions.SessionCalls.
    "session_new": _STR,
    "session_start": _STR,
    "session_keep_alive": _STR,
    "session_stop": _STR,
    "session_id_path": _STR,
    "session_limit_path": _STR,
    "session_api_key_calls": (_is_str_list, 'a list of paths, e.g. ["/v1/streaming.stop"]'),
    "store": _STR,
    "store_variables": _TABLE,
    "expiry_rule": (_is_table, "a table"),
    # grant = "mcp": the MCP server (its registration and endpoints are stored with the grant).
    "mcp_server": _STR,
}
EXPIRY_RULE_KEYS: dict[str, tuple[Check, str]] = {
    "statuses": (_is_int_list, "a list of HTTP status codes, e.g. [401]"),
    "www_authenticate_errors": (_is_str_list, "a list of strings"),
    "body_contains": (_is_str_list, "a list of strings"),
    "json_fields": _TABLE,
}
STORE_KEYS: dict[str, tuple[Check, str]] = {
    "url": _STR,
    "encryption_keys": (_is_str_list, 'a list of references, e.g. ["env:TOKENWARD_KEY"]'),
}
TOP_KEYS: dict[str, tuple[Check, str]] = {
    "store": (_is_table, "a table"),
    "credentials": (_is_table, "a table of [credentials.NAME] tables"),
    # Read by tokenward.broker.config (the `broker` extra); tolerated here.
    "broker": (_is_table, "a table"),
}


def _check_table(
    table: Mapping[str, Any], schema: Mapping[str, tuple[Check, str]], where: str
) -> None:
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


# -- presets --------------------------------------------------------------------------------------
def _preset_dir() -> Any:
    return resources.files("tokenward").joinpath("presets")


def preset_names() -> list[str]:
    """The presets shipped with tokenward (data files `presets/NAME.toml`)."""
    return sorted(
        entry.name[: -len(".toml")]
        for entry in _preset_dir().iterdir()
        if entry.name.endswith(".toml")
    )


def load_preset(name: str, where: str = "preset") -> dict[str, Any]:
    """A preset's settings, checked against the same schema as a credential table."""
    names = preset_names()
    if name not in names:
        raise ConfigError(
            f"{where}: unknown preset {name!r}{did_you_mean(name, names)} "
            f"(available: {', '.join(names)}; see `tokenward presets`)"
        )
    text = _preset_dir().joinpath(f"{name}.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    _check_table(data, CREDENTIAL_KEYS, f"preset {name}")
    return data


# -- locating and reading the file ----------------------------------------------------------------
def user_config_path() -> Path:
    """`~/.config/tokenward/config.toml` (or the platform's equivalent)."""
    return Path(platformdirs.user_config_dir("tokenward", appauthor=False)) / "config.toml"


def candidate_paths(path: str | os.PathLike[str] | None = None) -> list[Path]:
    """Where the configuration is looked for, in order."""
    if path is not None:
        return [Path(path).expanduser()]
    if os.environ.get(CONFIG_ENV):
        return [Path(os.environ[CONFIG_ENV]).expanduser()]
    return [Path("tokenward.toml"), user_config_path()]


def find_config(path: str | os.PathLike[str] | None = None) -> Path:
    """The configuration file to use; an explicit path or `TOKENWARD_CONFIG` must exist."""
    candidates = candidate_paths(path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if path is not None or os.environ.get(CONFIG_ENV):
        origin = "given path" if path is not None else f"{CONFIG_ENV}"
        raise ConfigError(
            f"{candidates[0]}: configuration file not found ({origin}). "
            f"Create it with `tokenward init --config {candidates[0]}`."
        )
    looked = ", ".join(str(c) for c in candidates)
    raise ConfigError(
        f"no configuration file found (looked at {looked}). "
        "Create one with `tokenward init`, or set TOKENWARD_CONFIG."
    )


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Find, read and validate the configuration (secrets are resolved later, on use)."""
    found = find_config(path)
    try:
        raw = found.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{found}: cannot read the configuration: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{found}: not valid TOML: {exc}") from None
    return parse_config(data, found, stat.S_IMODE(found.stat().st_mode))


def parse_config(data: Mapping[str, Any], path: Path, mode: int = 0o600) -> Config:
    """Validate a decoded configuration that came from `path` (with file mode `mode`)."""
    _check_table(data, TOP_KEYS, str(path))
    store_table = data.get("store", {})
    _check_table(store_table, STORE_KEYS, f"{path}: [store]")
    credentials: dict[str, CredentialConfig] = {}
    for name, table in data.get("credentials", {}).items():
        where = f"{path}: [credentials.{name}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
        credentials[name] = _credential(name, table, path, where)
    _check_inline_secrets(credentials, path, mode)
    keys = store_table.get("encryption_keys", [])
    for index, reference in enumerate(keys):
        if not _is_reference(reference):  # a key written inline would defeat its purpose
            raise ConfigError(
                f"{path}: [store] encryption_keys[{index}] must be a reference (env:NAME or "
                "file:PATH), not the key itself"
            )
    return Config(path, store_table.get("url"), credentials, list(keys))


def _credential(name: str, table: dict[str, Any], path: Path, where: str) -> CredentialConfig:
    _check_table(table, CREDENTIAL_KEYS, where)
    _check_table(table.get("expiry_rule", {}), EXPIRY_RULE_KEYS, f"{where} expiry_rule")
    settings: dict[str, Any] = {}
    if "preset" in table:
        settings.update(load_preset(table["preset"], f"{where} preset"))
        settings.pop("description", None)
    settings.update(table)
    _expand_base_url(settings, where)
    _check_required(settings, where)
    return CredentialConfig(name, path, settings)


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


def _check_required(settings: Mapping[str, Any], where: str) -> None:
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


def _is_reference(value: str) -> bool:
    return value.startswith(("env:", "file:"))


def _check_inline_secrets(
    credentials: Mapping[str, CredentialConfig], path: Path, mode: int
) -> None:
    inline = [
        f"[credentials.{c.name}] {key}"
        for c in credentials.values()
        for key in sorted(SECRET_KEYS)
        if isinstance(c.settings.get(key), str) and not _is_reference(c.settings[key])
    ]
    if not inline:
        return
    if mode & 0o077:
        raise ConfigError(
            f"{path} is readable by group or others and holds an inline secret "
            f"({', '.join(inline)}). Run `chmod 600 {path}`, or replace the value with a "
            "reference such as env:NAME or file:PATH."
        )
    warnings.warn(
        f"{path}: {', '.join(inline)} written inline; prefer env:NAME or file:PATH",
        InlineSecretWarning,
        stacklevel=3,
    )


# -- the parsed configuration ---------------------------------------------------------------------
@dataclass
class CredentialConfig:
    """One credential's merged settings (preset, then the table's own keys)."""

    name: str
    path: Path
    settings: dict[str, Any]
    _discovered: dict[str, str] | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        return f"{self.path}: [credentials.{self.name}]"

    @property
    def grant(self) -> str:
        return str(self.settings.get("grant", "refresh_token"))

    @property
    def client_auth(self) -> ClientAuth:
        return cast(ClientAuth, self.settings.get("client_auth", "basic"))

    def get(self, key: str) -> Any:
        """A setting, endpoint URLs discovered from `issuer` when not set explicitly."""
        if key in self.settings:
            return self.settings[key]
        if key in URL_KEYS and "issuer" in self.settings:
            return self.discovered().get(key)
        return None

    def require(self, key: str, purpose: str) -> str:
        value = self.get(key)
        if not value:
            raise ConfigError(f"{self.where}: {key} is required to {purpose}")
        return str(value)

    def secret(self, key: str) -> str | None:
        """The value of `key` with an `env:` or `file:` reference resolved."""
        value = self.settings.get(key)
        if value is None:
            return None
        return resolve_reference(str(value), self.path, f"{self.where} {key}")

    def discovered(self) -> dict[str, str]:
        """Endpoints from the issuer's metadata (fetched once)."""
        if self._discovered is None:
            self._discovered = discover(str(self.settings["issuer"]), self.where)
        return self._discovered

    def expiry_rule(self) -> ExpiryRule | None:
        rule = self.settings.get("expiry_rule")
        if not rule:
            return None
        kwargs: dict[str, Any] = {}
        if "statuses" in rule:
            kwargs["statuses"] = frozenset(rule["statuses"])
        if "www_authenticate_errors" in rule:
            kwargs["www_authenticate_errors"] = frozenset(rule["www_authenticate_errors"])
        if "body_contains" in rule:
            kwargs["body_contains"] = tuple(rule["body_contains"])
        if "json_fields" in rule:
            kwargs["json_fields"] = dict(rule["json_fields"])
        return ExpiryRule(**kwargs)

    def source(self) -> Source:
        """The refresh source the settings describe (secrets resolved now)."""
        if self.grant == "api_key":
            return ApiKeyExchange(
                url=self.require("token_url", "exchange the API key"),
                api_key=self.secret("api_key") or "",
                header=self.settings.get("api_key_header", "x-api-key"),
                prefix=self.settings.get("api_key_prefix", ""),
                token_path=self.settings.get("token_path", "data.token"),
                expires_in_path=self.settings.get("expires_in_path"),
                expires_at_path=self.settings.get("expires_at_path"),
                default_lifetime=self.settings.get("default_lifetime"),
                json_body=self.settings.get("token_request_body"),
            )
        if self.grant == "mcp":
            from .integrations.mcp import McpRefreshGrant  # the `mcp` extra: imported on use

            return McpRefreshGrant(server_url=self.require("mcp_server", "refresh MCP tokens"))
        token_url = self.require("token_url", "refresh tokens")
        client_id = self.secret("client_id") or ""
        if self.grant == "client_credentials":
            return ClientCredentialsGrant(
                token_url,
                client_id,
                self.secret("client_secret"),
                self.client_auth,
                extra_params=dict(self.settings.get("extra_params", {})),
                scope=self.settings.get("scope"),
                audience=self.settings.get("audience"),
            )
        return RefreshTokenGrant(
            token_url,
            client_id,
            self.secret("client_secret"),
            self.client_auth,
            extra_params=dict(self.settings.get("extra_params", {})),
            scope=None,  # the refresh keeps the granted scope; `scope` is for the login
            rotating=bool(self.settings.get("rotating", True)),
        )

    def oauth_client(self) -> OAuthClient:
        """The client for login, device flow and revocation."""
        return make_client(
            self.require("token_url", "log in"),
            self.secret("client_id") or "",
            self.secret("client_secret"),
            self.client_auth,
            device_authorization_url=self.get("device_authorization_url"),
            revocation_url=self.get("revocation_url"),
        )

    @property
    def session_scoped(self) -> bool:
        """Each token serves one session (HeyGen): never cached, stored or reused."""
        return bool(self.settings.get("session_scoped"))

    def session_hooks(self, **options: Any) -> SessionHooks:
        """The upstream session calls the `session_*` settings describe (`options` go to
        `SessionCalls`, e.g. `keep_alive_interval`)."""
        settings = self.settings
        if not any(key in settings for key in _SESSION_CALLS):
            return SessionHooks()
        return SessionCalls(
            new=settings.get("session_new"),
            start=settings.get("session_start"),
            keep_alive=settings.get("session_keep_alive"),
            stop=settings.get("session_stop"),
            id_path=settings.get("session_id_path", "data.session_id"),
            limit_path=settings.get("session_limit_path"),
            api_key_calls=tuple(settings.get("session_api_key_calls", ())),
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
            key=self.name,
            base_url=str(self.settings.get("base_url") or ""),
            expiry_rule=self.expiry_rule(),
            **options,
        )

    def manager(self, store: Store, **options: Any) -> TokenManager:
        """The credential's TokenManager; `options` go to TokenManager (retry, timeout, ...).
        A session-scoped credential's manager refuses to fetch or store tokens
        (`SessionScoped`): use `sessions()`."""
        return TokenManager(
            self.name,
            self.source(),
            store,
            expiry_rule=self.expiry_rule(),
            session_scoped=self.session_scoped,
            **options,
        )


def _check_dotenv_mode(path: Path, credential: CredentialConfig) -> None:
    """Warn when a `.env` store is readable by group or others: it holds the refresh token, and
    usually the client secret the configuration references (`env:NAME` exported from it). The
    configuration file is held to the same rule (refused there, as it is ours to fix)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        text = path.read_text(encoding="utf-8", errors="replace") if mode & 0o077 else ""
    except OSError:
        return  # missing (created 0600 on first write) or unreadable: the store will say
    if not mode & 0o077:
        return
    held = [
        str(value)[4:]
        for key in sorted(SECRET_KEYS)
        if str(value := credential.settings.get(key, "")).startswith("env:")
        and re.search(rf"^\s*(?:export\s+)?{re.escape(str(value)[4:])}\s*=", text, re.M)
    ]
    what = f"the secret {', '.join(held)} and tokens" if held else "tokens"
    warnings.warn(
        f"{path} holds {what} and is readable by group or others (mode {mode:o}). "
        f"Run `chmod 600 {path}`.",
        ReadableSecretsWarning,
        stacklevel=4,
    )


def resolve_reference(value: str, path: Path, where: str) -> str:
    """`env:NAME` -> the variable, `file:PATH` -> the file without its trailing newline
    (relative to the configuration file), anything else -> itself."""
    if value.startswith("env:"):
        name = value[4:]
        resolved = os.environ.get(name)
        if not resolved:
            state = "is empty" if resolved == "" else "is not set"
            raise ConfigError(
                f'{where} = "env:{name}": environment variable {name} {state}. '
                f"Export it (`export {name}=...`) or use a file:PATH reference."
            )
        return resolved
    if value.startswith("file:"):
        target = (path.parent / Path(value[5:]).expanduser()).resolve()
        try:
            return target.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(
                f'{where} = "{value}": cannot read {target}: {exc.strerror}. '
                "Create the file or fix the path."
            ) from None
    return value


def discover(issuer: str, where: str) -> dict[str, str]:
    """Endpoints from RFC 8414 metadata, else OpenID Connect discovery metadata."""
    with httpx2.Client(timeout=DEFAULT_TIMEOUT) as client:
        for url in discovery_urls(issuer):
            response = send(client, HttpRequest("GET", url, {"Accept": "application/json"}))
            found = parse_metadata(response, url)
            if found is not None:
                return found
    raise ConfigError(
        f"{where}: no authorization server metadata at {issuer} (tried "
        f"{', '.join(discovery_urls(issuer))}). Set token_url (and authorize_url) instead."
    )


@dataclass
class Config:
    """A validated configuration file."""

    path: Path | None
    store_url: str | None
    credentials: dict[str, CredentialConfig]
    #: `[store] encryption_keys`: references to the keys every store is encrypted with (the
    #: first writes, all read); none: `$TOKENWARD_ENCRYPTION_KEY`, else no encryption.
    encryption_keys: list[str] = field(default_factory=list)
    _stores: dict[str, Store] = field(default_factory=dict, repr=False)

    def credential_config(self, name: str) -> CredentialConfig:
        found = self.credentials.get(name)
        if found is None:
            known = ", ".join(sorted(self.credentials)) or "none"
            raise ConfigError(
                f"{self.path}: no [credentials.{name}] table{did_you_mean(name, self.credentials)} "
                f"(configured: {known}). Add one with `tokenward add {name} --preset ...`."
            )
        return found

    def store_for(self, credential: CredentialConfig) -> Store:
        """The credential's own store when it names one, else the configuration's."""
        url = credential.settings.get("store") or self.store_url
        if url is None:
            return self._cached("", lambda: _default_store(self.keyring()))
        mapping = credential.settings.get("store_variables")
        key = url + (f"#{credential.name}" if mapping else "")
        return self._cached(key, lambda: self._encrypted(self._open(url, credential, mapping)))

    def keyring(self) -> Keyring | None:
        """The encryption keys (`[store] encryption_keys`, else `$TOKENWARD_ENCRYPTION_KEY`),
        resolved now; None when there are none. Errors name the reference, never the key."""
        from .stores.encrypted import Keyring, keyring_from_env

        where = f"{self.path}: [store] encryption_keys"
        try:
            if not self.encryption_keys:
                return keyring_from_env()
            path = self.path or Path.cwd() / "tokenward.toml"
            names = [f"{where}[{i}] ({ref})" for i, ref in enumerate(self.encryption_keys)]
            values = [
                resolve_reference(ref, path, name)
                for ref, name in zip(self.encryption_keys, names, strict=True)
            ]
            return Keyring(values, names)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _encrypted(self, store: Store) -> Store:
        from .stores.encrypted import encrypt_store

        return encrypt_store(store, self.keyring())

    def _cached(self, key: str, factory: Callable[[], Store]) -> Store:
        if key not in self._stores:
            self._stores[key] = factory()
        return self._stores[key]

    def _open(
        self, url: str, credential: CredentialConfig, mapping: Mapping[str, str] | None
    ) -> Store:
        from .stores.url import open_store, url_path

        url = self._anchor(url)
        try:
            if url.startswith("dotenv://"):
                _check_dotenv_mode(Path(url_path(url)), credential)
            if mapping and url.startswith("dotenv://"):
                from .stores.dotenv import DotenvStore

                return DotenvStore(url_path(url), {credential.name: dict(mapping)})
            return open_store(url)
        except ValueError as exc:
            raise ConfigError(f"{self.path}: store URL: {exc}") from None

    def _anchor(self, url: str) -> str:
        """Relative store paths are relative to the configuration file, not the cwd."""
        scheme, _sep, rest = url.partition("://")
        if self.path is None or scheme not in ("sqlite", "file", "dotenv") or not rest:
            return url
        if rest.startswith(("/", "~")):
            return url
        return f"{scheme}://{(self.path.parent / rest).resolve()}"

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        self._stores.clear()


def _default_store(keys: Keyring | None = None) -> Store:
    from .stores.default import default_store

    return default_store(keys)
