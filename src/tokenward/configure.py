"""Writing tokenward.toml and taking over a `.env`: what `tokenward init`, `add`, `import-env` and
an MCP login do to the configuration, available from Python.

Why apart from `config.py`: that module reads configurations; this one writes them, keeping
the file's comments (a credential is appended as text, never re-serialised) and checking the
result parses before it replaces the file (mode 0600: it may reference secrets).

    from tokenward.configure import import_env

    imported = import_env(".env")   # ML_CLIENT_ID, ML_CLIENT_SECRET, ML_REFRESH_TOKEN, ...
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import CONFIG_ENV, ConfigError, load_config, parse_config
from .stored_grant import seed_stored
from .stores.base import Record

__all__ = [
    "STARTER",
    "EnvImport",
    "append_credential",
    "import_env",
    "read_env",
    "target_path",
    "write_private",
]

STARTER = """\
# tokenward configuration (docs: docs/configuration.md).
# Secrets are references, never values: env:NAME reads an environment variable,
# file:PATH reads a file (trailing newline stripped). Keep this file `chmod 600`.

[store]
# Where tokens live. Default: SQLite in your user data directory.
# url = "sqlite:///var/lib/tokenward/tokens.db"
# url = "dotenv://.env"            # keep tokens in an existing .env

# A MercadoLibre app (`tokenward presets` lists the providers tokenward knows):
# [credentials.ml]
# preset = "mercadolibre"
# client_id = "1234567890"
# client_secret = "env:ML_CLIENT_SECRET"

# A HeyGen API key exchanged for short-lived session tokens:
# [credentials.heygen]
# preset = "heygen"
# api_key = "file:~/.secrets/heygen-api-key"
"""


def target_path(config_path: str | os.PathLike[str] | None = None) -> Path:
    """Where a new configuration is written: the given path, $TOKENWARD_CONFIG, else
    ./tokenward.toml (reading also searches the user config directory; writing never does)."""
    if config_path is not None:
        return Path(config_path)
    return Path(os.environ.get(CONFIG_ENV) or "tokenward.toml").expanduser()


def write_private(path: Path, text: str) -> None:
    """Write `path` with mode 0600 (it may hold references to secrets, or secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        inner = ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }"
    return json.dumps(value)


def _table_text(name: str, settings: dict[str, Any]) -> str:
    lines = [f"\n[credentials.{json.dumps(name) if not name.isidentifier() else name}]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def append_credential(path: Path, name: str, settings: dict[str, Any]) -> None:
    """Append a `[credentials.NAME]` table to `path` (the starter text when it does not exist),
    keeping the file's comments; the result is validated before it is written."""
    current = path.read_text(encoding="utf-8") if path.exists() else STARTER
    text = current + _table_text(name, settings)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if name in tomllib.loads(current).get("credentials", {}):
        raise ConfigError(f"{path}: [credentials.{name}] already exists; edit it by hand.")
    parse_config(data, path)
    write_private(path, text)


def read_env(path: Path) -> dict[str, str]:
    """`NAME=value` pairs of a .env file (quotes removed), enough to import credentials."""
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text or text.startswith("#") or "=" not in text:
            continue
        key, _, value = text.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


@dataclass(frozen=True)
class EnvImport:
    """What `import_env` did (no secret: the record's repr shows fingerprints)."""

    #: The configuration file the credential was appended to.
    config_path: Path
    #: The stored record.
    record: Record
    #: Variables tokenward added to the .env (its record of the tokens: version, expiry, state).
    added: list[str]


def import_env(
    file: str | os.PathLike[str],
    *,
    name: str = "ml",
    preset: str = "mercadolibre",
    client_id_var: str = "ML_CLIENT_ID",
    client_secret_var: str = "ML_CLIENT_SECRET",
    refresh_token_var: str = "ML_REFRESH_TOKEN",
    access_token_var: str = "ML_ACCESS_TOKEN",
    base_url: str | None = None,
    config_path: str | os.PathLike[str] | None = None,
) -> EnvImport:
    """Take over a .env holding a client id, a client secret and a refresh token: the .env
    becomes credential `name`'s store (tokenward keeps the access and refresh token variables
    up to date in it), the credential is appended to the configuration (`target_path`) with
    the secret referenced as `env:<client_secret_var>`, never copied, and the refresh token is
    stored. The access token's age is unknown, so it is stored as expired: the first use
    refreshes it. Needs no client secret now (nothing is sent to the provider)."""
    env_file = Path(file)
    values = read_env(env_file)
    for var in (client_id_var, refresh_token_var):
        if not values.get(var):
            raise ConfigError(
                f"{env_file}: {var} is missing or empty; name it with the --*-var flags."
            )
    settings: dict[str, Any] = {
        "preset": preset,
        "client_id": values[client_id_var],
        "client_secret": f"env:{client_secret_var}",
        "store": f"dotenv://{env_file.resolve()}",
        "store_variables": {"refresh_token": refresh_token_var, "access_token": access_token_var},
    }
    if base_url:
        settings["base_url"] = base_url
    path = target_path(config_path)
    append_credential(path, name, settings)
    config = load_config(path)
    try:
        record = seed_stored(
            config.store_for(config.credential_config(name)),
            name,
            refresh_token=values[refresh_token_var],
            access_token=values.get(access_token_var) or None,
            expires_in=0,
        )
    finally:
        config.close()
    added = sorted(set(read_env(env_file)) - set(values))
    return EnvImport(path, record, added)
