"""Where the configuration comes from: finding and reading `tokenward.toml`, the presets shipped
as `presets/NAME.toml`, the secret references (`env:NAME`, `file:PATH`) resolved on use, and the
endpoints discovered from an `issuer`. Every failure is a `ConfigError` saying where and how to
fix it, never showing a secret."""

from __future__ import annotations

import os
import stat
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import httpx2
import platformdirs

from ..errors import ConfigError, did_you_mean
from ..sources.authorization import discovery_urls, parse_metadata
from ..transport import DEFAULT_TIMEOUT, HttpRequest, send
from .validate import CREDENTIAL_KEYS, check_table

__all__ = [
    "CONFIG_ENV",
    "candidate_paths",
    "discover",
    "find_config",
    "load_preset",
    "preset_names",
    "read_config",
    "resolve_reference",
    "user_config_path",
]

CONFIG_ENV = "TOKENWARD_CONFIG"


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
    check_table(data, CREDENTIAL_KEYS, f"preset {name}")
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


def read_config(path: str | os.PathLike[str] | None = None) -> tuple[Path, dict[str, Any], int]:
    """The file found for `path`, its decoded TOML, and its mode (for the inline-secret rule)."""
    found = find_config(path)
    try:
        raw = found.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{found}: cannot read the configuration: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{found}: not valid TOML: {exc}") from None
    return found, data, stat.S_IMODE(found.stat().st_mode)


# -- secrets and discovery, on use ----------------------------------------------------------------
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
