"""Open a store from a URL, so that configuration and the CLI can name a store in one string.

URLs are `scheme://` followed by what the store needs. For the file-backed stores that is a
path: absolute when it starts with `/` (`sqlite:///var/lib/tokens.db`,
`file:///etc/tokenward/tokens.json`, `dotenv:///srv/app/.env`), relative to the current
directory otherwise (`sqlite://tokens.db`, `file://tokens.json`, `dotenv://.env`); `~` is
expanded and `%xx` escapes are decoded. `memory://` takes nothing.

Network stores register their scheme in `SCHEMES` (their factory receives the whole URL).
`redis://` / `rediss://` open a `RedisStore` (`?prefix=` sets its key prefix) and
`postgresql://` / `postgres://` a `PostgresStore` (`?schema=` sets its schema, `?liveness=off`
turns its session liveness signal off, e.g. behind a pooler it cannot detect); their modules
are imported only when such a URL is opened, so the `redis` and `postgres` extras stay optional.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from urllib.parse import unquote, urlsplit, urlunsplit

from .base import Store
from .dotenv import DotenvStore
from .file import JsonFileStore
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = ["SCHEMES", "open_store", "pop_query", "redact_url", "register_scheme", "url_path"]

StoreFactory = Callable[[str], Store]


def url_path(url: str) -> str:
    """The filesystem path a `scheme://path` URL names (see the module docstring)."""
    _, _, rest = url.partition("://")
    path = os.path.expanduser(unquote(rest))
    if not path:
        raise ValueError(f"store URL {url!r} names no path, e.g. {url.split(':')[0]}://tokens.db")
    return path


def redact_url(url: str) -> str:
    """`url` without its password (in the user part or a `password=` query parameter)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}@{hostport}" if user else hostport
    query = "&".join(
        item for item in parts.query.split("&") if item and not item.lower().startswith("password=")
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def pop_query(url: str, name: str) -> tuple[str, str | None]:
    """`url` without the query parameter `name`, and that parameter's (decoded) value."""
    parts = urlsplit(url)
    value: str | None = None
    kept = []
    for item in parts.query.split("&"):
        if item.partition("=")[0] == name:
            value = unquote(item.partition("=")[2])
        elif item:
            kept.append(item)
    return urlunsplit(parts._replace(query="&".join(kept))), value


def _redis(url: str) -> Store:
    from .redis import RedisStore  # the `redis` extra is optional: imported on use

    url, prefix = pop_query(url, "prefix")
    return RedisStore(url) if prefix is None else RedisStore(url, prefix=prefix)


def _postgres(url: str) -> Store:
    from .postgres import PostgresStore  # the `postgres` extra is optional: imported on use

    url, schema = pop_query(url, "schema")
    url, liveness = pop_query(url, "liveness")
    if liveness not in (None, "on", "off"):
        raise ValueError(
            f"liveness={liveness!r} in a PostgreSQL store URL: use liveness=off (behind a "
            "connection pooler tokenward does not detect) or leave it out"
        )
    return PostgresStore(url, schema=schema or "tokenward", liveness=liveness != "off")


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
    "redis": _redis,
    "rediss": _redis,
    "postgresql": _postgres,
    "postgres": _postgres,
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
