"""Open a store from a URL, so that configuration and the CLI can name a store in one string.

URLs are `scheme://` followed by what the store needs. For the file-backed stores that is a
path: absolute when it starts with `/` (`sqlite:///var/lib/tokens.db`,
`file:///etc/tokenward/tokens.json`, `dotenv:///srv/app/.env`), relative to the current
directory otherwise (`sqlite://tokens.db`, `file://tokens.json`, `dotenv://.env`); `~` is
expanded and `%xx` escapes are decoded. `memory://` takes nothing.

Network stores register their scheme in `SCHEMES` (their factory receives the whole URL).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from urllib.parse import unquote

from .base import Store
from .dotenv import DotenvStore
from .file import JsonFileStore
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = ["SCHEMES", "open_store", "register_scheme", "url_path"]

StoreFactory = Callable[[str], Store]


def url_path(url: str) -> str:
    """The filesystem path a `scheme://path` URL names (see the module docstring)."""
    _, _, rest = url.partition("://")
    path = os.path.expanduser(unquote(rest))
    if not path:
        raise ValueError(f"store URL {url!r} names no path, e.g. {url.split(':')[0]}://tokens.db")
    return path


def _memory(url: str) -> Store:
    return MemoryStore()


def _sqlite(url: str) -> Store:
    return SQLiteStore(url_path(url))


def _file(url: str) -> Store:
    return JsonFileStore(url_path(url))


def _dotenv(url: str) -> Store:
    return DotenvStore(url_path(url))


#: scheme -> factory taking the full URL.
SCHEMES: dict[str, StoreFactory] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "file": _file,
    "dotenv": _dotenv,
}


def register_scheme(scheme: str, factory: StoreFactory) -> None:
    """Make `open_store` handle `scheme://...` URLs with `factory(url)`."""
    SCHEMES[scheme.lower()] = factory


def open_store(url: str) -> Store:
    """The store a URL names, e.g. `sqlite:///var/lib/tokenward/tokens.db` or `dotenv://.env`.

    Raises ValueError for a URL without a scheme or with a scheme no store handles.
    """
    scheme, separator, _ = url.partition("://")
    supported = ", ".join(f"{name}://" for name in sorted(SCHEMES))
    if not separator or not scheme:
        raise ValueError(f"{url!r} is not a store URL; use one of {supported}")
    factory = SCHEMES.get(scheme.lower())
    if factory is None:
        raise ValueError(f"unknown store scheme {scheme!r}; supported: {supported}")
    return factory(url)
